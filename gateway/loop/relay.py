"""The master's end of one worker's socket pair: requests out, response frames back to each request's sink.

A :class:`Relay` is the asyncio protocol of the channel. It sends the requests the scheduler hands it (frames
queued in one turn of the loop leave in one write), decodes the worker's frames, passes RESPONSE, HEAD and BODY to
the running request's sink, and on END or ABORT writes the access log line from its per-response accounting,
finishes the request and tells the scheduler the worker has room again. It is the scheduler's :class:`Lane` for
that worker; what the relay cannot decide (the worker is ready, or gone) goes to its :class:`RelayHub`.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson

from gateway.contract.channel import (
    ChannelError,
    FrameDecoder,
    Kind,
    Payload,
    decode_response,
    encode_cancel,
    encode_request,
)
from gateway.loop.request import Request

if TYPE_CHECKING:
    from gateway.loop.accesslog import ResponseLog
    from gateway.loop.scheduler import Scheduler

#: Called with a finished request and the worker's END payload; it finishes the sink (after session hooks).
RequestDone = Callable[[Request, bytes], None]

#: Frames for a worker smaller than this together are joined into one buffer; larger ones go out vectored.
_JOIN_BELOW = 1 << 16


class State(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    GONE = "gone"


class RelayHub(Protocol):
    """What relays share and report to: the supervisor."""

    #: Told every response: the access log, the counters of --stats and --metrics, or both (or None).
    access_log: ResponseLog | None
    on_request_done: RequestDone | None

    def relay_ready(self, relay: Relay, info: dict[str, Any]) -> None:
        """The worker imported the app (its READY frame)."""

    def relay_lost(self, relay: Relay, running: Request | None, waiting: list[Request]) -> None:
        """The channel closed: ``running`` (unless already answered) will never finish, ``waiting`` never started."""

    def relay_broken(self, relay: Relay, error: ChannelError) -> None:
        """The worker sent something that is not a frame: it must be stopped."""


class Relay(asyncio.Protocol):
    """The channel to one worker, the requests it holds and the accounting of the response it is sending."""

    __slots__ = (
        "_call_soon",
        "_clock",
        "_head_sent",
        "_outgoing",
        "busy_since",
        "decoder",
        "dispatched",
        "head_answered",
        "hub",
        "idle_since",
        "max_requests",
        "pid",
        "requests",
        "retiring",
        "scheduler",
        "sent",
        "served",
        "state",
        "status",
        "transport",
    )

    def __init__(
        self,
        hub: RelayHub,
        scheduler: Scheduler[Relay],
        pid: int,
        *,
        max_requests: int = 0,
        clock: Callable[[], float],
        call_soon: Callable[[Callable[[], None]], object],
    ) -> None:
        self.hub = hub
        self.scheduler = scheduler
        self.pid = pid
        self._clock = clock
        self._call_soon = call_soon
        self.state = State.STARTING
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder()
        #: Requests handed to this worker, in order: the first one runs, the others wait in its channel.
        self.requests: deque[Request] = deque()
        #: How many requests were ever handed over; the worker numbers them the same way (CANCEL names one).
        self.dispatched = 0
        #: The running request was already answered by the pool (--timeout): its late output is dropped.
        self.head_answered = False
        self._head_sent = False
        self._outgoing: list[bytes | bytearray | memoryview] | None = None
        self.busy_since = 0.0
        self.idle_since = clock()
        self.served = 0
        self.max_requests = max_requests
        self.retiring = False
        #: The running response's status and body bytes, for its access log line.
        self.status = 0
        self.sent = 0

    @property
    def request(self) -> Request | None:
        """The request this worker runs now."""
        return self.requests[0] if self.requests else None

    # -- requests out ------------------------------------------------------------------------------------------
    def hand_over(self, request: Request) -> None:
        """Queue ``request``'s frames: it runs at once if the worker is idle, else after those before it."""
        if not self.requests:
            self.state = State.BUSY
            self._started(self._clock())
        self.requests.append(request)
        self.served += 1
        self.dispatched += 1
        body = request.body
        for piece in encode_request(request.params, body.finish(), body.path, request.protocol, request.session):
            self._send(piece)

    def _started(self, now: float) -> None:
        self._head_sent = False
        self.head_answered = False
        self.status = 0
        self.sent = 0
        self.busy_since = now

    def _send(self, frame: bytes | bytearray | memoryview) -> None:
        # Frames queued in one turn of the loop (requests for a pipelining worker, cancels) leave in one write.
        outgoing = self._outgoing
        if outgoing is None:
            self._outgoing = [frame]
            self._call_soon(self._flush)
        else:
            outgoing.append(frame)

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, None
        if outgoing and self.transport is not None and not self.transport.is_closing():
            if len(outgoing) == 1:
                self.transport.write(outgoing[0])
            elif sum(map(len, outgoing)) <= _JOIN_BELOW:
                self.transport.write(b"".join(outgoing))
            else:
                self.transport.writelines(outgoing)  # one vectored write: a large body is not copied

    def cancel(self, request: Request) -> None:
        """``request``'s client is gone: the worker stops its output, or skips it if it has not started."""
        if self.transport is None or self.state is not State.BUSY:
            return
        for position, waiting in enumerate(self.requests):
            if waiting is request:
                self._send(encode_cancel(self.dispatched - len(self.requests) + 1 + position))
                return

    def close(self) -> None:
        """EOF on the worker's channel: it finishes what it runs, then exits."""
        if self.transport is not None:
            self._flush()
            self.transport.close()

    # -- frames back -------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._on_frames(self.decoder.feed(data))
        except ChannelError as err:
            self.hub.relay_broken(self, err)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost()

    def _on_frames(self, frames: list[tuple[int, Payload]]) -> None:
        for kind, payload in frames:
            request = self.request
            if kind == Kind.RESPONSE:
                response, head_length, extras = decode_response(payload)
                self._head_sent = True
                self.status = _status_code(response[:3].tobytes())
                self.sent += len(response) - head_length
                if request is not None and not self.head_answered and not request.sink.client_gone:
                    request.sink.send_response(response)
                self._ended(request, Kind.END, extras)
            elif kind == Kind.BODY:
                self.sent += len(payload)
                if request is not None and not self.head_answered and not request.sink.client_gone:
                    request.sink.send_body(payload)
            else:
                # A head or END extras come as a view only from 16 KiB on (rare); bytes() returns bytes as they are.
                self._on_frame(kind, bytes(payload), request)

    def _on_frame(self, kind: int, payload: bytes, request: Request | None) -> None:
        if kind == Kind.HEAD:
            self._head_sent = True
            self.status = _status_code(payload)
            if request is not None and not self.head_answered and not request.sink.client_gone:
                request.sink.send_head(payload)
        elif kind in (Kind.END, Kind.ABORT):
            self._ended(request, kind, payload)
        elif kind == Kind.READY:
            self.state = State.IDLE
            self.hub.relay_ready(self, orjson.loads(payload))
        else:
            raise ChannelError(f"worker {self.pid} sent an unknown frame kind {kind}")

    def _ended(self, request: Request | None, kind: int, extras: bytes) -> None:
        """The running request's response is complete (END) or cut short (ABORT): on to the next one."""
        # Read before the next request's start resets them: its frames may already be here (--pipeline).
        answered, status, sent = self.head_answered, self.status, self.sent
        requests = self.requests
        if requests:
            requests.popleft()
        if requests:
            self._started(self._clock())
        elif self.state is State.BUSY:
            self.state = State.IDLE
        if request is not None and not answered:
            self._finish(request, kind == Kind.ABORT, extras, status, sent)
        if self.state is State.IDLE:
            self.scheduler.lane_idle(self)
        elif self.state is State.BUSY:
            self.scheduler.lane_has_room(self)

    def _finish(self, request: Request, aborted: bool, extras: bytes, status: int, sent: int) -> None:
        request.body.discard()
        hub = self.hub
        if hub.access_log is not None:
            hub.access_log.write(request, status, sent, self.pid, self._clock())
        if aborted:
            request.release()
            if not request.sink.client_gone:
                request.sink.abort()
        elif hub.on_request_done is not None:
            hub.on_request_done(request, extras)  # it finishes the sink and releases the request
        else:
            request.release()
            if not request.sink.client_gone:
                request.sink.finish()

    def lost(self) -> None:
        """The channel closed: the process died or is exiting. Report what it ran and what it never started."""
        if self.state is State.GONE:
            return
        self.state = State.GONE
        requests = list(self.requests)
        self.requests.clear()
        if requests:
            running = None if self.head_answered else requests[0]
            self.hub.relay_lost(self, running, requests[1:])

    @property
    def head_sent(self) -> bool:
        """The running response's head is out: a failure can only cut it short now."""
        return self._head_sent


def _status_code(head: bytes) -> int:
    try:
        return int(head[:3])
    except ValueError:
        return 0
