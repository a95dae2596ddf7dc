"""One response's frames, as a worker produces them: the batching both a one-thread and a threaded worker share."""

from __future__ import annotations

from gateway.contract.channel import FRAME_HEADER, Kind, encode_file, encode_frame, encode_response

#: Below this a body chunk waits for the next one, so a list response leaves in one write.
_COALESCE = 1 << 16


class ResponseFrames:
    """One response's frames as the app produces them, batched into as few writes as possible.

    The head and the body chunks after it are held until the response ends (they leave as one RESPONSE frame) or
    until something must go out now (a flush, or more than _COALESCE bytes). Where the bytes go is ``_write``'s
    business: the socket itself for a worker with one thread, the shared channel under its lock with --threads.
    """

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._out_size = 0
        self._head: bytes | None = None
        self._held: list[bytes] = []

    def _write(self, data: bytes, end: bool) -> None:
        """Send ``data`` (whole frames); ``end``: they finish the response."""
        raise NotImplementedError

    def cancelled(self) -> bool:
        raise NotImplementedError

    def _write_file(self, data: bytes, fd: int) -> None:
        """Pass ``fd`` over the files socket, then send ``data`` (frames ending with the FILE frame)."""
        raise NotImplementedError

    #: Whether this output can pass open files to the loop (a worker started with a files socket).
    files = False

    def send_file(self, fd: int, offset: int, length: int) -> None:
        """``length`` bytes of the open regular file ``fd`` from ``offset`` as the next body bytes: the loop
        receives the descriptor itself and sends the range with sendfile; ``fd`` stays ours to close."""
        self._release_head()
        self._queue(encode_file(offset, length))
        out = self._out
        data = b"".join(out) if len(out) > 1 else out[0]
        out.clear()
        self._out_size = 0
        self._write_file(data, fd)

    # ResponseOutput
    def send_head(self, head: bytes) -> None:
        self._release_head()
        self._head = head

    def send_body(self, data: bytes, flush: bool) -> None:
        if self._head is not None:
            self._held.append(data)
            self._out_size += len(data)
            if flush or self._out_size >= _COALESCE:
                self._release_head()
                self.flush()
            return
        self._queue(FRAME_HEADER.pack(len(data), Kind.BODY))
        self._queue(data)
        if flush or self._out_size >= _COALESCE:
            self.flush()

    def _take_held(self) -> tuple[bytes, list[bytes]]:
        """The held head and body chunks, no longer held (nor counted as queued)."""
        head, held = self._head, self._held
        assert head is not None
        self._head, self._held = None, []
        self._out_size -= sum(map(len, held))
        return head, held

    def _release_head(self) -> None:
        """The held head and body go out as HEAD and BODY frames: the response continues after them."""
        if self._head is None:
            return
        head, held = self._take_held()
        self._queue(encode_frame(Kind.HEAD, head))
        for data in held:
            self._queue(FRAME_HEADER.pack(len(data), Kind.BODY))
            self._queue(data)

    def finish(self, kind: Kind, payload: bytes = b"") -> None:
        if kind == Kind.END and self._head is not None:
            head, held = self._take_held()
            for piece in encode_response(head, held, payload):
                self._queue(piece)
        else:
            self._release_head()
            self._queue(encode_frame(kind, payload))
        self.flush(end=True)

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    def flush(self, end: bool = False) -> None:
        out = self._out
        if out:
            data = b"".join(out) if len(out) > 1 else out[0]
            out.clear()
            self._out_size = 0
            self._write(data, end)
