"""RequestBody: the body in order, large chunks kept as they came, small ones packed, and a file past the threshold."""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

from hypothesis import given
from hypothesis import strategies as st

from gateway.loop.spool import RequestBody


def test_large_chunks_are_kept_as_they_arrived() -> None:
    body = RequestBody(1 << 30, None)
    chunks = [os.urandom(40_000) for _ in range(4)]
    for chunk in chunks:
        body.write(chunk)
    held = body.finish()
    assert all(mine is theirs for mine, theirs in zip(held, chunks, strict=True))  # no copy was made


def test_a_body_trickled_a_byte_at_a_time_is_packed_not_an_object_per_byte() -> None:
    body = RequestBody(1 << 30, None)
    for index in range(200_000):
        body.write(bytes([index % 251]))
    held = body.finish()
    assert len(held) <= 4  # 200 KB packed into buffers of 64 KiB
    assert b"".join(held) == bytes(index % 251 for index in range(200_000))


@given(st.lists(st.binary(max_size=20_000) | st.integers(16_384, 70_000).map(os.urandom), max_size=30))
def test_any_mix_of_chunks_keeps_the_body_in_order(chunks: list[bytes]) -> None:
    body = RequestBody(1 << 30, None)
    for chunk in chunks:
        body.write(chunk)
    assert b"".join(body.finish()) == b"".join(chunks)
    assert body.size == sum(map(len, chunks))


def test_past_the_threshold_the_body_moves_to_a_file_and_is_removed_on_discard(tmp_path: Path) -> None:
    body = RequestBody(100_000, str(tmp_path))
    chunks = [b"a" * 10, os.urandom(60_000), b"b" * 5, os.urandom(60_000), b"tail"]
    for chunk in chunks:
        body.write(chunk)
    assert body.finish() == []
    assert body.path is not None
    assert Path(body.path).read_bytes() == b"".join(chunks)
    body.discard()
    assert list(tmp_path.iterdir()) == []


def test_views_of_reads_that_are_mostly_this_body_are_kept_without_a_copy() -> None:
    body = RequestBody(1 << 30, None)
    reads = [os.urandom(256_000) for _ in range(4)]
    views = [memoryview(read)[start : start + 32_768] for read in reads for start in range(8, 220_000, 32_776)]
    for view in views:
        body.write(view)
    held = body.finish()
    assert all(mine is theirs for mine, theirs in zip(held, views, strict=True))


def test_views_pinning_far_more_than_the_body_are_copied() -> None:
    # A read of 256 KB that carries 16 KiB of this body and other records: each view alone would pin 16 times
    # its size, so past the allowance the chunks are copied and the reads can be freed.
    body = RequestBody(1 << 30, None)
    reads = [os.urandom(256_000) for _ in range(20)]
    for read in reads:
        body.write(memoryview(read)[100:16_484])
    held = body.finish()
    kept_views = [chunk for chunk in held if isinstance(chunk, memoryview)]
    assert 1 <= len(kept_views) <= len(reads) // 4
    pinned = sum(len(cast(bytes, chunk.obj)) for chunk in kept_views)
    assert pinned <= 2 * body.size + (1 << 18)
    assert b"".join(held) == b"".join(read[100:16_484] for read in reads)
