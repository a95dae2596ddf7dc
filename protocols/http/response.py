"""HTTP/1.1 response framing: the status line and the headers the server adds to a worker's response head.

A worker's head is ``b"200 OK\\r\\nName: value\\r\\n\\r\\n"`` with no hop-by-hop header (the worker refuses them),
so the framing is ours to choose: the app's Content-Length when it gave one, else chunked for an HTTP/1.1
client, else the end of the connection (HTTP/1.0). HEAD responses and 1xx/204/304 carry no body.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

#: Statuses whose responses never have a body (RFC 9110 6.4.1).
_NO_BODY_STATUSES = frozenset((204, 304))
_CONTENT_LENGTH = b"\r\ncontent-length:"
CHUNKED_END = b"0\r\n\r\n"


class Framing(Enum):
    LENGTH = auto()  # Content-Length given (by the app, or by us for a whole response)
    CHUNKED = auto()
    CLOSE = auto()  # delimited by closing the connection (HTTP/1.0 without a length)
    NONE = auto()  # no body at all (HEAD, 1xx, 204, 304)


@dataclass(frozen=True, slots=True)
class ResponseStart:
    """The bytes to write for a head, how its body is framed, and whether the connection stays open after it."""

    head: bytes
    framing: Framing
    keep_alive: bool


def has_content_length(head: bytes | memoryview) -> bool:
    return _CONTENT_LENGTH in bytes(head).lower()


def start_response(
    head: bytes | memoryview,
    *,
    head_request: bool,
    http_10: bool,
    keep_alive: bool,
    extra: bytes,
    body_length: int | None = None,
) -> ResponseStart:
    """Frame a worker's ``head`` for an HTTP client.

    ``extra`` is the server's own header lines (Date, Server), each ending in CRLF. ``body_length`` is the
    length of a whole response's body (``send_response``), used as its Content-Length when the app gave none.
    """
    raw = bytes(head)
    status = int(raw[:3])
    declared = has_content_length(raw)
    if head_request or status < 200 or status in _NO_BODY_STATUSES:
        framing = Framing.NONE
        if body_length is not None and not declared and head_request:
            extra += b"Content-Length: %d\r\n" % body_length  # what the GET would have had
    elif declared:
        framing = Framing.LENGTH
    elif body_length is not None:
        framing = Framing.LENGTH
        extra += b"Content-Length: %d\r\n" % body_length
    elif not http_10:
        framing = Framing.CHUNKED
        extra += b"Transfer-Encoding: chunked\r\n"
    else:
        framing = Framing.CLOSE
        keep_alive = False
    if not keep_alive:
        extra += b"Connection: close\r\n"
    elif http_10:
        extra += b"Connection: keep-alive\r\n"
    line_end = raw.index(b"\r\n") + 2
    return ResponseStart(b"HTTP/1.1 " + raw[:line_end] + extra + raw[line_end:], framing, keep_alive)


def chunk(data: bytes | memoryview) -> list[bytes | memoryview]:
    """One chunk of a chunked body, in pieces so a large body is written vectored rather than copied."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def error_response(status: str, reason: str, extra: bytes) -> bytes:
    """A response for a request the app never saw: the status, one line saying why, and the close."""
    body = f"{status}: {reason}\n".encode("latin-1", "replace")
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n".encode()
        + extra
        + b"Connection: close\r\n\r\n"
        + body
    )


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
