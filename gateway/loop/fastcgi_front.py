"""The FastCGI listener's connections: the codec's events become requests; responses become STDOUT records.

Requests are multiplexed: each request id on a connection is an independent exchange, buffered, dispatched and
answered on its own; their output records interleave on the one connection in the order workers produce them.
"""

from __future__ import annotations

import logging

from gateway.loop.filesend import FileSegment
from gateway.loop.front import FrontConnection, FrontContext
from gateway.loop.request import Request, respond_error
from gateway.loop.spool import EMPTY_BODY, RequestBody
from gateway.protocols.errors import RemoteProtocolError
from gateway.protocols.fastcgi import (
    BodyBeyondLength,
    BodyData,
    BodyIncomplete,
    BodyTooLarge,
    Limits,
    RequestAborted,
    RequestComplete,
    RequestHead,
    ServerConnection,
)
from gateway.protocols.fastcgi.records import HEADER, VERSION, RecordType

log = logging.getLogger("gateway.front")

_STATUS_PREFIX = b"Status: "
_STDOUT = int(RecordType.STDOUT)


class _Exchange:
    """One request id on a connection; the ResponseSink of its request.

    No ``__slots__``: what most exchanges never change keeps its default on the class, so an exchange costs the
    three assignments of its arrival (one per request over FastCGI, with or without keep-conn).
    """

    #: ``EMPTY_BODY`` until body bytes arrive (most requests have none), then a RequestBody of its own.
    body: RequestBody = EMPTY_BODY
    request: Request | None = None
    #: The ResponseSink's flag: the web server aborted this request or closed the connection. A plain attribute,
    #: not a property: the relay reads it for every frame.
    client_gone = False
    #: A whole response's STDOUT records, written with END_REQUEST and the close (connections without
    #: FCGI_KEEP_CONN; see ``send_response``).
    held = b""
    #: The file ranges of this response still queued or under way (None: none yet). END_REQUEST waits until they
    #: are out, so that the request stays open in the codec and an ABORT_REQUEST can still stop them
    #: (``_aborted``).
    files: list[FileSegment] | None = None
    finished = False

    def __init__(self, connection: FastCGIConnection, request_id: int, params: dict[str, str]) -> None:
        self.connection = connection
        self.request_id = request_id
        self.params = params

    def send_head(self, head: bytes) -> None:
        connection = self.connection
        connection.write(connection.codec.send_stdout(self.request_id, _STATUS_PREFIX + head))

    def send_body(self, data: bytes | memoryview) -> None:
        connection = self.connection
        # written vectored: a large body is not copied into its records
        connection.writelines(connection.codec.send_stdout_pieces(self.request_id, data))

    def send_response(self, response: bytes | memoryview) -> None:
        connection = self.connection
        records = connection.codec.send_stdout(self.request_id, _STATUS_PREFIX + response)
        if connection.codec.close_after_response and connection.output is None:
            # The connection's only output, as over uwsgi: held until finish, then written with END_REQUEST and
            # the close in one piece, and never sent at all if the request is aborted before that.
            self.held = records
        else:
            connection.write(records)

    def send_file(self, fd: int, offset: int, length: int) -> None:
        request_id = self.request_id

        def stdout_header(size: int) -> bytes:
            return HEADER.pack(VERSION, _STDOUT, request_id, size, 0)

        segment = FileSegment(fd, offset, length, stdout_header)
        if self.files is None:
            self.files = []
        self.files.append(segment)
        segment.on_sent = lambda: self._file_sent(segment)
        self.connection.send_segment(segment)

    def _file_sent(self, segment: FileSegment) -> None:
        assert self.files is not None
        self.files.remove(segment)
        if self.finished and not self.files:
            self.connection.end(self, app_status=0)

    def finish(self) -> None:
        self.finished = True
        if not self.files:
            self.connection.end(self, app_status=0)

    def abort(self) -> None:
        # FastCGI has no way to say "this response failed" except cutting the connection; with other requests
        # multiplexed on it we end this one with a non-zero app status instead of killing theirs.
        self.held = b""
        connection = self.connection
        if connection.codec.active_requests > 1:
            connection.end(self, app_status=1)
        else:
            self.client_gone = True
            connection.reset_connection()


class FastCGIConnection(FrontConnection):
    protocol_name = "fastcgi"
    #: In-memory bytes of the bodies of exchanges not dispatched yet (their part of ``held``); a class default.
    body_held = 0

    def __init__(self, context: FrontContext) -> None:
        super().__init__(context)
        limits = context.codec_limits
        if not isinstance(limits, Limits):
            config = context.config
            limits = context.codec_limits = Limits(
                max_params_size=config.max_params_size,
                max_params=config.max_params,
                max_body_size=config.max_body_size,
                max_requests_per_connection=config.max_requests_per_connection,
                max_connections=config.max_connections,
            )
        self.codec = ServerConnection(limits)
        self.exchanges: dict[int, _Exchange] = {}

    def data_received(self, data: bytes) -> None:
        try:
            events = self.codec.receive_data(data)
        except RemoteProtocolError as err:
            self.protocol_error(err)
            return
        codec = self.codec
        now = self.track_input(codec.input_pending, codec.head_pending)
        pending = codec.data_to_send()
        if pending:
            self.write(pending)
            if codec.close_after_response and not codec.active_requests:
                self.close_when_drained()  # a refused request without FCGI_KEEP_CONN
        for event in events:
            event_type = type(event)
            if event_type is RequestHead:
                assert isinstance(event, RequestHead)
                self.exchanges[event.request_id] = _Exchange(self, event.request_id, event.params)
            elif event_type is RequestComplete:
                self._dispatch(event.request_id, now)
            elif event_type is BodyData:
                assert isinstance(event, BodyData)
                exchange = self.exchanges.get(event.request_id)
                if exchange is not None:
                    body = exchange.body
                    if body is EMPTY_BODY:
                        body = exchange.body = self.context.new_body()
                    before = body.memory
                    body.write(event.data)
                    self.body_held += body.memory - before
            elif event_type is RequestAborted:
                self._aborted(event.request_id)
            elif event_type is BodyTooLarge:
                assert isinstance(event, BodyTooLarge)
                exchange = self.exchanges.get(event.request_id)
                if exchange is not None:
                    self.body_too_large(exchange, event.limit)
            elif event_type is BodyBeyondLength:
                assert isinstance(event, BodyBeyondLength)
                log.warning(
                    "fastcgi %s: request %d: STDIN goes on past its CONTENT_LENGTH %d; the excess is dropped",
                    self.peer,
                    event.request_id,
                    event.declared,
                )
            elif event_type is BodyIncomplete:
                assert isinstance(event, BodyIncomplete)
                self._incomplete(event)
        if self.closed:
            return
        held = codec.buffered + self.body_held
        if held != self.held:
            self.account(held)

    def eof_received(self) -> bool | None:
        try:
            self.codec.receive_data(b"")
        except RemoteProtocolError as err:
            self.protocol_error(err)
        return None

    def protocol_error(self, reason: object) -> None:
        super().protocol_error(reason)
        # The failed codec refuses all output from now on: its requests are released at once, not when the closed
        # transport reports the loss on a later turn, so that no worker's answer arriving meanwhile writes to it.
        self.release_requests()

    def _incomplete(self, event: BodyIncomplete) -> None:
        """STDIN ended short of CONTENT_LENGTH: not a complete request. 400, and the connection carries on."""
        exchange = self.exchanges.get(event.request_id)
        if exchange is None:
            return
        log.warning(
            "fastcgi %s: request %d: STDIN ended after %d of its CONTENT_LENGTH %d bytes; answered 400",
            self.peer,
            event.request_id,
            event.received,
            event.declared,
        )
        respond_error(exchange, "400 Bad Request")

    def _dispatch(self, request_id: int, now: float) -> None:
        exchange = self.exchanges.get(request_id)
        if exchange is None:
            return
        if self.body_held:
            self.body_held -= exchange.body.memory  # complete: no longer the connection's to answer for
        if exchange.body.size and not exchange.params.get("CONTENT_LENGTH"):
            # STDIN is the framing: a body sent without CONTENT_LENGTH (nginx passing a chunked request
            # unbuffered) is whole now, and the app learns its length where PEP 3333 says to look for it.
            exchange.params["CONTENT_LENGTH"] = str(exchange.body.size)
        request = exchange.request = Request(exchange.params, exchange.body, exchange, "fastcgi", now)
        if exchange.body.size:
            self.context.budget.wait(request)  # its body, if in memory, counts until the request ends
        self.context.dispatcher.submit(request)

    def _aborted(self, request_id: int) -> None:
        exchange = self.exchanges.get(request_id)
        if exchange is None:
            return
        exchange.client_gone = True
        exchange.held = b""
        output = self.output
        files, exchange.files = exchange.files or [], None
        for segment in files:
            segment.on_sent = None  # END_REQUEST goes now, after the record under way
            if output is not None:
                output.end_with_record(segment)
        if exchange.request is not None:
            self.context.dispatcher.cancel(exchange.request)
        self.end(exchange, app_status=0)

    def end(self, exchange: _Exchange, app_status: int) -> None:
        """END_REQUEST for this exchange, and close the connection if the web server did not ask to keep it."""
        exchanges = self.exchanges
        if exchanges.pop(exchange.request_id, None) is None:
            return
        exchange.client_gone = True
        if exchange.request is None:
            self.body_held -= exchange.body.memory
            exchange.body.discard()
        else:
            # The request's sink is this exchange: a reference cycle per request, which only the garbage
            # collector would free (benchmarks/RESULTS.md, History: the master's collections).
            exchange.request = None
        if self.closed:
            return
        codec = self.codec
        end_record = codec.end_request(exchange.request_id, app_status)
        if codec.close_after_response:
            held, exchange.held = exchange.held, b""
            self.close_when_drained(held + end_record if held else end_record)
        else:
            if not exchanges:
                self.idle_since = self.context.clock()  # --keepalive-timeout counts from here
            self.write(end_record)

    def busy(self) -> bool:
        return bool(self.exchanges)

    def spool_bodies(self) -> None:
        if not self.body_held:
            return
        for exchange in self.exchanges.values():
            if exchange.request is None:
                exchange.body.spool()
        self.body_held = 0
        self.set_held(self.codec.buffered)

    def release_requests(self) -> None:
        if not self.exchanges:
            return  # the usual close: every request answered
        exchanges = list(self.exchanges.values())
        self.exchanges.clear()
        self.body_held = 0
        for exchange in exchanges:
            exchange.client_gone = True
            if exchange.request is not None:
                self.context.dispatcher.cancel(exchange.request)
                exchange.request = None
            else:
                exchange.body.discard()
