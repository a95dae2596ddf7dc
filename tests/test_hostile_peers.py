"""What a hostile or broken web server (or anyone who can reach the ports) does, through real sockets.

Every FastCGI request id is answered with END_REQUEST whatever stage it is aborted at, and the connection and
its other requests carry on; CONTENT_LENGTH is the one truth about the body on both protocols.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.protocols.fastcgi import encode_abort, encode_begin, encode_params, encode_request, encode_stdin
from gateway.protocols.uwsgi import encode_request as encode_uwsgi_request
from tests.conftest import Stack
from tests.test_raw_sockets import FastCGIClient
from tests.waiting import Gate, wait_for


def _params(path: str, query: str = "", method: str = "GET", **extra: str) -> dict[str, str]:
    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": path,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_URI": path,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        **extra,
    }


def _body(raw: bytes | bytearray) -> bytes:
    return bytes(raw).partition(b"\r\n\r\n")[2]


def _status(raw: bytes | bytearray) -> str:
    return bytes(raw).split(b"\r\n", 1)[0].decode("latin-1")


def _peer(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _logged(stack: Stack, *parts: str) -> Callable[[], bool]:
    """A condition: one log line holds every part (a peer's address and the reason)."""
    return lambda: any(all(part in line for part in parts) for line in stack.gateway.log_text().splitlines())


def _assert_serves_hello(client: FastCGIClient, request_id: int) -> None:
    client.send(encode_request(request_id, _params("/hello"), keep_conn=True))
    client.wait_ended({request_id})
    assert _body(client.stdout[request_id]) == b"hello"


# -- every request id gets its END_REQUEST -----------------------------------------------------------------------
def _stage_params(client: FastCGIClient, gate: Gate) -> None:
    client.send(encode_begin(1) + encode_params(1, _params("/hello"))[:-8])  # the params stream never ends


def _stage_body(client: FastCGIClient, gate: Gate) -> None:
    head = encode_begin(1) + encode_params(1, _params("/echo", method="POST", CONTENT_LENGTH="10"))
    client.send(head + encode_stdin(1, b"abc", end=False))


def _stage_queued(client: FastCGIClient, gate: Gate) -> None:
    # Both workers held, so request 1 waits in the queue; 10 and 11 must still be answered afterwards.
    client.send(
        encode_request(10, _params("/hold", gate.query("10"))) + encode_request(11, _params("/hold", gate.query("11")))
    )
    gate.wait_started(2)
    client.send(encode_request(1, _params("/hello")))


def _stage_running(client: FastCGIClient, gate: Gate) -> None:
    client.send(encode_request(1, _params("/hold", gate.query("1"))))
    gate.wait_started(1)


def _stage_streaming(client: FastCGIClient, gate: Gate) -> None:
    client.send(encode_request(1, _params("/stream", "n=2000&delay=0.01")))

    def streaming() -> bool:
        client.pump()
        return len(client.stdout.get(1, b"")) > 0

    wait_for(streaming, 15, "the response to stream")


STAGES = {
    "params": _stage_params,
    "body": _stage_body,
    "queued": _stage_queued,
    "running": _stage_running,
    "streaming": _stage_streaming,
}


@pytest.mark.parametrize("stage", STAGES)
def test_abort_at_every_stage_gets_end_request_and_spares_the_connection(
    stack: Stack, tmp_path: Path, stage: str
) -> None:
    gate = Gate(tmp_path)
    client = FastCGIClient(stack.fcgi_port)
    try:
        STAGES[stage](client, gate)
        client.send(encode_abort(1))
        client.wait_ended({1}, timeout=5)  # well within --header-timeout (10 s): answered, not timed out
        assert client.ended[1].protocol_status == 0
        gate.release()
        _assert_serves_hello(client, 2)  # the connection carries on
        if stage == "queued":
            client.wait_ended({10, 11})
            assert all(json.loads(_body(client.stdout[i]))["id"] == str(i) for i in (10, 11))
        assert not client.eof
    finally:
        gate.release()
        client.close()


# -- CONTENT_LENGTH is the one truth -------------------------------------------------------------------------------
def test_fastcgi_stdin_beyond_content_length_never_reaches_the_app(stack: Stack) -> None:
    client = FastCGIClient(stack.fcgi_port)
    try:
        body = b"abc" + b"x" * 18
        client.send(encode_request(1, _params("/read-all", method="POST", CONTENT_LENGTH="3"), body))
        client.wait_ended({1})
        seen = json.loads(_body(client.stdout[1]))
        assert (seen["content_length"], seen["body"]) == ("3", "abc")
        wait_for(_logged(stack, _peer(client.sock), "past its CONTENT_LENGTH 3"), 10, "the log line")
        _assert_serves_hello(client, 2)
    finally:
        client.close()


def test_fastcgi_stdin_shorter_than_content_length_is_answered_400_without_the_app(
    stack: Stack, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    client = FastCGIClient(stack.fcgi_port)
    try:
        params = _params("/record", f"file={ran}&id=1", method="POST", CONTENT_LENGTH="30")
        client.send(encode_request(1, params, b"hello world"))
        client.wait_ended({1})
        assert _status(client.stdout[1]) == "Status: 400 Bad Request"
        wait_for(_logged(stack, _peer(client.sock), "ended after 11 of its CONTENT_LENGTH 30"), 10, "the log line")
        _assert_serves_hello(client, 2)
        assert not ran.exists(), "an incomplete request reached the app"
    finally:
        client.close()


def test_fastcgi_body_without_content_length_is_framed_by_stdin(stack: Stack) -> None:
    """STDIN frames the body; the client's Content-Length header never stands in for it."""
    client = FastCGIClient(stack.fcgi_port)
    try:
        client.send(encode_request(1, _params("/read-all", method="POST", HTTP_CONTENT_LENGTH="99"), b"xyz"))
        client.wait_ended({1})
        seen = json.loads(_body(client.stdout[1]))
        assert (seen["content_length"], seen["body"], seen["http_content_length"]) == ("3", "xyz", None)
    finally:
        client.close()


def _uwsgi_exchange(stack: Stack, data: bytes, *, shut: bool = False) -> tuple[bytes, str]:
    with socket.create_connection(("127.0.0.1", stack.uwsgi_port), timeout=10) as sock:
        peer = _peer(sock)
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := sock.recv(1 << 16):
                reply += chunk
        except ConnectionResetError:
            pass
    return reply, peer


def test_uwsgi_http_content_length_never_frames_the_body(stack: Stack) -> None:
    params = _params("/read-all", method="POST", HTTP_CONTENT_LENGTH="5")
    reply, peer = _uwsgi_exchange(stack, encode_uwsgi_request(params))
    assert _status(reply) == "HTTP/1.1 200 OK"
    seen = json.loads(_body(reply))
    assert (seen["content_length"], seen["body"], seen["http_content_length"]) == (None, "", None)
    wait_for(_logged(stack, peer, "HTTP_CONTENT_LENGTH '5' without CONTENT_LENGTH"), 10, "the log line")
    # The 5 bytes the header announced are not part of the request: the connection is refused, and says why.
    reply, peer = _uwsgi_exchange(stack, encode_uwsgi_request(params, b"12345"))
    assert reply == b""
    wait_for(_logged(stack, peer, "5 bytes", "HTTP_CONTENT_LENGTH '5', a client's header"), 10, "the log line")


def test_uwsgi_body_shorter_than_content_length_never_reaches_the_app(stack: Stack, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    params = _params("/record", f"file={ran}&id=1", method="POST", CONTENT_LENGTH="30")
    reply, peer = _uwsgi_exchange(stack, encode_uwsgi_request(params, b"hello world"), shut=True)
    assert reply == b""
    wait_for(_logged(stack, peer, "closed before the request was complete"), 10, "the log line")
    assert not ran.exists()


def test_uwsgi_bytes_beyond_content_length_never_reach_the_app(stack: Stack, tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    params = _params("/record", f"file={ran}&id=1", method="POST", CONTENT_LENGTH="3")
    reply, peer = _uwsgi_exchange(stack, encode_uwsgi_request(params, b"abc" + b"x" * 18))
    assert reply == b""
    wait_for(_logged(stack, peer, "18 bytes beyond CONTENT_LENGTH 3"), 10, "the log line")
    assert not ran.exists()


# -- the app's close() ---------------------------------------------------------------------------------------------
def test_close_raising_after_a_complete_response_sends_it_whole(stack: Stack) -> None:
    client = FastCGIClient(stack.fcgi_port)
    try:
        client.send(encode_request(1, _params("/close-raises"), keep_conn=True))
        client.wait_ended({1})
        assert _status(client.stdout[1]) == "Status: 200 OK"
        assert _body(client.stdout[1]) == b"complete"
        assert client.ended[1].app_status == 0
        _assert_serves_hello(client, 2)
    finally:
        client.close()
    reply, _ = _uwsgi_exchange(stack, encode_uwsgi_request(_params("/close-raises")))
    assert (_status(reply), _body(reply)) == ("HTTP/1.1 200 OK", b"complete")  # a whole response, not a reset
    assert "the response's close() raised; the response is sent as the app produced it" in stack.gateway.log_text()
