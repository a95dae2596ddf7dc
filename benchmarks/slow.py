"""The slow-client benchmark: what a server still does for fast clients while slow ones hold connections.

For each server: wrk's fast clients (hello world, through nginx) alone, then again while ``benchmarks.slowloris``
keeps 50 and 1000 slow connections open in each mode that applies to the server's protocol. FastCGI and uwsgi modes
go straight to the server's own port, as a misbehaving or compromised web server, or anything else that can reach
the port, would; the HTTP modes go through nginx with request and response buffering off (``/s/NAME/``), the set-up
in which nginx stops shielding the backend; the ``direct-*`` modes go straight to the rows served over HTTP without
nginx (``ServerSpec.direct``: ours ``--http``, gunicorn, waitress, uWSGI ``--http-socket``, Granian). Results
are ratios to the same server's unloaded numbers, so servers of very different speeds compare on what slow clients
take away.

Then our gateway's memory per idle slow connection: the master's RSS before and while holding N of them, each
measured on a freshly started gateway so memory freed by an earlier measurement cannot hide growth.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import slowloris
from benchmarks.core import ROOT, BenchError, log
from benchmarks.harness import (
    Options,
    ServerSpec,
    Stack,
    begin,
    running_stack,
    select_named,
    select_servers,
    server_notes,
)
from benchmarks.procstats import rss_bytes
from benchmarks.report import fmt, latency, median, publish
from benchmarks.wrk import WrkResult, parse_wrk, wrk_command, wrk_env
from devstack.processes import stat_fields


@dataclass(frozen=True)
class SlowMode:
    name: str
    mode: str  # the slowloris mode
    protocol: str  # slowloris's protocol (slow-reader), and which backend port a direct mode targets
    via_nginx: bool
    path: str


#: A slow reader's response must outlast what the kernel absorbs: loopback autotuning lets a server write up to
#: ``tcp_wmem``'s maximum (4 MiB on these machines) into one connection with a 4 KiB receive window before it
#: blocks, about twice that through nginx. At 4 MiB every byte of 200 direct responses sat in socket buffers
#: (/proc/net/sockstat: 801 MiB) and no server buffered any of it; 8 MiB leaves each server half to hold.
DIRECT_BIG = f"/big?size={8 << 20}"
NGINX_BIG = f"/big?size={12 << 20}"
#: Servers that buffer responses (ours spools past 1 MiB, waitress too, fcgisgi keeps them in memory) pay the rest
#: of every such response for every slow reader: slow-reader cells open at most this many connections, so the
#: worst case stays near 2 GiB of memory or disk instead of tens.
MAX_SLOW_READERS = 200

MODES: dict[str, SlowMode] = {
    mode.name: mode
    for mode in (
        SlowMode("fcgi-params", "fcgi-params", "fcgi", False, "/hello"),
        SlowMode("fcgi-body", "fcgi-body", "fcgi", False, "/upload"),
        SlowMode("fcgi-slow-reader", "slow-reader", "fcgi", False, DIRECT_BIG),
        SlowMode("idle-keepalive", "idle-keepalive", "fcgi", False, "/hello"),
        # Issue #16's memory-pinning attack: a fast client's share while every connection pushes 1 MiB of params
        # that never end (our loop-wide budget holds them; the target is >= 0.9).
        SlowMode("fcgi-pin", "fcgi-pin", "fcgi", False, "/hello"),
        SlowMode("uwsgi-vars", "uwsgi-vars", "uwsgi", False, "/hello"),
        SlowMode("uwsgi-body", "uwsgi-body", "uwsgi", False, "/upload"),
        SlowMode("uwsgi-slow-reader", "slow-reader", "uwsgi", False, DIRECT_BIG),
        SlowMode("http-body", "http-body", "http", True, "/upload"),
        SlowMode("http-slow-reader", "slow-reader", "http", True, NGINX_BIG),
        # Straight at a server that speaks HTTP itself (``ServerSpec.direct``): no nginx to absorb anything.
        SlowMode("direct-headers", "http-headers", "http", False, "/hello"),
        SlowMode("direct-body", "http-body", "http", False, "/upload"),
        SlowMode("direct-slow-reader", "slow-reader", "http", False, DIRECT_BIG),
        SlowMode("direct-idle", "http-idle", "http", False, "/hello"),
    )
}
BY_PROTOCOL: dict[str, tuple[str, ...]] = {
    "fcgi": ("fcgi-params", "fcgi-body", "fcgi-slow-reader", "idle-keepalive", "fcgi-pin", "http-body"),
    "uwsgi": ("uwsgi-vars", "uwsgi-body", "uwsgi-slow-reader", "http-body"),
    "http": ("http-body", "http-slow-reader"),
    "direct": ("direct-headers", "direct-body", "direct-slow-reader", "direct-idle"),
}
#: ``--quick``: the one mode every row behind nginx has, and the classic slowloris for the rows served directly.
QUICK_MODES = ("http-body", "direct-headers")
MEMORY_MODES = ("fcgi-params", "uwsgi-vars", "fcgi-body", "idle-keepalive")
QUICK_MEMORY_MODES = ("fcgi-params",)
SETTLE = 1.0
#: Seconds a stopped attack has to close its connections and print its summary before it is killed.
ATTACK_STOP_SECONDS = 30.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class SlowCell:
    server: str
    mode: str  # "none" for the unloaded baseline
    count: int
    wrk: WrkResult
    held: int = 0  # slow connections open when the fast measurement started
    held_end: int = 0
    closed_by_server: int = 0
    failed: int = 0
    completed: int = 0
    #: The attacker's own CPU while the fast clients ran, in cores (0.05: 5% of one core).
    attacker_cpu: float = 0.0


@dataclass
class MemoryRow:
    mode: str
    wanted: int
    held: int
    before: int
    after: int

    @property
    def per_connection(self) -> float:
        return (self.after - self.before) / self.held if self.held else 0.0


def select_modes(names: list[str] | None) -> list[str]:
    return [mode.name for mode in select_named(MODES, names, "slow mode")]


def counts_for(mode: str, counts: list[int]) -> list[int]:
    """The slow connection counts a mode is measured with: slow readers are capped (see MAX_SLOW_READERS)."""
    if MODES[mode].mode != "slow-reader":
        return counts
    return sorted({min(count, MAX_SLOW_READERS) for count in counts})


def ramp_for(count: int) -> float:
    """Seconds over which a cell's slow connections open: spread out, so each trickles at its own instant of the
    interval (as unsynchronised clients do) rather than all in one burst per interval."""
    return min(2.0, count / 500)


def slow_config(
    stack: Stack, spec: ServerSpec, mode: SlowMode, count: int, *, lasting: float, interval: float = 1.0
) -> slowloris.Config:
    """The attack ``mode`` aims at ``spec``'s row (through nginx's unbuffered location, or at the server's own
    port), its ``count`` connections opened over ``ramp_for(count)``; it ends ``lasting`` seconds after they are
    open, a bound: the cell stops it as soon as wrk is done."""
    if mode.via_nginx:
        port, path = stack.port, stack.path(spec, mode.path, slow=True)
    else:
        port, path = stack.backend_for(spec).ports[mode.protocol], mode.path
    ramp = ramp_for(count)
    return slowloris.Config(
        mode=mode.mode,
        port=port,
        connections=count,
        duration=ramp + lasting,
        interval=interval,
        path=path,
        ramp=ramp,
        protocol=mode.protocol,
    )


def _slow_config(stack: Stack, spec: ServerSpec, mode: SlowMode, count: int, options: Options) -> slowloris.Config:
    lasting = SETTLE + options.slow_interval + options.duration + 60
    return slow_config(stack, spec, mode, count, lasting=lasting, interval=options.slow_interval)


async def _wrk(wrk: str, url: str, options: Options) -> WrkResult:
    command = wrk_command(wrk, url, connections=options.concurrency, duration=options.duration)
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=wrk_env(0)
    )
    output, _ = await process.communicate()
    return parse_wrk(output.decode(errors="replace"))


class _Attack:
    """A slowloris run in a process of its own for the length of an ``async with``; ``open`` is its latest count
    of open connections, ``summary`` its final report once the block is left.

    Its own process and uvloop, for every server alike: in the harness's own asyncio loop the same attack took
    more of a 2-core machine from the fast clients than from a uvloop process (RESULTS.md History, 2026-12-01
    18:00-18:55), so the cell measured the attacker's event loop as much as the server. ``cpu_seconds`` is what
    the attacker itself has used, reported beside each cell.
    """

    def __init__(self, config: slowloris.Config, loop: str = "uvloop") -> None:
        self._config = config
        self._loop = loop
        self._latest: slowloris.Summary | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Future[None] | None = None
        self._errors = b""
        self._cpu = 0.0
        self.summary: slowloris.Summary | None = None

    @property
    def open(self) -> int:
        return self._latest.open if self._latest is not None else 0

    def cpu_seconds(self) -> float:
        """User + system CPU the attacker's process has used so far (the last reading once it has exited: its
        duration bound can pass while a stalled peer keeps wrk waiting)."""
        process = self._process
        fields = stat_fields(process.pid) if process is not None else None
        if fields is not None:
            self._cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        return self._cpu

    async def _read(self) -> None:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        assert process.stderr is not None
        errors = asyncio.ensure_future(process.stderr.read())
        async for line in process.stdout:
            data = json.loads(line)
            summary = slowloris.summary_from(data)
            if data.get("final"):
                self.summary = summary
            else:
                self._latest = summary
        self._errors = await errors

    async def __aenter__(self) -> _Attack:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.slowloris",
            *slowloris.command_line(self._config, loop=self._loop),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        process, reader = self._process, self._reader
        assert process is not None
        assert reader is not None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)  # it closes its connections and prints its summary
        try:
            await asyncio.wait_for(reader, ATTACK_STOP_SECONDS)
        except TimeoutError:
            process.kill()
        await process.wait()
        if self.summary is None and exc[0] is None:
            raise BenchError(
                f"the slowloris process ended ({process.returncode}) without a summary: "
                f"{self._errors.decode(errors='replace')[-1500:]}"
            )
        if self.summary is None:
            self.summary = self._latest or slowloris.Summary(self._config.mode, self._config.target, 0)


async def _cell(
    stack: Stack, wrk: str, spec: ServerSpec, mode: SlowMode | None, count: int, options: Options
) -> SlowCell:
    url = stack.url(spec, "/hello", slow=True)
    if mode is None or count == 0:
        return SlowCell(spec.name, "none", 0, await _wrk(wrk, url, options))
    config = _slow_config(stack, spec, mode, count, options)
    async with _Attack(config, options.attacker_loop) as attack:
        # Every connection open, and each has trickled (or read) at least once before the fast clients start.
        await asyncio.sleep(config.ramp + SETTLE + options.slow_interval)
        held = attack.open
        cpu_before, started = attack.cpu_seconds(), time.monotonic()
        result = await _wrk(wrk, url, options)
        attacker_cpu = (attack.cpu_seconds() - cpu_before) / (time.monotonic() - started)
        held_end = attack.open
    summary = attack.summary
    assert summary is not None
    return SlowCell(
        spec.name,
        mode.name,
        count,
        result,
        held=held,
        held_end=held_end,
        closed_by_server=summary.closed_by_server,
        failed=summary.failed,
        completed=summary.completed,
        attacker_cpu=attacker_cpu,
    )


async def _memory(stack: Stack, spec: ServerSpec, mode: SlowMode, count: int, options: Options) -> MemoryRow:
    """Our master's RSS on a fresh gateway, then while ``count`` connections of ``mode`` sit in it."""
    backend = stack.backend_for(spec)
    await asyncio.to_thread(backend.restart)
    pid = backend.pid
    assert pid is not None
    await asyncio.sleep(1.0)
    before = rss_bytes([pid])
    config = _slow_config(stack, spec, mode, count, options)
    async with _Attack(config, options.attacker_loop) as attack:
        deadline = time.monotonic() + config.ramp + 15
        while time.monotonic() < deadline and attack.open < count:
            await asyncio.sleep(0.25)
        await asyncio.sleep(SETTLE + options.slow_interval)
        after = rss_bytes([pid])
        held = attack.open
    return MemoryRow(mode.name, count, held, before, after)


def _aggregate(cells: list[SlowCell]) -> SlowCell:
    """Medians over rounds (a single round is itself)."""
    first = cells[0]
    if len(cells) == 1:
        return first
    wrk = WrkResult(
        requests=round(median([cell.wrk.requests for cell in cells])),
        seconds=median([cell.wrk.seconds for cell in cells]),
        p50_ms=median([cell.wrk.p50_ms for cell in cells]),
        p99_ms=median([cell.wrk.p99_ms for cell in cells]),
        errors={"all rounds": sum(cell.wrk.error_count for cell in cells)},
    )
    return SlowCell(
        first.server,
        first.mode,
        first.count,
        wrk,
        held=round(median([cell.held for cell in cells])),
        held_end=round(median([cell.held_end for cell in cells])),
        closed_by_server=sum(cell.closed_by_server for cell in cells),
        failed=sum(cell.failed for cell in cells),
        completed=sum(cell.completed for cell in cells),
        attacker_cpu=median([cell.attacker_cpu for cell in cells]),
    )


def _share(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "n/a"


def report_body(
    options: Options,
    specs: list[ServerSpec],
    modes: list[str],
    results: dict[tuple[str, str, int], SlowCell],
    memory: list[MemoryRow],
    unavailable: dict[str, str],
) -> list[str]:
    """The section's tables, between the header and the chart that ``publish`` adds."""
    top = max(options.slow_counts)
    lines = [
        f"Fast clients: wrk, 1 thread, {options.concurrency} connections, {options.duration:g} s, `hello` through "
        "nginx's unbuffered location. Slow clients: `benchmarks.slowloris`, one byte (or one read of 16 bytes "
        f"from a 4 KiB receive buffer) every {options.slow_interval:g} s, reconnecting when closed, run in a "
        f"process of its own on {options.attacker_loop} (**attacker CPU %**: its own CPU while wrk ran, in % of "
        "one core, on the same cores as wrk and the server); FastCGI and "
        "uwsgi modes straight to the server's port, HTTP modes through nginx with `*_request_buffering off` and "
        f"`*_buffering off`. {options.workers} workers everywhere, {options.rounds} round(s) (medians); in each "
        "round every server's cells start from a freshly started process, stopped again at the end of its cells, "
        "and after each slow cell (and each stop) the harness "
        "waits until the machine is idle (under 10% of a core busy, dirty pages written back; at most 20 s). "
        "**held**: slow connections open (from the client's side: the kernel completes connections into a listen "
        "backlog the server has not accepted from) when the fast clients started; **failed**: slow connection "
        "attempts that were refused or timed out (5 s; each is retried); **closed**: slow connections the server "
        "closed during the cell; **vs unloaded**: fast req/s (or p99) divided by the same server's unloaded "
        "value; **fast requests**: requests wrk completed in the cell. **errors**: wrk's socket errors, non-2xx, "
        "and responses that arrived later than its timeout. wrk never counts a request that gets no answer at "
        "all, so a stalled server shows as 0 req/s and 0 fast requests, not as errors.",
        "",
        f"Slow readers ask for {DIRECT_BIG.split('=')[1]} bytes directly or {NGINX_BIG.split('=')[1]} through "
        "nginx (more than the socket buffers absorb) and are capped at "
        f"{MAX_SLOW_READERS} connections: a server that buffers responses pays for each one in memory or on disk.",
        "",
        f"### Summary: fast req/s with {top} slow connections (slow readers: at most {MAX_SLOW_READERS}), "
        "as a share of unloaded (1.00 = unaffected)",
        "",
        "| server | unloaded req/s | " + " | ".join(modes) + " |",
        "|---|---:|" + "---:|" * len(modes),
    ]
    for spec in specs:
        base = results.get((spec.name, "none", 0))
        if base is None:
            lines.append(f"| {spec.name} | - |" + " - |" * len(modes))
            continue
        shares = []
        for mode in modes:
            cell = results.get((spec.name, mode, counts_for(mode, [top])[0]))
            shares.append(_share(cell.wrk.rps, base.wrk.rps) if cell else "n/a")
        lines.append(f"| {spec.name} | {base.wrk.rps:.0f} | " + " | ".join(shares) + " |")
    lines.append("")
    for spec in specs:
        base = results.get((spec.name, "none", 0))
        if base is None:
            continue
        lines += [
            f"### {spec.name}",
            "",
            "| slow mode | slow conns | held | failed | closed | fast req/s | vs unloaded | fast requests | p99 ms "
            "| p99 vs unloaded | errors | attacker CPU % |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| none | 0 | - | - | - | {base.wrk.rps:.0f} | 1.00 | {base.wrk.requests} | "
            f"{latency(base.wrk, base.wrk.p99_ms)} | 1.00 | {base.wrk.error_count} | - |",
        ]
        for mode in modes:
            for count in counts_for(mode, options.slow_counts):
                cell = results.get((spec.name, mode, count))
                if cell is None:
                    continue
                lines.append(
                    f"| {mode} | {count} | {cell.held} | {cell.failed} | {cell.closed_by_server} | "
                    f"{cell.wrk.rps:.0f} | {_share(cell.wrk.rps, base.wrk.rps)} | {cell.wrk.requests} | "
                    f"{latency(cell.wrk, cell.wrk.p99_ms)} | "
                    f"{_share(cell.wrk.p99_ms, base.wrk.p99_ms) if cell.wrk.requests else '-'} | "
                    f"{cell.wrk.error_count} | {cell.attacker_cpu * 100:.1f} |"
                )
        lines.append("")
    if memory:
        lines += [
            "### Our gateway's memory per idle slow connection",
            "",
            "The master's RSS on a freshly started gateway, then while it holds the connections (workers are not "
            "involved: no request reaches them).",
            "",
            "| slow mode | connections held | master RSS before MiB | while held MiB | growth per connection KiB |",
            "|---|---:|---:|---:|---:|",
        ]
        for row in memory:
            lines.append(
                f"| {row.mode} | {row.held} | {fmt(row.before / (1 << 20))} | {fmt(row.after / (1 << 20))} | "
                f"{fmt(row.per_connection / 1024, 2)} |"
            )
        lines.append("")
    lines += ["### Servers", "", *server_notes(specs, options.workers), ""]
    if unavailable:
        lines += ["### Not measured", "", *(f"- {name}: {why}" for name, why in unavailable.items()), ""]
    return lines


async def _run_cells(stack: Stack, wrk: str, modes: list[str], options: Options) -> list[SlowCell]:
    cells: list[SlowCell] = []
    running = stack.running()
    plan = [
        (spec, [name for name in modes if name in BY_PROTOCOL["direct" if spec.direct else spec.protocol]])
        for spec in running
    ]  # fmt: skip
    total = options.rounds * sum(
        1 + sum(len(counts_for(name, options.slow_counts)) for name in names) for _, names in plan
    )
    done = 0
    for round_number in range(1, options.rounds + 1):
        shift = (round_number - 1) % max(len(plan), 1)
        for spec, names in plan[shift:] + plan[:shift]:
            # Every server's block starts from a fresh process: a peer stalled by the last round's slow clients
            # (flup never recovers) must not read as 0 req/s unloaded, nor may one server's leftovers slow the next.
            if spec.name not in stack.unavailable:
                await asyncio.to_thread(stack.restart, spec)
            steps: list[tuple[SlowMode | None, int]] = [(None, 0)]
            steps += [(MODES[name], count) for name in names for count in counts_for(name, options.slow_counts)]
            for mode, count in steps:
                done += 1
                if spec.name in stack.unavailable or not await asyncio.to_thread(stack.ensure_alive, spec):
                    continue
                cell = await _cell(stack, wrk, spec, mode, count, options)
                cells.append(cell)
                log(
                    f"[{done}/{total}] round {round_number} {spec.name:<15} {cell.mode:<17} {count:5d} slow "
                    f"(held {cell.held:4d}, closed {cell.closed_by_server:5d}): {cell.wrk.rps:8.0f} req/s  "
                    f"p99 {cell.wrk.p99_ms:8.2f} ms  errors {cell.wrk.error_count}  attacker {cell.attacker_cpu:.0%}"
                )
                if mode is not None and not options.quick:
                    # Let nginx, the server and the kernel finish with what the slow clients left (responses still
                    # in flight, a peer's spool files being written back) before anything else is measured. A
                    # quick run only shows that every cell is produced, and does not wait (up to 20 s each).
                    await asyncio.to_thread(stack.wait_quiet)
            # Its process goes too (it restarts at its next block): a waitress still holding its slow readers'
            # responses slowed the unloaded cells measured after it even once the machine was idle.
            await asyncio.to_thread(stack.stop_server, spec)
            if not options.quick:
                await asyncio.to_thread(stack.wait_quiet)
    return cells


def run(options: Options) -> Path:
    """Run the slow-client benchmark and write its section of the results file; returns that file."""
    specs = select_servers(options.servers)
    modes = select_modes(options.scenarios or (list(QUICK_MODES) if options.quick else None))
    bench = begin(options, "slow", specs)
    wrk = bench.wrk
    memory: list[MemoryRow] = []
    with running_stack(bench.scratch, specs, options.workers, bench.peers) as stack:
        cells = asyncio.run(_run_cells(stack, wrk, modes, options))
        ours = next((spec for spec in stack.running() if spec.backend == "ours" and spec.protocol == "fcgi"), None)
        if ours is not None and options.memory_connections:
            memory_modes = QUICK_MEMORY_MODES if options.quick else MEMORY_MODES
            for name in memory_modes:
                log(f"memory: {options.memory_connections} idle {name} connections in our gateway")
                row = asyncio.run(_memory(stack, ours, MODES[name], options.memory_connections, options))
                log(f"  held {row.held}: {row.per_connection / 1024:.2f} KiB per connection")
                memory.append(row)
        unavailable = dict(stack.unavailable)
    grouped: dict[tuple[str, str, int], list[SlowCell]] = {}
    for cell in cells:
        grouped.setdefault((cell.server, cell.mode, cell.count), []).append(cell)
    results = {key: _aggregate(value) for key, value in grouped.items()}
    top = max(options.slow_counts)
    chart_cells = []
    for (server, mode, count), cell in results.items():
        base = results.get((server, "none", 0))
        if mode == "none" or base is None or not base.wrk.rps:
            continue
        if count == counts_for(mode, [top])[0]:
            chart_cells.append({"server": server, "mode": mode, "ratio": cell.wrk.rps / base.wrk.rps})
    data = {
        "title": f"Fast req/s with {top} slow connections (slow readers: at most {MAX_SLOW_READERS}) / unloaded "
        f"({options.workers} workers)",
        "servers": [spec.name for spec in specs if (spec.name, "none", 0) in results],
        "modes": modes,
        "cells": chart_cells,
        "results": [
            {**{key: value for key, value in vars(cell).items() if key != "wrk"}, "wrk": vars(cell.wrk)}
            for cell in results.values()
        ],
        "memory": [{**vars(row), "per_connection": row.per_connection} for row in memory],
        "unavailable": unavailable,
    }
    body = report_body(options, specs, modes, results, memory, unavailable)
    return publish(bench, data, body, "slow-client chart")
