"""The params-pinning attack on the loop's memory, and what the gateway's master pays for it.

Each hostile FastCGI connection opens ``--ids`` request ids and sends ``--params`` bytes of params for each
without ever ending one, then sits there (as the issue #16 attack did: 128 ids x 64 KiB, 7.5 MiB a connection
before the memory budgets). Meanwhile a well-behaved client sends ``/hello`` requests on a kept connection, one
at a time. Reported: the master's RSS before, at its peak during the attack, and after the hostile connections
are gone (closed by the gateway at ``--header-timeout``, or by us), plus the well-behaved client's req/s
unloaded and under attack.

``python -m benchmarks.hostile [--connections 80] [--ids 128] [--params 65000] [--seconds 10]`` starts its own
gateway (two workers, loopback, a free port) with the default budgets unless ``ARGS`` after ``--`` say otherwise.
Bounded: at most 2,000 connections, loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import socket
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.ports import free_port
from devstack.processes import GatewayProcess
from gateway.protocols.fastcgi import ClientConnection, EndRequest, encode_begin, encode_params, encode_request

MAX_CONNECTIONS = 2000
HELLO = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "/hello",
    "PATH_INFO": "/hello",
    "QUERY_STRING": "",
    "SERVER_NAME": "bench",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
}


def rss(pid: int) -> int:
    """Resident bytes of ``pid``."""
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_params(request_id: int, size: int) -> bytes:
    """BEGIN_REQUEST and about ``size`` bytes of a params stream that never ends (no empty PARAMS record)."""
    return encode_begin(request_id) + encode_params(request_id, {"HTTP_X_PAD": "p" * max(size - 14, 1)})[:-8]


@dataclass
class Attack:
    """Hostile connections pushing never-ending params, without blocking: what the gateway stops reading stays
    in the kernel's buffers (ours and its)."""

    port: int
    connections: int
    ids: int
    size: int
    socks: list[socket.socket] = field(default_factory=list)
    pending: list[memoryview] = field(default_factory=list)
    closed_by_peer: int = 0

    def start(self) -> None:
        payload = b"".join(open_params(request_id, self.size) for request_id in range(1, self.ids + 1))
        for _ in range(min(self.connections, MAX_CONNECTIONS)):
            sock = socket.create_connection(("127.0.0.1", self.port))
            sock.setblocking(False)
            self.socks.append(sock)
            self.pending.append(memoryview(payload))

    def push(self) -> int:
        """Send what each connection can take now; returns the bytes sent."""
        sent = 0
        for index, sock in enumerate(self.socks):
            data = self.pending[index]
            if not data or sock.fileno() < 0:
                continue
            try:
                count = sock.send(data[: 1 << 18])
            except BlockingIOError:
                continue
            except OSError as err:
                if err.errno in (errno.EPIPE, errno.ECONNRESET):
                    self.closed_by_peer += 1
                    self.pending[index] = memoryview(b"")
                    sock.close()
                    continue
                raise
            self.pending[index] = data[count:]
            sent += count
        return sent

    def alive(self) -> int:
        """Connections the gateway has not closed (a read of each finds no EOF or reset)."""
        count = 0
        for sock in self.socks:
            if sock.fileno() < 0:
                continue
            try:
                if sock.recv(1 << 16, socket.MSG_PEEK) == b"":
                    continue
            except BlockingIOError:
                pass
            except OSError:
                continue
            count += 1
        return count

    def close(self) -> None:
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()


class HelloClient:
    """A well-behaved client: /hello requests one at a time on a kept FastCGI connection, counted."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.served = 0
        self.failed: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def one(self) -> None:
        self.sock.sendall(encode_request(1, HELLO, keep_conn=True))
        codec = ClientConnection()
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("the gateway closed the well-behaved client's connection")
            if any(isinstance(event, EndRequest) for event in codec.receive_data(data)):
                self.served += 1
                return

    def rate(self, seconds: float) -> float:
        """Requests per second over ``seconds``, in this thread."""
        start, before = time.monotonic(), self.served
        while time.monotonic() - start < seconds:
            self.one()
        return (self.served - before) / (time.monotonic() - start)

    def start(self) -> None:
        def run() -> None:
            try:
                while not self._stop.is_set():
                    self.one()
            except OSError as err:
                self.failed = str(err)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        self.sock.close()


def start_gateway(scratch: Path, port: int, extra: Sequence[str]) -> GatewayProcess:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = ["--fcgi", f"127.0.0.1:{port}", "--workers", "2", *extra, "tests.apps:app"]
    return GatewayProcess(scratch, args, env=env).start()


def run(connections: int, ids: int, size: int, seconds: float, extra: Sequence[str]) -> dict[str, float]:
    port = free_port()
    gateway = start_gateway(Path(tempfile.mkdtemp(prefix="hostile-")), port, extra)
    assert gateway.process is not None
    pid = gateway.process.pid
    try:
        client = HelloClient(port)
        client.rate(1.0)  # warm up
        base = rss(pid)
        unloaded = client.rate(seconds / 2)
        attack = Attack(port, connections, ids, size)
        attack.start()
        peak = rss(pid)
        start = time.monotonic()
        under_attack_served = client.served
        while time.monotonic() - start < seconds:
            attack.push()
            for _ in range(20):
                client.one()
            peak = max(peak, rss(pid))
        loaded = (client.served - under_attack_served) / (time.monotonic() - start)
        alive = attack.alive()
        attack.close()
        time.sleep(2.5)  # two sweeps: the budget sees the burst is over and trims
        after = rss(pid)
        client.sock.close()
        return {
            "rss_base_mib": base / 2**20,
            "rss_peak_mib": peak / 2**20,
            "rss_after_mib": after / 2**20,
            "unloaded_rps": unloaded,
            "loaded_rps": loaded,
            "ratio": loaded / unloaded if unloaded else 0.0,
            "alive_at_end": alive,
            "closed_by_gateway": attack.closed_by_peer,
        }
    finally:
        gateway.stop(timeout=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=80)
    parser.add_argument("--ids", type=int, default=128)
    parser.add_argument("--params", type=int, default=65000, help="params bytes per id")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("gateway_args", nargs="*", help="after --: more gateway options")
    args = parser.parse_args(argv)
    result = run(args.connections, args.ids, args.params, args.seconds, args.gateway_args)
    for name, value in result.items():
        print(f"{name}: {value:.1f}")


if __name__ == "__main__":
    main()
