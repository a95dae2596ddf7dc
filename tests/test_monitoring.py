"""What operators watch, read by what they watch with: --stats read by the real uwsgitop (PyPI), --metrics parsed
by prometheus_client's own parser, the access log's JSON and uWSGI formats parsed back; and --reuse-port, two
gateways on one port sharing a memcached session.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import shutil
import signal
import socket
import struct
import sys
import termios
import time
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.ports import free_port
from devstack.processes import GatewayProcess
from devstack.servers import Memcached
from gateway.config.cli import build_config
from gateway.config.errors import ConfigError
from gateway.loop.accesslog import JSON_KEYS, Entry, compile_format
from gateway.loop.request import Request, ResponseSink
from gateway.loop.spool import RequestBody
from tests.load import children, uwsgi_get

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

#: What uwsgitop reads from uWSGI's stats server (issue #19's list), top level and per worker.
UWSGITOP_KEYS = {"version", "listen_queue", "pid", "workers"}
WORKER_KEYS = {"id", "pid", "requests", "exceptions", "status", "avg_rt", "rss", "vsz", "tx", "respawn_count",
               "harakiri_count", "running_time", "last_spawn", "signals", "cores"}  # fmt: skip


def _read_stats(port: int) -> dict[str, object]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    document: dict[str, object] = json.loads(b"".join(chunks))
    return document


def _uwsgitop_screen(address: str, until: list[str], timeout: float = 20) -> str:
    """Run the real uwsgitop in a pseudo-terminal until its screen shows every text in ``until``; what it drew."""
    script = shutil.which("uwsgitop", path=str(Path(sys.executable).parent))
    assert script is not None, "uwsgitop is a test dependency (pyproject's [test] extra)"
    pid, fd = pty.fork()
    if pid == 0:  # the child: uwsgitop on the terminal, with our interpreter (a script's shebang may differ)
        os.environ["TERM"] = "xterm"
        os.execv(sys.executable, [sys.executable, script, address])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    screen = b""
    deadline = time.monotonic() + timeout
    try:
        while not all(text.encode() in screen for text in until):
            assert time.monotonic() < deadline, f"uwsgitop never showed {until!r}:\n{screen.decode(errors='replace')}"
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                try:
                    screen += os.read(fd, 65536)
                except OSError:
                    break
        os.write(fd, b"q")
    finally:
        for _ in range(50):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    return screen.decode(errors="replace")


def test_stats_are_uwsgis_and_uwsgitop_reads_them(tmp_path: Path) -> None:
    port, stats = free_port(), free_port()
    gateway = GatewayProcess(
        tmp_path, ["--uwsgi", f"127.0.0.1:{port}", "--workers", "2", "--stats", f"127.0.0.1:{stats}", "tests.apps:app"],
        env=ENV,
    ).start()  # fmt: skip
    try:
        sent = 0
        for _ in range(5):
            status, _, body = uwsgi_get(port, "/hello")
            assert status == 200
            sent += len(body)
        status, _, body = uwsgi_get(port, "/status", "code=503")
        assert status == 503
        sent += len(body)
        document = _read_stats(stats)
        assert document.keys() >= UWSGITOP_KEYS
        assert document["pid"] == gateway.process.pid  # type: ignore[union-attr]
        workers = document["workers"]
        assert isinstance(workers, list) and len(workers) == 2
        for worker in workers:
            assert worker.keys() >= WORKER_KEYS, WORKER_KEYS - worker.keys()
            assert worker["status"] == "idle"
            assert worker["cores"][0]["in_request"] == 0
        assert sorted(worker["id"] for worker in workers) == [1, 2]
        assert {worker["pid"] for worker in workers} == children(gateway.process.pid)  # type: ignore[union-attr]
        assert sum(worker["requests"] for worker in workers) == 6
        assert sum(worker["exceptions"] for worker in workers) == 1
        assert sum(worker["tx"] for worker in workers) == sent
        assert all(worker["rss"] > 0 and worker["vsz"] >= worker["rss"] for worker in workers)
        ours = document["gateway"]
        assert isinstance(ours, dict)
        assert ours["requests"] == 6 and ours["errors"] == 1 and ours["queue_depth"] == 0
        assert {"open_connections", "client_timeouts", "spooled_bytes", "sessions", "latency"} <= ours.keys()
        # The real uwsgitop draws them: the request total, and each worker's pid.
        pids = [str(worker["pid"]) for worker in workers]
        screen = _uwsgitop_screen(f"127.0.0.1:{stats}", ["req: 6", "WID", *pids])
        assert "uwsgi-gateway-" in screen  # uwsgitop's title, with our version
    finally:
        assert gateway.stop() == 0


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK"), head
    assert b"Content-Type: text/plain; version=" in head  # the text exposition format
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_exactly_what_was_served(tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    gateway = GatewayProcess(
        tmp_path,
        ["--uwsgi", f"127.0.0.1:{port}", "--workers", "2", "--metrics", f"127.0.0.1:{metrics}", "--sessions", "memory",
         "--max-requests", "3", "tests.apps:app"],
        env=ENV,
    ).start()  # fmt: skip
    try:
        for _ in range(3):
            assert uwsgi_get(port, "/hello")[0] == 200
        for _ in range(2):
            assert uwsgi_get(port, "/status", "code=404")[0] == 404
        assert uwsgi_get(port, "/session/set", "a=1")[0] == 200
        samples = _metrics(metrics)
        assert samples[("gateway_requests_total", (("protocol", "uwsgi"), ("status", "200")))] == 4
        assert samples[("gateway_requests_total", (("protocol", "uwsgi"), ("status", "404")))] == 2
        assert samples[("gateway_request_duration_seconds_count", ())] == 6
        assert samples[("gateway_request_duration_seconds_bucket", (("le", "+Inf"),))] == 6
        assert samples[("gateway_request_duration_seconds_sum", ())] > 0
        assert samples[("gateway_queue_depth", ())] == 0
        assert samples[("gateway_requests_in_flight", ())] == 0
        # Six requests over two workers with --max-requests 3: both recycled, for that cause and no other.
        assert samples[("gateway_worker_restarts_total", (("cause", "max-requests"),))] == 2
        assert samples[("gateway_worker_restarts_total", (("cause", "died"),))] == 0
        assert samples[("gateway_session_operations_total", (("operation", "save"),))] == 1
        assert samples[("gateway_client_timeouts_total", (("kind", "header"),))] == 0
        assert ("gateway_spooled_bytes_total", (("direction", "request"),)) in samples
        assert samples[("gateway_open_connections", (("listener", f"127.0.0.1:{port}"),))] == 0
        # Workers by state: replacements may still be starting right after the recycling.
        states = {labels[0][1]: value for (name, labels), value in samples.items() if name == "gateway_workers"}
        assert states.keys() == {"starting", "idle", "busy"} and states["busy"] == 0
        assert 1 <= states["starting"] + states["idle"] <= 2
    finally:
        assert gateway.stop() == 0


def test_access_log_json_and_uwsgi_format_parse_back(tmp_path: Path) -> None:
    port = free_port()
    json_log, uwsgi_log = tmp_path / "json.log", tmp_path / "uwsgi.log"
    # The uWSGI logformat line, as an operator has it, plus two of its other variables.
    uwsgi_format = (
        '%(addr) - %(user) [%(ltime)] "%(method) %(uri) %(proto)" %(status) %(size) "%(referer)" "%(uagent)"'
        " %(msecs) %(pid)"
    )
    common = ["--uwsgi", f"127.0.0.1:{port}", "--workers", "1", "--access-log"]
    gateways = [
        GatewayProcess(
            tmp_path / "j", [*common, str(json_log), "--access-log-format", "json", "tests.apps:app"], env=ENV
        ),
        GatewayProcess(
            tmp_path / "u", [*common, str(uwsgi_log), "--access-log-format", uwsgi_format, "tests.apps:app"], env=ENV
        ),
    ]
    made = [("/hello", "", 200, 5), ("/status", "code=404", 404, len(b'{"code": "404"}'))]
    for gateway in gateways:
        gateway.start()
        try:
            for path, query, status, _ in made:
                assert uwsgi_get(port, path, query)[0] == status
            workers = children(gateway.process.pid)  # type: ignore[union-attr]
        finally:
            assert gateway.stop() == 0
    records = [json.loads(line) for line in json_log.read_text().splitlines()]
    assert [(r["path"], r["query"], r["status"], r["bytes"]) for r in records] == made
    assert set(records[0]) == set(JSON_KEYS.values())
    assert records[0]["request"] == "GET /hello HTTP/1.1" and records[0]["remote_addr"] == "127.0.0.1"
    assert records[0]["protocol"] == "uwsgi" and isinstance(records[0]["micros"], int)
    pattern = re.compile(
        r'(?P<addr>\S+) - (?P<user>\S+) \[(?P<ltime>[^]]+)\] "(?P<method>\S+) (?P<uri>\S+) (?P<proto>\S+)" '
        r'(?P<status>\d+) (?P<size>\d+) "(?P<referer>[^"]*)" "(?P<uagent>[^"]*)" (?P<msecs>\d+) (?P<pid>\d+)'
    )
    lines = uwsgi_log.read_text().splitlines()
    parsed = [pattern.fullmatch(line) for line in lines]
    assert all(parsed), lines
    assert [(m["uri"], int(m["status"]), int(m["size"])) for m in parsed if m] == [
        (path + (f"?{query}" if query else ""), status, size) for path, query, status, size in made
    ]
    assert all(m["addr"] == "127.0.0.1" and m["method"] == "GET" and m["proto"] == "HTTP/1.1" for m in parsed if m)
    time.strptime(parsed[0]["ltime"], "%d/%b/%Y:%H:%M:%S %z")  # type: ignore[index]
    assert int(parsed[0]["pid"]) in workers  # type: ignore[index]


def test_unknown_log_variable_is_a_startup_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(["--uwsgi", ":0", "--access-log", "-", "--access-log-format", "%(addr) %(nonsense)"])
    assert "%(nonsense)" in str(caught.value) or "--access-log-format" in str(caught.value)
    with pytest.raises(ValueError, match=r"unknown variable %\(nonsense\); known: gunicorn atoms .*%\(msecs\)"):
        compile_format("%(addr) %(nonsense)")
    with pytest.raises(ValueError, match="a '%' that is not"):
        compile_format("%(h)s 100% done")


def test_formats_mix_atoms_and_uwsgi_variables() -> None:
    params = {"REQUEST_METHOD": "POST", "REQUEST_URI": "/a?b=1", "HTTP_X_ID": "42", "SERVER_PROTOCOL": "HTTP/1.0",
              "REMOTE_ADDR": "10.0.0.1"}  # fmt: skip
    request = Request(params, RequestBody(1 << 20, None), cast(ResponseSink, None), "uwsgi", 0.0)
    line = compile_format("%(h)s %(method) %(uri) %(status)s %(var.HTTP_X_ID) %%")(
        Entry(request, 201, 7, 99, 0.25, 1_700_000_000.0)
    )
    assert line == "10.0.0.1 POST /a?b=1 201s 42 %"


def test_reuse_port_two_gateways_one_port_one_session(tmp_path: Path, memcached: Memcached) -> None:
    port = free_port()
    args = [
        "--uwsgi",
        f"127.0.0.1:{port}",
        "--reuse-port",
        "--workers",
        "1",
        "--sessions",
        memcached.url,
        "tests.apps:app",
    ]
    gateways = [GatewayProcess(tmp_path / name, args, env=ENV) for name in ("a", "b")]
    try:
        for gateway in gateways:
            gateway.start()
        masters = {gateway.process.pid for gateway in gateways}  # type: ignore[union-attr]
        seen: set[int] = set()
        deadline = time.monotonic() + 20
        while seen != masters:  # the kernel spreads new connections; each request is a new connection
            assert time.monotonic() < deadline, f"served by {seen} of {masters}"
            status, _, body = uwsgi_get(port, "/whoami")
            assert status == 200
            seen.add(json.loads(body)["gateway"])
        # A session written through one gateway is read through the other.
        status, headers, body = uwsgi_get(port, "/session/set", "user=ada")
        assert status == 200
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        writer = _master_of(json.loads(body)["pid"], gateways)
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "never reached the other gateway"
            reply = _uwsgi_with_cookie(port, "/session/get", cookie)
            if _master_of(reply["pid"], gateways) != writer:
                assert reply["data"] == {"user": "ada"}
                break
    finally:
        for gateway in gateways:
            assert gateway.stop() == 0


def _master_of(worker: int, gateways: list[GatewayProcess]) -> int:
    for gateway in gateways:
        assert gateway.process is not None
        if worker in children(gateway.process.pid):
            return gateway.process.pid
    raise AssertionError(f"worker {worker} belongs to no gateway")


def _uwsgi_with_cookie(port: int, path: str, cookie: str) -> dict[str, Any]:
    from gateway.protocols.uwsgi import encode_request

    params = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REQUEST_URI": path, "QUERY_STRING": "",
              "SERVER_NAME": "test", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
              "HTTP_COOKIE": cookie}  # fmt: skip
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(encode_request(params))
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    reply: dict[str, Any] = json.loads(raw.partition(b"\r\n\r\n")[2])
    return reply
