"""What slow clients cost the gateway itself: its master's CPU per fast request, with and without them.

``make bench-slow`` reports the fast clients' req/s under attack as a share of unloaded; on a small machine where
wrk, the attacker and the gateway share two cores that share moves with everything else running. This measures the
gateway's side alone: one gateway on ``--http`` with wrk straight at it, alternately without and with
``--connections`` slow connections of a ``benchmarks.slowloris`` mode, and for each cell the master's CPU per
request (``/proc``). If slow clients cost the loop anything per fast request, that ratio shows it whatever the
machine's noise does to req/s. Each cell also shows the master's, the workers' and the attacker's CPU (in % of
one core): on a small machine what the attacker burns is taken from the others (``--attacker-loop asyncio``
shows what its event loop changes).

    python -m benchmarks.slow_cost [--mode http-idle|http-headers|http-body|slow-reader] [--connections 1000]
        [--pairs 3] [-d 4] [--attacker-loop uvloop|asyncio] [--ramp S] [--gateway-args '--threads 4']

Loopback only; bounded by ``--pairs`` x 2 cells of ``-d`` seconds plus the attack's ramp.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import slowloris
from benchmarks.procstats import cpu_seconds
from benchmarks.slow import DIRECT_BIG, MAX_SLOW_READERS
from benchmarks.slow import ramp_for as slow_ramp
from benchmarks.wrk import ensure_wrk, run_wrk
from devstack.ports import free_port
from devstack.processes import GatewayProcess, stat_fields

ROOT = Path(__file__).resolve().parent.parent
#: Slow modes aimed straight at ``--http``, as ``make bench-slow``'s ``direct-*`` cells use them.
MODES = ("http-idle", "http-headers", "http-body", "slow-reader")
#: Seconds the attack has, once its connections are open, to trickle before wrk starts.
RAMP = 3.0
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _own_cpu(pid: int) -> float:
    """User + system CPU seconds of one process (not its children)."""
    fields = stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK if fields is not None else 0.0


@dataclass
class Cell:
    """One wrk run: req/s, the master's µs per request, and each side's CPU in % of one core."""

    rps: float
    master_us: float
    master: float
    workers: float
    attacker: float


def _cell(wrk: str, url: str, gateway: GatewayProcess, duration: float, attacker: int | None) -> Cell:
    assert gateway.process is not None
    master = gateway.process.pid
    before = (_own_cpu(master), cpu_seconds(master), _own_cpu(attacker) if attacker else 0.0, time.monotonic())
    result = run_wrk(wrk, url, connections=32, duration=duration)
    after = (_own_cpu(master), cpu_seconds(master), _own_cpu(attacker) if attacker else 0.0, time.monotonic())
    spent = [end - start for start, end in zip(before, after, strict=True)]
    seconds = spent[3]
    return Cell(
        result.rps,
        spent[0] / max(result.requests, 1) * 1e6,
        spent[0] / seconds * 100,
        (spent[1] - spent[0]) / seconds * 100,
        spent[2] / seconds * 100,
    )


def _line(cell: Cell) -> str:
    return (
        f"{cell.rps:8.0f} req/s {cell.master_us:5.1f} µs/request (master {cell.master:3.0f}%, workers "
        f"{cell.workers:3.0f}%, attacker {cell.attacker:4.1f}%)"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.slow_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=MODES, default="http-idle")
    parser.add_argument("--connections", type=int, default=1000, help="slow connections (slow-reader: at most 200)")
    parser.add_argument("--pairs", type=int, default=3, help="unloaded/attacked pairs (default 3)")
    parser.add_argument("-d", "--duration", type=float, default=4.0, help="seconds per wrk cell (default 4)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--attacker-loop", choices=slowloris.LOOPS, default="uvloop", help="the attacker's event loop")
    parser.add_argument("--gateway-args", default="", help="more options for the gateway, e.g. '--threads 4'")
    parser.add_argument(
        "--ramp",
        type=float,
        help="seconds over which the attack opens its connections (default: make bench-slow's, min(2, N / 500)); "
        "0 opens them at once, so every trickle lands in the same instant each interval",
    )
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    port = free_port()
    gateway_args = ["--http", f"127.0.0.1:{port}", "--workers", str(args.workers), "--log-level", "warning"]
    gateway_args += ["--max-connections", str(args.connections + 1000), *shlex.split(args.gateway_args)]
    gateway_args.append("benchmarks.apps:app")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    gateway = GatewayProcess(Path(tempfile.mkdtemp(prefix="slow-cost-")), gateway_args, env=env).start()
    url = f"http://127.0.0.1:{port}/hello"
    reader = args.mode == "slow-reader"
    connections = min(args.connections, MAX_SLOW_READERS) if reader else args.connections
    ramp = slow_ramp(connections) if args.ramp is None else args.ramp
    config = slowloris.Config(
        mode=args.mode,
        port=port,
        connections=connections,
        ramp=ramp,
        duration=ramp + RAMP + args.duration + 2,
        path=DIRECT_BIG if reader else "/",
        protocol="http",
    )
    attack = [sys.executable, "-m", "benchmarks.slowloris", *slowloris.command_line(config, loop=args.attacker_loop)]
    rows: list[tuple[Cell, Cell]] = []
    try:
        _cell(wrk, url, gateway, 1.0, None)  # warm-up, not counted
        for number in range(1, args.pairs + 1):
            alone = _cell(wrk, url, gateway, args.duration, None)
            attacker = subprocess.Popen(attack, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(ramp + RAMP)
                attacked = _cell(wrk, url, gateway, args.duration, attacker.pid)
            finally:
                attacker.wait(timeout=args.duration + 60)
            rows.append((alone, attacked))
            print(f"pair {number}: alone {_line(alone)} | with {config.connections} {args.mode}: {_line(attacked)}",
                  flush=True)  # fmt: skip
    finally:
        gateway.stop(timeout=30)
    rate = statistics.median(attacked.rps / alone.rps for alone, attacked in rows)
    cost = statistics.median(attacked.master_us / alone.master_us for alone, attacked in rows)
    share = statistics.median(attacked.attacker for _, attacked in rows)
    print(f"medians over {len(rows)} pairs: fast req/s x{rate:.2f} of unloaded, master CPU per request x{cost:.2f}, "
          f"attacker {share:.1f}% of a core ({args.attacker_loop}, ramp {ramp:g} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
