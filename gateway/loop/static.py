"""Static files served by the event loop itself (``--static URL=DIR``), for development and small deployments.

A request whose path falls under a mapping never reaches a worker: the dispatcher hands it here first. The body
is the sink's ``send_file``, the same path as a worker's ``wsgi.file_wrapper`` response (gateway/loop/filesend.py):
the bytes go from the page cache to the connection's socket with ``os.sendfile``, framed in STDOUT records over
FastCGI, as they are over uwsgi and HTTP, in their place among the connection's other output.

Paths are checked before anything is opened: the raw ``REQUEST_URI`` is split on ``/`` and each segment decoded;
a segment that decodes to ``/``, ``\\``, NUL, ``.`` or ``..`` is a 404, and so is a file whose real path (symlinks
resolved) is outside the mapping's directory, or anything but a regular file (no directory listings).

``GET`` and ``HEAD`` only (anything else 405); ``Content-Type`` from the extension (``mimetypes``),
``Last-Modified`` and ``If-Modified-Since`` (304), one ``Range`` (206, or 416 when unsatisfiable; several ranges
are answered with the whole file, which RFC 9110 allows), ``If-Range`` with the date.

The file is opened and ``fstat``-ed in the loop: cheap on a local disk, which is what this is for; a busy site
lets its web server serve the directory (``python -m gateway rules``).
"""

from __future__ import annotations

import email.utils
import logging
import mimetypes
import os
import stat
import urllib.parse
from collections.abc import Sequence

from gateway.config.static_dirs import StaticMount
from gateway.loop.request import Request, ResponseSink

log = logging.getLogger("gateway.static")

_FORBIDDEN_SEGMENTS = frozenset({".", ".."})


def _segments(uri_path: str) -> list[str] | None:
    """Decoded path segments, or None for anything that could name a file outside the directory."""
    segments = []
    for raw in uri_path.split("/"):
        if not raw:
            continue
        segment = urllib.parse.unquote(raw, errors="strict")
        if segment in _FORBIDDEN_SEGMENTS or any(char in segment for char in "/\\\0"):
            return None
        segments.append(segment)
    return segments


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _parse_date(text: str) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed.timestamp()


def parse_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """One ``bytes=`` range as (first, last) inclusive; None to ignore the header (serve it all); False when
    unsatisfiable (416)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first_text:  # the last N bytes
            length = int(last_text)
            if length <= 0:
                return False
            return max(0, size - length), size - 1
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
    except ValueError:
        return None
    if first < 0 or last < first:
        return False if first >= size else None
    if first >= size:
        return False
    return first, min(last, size - 1)


class StaticFiles:
    """The mappings of ``--static``, longest URL first, and the code that answers from them."""

    def __init__(self, mounts: Sequence[StaticMount]) -> None:
        """Built at start, in the app's directory: relative directories resolve from it (ConfigError if none)."""
        base = os.getcwd()
        resolved = [mount.resolved(base) for mount in mounts]
        self.mounts = sorted(resolved, key=lambda mount: len(mount.url), reverse=True)
        mimetypes.init()  # reads /etc/mime.types now, not in the loop on the first request

    def _mount_for(self, path: str) -> tuple[StaticMount, str] | None:
        for mount in self.mounts:
            if path == mount.url or path.startswith(mount.url + "/"):
                return mount, path[len(mount.url) :]
        return None

    def serve(self, request: Request) -> bool:
        """Answer ``request`` if its path is under a mapping (True); False lets it go on to a worker."""
        params = request.params
        uri = params.get("REQUEST_URI") or urllib.parse.quote(
            params.get("SCRIPT_NAME", "") + params.get("PATH_INFO", "")
        )
        path = uri.partition("?")[0]
        found = self._mount_for(path)
        if found is None:
            return False
        mount, rest = found
        request.release()
        sink = request.sink
        method = params.get("REQUEST_METHOD", "GET")
        if method not in ("GET", "HEAD"):
            _respond(sink, "405 Method Not Allowed", b"Allow: GET, HEAD\r\n")
            return True
        try:
            segments = _segments(rest)
        except UnicodeDecodeError:
            segments = None
        if segments is None:
            log.warning("static %s: a path segment escapes or hides a separator; answered 404", uri)
            _respond(sink, "404 Not Found")
            return True
        self._answer(sink, mount, segments, params, head_only=method == "HEAD")
        return True

    def _answer(
        self, sink: ResponseSink, mount: StaticMount, segments: list[str], params: dict[str, str], *, head_only: bool
    ) -> None:
        candidate = os.path.join(mount.directory, *segments)
        real = os.path.realpath(candidate)
        if real != mount.directory and not real.startswith(mount.directory + os.sep):
            log.warning("static %s: resolves outside %s; answered 404", candidate, mount.directory)
            _respond(sink, "404 Not Found")
            return
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            _respond(sink, "404 Not Found")
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                _respond(sink, "404 Not Found")
                return
            size, mtime = info.st_size, int(info.st_mtime)
            modified = _http_date(mtime)
            content_type = mimetypes.guess_type(real)[0] or "application/octet-stream"
            if content_type.startswith("text/") or content_type in ("application/javascript", "application/json"):
                content_type += "; charset=utf-8"
            common = f"Last-Modified: {modified}\r\nAccept-Ranges: bytes\r\n"
            since = _parse_date(params.get("HTTP_IF_MODIFIED_SINCE", ""))
            if since is not None and mtime <= since and "HTTP_RANGE" not in params:
                sink.send_response(f"304 Not Modified\r\n{common}\r\n".encode("latin-1"))
                sink.finish()
                return
            first, last, status = 0, size - 1, "200 OK"
            extra = ""
            wanted = params.get("HTTP_RANGE")
            if_range = params.get("HTTP_IF_RANGE")
            if wanted and (if_range is None or if_range.strip() == modified):
                chosen = parse_range(wanted, size)
                if chosen is False:
                    _respond(sink, "416 Range Not Satisfiable", f"Content-Range: bytes */{size}\r\n".encode())
                    return
                if isinstance(chosen, tuple):
                    first, last = chosen
                    status = "206 Partial Content"
                    extra = f"Content-Range: bytes {first}-{last}/{size}\r\n"
            count = last - first + 1 if size else 0
            head = (
                f"{status}\r\nContent-Type: {content_type}\r\nContent-Length: {count}\r\n{common}{extra}\r\n"
            ).encode("latin-1")
            if head_only or count == 0:
                sink.send_response(head)
                sink.finish()
                return
            sink.send_head(head)
            sink.send_file(fd, first, count)
            fd = -1  # the sink's now
            sink.finish()
        finally:
            if fd >= 0:
                os.close(fd)


def _respond(sink: ResponseSink, status: str, extra: bytes = b"") -> None:
    body = f"{status}\n".encode()
    head = f"{status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n".encode()
    sink.send_response(head + extra + b"\r\n" + body)
    sink.finish()
