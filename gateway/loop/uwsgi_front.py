"""The uwsgi listener's connections: one request per connection, answered in raw HTTP, then closed."""

from __future__ import annotations

import logging

from gateway.loop.filesend import FileSegment
from gateway.loop.front import FrontConnection, FrontContext
from gateway.loop.request import Request
from gateway.loop.spool import EMPTY_BODY, RequestBody
from gateway.protocols.errors import RemoteProtocolError
from gateway.protocols.uwsgi import (
    BodyData,
    BodyTooLarge,
    Limits,
    Ping,
    RequestComplete,
    RequestHead,
    ServerConnection,
    encode_pong,
)

log = logging.getLogger("gateway.front")


class UwsgiConnection(FrontConnection):
    """Also the ResponseSink of its single request."""

    protocol_name = "uwsgi"
    # Class defaults, shadowed per instance once set: one request per connection, so most are set at most once.
    params: dict[str, str] | None = None
    #: The body being received; None until body bytes arrive (a request without any gets ``EMPTY_BODY``).
    body: RequestBody | None = None
    request: Request | None = None
    http_version = b"HTTP/1.1 "
    #: A whole response, written together with the close when the request finishes.
    response: bytes | None = None

    def __init__(self, context: FrontContext) -> None:
        super().__init__(context)
        limits = context.codec_limits
        if not isinstance(limits, Limits):
            config = context.config
            limits = context.codec_limits = Limits(
                max_vars_size=config.max_params_size,
                max_vars=config.max_params,
                max_body_size=config.max_body_size,
            )
        self.codec = ServerConnection(limits)

    # -- input -------------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        codec = self.codec
        try:
            events = codec.receive_data(data)
        except RemoteProtocolError as err:
            self.protocol_error(err)
            return
        now = self.track_input(codec.input_pending, codec.head_pending)
        for event in events:
            event_type = type(event)
            if event_type is RequestHead:
                assert isinstance(event, RequestHead)
                params = self.params = event.params
                if codec.unframed_length:
                    self._unframed_length(codec.unframed_length)
                if params.get("SERVER_PROTOCOL") == "HTTP/1.0":
                    self.http_version = b"HTTP/1.0 "
            elif event_type is RequestComplete:
                assert self.params is not None
                body = self.body
                request = self.request = Request(self.params, body or EMPTY_BODY, self, "uwsgi", now)
                if body is not None and body.size:
                    self.context.budget.wait(request)  # its body, if in memory, counts until the request ends
                self.context.dispatcher.submit(request)
            elif event_type is BodyData:
                assert isinstance(event, BodyData)
                body = self.body
                if body is None:
                    body = self.body = self.context.new_body()
                body.write(event.data)
            elif event_type is Ping:
                self.write(encode_pong())
                self.finish()
            elif event_type is BodyTooLarge:
                assert isinstance(event, BodyTooLarge)
                self.body_too_large(self, event.limit)
        held = codec.buffered
        if self.request is None:
            body = self.body
            if body is not None and codec.input_pending:
                held += body.memory
        if held != self.held:
            self.account(held)

    def _unframed_length(self, header: str) -> None:
        """A client's Content-Length without the web server's CONTENT_LENGTH: the body is what CONTENT_LENGTH
        frames (none), whatever the header says. One line per such request: it points at the web server's
        configuration."""
        log.warning(
            "uwsgi %s: HTTP_CONTENT_LENGTH %r without CONTENT_LENGTH; the body is framed by CONTENT_LENGTH "
            "alone (none: an empty body), so the app sees no CONTENT_LENGTH",
            self.peer,
            header,
        )

    def eof_received(self) -> bool | None:
        try:
            self.codec.receive_data(b"")
        except RemoteProtocolError as err:
            self.protocol_error(err)
            return None
        # nginx never half-closes a uwsgi connection: end of input means its client went away, so the request is
        # dropped if it still waits for a worker (cancelled if it runs) instead of occupying one for nobody.
        return None

    def busy(self) -> bool:
        return self.request is not None

    def spool_bodies(self) -> None:
        if self.body is not None and self.request is None and self.body.memory:
            self.body.spool()
            self.set_held(self.codec.buffered)

    def release_requests(self) -> None:
        if self.request is not None:
            self.context.dispatcher.cancel(self.request)
        elif self.body is not None:
            self.body.discard()

    # -- ResponseSink ------------------------------------------------------------------------------------------
    #: The connection is lost (set with ``closed``). A plain attribute, not a property: the relay reads it for
    #: every frame.
    client_gone = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_gone = True
        super().connection_lost(exc)

    def send_head(self, head: bytes) -> None:
        self.write(self.http_version + head)

    def send_body(self, data: bytes | memoryview) -> None:
        self.write(data)

    def send_response(self, response: bytes | memoryview) -> None:
        # The connection's only output (under 64 KiB): held until finish, which writes it straight to the
        # transport with the close. An abort in between (a session that could not be stored) then sends nothing
        # that could pass for a success.
        if self.output is None:
            self.response = self.http_version + response
        else:
            self.write(self.http_version + response)

    def send_file(self, fd: int, offset: int, length: int) -> None:
        self.send_segment(FileSegment(fd, offset, length, None))

    def finish(self) -> None:
        self.request = None  # answered: nothing left to cancel when the connection closes
        response, self.response = self.response, None
        self.close_when_drained(response or b"")

    def abort(self) -> None:
        # uwsgi responses end at connection close, so a plain close would look like success: reset instead.
        self.request = None
        self.response = None
        self.reset_connection()
