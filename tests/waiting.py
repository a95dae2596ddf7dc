"""Waiting in end-to-end tests on a condition, never on a guessed interval.

An end-to-end test that must wait for the gateway polls for the thing it waits for, with a deadline: ``wait_for``
for any condition; a ``Gate`` for "the app is running this request now" and "let it finish now"; ``read_by_peer``
for "the gateway has read what this socket sent"; ``accept_queue``, ``unread`` and ``unread_by_server`` for what
waits in the kernel.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

from tests.load import wait_for

__all__ = ["Gate", "accept_queue", "read_by_peer", "unread", "unread_by_server", "wait_for"]


class Gate:
    """Holds requests to the test app's ``/hold`` route inside the app until the test releases them.

    The app appends the request's ``id`` to ``started`` when it begins and returns once ``release`` exists
    (tests/apps.py), so a test knows a worker is busy exactly when it is, and for exactly as long as it needs.
    """

    def __init__(self, directory: Path, name: str = "gate") -> None:
        self.started = directory / f"{name}.started"
        self.release_file = directory / f"{name}.release"

    def query(self, request_id: str = "") -> str:
        return urlencode({"started": str(self.started), "release": str(self.release_file), "id": request_id})

    def path(self, request_id: str = "") -> str:
        """The route and query, for tests.load.load and tests.http.request."""
        return f"/hold?{self.query(request_id)}"

    def holding(self) -> list[str]:
        """The ids of the requests the app has begun, in order."""
        return self.started.read_text().split() if self.started.exists() else []

    def wait_started(self, count: int = 1, timeout: float = 15) -> None:
        wait_for(lambda: len(self.holding()) >= count, timeout, f"{count} request(s) held by the app")

    def release(self) -> None:
        self.release_file.touch()


def read_by_peer(sock: socket.socket) -> Callable[[], bool]:
    """A condition: the process at the other end of this loopback TCP socket has read everything it was sent.

    True once the peer's receive queue in /proc/net/tcp is empty, which is when the gateway's loop has taken the
    bytes (and so fed its codec and dispatched a complete request) rather than when our kernel sent them.
    """
    wanted_local = _hex_endpoint(*sock.getpeername()[:2])
    wanted_remote = _hex_endpoint(*sock.getsockname()[:2])

    def condition() -> bool:
        for fields in _tcp_lines():
            if fields[1] == wanted_local and fields[2] == wanted_remote:
                return int(fields[4].split(":")[1], 16) == 0
        return False  # not accepted yet

    return condition


def _hex_endpoint(host: str, port: int) -> str:
    assert host == "127.0.0.1", "for IPv4 loopback sockets"
    return f"0100007F:{port:04X}"


def _tcp_lines() -> list[list[str]]:
    return [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]


def accept_queue(port: int) -> int:
    """Connections to the loopback listener on ``port`` that the kernel completed and nobody has accepted yet."""
    for fields in _tcp_lines():
        if fields[1] == _hex_endpoint("127.0.0.1", port) and fields[3] == "0A":  # LISTEN: rx_queue is the backlog
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def unread(sock: socket.socket) -> int:
    """Bytes that have arrived on this loopback TCP socket and that it has not read yet."""
    local = _hex_endpoint(*sock.getsockname()[:2])
    remote = _hex_endpoint(*sock.getpeername()[:2])
    for fields in _tcp_lines():
        if fields[1] == local and fields[2] == remote:
            return int(fields[4].split(":")[1], 16)
    raise AssertionError("the socket is not in /proc/net/tcp")


def unread_by_server(port: int) -> int:
    """Bytes clients sent to the loopback server on ``port`` that it has not read yet, over all its connections.

    A server stopped with SIGSTOP (memcached in the store tests) reads nothing: a command that reached it shows
    here, and once it runs again the count going back to 0 says it has read, and so answered, every command.
    """
    local = _hex_endpoint("127.0.0.1", port)
    return sum(
        int(fields[4].split(":")[1], 16) for fields in _tcp_lines() if fields[1] == local and fields[3] == "01"
    )  # 01: ESTABLISHED
