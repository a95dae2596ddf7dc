"""HTTP/1.1 and 1.0 requests, server side: llhttp (through httptools) parses, this turns its callbacks into events.

The parsing is llhttp's, in its strict mode: request smuggling through a Content-Length beside a
Transfer-Encoding, two Content-Lengths, obs-fold, bare LF line ends and bad chunk sizes are its errors, never
guesses of ours. What llhttp leaves to its caller is done here: the limits (target, head size, header count,
body size), the versions served (1.0 and 1.1; anything else is 505), Host rules, chunked bodies from HTTP/1.0
clients (refused), and building the CGI meta-variables a worker turns into the WSGI environ.

Sans-IO like the other codecs: bytes in, events out, no clock. An ``HTTPError`` carries the status to answer
with and the events that came before it in the same call (pipelined requests ahead of a bad one stand); after
one the connection is in ERROR and every later call raises again, as in h11.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto
from urllib.parse import unquote_to_bytes

import httptools

from gateway.protocols.cgi import merge_params
from gateway.protocols.errors import RemoteProtocolError

BAD_REQUEST = "400 Bad Request"
CONTENT_TOO_LARGE = "413 Content Too Large"
URI_TOO_LONG = "414 URI Too Long"
HEADERS_TOO_LARGE = "431 Request Header Fields Too Large"
VERSION_NOT_SUPPORTED = "505 HTTP Version Not Supported"


class HTTPError(RemoteProtocolError):
    """The client broke HTTP or one of our limits; ``status`` is what to answer before closing."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        #: The events of the same ``receive_data`` call before the error (the requests ahead of it stand).
        self.events: list[Event] = []


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may make us hold; each is a gateway option (see ``gateway.config.settings``), no
    defaults here. ``max_target_size`` answers 414, ``max_head_size`` and ``max_headers`` 431 and
    ``max_body_size`` 413."""

    max_target_size: int
    max_head_size: int
    max_headers: int
    max_body_size: int


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request's line and headers, as CGI meta-variables (``params``) and what the connection acts on."""

    params: dict[str, str]
    method: str
    http_10: bool
    keep_alive: bool
    expect_continue: bool
    #: The declared Content-Length, or None (no body, or a chunked one whose size comes with RequestComplete).
    content_length: int | None


@dataclass(frozen=True, slots=True)
class BodyData:
    data: bytes


@dataclass(frozen=True, slots=True)
class RequestComplete:
    """The whole body arrived; ``body_size`` is its length (the CONTENT_LENGTH a chunked body is given)."""

    body_size: int


@dataclass(frozen=True, slots=True)
class BodyTooLarge:
    """The body exceeds ``limit`` (declared, or a chunked one once it grew past it): answer 413 and close; no
    more events come from this connection."""

    limit: int


Event = RequestHead | BodyData | RequestComplete | BodyTooLarge


class _State(Enum):
    IDLE = auto()  # between requests
    HEAD = auto()
    BODY = auto()
    #: No further request will be read (Connection: close, or a refused body): input is dropped.
    DONE = auto()
    ERROR = auto()


class _NoCallbacks:
    """The protocol of the parser a closed connection keeps: it has no callbacks, so it holds nothing."""


#: What ``ServerConnection.close`` leaves in place of the connection's parser; never fed.
_CLOSED_PARSER = httptools.HttpRequestParser(_NoCallbacks())


class ServerConnection:
    """One client connection; requests follow each other (pipelined ones come out in order, in one call)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._parser = httptools.HttpRequestParser(self)
        self._state = _State.IDLE
        self._events: list[Event] = []
        self._failure = ""
        #: Bytes of targets and header fields completed on this connection so far, never reset: how much of a
        #: read the parser took as complete parts of a head (``_feed``).
        self._completed = 0
        self._reset_request()

    def _reset_request(self) -> None:
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        #: Bytes fed since the last complete header while the head stayed incomplete: what httptools holds of
        #: a header line still arriving, so a line trickled without end is bounded too.
        self._partial = 0
        self._body_size = 0
        self._discard = False

    # -- what the connection still waits for -------------------------------------------------------------------
    @property
    def input_pending(self) -> bool:
        """A request has begun and is not complete."""
        return self._state is _State.HEAD or self._state is _State.BODY

    @property
    def head_pending(self) -> bool:
        return self._state is _State.HEAD

    @property
    def buffered(self) -> int:
        """Bytes of a request head still arriving that the codec and llhttp hold: its target, its complete header
        fields and what was fed since the last of them (for the memory budgets). Body bytes are never held:
        they are passed on as they arrive."""
        if self._state is not _State.HEAD:
            return 0
        return len(self._target) + self._head_size + self._partial

    @property
    def started(self) -> bool:
        """Some bytes of the current request arrived (a timeout then deserves a 408, not a silent close)."""
        return self._state is _State.BODY or (self._state is _State.HEAD and bool(self._target or self._partial))

    @property
    def done(self) -> bool:
        """No further request will be read on this connection."""
        return self._state is _State.DONE or self._state is _State.ERROR

    def close(self) -> None:
        """The connection is gone: no further input is read, and the parser goes. Its callbacks are this
        codec's methods, a reference cycle that only the garbage collector would otherwise free, once per
        connection (benchmarks/RESULTS.md, History: the master's collections)."""
        if self._state is not _State.ERROR:
            self._state = _State.DONE
        self._parser = _CLOSED_PARSER

    # -- input ------------------------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client; ``b""`` means it closed its side. Raises HTTPError (see the class)."""
        state = self._state
        if state is _State.ERROR:
            raise HTTPError(BAD_REQUEST, f"the connection already failed ({self._failure}); no input is accepted")
        if state is _State.DONE:
            return []
        if not data:
            if state is _State.IDLE:
                self._state = _State.DONE
                return []
            self._fail(HTTPError(BAD_REQUEST, f"connection closed before the request was complete (in {state.name})"))
        events: list[Event] = []
        self._events = events
        try:
            self._feed(data)
        except HTTPError as err:
            err.events = events
            self._fail(err)
        finally:
            self._events = []
        return events

    def _feed(self, data: bytes) -> None:
        completed = self._completed
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # llhttp stops after a request carrying Upgrade (or a CONNECT, refused in on_headers_complete). We
            # serve it as a plain request (RFC 9110 7.8: a server may ignore Upgrade) and read on with a fresh
            # parser from where the old one stopped.
            offset = int(upgrade.args[0]) if upgrade.args else len(data)
            self._parser = httptools.HttpRequestParser(self)
            if self._state is not _State.DONE and offset < len(data):
                self._feed(data[offset:])
            return
        except httptools.HttpParserCallbackError as err:
            cause = err.__context__
            if isinstance(cause, HTTPError):
                raise cause from None
            raise HTTPError(BAD_REQUEST, f"malformed request ({err})") from None
        except httptools.HttpParserError as err:
            if self._state is _State.DONE:
                return  # bytes after a request that closes the connection: never read
            raise HTTPError(BAD_REQUEST, f"malformed request ({err})") from None
        if self._state is _State.HEAD:
            consumed = self._completed - completed
            if consumed:
                # A part of the head completed in this read: what follows it (at most the rest of the read) is
                # the line still arriving; the completed parts are in _target and _head_size already.
                self._partial = max(len(data) - consumed, 0)
            else:
                self._partial += len(data)
            if len(self._target) + self._head_size + self._partial > self.limits.max_head_size:
                raise HTTPError(HEADERS_TOO_LARGE, self._head_too_large())

    def _fail(self, err: HTTPError) -> None:
        if self._state is not _State.ERROR:
            self._state, self._failure = _State.ERROR, err.reason
        raise err

    def _head_too_large(self) -> str:
        return f"request head exceeds {self.limits.max_head_size} bytes (--max-params-size)"

    # -- httptools callbacks ------------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset_request()
        self._state = _State.HEAD

    def on_url(self, url: bytes) -> None:
        self._partial = 0
        self._completed += len(url)
        target = self._target = self._target + url
        if len(target) > self.limits.max_target_size:
            raise HTTPError(URI_TOO_LONG, f"request target exceeds {self.limits.max_target_size} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._partial = 0
        line = len(name) + len(value) + 4
        self._completed += line
        self._head_size += line
        headers = self._headers
        headers.append((name, value))
        if len(headers) > self.limits.max_headers:
            raise HTTPError(HEADERS_TOO_LARGE, f"more than {self.limits.max_headers} header fields (--max-params)")
        if self._head_size + len(self._target) > self.limits.max_head_size:
            raise HTTPError(HEADERS_TOO_LARGE, self._head_too_large())

    def on_headers_complete(self) -> None:
        self._partial = 0
        if self._state is _State.BODY:
            return  # the trailer section of a chunked body (its fields are not passed on)
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise HTTPError(VERSION_NOT_SUPPORTED, f"HTTP/{version} is not served (HTTP/1.1 and 1.0 are)")
        method = parser.get_method().decode("ascii")
        if method == "CONNECT":
            raise HTTPError(BAD_REQUEST, "CONNECT is not served (this is not a proxy)")
        http_10 = version == "1.0"
        params, host_count, chunked, content_length, expect = _params(self._target, self._headers)
        if host_count > 1 or (host_count == 0 and not http_10):
            raise HTTPError(BAD_REQUEST, "an HTTP/1.1 request needs exactly one Host header")
        if chunked and http_10:
            raise HTTPError(BAD_REQUEST, "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1)")
        params["REQUEST_METHOD"] = method
        params["SERVER_PROTOCOL"] = "HTTP/1.0" if http_10 else "HTTP/1.1"
        keep_alive = parser.should_keep_alive()
        self._state = _State.BODY
        self._events.append(RequestHead(params, method, http_10, keep_alive, expect, content_length))
        if content_length is not None and content_length > self.limits.max_body_size:
            self._refuse_body()

    def on_body(self, body: bytes) -> None:
        if self._discard:
            return
        size = self._body_size = self._body_size + len(body)
        if size > self.limits.max_body_size:
            self._refuse_body()
            return
        self._events.append(BodyData(body))

    def on_message_complete(self) -> None:
        if self._discard:
            return
        self._events.append(RequestComplete(self._body_size))
        self._state = _State.IDLE if self._parser.should_keep_alive() else _State.DONE

    def _refuse_body(self) -> None:
        self._discard = True
        self._state = _State.DONE
        self._events.append(BodyTooLarge(self.limits.max_body_size))


def _params(target: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], int, bool, int | None, bool]:
    """CGI meta-variables of a request, and what the connection needs from its headers: the number of Host
    headers, whether the body is chunked, the declared Content-Length and whether 100-continue is expected.

    Header names with an underscore are dropped (as nginx does by default): ``X_Forwarded_For`` would otherwise
    land in the same HTTP_X_FORWARDED_FOR variable as ``X-Forwarded-For`` and pass for it.
    """
    raw_path, _, query = target.partition(b"?")
    if not raw_path.startswith(b"/"):
        if raw_path == b"*":
            raw_path = b""
        else:  # absolute-form (RFC 9112 3.2.2): the path of the URL
            parsed = httptools.parse_url(target)
            raw_path = parsed.path or b"/"
            query = parsed.query or b""
    path = unquote_to_bytes(raw_path) if b"%" in raw_path else raw_path
    pairs: list[tuple[str, str]] = [
        ("REQUEST_URI", target.decode("latin-1")),
        ("PATH_INFO", path.decode("latin-1")),
        ("SCRIPT_NAME", ""),
        ("QUERY_STRING", query.decode("latin-1")),
    ]
    host_count = 0
    chunked = False
    content_length: int | None = None
    expect = False
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").upper()
        value = raw_value.decode("latin-1")
        if name == "HOST":
            host_count += 1
        elif name == "CONTENT-LENGTH":
            content_length = int(value)  # llhttp accepted it: digits, and only one
            pairs.append(("CONTENT_LENGTH", value))
            continue
        elif name == "CONTENT-TYPE":
            pairs.append(("CONTENT_TYPE", value))
            continue
        elif name == "TRANSFER-ENCODING":
            chunked = True  # llhttp refuses any coding it cannot frame; a body it accepted ends chunked
        elif name == "EXPECT":
            expect = value.lower() == "100-continue"
        if "_" in name:
            continue
        pairs.append(("HTTP_" + name.replace("-", "_"), value))
    return merge_params(pairs), host_count, chunked, content_length, expect
