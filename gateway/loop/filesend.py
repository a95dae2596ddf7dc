"""A file's byte range on its way to a client, sent by the kernel: ``sendfile`` from the worker's open file into
the web server's socket, with no byte passing through Python.

The worker hands the loop an open descriptor (``wsgi.file_wrapper`` over a regular file) with an offset and a
length, and is free at once. The connection's OutputBuffer keeps the segment in its place among the connection's
output and calls :meth:`FileSegment.push` once the transport's own buffer is empty (our writes must never overtake
bytes the transport still holds): the kernel then copies what the socket takes. When the socket is full, the
segment waits for it to be writable on a duplicate of its descriptor (``loop.add_writer``: the transport keeps its
own registration of the original), which the kernel reports once a good part of the socket buffer is free, as a
blocking sendfile would wake: a few large calls per file rather than one per read of the web server. FastCGI's
STDOUT records are framed around each chunk, each header sent with MSG_MORE so that it travels in the segment of
the content after it; uwsgi and HTTP send the range as it is.

One push sends at most ``TURN_BYTES`` and then gives the loop back (``Push.TURN``), even to a socket that would take
more: a fast reader with a large socket buffer must not keep the loop from every other connection, nor from reading
the FastCGI ABORT_REQUEST that stops this very file (``end_with_record``).

The descriptor is the segment's: closed when the range is sent, when the client goes away, and on any error.
"""

from __future__ import annotations

import asyncio
import enum
import os
import socket
from collections.abc import Callable

#: The content of one FastCGI record at most (its length field is 16 bits).
RECORD_MAX = 0xFFFF
#: Most sent in one push, so that one turn of the loop never belongs to one file.
TURN_BYTES = 1 << 20


class Push(enum.Enum):
    DONE = "done"  # the whole range is sent
    TRANSPORT = "transport"  # the transport holds bytes: wait until it has drained (resume_writing)
    SOCKET = "socket"  # the socket is full: wait until ``writable_fd`` is writable
    TURN = "turn"  # sent TURN_BYTES: push again on the next turn of the loop


class FileSegment:
    """``length`` bytes of the open file ``fd`` from ``offset``; ``record_header(n)`` frames n bytes of content
    (FastCGI), or None (uwsgi: raw bytes)."""

    __slots__ = ("_raw", "fd", "header", "left", "offset", "on_sent", "record_header", "record_left")

    def __init__(self, fd: int, offset: int, length: int, record_header: Callable[[int], bytes] | None) -> None:
        self.fd = fd
        self.offset = offset
        self.left = length
        self.record_header = record_header
        #: Content of the current record still to send (FastCGI), and what of its header is not sent yet.
        self.record_left = 0
        self.header = b""
        #: A duplicate of the client socket's descriptor: header sends and the writability watch.
        self._raw: socket.socket | None = None
        #: Called once the whole range is out (into the socket, or into a spool): a FastCGI response's
        #: END_REQUEST waits for it, so that ABORT_REQUEST can still stop the file (fastcgi_front.py).
        self.on_sent: Callable[[], None] | None = None

    @property
    def writable_fd(self) -> int:
        assert self._raw is not None
        return self._raw.fileno()

    def end_with_record(self) -> int:
        """Send no more than the rest of the record under way (FastCGI ABORT_REQUEST: the web server reads the
        connection's other requests' records on, so one is never cut); the number of bytes that will not be sent."""
        assert self.record_header is not None, "a raw range cannot stop early without cutting the response"
        if self.fd < 0:  # sent, read into a spool, or dropped with its connection: nothing held for it any more
            return 0
        dropped = self.left - self.record_left
        self.left = self.record_left
        return dropped

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def push(self, transport: asyncio.WriteTransport) -> Push:
        """Send what the socket takes now. Raises OSError when the socket or the file fails (the file shrank
        under us, for instance)."""
        if transport.get_write_buffer_size():
            return Push.TRANSPORT
        raw = self._raw
        if raw is None:
            sock = transport.get_extra_info("socket")
            if sock is None:
                raise OSError("the transport has no socket to sendfile into")
            raw = self._raw = socket.socket(fileno=os.dup(sock.fileno()))
        out = raw.fileno()
        framed = self.record_header is not None
        budget = TURN_BYTES
        while self.left:
            if not budget:
                return Push.TURN
            if framed and not self.record_left:
                size = min(self.left, RECORD_MAX)
                assert self.record_header is not None
                self.record_left = size
                self.header = self.record_header(size)
            if self.header:
                try:
                    sent = raw.send(self.header, socket.MSG_MORE)
                except BlockingIOError:
                    return Push.SOCKET
                self.header = self.header[sent:]
                if self.header:
                    return Push.SOCKET
            count = min(self.record_left if framed else self.left, budget)
            try:
                sent = os.sendfile(out, self.fd, self.offset, count)
            except BlockingIOError:
                return Push.SOCKET
            if not sent:
                raise OSError(f"the file ended {self.left} bytes before the length the app gave")
            self.offset += sent
            self.left -= sent
            budget -= sent
            if framed:
                self.record_left -= sent
            if sent < count and (not framed or self.record_left):
                return Push.SOCKET  # it took less than asked: full now; no second call just to hear EAGAIN
        return Push.DONE

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
