"""The memory budgets (gateway/loop/budget.py), decided in-process on fake transports: per connection and loop-wide.

The end-to-end attack through a real gateway is in tests/test_hostile_memory.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from gateway.config.errors import ConfigError
from gateway.config.settings import Config
from gateway.loop.budget import MAX_READ, PAUSE_ABOVE, PRESSED_READ, TRIM_AFTER, MemoryBudget
from gateway.loop.fastcgi_front import FastCGIConnection
from gateway.loop.front import FrontConnection
from gateway.loop.uwsgi_front import UwsgiConnection
from gateway.protocols.fastcgi import encode_abort, encode_begin, encode_params, encode_request, encode_stdin
from gateway.protocols.uwsgi import encode_request as encode_uwsgi_request
from tests.fakes import Harness, params

#: Small budgets, so that a few records cross them: one connection may hold 16 KiB, all of them 40 KiB.
SMALL: dict[str, Any] = {
    "max_params_size": 8192,
    "body_spool_threshold": 8192,
    "max_connection_buffer": 16384,
    "max_buffered": 40960,
}


def _harness(tmp_path: Path, **settings: Any) -> Harness:
    return Harness(Config(workers=1, **{**SMALL, **settings}), str(tmp_path))


def _open_params(request_id: int, size: int) -> bytes:
    """BEGIN_REQUEST and ``size`` bytes of a params stream that never ends."""
    return encode_begin(request_id) + encode_params(request_id, {"HTTP_X_PAD": "p" * (size - 14)})[:-8]


def _read(connection: FrontConnection, data: bytes) -> None:
    """A read as uvloop makes it: into the buffer the connection's ``get_buffer`` gave, then ``buffer_updated``."""
    buffer = connection.get_buffer(-1)
    assert len(data) <= len(buffer)
    buffer[: len(data)] = data
    connection.buffer_updated(len(data))


async def test_a_connection_over_its_budget_is_closed_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    bystander, bystander_transport = harness.connect(FastCGIConnection)
    for request_id in (1, 2, 3):  # 3 x 6000 bytes of params that never end: over 16 KiB at the third
        connection.data_received(_open_params(request_id, 6000))
        assert transport.aborted is (request_id == 3)
    lines = [record.getMessage() for record in caplog.records if "--max-connection-buffer" in record.getMessage()]
    assert len(lines) == 1
    assert "fastcgi 10.0.0.5:40000: incomplete requests hold" in lines[0]
    assert harness.context.budget.total == 0  # released at once, before the transport reports the loss
    bystander.data_received(encode_request(1, params("/hello")))
    assert len(harness.dispatcher.submitted) == 1
    assert not bystander_transport.aborted


async def test_a_well_behaved_request_never_comes_near_the_budget(tmp_path: Path) -> None:
    """The largest params plus an in-memory body of the spool threshold, as nginx sends them: served."""
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    body = b"b" * 8192
    request = encode_request(1, params("/upload", "POST", CONTENT_LENGTH=str(len(body)), HTTP_X_PAD="p" * 7800), body)
    for offset in range(0, len(request), 1000):  # trickled: every piece held until the request is whole
        connection.data_received(request[offset : offset + 1000])
    assert not transport.aborted
    assert len(harness.dispatcher.submitted) == 1
    assert connection.held == 0 and harness.context.budget.total == 0


async def test_abort_and_end_give_back_what_a_request_held(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, _ = harness.connect(FastCGIConnection)
    connection.data_received(_open_params(1, 6000))
    head = encode_begin(2) + encode_params(2, params("/up", "POST", CONTENT_LENGTH="9000"))
    connection.data_received(head + encode_stdin(2, b"x" * 5000, end=False))
    assert connection.held == harness.context.budget.total >= 11000
    connection.data_received(encode_abort(1) + encode_abort(2))
    assert connection.held == harness.context.budget.total == 0


async def test_over_the_loop_budget_bodies_are_spooled_and_the_biggest_holders_paused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "gateway.front")
    harness = _harness(tmp_path)
    budget = harness.context.budget
    hostile = [harness.connect(FastCGIConnection) for _ in range(4)]
    upload, upload_transport = harness.connect(UwsgiConnection)
    upload_params = params("/up", "POST", CONTENT_LENGTH="20000")
    upload.data_received(encode_uwsgi_request(upload_params, b"u" * 7000))
    assert upload.held == 7000
    for connection, _ in hostile:  # 4 x 12 KiB of params: 55 KiB with the upload, over the 40 KiB budget
        connection.data_received(_open_params(1, 6000) + _open_params(2, 6000))
    assert upload.held == 0 and upload.body is not None and upload.body.path is not None  # spooled, not paused
    assert not upload_transport.reading_paused
    paused = [transport for _, transport in hostile if transport.reading_paused]
    assert paused, "the connections holding the most stop being read"
    assert budget.total <= budget.limit + 12000  # at most the read that went over
    assert sum("over --max-buffered" in record.getMessage() for record in caplog.records) == 1
    # A small request on a fresh connection is still read and dispatched.
    fresh, _ = harness.connect(FastCGIConnection)
    fresh.data_received(encode_request(1, params("/hello")))
    assert len(harness.dispatcher.submitted) == 1
    # The hostile connections go (a timeout, or their peer): reading resumes on whoever was paused and remains.
    for _, transport in hostile[:-1]:
        transport.abort()
    harness.loop.run_ready()
    assert budget.total < budget.limit * 3 // 4
    assert all(not transport.reading_paused for _, transport in hostile)
    assert any("under --max-buffered again" in record.getMessage() for record in caplog.records)
    upload_transport.abort()  # its spooled body's file is removed with it
    harness.loop.run_ready()
    assert not list(tmp_path.iterdir())


async def test_the_heap_is_trimmed_once_after_a_burst(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, _ = harness.connect(FastCGIConnection)
    budget = MemoryBudget(1 << 30, 1 << 30)
    budget.sweep()
    assert budget.trims == 0  # nothing held, no burst
    budget.change(connection, 0, TRIM_AFTER)
    budget.sweep()
    assert budget.trims == 0  # still held
    budget.change(connection, TRIM_AFTER, 0)
    budget.sweep()
    budget.sweep()
    assert budget.trims == 1


def test_the_connection_budget_must_fit_one_largest_request() -> None:
    with pytest.raises(ConfigError, match="--max-connection-buffer 1000 must be at least --max-params-size"):
        Config(workers=1, max_connection_buffer=1000)


async def test_reads_share_one_buffer_that_shrinks_while_the_budget_is_more_than_half_used(tmp_path: Path) -> None:
    """A read is in memory before it is accounted: past half the budget each read is small, so a thousand
    connections add a thousand small reads past it, not a thousand reads of uvloop's 256 KiB."""
    harness = _harness(tmp_path)
    budget = harness.context.budget
    upload, _ = harness.connect(FastCGIConnection)
    assert len(upload.get_buffer(-1)) == MAX_READ
    body = b"b" * 3000
    _read(upload, encode_request(1, params("/upload", "POST", CONTENT_LENGTH=str(len(body))), body))
    (request,) = harness.dispatcher.submitted
    upload.get_buffer(-1)[:] = b"\0" * MAX_READ  # the next read, on any connection, lands in the same buffer
    assert b"".join(bytes(chunk) for chunk in request.body.finish()) == body  # the request has its own copy
    hostile = [harness.connect(FastCGIConnection) for _ in range(2)]
    for connection, _ in hostile:  # 2 x 12 KiB: over half of the 40 KiB budget, not over the budget
        _read(connection, _open_params(1, 6000) + _open_params(2, 6000))
    assert budget.limit // 2 < budget.total <= budget.limit
    assert len(upload.get_buffer(-1)) == PRESSED_READ
    for _, transport in hostile:
        transport.abort()
    harness.loop.run_ready()
    assert budget.total == 0
    assert len(upload.get_buffer(-1)) == MAX_READ


async def test_over_the_budget_a_newcomer_holding_more_than_a_little_is_paused(tmp_path: Path) -> None:
    """Not a share of the budget: what connections hold only goes down when their requests complete, so shares
    computed among fewer holders would add up to far more than the budget."""
    harness = _harness(tmp_path)
    budget = harness.context.budget
    for _ in range(4):  # 4 x 12 KiB: over the 40 KiB budget
        connection, _ = harness.connect(FastCGIConnection)
        _read(connection, _open_params(1, 6000) + _open_params(2, 6000))
    assert budget.total > budget.limit
    newcomer, newcomer_transport = harness.connect(FastCGIConnection)
    _read(newcomer, _open_params(1, PAUSE_ABOVE + 1000))  # under a sixth of the budget: a fair share would read on
    assert newcomer_transport.reading_paused
    small, small_transport = harness.connect(FastCGIConnection)
    _read(small, _open_params(1, PAUSE_ABOVE // 2))  # a head cut by a read: read on
    assert not small_transport.reading_paused
    whole, _ = harness.connect(FastCGIConnection)
    _read(whole, encode_request(1, params("/hello")))
    assert len(harness.dispatcher.submitted) == 1
