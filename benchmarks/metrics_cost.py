"""What ``--metrics`` and ``--stats`` cost: hello world through nginx over uwsgi, the same gateway with and without
them, interleaved round by round (A, B, A, B, ...), wrk on each; during the B rounds ``/metrics`` and the stats
document are fetched once a second, as a scraper that keen would.

Prints each round and the medians: req/s, and the master's CPU per request (µs, from /proc), the loop's share of
the cost (the counters are updated in the master). A shared 2-core machine is noisy; read the medians and their
spread, not a single pair.

    python -m benchmarks.metrics_cost [--rounds 5] [-d 5] [-c 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from benchmarks.core import ROOT, log
from benchmarks.wrk import ensure_wrk, run_wrk
from devstack.nginx import Location, Nginx, Upstream
from devstack.ports import free_port
from devstack.processes import GatewayProcess, stat_fields

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _master_cpu(pid: int) -> float:
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK if fields else 0.0


def _fetch(port: int, request: bytes) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request)
            while sock.recv(65536):
                pass
    except OSError as err:
        log(f"scrape of port {port} failed: {err}")


def _scrape(metrics: int, stats: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        _fetch(metrics, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        _fetch(stats, b"")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("-c", "--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args(argv)
    wrk = ensure_wrk()
    scratch = Path(tempfile.mkdtemp(prefix="metrics-cost-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    metrics, stats = free_port(), free_port()
    ports = {"off": free_port(), "on": free_port()}
    extra = {"off": [], "on": ["--metrics", f"127.0.0.1:{metrics}", "--stats", f"127.0.0.1:{stats}"]}
    gateways = {
        name: GatewayProcess(
            scratch / name,
            ["--uwsgi", f"127.0.0.1:{port}", "--workers", str(options.workers), *extra[name], "benchmarks.apps:app"],
            env=env,
        )
        for name, port in ports.items()
    }
    nginx = Nginx(
        scratch / "nginx",
        free_port(),
        upstreams=[Upstream(f"gw_{name}", f"127.0.0.1:{port}") for name, port in ports.items()],
        locations=[Location(f"/{name}/", f"gw_{name}", "uwsgi") for name in ports],
    )
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in ports}
    try:
        for gateway in gateways.values():
            gateway.start()
        nginx.start()
        for name in ports:  # warm-up
            run_wrk(wrk, f"{nginx.url}/{name}/hello", connections=options.connections, duration=1)
        for round_number in range(options.rounds):
            for name in ("off", "on") if round_number % 2 == 0 else ("on", "off"):
                master = gateways[name].process
                assert master is not None
                stop = threading.Event()
                scraper = threading.Thread(target=_scrape, args=(metrics, stats, stop)) if name == "on" else None
                before = _master_cpu(master.pid)
                if scraper is not None:
                    scraper.start()
                result = run_wrk(
                    wrk, f"{nginx.url}/{name}/hello", connections=options.connections, duration=options.duration
                )
                stop.set()
                if scraper is not None:
                    scraper.join()
                cpu = _master_cpu(master.pid) - before
                requests = result.rps * options.duration
                per_request = cpu / requests * 1e6 if requests else 0.0
                results[name].append((result.rps, per_request))
                log(f"round {round_number + 1} {name:3}: {result.rps:8.0f} req/s, master {per_request:5.1f} µs/request"
                    f", {result.error_count} errors")  # fmt: skip
    finally:
        nginx.stop()
        for gateway in gateways.values():
            gateway.stop()
    medians = {name: (statistics.median(r for r, _ in rows), statistics.median(c for _, c in rows))
               for name, rows in results.items()}  # fmt: skip
    off, on = medians["off"], medians["on"]
    print(f"medians over {options.rounds} interleaved rounds of {options.duration:g} s, -c {options.connections}, "
          f"{options.workers} workers:")  # fmt: skip
    for name, (rps, cpu) in medians.items():
        spread = [round(r) for r, _ in results[name]]
        print(f"  {name:3}: {rps:8.0f} req/s (rounds {spread}), master {cpu:5.1f} µs/request")
    print(f"  on/off: req/s x{on[0] / off[0]:.3f}, master CPU per request x{on[1] / off[1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
