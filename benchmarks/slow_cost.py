"""What slow clients cost the gateway itself: its master's CPU per fast request, with and without them.

``make bench-slow`` reports the fast clients' req/s under attack as a share of unloaded; on a small machine where
wrk, the attacker and the gateway share two cores that share moves with everything else running. This measures the
gateway's side alone: one gateway on ``--http`` with wrk straight at it, alternately without and with
``--connections`` slow connections of a ``benchmarks.slowloris`` mode, and for each cell the master's CPU per
request (``/proc``). If slow clients cost the loop anything per fast request, that ratio shows it whatever the
machine's noise does to req/s.

    python -m benchmarks.slow_cost [--mode http-idle] [--connections 1000] [--pairs 3] [-d 4]

Loopback only; bounded by ``--pairs`` x 2 cells of ``-d`` seconds plus the attack's ramp.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.wrk import ensure_wrk, run_wrk
from devstack.ports import free_port
from devstack.processes import GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
#: Slow modes aimed straight at ``--http``, as ``make bench-slow``'s ``direct-*`` cells use them.
MODES = ("http-idle", "http-headers", "http-body")
#: Seconds the attack has to open its connections and trickle once before wrk starts.
RAMP = 3.0


def _master_cpu(gateway: GatewayProcess) -> float:
    assert gateway.process is not None
    pid = gateway.process.pid
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cell(wrk: str, url: str, gateway: GatewayProcess, duration: float) -> tuple[float, float]:
    """(req/s, master µs per request) of one wrk run."""
    before = _master_cpu(gateway)
    result = run_wrk(wrk, url, connections=32, duration=duration)
    spent = _master_cpu(gateway) - before
    return result.rps, spent / max(result.requests, 1) * 1e6


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slow_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, default="http-idle")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=3, help="unloaded/attacked pairs (default 3)")
    parser.add_argument("-d", "--duration", type=float, default=4.0, help="seconds per wrk cell (default 4)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    port = free_port()
    gateway_args = ["--http", f"127.0.0.1:{port}", "--workers", str(args.workers), "--log-level", "warning"]
    gateway_args += ["--max-connections", str(args.connections + 1000), "benchmarks.apps:app"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    gateway = GatewayProcess(Path(tempfile.mkdtemp(prefix="slow-cost-")), gateway_args, env=env).start()
    url = f"http://127.0.0.1:{port}/hello"
    attack = [sys.executable, "-m", "benchmarks.slowloris", "--mode", args.mode, "--port", str(port)]
    attack += ["--connections", str(args.connections), "--duration", str(RAMP + args.duration + 2), "--quiet"]
    rows: list[tuple[float, float, float, float]] = []
    try:
        _cell(wrk, url, gateway, 1.0)  # warm-up, not counted
        for number in range(1, args.pairs + 1):
            alone = _cell(wrk, url, gateway, args.duration)
            attacker = subprocess.Popen(attack, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(RAMP)
                attacked = _cell(wrk, url, gateway, args.duration)
            finally:
                attacker.wait(timeout=args.duration + 60)
            rows.append((*alone, *attacked))
            print(f"pair {number}: alone {alone[0]:8.0f} req/s {alone[1]:5.1f} µs/request | with {args.connections} "
                  f"{args.mode}: {attacked[0]:8.0f} req/s {attacked[1]:5.1f} µs/request", flush=True)  # fmt: skip
    finally:
        gateway.stop(timeout=30)
    rate = statistics.median(row[2] / row[0] for row in rows)
    cost = statistics.median(row[3] / row[1] for row in rows)
    print(f"medians over {len(rows)} pairs: fast req/s x{rate:.2f} of unloaded, master CPU per request x{cost:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
