"""The framing between the event loop and a worker process, over one unix socket pair per worker.

A frame is a 5-byte header (payload length u32 little-endian, kind u8) and its payload. Requests travel as one
frame whose payload is the environ serialised with orjson followed by the body (or the name of the temporary file
holding it); responses travel back as a HEAD frame (status line and header block, already encoded, so the loop
only prefixes ``Status:`` or ``HTTP/1.1``), BODY frames as the app produces them, and END. A response the app
produced whole (the usual list of one string) travels as one RESPONSE frame instead: head, body and end together,
so the loop decodes and relays one frame, and frames it for the web server in one record. A worker with one thread
runs one request at a time and answers in order, so its response frames need no request id; the loop may hand a
busy worker its next request ahead of time (``--pipeline``), and both sides number requests by their order on the
channel (1, 2, ...), which is what a CANCEL names. A worker with --threads answers several requests at once: a
SELECT frame naming a request's number comes before its frames whenever they follow another request's, and an
END or ABORT ends the selection. It starts requests in their order, a thread taking the next only after sending
its END, so the first ``threads`` requests not finished are the ones running. This module does no I/O: both sides
wrap it with their own.

A file response (``wsgi.file_wrapper`` over a regular file) travels as HEAD, then FILE (offset and length), then
END; the open file itself is passed as a descriptor (``SCM_RIGHTS``) over a second socket pair, the files socket,
before the FILE frame is written: the loop reads the channel through an asyncio transport, which has no way to
receive a descriptor, and reads the files socket (a SOCK_SEQPACKET pair, one descriptor per message) when a FILE
frame says one is there.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import orjson

FRAME_HEADER = struct.Struct("<IB")
_HEADER_SIZE = FRAME_HEADER.size
_UNPACK_HEADER = FRAME_HEADER.unpack_from
_REQUEST_PREFIX = struct.Struct("<I")

#: A frame larger than this means the two sides disagree on the format; fail loudly rather than allocate it.
MAX_FRAME = 1 << 30
#: Payloads from this size on may be passed on as views of the read that brought them (see FrameDecoder).
_VIEW_MIN = 1 << 14


class Kind(IntEnum):
    """Frame kinds. Loop to worker: REQUEST, CANCEL. Worker to loop: the rest."""

    REQUEST = 1
    CANCEL = 2  # payload: the request's number; its client went away: skip it, or stop its output between chunks
    READY = 10  # the app is imported; payload is JSON {"pid": ...}
    HEAD = 11  # b"200 OK\r\nName: value\r\n\r\n"
    BODY = 12
    END = 13  # the response is complete; payload is JSON extras for the loop (empty when none)
    ABORT = 14  # the app failed after its head was sent: the loop must cut the client's response short
    RESPONSE = 15  # HEAD, BODY and END in one: see encode_response
    SELECT = 16  # payload: a request's number; the frames that follow, up to its END or ABORT, are for it
    FILE = 17  # payload: offset and length (u64 each); the open file itself came first over the files socket


#: A RESPONSE payload starts with the lengths of the END extras and of the head; the body is the rest.
RESPONSE_PREFIX = struct.Struct("<II")


class ChannelError(Exception):
    """The other side sent a frame we cannot understand: a bug or a crash, never client input."""


def encode_frame(kind: Kind, payload: bytes = b"") -> bytes:
    return FRAME_HEADER.pack(len(payload), kind) + payload


CANCEL_PAYLOAD = struct.Struct("<I")


def encode_response(head: bytes, body: list[bytes], extras: bytes) -> list[bytes]:
    """A whole response as one RESPONSE frame, in pieces to send joined (the body is never copied here).

    Extras come first so that head and body are contiguous: the loop relays them as one slice.
    """
    size = RESPONSE_PREFIX.size + len(extras) + len(head) + sum(map(len, body))
    return [FRAME_HEADER.pack(size, Kind.RESPONSE) + RESPONSE_PREFIX.pack(len(extras), len(head)) + extras + head,
            *body]  # fmt: skip


def decode_response(payload: bytes | memoryview) -> tuple[memoryview, int, bytes]:
    """(head and body as one view, the head's length, END extras) of a RESPONSE payload."""
    extras_length, head_length = RESPONSE_PREFIX.unpack_from(payload)
    start = RESPONSE_PREFIX.size + extras_length
    if start + head_length > len(payload):
        raise ChannelError(f"RESPONSE frame of {len(payload)} bytes claims a {head_length}-byte head")
    extras = bytes(payload[RESPONSE_PREFIX.size : start]) if extras_length else b""
    return memoryview(payload)[start:], head_length, extras


def encode_cancel(number: int) -> bytes:
    return encode_frame(Kind.CANCEL, CANCEL_PAYLOAD.pack(number))


#: A FILE frame's payload: where the range starts in the file and how long it is.
FILE_PAYLOAD = struct.Struct("<QQ")


def encode_file(offset: int, length: int) -> bytes:
    return encode_frame(Kind.FILE, FILE_PAYLOAD.pack(offset, length))


def decode_file(payload: bytes | memoryview) -> tuple[int, int]:
    if len(payload) != FILE_PAYLOAD.size:
        raise ChannelError(f"FILE frame of {len(payload)} bytes, not {FILE_PAYLOAD.size}")
    offset, length = FILE_PAYLOAD.unpack(payload)
    return offset, length


def encode_select(number: int) -> bytes:
    return encode_frame(Kind.SELECT, CANCEL_PAYLOAD.pack(number))


def decode_select(payload: bytes | memoryview) -> int:
    if len(payload) != CANCEL_PAYLOAD.size:
        raise ChannelError(f"SELECT frame of {len(payload)} bytes, not {CANCEL_PAYLOAD.size}")
    number: int = CANCEL_PAYLOAD.unpack(payload)[0]
    return number


@dataclass(frozen=True, slots=True)
class WorkerRequest:
    """What a worker needs to run one request."""

    environ: dict[str, str]
    body: bytes | bytearray  # the body itself, unless body_path is set
    body_path: str | None
    protocol: str  # "fastcgi" or "uwsgi", for the log only
    #: (id, data) of the session the loop loaded, (None, None) for none; None when sessions are off.
    session: tuple[str | None, dict[str, Any] | None] | None = None

    def encode(self) -> list[bytes | bytearray | memoryview]:
        """The frame's pieces; see encode_request."""
        return encode_request(self.environ, [self.body] if self.body else [], self.body_path, self.protocol,
                              self.session)  # fmt: skip

    @classmethod
    def decode(cls, payload: bytes | bytearray | memoryview) -> WorkerRequest:
        return cls(*decode_request(payload))


#: A REQUEST payload's parts, in WorkerRequest's field order.
RequestParts = tuple[dict[str, str], bytes, str | None, str, tuple[str | None, dict[str, Any] | None] | None]


def decode_request(payload: bytes | bytearray | memoryview) -> RequestParts:
    """A REQUEST payload as WorkerRequest's fields, without the WorkerRequest: a worker decodes one per request,
    and a frozen dataclass costs several times a tuple to make (compiled or not; RESULTS.md, History)."""
    (meta_length,) = _REQUEST_PREFIX.unpack_from(payload)
    meta_end = _REQUEST_PREFIX.size + meta_length
    environ, body_path, protocol, session = orjson.loads(payload[_REQUEST_PREFIX.size : meta_end])
    return environ, bytes(payload[meta_end:]), body_path, protocol, tuple(session) if session else None


def encode_request(
    environ: dict[str, str],
    body: Sequence[bytes | bytearray | memoryview],
    body_path: str | None,
    protocol: str,
    session: tuple[str | None, dict[str, Any] | None] | None,
) -> list[bytes | bytearray | memoryview]:
    """A REQUEST frame as pieces to write in order: the header and metadata, then the body's chunks as they
    arrived (a writer sends them vectored, so the body is never copied to build the frame). The loop calls this
    per request without building a WorkerRequest."""
    meta = orjson.dumps((environ, body_path, protocol, session))
    prefix = FRAME_HEADER.pack(_REQUEST_PREFIX.size + len(meta) + sum(map(len, body)), Kind.REQUEST)
    return [prefix + _REQUEST_PREFIX.pack(len(meta)) + meta, *body]


#: Payload is ``bytes``, or a ``memoryview`` of one read for a large payload (see FrameDecoder).
Payload = bytes | memoryview


class FrameDecoder:
    """Splits a byte stream into (kind, payload) frames; the one decoder of both ends of the channel.

    Frames are cut straight out of each read. A large payload (a response body) that fills most of its read is
    passed on as a view of it, not copied: the view keeps the read alive while the response waits for its client,
    so views are only made where that read is at most twice the payload. A frame cut by a read is completed from
    the next reads alone, in a buffer that then becomes its payload, so a read is never recopied whole.

    The worker, which reads with blocking calls, also asks how much the cut frame still ``lacks``: a large request
    frame is then received in place (``complete_in_place``) rather than fed read by read.
    """

    __slots__ = ("_buffer", "pending")

    def __init__(self) -> None:
        self._buffer = bytearray()
        #: Bytes held of a frame cut by a read (read only). An attribute, not a property: the worker asks before
        #: every request, and a property would be a Python call each time.
        self.pending = 0

    def feed(self, data: bytes) -> list[tuple[int, Payload]]:
        frames: list[tuple[int, Payload]] = []
        offset = 0
        if self._buffer:
            resumed = self._complete_buffered(data, frames)
            if resumed is None:
                return frames
            offset = resumed
        available = len(data)
        while available - offset >= _HEADER_SIZE:
            length, kind = _UNPACK_HEADER(data, offset)
            start = offset + _HEADER_SIZE
            offset = start + length
            if offset > available:
                # Only a frame that does not fit its read is held, so only its length needs bounding.
                if length > MAX_FRAME:
                    raise ChannelError(f"frame of {length} bytes exceeds the channel maximum")
                offset = start - _HEADER_SIZE
                break
            if length >= _VIEW_MIN and 2 * length >= available:
                frames.append((kind, memoryview(data)[start:offset]))
            else:
                frames.append((kind, data[start:offset]))
        if offset < available:
            self._buffer += memoryview(data)[offset:]
            self.pending = len(self._buffer)
        return frames

    def _complete_buffered(self, data: bytes, frames: list[tuple[int, Payload]]) -> int | None:
        """Add to the held partial frame what it lacks from ``data``; where parsing of ``data`` resumes, or None
        when all of ``data`` went into the still incomplete frame."""
        buffer = self._buffer
        used = 0
        if len(buffer) < _HEADER_SIZE:
            used = min(_HEADER_SIZE - len(buffer), len(data))
            buffer += data[:used]
            if len(buffer) < _HEADER_SIZE:
                self.pending = len(buffer)
                return None
        length: int
        length, kind = _UNPACK_HEADER(buffer)
        if length > MAX_FRAME:
            raise ChannelError(f"frame of {length} bytes exceeds the channel maximum")
        missing = _HEADER_SIZE + length - len(buffer)
        if len(data) - used < missing:
            buffer += memoryview(data)[used:]
            self.pending = len(buffer)
            return None
        buffer += memoryview(data)[used : used + missing]
        # The buffer becomes the payload's (never written again): no copy out of it.
        self._buffer = bytearray()
        self.pending = 0
        payload = memoryview(buffer)[_HEADER_SIZE:]
        frames.append((kind, payload if length >= _VIEW_MIN else payload.tobytes()))
        return used + missing

    @property
    def lacking(self) -> int:
        """Bytes the frame cut by a read still lacks: 0 when none is cut; while its header is cut, only the rest of
        the header (its payload's length is not known yet)."""
        buffer = self._buffer
        if not buffer:
            return 0
        if len(buffer) < _HEADER_SIZE:
            return _HEADER_SIZE - len(buffer)
        length: int = _UNPACK_HEADER(buffer)[0]
        return _HEADER_SIZE + length - len(buffer)

    def complete_in_place(self, recv_into: Callable[[memoryview], int]) -> tuple[int, Payload] | None:
        """The cut frame (its header complete), its rest written by ``recv_into`` straight into one buffer of the
        frame's size, which its payload then views: no growing buffer to copy from and no copy out of it.

        ``recv_into`` (a blocking socket's) gets exactly the part still missing, so the frames after this one stay
        unread. None if it returns 0 first (the other side closed); what it wrote stays held. The decoder itself
        still does no I/O: the caller hands it the read.
        """
        held = self._buffer
        if len(held) < _HEADER_SIZE:
            raise ValueError("complete_in_place needs the frame's header (see lacking)")
        length, kind = _UNPACK_HEADER(held)
        frame = memoryview(bytearray(_HEADER_SIZE + length))
        got = len(held)
        frame[:got] = held
        size = len(frame)
        while got < size:
            received = recv_into(frame[got:])
            if not received:
                self._buffer = bytearray(frame[:got])
                self.pending = got
                return None
            got += received
        self._buffer = bytearray()
        self.pending = 0
        return kind, frame[_HEADER_SIZE:]


def decode_json(payload: bytes) -> Any:
    return orjson.loads(payload) if payload else None
