"""``python -m benchmarks --curves``: how cost grows, as extra sections of the throughput part of RESULTS.md.

Opt-in (not in ``make bench``), one measurement per point (no rounds: these are shapes, not rankings):

- **concurrency**: hello world, req/s and p99 at wrk ``-t1 -c`` 1, 10, 100, 1000 (quick: 1, 10);
- **memory against body size**: one upload and one download of 1 MiB, 64 MiB and 1 GiB (quick: 1 MiB) through
  nginx's unbuffered ``/s/`` locations with ``client_max_body_size 0``; the client streams from a zero buffer and
  discards what it reads, so it stays flat; the app reads the upload in 64 KiB reads and streams the download in
  64 KiB pieces. The point: our gateway's master stays flat because bodies and responses beyond its thresholds go to
  temporary files. Sampled every 20 ms: the peak of a transfer shorter than that may be missed;
- **workers**: the 2 ms CPU app at 1, 2, 4 workers (quick: 1, 2);
- **sessions**: our gateway only (no peer has a session store in the server), a read and a write of
  ``environ["gateway.session"]`` per request, with the memory store and a private memcached.

Rows served directly (``ours-http``) take the same curves at the server's own port instead of nginx's locations.
"""

from __future__ import annotations

import contextlib
import http.client
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.core import BenchError, log
from benchmarks.harness import (
    OPTIONAL_SERVERS,
    SERVERS,
    Options,
    ServerSpec,
    Stack,
    backend_base,
    begin,
    running_stack,
    select_servers,
)
from benchmarks.peers import Peers
from benchmarks.procstats import PeakRss, rss_bytes, tree_pids
from benchmarks.report import fmt, latency, publish
from benchmarks.wrk import WrkResult, parse_wrk, run_wrk, wrk_command, wrk_env
from devstack.ports import free_port
from devstack.processes import StackError
from devstack.servers import Memcached

#: ours-http: the HTTP listener served directly (wrk and the transfers at its own port, no nginx).
DEFAULT_SERVERS = ("ours-fcgi-keep", "ours-http", "uwsgi")
SESSION_SERVER = "ours-fcgi-keep"
#: The rows served by our gateway, whose sessions are the gateway's own store (the peers' are their apps').
OURS_ROWS = frozenset(spec.name for spec in (*SERVERS, *OPTIONAL_SERVERS) if backend_base(spec.backend) == "ours")
CONCURRENCY, QUICK_CONCURRENCY = (1, 10, 100, 1000), (1, 10)
BODY_SIZES, QUICK_BODY_SIZES = (1 << 20, 64 << 20, 1 << 30), (1 << 20,)
WORKER_COUNTS, QUICK_WORKER_COUNTS = (1, 2, 4), (1, 2)
MIB = 1 << 20
#: Our gateway refuses bodies over 1 GiB by default; the curve's largest upload is exactly 1 GiB, so leave room.
OURS_ARGS = ("--max-body-size", str(4 << 30))
TRANSFER_TIMEOUT = 600.0
#: The session curve's sessions: this many per wrk connection, sent in turn, so that two requests rarely touch
#: one session at once (as with real users); a second run puts every request on one session (contention).
SESSIONS_PER_CONNECTION = 4
#: The memcached client the peers' apps use for their sessions (benchmarks/apps.py).
APP_SESSION_PACKAGE = "pymemcache"


def _size_label(size: int) -> str:
    return f"{size >> 30} GiB" if size >= 1 << 30 else f"{size >> 20} MiB"


# -- the streaming client -------------------------------------------------------------------------------------
def upload(port: int, path: str, size: int) -> tuple[int, bytes]:
    """POST ``size`` zero bytes with a Content-Length, sent 1 MiB at a time from one buffer (the client stays flat)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TRANSFER_TIMEOUT)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/octet-stream")
        connection.putheader("Content-Length", str(size))
        connection.endheaders()
        block, sent = memoryview(bytes(MIB)), 0
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # an early answer (413) is read below
            while sent < size:
                piece = block[: min(MIB, size - sent)]
                connection.send(piece)
                sent += len(piece)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def download(port: int, path: str) -> tuple[int, int]:
    """GET ``path`` and count the body's bytes, reading 1 MiB at a time and keeping none."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TRANSFER_TIMEOUT)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        total = 0
        while chunk := response.read(MIB):
            total += len(chunk)
        return response.status, total
    finally:
        connection.close()


# -- the four curves --------------------------------------------------------------------------------------------
@dataclass
class Point:
    server: str
    x: int
    wrk: WrkResult


@dataclass
class Transfer:
    server: str
    direction: str  # upload or download
    size: int
    ok: bool
    seconds: float
    baseline_mib: float
    master_before_mib: float
    master_mib: float
    tree_mib: float
    note: str = ""


def _warm(wrk: str, stack: Stack, specs: Sequence[ServerSpec], duration: float) -> None:
    for spec in specs:
        run_wrk(wrk, stack.url(spec, "/hello"), connections=4, duration=duration)


def concurrency_curve(wrk: str, stack: Stack, options: Options, counts: Sequence[int]) -> list[Point]:
    points = []
    for count in counts:
        for spec in stack.running():
            if not stack.ensure_alive(spec):
                continue
            url = stack.url(spec, "/hello")
            result = run_wrk(wrk, url, connections=count, duration=options.duration)
            points.append(Point(spec.name, count, result))
            log(
                f"concurrency {count:>5} {spec.name:<15} {result.rps:9.0f} req/s  p99 {result.p99_ms:8.2f} ms  "
                f"errors {result.error_count}"
            )
    return points


def memory_curve(stack: Stack, sizes: Sequence[int]) -> list[Transfer]:
    transfers = []
    for size in sizes:
        for spec in stack.running():
            for direction in ("upload", "download"):
                if not stack.ensure_alive(spec):
                    continue
                root = stack.backend_for(spec).pid
                assert root is not None
                port = stack.port_for(spec)  # nginx's unbuffered location, or the server's own port (direct)
                time.sleep(0.3)  # let the previous transfer's memory settle before the baseline
                baseline = rss_bytes(tree_pids(root))
                master_before = rss_bytes([root])
                started = time.monotonic()
                note = ""
                with PeakRss(root, interval=0.02) as peaks:
                    try:
                        if direction == "upload":
                            status, body = upload(port, stack.path(spec, "/upload", slow=True), size)
                            ok = status == 200 and body == f"{size}\n".encode()
                            note = "" if ok else f"HTTP {status} {body[:60]!r}"
                        else:
                            status, got = download(port, stack.path(spec, f"/big?size={size}", slow=True))
                            ok = status == 200 and got == size
                            note = "" if ok else f"HTTP {status}, {got} of {size} bytes"
                    except OSError as err:
                        ok, note = False, f"{type(err).__name__}: {err}"
                seconds = time.monotonic() - started
                transfer = Transfer(
                    spec.name,
                    direction,
                    size,
                    ok,
                    seconds,
                    baseline / MIB,
                    master_before / MIB,
                    peaks.master / MIB,
                    peaks.peak / MIB,
                    note,
                )
                transfers.append(transfer)
                log(
                    f"{direction:<8} {_size_label(size):>7} {spec.name:<15} {seconds:6.1f} s  master peak "
                    f"{transfer.master_mib:6.1f} MiB (before {transfer.master_before_mib:.1f})  tree peak "
                    f"{transfer.tree_mib:6.1f} MiB (before {transfer.baseline_mib:.1f}) {'ok' if ok else note}"
                )
    return transfers


def workers_curve(
    wrk: str, scratch: Path, specs: list[ServerSpec], peers: Peers, options: Options, counts: Sequence[int]
) -> tuple[list[Point], dict[str, str]]:
    points: list[Point] = []
    unavailable: dict[str, str] = {}
    for count in counts:
        with running_stack(scratch / f"workers-{count}", specs, count, peers) as stack:
            unavailable.update(stack.unavailable)
            _warm(wrk, stack, stack.running(), min(1.0, options.duration))
            for spec in stack.running():
                url = stack.url(spec, "/cpu")
                result = run_wrk(wrk, url, connections=options.concurrency, duration=options.duration)
                points.append(Point(spec.name, count, result))
                log(f"workers {count} cpu-2ms {spec.name:<15} {result.rps:9.0f} req/s  p99 {result.p99_ms:8.2f} ms")
    return points, unavailable


@contextlib.contextmanager
def private_memcached(scratch: Path) -> Iterator[str]:
    """A memcached of our own on a free loopback port (devstack's: UDP off, 64 MiB); yields its ``memcached://``
    URL."""
    try:
        server = Memcached(scratch, free_port()).start()
    except StackError as err:
        raise BenchError(str(err)) from None
    try:
        yield server.url
    finally:
        server.stop()


@dataclass
class SessionRow:
    server: str
    store: str
    mode: str  # "many": a few sessions per connection, in turn; "shared": every request on one session
    session: WrkResult | None
    hello: WrkResult | None
    #: increments of the sessions' counters during the run (what was stored), to compare with requests answered
    stored: int = 0
    note: str = ""


def _session_cookie(port: int, path: str) -> str:
    """One request creates a session; returns the ``name=value`` to send back."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        cookie = response.getheader("Set-Cookie") or ""
    finally:
        connection.close()
    if response.status != 200 or not cookie or body != b"1\n":
        raise BenchError(f"the session route answered HTTP {response.status} {body[:60]!r} without a new session")
    return cookie.split(";", 1)[0].strip()


def _count_with(port: int, path: str, cookie: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Cookie": cookie})
        response = connection.getresponse()
        return int(response.read())
    finally:
        connection.close()


def _session_run(wrk: str, port: int, path: str, cookies: list[str], options: Options) -> tuple[WrkResult, int]:
    """wrk sends the cookies in turn (``WRK_COOKIES``, read by wrk_report.lua); returns its result and how many
    increments the sessions kept (each counter: 1 at creation, +1 for the read afterwards)."""
    url = f"http://127.0.0.1:{port}{path}"
    command = wrk_command(wrk, url, connections=options.concurrency, duration=options.duration)
    env = {**wrk_env(0), "WRK_COOKIES": ",".join(cookies)}
    limit = options.duration + 60
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=limit)
    stored = sum(_count_with(port, path, cookie) - 2 for cookie in cookies)
    return parse_wrk(result.stdout + result.stderr), stored


def session_rows(wrk: str, scratch: Path, peers: Peers, specs: list[ServerSpec], options: Options) -> list[SessionRow]:
    """Our gateway's memory and memcached stores; with memcached, also each peer among ``specs``, whose app keeps
    the session in the same memcached itself (see ``benchmarks/apps.py``)."""
    ours = select_servers([SESSION_SERVER, *(spec.name for spec in specs if spec.name in OURS_ROWS)])
    app_level = [spec for spec in specs if spec.name not in OURS_ROWS]
    rows = []
    for store in ("memory", "memcached"):
        servers = ours + (app_level if store == "memcached" else [])
        try:
            with contextlib.ExitStack() as resources:
                url = "memory"
                peer_env: dict[str, str] = {}
                if store == "memcached":
                    url = resources.enter_context(private_memcached(scratch / "memcached"))
                    peer_env["BENCH_SESSION_MEMCACHED"] = url.removeprefix("memcached://")
                stack = resources.enter_context(
                    running_stack(
                        scratch / f"session-{store}",
                        servers,
                        options.workers,
                        peers,
                        ours_args=("--sessions", url),
                        peer_env=peer_env,
                    )
                )
                rows += [
                    SessionRow(name, store, "many", None, None, note=why) for name, why in stack.unavailable.items()
                ]
                _warm(wrk, stack, stack.running(), min(1.0, options.duration))
                for spec in stack.running():
                    rows += _session_server_rows(wrk, stack, spec, store, options)
        except (BenchError, OSError, ValueError) as err:
            rows.append(SessionRow(SESSION_SERVER, store, "many", None, None, note=f"{type(err).__name__}: {err}"))
            log(f"session {store}: {err}")
    return rows


def _session_server_rows(wrk: str, stack: Stack, spec: ServerSpec, store: str, options: Options) -> list[SessionRow]:
    server, port = spec.name, stack.port_for(spec)
    path = stack.path(spec, "/session")
    hello_url = stack.url(spec, "/hello")
    try:
        hello = run_wrk(wrk, hello_url, connections=options.concurrency, duration=options.duration)
        count = SESSIONS_PER_CONNECTION * options.concurrency
        many = [_session_cookie(port, path) for _ in range(count)]
        rows = []
        for mode, cookies in (("many", many), ("shared", [_session_cookie(port, path)])):
            session, stored = _session_run(wrk, port, path, cookies, options)
            rows.append(SessionRow(server, store, mode, session, hello, stored))
            log(
                f"session {server} {store:<9} {mode:<6} {session.rps:9.0f} req/s  p99 {session.p99_ms:8.2f} ms  "
                f"errors {session.error_count}  (hello {hello.rps:.0f} req/s); {len(cookies)} session(s) "
                f"kept {stored} of {session.requests} writes"
            )
    except (BenchError, OSError, ValueError) as err:
        log(f"session {server} {store}: {err}")
        return [SessionRow(server, store, "many", None, None, note=f"{type(err).__name__}: {err}")]
    return rows


# -- the report -------------------------------------------------------------------------------------------------
def _errors(result: WrkResult) -> str:
    return str(result.error_count) if not result.errors else f"{result.error_count} ({', '.join(result.errors)})"


def _curve_table(points: list[Point], servers: list[str], xs: Sequence[int], x_name: str) -> list[str]:
    by = {(point.server, point.x): point.wrk for point in points}
    header = f"| {x_name} | " + " | ".join(f"{name} req/s | p99 ms | errors" for name in servers) + " |"
    lines = [header, "|---:" + "|---:|---:|---:" * len(servers) + "|"]
    for x in xs:
        cells = []
        for name in servers:
            result = by.get((name, x))
            cells.append(
                f"{result.rps:.0f} | {latency(result, result.p99_ms)} | {_errors(result)}" if result else "- | - | -"
            )
        lines.append(f"| {x} | " + " | ".join(cells) + " |")
    return lines


def report_body(
    options: Options,
    servers: list[str],
    counts: tuple[Sequence[int], Sequence[int], Sequence[int]],
    concurrency: list[Point],
    transfers: list[Transfer],
    workers: list[Point],
    sessions: list[SessionRow],
    notes: list[str],
) -> list[str]:
    """The section's tables, between the header and the chart that ``publish`` adds."""
    concurrency_counts, _, worker_counts = counts
    lines = [
        f"Opt-in (`--curves`, not part of `make bench`). One measurement per point (no rounds: these show shapes), "
        f"wrk 1 thread, {options.duration:g} s per point, the same apps and nginx as above.",
        "",
        f"### Concurrency: hello world, {options.workers} workers, wrk `-t1 -c N`",
        "",
        *_curve_table(concurrency, servers, concurrency_counts, "connections"),
        "",
        "### Memory against body size: one request each, unbuffered nginx locations, `client_max_body_size 0`",
        "",
        "Measured first, on freshly started servers. The client streams zeros from one 1 MiB buffer and discards "
        "what it reads; the app reads the upload in "
        "64 KiB reads (`/upload`) and streams the download in 64 KiB pieces (`/big?size=N`). **before**: RSS "
        "just before the request; **master peak**: the root process alone (our gateway's event "
        "loop; uWSGI's master); **tree peak**: master + workers, shared pages counted in each. Sampled every "
        "20 ms. Our gateway spools request bodies and unsent response bytes beyond 1 MiB to temporary files "
        "(`--body-spool-threshold`, `--response-spool-threshold`), so its master should not grow with the body size.",
        "",
        "| server | direction | size | ok | seconds | MiB/s | master before MiB | master peak MiB | "
        "tree before MiB | tree peak MiB |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for transfer in transfers:
        rate = transfer.size / MIB / transfer.seconds if transfer.ok and transfer.seconds else 0.0
        lines.append(
            f"| {transfer.server} | {transfer.direction} | {_size_label(transfer.size)} | "
            f"{'yes' if transfer.ok else 'NO: ' + transfer.note} | {fmt(transfer.seconds, 2)} | "
            f"{fmt(rate, 0) if rate else '-'} | {fmt(transfer.master_before_mib)} | {fmt(transfer.master_mib)} | "
            f"{fmt(transfer.baseline_mib)} | {fmt(transfer.tree_mib)} |"
        )
    lines += [
        "",
        f"### Workers: the 2 ms CPU app, wrk `-c{options.concurrency}`",
        "",
        *_curve_table(workers, servers, worker_counts, "workers"),
        "",
        f"### Sessions: a read and a write per request, {options.workers} workers, wrk `-c{options.concurrency}`",
        "",
        f"`{SESSION_SERVER}` (and `ours-http`, the same gateway served directly): every request reads and writes "
        '`environ["gateway.session"]` (increments a counter); the event loop loads and stores the session. No peer '
        "has a session store in the server, so a peer's row "
        "is what its users run instead: the app itself reads the session id from a cookie, gets the session from "
        "the same memcached with pymemcache (one connection per worker process), increments the counter and sets "
        "it back as JSON (`benchmarks/apps.py`; plain get and set, no compare-and-set). The memory store has no "
        "such peer equivalent (a prefork server's workers share no memory). **hello** is the same server without "
        "a session. memcached: a private `memcached -U 0 -m 64` on loopback. **many**: "
        f"{SESSIONS_PER_CONNECTION} sessions per connection, created beforehand, their cookies sent in turn by "
        "`wrk_report.lua` (`WRK_COOKIES`), so one session rarely sees two requests at once; **shared**: every "
        "request carries one session's cookie (worst-case contention). **writes kept**: increments found in the "
        "sessions afterwards / requests wrk counted; concurrent read-modify-writes of one session overwrite each "
        "other (last writer wins), and the memcached store retries a changed session (compare-and-set) and cuts "
        "the response short when it keeps changing, which wrk counts as read errors.",
        "",
        "| server | store | sessions | req/s | p99 ms | errors | hello req/s | session / hello | writes kept |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in sessions:
        if row.session is None or row.hello is None:
            lines.append(f"| {row.server} | {row.store} | - | - | - | - | - | - | - | <!-- {row.note} -->")
            continue
        share = row.session.rps / row.hello.rps if row.hello.rps else 0.0
        kept = f"{row.stored} / {row.session.requests}"
        store = row.store if row.server in OURS_ROWS else f"{row.store} (in the app)"
        lines.append(
            f"| {row.server} | {store} | {row.mode} | {row.session.rps:.0f} | "
            f"{latency(row.session, row.session.p99_ms)} | {_errors(row.session)} | {row.hello.rps:.0f} | "
            f"{share:.2f} | {kept} |"
        )
    lines.append("")
    problems = [f"- {note}" for note in notes]
    problems += [f"- session / {row.server} / {row.store}: {row.note}" for row in sessions if row.note]
    if problems:
        lines += ["### Not measured", "", *problems, ""]
    return lines


def run(options: Options) -> Path:
    """Measure the four curves and write the ``curves`` section of the results file; returns that file."""
    specs = select_servers(options.servers or list(DEFAULT_SERVERS))
    servers = [spec.name for spec in specs]
    quick = options.quick
    counts = (
        QUICK_CONCURRENCY if quick else CONCURRENCY,
        QUICK_BODY_SIZES if quick else BODY_SIZES,
        QUICK_WORKER_COUNTS if quick else WORKER_COUNTS,
    )
    # The peers' app-level sessions need a memcached client in their virtualenv.
    bench = begin(options, "curves", specs, [APP_SESSION_PACKAGE] if any(spec.package for spec in specs) else [])
    wrk, peers, scratch = bench.wrk, bench.peers, bench.scratch
    notes: list[str] = []
    with running_stack(scratch / "main", specs, options.workers, peers, ours_args=OURS_ARGS, max_body="0") as stack:
        notes += [f"{name}: {why}" for name, why in stack.unavailable.items()]
        _warm(wrk, stack, stack.running(), min(2.0, options.duration))
        transfers = memory_curve(stack, counts[1])  # first: before 1000 connections grow the servers' buffers
        concurrency = concurrency_curve(wrk, stack, options, counts[0])
    workers, unavailable = workers_curve(wrk, scratch, specs, peers, options, counts[2])
    notes += [f"workers curve, {name}: {why}" for name, why in unavailable.items()]
    sessions = session_rows(wrk, scratch, peers, specs, options)
    data = {
        "title": f"How cost grows (wrk {options.duration:g} s per point)",
        "servers": servers,
        "concurrency": [{"server": p.server, "connections": p.x, "wrk": vars(p.wrk)} for p in concurrency],
        "memory": [vars(transfer) for transfer in transfers],
        "workers": [{"server": p.server, "workers": p.x, "wrk": vars(p.wrk)} for p in workers],
        "sessions": [
            {
                "server": row.server,
                "store": row.store,
                "mode": row.mode,
                "session": vars(row.session) if row.session else None,
                "hello": vars(row.hello) if row.hello else None,
                "stored": row.stored,
                "note": row.note,
            }
            for row in sessions
        ],
    }
    body = report_body(options, servers, counts, concurrency, transfers, workers, sessions, notes)
    return publish(bench, data, body, "cost curves")
