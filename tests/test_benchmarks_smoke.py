"""Smoke tests for the benchmarks: the harness end to end at ``--quick`` size, and the slowloris tool against a real
gateway. Numbers are never judged here (the machine is small and noisy), only that they are produced: a row per
server with a positive req/s, counts that add up, a gateway that still answers while slow clients hold connections.

wrk and nginx are real dependencies of these tests, installed by ``make test`` (its test-deps). A missing one fails
the tests in CI (``CI=true``); on a developer's machine without them they are skipped, with the command that
installs them. The peers (gunicorn, uWSGI, pymemcache, matplotlib) come from PyPI into the benchmarks' own
virtualenv: ``make test`` installs them first (``make peers``), because a first install takes longer than a quick
run is given. A row the benchmark could not measure fails its test with the reason the results give for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import slowloris
from benchmarks.core import BenchError
from benchmarks.harness import OPTIONAL_SERVERS, QUICK_SERVERS, Backend, ensure_nginx, select_servers
from benchmarks.realapp import QUICK_SERVERS as REALAPP_QUICK_SERVERS
from devstack.ports import free_port
from devstack.processes import GatewayProcess
from gateway.protocols.fastcgi import Limits, ServerConnection
from tests.load import uwsgi_get

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_tools() -> None:
    """wrk and nginx, or a failure in CI and a skip elsewhere; never an install from inside the tests (apt-get
    from concurrent test runs would fight over dpkg's lock)."""
    missing = [] if shutil.which("wrk") else ["wrk is not installed: run `make test-deps` (apt-get install -y wrk)"]
    try:
        ensure_nginx()
    except BenchError as err:
        missing.append(str(err))
    if not missing:
        return
    if os.environ.get("CI") == "true":
        pytest.fail("; ".join(missing))
    pytest.skip("; ".join(missing))


def _run_bench(tmp_path: Path, *args: str, timeout: float) -> tuple[Path, str]:
    output = tmp_path / "RESULTS.md"
    # One second per measurement (wrk's least): these runs check that numbers are produced, not what they are.
    command = [sys.executable, "-m", "benchmarks", "--quick", "--duration", "1", *args, "--output", str(output)]
    command += ["--work-dir", str(tmp_path / "work")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert output.exists(), log[-4000:]
    return output, log


def _section(text: str, key: str) -> str:
    match = re.search(rf"<!-- BEGIN {key} .*?-->(.*?)<!-- END {key} -->", text, re.DOTALL)
    assert match, f"no {key} section in:\n{text}"
    return match.group(1)


def _first_number(row: str, column: int) -> float:
    """The number that starts cell ``column`` of a table row; a row the benchmark could not measure holds "-"
    there and says why in a trailing comment, which the failure shows."""
    cell = row.split("|")[column + 1].strip()
    first = cell.split()[0] if cell else ""
    assert re.fullmatch(r"-?[0-9.]+", first), f"not measured: {row}"
    return float(first)


def _row(section: str, server: str) -> str:
    rows = [line for line in section.splitlines() if line.startswith(f"| {server} | ")]
    assert rows, f"no row for {server} in:\n{section}"
    return rows[0]


@pytest.mark.nginx
@pytest.mark.usefixtures("bench_tools")
def test_throughput_quick(tmp_path: Path) -> None:
    output, log = _run_bench(tmp_path, timeout=300)
    section = _section(output.read_text(), "throughput")
    for server in QUICK_SERVERS:
        assert _first_number(_row(section, server), 1) > 0, section
    assert "machine:" in section and "python -m benchmarks --quick" in section
    assert "## History" in output.read_text()
    chart = output.parent / "charts" / "throughput.png"
    assert chart.read_bytes().startswith(PNG_MAGIC), log[-2000:]
    assert (output.parent / "data" / "throughput.json").exists()
    assert "round 1 hello" in log  # progress lines while it runs


@pytest.mark.nginx
@pytest.mark.usefixtures("bench_tools")
def test_slow_quick(tmp_path: Path) -> None:
    output, log = _run_bench(tmp_path, "--slow", timeout=300)
    section = _section(output.read_text(), "slow")
    summary = section.split("### Summary", 1)[1].split("\n### ", 1)[0]
    for server in QUICK_SERVERS:
        row = _row(summary, server)
        assert _first_number(row, 1) > 0, summary  # unloaded req/s
        assert row.split("|")[3].strip(), summary  # the http-body share is present
    # The HTTP listener served directly: slow headers straight at its own port, no nginx in between.
    header = next(line for line in summary.splitlines() if line.startswith("| server |"))
    column = [name.strip() for name in header.split("|")[1:-1]].index("direct-headers")
    assert _first_number(_row(summary, "ours-http"), column) >= 0, summary
    ours_http = section.split("### ours-http", 1)[1].split("\n### ", 1)[0]
    attacked = _row(ours_http, "direct-headers")
    assert _first_number(attacked, 2) == 20, ours_http  # all 20 slow connections held
    assert _first_number(attacked, 11) >= 0, ours_http  # the attacker's own CPU (its own process; 20 cost < 1 tick)
    memory = _row(section, "fcgi-params")
    assert _first_number(memory, 1) > 0, section  # connections held for the memory measurement
    assert (output.parent / "charts" / "slow.png").read_bytes().startswith(PNG_MAGIC), log[-2000:]
    # The throughput section of the same file is left for its own command.
    assert "_Not run yet._" in _section(output.read_text(), "throughput")


@pytest.mark.nginx
@pytest.mark.usefixtures("bench_tools")
def test_curves_quick(tmp_path: Path) -> None:
    """``--curves --quick``: concurrency 1 and 10, one 1 MiB upload and download, 1 and 2 workers, sessions."""
    output, log = _run_bench(tmp_path, "--curves", timeout=240)
    text = output.read_text()
    section = _section(text, "curves")
    for heading in ("### Concurrency", "### Memory against body size", "### Workers", "### Sessions"):
        assert heading in section, section
    concurrency = section.split("### Concurrency", 1)[1].split("\n### ", 1)[0]
    header = next(line for line in concurrency.splitlines() if line.startswith("| connections |"))
    columns = [name.strip() for name in header.split("|")[1:-1]]
    for connections in (1, 10):
        row = [line for line in concurrency.splitlines() if line.startswith(f"| {connections} | ")]
        assert row, concurrency
        for server in ("ours-fcgi-keep", "ours-http"):  # through nginx, and the HTTP listener served directly
            assert _first_number(row[0], columns.index(f"{server} req/s")) > 0, concurrency
    memory = section.split("### Memory", 1)[1].split("\n### ", 1)[0]
    for server in ("ours-fcgi-keep", "ours-http"):
        for direction in ("upload", "download"):
            rows = [line for line in memory.splitlines() if f"| {server} | {direction} | 1 MiB | yes |" in line]
            assert rows, memory
    workers = section.split("### Workers", 1)[1].split("\n### ", 1)[0]
    assert "| 1 | " in workers and "| 2 | " in workers, workers
    sessions = section.split("### Sessions", 1)[1].split("\n### ", 1)[0]
    stores = [("ours-fcgi-keep", "memory"), ("ours-fcgi-keep", "memcached"), ("uwsgi", "memcached")]
    stores += [("ours-http", "memory"), ("ours-http", "memcached")]
    for server, store in stores:
        # req/s of a session read and write per request: the gateway's stores, and uWSGI's app doing it itself
        rows = [line for line in sessions.splitlines() if line.startswith(f"| {server} | {store}")]
        assert rows and _first_number(rows[0], 3) > 0, sessions
    # The curves extend the throughput part: their section follows it, and the others are left alone.
    assert text.index("BEGIN throughput") < text.index("BEGIN curves") < text.index("BEGIN slow")
    assert "_Not run yet._" in _section(text, "throughput")
    assert (output.parent / "charts" / "curves.png").read_bytes().startswith(PNG_MAGIC), log[-2000:]


@pytest.fixture(scope="module")
def uwsgi_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    gateway = GatewayProcess(
        tmp_path_factory.mktemp("slowloris"),
        ["--uwsgi", f"127.0.0.1:{port}", "--workers", "1", "tests.apps:app"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).start()
    try:
        yield port
    finally:
        gateway.stop()


async def _attack_while_serving(config: slowloris.Config, port: int) -> tuple[slowloris.Summary, int, bytes]:
    """Run the tool and, once its connections are open, make one normal request beside them."""
    attack = asyncio.ensure_future(slowloris.run(config))
    await asyncio.sleep(config.ramp + 0.7)
    status, _, body = await asyncio.to_thread(uwsgi_get, port, "/hello", "", 10.0)
    return await attack, status, body


@pytest.mark.parametrize(
    ("mode", "path"),
    [("uwsgi-vars", "/hello"), ("uwsgi-body", "/echo"), ("slow-reader", "/download?size=8000000")],
)
async def test_slowloris_against_gateway(uwsgi_gateway: int, mode: str, path: str) -> None:
    config = slowloris.Config(
        mode=mode, port=uwsgi_gateway, connections=40, duration=2.0, interval=0.1, path=path, ramp=0.3,
        protocol="uwsgi",
    )  # fmt: skip
    summary, status, body = await _attack_while_serving(config, uwsgi_gateway)
    assert (status, body) == (200, b"hello"), "the gateway must keep serving beside the slow connections"
    assert summary.failed == 0, summary.report()
    assert summary.peak_open == config.connections, summary.report()
    assert summary.opened >= config.connections
    assert summary.open_at_end + summary.closed_by_server + summary.completed >= config.connections
    assert summary.bytes_sent > 0
    assert 1.5 < summary.elapsed < 5
    if mode == "slow-reader":
        assert summary.bytes_received > 0
        assert summary.completed == 0  # 8 MB at 16 bytes per 0.1 s cannot finish in 2 s


def test_slowloris_cli(uwsgi_gateway: int) -> None:
    command = [sys.executable, "-m", "benchmarks.slowloris", "--mode", "uwsgi-vars", "--port", str(uwsgi_gateway)]
    command += ["--connections", "5", "--duration", "1.5", "--interval", "0.2"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "open     5" in result.stdout  # a progress line
    assert "slowloris summary" in result.stdout and "peak open             5" in result.stdout


def test_slowloris_process_reports_json_ticks_and_stops_on_sigterm(uwsgi_gateway: int) -> None:
    """How ``make bench-slow`` runs an attack: a process of its own started from ``command_line``, its open count
    read from the JSON ticks, ended early by SIGTERM with its summary (never killed mid-count)."""
    # duration is the field's default on purpose: the command line requires it all the same.
    config = slowloris.Config(mode="uwsgi-vars", port=uwsgi_gateway, connections=7, interval=0.2)
    command = [sys.executable, "-m", "benchmarks.slowloris", *slowloris.command_line(config)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ticks = []
        for line in process.stdout:
            data = json.loads(line)
            assert data["final"] is False, data
            ticks.append(slowloris.summary_from(data))
            if ticks[-1].open == config.connections:
                break
        process.send_signal(signal.SIGTERM)
        final = json.loads(process.stdout.readline())
        assert process.wait(timeout=30) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
    assert final["final"] is True, final
    summary = slowloris.summary_from(final)
    assert summary.peak_open == config.connections and summary.open_at_end == config.connections, final
    assert summary.elapsed < config.duration, final  # stopped by the signal, not at --duration
    # The arguments rebuild the same Config (what differs from the defaults, and nothing else).
    parsed = vars(slowloris._parser().parse_args(slowloris.command_line(config, loop="asyncio")))
    assert parsed["loop"] == "asyncio" and parsed["json"]
    options = {key: value for key, value in parsed.items() if key not in ("quiet", "json", "loop")}
    assert slowloris.Config(**options) == config


def test_slowloris_refuses_unowned_remote_targets_and_unbounded_runs() -> None:
    tool = [sys.executable, "-m", "benchmarks.slowloris", "--mode", "fcgi-params", "--port", "9"]
    cases = [
        # 192.0.2.1 is TEST-NET-1: never contacted, the refusal comes before any connection.
        (["--host", "192.0.2.1", "--duration", "1"], "--i-own-this-target 192.0.2.1"),
        (["--duration", "1", "--connections", "20001"], "--connections must be 1..20000"),
        (["--duration", "3601"], "--duration must be in (0, 3600]"),
        ([], "--duration"),
    ]
    for args, message in cases:
        result = subprocess.run([*tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, args
        assert message in result.stderr, (args, result.stderr)


def test_slowloris_helpers() -> None:
    assert slowloris.is_loopback("127.0.0.2") and slowloris.is_loopback("::1")
    assert slowloris.is_loopback("::ffff:127.0.0.1") and not slowloris.is_loopback("10.0.0.1")
    assert list(slowloris.regroup([b"abcde", b"fg"], 3)) == [b"abc", b"def", b"g"]
    with pytest.raises(ValueError, match="connections"):
        slowloris.Config(mode="fcgi-params", port=1, connections=0).validate()
    # fcgi-pin: ids whose params never end, as a FastCGI server reads them.
    codec = ServerConnection(
        Limits(max_params_size=65536, max_params=100, max_body_size=1, max_requests_per_connection=8, max_connections=1)
    )
    assert codec.receive_data(slowloris.pin_payload(slowloris.Config(mode="fcgi-pin", pin_ids=3, pin_size=1000))) == []
    assert codec.active_requests == 3 and all(codec.phase(request_id) == "receiving params" for request_id in (1, 2, 3))
    assert 3000 <= codec.buffered < 3100


@pytest.mark.usefixtures("bench_tools")
def test_slow_cost_measures_both_cells_of_a_pair() -> None:
    """The slow-client cost A/B: a pair of wrk cells, alone and beside the attack, each with the master's CPU."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.slow_cost", "--pairs", "1", "-d", "1", "--connections", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    pair = re.search(
        r"alone\s+(\d+) req/s\s+([\d.]+) µs/request \(.*?\) \| with 20 http-idle:\s+(\d+) req/s\s+([\d.]+) µs/request "
        r"\(master\s+\d+%, workers\s+\d+%, attacker\s+([\d.]+)%\)",
        result.stdout,
    )
    assert pair, result.stdout
    assert all(float(value) > 0 for value in pair.groups()[:4]), result.stdout
    assert "medians over 1 pairs" in result.stdout and "attacker" in result.stdout


def test_loop_cost_drives_every_mode_and_counts_both_sides() -> None:
    """The in-process driver answers every request (it raises otherwise) and reports work on both sides."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.loop_cost", "--requests", "256", "--repeat", "1", "--opcodes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^(\S+)\s+loop\s+(\d+) opcodes/request\s+worker\s+(\d+) opcodes/request$", result.stdout, re.M)
    assert [mode for mode, _, _ in rows] == ["fcgi-keep", "fcgi", "uwsgi", "http-keep", "http"]
    assert all(int(loop) > 0 and int(worker) > 0 for _, loop, worker in rows)


@pytest.mark.nginx
@pytest.mark.usefixtures("bench_tools")
def test_realapp_quick(tmp_path: Path) -> None:
    """``--realapp --quick``: the 10 ms I/O route on ours, ours with --threads and gunicorn gthread."""
    output, log = _run_bench(tmp_path, "--realapp", timeout=300)
    section = _section(output.read_text(), "realapp")
    assert "### a route waiting 10 ms on I/O (`io-10ms`)" in section, section
    for server in REALAPP_QUICK_SERVERS:
        row = _row(section, server)
        assert _first_number(row, 1) > 0, section  # req/s
        assert _first_number(row, 6) > 0, section  # PSS MiB
    assert (output.parent / "charts" / "realapp.png").read_bytes().startswith(PNG_MAGIC), log[-2000:]
    assert "_Not run yet._" in _section(output.read_text(), "throughput")


def test_optional_rows_run_ours_with_threads_or_preload_only_when_named(tmp_path: Path) -> None:
    """``--servers ours-t4-fcgi-keep`` (#21's slow-client target with threads on): our rows again with the
    variant's options, never among the defaults (``make bench`` keeps its rows and its length)."""
    default = {spec.name for spec in select_servers(None)}
    assert not default & {spec.name for spec in OPTIONAL_SERVERS}
    rows = {
        spec.name: spec for spec in select_servers(["ours-t4-fcgi-keep", "ours-preload-http", "ours-preload-t4-uwsgi"])
    }
    expected = {
        "ours-t4-fcgi-keep": ("fcgi", ("--threads", "4")),
        "ours-preload-http": ("http", ("--preload",)),
        "ours-preload-t4-uwsgi": ("uwsgi", ("--preload", "--threads", "4")),
    }
    for name, (protocol, options) in expected.items():
        spec = rows[name]
        assert spec.protocol == protocol and spec.direct == (protocol == "http")
        backend = Backend(spec.backend, tmp_path, 2, {"fcgi": 1, "uwsgi": 2, "http": 3})
        assert backend.base == "ours" and backend.variant_args == options, name
    with pytest.raises(BenchError, match="ours-t9-fcgi"):
        select_servers(["ours-t9-fcgi"])
