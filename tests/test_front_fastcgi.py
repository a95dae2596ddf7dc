"""FastCGIConnection driven in-process: every decision it makes, on a fake transport, clock and dispatcher.

Each test feeds records as nginx sends them, answers the dispatched request through its sink as the pool would,
ends the loop's turn by hand and reads what reached the wire. The tests are ``async`` only because a
FrontContext is built under a running loop; nothing in them awaits.
"""

from __future__ import annotations

import gc
import logging
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from gateway.config.settings import Config
from gateway.loop.fastcgi_front import FastCGIConnection
from gateway.loop.request import Request
from gateway.loop.spool import EMPTY_BODY
from gateway.protocols.fastcgi import (
    ProtocolStatus,
    RecordType,
    Role,
    encode_abort,
    encode_begin,
    encode_params,
    encode_request,
    encode_stdin,
    record,
)
from tests.fakes import FakeSocket, Harness, body_of, fastcgi_replies, params

HEAD = b"200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
STATUS_HEAD = b"Status: " + HEAD


def _harness(tmp_path: Path, *, tcp: bool = False, allowed: tuple[str, ...] = (), **settings: Any) -> Harness:
    return Harness(Config(workers=1, **settings), str(tmp_path), tcp=tcp, allowed=allowed)


def _only_request(harness: Harness) -> Request:
    assert len(harness.dispatcher.submitted) == 1
    return harness.dispatcher.submitted[0]


def _answer(request: Request, body: bytes = b"hello") -> None:
    """The whole response the pool hands over for a small body, then the end, as the dispatcher calls them."""
    request.sink.send_response(HEAD + body)
    request.sink.finish()


# -- keep-conn, framing, multiplexing -------------------------------------------------------------------------
async def test_keep_conn_response_is_status_stdout_and_end_request_and_the_connection_stays(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(encode_request(1, params("/hello"), keep_conn=True))
    request = _only_request(harness)
    assert request.params["PATH_INFO"] == "/hello"
    assert request.protocol == "fastcgi"
    _answer(request)
    assert transport.writes == [], "a turn's output waits for the end of the turn"
    harness.loop.run_ready()
    assert len(transport.writes) == 1, "the response's records go out in one write"
    stdout, ended = fastcgi_replies(transport.take())
    assert stdout == {1: STATUS_HEAD + b"hello"}
    assert (ended[1].app_status, ended[1].protocol_status) == (0, ProtocolStatus.REQUEST_COMPLETE)
    assert not transport.is_closing()
    # The same connection serves the next request.
    connection.data_received(encode_request(2, params("/again"), keep_conn=True))
    assert harness.dispatcher.submitted[1].params["PATH_INFO"] == "/again"
    assert connection in harness.context.connections


async def test_without_keep_conn_the_response_is_held_then_written_with_end_request_and_the_close(
    tmp_path: Path,
) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(encode_request(1, params(), keep_conn=False))
    request = _only_request(harness)
    request.sink.send_response(HEAD + b"hello")
    harness.loop.run_ready()
    assert transport.writes == [], "held until finish"
    request.sink.finish()
    assert len(transport.writes) == 1, "STDOUT, the empty STDOUT and END_REQUEST in one write, with the close"
    assert transport.is_closing() and not transport.aborted
    stdout, ended = fastcgi_replies(transport.take())
    assert stdout == {1: STATUS_HEAD + b"hello"}
    assert ended[1].app_status == 0
    harness.loop.run_ready()
    assert connection.closed
    assert harness.context.connections == set()
    assert transport.late == []


async def test_on_a_corked_listener_keep_conn_uncorks_once_and_a_one_request_connection_never_sets_it(
    tmp_path: Path,
) -> None:
    """The listener's cork (listeners.serve) suits a connection that closes after its response; a kept-alive one
    is uncorked by its OutputBuffer, once, before its first response."""
    harness = Harness(Config(workers=1), str(tmp_path), tcp=True, corked=True)
    once, kept = FakeSocket(), FakeSocket()
    connection, transport = harness.connect(FastCGIConnection, harness.transport(sock=once))
    connection.data_received(encode_request(1, params(), keep_conn=False))
    request = _only_request(harness)
    request.sink.send_response(HEAD + b"hello")
    request.sink.finish()
    assert len(transport.writes) == 1 and transport.is_closing()
    assert once.calls == [] and connection.output is None
    connection, transport = harness.connect(FastCGIConnection, harness.transport(sock=kept))
    for request_id in (1, 2):
        connection.data_received(encode_request(request_id, params(), keep_conn=True))
        sink = harness.dispatcher.submitted[-1].sink
        sink.send_response(HEAD + b"hello")
        sink.finish()
        harness.loop.run_ready()
    assert kept.calls == [(socket.IPPROTO_TCP, socket.TCP_CORK, 0)], "uncorked once, before the first response"
    stdout, ended = fastcgi_replies(transport.take())
    assert stdout == {1: STATUS_HEAD + b"hello", 2: STATUS_HEAD + b"hello"} and sorted(ended) == [1, 2]
    assert not transport.is_closing()


async def test_a_body_gets_its_own_request_body_and_a_bodiless_request_the_shared_empty_one(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, _ = harness.connect(FastCGIConnection)
    connection.data_received(
        encode_request(1, params(), keep_conn=True)
        + encode_request(2, params("/echo", "POST", CONTENT_LENGTH="3"), b"abc", keep_conn=True)
    )
    bodiless, posted = harness.dispatcher.submitted
    assert bodiless.body is EMPTY_BODY and body_of(bodiless) == b""
    assert posted.body is not EMPTY_BODY and body_of(posted) == b"abc"
    assert EMPTY_BODY.size == 0 and EMPTY_BODY.finish() == []


async def test_streamed_response_frames_head_and_body_as_stdout_records(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(encode_request(1, params(), keep_conn=True))
    sink = _only_request(harness).sink
    big = bytes(range(256)) * 300  # more than one record's 65535 bytes
    sink.send_head(b"200 OK\r\nContent-Length: %d\r\n\r\n" % len(big))
    sink.send_body(big)
    sink.finish()
    harness.loop.run_ready()
    stdout, ended = fastcgi_replies(transport.take())
    assert stdout[1] == b"Status: 200 OK\r\nContent-Length: %d\r\n\r\n" % len(big) + big
    assert ended[1].app_status == 0
    assert not transport.is_closing()


async def test_multiplexed_requests_are_answered_independently_in_the_order_they_finish(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    # Two requests' records interleaved on the one connection, each with a body.
    connection.data_received(
        encode_begin(1, keep_conn=True)
        + encode_begin(2, keep_conn=True)
        + encode_params(2, params("/two", "POST", CONTENT_LENGTH="3"))
        + encode_params(1, params("/one", "POST", CONTENT_LENGTH="3"))
        + encode_stdin(1, b"aaa", end=False)
        + encode_stdin(2, b"bbb")
    )
    assert [r.params["PATH_INFO"] for r in harness.dispatcher.submitted] == ["/two"], "2's body is complete"
    connection.data_received(encode_stdin(1, b"", end=True))
    two, one = harness.dispatcher.submitted
    assert (body_of(one), body_of(two)) == (b"aaa", b"bbb")
    _answer(two, b"two!!")
    harness.loop.run_ready()
    stdout, ended = fastcgi_replies(transport.take())
    assert stdout == {2: STATUS_HEAD + b"two!!"} and list(ended) == [2]
    _answer(one, b"one!!")
    harness.loop.run_ready()
    stdout, ended = fastcgi_replies(transport.take())
    assert stdout == {1: STATUS_HEAD + b"one!!"} and list(ended) == [1]
    assert not transport.is_closing()


async def test_requests_beyond_max_requests_per_connection_are_refused_overloaded(tmp_path: Path) -> None:
    harness = _harness(tmp_path, max_requests_per_connection=1)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(encode_request(1, params(), keep_conn=True) + encode_request(2, params()))
    assert [r.params["PATH_INFO"] for r in harness.dispatcher.submitted] == ["/hello"]
    harness.loop.run_ready()
    stdout, ended = fastcgi_replies(transport.take())
    assert list(ended) == [2] and 2 not in stdout
    assert ended[2].protocol_status == ProtocolStatus.OVERLOADED
    _answer(_only_request(harness))
    harness.loop.run_ready()
    assert fastcgi_replies(transport.take())[1][1].protocol_status == ProtocolStatus.REQUEST_COMPLETE


async def test_a_refused_request_without_keep_conn_closes_the_connection(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(encode_request(1, params(), keep_conn=False, role=Role.AUTHORIZER))
    assert harness.dispatcher.submitted == []
    harness.loop.run_ready()
    _, ended = fastcgi_replies(transport.take())
    assert ended[1].protocol_status == ProtocolStatus.UNKNOWN_ROLE
    assert transport.is_closing() and not transport.aborted


# -- abort --------------------------------------------------------------------------------------------------
async def test_abort_of_the_only_request_resets_the_connection_after_what_was_sent(tmp_path: Path) -> None:
    sock = FakeSocket()
    harness = _harness(tmp_path, tcp=True)
    connection, transport = harness.connect(FastCGIConnection, harness.transport(sock=sock))
    connection.data_received(encode_request(1, params(), keep_conn=True))
    sink = _only_request(harness).sink
    sink.send_head(b"200 OK\r\n\r\n")
    sink.send_body(b"partial ")
    sink.abort()
    assert transport.aborted
    assert sock.options[(socket.SOL_SOCKET, socket.SO_LINGER)] == struct.pack("ii", 1, 0), "an RST, not a FIN"
    stdout, ended = fastcgi_replies(b"".join(transport.writes))
    assert stdout[1] == b"Status: 200 OK\r\n\r\npartial ", "what the app produced went out before the reset"
    assert ended == {}, "no END_REQUEST: nothing may read as a complete response"
    assert sink.client_gone


async def test_abort_of_a_held_whole_response_sends_nothing_of_it(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(encode_request(1, params(), keep_conn=False))
    sink = _only_request(harness).sink
    sink.send_response(HEAD + b"hello")
    sink.abort()  # a session that could not be stored, say
    harness.loop.run_ready()
    assert transport.aborted
    assert transport.writes == []


async def test_abort_of_one_multiplexed_request_ends_it_with_app_status_1_and_spares_the_other(
    tmp_path: Path,
) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(encode_request(1, params("/one"), keep_conn=True) + encode_request(2, params("/two")))
    one, two = harness.dispatcher.submitted
    two.sink.send_head(b"200 OK\r\n\r\n")
    two.sink.abort()
    harness.loop.run_ready()
    stdout, ended = fastcgi_replies(transport.take())
    assert ended[2].app_status == 1 and ended[2].protocol_status == ProtocolStatus.REQUEST_COMPLETE
    assert not transport.is_closing()
    _answer(one)
    harness.loop.run_ready()
    stdout, ended = fastcgi_replies(transport.take())
    assert stdout == {1: STATUS_HEAD + b"hello"} and ended[1].app_status == 0


# -- the client goes away -----------------------------------------------------------------------------------
async def test_abort_request_record_cancels_the_dispatched_request_and_ends_it(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(encode_request(1, params(), keep_conn=True))
    request = _only_request(harness)
    connection.data_received(encode_abort(1))
    assert harness.dispatcher.cancelled == [request]
    assert request.sink.client_gone
    harness.loop.run_ready()
    stdout, ended = fastcgi_replies(transport.take())
    assert list(ended) == [1] and stdout == {1: b""}, "no response, only the end of its stream"
    assert not transport.is_closing(), "the connection stays for the next request"


async def test_abort_request_before_the_body_is_complete_never_dispatches(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(
        encode_begin(1)
        + encode_params(1, params(method="POST", CONTENT_LENGTH="10"))
        + encode_stdin(1, b"12", end=False)
    )
    connection.data_received(encode_abort(1))
    assert harness.dispatcher.submitted == [] and harness.dispatcher.cancelled == []
    harness.loop.run_ready()
    assert list(fastcgi_replies(transport.take())[1]) == [1]
    assert connection.exchanges == {}


async def test_connection_lost_cancels_every_request_in_flight(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, _ = harness.connect(FastCGIConnection)
    connection.data_received(
        encode_request(1, params(), keep_conn=True)
        + encode_begin(2)
        + encode_params(2, params(method="POST", CONTENT_LENGTH="10"))
    )
    dispatched = _only_request(harness)
    undispatched = connection.exchanges[2]
    connection.connection_lost(ConnectionResetError())
    assert harness.dispatcher.cancelled == [dispatched]
    assert dispatched.sink.client_gone and undispatched.client_gone
    assert harness.context.connections == set()
    assert harness.count_changes == 2, "once opened, once closed: --max-connections sees both"


# -- flow control -------------------------------------------------------------------------------------------
async def test_a_paused_transport_gets_nothing_more_until_it_resumes_and_then_everything_in_order(
    tmp_path: Path,
) -> None:
    harness = _harness(tmp_path, response_spool_threshold=1000)
    connection, transport = harness.connect(FastCGIConnection, harness.transport(high_water=4096))
    connection.data_received(encode_request(1, params(), keep_conn=True))
    sink = _only_request(harness).sink
    sink.send_head(b"200 OK\r\n\r\n")
    sink.send_body(b"a" * 5000)
    harness.loop.run_ready()
    assert transport.is_paused() and connection.output is not None
    handed = len(transport.writes)
    sink.send_body(b"b" * 600)  # held in memory
    sink.send_body(b"c" * 3000)  # past the memory limit: spooled to a file
    sink.finish()
    harness.loop.run_ready()
    assert len(transport.writes) == handed, "nothing is written to a transport that asked to pause"
    assert connection.output.pending > 3600
    received = transport.take()  # the peer reads: the transport resumes and the held output drains
    received += transport.take()
    assert not transport.is_paused() and connection.output.pending == 0
    stdout, ended = fastcgi_replies(received)
    assert stdout[1] == b"Status: 200 OK\r\n\r\n" + b"a" * 5000 + b"b" * 600 + b"c" * 3000
    assert ended[1].app_status == 0


# -- bad input ----------------------------------------------------------------------------------------------
BAD_INPUT = [
    pytest.param(struct.pack(">BBHHBx", 9, 1, 1, 8, 0) + bytes(8), "record version 9", id="wrong-version"),
    pytest.param(encode_stdin(1, b"x"), None, id="stdin-without-begin-is-ignored"),
    pytest.param(encode_begin(1) + encode_begin(1), "already active", id="begin-twice"),
    pytest.param(record(RecordType.STDOUT, 1, b"x"), "only flows the other way", id="stdout-to-the-app"),
]


@pytest.mark.parametrize(("data", "reason"), BAD_INPUT)
async def test_bad_input_logs_one_line_and_aborts_only_that_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, data: bytes, reason: str | None
) -> None:
    harness = _harness(tmp_path)
    bystander, bystander_transport = harness.connect(FastCGIConnection)
    bystander.data_received(encode_begin(1) + encode_params(1, params()))  # mid-request when the other goes bad
    connection, transport = harness.connect(FastCGIConnection, harness.transport(peername=("10.0.0.9", 5)))
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        connection.data_received(data)
    if reason is None:  # input for no request is moot, not an error
        assert not transport.is_closing() and caplog.records == []
        return
    assert [r.getMessage() for r in caplog.records if reason in r.getMessage()] == caplog.messages
    assert len(caplog.records) == 1
    assert caplog.messages[0].startswith("fastcgi 10.0.0.9:5: ")
    assert transport.aborted
    assert not bystander_transport.is_closing()
    bystander.data_received(encode_stdin(1, b""))
    _answer(_only_request(harness))
    harness.loop.run_ready()
    assert fastcgi_replies(bystander_transport.take())[0] == {1: STATUS_HEAD + b"hello"}


async def test_end_of_input_inside_a_record_is_bad_input(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(encode_begin(1)[:5])
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        connection.eof_received()
    assert len(caplog.records) == 1 and "closed inside a record" in caplog.messages[0]
    assert transport.aborted


# -- --max-body-size ----------------------------------------------------------------------------------------
async def test_a_body_over_max_body_size_is_answered_413_without_the_app(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness = _harness(tmp_path, max_body_size=10)
    connection, transport = harness.connect(FastCGIConnection)
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        connection.data_received(
            encode_begin(1) + encode_params(1, params(method="POST", CONTENT_LENGTH="11")) + encode_stdin(1, b"x" * 11)
        )
    assert harness.dispatcher.submitted == []
    assert "(--max-body-size); answered 413" in caplog.text
    harness.loop.run_ready()
    stdout, ended = fastcgi_replies(transport.take())
    assert stdout[1].startswith(b"Status: 413 Content Too Large\r\n")
    assert ended[1].app_status == 0
    assert not transport.is_closing()
    # A body that says nothing of its length is cut at the limit all the same.
    connection.data_received(
        encode_begin(2) + encode_params(2, params(method="POST")) + encode_stdin(2, b"y" * 11, end=False)
    )
    harness.loop.run_ready()
    assert fastcgi_replies(transport.take())[0][2].startswith(b"Status: 413 ")
    # At the limit is fine.
    connection.data_received(encode_request(3, params(method="POST", CONTENT_LENGTH="10"), b"z" * 10))
    assert body_of(_only_request(harness)) == b"z" * 10


# -- the allow-list -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("peername", "admitted"),
    [
        (("10.1.2.3", 4000), True),
        (("::ffff:10.1.2.3", 4000, 0, 0), True),
        (("192.168.1.9", 4000), False),
        (("fe80::1%eth0", 4000, 0, 2), False),
        ("", True),  # a unix-socket peer: the socket's permissions decide
    ],
)
async def test_allow_list(tmp_path: Path, caplog: pytest.LogCaptureFixture, peername: object, admitted: bool) -> None:
    harness = _harness(tmp_path, allowed=("10.0.0.0/8",))
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        connection, transport = harness.connect(FastCGIConnection, harness.transport(peername=peername))
    assert (connection in harness.context.connections) is admitted
    assert transport.aborted is not admitted
    assert ("not in the allow-list" in caplog.text) is not admitted
    assert harness.count_changes == int(admitted)


# -- time limits (FrontContext.sweep runs check_timeouts once a second) ---------------------------------------
async def test_header_timeout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = _harness(tmp_path, header_timeout=10)
    _, silent_transport = harness.connect(FastCGIConnection)
    harness.loop.advance(5)
    partial, partial_transport = harness.connect(FastCGIConnection)
    partial.data_received(encode_begin(1) + encode_params(1, params())[:20])
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        harness.context.sweep(harness.loop.advance(5))
        assert not silent_transport.is_closing(), "exactly at the limit is within it"
        harness.context.sweep(harness.loop.advance(0.5))
        assert silent_transport.aborted and not partial_transport.is_closing()
        harness.loop.run_ready()  # the loss reaches the connection before the next sweep
        harness.context.sweep(harness.loop.advance(5))
        assert partial_transport.aborted
    assert len([m for m in caplog.messages if m.endswith("(--header-timeout); connection closed")]) == 2


async def test_body_timeout_counts_from_the_last_byte(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = _harness(tmp_path, body_timeout=4, read_timeout=100)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(encode_begin(1) + encode_params(1, params(method="POST", CONTENT_LENGTH="10")))
    for _ in range(3):
        harness.loop.advance(3)
        connection.data_received(encode_stdin(1, b"x", end=False))
        connection.check_timeouts(harness.loop.time())
    connection.check_timeouts(harness.loop.advance(4))
    assert not transport.is_closing()
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        connection.check_timeouts(harness.loop.advance(0.1))
    assert transport.aborted
    assert "no body data for 4.1 s (--body-timeout)" in caplog.text
    assert harness.dispatcher.submitted == []


async def test_read_timeout_bounds_a_trickled_request(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = _harness(tmp_path, body_timeout=4, read_timeout=12)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(encode_begin(1) + encode_params(1, params(method="POST", CONTENT_LENGTH="100")))
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        for _ in range(4):  # a byte every 3 s never breaks --body-timeout
            harness.loop.advance(3)
            connection.data_received(encode_stdin(1, b"x", end=False))
            connection.check_timeouts(harness.loop.time())
        assert not transport.is_closing()
        connection.check_timeouts(harness.loop.advance(1))
    assert transport.aborted
    assert "(--read-timeout)" in caplog.text


async def test_keepalive_timeout_closes_an_idle_connection_but_never_a_busy_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness = _harness(tmp_path, keepalive_timeout=30, header_timeout=10)
    connection, transport = harness.connect(FastCGIConnection)
    connection.data_received(encode_request(1, params(), keep_conn=True))
    request = _only_request(harness)
    connection.check_timeouts(harness.loop.advance(100))
    assert not transport.is_closing(), "a request being served is not idle, however long the app takes"
    _answer(request)
    harness.loop.run_ready()
    transport.take()
    connection.check_timeouts(harness.loop.advance(30))
    assert not transport.is_closing()
    with caplog.at_level(logging.INFO, logger="gateway.front"):
        connection.check_timeouts(harness.loop.advance(0.5))
    assert transport.is_closing() and not transport.aborted, "an idle close is a plain close"
    assert "(--keepalive-timeout); closed" in caplog.text


async def test_keepalive_timeout_waits_for_a_slow_reader(tmp_path: Path) -> None:
    harness = _harness(tmp_path, keepalive_timeout=30)
    connection, transport = harness.connect(FastCGIConnection, harness.transport(high_water=100))
    connection.data_received(encode_request(1, params(), keep_conn=True))
    sink = _only_request(harness).sink
    sink.send_head(b"200 OK\r\n\r\n")
    sink.send_body(b"x" * 200)
    harness.loop.run_ready()
    sink.send_body(b"y" * 200)
    sink.finish()
    harness.loop.run_ready()
    assert connection.output is not None and connection.output.pending
    connection.check_timeouts(harness.loop.advance(60))
    assert not transport.is_closing(), "the response is still being written"
    transport.take()
    transport.take()
    connection.check_timeouts(harness.loop.advance(0))
    assert transport.is_closing()


# -- memory ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep_conn", [True, False])
async def test_an_answered_request_is_freed_by_its_reference_count_not_by_the_collector(
    tmp_path: Path, keep_conn: bool
) -> None:
    """A request's sink is its exchange, and the exchange held the request: a cycle per request, which only the
    garbage collector freed (benchmarks/RESULTS.md, History). Answered, nothing of it is left for the collector."""
    harness = _harness(tmp_path)
    connection, transport = harness.connect(FastCGIConnection)
    gc.collect()
    gc.disable()
    try:
        connection.data_received(encode_request(1, params("/hello"), keep_conn=keep_conn))
        request = harness.dispatcher.submitted.pop()
        _answer(request)
        harness.loop.run_ready()
        del request
        assert gc.collect() == 0, "an answered request is still in a reference cycle"
    finally:
        gc.enable()
    assert fastcgi_replies(transport.take())[0] == {1: STATUS_HEAD + b"hello"}
