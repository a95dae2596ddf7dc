"""UwsgiConnection driven in-process: one request per connection, answered in raw HTTP, then closed.

As in tests/test_front_fastcgi.py, a test feeds the bytes nginx sends, answers through the dispatched request's
sink, ends the loop's turn by hand and reads the wire. ``async`` only so that a FrontContext can be built.
"""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path
from typing import Any

import pytest

from gateway.config.settings import Config
from gateway.loop.request import Request
from gateway.loop.spool import EMPTY_BODY
from gateway.loop.uwsgi_front import UwsgiConnection
from gateway.protocols.uwsgi import encode_ping, encode_pong, encode_request
from tests.fakes import FakeSocket, Harness, body_of, params

HEAD = b"200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"


def _harness(tmp_path: Path, *, tcp: bool = False, allowed: tuple[str, ...] = (), **settings: Any) -> Harness:
    return Harness(Config(workers=1, **settings), str(tmp_path), tcp=tcp, allowed=allowed)


def _only_request(harness: Harness) -> Request:
    assert len(harness.dispatcher.submitted) == 1
    return harness.dispatcher.submitted[0]


async def test_whole_response_is_held_until_finish_then_written_with_the_close(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(UwsgiConnection)
    connection.data_received(encode_request(params("/echo", "POST", CONTENT_LENGTH="3"), b"abc"))
    request = _only_request(harness)
    assert (request.params["PATH_INFO"], body_of(request), request.protocol) == ("/echo", b"abc", "uwsgi")
    request.sink.send_response(HEAD + b"hello")
    harness.loop.run_ready()
    assert transport.writes == [], "held until finish"
    request.sink.finish()
    assert transport.writes == [b"HTTP/1.1 " + HEAD + b"hello"], "one write, straight to the transport"
    assert transport.is_closing() and not transport.aborted
    assert transport.take() == b"HTTP/1.1 " + HEAD + b"hello"
    harness.loop.run_ready()
    assert connection.closed and harness.context.connections == set()
    assert harness.dispatcher.cancelled == [], "an answered request is not cancelled when its connection closes"


async def test_an_http_1_0_request_gets_an_http_1_0_status_line(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(UwsgiConnection)
    connection.data_received(encode_request(params(SERVER_PROTOCOL="HTTP/1.0")))
    sink = _only_request(harness).sink
    sink.send_head(b"200 OK\r\n\r\n")
    sink.send_body(b"streamed")
    sink.finish()
    assert transport.take() == b"HTTP/1.0 200 OK\r\n\r\nstreamed"
    assert transport.is_closing()


async def test_a_streamed_response_is_batched_per_turn_and_closed_corked_on_tcp(tmp_path: Path) -> None:
    sock = FakeSocket()
    harness = _harness(tmp_path, tcp=True)
    connection, transport = harness.connect(UwsgiConnection, harness.transport(sock=sock))
    connection.data_received(encode_request(params()))
    sink = _only_request(harness).sink
    sink.send_head(b"200 OK\r\n\r\n")
    sink.send_body(b"one ")
    harness.loop.run_ready()
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\none "], "head and first chunk of a turn in one write"
    sink.send_body(b"two")
    sink.finish()
    assert sock.options[(socket.IPPROTO_TCP, socket.TCP_CORK)] == 1, "the last segment carries the FIN"
    assert transport.is_closing()
    assert transport.take() == b"HTTP/1.1 200 OK\r\n\r\none two"


_CORK = (socket.IPPROTO_TCP, socket.TCP_CORK)


async def test_on_a_corked_listener_a_whole_response_and_its_close_need_no_socket_option(tmp_path: Path) -> None:
    """Accepted from a corked listener (listeners.serve), the socket starts corked: the response and its close
    leave together without a setsockopt, and no OutputBuffer (nor its write limits) is ever made."""
    sock = FakeSocket()
    harness = Harness(Config(workers=1), str(tmp_path), tcp=True, corked=True)
    connection, transport = harness.connect(UwsgiConnection, harness.transport(sock=sock))
    connection.data_received(encode_request(params()))
    sink = _only_request(harness).sink
    sink.send_response(HEAD + b"hello")
    sink.finish()
    assert transport.writes == [b"HTTP/1.1 " + HEAD + b"hello"] and transport.is_closing()
    assert sock.calls == [], "no cork per connection: the listener's is inherited"
    assert connection.output is None and transport.limits == (None, None)


async def test_on_a_corked_listener_a_streamed_response_is_uncorked_then_corked_for_the_close(tmp_path: Path) -> None:
    """A response that streams goes through the OutputBuffer, which uncorks the socket first: a flushed chunk
    must not wait for the kernel's 200 ms cork timer. The close corks it again, for the FIN."""
    sock = FakeSocket()
    harness = Harness(Config(workers=1), str(tmp_path), tcp=True, corked=True)
    connection, transport = harness.connect(UwsgiConnection, harness.transport(sock=sock))
    connection.data_received(encode_request(params()))
    sink = _only_request(harness).sink
    sink.send_head(b"200 OK\r\n\r\n")
    assert sock.calls == [(*_CORK, 0)], "uncorked before the first byte of a stream"
    assert transport.limits[0] is not None, "the OutputBuffer's flow control sets the write limits"
    harness.loop.run_ready()
    sink.send_body(b"chunk")
    sink.finish()
    assert sock.calls == [(*_CORK, 0), (*_CORK, 1)]
    assert transport.take() == b"HTTP/1.1 200 OK\r\n\r\nchunk" and transport.is_closing()


async def test_a_request_without_a_body_shares_the_empty_body(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, _ = harness.connect(UwsgiConnection)
    connection.data_received(encode_request(params()))
    request = _only_request(harness)
    assert request.body is EMPTY_BODY and body_of(request) == b""
    request.release()  # nothing to remove, and still empty for the next request
    assert EMPTY_BODY.size == 0 and EMPTY_BODY.finish() == [] and EMPTY_BODY.path is None


async def test_a_body_in_pieces_gets_a_body_of_its_own_with_its_first_bytes(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, _ = harness.connect(UwsgiConnection)
    packet = encode_request(params("/echo", "POST", CONTENT_LENGTH="6"), b"abcdef")
    connection.data_received(packet[:-6])
    before = connection.body
    assert harness.dispatcher.submitted == []
    connection.data_received(packet[-6:-3])
    body = connection.body
    assert before is None, "head only: no body made yet"
    assert body is not None and body is not EMPTY_BODY
    connection.data_received(packet[-3:])
    request = _only_request(harness)
    assert request.body is body and body_of(request) == b"abcdef"
    assert EMPTY_BODY.size == 0


async def test_abort_after_the_head_resets_after_what_was_sent(tmp_path: Path) -> None:
    sock = FakeSocket()
    harness = _harness(tmp_path, tcp=True)
    connection, transport = harness.connect(UwsgiConnection, harness.transport(sock=sock))
    connection.data_received(encode_request(params()))
    request = _only_request(harness)
    request.sink.send_head(b"200 OK\r\n\r\n")
    request.sink.send_body(b"partial ")
    request.sink.abort()
    assert transport.aborted
    assert sock.options[(socket.SOL_SOCKET, socket.SO_LINGER)] == struct.pack("ii", 1, 0), "an RST, not a FIN"
    assert b"".join(transport.writes) == b"HTTP/1.1 200 OK\r\n\r\npartial "
    harness.loop.run_ready()
    assert harness.dispatcher.cancelled == [], "aborted by the pool: nothing left to cancel"


async def test_abort_of_a_held_whole_response_sends_nothing_of_it(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(UwsgiConnection)
    connection.data_received(encode_request(params()))
    sink = _only_request(harness).sink
    sink.send_response(HEAD + b"hello")
    sink.abort()
    harness.loop.run_ready()
    assert transport.aborted and transport.writes == []


async def test_ping_is_answered_with_pong_and_the_close(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(UwsgiConnection)
    connection.data_received(encode_ping())
    assert harness.dispatcher.submitted == []
    harness.loop.run_ready()
    assert transport.take() == encode_pong()
    assert transport.is_closing() and not transport.aborted


async def test_client_gone_cancels_the_dispatched_request(tmp_path: Path) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(UwsgiConnection)
    connection.data_received(encode_request(params()))
    request = _only_request(harness)
    assert not request.sink.client_gone
    connection.eof_received()  # nginx never half-closes: its client went away
    transport.close()
    harness.loop.run_ready()
    assert harness.dispatcher.cancelled == [request]
    assert request.sink.client_gone


async def test_client_gone_before_the_body_is_complete_never_dispatches(tmp_path: Path) -> None:
    harness = _harness(tmp_path, body_spool_threshold=4)
    connection, _ = harness.connect(UwsgiConnection)
    connection.data_received(encode_request(params(method="POST", CONTENT_LENGTH="100"), b"x" * 10))
    assert connection.body is not None and connection.body.path is not None, "spooled past the threshold"
    spooled = Path(connection.body.path)
    assert spooled.exists()
    connection.connection_lost(ConnectionResetError())
    assert harness.dispatcher.submitted == [] and harness.dispatcher.cancelled == []
    assert not spooled.exists(), "the body's file goes with the connection"


async def test_a_paused_transport_gets_nothing_more_until_it_resumes(tmp_path: Path) -> None:
    harness = _harness(tmp_path, response_spool_threshold=100)
    connection, transport = harness.connect(UwsgiConnection, harness.transport(high_water=1000))
    connection.data_received(encode_request(params()))
    sink = _only_request(harness).sink
    sink.send_head(b"200 OK\r\n\r\n")
    sink.send_body(b"a" * 2000)
    harness.loop.run_ready()
    assert transport.is_paused()
    handed = len(transport.writes)
    sink.send_body(b"b" * 50)
    sink.send_body(b"c" * 500)  # past the memory limit: spooled
    sink.finish()
    harness.loop.run_ready()
    assert len(transport.writes) == handed
    assert not transport.is_closing(), "the close waits until everything held has been handed over"
    received = transport.take() + transport.take()
    assert received == b"HTTP/1.1 200 OK\r\n\r\n" + b"a" * 2000 + b"b" * 50 + b"c" * 500
    assert transport.is_closing()
    harness.loop.run_ready()
    assert connection.closed


BAD_INPUT = [
    pytest.param(b"\x07\x00\x00\x00", "modifier1 7", id="unknown-modifier"),
    pytest.param(b"\x00\x06\x00\x00" + b"\xff\xffab\x00\x00", "claims", id="key-past-the-block"),
    pytest.param(encode_request(params()) + b"more", "beyond CONTENT_LENGTH", id="trailing-bytes"),
]


@pytest.mark.parametrize(("data", "reason"), BAD_INPUT)
async def test_bad_input_logs_one_line_and_aborts_only_that_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, data: bytes, reason: str
) -> None:
    harness = _harness(tmp_path)
    bystander, bystander_transport = harness.connect(UwsgiConnection)
    connection, transport = harness.connect(UwsgiConnection, harness.transport(peername=("10.0.0.9", 5)))
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        connection.data_received(data)
    assert len(caplog.records) == 1, caplog.messages
    assert caplog.messages[0].startswith("uwsgi 10.0.0.9:5: ") and reason in caplog.messages[0]
    assert transport.aborted
    bystander.data_received(encode_request(params("/bystander")))
    request = harness.dispatcher.submitted[-1]
    assert request.params["PATH_INFO"] == "/bystander"
    request.sink.send_response(HEAD + b"hello")
    request.sink.finish()
    assert bystander_transport.take() == b"HTTP/1.1 " + HEAD + b"hello"


async def test_end_of_input_before_the_request_is_complete_is_bad_input(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness = _harness(tmp_path)
    connection, transport = harness.connect(UwsgiConnection)
    connection.data_received(encode_request(params())[:7])
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        connection.eof_received()
    assert len(caplog.records) == 1 and "closed before the request was complete" in caplog.messages[0]
    assert transport.aborted
    assert harness.dispatcher.submitted == []


async def test_a_body_over_max_body_size_is_answered_413_and_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness = _harness(tmp_path, max_body_size=10)
    connection, transport = harness.connect(UwsgiConnection)
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        connection.data_received(encode_request(params(method="POST", CONTENT_LENGTH="11")))
    assert harness.dispatcher.submitted == []
    assert "request body exceeds 10 bytes (--max-body-size); answered 413" in caplog.text
    harness.loop.run_ready()
    reply = transport.take()
    assert reply.startswith(b"HTTP/1.1 413 Content Too Large\r\n") and reply.endswith(
        b"\r\n\r\n413 Content Too Large\n"
    )
    assert transport.is_closing()


@pytest.mark.parametrize(("peer", "admitted"), [("10.9.9.9", True), ("192.0.2.7", False)])
async def test_allow_list(tmp_path: Path, peer: str, admitted: bool) -> None:
    harness = _harness(tmp_path, allowed=("10.0.0.0/8",))
    connection, transport = harness.connect(UwsgiConnection, harness.transport(peername=(peer, 1)))
    assert transport.aborted is not admitted
    if admitted:
        connection.data_received(encode_request(params()))
        assert len(harness.dispatcher.submitted) == 1


async def test_header_timeout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = _harness(tmp_path, header_timeout=5)
    _, silent_transport = harness.connect(UwsgiConnection)
    head_cut, head_cut_transport = harness.connect(UwsgiConnection)
    head_cut.data_received(encode_request(params())[:6])
    harness.context.sweep(harness.loop.advance(5))
    assert not silent_transport.is_closing() and not head_cut_transport.is_closing()
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        harness.context.sweep(harness.loop.advance(0.1))
    assert silent_transport.aborted and head_cut_transport.aborted
    assert caplog.text.count("(--header-timeout); connection closed") == 2


async def test_body_timeout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = _harness(tmp_path, body_timeout=4)
    connection, transport = harness.connect(UwsgiConnection)
    connection.data_received(encode_request(params(method="POST", CONTENT_LENGTH="100"), b"x"))
    harness.loop.advance(3)
    connection.data_received(b"x")
    connection.check_timeouts(harness.loop.advance(4))
    assert not transport.is_closing(), "counted from the last byte"
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        connection.check_timeouts(harness.loop.advance(0.1))
    assert transport.aborted and "no body data for 4.1 s (--body-timeout)" in caplog.text
    assert harness.dispatcher.submitted == []


async def test_read_timeout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    harness = _harness(tmp_path, body_timeout=4, read_timeout=9)
    connection, transport = harness.connect(UwsgiConnection)
    connection.data_received(encode_request(params(method="POST", CONTENT_LENGTH="100")))
    for _ in range(3):  # a byte every 3 s never breaks --body-timeout
        harness.loop.advance(3)
        connection.data_received(b"x")
        connection.check_timeouts(harness.loop.time())
    assert not transport.is_closing()
    with caplog.at_level(logging.WARNING, logger="gateway.front"):
        connection.check_timeouts(harness.loop.advance(0.5))
    assert transport.aborted and "request still incomplete after 9.5 s (--read-timeout)" in caplog.text
    assert harness.dispatcher.submitted == []
