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
from gateway.loop.http_front import HTTPConnection
from gateway.loop.uwsgi_front import UwsgiConnection
from gateway.protocols.fastcgi import encode_abort, encode_begin, encode_params, encode_request, encode_stdin
from gateway.protocols.uwsgi import encode_request as encode_uwsgi_request
from tests.fakes import Harness, params
from tests.test_front_http import HTTPTransport

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
    (dispatched,) = harness.dispatcher.submitted
    # Complete: no longer the connection's; its body, in memory, counts loop-wide until a worker takes it.
    assert connection.held == 0 and harness.context.budget.total == len(body)
    dispatched.release()
    assert harness.context.budget.total == 0


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
    request.release()
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


# -- the HTTP front, and complete requests waiting for a worker ------------------------------------------------------
def _http(harness: Harness) -> tuple[HTTPConnection, HTTPTransport]:
    transport = HTTPTransport(harness.loop, peername=("10.0.0.7", 41000))
    connection, _ = harness.connect(HTTPConnection, transport)
    return connection, transport


def _reading(transport: HTTPTransport) -> bool:
    return transport.reading


def _http_head(size: int) -> bytes:
    """An HTTP request head of about ``size`` bytes that never ends (no blank line)."""
    return b"GET /hello HTTP/1.1\r\nHost: example.org\r\nX-Pad: " + b"p" * (size - 50) + b"\r\nX-More: "


async def test_http_heads_arriving_and_bodies_not_dispatched_count_against_the_budgets(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    budget = harness.context.budget
    connection, _ = _http(harness)
    connection.data_received(_http_head(6000))
    assert 6000 <= connection.held == budget.total
    connection.data_received(b"1\r\n\r\n")
    assert connection.held == budget.total == 0
    (first,) = harness.dispatcher.submitted
    # A second request pipelined behind the first (being answered): its body is the connection's until its turn.
    connection.data_received(b"POST /up HTTP/1.1\r\nHost: example.org\r\nContent-Length: 6000\r\n\r\n" + b"u" * 4000)
    assert connection.held == budget.total == 4000
    connection.data_received(b"u" * 2000)
    assert connection.held == budget.total == 6000
    first.sink.send_response(b"200 OK\r\nContent-Length: 0\r\n\r\n")
    first.sink.finish()  # the second is dispatched: a request waiting for a worker, counted by the budget alone
    second = harness.dispatcher.submitted[1]
    assert connection.held == 0 and budget.total == 6000 and second in budget.waiting
    second.release()
    assert budget.total == 0 and not budget.waiting


async def test_an_http_connection_paused_by_the_budget_and_for_its_turn_reads_only_when_both_are_over(
    tmp_path: Path,
) -> None:
    harness = _harness(tmp_path)
    budget = harness.context.budget
    connection, transport = _http(harness)
    connection.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not _reading(transport)  # the second waits for its turn
    assert connection.pause_input()  # the budget's reason too
    connection.resume_input()
    assert not _reading(transport), "the budget's resume must not read past a request waiting its turn"
    assert connection.pause_input()
    first = harness.dispatcher.submitted[0]
    first.sink.send_response(b"200 OK\r\nContent-Length: 0\r\n\r\n")
    first.sink.finish()
    assert not _reading(transport), "its turn came, but the budget still says no"
    connection.resume_input()
    assert _reading(transport)
    assert budget.total == 0


async def test_over_the_loop_budget_http_heads_are_paused_and_http_uploads_spooled(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    budget = harness.context.budget
    upload, upload_transport = _http(harness)
    upload.data_received(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 8000\r\n\r\n" + b"u" * 7000)
    heads = [_http(harness) for _ in range(7)]
    for connection, _ in heads:  # 7 x 6000 bytes of heads: over the 40 KiB budget even with the upload spooled
        connection.data_received(_http_head(6000))
    assert budget.total <= budget.limit + 6000
    assert upload.held == 0 and upload.exchanges[0].body is not None and upload.exchanges[0].body.path is not None
    assert _reading(upload_transport)
    assert not _reading(heads[-1][1])
    upload.data_received(b"u" * 1000)
    (request,) = harness.dispatcher.submitted  # the upload, whole, from its file
    for _, transport in heads:
        transport.abort()
    harness.loop.run_ready()
    assert budget.total == 0
    request.release()
    assert not list(tmp_path.iterdir())


async def test_complete_requests_waiting_for_a_worker_are_counted_and_spooled_under_pressure(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    budget = harness.context.budget
    uploads = []
    for _ in range(3):  # 3 complete requests of 8000 bytes in memory, not yet taken by a worker
        connection, _ = harness.connect(FastCGIConnection)
        body = b"b" * 8000
        connection.data_received(encode_request(1, params("/up", "POST", CONTENT_LENGTH="8000"), body, keep_conn=True))
        uploads.append(harness.dispatcher.submitted[-1])
        assert connection.held == 0
    assert budget.total == 24000 and all(request.body.path is None for request in uploads)
    for _ in range(2):  # 2 x 12 KiB of params that never end: over the 40 KiB budget
        connection, _ = harness.connect(FastCGIConnection)
        connection.data_received(_open_params(1, 6000) + _open_params(2, 6000))
    assert all(request.body.path is not None for request in uploads), "waiting bodies go to their files first"
    assert not budget.waiting and budget.total <= 2 * 12100  # what the params hold, no more
    connection, _ = harness.connect(FastCGIConnection)
    connection.data_received(_open_params(1, 6000) + _open_params(2, 6000))  # 36 KiB held: under the budget
    # Still over: a complete request arriving now has its body written to its file at once.
    late, _ = harness.connect(UwsgiConnection)
    late.data_received(encode_uwsgi_request(params("/up", "POST", CONTENT_LENGTH="8000"), b"l" * 8000))
    arrived = harness.dispatcher.submitted[-1]
    assert arrived.body.path is not None and arrived not in budget.waiting
    for request in [*uploads, arrived]:
        request.release()
    assert not list(tmp_path.iterdir())
