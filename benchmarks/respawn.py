"""What replacing a dead worker costs, with and without ``--preload``: a fresh import against a fork.

``python -m benchmarks.respawn [--kills 5] [--app benchmarks.realapp_app:app]`` starts our gateway with one
worker (HTTP on a loopback port), once plain and once with ``--preload``, interleaved. Each kill waits until the
worker is older than the supervisor's backoff window, SIGKILLs it, and times from the kill to the answer of one
request sent as soon as the worker has been reaped: the request waits in the queue until the replacement is ready,
so this is what a respawn costs a client (death noticed, process started or forked, app imported or not, READY, the
request served). Prints the median and range per mode.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

from devstack.ports import free_port
from devstack.processes import GatewayProcess, tree_pids

ROOT = Path(__file__).resolve().parent.parent
#: The supervisor restarts a worker that died younger than this after a growing delay (its _STABLE_AFTER).
STABLE_AFTER = 5.0
PATH = "/page"


def _get(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", PATH)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _worker(root: int) -> int:
    """The one worker: the tree's process whose title says so."""
    for pid in tree_pids(root):
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if cmdline.read().startswith(b"gateway worker"):
                return pid
    raise RuntimeError("no worker in the tree")


def _one_kill(gateway: GatewayProcess, port: int) -> float:
    assert gateway.process is not None
    worker = _worker(gateway.process.pid)
    time.sleep(STABLE_AFTER + 0.5)  # past the backoff window: the replacement starts at once
    os.kill(worker, signal.SIGKILL)
    started = time.perf_counter()
    # Until its parent reaps it, the loop may not know yet: a request handed to it now would fail with it (502).
    while worker in tree_pids(gateway.process.pid):
        time.sleep(0.001)
    status = _get(port)
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"the request after the kill answered {status}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5, help="kills per mode (default 5)")
    parser.add_argument("--app", default="benchmarks.realapp_app:app", help="the WSGI app (MODULE:CALLABLE)")
    options = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    modes = {"import (default)": (), "fork (--preload)": ("--preload",)}
    gateways: dict[str, tuple[GatewayProcess, int]] = {}
    scratch = Path(tempfile.mkdtemp(prefix="respawn-"))
    try:
        for name, extra in modes.items():
            port = free_port()
            args = ["--http", f"127.0.0.1:{port}", "--workers", "1", "--log-level", "error", *extra, options.app]
            gateway = GatewayProcess(scratch / name.split()[0], args, env=env, cwd=ROOT).start()
            gateways[name] = (gateway, port)
            assert _get(port) == 200
        times: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(options.kills):
            for name, (gateway, port) in gateways.items():
                times[name].append(_one_kill(gateway, port))
        for name, values in times.items():
            ms = sorted(value * 1000 for value in values)
            print(f"{name:<18} first request after a kill: median {statistics.median(ms):6.1f} ms "
                  f"(range {ms[0]:.1f}-{ms[-1]:.1f}, {len(ms)} kills)")  # fmt: skip
    finally:
        for gateway, _ in gateways.values():
            gateway.stop()


if __name__ == "__main__":
    main()
