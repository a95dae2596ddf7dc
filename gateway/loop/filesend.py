"""A file's byte range on its way to a client, sent by the kernel: ``sendfile`` from the worker's open file into
the web server's socket, with no byte passing through Python.

The worker hands the loop an open descriptor (``wsgi.file_wrapper`` over a regular file) with an offset and a
length, and is free at once. The connection's OutputBuffer keeps the segment in its place among the connection's
output and calls :meth:`FileSegment.push` whenever the transport's own buffer is empty: the kernel then copies
what the socket takes. Our writes must never overtake bytes the transport still holds, so the segment sends only
into an empty transport; when the socket is full (``EAGAIN``), a small probe read from the file is written
through the transport instead, and the transport, whose limits are set to zero while a segment is under way,
asks the connection to pause until that probe has left: the loop's own writability watch is the wake-up, no
second registration of the socket is needed. FastCGI's STDOUT records are framed around each chunk (a header
through the transport, the content by sendfile); uwsgi sends the range as it is.

The descriptor is the segment's: closed when the range is sent, when the client goes away, and on any error.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

#: The content of one FastCGI record at most (its length field is 16 bits).
RECORD_MAX = 0xFFFF
#: What is written through the transport when the socket is full, to be woken when it drains.
_PROBE = 1 << 12
#: Most asked of one sendfile call: the loop gets back to other connections between calls.
_SENDFILE_MAX = 1 << 20


class FileSegment:
    """``length`` bytes of the open file ``fd`` from ``offset``; ``record_header(n)`` frames n bytes of content
    (FastCGI), or None (uwsgi: raw bytes)."""

    __slots__ = ("fd", "left", "offset", "record_header", "record_left")

    def __init__(self, fd: int, offset: int, length: int, record_header: Callable[[int], bytes] | None) -> None:
        self.fd = fd
        self.offset = offset
        self.left = length
        self.record_header = record_header
        #: Content of the current record still to send (FastCGI).
        self.record_left = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def push(self, transport: asyncio.WriteTransport) -> bool:
        """Send what the socket takes now; True when the whole range is sent. False: the transport holds bytes
        (a record header or a probe) and will ask for a pause until they are gone; call again on resume.

        Raises OSError when the socket or the file fails (the file shrank under us, for instance)."""
        sock = transport.get_extra_info("socket")
        if sock is None:
            raise OSError("the transport has no socket to sendfile into")
        out = sock.fileno()
        framed = self.record_header is not None
        while self.left:
            if transport.get_write_buffer_size():
                return False
            if framed and not self.record_left:
                size = min(self.left, RECORD_MAX)
                assert self.record_header is not None
                self.record_left = size
                transport.write(self.record_header(size))
                continue
            count = min(self.record_left if framed else self.left, _SENDFILE_MAX)
            try:
                sent = os.sendfile(out, self.fd, self.offset, count)
            except BlockingIOError:
                probe = os.pread(self.fd, min(count, _PROBE), self.offset)
                if not probe:
                    raise OSError(f"the file ended {self.left} bytes before the length the app gave") from None
                self._advance(len(probe))
                transport.write(probe)
                continue
            if not sent:
                raise OSError(f"the file ended {self.left} bytes before the length the app gave")
            self._advance(sent)
        return True

    def _advance(self, count: int) -> None:
        self.offset += count
        self.left -= count
        if self.record_header is not None:
            self.record_left -= count

    def read_all(self, block: int = 1 << 18) -> list[bytes]:
        """The range as bytes, framed (for a sink or a spool that cannot take a descriptor); closes the file."""
        pieces = []
        try:
            while self.left:
                size = min(self.left, RECORD_MAX if self.record_header is not None else block)
                data = os.pread(self.fd, size, self.offset)
                if not data:
                    raise OSError(f"the file ended {self.left} bytes before the length the app gave")
                if self.record_header is not None:
                    pieces.append(self.record_header(len(data)))
                pieces.append(data)
                self.offset += len(data)
                self.left -= len(data)
        finally:
            self.close()
        return pieces
