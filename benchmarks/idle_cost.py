"""What an idle or trickling connection costs the gateway's event loop: resident memory per connection.

``python -m benchmarks.idle_cost [--connections 1000,10000]`` starts a gateway with one worker on a free loopback
port, opens the connections (each sends a FastCGI BEGIN_REQUEST and stops inside the next record, as a slowloris
client would), and reports the master's RSS growth per connection and its open descriptors. Bounded: at most
20,000 connections, a few seconds per step, loopback only.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import tempfile
import time
from pathlib import Path

from devstack.ports import free_port
from devstack.processes import GatewayProcess
from gateway.protocols.fastcgi import encode_begin

MAX_CONNECTIONS = 20_000
#: BEGIN_REQUEST, then the first bytes of a PARAMS record header: the connection is stuck inside a record.
STUCK_REQUEST = encode_begin(1) + b"\x01\x04\x00\x01"


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(counts: list[int]) -> list[tuple[int, int, int]]:
    """For each count: (connections, RSS growth in bytes, descriptors held by the master)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = ["--fcgi", f"127.0.0.1:{port}", "--workers", "1", "--header-timeout", "600", "--log-level", "error"]
    gateway = GatewayProcess(Path(tempfile.mkdtemp(prefix="idle-cost-")), args, env=env).start()
    process = gateway.process
    assert process is not None
    results = []
    try:
        for count in counts:
            time.sleep(1)
            base = _rss(process.pid)
            held = []
            for _ in range(min(count, MAX_CONNECTIONS)):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(STUCK_REQUEST)
                held.append(sock)
            time.sleep(2)
            results.append((len(held), _rss(process.pid) - base, len(os.listdir(f"/proc/{process.pid}/fd"))))
            for sock in held:
                sock.close()
            print(f"{len(held)} connections: +{results[-1][1] / len(held) / 1024:.2f} KiB each", flush=True)
    finally:
        gateway.stop(timeout=30)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--connections", default="1000,10000", help="comma-separated counts (at most 20000 each)")
    args = parser.parse_args(argv)
    counts = [int(part) for part in args.connections.split(",") if part]
    for connections, grown, descriptors in measure(counts):
        print(
            f"| {connections} | {grown / 1024:.0f} KiB | {grown / connections / 1024:.2f} KiB | {descriptors} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
