"""In-process stand-ins for what a front connection talks to: the transport, the loop's clock and turns, the dispatcher.

A front connection (``gateway.loop.front``) decides everything from the bytes it is fed, the time it reads from
its context and what the transport tells it (pause, resume, lost). With these fakes a test feeds the bytes, moves
the clock and ends the loop's turns by hand, so each decision is driven directly: no sockets, no processes, no
sleeps. Real processes and a real nginx stay with the end-to-end tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any, TypeVar

from gateway.config.settings import Config
from gateway.loop.dispatch import Dispatcher
from gateway.loop.front import FrontConnection, FrontContext
from gateway.loop.request import Request
from gateway.protocols.fastcgi import ClientConnection, ClientEvent, EndRequest, Stdout

C = TypeVar("C", bound=FrontConnection)


class FakeLoop:
    """The two things a front context takes from the running loop: ``time`` and ``call_soon``.

    ``call_soon`` callbacks wait until the test ends the turn (``run_ready``), which is when the OutputBuffer
    hands a turn's writes to the transport and when asyncio tells a protocol its connection is lost.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.ready: list[tuple[Callable[..., object], tuple[Any, ...]]] = []

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        self.ready.append((callback, args))

    def run_ready(self) -> None:
        """End the loop's turn: run every callback scheduled so far, and those they schedule."""
        while self.ready:
            ready, self.ready = self.ready, []
            for callback, args in ready:
                callback(*args)


class FakeSocket:
    """What ``get_extra_info("socket")`` returns: it only records the options set on it."""

    def __init__(self) -> None:
        self.options: dict[tuple[int, int], int | bytes] = {}
        #: Every setsockopt call, in order: (level, option, value).
        self.calls: list[tuple[int, int, int | bytes]] = []

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.options[(level, option)] = value
        self.calls.append((level, option, value))


class FakeTransport(asyncio.Transport):
    """A transport whose far end the test reads by hand.

    ``write`` queues bytes as unsent; ``take`` is the peer reading them. With a ``high_water`` the transport
    asks its protocol to pause once more than that is unsent and to resume once the peer has read everything,
    the way asyncio's socket transports do (synchronously inside ``write``). ``close`` sends what is queued and
    then loses the connection; ``abort`` drops it. The protocol hears of the loss on the loop's next turn, as
    with asyncio. Writes after a close or an abort are kept apart (``late``): a connection must never make one.
    """

    def __init__(
        self,
        loop: FakeLoop,
        peername: object = ("10.0.0.5", 40000),
        sock: FakeSocket | None = None,
        high_water: int | None = None,
    ) -> None:
        super().__init__()
        self.loop = loop
        self.peername = peername
        self.sock = sock
        self.high_water = high_water
        self.protocol: FrontConnection | None = None
        self.unsent = bytearray()
        #: Each write's bytes as handed over, to check how a response was batched.
        self.writes: list[bytes] = []
        self.late: list[bytes] = []
        self.closing = False
        self.aborted = False
        self.lost = False
        self.paused = False
        #: pause_reading was called and resume_reading not since.
        self.reading_paused = False
        self.limits: tuple[int | None, int | None] = (None, None)

    # -- asyncio.Transport ---------------------------------------------------------------------------------
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self.peername
        if name == "socket":
            return self.sock
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            self.late.append(bytes(data))
            return
        self.writes.append(bytes(data))
        self.unsent += data
        if self.high_water is not None and not self.paused and len(self.unsent) > self.high_water:
            self.paused = True
            assert self.protocol is not None
            self.protocol.pause_writing()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def is_reading(self) -> bool:
        return not self.reading_paused

    def is_paused(self) -> bool:
        """The transport has asked its protocol to stop writing and not yet to resume."""
        return self.paused

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if self.closing:
            return
        self.closing = True
        if not self.unsent:
            self._lose()

    def abort(self) -> None:
        if self.lost:
            return
        self.closing = self.aborted = True
        self.unsent.clear()
        self._lose()

    # -- the far end -----------------------------------------------------------------------------------------
    def take(self) -> bytes:
        """Everything sent so far, as the peer reads it; resumes a paused writer, completes a pending close."""
        data = bytes(self.unsent)
        self.unsent.clear()
        if self.paused and not self.closing:
            self.paused = False
            assert self.protocol is not None
            self.protocol.resume_writing()
        if self.closing and not self.lost and not self.unsent:
            self._lose()
        return data

    def _lose(self) -> None:
        self.lost = True
        protocol = self.protocol
        if protocol is not None:
            self.loop.call_soon(protocol.connection_lost, None)


class FakeDispatcher(Dispatcher):
    """Takes requests instead of a pool: the test answers each one through its sink."""

    def __init__(self) -> None:  # no pool, no hooks: nothing runs unless the test runs it
        self.submitted: list[Request] = []
        self.cancelled: list[Request] = []

    def submit(self, request: Request) -> None:
        self.submitted.append(request)

    def cancel(self, request: Request) -> None:
        self.cancelled.append(request)


class Harness:
    """One listener's context on a fake loop and a fake dispatcher, and the connections opened on it."""

    def __init__(
        self, config: Config, spool_dir: str, *, tcp: bool = False, allowed: tuple[str, ...] = (), corked: bool = False
    ) -> None:
        self.loop = FakeLoop()
        self.dispatcher = FakeDispatcher()
        self.config = config
        self.context = FrontContext(
            config,
            self.dispatcher,
            spool_dir=spool_dir,
            label="unix:/run/test.sock",
            allowed=tuple(ipaddress.ip_network(network) for network in allowed),
            tcp=tcp,
            on_count_changed=self._count_changed,
            corked=corked,
        )
        self.count_changes = 0
        # FrontContext took these from the running loop (the test's own); the fake loop replaces them, so the
        # clock and the end of each turn are the test's to move.
        self.context.clock = self.loop.time
        self.context.call_soon = self.loop.call_soon

    def connect(
        self, connection_class: Callable[[FrontContext], C], transport: FakeTransport | None = None
    ) -> tuple[C, FakeTransport]:
        connection = connection_class(self.context)
        transport = transport or self.transport()
        transport.protocol = connection
        connection.connection_made(transport)
        return connection, transport

    def _count_changed(self) -> None:
        self.count_changes += 1

    def transport(self, **kwargs: Any) -> FakeTransport:
        return FakeTransport(self.loop, **kwargs)


def fastcgi_events(data: bytes) -> list[ClientEvent]:
    """The records a FastCGI connection wrote, parsed as a web server would."""
    return ClientConnection().receive_data(data)


def fastcgi_replies(data: bytes) -> tuple[dict[int, bytes], dict[int, EndRequest]]:
    """Each request id's STDOUT bytes and its END_REQUEST, from what a FastCGI connection wrote."""
    stdout: dict[int, bytes] = {}
    ended: dict[int, EndRequest] = {}
    for event in fastcgi_events(data):
        if isinstance(event, Stdout):
            assert event.request_id not in ended, f"STDOUT for request {event.request_id} after its END_REQUEST"
            stdout[event.request_id] = stdout.get(event.request_id, b"") + event.data
        elif isinstance(event, EndRequest):
            ended[event.request_id] = event
    return stdout, ended


def params(path: str = "/hello", method: str = "GET", **extra: str) -> dict[str, str]:
    """CGI params as nginx sends them for ``method path``."""
    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "REQUEST_URI": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "192.0.2.1",
        **extra,
    }


def body_of(request: Request) -> bytes:
    """The whole body a request was dispatched with (kept in memory below the spool threshold)."""
    return b"".join(bytes(chunk) for chunk in request.body.finish())
