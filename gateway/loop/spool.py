"""Bytes the event loop holds on someone's behalf: request bodies on their way in, responses on their way out.

Both stay in memory up to a threshold and move to a temporary file beyond it, so a 1 GiB upload or a slow reader
of a 1 GiB download costs the loop a file, not RAM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections import deque
from collections.abc import Callable
from typing import IO

from gateway.loop.counters import COUNTERS
from gateway.loop.filesend import FileSegment, Push

#: How much of a spooled response is read back from its file per write to the client.
_DRAIN_CHUNK = 1 << 18
#: A turn's pieces smaller than this together are joined into one buffer; larger ones are written vectored.
_JOIN_BELOW = 1 << 16
#: Request body chunks smaller than this are packed into buffers of up to _PACK_UP_TO bytes.
_PACK_BELOW = 1 << 14
_PACK_UP_TO = 1 << 16
#: A body kept as views may pin at most twice its size plus this much of the reads they were cut from (uvloop
#: reads up to 256 KB at a time).
_PINNED_SLACK = 1 << 18


class RequestBody:
    """A request body being received: its chunks in memory, or a named temporary file once it grows past the
    threshold.

    Large chunks are kept as they arrived (not appended to one growing bytearray, whose reallocations copied a
    1 MiB upload several times over) and go to the worker in one vectored write. Small ones are packed together,
    so a client sending its body a byte at a time costs a byte per byte, not an object per byte. Chunks that are
    views of a read (the codecs cut body bytes out of reads without copying) are kept as views while the reads
    they pin stay within twice the body's size plus one read; beyond that (a read mostly made of other records)
    the chunk is copied, so views can never make a body cost much more memory than its size. The file has a
    name because the worker opens it by name; the loop removes it when the request ends (``discard``), whether it
    was answered, refused, or its client went away.
    """

    __slots__ = ("_chunks", "_file", "_pinned", "_pinned_read", "_spool_dir", "_tail", "_threshold", "path", "size")

    def __init__(self, threshold: int, spool_dir: str | None) -> None:
        self._threshold = threshold
        self._spool_dir = spool_dir
        self._chunks: list[bytes | bytearray | memoryview] = []
        self._tail = bytearray()  # small chunks, packed
        self._file: IO[bytes] | None = None
        #: Bytes of the reads the kept views pin, and the last of those reads (consecutive views share it).
        self._pinned = 0
        self._pinned_read: object = None
        self.path: str | None = None
        self.size = 0

    def write(self, data: bytes | memoryview) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            COUNTERS.spooled_request_bytes += len(data)
            return
        if len(data) < _PACK_BELOW:
            self._tail += data
            if len(self._tail) >= _PACK_UP_TO:
                self._seal_tail()
        else:
            self._seal_tail()
            self._chunks.append(self._keepable(data) if type(data) is memoryview else data)
        if self.size > self._threshold:
            self.spool()

    @property
    def memory(self) -> int:
        """Bytes of this body held in memory (0 once it went to its file)."""
        return self.size if self.path is None else 0

    def spool(self) -> None:
        """Move the body to its temporary file now (past the threshold, or when the loop's memory budget says so);
        what arrives later is appended there."""
        if self.path is not None:
            return
        file = tempfile.NamedTemporaryFile(  # noqa: SIM115  # lives as long as the request
            prefix="body-", dir=self._spool_dir, delete=False
        )
        self._file, self.path = file, file.name
        file.writelines(self._chunks)
        file.write(self._tail)
        COUNTERS.spooled_request_bytes += self.size
        self._chunks = []
        self._tail = bytearray()

    def _keepable(self, view: memoryview) -> bytes | memoryview:
        """``view`` itself, or a copy if keeping it would pin too much of reads that are not this body."""
        read = view.obj
        if read is not self._pinned_read:
            pinned = self._pinned + memoryview(read).nbytes
            if pinned > 2 * self.size + _PINNED_SLACK:
                return bytes(view)
            self._pinned, self._pinned_read = pinned, read
        return view

    def finish(self) -> list[bytes | bytearray | memoryview]:
        """The body for the worker: its chunks, or none with ``path`` naming the file (flushed and closed)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._seal_tail()
        return self._chunks

    def _seal_tail(self) -> None:
        """The packed small chunks become a chunk of their own; later ones start a new buffer."""
        if self._tail:
            self._chunks.append(self._tail)
            self._tail = bytearray()

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None
        self._chunks = []
        self._tail = bytearray()


class EmptyBody(RequestBody):
    """The body of a request that has none, shared by all of them: nothing to set up, spool or remove.

    Most requests (a GET) have no body; each used to cost a RequestBody of its own, made when its head arrived
    and discarded when it ended. A front hands out ``EMPTY_BODY`` until body bytes arrive, and makes a real
    body (``FrontContext.new_body``) with the first of them, so this one is never written.
    """

    __slots__ = ()

    def write(self, data: bytes | memoryview) -> None:
        raise AssertionError("EMPTY_BODY is shared: a body that receives bytes is made with FrontContext.new_body")

    def spool(self) -> None:
        pass

    def finish(self) -> list[bytes | bytearray | memoryview]:
        return []

    def discard(self) -> None:
        pass


EMPTY_BODY = EmptyBody(0, None)


class OutputBuffer:
    """Writes to a transport with flow control, holding what the client has not taken yet.

    While the transport accepts data, everything written in one turn of the event loop (a response's head, body
    and end record usually arrive together from the worker) goes out in one write at the end of that turn: one
    syscall per response instead of three. Once the
    transport asks us to pause, data queues in memory up to ``memory_limit`` and then in an unnamed temporary
    file, and drains in order when the transport resumes. The worker that produced it is long gone by then.
    """

    __slots__ = (
        "_batch",
        "_call_soon",
        "_close_when_drained",
        "_file",
        "_file_read",
        "_file_write",
        "_limits",
        "_memory",
        "_memory_limit",
        "_memory_size",
        "_paused",
        "_segment_bytes",
        "_spool_dir",
        "_watching",
        "transport",
    )

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        memory_limit: int,
        spool_dir: str | None,
        call_soon: Callable[..., object] | None = None,
    ) -> None:
        self.transport = transport
        self._memory_limit = memory_limit
        self._spool_dir = spool_dir
        self._memory: deque[bytes | memoryview | FileSegment] = deque()
        self._memory_size = 0
        #: What the file segments held in ``_memory`` still have to send (they are not in ``_memory_size``).
        self._segment_bytes = 0
        #: The transport's (low, high) write limits while a segment has them at zero; None otherwise.
        self._limits: tuple[int, int] | None = None
        #: The descriptor a blocked segment waits on to be writable (-1: none).
        self._watching = -1
        self._file: IO[bytes] | None = None
        self._file_read = 0
        self._file_write = 0
        self._paused = False
        self._close_when_drained = False
        self._batch: list[bytes | memoryview] | None = None
        self._call_soon = call_soon or asyncio.get_running_loop().call_soon

    @property
    def pending(self) -> int:
        """Bytes held here (not counting the transport's own buffer)."""
        return self._memory_size + self._segment_bytes + self._file_write - self._file_read

    def write(self, data: bytes | memoryview) -> None:
        if not self._paused and not self._memory and self._file is None:
            batch = self._batch
            if batch is None:
                self._batch = [data]
                self._call_soon(self._flush_batch)
            else:
                batch.append(data)
        elif self._file is None and self._memory_size + len(data) <= self._memory_limit:
            self._memory.append(data)
            self._memory_size += len(data)
        else:
            if self._file is None:
                self._file = tempfile.TemporaryFile(prefix="response-", dir=self._spool_dir)  # noqa: SIM115
                self._file_read = self._file_write = 0
            self._file.seek(self._file_write)
            self._file.write(data)
            self._file_write += len(data)
            COUNTERS.spooled_response_bytes += len(data)

    def writelines(self, pieces: list[bytes | memoryview]) -> None:
        for piece in pieces:
            self.write(piece)

    def send_file(self, segment: FileSegment) -> None:
        """A file's range after everything written so far, sent by the kernel (see gateway/loop/filesend.py).

        Behind a response already spooled to a file (a slow reader), the range is read into the spool instead:
        ordering comes first, and the worker is free either way."""
        self._flush_batch()
        if self._file is not None:
            try:
                pieces = segment.read_all()
            except OSError:
                self.transport.abort()
                return
            self.writelines(pieces)  # type: ignore[arg-type]
            if segment.on_sent is not None:
                segment.on_sent()
            return
        self._memory.append(segment)
        self._segment_bytes += segment.left
        if not self._paused:
            self._drain()

    def end_with_record(self, segment: FileSegment) -> None:
        """``segment``'s request was aborted: it stops after the FastCGI record under way (none if it has not
        started), and what follows it here goes out after that."""
        self._segment_bytes -= segment.end_with_record()

    def flush(self) -> None:
        """Hand what this turn of the loop wrote to the transport now (before a reset, for instance)."""
        self._flush_batch()

    def _flush_batch(self) -> None:
        batch = self._batch
        if batch is None:
            return
        self._batch = None
        if self.transport.is_closing():
            return
        if len(batch) == 1:
            self.transport.write(batch[0])
        elif sum(map(len, batch)) < _JOIN_BELOW:
            self.transport.write(b"".join(batch))
        else:
            self.transport.writelines(batch)  # one vectored write: large pieces are not copied into one

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._drain()

    def close_when_drained(self) -> None:
        """Close the transport once everything held here has been handed to it."""
        self._close_when_drained = True
        self._flush_batch()
        if not self.pending:
            self.transport.close()

    def discard(self) -> None:
        """The client is gone: drop what it will never read, and the file holding it."""
        self._batch = None
        self._stop_watching()
        self._restore_limits()
        for item in self._memory:
            if type(item) is FileSegment:
                item.close()
        self._memory.clear()
        self._memory_size = self._segment_bytes = 0
        if self._file is not None:
            self._file.close()
            self._file = None
        self._file_read = self._file_write = 0

    def _push(self, segment: FileSegment) -> bool:
        """Send what the socket takes of ``segment``; True once it is all sent (and closed)."""
        transport = self.transport
        before = segment.left
        try:
            state = segment.push(transport)
        except OSError:
            self.discard()
            transport.abort()
            return False
        finally:
            self._segment_bytes -= before - segment.left
        if state is Push.TRANSPORT:
            if self._limits is None:
                # Bytes written before the file still wait in the transport: told to pause until it is empty,
                # then resumed (which drains on, into the segment).
                self._limits = transport.get_write_buffer_limits()
                transport.set_write_buffer_limits(high=0)
            return False
        self._restore_limits()
        if state is Push.SOCKET:
            self._stop_watching()
            self._watching = segment.writable_fd
            asyncio.get_running_loop().add_writer(self._watching, self._writable)
            self._paused = True
            return False
        if state is Push.TURN:
            self._paused = True
            self._call_soon(self._writable)
            return False
        self._memory.popleft()
        segment.close()
        if segment.on_sent is not None:
            segment.on_sent()
        return True

    def _writable(self) -> None:
        self._stop_watching()
        self._paused = False
        self._drain()

    def _stop_watching(self) -> None:
        if self._watching >= 0:
            asyncio.get_running_loop().remove_writer(self._watching)
            self._watching = -1

    def _restore_limits(self) -> None:
        if self._limits is not None:
            low, high = self._limits
            self._limits = None
            self.transport.set_write_buffer_limits(high=high, low=low)

    def _drain(self) -> None:
        transport = self.transport
        while not self._paused:
            if self._memory:
                data = self._memory[0]
                if type(data) is FileSegment:
                    if not self._push(data):
                        return
                    continue
                self._memory.popleft()
                assert not isinstance(data, FileSegment)
                self._memory_size -= len(data)
                transport.write(data)
            elif self._file is not None:
                self._file.seek(self._file_read)
                data = self._file.read(min(_DRAIN_CHUNK, self._file_write - self._file_read))
                self._file_read += len(data)
                if self._file_read >= self._file_write:
                    self._file.close()
                    self._file = None
                    self._file_read = self._file_write = 0
                transport.write(data)
            else:
                if self._close_when_drained:
                    transport.close()
                return
