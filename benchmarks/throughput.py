"""The throughput benchmark: every server, every app scenario, wrk through one nginx, interleaved rounds.

On a small, noisy machine the order of measurements matters as much as their length: a burst of noise during one
server's block would be read as that server being slow. So each round measures every (scenario, server) cell once,
with the server order rotated from round to round, and the tables show medians over rounds. CPU time comes from
/proc for the server's whole process tree (master and workers, before and after each cell), memory from sampling
the tree's RSS during the cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.core import log
from benchmarks.harness import (
    Options,
    ServerSpec,
    Stack,
    begin,
    http_get,
    interleaved_rounds,
    running_stack,
    section_data,
    select_named,
    select_servers,
    servers_and_gaps,
    unusable_cells,
)
from benchmarks.procstats import PeakRss, cpu_seconds
from benchmarks.report import fmt, median, publish
from benchmarks.wrk import WrkResult, run_wrk, wrk_timeout


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    path: str
    body_bytes: int
    #: The body a correct answer has (checked once before measuring, so a 404 is never benchmarked).
    expect: bytes


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("hello", "hello world", "/hello", 0, b"Hello world\n"),
    Scenario("64k", "64 KiB response", "/64k", 0, b"x" * 65536),
    Scenario("upload-1m", "1 MiB upload read by the app", "/upload", 1 << 20, b"1048576\n"),
    Scenario("sleep-5ms", "app sleeps 5 ms", "/sleep", 0, b"Hello world\n"),
    Scenario("cpu-2ms", "app burns 2 ms of CPU", "/cpu", 0, b"Hello world\n"),
)
SCENARIO_NAMES = tuple(scenario.name for scenario in SCENARIOS)
QUICK_SCENARIOS = ("hello",)
REFERENCE = "uwsgi"


@dataclass
class Cell:
    server: str
    scenario: str
    round: int
    wrk: WrkResult
    cpu: float
    peak_rss: int


@dataclass
class Row:
    """Medians over rounds for one (server, scenario)."""

    server: str
    scenario: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    cpu_per_1k: float
    peak_rss_mib: float
    rounds: int


def select_scenarios(names: Sequence[str] | None) -> list[Scenario]:
    return select_named({scenario.name: scenario for scenario in SCENARIOS}, names, "scenario")


def _check(stack: Stack, spec: ServerSpec, scenario: Scenario) -> str | None:
    """One request before measuring: the right status and body, or the reason this cell is skipped."""
    body = b"x" * scenario.body_bytes if scenario.body_bytes else None
    try:
        status, answer = http_get(stack.port_for(spec), stack.path(spec, scenario.path), body=body, timeout=30)
    except OSError as err:
        return f"check request failed: {type(err).__name__}: {err}"
    if status != 200 or answer != scenario.expect:
        return f"check request answered HTTP {status}, {len(answer)} bytes: {answer[:60]!r}"
    return None


def _measure(stack: Stack, wrk: str, spec: ServerSpec, scenario: Scenario, options: Options) -> Cell | None:
    backend = stack.backend_for(spec)
    root = backend.pid
    if root is None:
        return None
    url = stack.url(spec, scenario.path)
    before = cpu_seconds(root)
    with PeakRss(root) as peak:
        result = run_wrk(
            wrk, url, connections=options.concurrency, duration=options.duration, body_bytes=scenario.body_bytes
        )
    return Cell(spec.name, scenario.name, 0, result, cpu_seconds(root) - before, peak.peak)


def _aggregate(cells: list[Cell]) -> Row:
    first = cells[0]
    requests = sum(cell.wrk.requests for cell in cells)
    return Row(
        server=first.server,
        scenario=first.scenario,
        rps=median([cell.wrk.rps for cell in cells]),
        p50_ms=median([cell.wrk.p50_ms for cell in cells]),
        p99_ms=median([cell.wrk.p99_ms for cell in cells]),
        errors=sum(cell.wrk.error_count for cell in cells),
        requests=requests,
        cpu_per_1k=median([cell.cpu / cell.wrk.requests * 1000 for cell in cells if cell.wrk.requests]),
        peak_rss_mib=max(cell.peak_rss for cell in cells) / (1 << 20),
        rounds=len(cells),
    )


def _latency(row: Row, value: float) -> str:
    return fmt(value, 2) if row.requests else "-"


def _ratio(row: Row, reference: Row | None) -> str:
    if reference is None or not reference.rps:
        return "n/a"
    return f"{row.rps / reference.rps:.2f}"


def report_body(
    options: Options,
    specs: list[ServerSpec],
    scenarios: list[Scenario],
    rows: dict[tuple[str, str], Row],
    skipped: dict[tuple[str, str], str],
    unavailable: dict[str, str],
) -> list[str]:
    """The section's tables, between the header and the chart that ``publish`` adds."""
    lines = [
        f"Every server runs `benchmarks/apps.py` with {options.workers} workers behind one private nginx "
        "(`worker_processes 1`, default buffering), except the rows served directly (`-http` and `granian`: wrk "
        f"at the server's own port). wrk: 1 thread, {options.concurrency} connections, "
        f"{options.duration:g} s per cell, {options.rounds} round(s), servers interleaved and rotated each round; "
        "the tables show medians over rounds. **errors**: wrk socket errors + non-2xx + responses later than "
        f"wrk's {wrk_timeout(options.duration)} s timeout, all rounds. **CPU**: user + "
        "system seconds of the server's process tree per 1000 requests. **RSS**: peak of the tree's summed RSS "
        "(shared pages counted in every process), sampled every 0.25 s. **x uWSGI**: req/s relative to uWSGI.",
        "",
    ]
    if len(scenarios) > 1:
        header = "| server | " + " | ".join(scenario.name for scenario in scenarios) + " |"
        lines += ["### Summary: req/s (x uWSGI)", "", header, "|---" * (len(scenarios) + 1) + "|"]
        for spec in specs:
            cells = []
            for scenario in scenarios:
                row = rows.get((spec.name, scenario.name))
                reference = rows.get((REFERENCE, scenario.name))
                cells.append(f"{row.rps:.0f} ({_ratio(row, reference)})" if row else "-")
            lines.append(f"| {spec.name} | " + " | ".join(cells) + " |")
        lines.append("")
    for scenario in scenarios:
        lines += [
            f"### {scenario.label} (`{scenario.name}`)",
            "",
            "| server | req/s | x uWSGI | p50 ms | p99 ms | errors | CPU s/1k req | peak RSS MiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        reference = rows.get((REFERENCE, scenario.name))
        for spec in specs:
            row = rows.get((spec.name, scenario.name))
            if row is None:
                why = unavailable.get(spec.name) or skipped.get((spec.name, scenario.name), "not measured")
                lines.append(f"| {spec.name} | - | - | - | - | - | - | - | <!-- {why} -->")
                continue
            lines.append(
                f"| {spec.name} | {row.rps:.0f} | {_ratio(row, reference)} | {_latency(row, row.p50_ms)} | "
                f"{_latency(row, row.p99_ms)} | {row.errors} | {fmt(row.cpu_per_1k, 3)} | {fmt(row.peak_rss_mib)} |"
            )
        lines.append("")
    return lines + servers_and_gaps(specs, options.workers, unavailable, skipped)


def run(options: Options) -> Path:
    """Run the throughput benchmark and write its section of the results file; returns that file."""
    specs = select_servers(options.servers)
    scenarios = select_scenarios(options.scenarios)
    bench = begin(options, "throughput", specs)
    wrk = bench.wrk
    with running_stack(bench.scratch, specs, options.workers, bench.peers) as stack:
        running = stack.running()
        skipped = unusable_cells(stack, running, scenarios, _check)
        warm = min(2.0, options.duration)
        log(f"warming up every server ({warm:g} s of hello each)")
        for spec in running:
            run_wrk(wrk, stack.url(spec, "/hello"), connections=4, duration=warm)

        def measure(spec: ServerSpec, scenario: Scenario) -> Cell | None:
            return _measure(stack, wrk, spec, scenario, options)

        def describe(spec: ServerSpec, scenario: Scenario, cell: Cell) -> str:
            return (
                f"{spec.name:<15} {cell.wrk.rps:9.0f} req/s  p99 {cell.wrk.p99_ms:7.2f} ms  "
                f"errors {cell.wrk.error_count}"
            )

        cells = interleaved_rounds(stack, running, scenarios, options.rounds, skipped, measure, describe)
        unavailable = dict(stack.unavailable)
        for backend in stack.backends.values():
            if backend.restarts:
                unavailable.setdefault(f"{backend.name} (note)", f"died and was restarted {backend.restarts} time(s)")
    rows = {key: _aggregate(value) for key, value in cells.items()}
    title = f"Throughput, {options.workers} workers, wrk -c{options.concurrency} (median of {options.rounds})"
    data = section_data(title, specs, scenarios, rows, unavailable, skipped)
    data["cells"] = [
        {**{key: value for key, value in vars(cell).items() if key != "wrk"}, "wrk": vars(cell.wrk)}
        for group in cells.values()
        for cell in group
    ]
    body = report_body(options, specs, scenarios, rows, skipped, unavailable)
    return publish(bench, data, body, "throughput chart")
