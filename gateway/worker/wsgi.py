"""PEP 3333 inside a worker: the environ, ``start_response``, ``write`` and the response iteration.

Everything here runs in a worker process, synchronously, one request at a time per thread (one thread unless
--threads). Output leaves through a :class:`ResponseOutput` (the worker's channel), which decides when bytes are
actually sent: a list response is sent in one write; a generator's chunks are sent as produced, so streaming apps
stream.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from html import escape
from types import TracebackType
from typing import IO, Any, Protocol

from mypy_extensions import mypyc_attr

log = logging.getLogger("gateway.worker")

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], None]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: RFC 9110 §7.6.1: these describe one hop and belong to the server, never to the application (PEP 3333).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_STATUS = re.compile(r"[1-5][0-9][0-9](?: [^\r\n]*)?\Z")
_BAD_VALUE = re.compile(r"[\r\n\x00]")

FILE_BLOCK = 1 << 16

#: Encoded heads kept per worker: most apps send the same few status + header lists again and again.
HEAD_CACHE_SIZE = 256


class InvalidResponse(Exception):
    """The application broke PEP 3333 (bad status, bad or hop-by-hop header...): answered 500 and logged."""


class ResponseOutput(Protocol):
    """Where a response goes; implemented by the worker's channel."""

    def send_head(self, head: bytes) -> None: ...
    def send_body(self, data: bytes, flush: bool) -> None: ...
    def cancelled(self) -> bool: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # an app may subclass what environ["wsgi.file_wrapper"] gives it
class FileWrapper:
    """``wsgi.file_wrapper``: iterates a file in large blocks and closes it with the response."""

    def __init__(self, filelike: IO[bytes], blksize: int = FILE_BLOCK) -> None:
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        read = self.filelike.read
        blksize = max(self.blksize, FILE_BLOCK)
        while data := read(blksize):
            yield data


#: The environ keys that are the same for every request of a worker (PEP 3333).
_WSGI_CONSTANTS: dict[str, Any] = {
    "wsgi.version": (1, 0),
    "wsgi.multithread": False,
    "wsgi.multiprocess": True,
    "wsgi.run_once": False,
    "wsgi.file_wrapper": FileWrapper,
}


def use_threads() -> None:
    """This worker runs requests on several threads (--threads): apps see ``wsgi.multithread`` true."""
    _WSGI_CONSTANTS["wsgi.multithread"] = True


def build_environ(
    params: dict[str, str], body: IO[bytes], *, script_name: str = "", errors: IO[str] | None = None
) -> dict[str, Any]:
    """Turn the web server's params into a PEP 3333 environ (in place: ``params`` is ours to keep).

    nginx's stock ``fastcgi_params`` sends the whole path as SCRIPT_NAME and no PATH_INFO; its stock
    ``uwsgi_params`` sends PATH_INFO and no SCRIPT_NAME. Both become SCRIPT_NAME "" (or ``script_name`` when the
    app is mounted under a prefix) and PATH_INFO the rest, which is what WSGI routers expect.
    """
    environ: dict[str, Any] = params
    if "PATH_INFO" not in environ:
        environ["PATH_INFO"] = environ.pop("SCRIPT_NAME", "") or environ.get("DOCUMENT_URI", "")
        environ["SCRIPT_NAME"] = ""
    else:
        environ.setdefault("SCRIPT_NAME", "")
    if script_name:
        full_path = environ["SCRIPT_NAME"] + environ["PATH_INFO"]
        if full_path == script_name or full_path.startswith(script_name + "/"):
            environ["SCRIPT_NAME"] = script_name
            environ["PATH_INFO"] = full_path[len(script_name) :]
    # CGI carries these two as CONTENT_*; a copy under HTTP_* confuses apps and fails wsgiref.validate. The
    # client's Content-Length header never stands in for CONTENT_LENGTH: the body the app reads is the one the
    # framing delivered (FastCGI's STDIN, uwsgi's CONTENT_LENGTH), and CONTENT_LENGTH is its length.
    content_type = environ.pop("HTTP_CONTENT_TYPE", None)
    environ.pop("HTTP_CONTENT_LENGTH", None)
    if not environ.get("CONTENT_TYPE") and content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    environ.setdefault("REQUEST_METHOD", "GET")
    environ.setdefault("QUERY_STRING", "")
    environ.setdefault("SERVER_NAME", "localhost")
    environ.setdefault("SERVER_PORT", "80")
    environ.setdefault("SERVER_PROTOCOL", "HTTP/1.1")
    https = environ.get("HTTPS", "").lower() in ("on", "1") or environ.get("REQUEST_SCHEME") == "https"
    environ.update(_WSGI_CONSTANTS)
    environ["wsgi.url_scheme"] = "https" if https else "http"
    environ["wsgi.input"] = body
    environ["wsgi.errors"] = errors if errors is not None else sys.stderr
    return environ


class _Response:
    """The state of one response: start_response, write, Content-Length bookkeeping."""

    __slots__ = ("content_length", "head", "head_hook", "head_sent", "output", "sent", "status")

    def __init__(self, output: ResponseOutput, head_hook: Callable[[], bytes] | None = None) -> None:
        self.output = output
        self.head_hook = head_hook
        self.status: str | None = None
        self.head: bytes = b""
        self.head_sent = False
        self.content_length: int | None = None
        self.sent = 0

    # What the app calls is typed Any where the app may pass anything: the validation below names what is wrong,
    # where a compiled build (setup.py) would otherwise raise its own TypeError for a str that is bytes.
    def start_response(self, status: Any, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise InvalidResponse("start_response called a second time without exc_info")
        self.head, self.content_length = encode_head(status, headers)
        self.status = status
        return self.write

    def write(self, data: Any) -> None:
        """The legacy ``write()`` callable: sent at once, since the app may block before its next write."""
        self.send(data, flush=True)

    def send(self, data: Any, flush: bool) -> None:
        if type(data) is not bytes:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise InvalidResponse(f"the application yielded {type(data).__name__}, not bytes")
            data = bytes(data)
        if not self.head_sent:
            self._send_head()
        if self.content_length is not None:
            room = self.content_length - self.sent
            if len(data) > room:
                log.error(
                    "response is longer than its Content-Length %d; the excess is dropped",
                    self.content_length,
                )
                data = data[:room]
        if data:
            self.sent += len(data)
            self.output.send_body(data, flush)

    def _send_head(self) -> None:
        if self.status is None:
            raise InvalidResponse("the application sent body data before calling start_response")
        head = self.head
        if self.head_hook is not None:
            # Headers the gateway adds (the session cookie); raising here is still a clean 500.
            extra = self.head_hook()
            if extra:
                head = head[:-2] + extra + b"\r\n"
        self.head_sent = True
        self.output.send_head(head)

    def send_file(self, fd: int, offset: int, length: int) -> None:
        """The body is ``length`` bytes of a regular file from ``offset``: the loop sends them (sendfile), no
        byte passes through here. A Content-Length is honoured as for any body."""
        if not self.head_sent:
            self._send_head()
        if self.content_length is not None:
            length = min(length, self.content_length - self.sent)
        if length > 0:
            self.sent += length
            self.output.send_file(fd, offset, length)  # type: ignore[attr-defined]


_head_cache: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[bytes, int | None]] = {}


def encode_head(status: Any, headers: Any) -> tuple[bytes, int | None]:
    """Validate and encode a status and header list; returns the head block and the declared length.

    Validating and encoding cost a worker more than the rest of a small response, and an app repeats its heads
    (same status, same headers, often the same Content-Length), so a head that passed once is looked up. Only
    valid heads are kept, and equal keys encode equally, so the cache can never let a bad head through; it is
    emptied when full, so an app whose every head differs pays one dictionary insert per response.
    """
    if type(headers) is list:
        try:
            key = (status, tuple(headers))
            cached = _head_cache.get(key)
        except TypeError:  # an unhashable header (a list, not a tuple): refused by the validation below
            key = None
            cached = None
        if cached is not None:
            return cached
        encoded = _validate_and_encode(status, headers)
        if key is not None:
            if len(_head_cache) >= HEAD_CACHE_SIZE:
                _head_cache.clear()
            _head_cache[key] = encoded
        return encoded
    return _validate_and_encode(status, headers)


def _validate_and_encode(status: Any, headers: Any) -> tuple[bytes, int | None]:
    if type(status) is not str or not _STATUS.match(status):
        raise InvalidResponse(f"invalid status {status!r}: expected a str like '200 OK'")
    if type(headers) is not list:
        raise InvalidResponse(f"response headers must be a list of (name, value) tuples, not {type(headers).__name__}")
    parts = [status, "\r\n"]
    content_length = None
    for header in headers:
        if type(header) is not tuple or len(header) != 2:
            raise InvalidResponse(f"response header {header!r} is not a (name, value) tuple")
        name, value = header
        if type(name) is not str or not _TOKEN.match(name):
            raise InvalidResponse(f"invalid response header name {name!r}")
        if type(value) is not str or _BAD_VALUE.search(value):
            raise InvalidResponse(f"invalid value for response header {name}: {value!r} (CR, LF and NUL are refused)")
        lowered = name.lower()
        if lowered in HOP_BY_HOP:
            raise InvalidResponse(f"hop-by-hop header {name!r} is the server's to set, not the application's")
        if lowered == "content-length":
            if not value.strip().isdigit():
                raise InvalidResponse(f"invalid Content-Length {value!r}")
            content_length = int(value)
        parts += (name, ": ", value, "\r\n")
    parts.append("\r\n")
    try:
        return "".join(parts).encode("latin-1"), content_length
    except UnicodeEncodeError as err:
        raise InvalidResponse(f"response head is not latin-1 encodable: {err}") from err


def error_head(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    return (f"{status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n").encode("latin-1")


def run_app(
    app: WSGIApp,
    environ: dict[str, Any],
    output: ResponseOutput,
    *,
    debug: bool = False,
    head_hook: Callable[[], bytes] | None = None,
) -> int:
    """Run one request through the app; returns the HTTP status code for the log.

    An exception before any output becomes a 500 with the traceback in the log only (or in the page when
    ``debug``); after the head was sent it propagates, and the caller cuts the response short. The app's
    ``close()`` is always called; an exception from it is logged and never changes the response.
    """
    response = _Response(output, head_hook)
    result: Any = None  # whatever the app returned, and its chunks: validated as they are sent
    try:
        try:
            result = app(environ, response.start_response)
            found = _file_range(result) if getattr(output, "files", False) else None
            if found is not None:
                response.send_file(*found)
            elif type(result) is list or type(result) is tuple:
                for chunk in result:
                    response.send(chunk, flush=False)
            else:
                for chunk in result:
                    response.send(chunk, flush=True)
                    if output.cancelled():
                        log.info(
                            "client went away; stopped iterating the response of %s",
                            environ.get("REQUEST_URI"),
                        )
                        break
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                _close(close, environ)
        if not response.head_sent:
            # An empty body: the head still has to go out.
            response.send(b"", flush=False)
        if response.content_length is not None and response.sent < response.content_length:
            raise InvalidResponse(
                f"response ended after {response.sent} of its declared {response.content_length} bytes"
            )
    except Exception as err:
        if response.head_sent:
            raise
        log.exception(
            "%s %s failed",
            environ.get("REQUEST_METHOD"),
            environ.get("REQUEST_URI", environ.get("PATH_INFO")),
        )
        if debug:
            body = _debug_page(err)
            output.send_head(error_head("500 Internal Server Error", body, "text/html; charset=utf-8"))
        else:
            body = b"500 Internal Server Error\n"
            output.send_head(error_head("500 Internal Server Error", body))
        output.send_body(body, flush=False)
        return 500
    return int(response.head[:3])


def _close(close: Callable[[], object], environ: dict[str, Any]) -> None:
    """Call the response's ``close()``; an exception from it is logged and changes nothing.

    By then the response is what the iteration made it: complete and valid (it goes out as it is, rather than being
    reset for a failure in the app's clean-up), or already failing (that first error is the one that counts).
    """
    try:
        close()
    except Exception:
        log.exception(
            "%s %s: the response's close() raised; the response is sent as the app produced it",
            environ.get("REQUEST_METHOD"),
            environ.get("REQUEST_URI", environ.get("PATH_INFO")),
        )


def _file_range(result: Iterable[bytes]) -> tuple[int, int, int] | None:
    """(descriptor, offset, length) when the response is ``wsgi.file_wrapper`` over a regular file (or such a
    file object itself), from its current position to its end; None for anything else, which is iterated."""
    filelike: Any
    if type(result) is FileWrapper:
        filelike = result.filelike
    elif isinstance(result, io.BufferedReader | io.FileIO):
        filelike = result
    else:
        return None
    try:
        fd = filelike.fileno()
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return None
        offset = filelike.tell()
    except (AttributeError, OSError, ValueError):
        return None
    if type(fd) is not int or type(offset) is not int:
        return None
    return fd, offset, max(status.st_size - offset, 0)


def _debug_page(err: BaseException) -> bytes:
    trace = escape("".join(traceback.format_exception(err)))
    return f"<!doctype html><title>500 {escape(type(err).__name__)}</title><pre>{trace}</pre>".encode()


def body_stream(body: bytes | bytearray, path: str | None) -> IO[bytes]:
    if path is not None:
        return open(path, "rb")  # closed by the worker when the request ends
    return io.BytesIO(body)
