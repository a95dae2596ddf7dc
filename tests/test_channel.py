"""The loop-worker framing (gateway.contract.channel), fed whole, byte by byte, in random cuts and with trailing
data; and which frames a worker sends for each kind of response."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.contract.channel import (
    FRAME_HEADER,
    MAX_FRAME,
    RESPONSE_PREFIX,
    ChannelError,
    FrameDecoder,
    Kind,
    Payload,
    WorkerRequest,
    decode_response,
    encode_cancel,
    encode_frame,
    encode_response,
)
from gateway.worker.process import CANCEL_POLL_AFTER, Channel
from gateway.worker.wsgi import run_app

FRAMES = [(Kind.HEAD, b"200 OK\r\n\r\n"), (Kind.BODY, b"x" * 70000), (Kind.BODY, b""), (Kind.END, b"")]
STREAM = b"".join(encode_frame(kind, payload) for kind, payload in FRAMES)


def _feed_in(pieces: list[bytes]) -> tuple[list[tuple[int, Payload]], FrameDecoder]:
    decoder = FrameDecoder()
    frames: list[tuple[int, Payload]] = []
    for piece in pieces:
        frames += decoder.feed(piece)
    return frames, decoder


def test_whole() -> None:
    frames, decoder = _feed_in([STREAM])
    assert frames == FRAMES
    assert decoder.pending == 0


def test_byte_by_byte() -> None:
    frames, decoder = _feed_in([STREAM[i : i + 1] for i in range(len(STREAM))])
    assert frames == FRAMES
    assert decoder.pending == 0


def test_trailing_partial_frame_is_kept_for_the_next_read() -> None:
    tail = encode_frame(Kind.BODY, b"abcdef")[:7]
    frames, decoder = _feed_in([STREAM + tail])
    assert frames == FRAMES
    assert decoder.pending == 7
    assert decoder.feed(encode_frame(Kind.BODY, b"abcdef")[7:]) == [(Kind.BODY, b"abcdef")]
    assert decoder.pending == 0


def _decode_cut_anywhere(
    frames: list[tuple[Kind, bytes]], data: st.DataObject, max_cuts: int
) -> list[tuple[int, Payload]]:
    """The frames encoded, cut at up to ``max_cuts`` places hypothesis picks, fed piece by piece, decoded."""
    stream = b"".join(encode_frame(kind, payload) for kind, payload in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=max_cuts)))
    decoded, decoder = _feed_in([stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)])
    assert decoder.pending == 0
    return decoded


@given(st.lists(st.tuples(st.sampled_from(list(Kind)), st.binary(max_size=300)), max_size=8), st.data())
def test_any_cut_gives_the_same_frames(frames: list[tuple[Kind, bytes]], data: st.DataObject) -> None:
    decoded = _decode_cut_anywhere(frames, data, 10)
    assert decoded == [(int(kind), payload) for kind, payload in frames]


@given(
    st.lists(st.tuples(st.sampled_from([Kind.BODY, Kind.HEAD, Kind.RESPONSE]), st.integers(0, 70_000)), max_size=6),
    st.data(),
)
def test_large_payloads_any_cut_same_frames_and_views_pin_at_most_twice_their_size(
    sizes: list[tuple[Kind, int]], data: st.DataObject
) -> None:
    frames = [(kind, bytes([index]) * size) for index, (kind, size) in enumerate(sizes)]
    decoded = _decode_cut_anywhere(frames, data, 6)
    assert decoded == [(int(kind), payload) for kind, payload in frames]
    for _, payload in decoded:
        if isinstance(payload, memoryview):
            assert len(payload) >= 1 << 14
            # what the view keeps alive: the read it came in, or the buffer that completed a cut frame
            assert len(cast(bytes, payload.obj)) <= max(2 * len(payload), len(payload) + FRAME_HEADER.size)


def test_a_large_payload_is_a_view_of_its_read_and_a_cut_one_of_its_own_buffer() -> None:
    body = b"b" * 65536
    read = encode_frame(Kind.HEAD, b"200 OK\r\n\r\n") + encode_frame(Kind.BODY, body) + encode_frame(Kind.END)
    head, (kind, payload), end = FrameDecoder().feed(read)
    assert isinstance(payload, memoryview) and payload.obj is read and payload == body  # not copied
    assert isinstance(head[1], bytes) and end == (Kind.END, b"")
    decoder = FrameDecoder()
    assert decoder.feed(read[:30_000]) == [head]
    assert decoder.feed(read[30_000:60_000]) == []
    (kind, payload), end = decoder.feed(read[60_000:])
    assert kind == Kind.BODY and end == (Kind.END, b"")
    assert isinstance(payload, memoryview) and payload == body
    assert len(payload.obj) == len(body) + FRAME_HEADER.size  # type: ignore[arg-type] # its own buffer, no more
    # beside much more data in the same read, a payload is copied: a view would keep all of that read alive
    small_part = encode_frame(Kind.BODY, body) + encode_frame(Kind.BODY, b"z" * 200_000)
    (_, first), (_, second) = FrameDecoder().feed(small_part)
    assert type(first) is bytes and first == body and isinstance(second, memoryview)


def test_a_frame_beyond_the_maximum_is_a_channel_error() -> None:
    header = (MAX_FRAME + 1).to_bytes(4, "little") + bytes([Kind.BODY])
    with pytest.raises(ChannelError, match="exceeds the channel maximum"):
        FrameDecoder().feed(header)


def test_request_round_trip_and_cancel_numbering() -> None:
    session = ("id", {"n": 1})
    pieces = WorkerRequest({"PATH_INFO": "/é"}, bytearray(b"body"), None, "fastcgi", session).encode()
    assert pieces[1:] == [b"body"]  # the body is a piece of its own: written vectored, never copied into the frame
    ((kind, payload),) = FrameDecoder().feed(b"".join(pieces))
    assert kind == Kind.REQUEST
    assert WorkerRequest.decode(payload) == WorkerRequest({"PATH_INFO": "/é"}, b"body", None, "fastcgi", session)
    assert FrameDecoder().feed(encode_cancel(7)) == [(Kind.CANCEL, (7).to_bytes(4, "little"))]


@pytest.mark.parametrize("extras", [b"", b'{"session":"stored"}'])
def test_response_frame_round_trip(extras: bytes) -> None:
    head = b"200 OK\r\nContent-Length: 4\r\n\r\n"
    stream = b"".join(encode_response(head, [b"ab", b"cd"], extras)) + encode_frame(Kind.BODY, b"next")
    (kind, payload), following = FrameDecoder().feed(stream)
    assert kind == Kind.RESPONSE
    response, head_length, decoded_extras = decode_response(payload)
    assert (bytes(response), head_length, decoded_extras) == (head + b"abcd", len(head), extras)
    assert following == (Kind.BODY, b"next")


def test_response_frame_with_a_head_longer_than_itself_is_a_channel_error() -> None:
    ((_, payload),) = FrameDecoder().feed(b"".join(encode_response(b"200 OK\r\n\r\n", [], b"")))
    forged = RESPONSE_PREFIX.pack(0, 1000) + payload[RESPONSE_PREFIX.size :]
    with pytest.raises(ChannelError, match="claims a 1000-byte head"):
        decode_response(forged)


# -- the worker's end: what run_app's output becomes on the wire ---------------------------------------------------
def _worker_frames(app: Callable[..., Iterable[bytes]], finish: Kind = Kind.END) -> list[tuple[int, Payload]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:

        def worker() -> None:
            channel = Channel(theirs)
            channel.number = 1
            run_app(app, {"REQUEST_URI": "/"}, channel)
            channel.finish(finish)
            theirs.shutdown(socket.SHUT_WR)

        # The worker's writes block once the socket buffer is full: read them while it runs, as the loop does.
        thread = threading.Thread(target=worker)
        thread.start()
        decoder = FrameDecoder()
        frames: list[tuple[int, Payload]] = []
        while chunk := ours.recv(1 << 20):
            frames += decoder.feed(chunk)
        thread.join()
    return frames


def _list_app(body: bytes) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body[: len(body) // 2], body[len(body) // 2 :]]

    return app


def test_a_list_response_leaves_the_worker_as_one_response_frame() -> None:
    ((kind, payload),) = _worker_frames(_list_app(b"hello world"))
    assert kind == Kind.RESPONSE
    response, head_length, extras = decode_response(payload)
    assert bytes(response[:head_length]) == b"200 OK\r\nContent-Length: 11\r\n\r\n"
    assert bytes(response[head_length:]) == b"hello world"
    assert extras == b""


def test_a_list_response_beyond_the_coalescing_size_streams_as_head_and_body_frames() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB
    frames = _worker_frames(_list_app(body))
    assert [kind for kind, _ in frames] == [Kind.HEAD, Kind.BODY, Kind.BODY, Kind.END]
    assert b"".join(payload for kind, payload in frames if kind == Kind.BODY) == body


def test_a_generator_response_streams_each_chunk_as_it_comes() -> None:
    def app(environ: dict[str, object], start_response: Callable[..., object]) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"one"
        yield b"two"

    frames = _worker_frames(app)
    assert frames == [(Kind.HEAD, b"200 OK\r\n\r\n"), (Kind.BODY, b"one"), (Kind.BODY, b"two"), (Kind.END, b"")]


def test_an_abort_after_a_held_head_sends_the_head_and_body_first() -> None:
    frames = _worker_frames(_list_app(b"partial"), finish=Kind.ABORT)
    assert [kind for kind, _ in frames] == [Kind.HEAD, Kind.BODY, Kind.BODY, Kind.ABORT]


@pytest.mark.parametrize("piece", [1, 4096, 1 << 20])
def test_a_large_frame_is_received_in_place_and_the_frames_after_it_stay_intact(piece: int) -> None:
    body = bytes(range(256)) * 1200  # 300 KiB: received in place, past the worker's 64 KiB threshold
    big = WorkerRequest({"PATH_INFO": "/big"}, body, None, "uwsgi").encode()
    small = WorkerRequest({"PATH_INFO": "/small"}, b"tiny", None, "uwsgi").encode()
    stream = b"".join([*big, encode_cancel(2), *small])
    ours, theirs = socket.socketpair()
    with ours, theirs:

        def loop_side() -> None:
            for start in range(0, len(stream), piece):
                ours.sendall(stream[start : start + piece])
            ours.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=loop_side)
        thread.start()
        channel = Channel(theirs)
        frames = []
        while (frame := channel.read_frame()) is not None:
            frames.append(frame)
        thread.join()
    assert [kind for kind, _ in frames] == [Kind.REQUEST, Kind.CANCEL, Kind.REQUEST]
    assert WorkerRequest.decode(frames[0][1]).body == body
    assert bytes(frames[1][1]) == (2).to_bytes(4, "little")
    assert WorkerRequest.decode(frames[2][1]).environ == {"PATH_INFO": "/small"}


# -- the worker's end: frames read through the FrameDecoder ------------------------------------------------------
class _ScriptedSocket:
    """The worker's socket in memory: each scripted chunk is what one read can get at most (the kernel's cut)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = [chunk for chunk in chunks if chunk]
        self.into_sizes: list[int] = []  # what each recv_into was offered
        self.sent: list[bytes] = []
        #: Whether the loop closed its end: then an empty socket reads as the end of input even without blocking.
        self.closed = False
        self.polls = 0  # reads that must not block

    def more(self, data: bytes) -> None:
        self.chunks.append(data)

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.polls += bool(flags & socket.MSG_DONTWAIT)
        if not self.chunks:
            if flags & socket.MSG_DONTWAIT and not self.closed:
                raise BlockingIOError
            return b""
        chunk = self.chunks[0]
        if len(chunk) > size:
            self.chunks[0] = chunk[size:]
            return chunk[:size]
        del self.chunks[0]
        return chunk

    def recv_into(self, buffer: memoryview) -> int:
        self.into_sizes.append(len(buffer))
        data = self.recv(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)


def _channel(chunks: Iterable[bytes], clock: Callable[[], float] = time.monotonic) -> tuple[Channel, _ScriptedSocket]:
    sock = _ScriptedSocket(chunks)
    return Channel(cast(socket.socket, sock), clock=clock), sock


def _cut(stream: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted(set(cuts))
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]


@settings(deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([Kind.REQUEST, Kind.CANCEL]), st.binary(max_size=300)), max_size=8), st.data()
)
def test_the_worker_reads_the_same_frames_however_the_stream_is_cut(
    frames: list[tuple[Kind, bytes]], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(kind, payload) for kind, payload in frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    channel, _ = _channel(_cut(stream, cuts))
    read = []
    while (frame := channel.read_frame()) is not None:
        read.append((frame[0], bytes(frame[1])))
    assert read == [(int(kind), payload) for kind, payload in frames]
    assert not channel.has_pending_input


def test_frames_read_ahead_wait_in_order_and_count_as_pending_input() -> None:
    first, second = encode_frame(Kind.REQUEST, b"one"), encode_frame(Kind.REQUEST, b"two")
    channel, _ = _channel([first + second[:3], second[3:]])
    pending = [channel.has_pending_input]
    assert channel.read_frame() == (Kind.REQUEST, b"one")
    pending.append(channel.has_pending_input)  # the start of the second frame came in the same read
    assert channel.read_frame() == (Kind.REQUEST, b"two")
    pending.append(channel.has_pending_input)
    assert channel.read_frame() is None
    assert pending == [False, True, False]


def test_a_large_frame_is_completed_by_recv_into_one_buffer_of_its_size() -> None:
    body = bytes(range(256)) * 1024
    frame = encode_frame(Kind.REQUEST, body)
    after = encode_frame(Kind.CANCEL, (1).to_bytes(4, "little"))
    channel, sock = _channel([frame[:1000], frame[1000:50_000], frame[50_000:] + after])
    kind, payload = channel.read_frame() or (0, b"")
    assert kind == Kind.REQUEST and isinstance(payload, memoryview) and payload == body
    assert len(cast(bytearray, payload.obj)) == len(frame)  # received in place: its own buffer, nothing copied out
    # offered exactly what the frame lacked each time, so the CANCEL behind it was left for the next read
    assert sock.into_sizes == [len(frame) - 1000, len(frame) - 50_000]
    assert channel.read_frame() == (Kind.CANCEL, (1).to_bytes(4, "little"))


def test_end_of_input_inside_a_frame_received_in_place_keeps_what_arrived() -> None:
    frame = encode_frame(Kind.REQUEST, b"x" * 200_000)
    channel, _ = _channel([frame[:10], frame[10:150_000]])
    assert channel.read_frame() is None
    assert channel.has_pending_input


def test_decoder_says_what_a_cut_frame_lacks() -> None:
    decoder = FrameDecoder()
    frame = encode_frame(Kind.BODY, b"x" * 100)
    assert decoder.lacking == 0
    assert decoder.feed(frame[:2]) == []
    assert (decoder.pending, decoder.lacking) == (2, FRAME_HEADER.size - 2)  # the length is not known yet
    assert decoder.feed(frame[2:40]) == []
    assert (decoder.pending, decoder.lacking) == (40, len(frame) - 40)
    with pytest.raises(ValueError, match="needs the frame's header"):
        FrameDecoder().complete_in_place(lambda view: 0)
    assert decoder.feed(frame[40:]) == [(Kind.BODY, b"x" * 100)]
    assert (decoder.pending, decoder.lacking) == (0, 0)


def _requests(*numbers: int) -> list[bytes]:
    return [b"".join(WorkerRequest({"N": str(number)}, b"", None, "uwsgi").encode()) for number in numbers]


def _number_of(payload: bytes | memoryview) -> str:
    return WorkerRequest.decode(payload).environ["N"]


def test_a_cancel_read_with_the_request_it_names_skips_that_request() -> None:
    one, two, three = _requests(1, 2, 3)
    channel, sock = _channel([one + two + encode_cancel(2) + three])
    first = channel.next_request()
    assert first is not None and first[0] == 1 and _number_of(first[1]) == "1"
    channel.finish(Kind.END)
    following = channel.next_request()
    assert following is not None and following[0] == 3 and _number_of(following[1]) == "3"
    skipped = [frame for frame in FrameDecoder().feed(b"".join(sock.sent)) if frame[0] == Kind.END]
    assert len(skipped) == 2  # request 1's end, and request 2 ended without running


def test_a_request_that_waited_less_than_the_poll_delay_runs_without_a_socket_read() -> None:
    one, two, three = _requests(1, 2, 3)
    now = [100.0]
    channel, sock = _channel([one + two + encode_cancel(3) + three], clock=lambda: now[0])
    assert channel.next_request() is not None
    channel.finish(Kind.END)
    now[0] += CANCEL_POLL_AFTER / 2  # request 1 took half the delay: 2 waited that long since the read
    sock.more(encode_cancel(2))  # the loop's CANCEL for 2, sent meanwhile, stays unread
    second = channel.next_request()
    assert second is not None and _number_of(second[1]) == "2" and sock.polls == 0
    channel.finish(Kind.END)
    # 3's CANCEL came in the same read as 3: honoured without a read (the next request is the one after it)
    assert channel.next_request() is None and sock.polls == 0


def test_a_request_that_waited_the_poll_delay_is_polled_and_skipped_when_its_client_left() -> None:
    one, two, three = _requests(1, 2, 3)
    now = [100.0]
    channel, sock = _channel([one + two + three], clock=lambda: now[0])
    assert channel.next_request() is not None
    channel.finish(Kind.END)
    now[0] += CANCEL_POLL_AFTER * 1.5  # request 1 ran for longer than the delay
    sock.more(encode_cancel(2))
    following = channel.next_request()
    assert following is not None and _number_of(following[1]) == "3" and sock.polls == 1
    # the poll read the socket: 3 has waited only since then, so it is not polled again
    assert [frame[0] for frame in FrameDecoder().feed(b"".join(sock.sent))].count(Kind.END) == 2


def test_a_poll_that_finds_nothing_still_counts_as_a_read_of_the_socket() -> None:
    now = [100.0]
    channel, sock = _channel([b"".join(_requests(1, 2, 3))], clock=lambda: now[0])
    assert channel.next_request() is not None
    channel.finish(Kind.END)
    now[0] += CANCEL_POLL_AFTER * 1.5
    assert channel.next_request() is not None and sock.polls == 1  # 2 waited: polled, nothing there
    channel.finish(Kind.END)
    now[0] += CANCEL_POLL_AFTER / 2  # 3 waited long since its read, but not since that poll
    third = channel.next_request()
    assert third is not None and _number_of(third[1]) == "3" and sock.polls == 1


def test_a_cancel_for_the_running_request_is_polled_without_blocking_and_later_requests_keep_their_order() -> None:
    one, two, three = _requests(1, 2, 3)
    channel, sock = _channel([one])
    request = channel.next_request()
    assert request is not None and request[0] == 1
    assert not channel.cancelled()  # nothing to read: the poll does not block
    sock.more(two + encode_cancel(1) + three[:5])
    assert channel.cancelled()
    sock.more(three[5:])
    channel.finish(Kind.END)
    numbers = []
    while (request := channel.next_request()) is not None:
        numbers.append(_number_of(request[1]))
        channel.finish(Kind.END)
    assert numbers == ["2", "3"]


def test_the_loop_closing_while_a_request_runs_counts_as_its_cancel() -> None:
    channel, sock = _channel(_requests(1))
    assert channel.next_request() is not None
    assert not channel.cancelled()
    sock.closed = True
    assert channel.cancelled()  # the poll read the end of input
