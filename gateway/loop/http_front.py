"""The HTTP listener's connections: requests read whole by the loop, answered in order, framed for the client.

Like the FastCGI and uwsgi fronts, a connection only feeds its codec (``gateway.protocols.http``) and turns its
events into :class:`Request` objects for the dispatcher; the workers see the same params and the same whole
body. What HTTP adds is the connection's own life: keep-alive, pipelined requests answered in arrival order
(one at a time: the next is dispatched when the previous response is finished, and reading pauses while a
complete request waits), ``Expect: 100-continue``, framing of the response (``protocols.http.response``),
error answers with a one-line reason, and a lingering close after an error so the client reads the answer
instead of a reset.

Memory budgets (gateway/loop/budget.py), as on the other fronts: what the connection holds is the head still
arriving (the codec's ``buffered``) and the in-memory bodies of its requests not dispatched yet (the one being
received, and a complete one waiting behind the response being sent). Reading is paused for two reasons, a
pipelined request waiting its turn (``reading_paused``) and the loop-wide budget (``input_paused``), and resumes
only once neither holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from email.utils import formatdate

from gateway.loop.counters import COUNTERS
from gateway.loop.filesend import FileSegment
from gateway.loop.forwarded import apply_forwarded, trusted
from gateway.loop.front import FrontConnection, FrontContext
from gateway.loop.request import Request
from gateway.loop.spool import RequestBody
from gateway.protocols.http import (
    CHUNKED_END,
    CONTENT_TOO_LARGE,
    CONTINUE,
    BodyData,
    BodyTooLarge,
    Framing,
    HTTPError,
    Limits,
    RequestComplete,
    RequestHead,
    ServerConnection,
    chunk,
    error_response,
    start_response,
)

log = logging.getLogger("gateway.front")

#: After an error answer, how long the client may keep sending what we will not read before the close.
LINGER_SECONDS = 2.0
_REQUEST_TIMEOUT = "408 Request Timeout"

_date_cache: list[object] = [0, b""]


def date_header() -> bytes:
    """``Date: ...\\r\\n`` (RFC 9110 6.6.1), formatted once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
    header = _date_cache[1]
    assert isinstance(header, bytes)
    return header


class _Exchange:
    """One request on the connection, from its head to the end of its response; the ResponseSink of its request."""

    __slots__ = (
        "body",
        "complete",
        "connection",
        "continue_wanted",
        "error",
        "framing",
        "gone",
        "head",
        "held",
        "keep_alive",
        "request",
    )

    def __init__(self, connection: HTTPConnection, head: RequestHead | None, body: RequestBody | None) -> None:
        self.connection = connection
        self.head = head
        self.body = body
        self.request: Request | None = None
        self.complete = False
        self.continue_wanted = head is not None and head.expect_continue
        self.keep_alive = head is not None and head.keep_alive
        self.framing = Framing.LENGTH
        self.gone = False
        #: A whole response, written on finish (so a session that cannot be stored sends none of it).
        self.held = b""
        #: An answer of ours instead of the app's (status, reason): a malformed request, a refused body.
        self.error: tuple[str, str] | None = None

    @property
    def client_gone(self) -> bool:
        return self.gone

    def send_head(self, head: bytes) -> None:
        connection = self.connection
        assert self.head is not None
        start = start_response(
            head,
            head_request=self.head.method == "HEAD",
            http_10=self.head.http_10,
            keep_alive=self.keep_alive,
            extra=connection.server_headers(),
        )
        self.framing = start.framing
        self.keep_alive = start.keep_alive
        connection.write(start.head)

    def send_body(self, data: bytes | memoryview) -> None:
        framing = self.framing
        if framing is Framing.CHUNKED:
            if data:
                self.connection.writelines(chunk(data))
        elif framing is not Framing.NONE:
            self.connection.write(data)

    def send_file(self, fd: int, offset: int, length: int) -> None:
        """A range of an open file (``wsgi.file_wrapper``): sent with sendfile when the body goes out as it is."""
        framing = self.framing
        if framing is Framing.LENGTH or framing is Framing.CLOSE:
            self.connection.send_segment(FileSegment(fd, offset, length, None))
            return
        try:
            # sendfile cannot frame chunks, and a file answered without a Content-Length is rare: read it.
            if framing is Framing.CHUNKED:
                self.send_body(os.pread(fd, length, offset))
        finally:
            os.close(fd)

    def send_response(self, response: bytes | memoryview) -> None:
        connection = self.connection
        assert self.head is not None
        raw = bytes(response)
        split = raw.index(b"\r\n\r\n") + 4
        start = start_response(
            raw[:split],
            head_request=self.head.method == "HEAD",
            http_10=self.head.http_10,
            keep_alive=self.keep_alive,
            extra=connection.server_headers(),
            body_length=len(raw) - split,
        )
        self.framing = start.framing
        self.keep_alive = start.keep_alive
        self.held = start.head if start.framing is Framing.NONE else start.head + raw[split:]

    def finish(self) -> None:
        held, self.held = self.held, b""
        if held:
            self.connection.write(held)
        elif self.framing is Framing.CHUNKED:
            self.connection.write(CHUNKED_END)
        self.connection.response_done(self)

    def abort(self) -> None:
        # After its head a response can only fail by the connection breaking: a reset, never a short success.
        self.held = b""
        self.gone = True
        self.connection.reset_connection()


class HTTPConnection(FrontConnection):
    protocol_name = "http"
    #: In-memory bytes of the bodies of exchanges not dispatched yet (their part of ``held``); a class default.
    body_held = 0

    def __init__(self, context: FrontContext) -> None:
        super().__init__(context)
        limits = context.codec_limits
        config = context.config
        if not isinstance(limits, Limits):
            # The same limits as the other listeners: --max-params-size bounds the head (and the target),
            # --max-params the number of header fields, --max-body-size the body.
            limits = context.codec_limits = Limits(
                max_target_size=config.max_params_size,
                max_head_size=config.max_params_size,
                max_headers=config.max_params,
                max_body_size=config.max_body_size,
            )
        self.codec = ServerConnection(limits)
        #: In arrival order; the first is the one being answered.
        self.exchanges: deque[_Exchange] = deque()
        self.receiving: _Exchange | None = None
        self.reading_paused = False
        self.lingering = False
        self.linger_since = 0.0
        self.eof = False
        #: The connection's own params (peer, server address, scheme), copied into each request's.
        self.base_params: dict[str, str] = {}
        self.trusted_proxy = False
        self.server_line = b"" if config.no_server_header else b"Server: gateway\r\n"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.closed or self.transport is None:
            return
        transport_ = self.transport
        params = self.base_params
        peer = transport_.get_extra_info("peername")
        host: str | None = None
        if isinstance(peer, tuple) and peer:
            host = str(peer[0])
            params["REMOTE_ADDR"] = host
            params["REMOTE_PORT"] = str(peer[1])
        server = transport_.get_extra_info("sockname")
        if isinstance(server, tuple) and server:
            params["SERVER_NAME"] = str(server[0])
            params["SERVER_PORT"] = str(server[1])
        if self.context.tls is not None:
            params["HTTPS"] = "on"
            params["REQUEST_SCHEME"] = "https"
        else:
            params["REQUEST_SCHEME"] = "http"
        self.trusted_proxy = trusted(host, self.context.config.forwarded_allow_ips)

    def server_headers(self) -> bytes:
        return date_header() + self.server_line

    # -- input -------------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.lingering or self.closed:
            return
        codec = self.codec
        try:
            events = codec.receive_data(data)
            error = None
        except HTTPError as err:
            events = err.events
            error = err
        for event in events:
            event_type = type(event)
            if event_type is BodyData:
                assert isinstance(event, BodyData)
                receiving = self.receiving
                if receiving is not None and receiving.body is not None:
                    body = receiving.body
                    before = body.memory
                    body.write(event.data)
                    self.body_held += body.memory - before
            elif event_type is RequestHead:
                assert isinstance(event, RequestHead)
                self._head(event)
            elif event_type is RequestComplete:
                assert isinstance(event, RequestComplete)
                self._complete(event.body_size)
            elif event_type is BodyTooLarge:
                assert isinstance(event, BodyTooLarge)
                self._refuse(CONTENT_TOO_LARGE, f"request body exceeds {event.limit} bytes (--max-body-size)")
        if error is not None:
            self._refuse(error.status, error.reason)
        else:
            self.track_input(codec.input_pending, codec.head_pending)
            if len(self.exchanges) > 1 and not self.reading_paused:
                # A complete request waits behind the one being answered: read no further until it is its turn,
                # so a pipelining client cannot make us buffer requests without end.
                self._pause_for_turn()
        if not self.closed:
            held = codec.buffered + self.body_held
            if held != self.held:
                self.account(held)

    def _recount(self) -> None:
        """After a body was dropped (a refused, cut or timed-out request): what the rest hold, reported."""
        held = 0
        for exchange in self.exchanges:
            if exchange.request is None and exchange.body is not None:
                held += exchange.body.memory  # received, or complete and waiting for its turn
        self.body_held = held
        if not self.closed and self.codec.buffered + held != self.held:
            self.account(self.codec.buffered + held)

    def spool_bodies(self) -> None:
        if self.body_held:
            for exchange in self.exchanges:
                if exchange.request is None and exchange.body is not None:
                    exchange.body.spool()
            self.body_held = 0
        self.set_held(self.codec.buffered)

    # -- two reasons not to read: a request waiting its turn, and the loop-wide budget ----------------------------
    def _pause_for_turn(self) -> None:
        self.reading_paused = True
        if not self.input_paused and self.transport is not None:
            self.transport.pause_reading()

    def _resume_for_turn(self) -> None:
        self.reading_paused = False
        if not self.input_paused and self.transport is not None:
            self.transport.resume_reading()

    def pause_input(self) -> bool:
        if self.reading_paused:  # not reading already: only the budget's reason to add
            if self.input_paused or self.closed:
                return False
            self.input_paused = True
            return True
        return super().pause_input()

    def resume_input(self) -> None:
        if self.reading_paused:
            self.input_paused = False  # still waiting for its turn: reading resumes with it
            return
        super().resume_input()

    def _head(self, head: RequestHead) -> None:
        params = head.params
        params.update(self.base_params)
        if self.trusted_proxy:
            apply_forwarded(params, self.context.config.forwarded_allow_ips)
        exchange = _Exchange(self, head, self.context.new_body())
        self.exchanges.append(exchange)
        self.receiving = exchange
        if exchange.continue_wanted and exchange is self.exchanges[0]:
            limit = self.codec.limits.max_body_size
            if head.content_length is None or head.content_length <= limit:
                self._send_continue(exchange)

    def _send_continue(self, exchange: _Exchange) -> None:
        exchange.continue_wanted = False
        self.write(CONTINUE)

    def _complete(self, body_size: int) -> None:
        exchange = self.receiving
        self.receiving = None
        if exchange is None or exchange.head is None:
            return
        exchange.complete = True
        exchange.continue_wanted = False  # the body came without waiting for it
        if exchange.head.content_length is None and body_size:
            exchange.head.params["CONTENT_LENGTH"] = str(body_size)  # a chunked body, decoded
        if exchange is self.exchanges[0]:
            self._dispatch(exchange)

    def _dispatch(self, exchange: _Exchange) -> None:
        assert exchange.head is not None
        assert exchange.body is not None
        request = exchange.request = Request(
            exchange.head.params, exchange.body, exchange, "http", self.context.clock()
        )
        if exchange.body.size:
            if self.body_held:
                self.body_held -= exchange.body.memory  # complete and dispatched: no longer the connection's
            self.context.budget.wait(request)  # its body, if in memory, counts until the request ends
        self.context.dispatcher.submit(request)

    def _refuse(self, status: str, reason: str) -> None:
        """Answer ``status`` with ``reason`` once the responses before it are out, then close."""
        log.warning("%s %s: %s; answered %s and closed", self.protocol_name, self.peer, reason, status[:3])
        receiving = self.receiving
        self.receiving = None
        if receiving is not None and not receiving.complete:
            # The refused request itself (413) or one cut by the error: its place in line gets the answer.
            self.exchanges.remove(receiving)
            if receiving.body is not None:
                receiving.body.discard()
            self._recount()
        exchange = _Exchange(self, None, None)
        exchange.error = (status, reason)
        self.exchanges.append(exchange)
        if exchange is self.exchanges[0]:
            self._answer_error(exchange)
        elif not self.reading_paused:
            self._pause_for_turn()

    def _answer_error(self, exchange: _Exchange) -> None:
        assert exchange.error is not None
        status, reason = exchange.error
        self.exchanges.clear()
        self.linger(error_response(status, reason, self.server_headers()))

    def linger(self, last: bytes) -> None:
        """Write ``last``, stop sending, and drop whatever the client still sends until it closes (or for
        LINGER_SECONDS): closing with unread input would reset the connection, and a reset can destroy our
        answer in the client's kernel before the client has read it."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return
        self.lingering = True
        self.linger_since = self.context.clock()
        self.input_since = None
        # What the client sends now is dropped unread, and nothing it sent is held any more: read on, whatever
        # paused reading before.
        paused = self.reading_paused or self.input_paused
        self.reading_paused = False
        self.body_held = 0
        self.release_held()
        if paused:
            transport.resume_reading()
        self.write(last)
        output = self.output
        if output is not None:
            output.flush()
        if transport.can_write_eof() and (output is None or not output.pending):
            transport.write_eof()
        else:
            self.close_when_drained()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.codec.close()  # its parser's callbacks point back at it: freed now, not by the garbage collector

    def eof_received(self) -> bool | None:
        # A client may half-close once it has sent its requests: the complete ones are still answered.
        self.eof = True
        if self.lingering or not self.exchanges:
            return None
        receiving = self.receiving
        if receiving is not None:
            self.exchanges.remove(receiving)
            self.receiving = None
            if receiving.body is not None:
                receiving.body.discard()  # never complete: its file, if it had one, goes now
            self._recount()
        return True if self.exchanges else None

    # -- the order of answers ----------------------------------------------------------------------------------
    def response_done(self, exchange: _Exchange) -> None:
        exchange.gone = True
        exchange.request = None
        if self.exchanges and self.exchanges[0] is exchange:
            self.exchanges.popleft()
        if self.closed:
            return
        if not exchange.keep_alive or (self.eof and not self.exchanges):
            self.release_requests()
            self.close_when_drained()
            return
        if not self.exchanges:
            self.idle_since = self.context.clock()
        else:
            following = self.exchanges[0]
            if following.error is not None:
                self._answer_error(following)
                return
            if following.continue_wanted:
                self._send_continue(following)
            if following.complete:
                self._dispatch(following)
                if self.held != self.codec.buffered + self.body_held:
                    self.set_held(self.codec.buffered + self.body_held)  # its body is the budget's now
        if self.reading_paused and len(self.exchanges) <= 1:
            self._resume_for_turn()
            self.last_input = self.context.clock()
            if self.input_since is not None:
                self.input_since = self.last_input  # the time we did not read is not the client's

    def busy(self) -> bool:
        return bool(self.exchanges)

    def release_requests(self) -> None:
        exchanges = list(self.exchanges)
        self.exchanges.clear()
        self.receiving = None
        self.body_held = 0
        for exchange in exchanges:
            exchange.gone = True
            if exchange.request is not None:
                self.context.dispatcher.cancel(exchange.request)
            elif exchange.body is not None:
                exchange.body.discard()

    # -- time limits -------------------------------------------------------------------------------------------
    def check_timeouts(self, now: float) -> None:
        if self.closed:
            return
        if self.lingering:
            if now - self.linger_since > LINGER_SECONDS and self.transport is not None:
                self.transport.close()
            return
        if self.reading_paused:
            return  # we stopped reading: nothing the client sends now is late
        super().check_timeouts(now)

    def _timed_out(self, reason: str, kind: str) -> None:
        COUNTERS.client_timeout(kind)
        log.warning("%s %s: %s; connection closed", self.protocol_name, self.peer, reason)
        receiving = self.receiving
        if receiving is not None and self.exchanges and self.exchanges[0] is receiving:
            self.exchanges.popleft()  # its body stopped coming: the 408 is its answer
            self.receiving = None
            if receiving.body is not None:
                receiving.body.discard()
            self.body_held = 0  # it was the only one not dispatched
        if self.codec.started and not self.exchanges:
            self.linger(error_response(_REQUEST_TIMEOUT, reason, self.server_headers()))
        elif self.transport is not None and not self.exchanges:
            self.transport.close()  # nothing was asked: nothing to answer
        else:
            self.abort_connection()
