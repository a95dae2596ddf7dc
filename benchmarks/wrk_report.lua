-- wrk script for the benchmarks: an optional request body, and one machine-readable summary line at the end.
-- WRK_BODY_BYTES=N makes every request a POST of N bytes (the upload scenario); otherwise a GET.
-- WRK_COOKIES=a=1,a=2,... sends those Cookie headers in turn, one per request (the session curve: many sessions).
-- The summary line starts with "WRK_JSON " so the harness never has to parse wrk's human-readable text.

local body_bytes = tonumber(os.getenv("WRK_BODY_BYTES") or "0") or 0
if body_bytes > 0 then
   wrk.method = "POST"
   wrk.body = string.rep("x", body_bytes)
   wrk.headers["Content-Type"] = "application/octet-stream"
end

local cookies = {}
for cookie in string.gmatch(os.getenv("WRK_COOKIES") or "", "[^,]+") do
   table.insert(cookies, cookie)
end
if #cookies > 0 then
   local turn = 0
   request = function()
      turn = turn + 1
      wrk.headers["Cookie"] = cookies[(turn % #cookies) + 1]
      return wrk.format()
   end
end

done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, '
      .. '"status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
