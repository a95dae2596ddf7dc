"""HTTPConnection driven in-process: every decision it makes, on a fake transport, clock and dispatcher.

As in test_front_fastcgi.py: feed bytes as a client sends them, answer the dispatched request through its sink as
the pool would, end the loop's turn by hand and read what reached the wire. ``async`` only because a
FrontContext is built under a running loop.
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from gateway.config.settings import Config
from gateway.loop.http_front import HTTPConnection
from gateway.loop.request import Request, respond_error
from gateway.protocols.http.server import Limits, ServerConnection
from tests.fakes import FakeLoop, FakeTransport, Harness, body_of

HEAD = b"200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
STREAM_HEAD = b"200 OK\r\nContent-Type: text/plain\r\n\r\n"


class HTTPTransport(FakeTransport):
    """What an HTTP connection takes from a TCP transport beyond the fake: reading paused and resumed, the half
    close, and the local address."""

    def __init__(self, loop: FakeLoop, **kwargs: Any) -> None:
        super().__init__(loop, **kwargs)
        self.reading = True
        self.eof_written = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return ("127.0.0.1", 8000)
        return super().get_extra_info(name, default)

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True


def _open(tmp_path: Path, peer: str = "10.0.0.5", **settings: Any) -> tuple[Harness, HTTPConnection, HTTPTransport]:
    harness = Harness(Config(workers=1, **settings), str(tmp_path), tcp=True)
    transport = HTTPTransport(harness.loop, peername=(peer, 40000))
    connection, _ = harness.connect(HTTPConnection, transport)
    return harness, connection, transport


def _wire(harness: Harness, transport: HTTPTransport) -> bytes:
    harness.loop.run_ready()
    return transport.take()


def _answer(request: Request, body: bytes = b"hello") -> None:
    request.sink.send_response(HEAD + body)
    request.sink.finish()


def _status_lines(data: bytes) -> list[bytes]:
    """The status lines in what was written (bodies here are short words, never containing one)."""
    return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", data)


GET = b"GET /hello?a=1 HTTP/1.1\r\nHost: example.org\r\nX-Thing: 1\r\n\r\n"


# -- keep-alive, params, framing ------------------------------------------------------------------------------
async def test_a_get_becomes_cgi_params_and_its_answer_keeps_the_connection(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(GET)
    (request,) = harness.dispatcher.submitted
    params = request.params
    assert request.protocol == "http"
    assert (params["REQUEST_METHOD"], params["PATH_INFO"], params["QUERY_STRING"]) == ("GET", "/hello", "a=1")
    assert (params["REQUEST_URI"], params["SERVER_PROTOCOL"]) == ("/hello?a=1", "HTTP/1.1")
    assert (params["HTTP_HOST"], params["HTTP_X_THING"]) == ("example.org", "1")
    assert (params["REMOTE_ADDR"], params["SERVER_PORT"], params["REQUEST_SCHEME"]) == ("10.0.0.5", "8000", "http")
    _answer(request)
    wire = _wire(harness, transport)
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nDate: " in wire
    assert b"\r\nServer: gateway\r\n" in wire
    assert wire.endswith(b"\r\n\r\nhello")
    assert b"Connection:" not in wire
    assert not transport.is_closing()
    connection.data_received(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
    assert harness.dispatcher.submitted[1].params["PATH_INFO"] == "/again"


async def test_the_server_header_can_be_turned_off(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path, no_server_header=True)
    connection.data_received(GET)
    _answer(harness.dispatcher.submitted[0])
    wire = _wire(harness, transport)
    assert b"Server:" not in wire
    assert b"Date:" in wire


async def test_a_whole_response_without_length_is_given_one(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(GET)
    request = harness.dispatcher.submitted[0]
    request.sink.send_response(STREAM_HEAD + b"abc")
    request.sink.finish()
    wire = _wire(harness, transport)
    assert b"Content-Length: 3\r\n" in wire
    assert wire.endswith(b"abc")
    assert not transport.is_closing()


async def test_a_streamed_response_without_length_is_chunked_for_http11(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(GET)
    sink = harness.dispatcher.submitted[0].sink
    sink.send_head(STREAM_HEAD)
    sink.send_body(b"hello ")
    sink.send_body(b"")
    sink.send_body(b"world")
    sink.finish()
    wire = _wire(harness, transport)
    head, _, body = wire.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
    assert not transport.is_closing()


async def test_http10_without_length_is_delimited_by_the_close(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(b"GET / HTTP/1.0\r\n\r\n")
    request = harness.dispatcher.submitted[0]
    assert request.params["SERVER_PROTOCOL"] == "HTTP/1.0"
    request.sink.send_head(STREAM_HEAD)
    request.sink.send_body(b"all of it")
    request.sink.finish()
    wire = _wire(harness, transport)
    assert b"Connection: close\r\n" in wire
    assert b"chunked" not in wire
    assert wire.endswith(b"\r\n\r\nall of it")
    assert transport.is_closing()


async def test_http10_keep_alive_is_honoured_and_said(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    _answer(harness.dispatcher.submitted[0])
    wire = _wire(harness, transport)
    assert b"Connection: keep-alive\r\n" in wire
    assert not transport.is_closing()


async def test_connection_close_from_the_client_is_answered_and_closed(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n")
    assert len(harness.dispatcher.submitted) == 1, "nothing after Connection: close is read"
    _answer(harness.dispatcher.submitted[0])
    wire = _wire(harness, transport)
    assert b"Connection: close\r\n" in wire
    assert transport.is_closing()


async def test_head_sends_the_length_of_the_get_but_no_body(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    request = harness.dispatcher.submitted[0]
    assert request.params["REQUEST_METHOD"] == "HEAD"
    request.sink.send_response(STREAM_HEAD + b"twelve bytes")
    request.sink.finish()
    wire = _wire(harness, transport)
    assert b"\r\nContent-Length: 12\r\n" in wire
    assert wire.endswith(b"\r\n\r\n")
    # a streamed one: neither body nor chunk framing
    connection.data_received(b"HEAD /s HTTP/1.1\r\nHost: x\r\n\r\n")
    sink = harness.dispatcher.submitted[1].sink
    sink.send_head(STREAM_HEAD)
    sink.send_body(b"dropped")
    sink.finish()
    wire = _wire(harness, transport)
    assert wire.endswith(b"\r\n\r\n")
    assert b"dropped" not in wire
    assert b"chunked" not in wire
    assert not transport.is_closing()


async def test_204_and_304_carry_no_body_framing(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(GET)
    sink = harness.dispatcher.submitted[0].sink
    sink.send_head(b"204 No Content\r\n\r\n")
    sink.finish()
    wire = _wire(harness, transport)
    assert b"chunked" not in wire
    assert b"Content-Length" not in wire
    assert wire.endswith(b"\r\n\r\n")


async def test_an_aborted_response_resets_the_connection(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(GET)
    sink = harness.dispatcher.submitted[0].sink
    sink.send_head(STREAM_HEAD)
    sink.send_body(b"part")
    sink.abort()
    assert transport.aborted


async def test_pool_errors_go_out_as_http_responses(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(GET)
    respond_error(harness.dispatcher.submitted[0].sink, "503 Service Unavailable", "Retry-After: 1\r\n")
    wire = _wire(harness, transport)
    assert wire.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 1\r\n" in wire
    assert not transport.is_closing()


# -- pipelining -----------------------------------------------------------------------------------------------
async def test_pipelined_requests_are_answered_in_order_one_at_a_time(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\nGET /3 HTTP/1.1\r\nHo"
    )
    assert [r.params["PATH_INFO"] for r in harness.dispatcher.submitted] == ["/1"]
    assert not transport.is_reading(), "reading pauses while a complete request waits its turn"
    _answer(harness.dispatcher.submitted[0], b"one!!")
    assert [r.params["PATH_INFO"] for r in harness.dispatcher.submitted] == ["/1", "/2"]
    assert transport.is_reading()
    connection.data_received(b"st: x\r\n\r\n")
    _answer(harness.dispatcher.submitted[1], b"two!!")
    _answer(harness.dispatcher.submitted[2], b"three")
    wire = _wire(harness, transport)
    assert [wire.index(word) for word in (b"one!!", b"two!!", b"three")] == sorted(
        wire.index(word) for word in (b"one!!", b"two!!", b"three")
    )
    assert len(_status_lines(wire)) == 3


async def test_a_bad_request_behind_a_good_one_is_answered_after_it(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(GET + b"BLAH\x01\r\n\r\n")
    assert len(harness.dispatcher.submitted) == 1, "the good request ahead of the garbage stands"
    assert _wire(harness, transport) == b""
    _answer(harness.dispatcher.submitted[0])
    wire = _wire(harness, transport)
    lines = _status_lines(wire)
    assert lines == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"]
    assert transport.eof_written, "closed after the malformed request"


# -- request bodies -------------------------------------------------------------------------------------------
async def test_a_chunked_body_is_decoded_and_given_its_content_length(tmp_path: Path) -> None:
    harness, connection, _ = _open(tmp_path)
    connection.data_received(
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
        b"5;ext=1\r\nhello\r\n"
    )
    assert harness.dispatcher.submitted == [], "dispatched only once the body is whole"
    connection.data_received(b"6\r\n world\r\n0\r\nTrailer: t\r\n\r\n")
    (request,) = harness.dispatcher.submitted
    assert body_of(request) == b"hello world"
    assert request.params["CONTENT_LENGTH"] == "11"
    assert request.params["CONTENT_TYPE"] == "text/plain"
    assert "HTTP_CONTENT_TYPE" not in request.params


async def test_a_byte_at_a_time_request_is_the_same_request(tmp_path: Path) -> None:
    harness, connection, _ = _open(tmp_path)
    data = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbody"
    for index in range(len(data)):
        connection.data_received(data[index : index + 1])
    (request,) = harness.dispatcher.submitted
    assert body_of(request) == b"body"
    assert request.params["CONTENT_LENGTH"] == "4"


async def test_100_continue_is_sent_once_the_request_is_admitted(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(b"PUT /f HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert _wire(harness, transport) == b"HTTP/1.1 100 Continue\r\n\r\n"
    connection.data_received(b"abc")
    assert body_of(harness.dispatcher.submitted[0]) == b"abc"


async def test_100_continue_waits_behind_an_earlier_request(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(GET + b"PUT /f HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert _wire(harness, transport) == b""
    _answer(harness.dispatcher.submitted[0])
    wire = _wire(harness, transport)
    assert wire.endswith(b"hello" + b"HTTP/1.1 100 Continue\r\n\r\n")


async def test_a_declared_body_over_the_limit_is_refused_at_once(tmp_path: Path, caplog: Any) -> None:
    harness, connection, transport = _open(tmp_path, max_body_size=100)
    with caplog.at_level(logging.WARNING, "gateway.front"):
        connection.data_received(b"PUT /f HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\nExpect: 100-continue\r\n\r\n")
    wire = _wire(harness, transport)
    assert wire.startswith(b"HTTP/1.1 413 Content Too Large\r\n")
    assert b"100 Continue" not in wire
    assert b"--max-body-size" in wire.partition(b"\r\n\r\n")[2], "a one-line reason"
    assert harness.dispatcher.submitted == []
    assert transport.eof_written
    assert len([r for r in caplog.records if "413" in r.getMessage()]) == 1
    # What the client still sends is dropped until it closes (or the linger time ends).
    connection.data_received(b"x" * 101)
    assert _wire(harness, transport) == b""
    connection.check_timeouts(harness.loop.advance(3))
    assert transport.is_closing()


async def test_a_chunked_body_growing_past_the_limit_is_refused(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path, max_body_size=8)
    connection.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    connection.data_received(b"5\r\nworld\r\n0\r\n\r\n")
    assert harness.dispatcher.submitted == []
    assert _wire(harness, transport).startswith(b"HTTP/1.1 413 ")


# -- malformed requests ---------------------------------------------------------------------------------------
def _refused(tmp_path: Path, data: bytes, **settings: Any) -> bytes:
    harness, connection, transport = _open(tmp_path, **settings)
    connection.data_received(data)
    assert harness.dispatcher.submitted == [], "a malformed request never reaches a worker"
    wire = _wire(harness, transport)
    assert transport.eof_written or transport.is_closing(), "the connection is closed after it"
    head, _, body = wire.partition(b"\r\n\r\n")
    assert b"Connection: close" in head
    assert body.count(b"\n") == 1, "a one-line reason, no traceback"
    return wire


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("CL+TE", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE+CL", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n"),
        ("two CLs", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
        ("bare LF", b"GET / HTTP/1.1\nHost: x\n\n"),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
    ],
)
async def test_malformed_and_smuggling_requests_are_400_and_closed(tmp_path: Path, name: str, data: bytes) -> None:
    assert _refused(tmp_path, data).startswith(b"HTTP/1.1 400 Bad Request\r\n"), name


async def test_a_long_target_is_414(tmp_path: Path) -> None:
    wire = _refused(tmp_path, b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", max_params_size=1024)
    assert wire.startswith(b"HTTP/1.1 414 URI Too Long\r\n")


async def test_too_many_or_too_large_headers_are_431(tmp_path: Path) -> None:
    many = b"".join(b"X-%d: 1\r\n" % n for n in range(20))
    wire = _refused(tmp_path, b"GET / HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n", max_params=10)
    assert wire.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    # one header line trickled without end is bounded too, before it is complete
    harness, connection, transport = _open(tmp_path, max_params_size=1024)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    for _ in range(20):
        connection.data_received(b"v" * 100)
    assert _wire(harness, transport).startswith(b"HTTP/1.1 431 ")


async def test_a_head_cut_by_a_read_counts_its_complete_fields_once(tmp_path: Path) -> None:
    """5 KiB of header fields and the start of the next in one read, under an 8 KiB limit: not a head of 10 KiB
    (the fields, and the whole read again as the line still arriving)."""
    harness, connection, transport = _open(tmp_path, max_params_size=8192)
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 5000 + b"\r\nX-More: 1\r\n\r\n"
    connection.data_received(head[:5040])  # X-Pad complete, X-More not
    assert 5000 < connection.codec.buffered < 5100
    connection.data_received(head[5040:])
    assert len(harness.dispatcher.submitted) == 1, _wire(harness, transport)


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/0.9"])
async def test_other_versions_are_505(tmp_path: Path, version: bytes) -> None:
    wire = _refused(tmp_path, b"GET / " + version + b"\r\nHost: x\r\n\r\n")
    assert wire.startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")


async def test_an_incomplete_head_times_out_with_408(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path, header_timeout=5)
    connection.data_received(b"GET / HTTP/1.1\r\nHo")
    connection.check_timeouts(harness.loop.advance(6))
    wire = _wire(harness, transport)
    assert wire.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert transport.eof_written


async def test_a_stalled_body_times_out_with_408(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path, body_timeout=5)
    connection.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    connection.check_timeouts(harness.loop.advance(6))
    assert _wire(harness, transport).startswith(b"HTTP/1.1 408 ")
    assert harness.dispatcher.submitted == []


async def test_a_silent_new_connection_and_an_idle_one_are_closed_without_an_answer(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path, header_timeout=5, keepalive_timeout=10)
    connection.check_timeouts(harness.loop.advance(6))
    assert transport.is_closing()
    assert _wire(harness, transport) == b""
    harness, connection, transport = _open(tmp_path, keepalive_timeout=10)
    connection.data_received(GET)
    _answer(harness.dispatcher.submitted[0])
    _wire(harness, transport)
    connection.check_timeouts(harness.loop.advance(5))
    assert not transport.is_closing()
    connection.check_timeouts(harness.loop.advance(6))
    assert transport.is_closing()
    assert _wire(harness, transport) == b""


async def test_while_reading_is_paused_no_input_timeout_applies(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path, header_timeout=5)
    connection.data_received(GET + GET + b"GET / HTTP/1.1\r\n")
    connection.check_timeouts(harness.loop.advance(60))
    assert not transport.is_closing()


async def test_a_client_gone_cancels_its_running_and_waiting_requests(tmp_path: Path) -> None:
    harness, connection, transport = _open(tmp_path)
    connection.data_received(GET + GET)
    transport.abort()
    harness.loop.run_ready()
    assert harness.dispatcher.cancelled == harness.dispatcher.submitted[:1]
    assert connection not in harness.context.connections


# -- behind a proxy -------------------------------------------------------------------------------------------
FORWARDED = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.9\r\nX-Forwarded-Proto: https\r\n\r\n"


async def test_forwarded_headers_are_believed_from_a_trusted_proxy(tmp_path: Path) -> None:
    nets = (ipaddress.ip_network("10.0.0.0/8"),)
    harness, connection, _ = _open(tmp_path, forwarded_allow_ips=nets)
    connection.data_received(FORWARDED)
    params = harness.dispatcher.submitted[0].params
    assert params["REMOTE_ADDR"] == "203.0.113.9", "the rightmost address no trusted proxy added"
    assert (params["HTTPS"], params["REQUEST_SCHEME"]) == ("on", "https")


async def test_forwarded_headers_are_ignored_from_anyone_else(tmp_path: Path) -> None:
    nets = (ipaddress.ip_network("127.0.0.1/32"),)
    harness, connection, _ = _open(tmp_path, forwarded_allow_ips=nets)
    connection.data_received(FORWARDED)
    params = harness.dispatcher.submitted[0].params
    assert params["REMOTE_ADDR"] == "10.0.0.5"
    assert "HTTPS" not in params
    assert params["REQUEST_SCHEME"] == "http"


async def test_the_forwarded_header_of_rfc7239(tmp_path: Path) -> None:
    nets = (ipaddress.ip_network("10.0.0.0/8"),)
    harness, connection, _ = _open(tmp_path, forwarded_allow_ips=nets)
    connection.data_received(
        b'GET / HTTP/1.1\r\nHost: x\r\nForwarded: for="[2001:db8::1]:4711";proto=https, for=10.1.1.1\r\n\r\n'
    )
    params = harness.dispatcher.submitted[0].params
    assert params["REMOTE_ADDR"] == "2001:db8::1"
    assert params["HTTPS"] == "on"


async def test_underscored_header_names_cannot_pass_for_dashed_ones(tmp_path: Path) -> None:
    nets = (ipaddress.ip_network("10.0.0.0/8"),)
    harness, connection, _ = _open(tmp_path, forwarded_allow_ips=nets)
    connection.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n")
    params = harness.dispatcher.submitted[0].params
    assert params["REMOTE_ADDR"] == "10.0.0.5"
    assert "HTTP_X_FORWARDED_FOR" not in params


async def test_tls_options_go_together_and_a_bad_certificate_names_them(tmp_path: Path) -> None:
    from gateway.config.errors import ConfigError
    from gateway.loop.tls import tls_context

    assert tls_context(Config(workers=1)) is None
    with pytest.raises(ConfigError, match="--certfile and --keyfile go together"):
        tls_context(Config(workers=1, certfile=str(tmp_path / "cert.pem")))
    (tmp_path / "cert.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="--certfile/--keyfile: cannot load"):
        tls_context(Config(workers=1, certfile=str(tmp_path / "cert.pem"), keyfile=str(tmp_path / "cert.pem")))


def test_a_closed_codec_reads_nothing_more_and_holds_no_reference_cycle() -> None:
    """httptools' parser calls the codec's methods, so it holds the codec: closed, the parser goes, and a
    connection's codec is freed by its reference count instead of by the garbage collector, once per connection
    (benchmarks/RESULTS.md, History)."""
    limits = Limits(max_target_size=8192, max_head_size=65536, max_headers=100, max_body_size=1 << 20)
    gc.collect()
    gc.disable()
    try:
        codec = ServerConnection(limits)
        assert codec.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        codec.close()
        assert codec.done
        assert codec.receive_data(b"GET /more HTTP/1.1\r\nHost: x\r\n\r\n") == []
        del codec
        assert gc.collect() == 0, "the codec and its parser are still a reference cycle"
    finally:
        gc.enable()


async def test_a_lost_connection_closes_its_codec(tmp_path: Path) -> None:
    harness, connection, _ = _open(tmp_path)
    connection.data_received(GET)
    (request,) = harness.dispatcher.submitted
    _answer(request)
    assert not connection.codec.done  # kept alive: it reads the next request
    connection.connection_lost(None)
    assert connection.codec.done
