"""A small concurrent client for lifecycle tests: raw uwsgi requests from threads, every outcome counted.

Each request opens its own connection (uwsgi carries one request per connection), so a failure is attributable to
exactly one request: a status other than expected, a reset, or a timeout.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from gateway.protocols.uwsgi import encode_request


def uwsgi_get(port: int, path: str, query: str = "", timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One GET over uwsgi; returns (status, headers, body)."""
    params = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "REQUEST_URI": path + (f"?{query}" if query else ""),
        "QUERY_STRING": query,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
    }
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(encode_request(params))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1."):
        raise ConnectionError(f"no HTTP status line in {raw[:80]!r}")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    bodies: Counter[bytes] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Set by ``stop``: the clients make no new request (those in flight complete and are counted).
    stopping: bool = False

    def stop(self) -> None:
        """End the load now, once the test has seen what it waited for, rather than at its time bound."""
        self.stopping = True

    @property
    def total(self) -> int:
        return sum(self.statuses.values()) + len(self.errors)

    @property
    def failures(self) -> int:
        return self.total - self.statuses[200]


@contextlib.contextmanager
def load(
    port: int, path: str, *, concurrency: int = 4, requests: int | None = None, seconds: float | None = None
) -> Iterator[LoadResult]:
    """Run ``concurrency`` clients in the background until ``requests`` were made or ``seconds`` passed.

    The with-block runs while the load is on; leaving it waits for the load to end (bounded either way).
    """
    assert requests is not None or seconds is not None
    result = LoadResult()
    deadline = time.monotonic() + (seconds if seconds is not None else 120.0)
    remaining = [requests if requests is not None else 1 << 60]
    route, _, query = path.partition("?")

    def client() -> None:
        while time.monotonic() < deadline:
            with result.lock:
                if remaining[0] <= 0 or result.stopping:
                    return
                remaining[0] -= 1
            try:
                status, _, body = uwsgi_get(port, route, query, timeout=20)
            except OSError as err:
                with result.lock:
                    result.errors.append(f"{type(err).__name__}: {err}")
                continue
            with result.lock:
                result.statuses[status] += 1
                result.bodies[body[:64]] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    try:
        yield result
    finally:
        for thread in threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0) + 30)


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (the gateway's workers)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != b"Z":
            found.add(int(entry))
    return found


def wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)
