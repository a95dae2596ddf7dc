"""A buffered request on its way to a worker, and the contract its response travels back through.

Every wire protocol (FastCGI, uwsgi, and later HTTP) produces :class:`Request` objects and implements
:class:`ResponseSink`; the dispatcher and the worker pool see nothing else, so a new listener type never touches
dispatch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from gateway.loop.spool import RequestBody


class ResponseSink(Protocol):
    """Where one request's response goes. Calls arrive in order: head, body*, then finish or abort."""

    @property
    def client_gone(self) -> bool:
        """The client (the web server) closed the connection or aborted this request."""
        ...

    def send_head(self, head: bytes) -> None:
        """``head`` is b"200 OK\\r\\nName: value\\r\\n\\r\\n"; the sink adds its protocol's prefix."""

    def send_body(self, data: bytes | memoryview) -> None: ...

    def send_response(self, response: bytes | memoryview) -> None:
        """A whole response: the head (as for ``send_head``) directly followed by all of the body; ``finish`` still
        follows. One call, so a sink frames it for its web server in one piece."""

    def send_file(self, fd: int, offset: int, length: int) -> None:
        """``length`` bytes of the open regular file ``fd`` from ``offset`` as the next body bytes, sent by the
        kernel; the sink owns ``fd`` from here on and closes it however the response ends."""

    def finish(self) -> None:
        """The response is complete."""

    def abort(self) -> None:
        """The response broke off after its head: make the client see a failure, not a short success."""


def status_head(status: str, body: bytes) -> bytes:
    return f"{status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n\r\n".encode()


def respond_error(sink: ResponseSink, status: str, extra_headers: str = "") -> None:
    """Answer a request the app never saw (413, 502, 503, 504) through the normal response path."""
    body = f"{status}\n".encode()
    head = status_head(status, body)
    if extra_headers:
        head = head[:-2] + extra_headers.encode("latin-1") + b"\r\n"
    sink.send_head(head)
    sink.send_body(body)
    sink.finish()


class Request:
    """A request whose params and whole body have arrived.

    A plain class, not a slotted dataclass: what the pool, the hooks and the budget set on a request keeps its
    default on the class until they set it, so a request costs the five assignments of its arrival, and the
    state and cleanups that most requests never have are made on first use. Identity is its equality (it is a
    key of the budget's ``waiting``).
    """

    #: The session the worker gets: (id, data) as loaded, (None, None) for none yet; None when sessions are off.
    session: tuple[str | None, dict[str, Any] | None] | None = None
    # What the worker pool keeps per request once a worker holds it (one worker runs several with --threads):
    #: Its number on the worker's channel (1, 2, ...): what CANCEL and SELECT frames name.
    number = 0
    #: When it started running on a worker's thread (the loop's clock); 0 while it waits in the worker's channel.
    started_at = 0.0
    #: Already answered on the pool's behalf (504 past --timeout): the worker's late output is dropped.
    answered = False
    #: Its response's head went out (a failure can only cut it short now); status and body bytes, for the log.
    head_sent = False
    status = 0
    sent = 0
    _state: dict[str, Any] | None = None
    _cleanups: list[Callable[[], None]] | None = None

    def __init__(
        self, params: dict[str, str], body: RequestBody, sink: ResponseSink, protocol: str, received_at: float
    ) -> None:
        self.params = params
        self.body = body
        self.sink = sink
        self.protocol = protocol
        self.received_at = received_at

    def __repr__(self) -> str:
        return f"<Request {self.params.get('REQUEST_METHOD', '-')} {self.params.get('REQUEST_URI', '-')}>"

    @property
    def state(self) -> dict[str, Any]:
        """Filled by before-dispatch hooks (sessions), read by after-response hooks; never sent to the worker."""
        state = self._state
        if state is None:
            state = self._state = {}
        return state

    @property
    def cleanups(self) -> list[Callable[[], None]]:
        """Run once when the request is over, however it ended (a session lock's release, for instance)."""
        cleanups = self._cleanups
        if cleanups is None:
            cleanups = self._cleanups = []
        return cleanups

    def release(self) -> None:
        """The request is over: remove its body's temporary file, if any, and run its cleanups."""
        self.body.discard()
        cleanups = self._cleanups
        if cleanups:
            self._cleanups = None
            for cleanup in cleanups:
                cleanup()
