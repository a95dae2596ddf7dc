"""The real-app benchmark: a template page from sqlite, a route waiting 10 ms on I/O and a 10 MiB download
through ``wsgi.file_wrapper`` (``benchmarks/realapp_app.py``), on our gateway with and without ``--threads`` and
``--preload``, and on
uWSGI, gunicorn gthread and waitress, through one nginx, interleaved.

Hello world is not what users run: this is the comparison issue #21 asks for. Each round measures every (scenario,
server) cell once with the server order rotated; the tables show medians over rounds. Beside req/s and p99: CPU
per request of the server's whole process tree (from /proc, before and after each cell) and the tree's **PSS**
(``/proc/PID/smaps_rollup``, shared pages divided among the processes that map them) at the end of each cell,
so a server whose workers share their parent's pages is not charged for them twice as summed RSS would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import (
    THREADS,
    Options,
    ServerSpec,
    Stack,
    begin,
    http_get,
    interleaved_rounds,
    running_stack,
    section_data,
    select_named,
    servers_and_gaps,
    unusable_cells,
)
from benchmarks.procstats import cpu_seconds, pss_bytes, tree_pids
from benchmarks.report import fmt, median, publish
from benchmarks.wrk import WrkResult, run_wrk

APP = "benchmarks.realapp_app:app"
#: What the template page, the I/O route and the download need in the peers' virtualenv besides the servers.
APP_PACKAGE = "jinja2"


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    path: str
    #: The start of a correct answer, checked once before measuring.
    expect: bytes
    #: wrk connections at most (a download of 10 MiB per request saturates loopback long before -c 32 does).
    max_connections: int = 0


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("page", "Jinja2 template, 50 rows from sqlite", "/page", b"<!doctype html>"),
    Scenario("io-10ms", "a route waiting 10 ms on I/O", "/io", b"waited 10 ms"),
    Scenario("file-10m", "10 MiB download through wsgi.file_wrapper", "/file", bytes(range(256)), 4),
)
SCENARIO_NAMES = tuple(scenario.name for scenario in SCENARIOS)

SERVERS: tuple[ServerSpec, ...] = (
    ServerSpec("ours", "ours, FastCGI keep-conn", "ours", "fcgi", True, None,
               "{n} workers, 1 thread each; fastcgi_keep_conn on + upstream keepalive 64"),
    ServerSpec(f"ours-t{THREADS}", f"ours, --threads {THREADS}", "ours-threads", "fcgi", True, None,
               f"{{n}} workers x --threads {THREADS}; fastcgi_keep_conn on + upstream keepalive 64"),
    ServerSpec("ours-preload", "ours, --preload", "ours-preload", "fcgi", True, None,
               "{n} workers forked from one --preload template; fastcgi_keep_conn on + upstream keepalive 64"),
    ServerSpec(f"ours-preload-t{THREADS}", f"ours, --preload --threads {THREADS}", "ours-preload-threads", "fcgi",
               True, None, f"{{n}} workers x --threads {THREADS} forked from one --preload template; "
               "fastcgi_keep_conn on + upstream keepalive 64"),
    ServerSpec("uwsgi", "uWSGI", "uwsgi", "uwsgi", False, "uwsgi", "--master --processes {n}, uwsgi protocol"),
    ServerSpec(f"uwsgi-t{THREADS}", f"uWSGI --threads {THREADS}", "uwsgi-threads", "uwsgi", False, "uwsgi",
               f"--master --processes {{n}} --threads {THREADS}, uwsgi protocol"),
    ServerSpec("gunicorn-gthread", "gunicorn gthread", "gunicorn-gthread", "http", False, "gunicorn",
               f"-w {{n}} -k gthread --threads {THREADS}, proxy_pass"),
    ServerSpec("waitress", "waitress", "waitress", "http", False, "waitress",
               "ONE process, 4 threads (its default), proxy_pass"),
)  # fmt: skip
SERVER_NAMES = tuple(spec.name for spec in SERVERS)
QUICK_SERVERS = ("ours", f"ours-t{THREADS}", "ours-preload", "gunicorn-gthread")
QUICK_SCENARIOS = ("io-10ms",)
#: The row the ratios compare with: the uWSGI configuration users copy.
REFERENCE = f"uwsgi-t{THREADS}"


@dataclass
class Cell:
    server: str
    scenario: str
    round: int
    wrk: WrkResult
    cpu: float
    pss: int


@dataclass
class Row:
    server: str
    scenario: str
    rps: float
    p99_ms: float
    errors: int
    requests: int
    cpu_ms_per_request: float
    pss_mib: float
    rounds: int


def _check(stack: Stack, spec: ServerSpec, scenario: Scenario) -> str | None:
    try:
        status, answer = http_get(stack.port, f"/t/{spec.name}{scenario.path}", timeout=30)
    except OSError as err:
        return f"check request failed: {type(err).__name__}: {err}"
    if status != 200 or not answer.startswith(scenario.expect):
        return f"check request answered HTTP {status}, {len(answer)} bytes: {answer[:60]!r}"
    return None


def _measure(stack: Stack, wrk: str, spec: ServerSpec, scenario: Scenario, options: Options) -> Cell | None:
    root = stack.backend_for(spec).pid
    if root is None:
        return None
    url = f"http://127.0.0.1:{stack.port}/t/{spec.name}{scenario.path}"
    before = cpu_seconds(root)
    connections = min(options.concurrency, scenario.max_connections or options.concurrency)
    result = run_wrk(wrk, url, connections=connections, duration=options.duration)
    cpu = cpu_seconds(root) - before
    return Cell(spec.name, scenario.name, 0, result, cpu, pss_bytes(tree_pids(root)))


def _aggregate(cells: list[Cell]) -> Row:
    first = cells[0]
    return Row(
        server=first.server,
        scenario=first.scenario,
        rps=median([cell.wrk.rps for cell in cells]),
        p99_ms=median([cell.wrk.p99_ms for cell in cells]),
        errors=sum(cell.wrk.error_count for cell in cells),
        requests=sum(cell.wrk.requests for cell in cells),
        cpu_ms_per_request=median([cell.cpu / cell.wrk.requests * 1000 for cell in cells if cell.wrk.requests]),
        pss_mib=median([cell.pss for cell in cells]) / (1 << 20),
        rounds=len(cells),
    )


def report_body(
    options: Options,
    specs: list[ServerSpec],
    scenarios: list[Scenario],
    rows: dict[tuple[str, str], Row],
    skipped: dict[tuple[str, str], str],
    unavailable: dict[str, str],
) -> list[str]:
    lines = [
        f"`benchmarks/realapp_app.py` on every server, {options.workers} worker processes (threads as each row "
        f"says) behind one private nginx. wrk: 1 thread, {options.concurrency} connections (4 for the download), "
        f"{options.duration:g} s "
        f"per cell, {options.rounds} round(s), servers interleaved and rotated each round; medians over rounds. "
        f"**x {REFERENCE}**: req/s relative to uWSGI `--processes {options.workers} --threads {THREADS}`. "
        "**CPU ms/req**: user + system CPU of the server's process tree per request. **PSS**: the tree's "
        "proportional set size (smaps_rollup) at the end of the cell. nginx and wrk share the machine's cores "
        "with the server; a small machine is noisy, so read ratios, not absolute numbers.",
        "",
    ]
    for scenario in scenarios:
        lines += [
            f"### {scenario.label} (`{scenario.name}`)",
            "",
            f"| server | req/s | x {REFERENCE} | p99 ms | errors | CPU ms/req | PSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        reference = rows.get((REFERENCE, scenario.name))
        for spec in specs:
            row = rows.get((spec.name, scenario.name))
            if row is None:
                why = unavailable.get(spec.name) or skipped.get((spec.name, scenario.name), "not measured")
                lines.append(f"| {spec.name} | - | - | - | - | - | - | <!-- {why} -->")
                continue
            ratio = f"{row.rps / reference.rps:.2f}" if reference is not None and reference.rps else "n/a"
            lines.append(
                f"| {spec.name} | {row.rps:.0f} | {ratio} | {fmt(row.p99_ms, 2)} | {row.errors} | "
                f"{fmt(row.cpu_ms_per_request, 2)} | {fmt(row.pss_mib)} |"
            )
        lines.append("")
    return lines + servers_and_gaps(specs, options.workers, unavailable, skipped)


def select_servers(names: Sequence[str] | None) -> list[ServerSpec]:
    return select_named({spec.name: spec for spec in SERVERS}, names, "real-app server")


def run(options: Options) -> Path:
    """Run the real-app benchmark and write its section of the results file; returns that file."""
    names = options.servers or (list(QUICK_SERVERS) if options.quick else None)
    specs = select_servers(names)
    scenario_names = options.scenarios or (list(QUICK_SCENARIOS) if options.quick else None)
    scenarios = select_named({scenario.name: scenario for scenario in SCENARIOS}, scenario_names, "scenario")
    bench = begin(options, "realapp", specs, extra_packages=[APP_PACKAGE])
    with running_stack(bench.scratch, specs, options.workers, bench.peers, app=APP) as stack:
        running = stack.running()
        skipped = unusable_cells(stack, running, scenarios, _check)

        def measure(spec: ServerSpec, scenario: Scenario) -> Cell | None:
            return _measure(stack, bench.wrk, spec, scenario, options)

        def describe(spec: ServerSpec, scenario: Scenario, cell: Cell) -> str:
            return (
                f"{spec.name:<17} {cell.wrk.rps:8.0f} req/s  p99 {cell.wrk.p99_ms:7.2f} ms  "
                f"cpu {cell.cpu / max(cell.wrk.requests, 1) * 1000:.2f} ms/req  pss {cell.pss >> 20} MiB"
            )

        cells = interleaved_rounds(stack, running, scenarios, options.rounds, skipped, measure, describe)
        unavailable = dict(stack.unavailable)
    rows = {key: _aggregate(value) for key, value in cells.items()}
    title = f"Real app, {options.workers} workers, wrk -c{options.concurrency} (median of {options.rounds})"
    data = section_data(title, specs, scenarios, rows, unavailable, skipped)
    body = report_body(options, specs, scenarios, rows, skipped, unavailable)
    return publish(bench, data, body, "real-app chart")
