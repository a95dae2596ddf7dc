"""The master's end of one worker's socket pair: requests out, response frames back to each request's sink.

A :class:`Relay` is the asyncio protocol of the channel. It sends the requests the scheduler hands it (frames
queued in one turn of the loop leave in one write), decodes the worker's frames, passes RESPONSE, HEAD and BODY to
the running request's sink, and on END or ABORT writes the access log line from its per-response accounting,
finishes the request and tells the scheduler the worker has room again. A worker with --threads runs several
requests at once: its frames for one request follow a SELECT frame naming it (a worker with one thread never
sends one: its frames are for the oldest request it holds), and the first ``threads`` requests it holds are the
ones running, since it starts them in order and a thread takes the next only after its END. It is the
scheduler's :class:`Lane` for that worker; what the relay cannot decide (the worker is ready, or gone) goes to its
:class:`RelayHub`.
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson

from gateway.contract.channel import (
    ChannelError,
    FrameDecoder,
    Kind,
    Payload,
    decode_file,
    decode_response,
    decode_select,
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


#: The members the per-request path compares with, looked up once: an Enum class's attribute costs about 50 ns
#: a lookup on Python 3.11 (a module global, about 10), and every request made several.
_RESPONSE, _BODY, _END, _ABORT = Kind.RESPONSE, Kind.BODY, Kind.END, Kind.ABORT
_IDLE, _BUSY = State.IDLE, State.BUSY


class RelayHub(Protocol):
    """What relays share and report to: the supervisor."""

    #: Told every response: the access log, the counters of --stats and --metrics, or both (or None).
    access_log: ResponseLog | None
    on_request_done: RequestDone | None

    def relay_ready(self, relay: Relay, info: dict[str, Any]) -> None:
        """The worker imported the app (its READY frame)."""

    def relay_lost(self, relay: Relay, running: list[Request], waiting: list[Request]) -> None:
        """The channel closed: ``running`` (those not answered already) will never finish, ``waiting`` never
        started."""

    def relay_broken(self, relay: Relay, error: ChannelError) -> None:
        """The worker sent something that is not a frame: it must be stopped."""


class Relay(asyncio.Protocol):
    """The channel to one worker, the requests it holds and the accounting of the response it is sending."""

    __slots__ = (
        "_call_soon",
        "_clock",
        "_outgoing",
        "_selected",
        "busy_since",
        "decoder",
        "dispatched",
        "files",
        "hub",
        "idle_since",
        "max_requests",
        "pid",
        "requests",
        "retiring",
        "scheduler",
        "served",
        "state",
        "threads",
        "transport",
    )

    def __init__(
        self,
        hub: RelayHub,
        scheduler: Scheduler[Relay],
        pid: int,
        *,
        max_requests: int = 0,
        threads: int = 1,
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
        #: The files socket: descriptors of file responses (FILE frames) arrive here, non-blocking.
        self.files: socket.socket | None = None
        self.decoder = FrameDecoder()
        #: Requests handed to this worker and not finished, in order: the first ``threads`` run, the others wait
        #: in its channel.
        self.requests: deque[Request] = deque()
        self.threads = threads
        #: How many requests were ever handed over; the worker numbers them the same way (CANCEL names one).
        self.dispatched = 0
        #: The request the worker's last SELECT frame named (threads only); None: the oldest one held.
        self._selected: Request | None = None
        self._outgoing: list[bytes | bytearray | memoryview] | None = None
        self.busy_since = 0.0
        self.idle_since = clock()
        self.served = 0
        self.max_requests = max_requests
        self.retiring = False

    @property
    def request(self) -> Request | None:
        """The request the worker's next frames are for: the one SELECT named, else the oldest one it holds."""
        selected = self._selected
        if selected is not None:
            return selected
        return self.requests[0] if self.requests else None

    @property
    def running(self) -> list[Request]:
        """The requests the worker runs now (at most ``threads``)."""
        return list(islice(self.requests, self.threads))

    # -- requests out ------------------------------------------------------------------------------------------
    def hand_over(self, request: Request) -> None:
        """Queue ``request``'s frames: it runs at once if the worker is idle, else after those before it."""
        requests = self.requests
        if not requests:
            self.state = _BUSY
        requests.append(request)
        if len(requests) <= self.threads:
            request.started_at = self.busy_since = self._clock()
        self.served += 1
        request.number = self.dispatched = self.dispatched + 1
        body = request.body
        for piece in encode_request(request.params, body.finish(), body.path, request.protocol, request.session):
            self._send(piece)

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
        if request in self.requests:
            self._send(encode_cancel(request.number))

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
            request: Request | None = self._selected
            if request is None and self.requests:
                request = self.requests[0]
            if request is None:
                self._on_frame(kind, bytes(payload), request)  # READY, or a frame with no request to answer
            elif kind == _RESPONSE:
                response, head_length, extras = decode_response(payload)
                request.head_sent = True
                request.status = _status_code(response[:3].tobytes())
                request.sent += len(response) - head_length
                if not request.answered and not request.sink.client_gone:
                    request.sink.send_response(response)
                self._ended(request, _END, extras)
            elif kind == _BODY:
                request.sent += len(payload)
                if not request.answered and not request.sink.client_gone:
                    request.sink.send_body(payload)
            else:
                # A head or END extras come as a view only from 16 KiB on (rare); bytes() returns bytes as they are.
                self._on_frame(kind, bytes(payload), request)

    def _on_frame(self, kind: int, payload: bytes, request: Request | None) -> None:
        if kind == Kind.SELECT:
            self._select(payload)
        elif kind == Kind.READY:
            self.state = State.IDLE
            self.hub.relay_ready(self, orjson.loads(payload))
        elif request is None:
            raise ChannelError(f"worker {self.pid} sent frame kind {kind} with no request to answer")
        elif kind == Kind.HEAD:
            request.head_sent = True
            request.status = _status_code(payload)
            if not request.answered and not request.sink.client_gone:
                request.sink.send_head(payload)
        elif kind in (Kind.END, Kind.ABORT):
            self._ended(request, kind, payload)
        elif kind == Kind.FILE:
            self._file(request, payload)
        else:
            raise ChannelError(f"worker {self.pid} sent an unknown frame kind {kind}")

    def _file(self, request: Request, payload: bytes) -> None:
        """FILE: a range of the open file the worker passed over the files socket is the response's next bytes."""
        offset, length = decode_file(payload)
        files = self.files
        if files is None:
            raise ChannelError(f"worker {self.pid} sent a FILE frame, but it has no files socket")
        try:
            _, fds, _, _ = socket.recv_fds(files, 1, 1)
        except BlockingIOError:
            raise ChannelError(f"worker {self.pid} sent a FILE frame without its descriptor") from None
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ChannelError(f"worker {self.pid} passed {len(fds)} descriptors for one FILE frame")
        request.sent += length
        if request.answered or request.sink.client_gone:
            os.close(fds[0])
        else:
            request.sink.send_file(fds[0], offset, length)

    def _select(self, payload: bytes) -> None:
        """SELECT: the frames that follow are for the request of that number (a worker with --threads)."""
        number = decode_select(payload)
        for request in self.requests:
            if request.number == number:
                self._selected = request
                return
        raise ChannelError(f"worker {self.pid} selected request {number}, which it does not hold")

    def _ended(self, request: Request, kind: int, extras: bytes) -> None:
        """A running request's response is complete (END) or cut short (ABORT): on to the next one."""
        requests = self.requests
        if requests[0] is request:
            requests.popleft()
        else:
            requests.remove(request)
        threads = self.threads
        if threads > 1:
            self._selected = None
        if len(requests) >= threads:
            # The thread that ran it takes the first request still waiting in the channel.
            requests[threads - 1].started_at = self.busy_since = self._clock()
        elif not requests and self.state is _BUSY:
            self.state = _IDLE
        if not request.answered:
            self._finish(request, kind == _ABORT, extras)
        if self.state is _IDLE:
            self.scheduler.lane_idle(self)
        elif self.state is _BUSY:
            self.scheduler.lane_has_room(self)

    def _finish(self, request: Request, aborted: bool, extras: bytes) -> None:
        request.body.discard()
        hub = self.hub
        if hub.access_log is not None:
            hub.access_log.write(request, request.status, request.sent, self.pid, self._clock())
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
        self._selected = None
        if self.files is not None:
            self.files.close()
            self.files = None
        if requests:
            threads = self.threads
            running = [request for request in requests[:threads] if not request.answered]
            self.hub.relay_lost(self, running, requests[threads:])


def _status_code(head: bytes) -> int:
    try:
        return int(head[:3])
    except ValueError:
        return 0
