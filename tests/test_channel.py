"""The loop-worker framing (gateway.channel), fed whole, byte by byte, in random cuts and with trailing data."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.channel import MAX_FRAME, ChannelError, FrameDecoder, Kind, WorkerRequest, encode_cancel, encode_frame

FRAMES = [(Kind.HEAD, b"200 OK\r\n\r\n"), (Kind.BODY, b"x" * 70000), (Kind.BODY, b""), (Kind.END, b"")]
STREAM = b"".join(encode_frame(kind, payload) for kind, payload in FRAMES)


def _feed_in(pieces: list[bytes]) -> tuple[list[tuple[int, bytes]], FrameDecoder]:
    decoder = FrameDecoder()
    frames: list[tuple[int, bytes]] = []
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


@given(st.lists(st.tuples(st.sampled_from(list(Kind)), st.binary(max_size=300)), max_size=8), st.data())
def test_any_cut_gives_the_same_frames(frames: list[tuple[Kind, bytes]], data: st.DataObject) -> None:
    stream = b"".join(encode_frame(kind, payload) for kind, payload in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    decoded, decoder = _feed_in(pieces)
    assert decoded == [(int(kind), payload) for kind, payload in frames]
    assert decoder.pending == 0


def test_a_frame_beyond_the_maximum_is_a_channel_error() -> None:
    header = (MAX_FRAME + 1).to_bytes(4, "little") + bytes([Kind.BODY])
    with pytest.raises(ChannelError, match="exceeds the channel maximum"):
        FrameDecoder().feed(header)


def test_request_round_trip_and_cancel_numbering() -> None:
    session = ("id", {"n": 1})
    prefix, body = WorkerRequest({"PATH_INFO": "/é"}, bytearray(b"body"), None, "fastcgi", session).encode()
    ((kind, payload),) = FrameDecoder().feed(prefix + body)
    assert kind == Kind.REQUEST
    assert WorkerRequest.decode(payload) == WorkerRequest({"PATH_INFO": "/é"}, b"body", None, "fastcgi", session)
    assert FrameDecoder().feed(encode_cancel(7)) == [(Kind.CANCEL, (7).to_bytes(4, "little"))]
