"""Raw-socket clients against the gateway's own ports: what nginx never does, other clients will.

Multiplexing, GET_VALUES, ABORT_REQUEST, uwsgi ping, and garbage that must close one connection and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import time
from pathlib import Path

import pytest

from gateway.protocols.fastcgi import (
    FCGI_MAX_CONNS,
    FCGI_MAX_REQS,
    FCGI_MPXS_CONNS,
    ClientConnection,
    EndRequest,
    GetValuesResult,
    Stdout,
    encode_abort,
    encode_get_values,
    encode_request,
)
from gateway.protocols.uwsgi import encode_request as encode_uwsgi_request
from tests.conftest import Stack
from tests.http import request
from tests.waiting import Gate


def _params(path: str, query: str = "", method: str = "GET", body: bytes = b"") -> dict[str, str]:
    return {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": path,
        "QUERY_STRING": query,
        "REQUEST_URI": path,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "CONTENT_TYPE": "",
    }


class FastCGIClient:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.codec = ClientConnection()
        self.stdout: dict[int, bytearray] = {}
        self.ended: dict[int, EndRequest] = {}
        self.values: dict[str, str] | None = None
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def pump(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        for event in self.codec.receive_data(data):
            if isinstance(event, Stdout):
                self.stdout.setdefault(event.request_id, bytearray()).extend(event.data)
            elif isinstance(event, EndRequest):
                self.ended[event.request_id] = event
            elif isinstance(event, GetValuesResult):
                self.values = event.values

    def wait_ended(self, ids: set[int], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= self.ended.keys():
            assert time.monotonic() < deadline, f"not ended: {ids - self.ended.keys()}"
            assert not self.eof, "connection closed early"
            self.pump()

    def close(self) -> None:
        self.sock.close()


def _read_until_closed(sock: socket.socket, into: bytearray) -> None:
    while chunk := sock.recv(4096):
        into += chunk


def _records(data: bytes) -> list[bytes]:
    records = []
    while data:
        _, _, _, size, padding = struct.unpack_from(">BBHHBx", data)
        end = 8 + size + padding
        records.append(data[:end])
        data = data[end:]
    return records


def _split_response(raw: bytes) -> tuple[str, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def test_hundred_requests_multiplexed_on_one_connection(stack: Stack) -> None:
    client = FastCGIClient(stack.fcgi_port)
    try:
        records = [encode_request(i, _params("/sleep", f"s=0.01&id={i}"), keep_conn=True) for i in range(1, 101)]
        # Interleave the requests' records: cut every request into its records and deal them out round-robin.
        pieces = [_records(r) for r in records]
        stream = bytearray()
        while any(pieces):
            for queue in pieces:
                if queue:
                    stream += queue.pop(0)
        client.send(bytes(stream))
        client.wait_ended(set(range(1, 101)))
        pids = set()
        for request_id in range(1, 101):
            head, body = _split_response(bytes(client.stdout[request_id]))
            assert head.startswith("Status: 200"), head
            data = json.loads(body)
            assert data["id"] == str(request_id)
            pids.add(data["pid"])
            assert client.ended[request_id].protocol_status == 0
        assert len(pids) == 2, "both workers served the multiplexed requests concurrently"
    finally:
        client.close()


def test_get_values(stack: Stack) -> None:
    client = FastCGIClient(stack.fcgi_port)
    try:
        client.send(encode_get_values([FCGI_MAX_CONNS, FCGI_MAX_REQS, FCGI_MPXS_CONNS]))
        while client.values is None:
            client.pump()
        assert client.values[FCGI_MPXS_CONNS] == "1"
        assert int(client.values[FCGI_MAX_REQS]) >= 100
        assert int(client.values[FCGI_MAX_CONNS]) >= 1
    finally:
        client.close()


def test_abort_request_still_gets_end_request(stack: Stack, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    client = FastCGIClient(stack.fcgi_port)
    try:
        client.send(encode_request(1, _params("/hold", gate.query()), keep_conn=True))
        gate.wait_started()  # aborted while it runs
        client.send(encode_abort(1))
        client.wait_ended({1}, timeout=5)
        assert not client.stdout.get(1), "an aborted request gets END_REQUEST and no output"
        gate.release()
        # The connection stays usable for the next request.
        client.send(encode_request(2, _params("/hello"), keep_conn=True))
        client.wait_ended({2})
        assert _split_response(bytes(client.stdout[2]))[1] == b"hello"
    finally:
        client.close()


def test_connection_closed_without_keep_conn(stack: Stack) -> None:
    client = FastCGIClient(stack.fcgi_port)
    client.sock.settimeout(10)
    try:
        client.send(encode_request(1, _params("/hello"), keep_conn=False))
        client.wait_ended({1})
        assert _split_response(bytes(client.stdout[1]))[1] == b"hello"
        assert client.ended[1].app_status == 0
        try:
            while not client.eof:
                client.pump()
        except TimeoutError:
            pytest.fail("the connection was left open after a request without FCGI_KEEP_CONN")
    finally:
        client.close()


def test_connection_kept_with_keep_conn(stack: Stack) -> None:
    client = FastCGIClient(stack.fcgi_port)
    try:
        for request_id in (1, 2, 3):  # one after another on the same connection
            client.send(encode_request(request_id, _params("/hello"), keep_conn=True))
            client.wait_ended({request_id})
            assert _split_response(bytes(client.stdout[request_id]))[1] == b"hello"
        assert not client.eof
    finally:
        client.close()


def test_failure_after_head_is_signalled_on_the_wire(stack: Stack) -> None:
    """An app that fails mid-body: FastCGI ends the connection without END_REQUEST, uwsgi resets it."""
    client = FastCGIClient(stack.fcgi_port)
    try:
        client.send(encode_request(1, _params("/error-after"), keep_conn=False))
        while not client.eof:
            client.pump()
        assert client.stdout[1].endswith(b"partial ")
        assert 1 not in client.ended
    finally:
        client.close()
    with socket.create_connection(("127.0.0.1", stack.uwsgi_port), timeout=10) as sock:
        sock.sendall(encode_uwsgi_request({**_params("/error-after"), "PATH_INFO": "/error-after"}))
        received = bytearray()
        with pytest.raises(ConnectionResetError):
            _read_until_closed(sock, received)
        assert received.startswith(b"HTTP/1.1 200 OK")


def test_failure_after_head_ends_only_that_multiplexed_request(stack: Stack, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    client = FastCGIClient(stack.fcgi_port)
    try:
        # Request 1 is held by the app (one of the two workers) while request 2 fails on the other.
        client.send(encode_request(1, _params("/hold", gate.query()), keep_conn=True))
        gate.wait_started()
        client.send(encode_request(2, _params("/error-after"), keep_conn=True))
        client.wait_ended({2})
        assert 1 not in client.ended
        assert client.ended[2].app_status != 0
        gate.release()
        client.wait_ended({1})
        assert client.ended[1].app_status == 0
        assert _split_response(bytes(client.stdout[1]))[0].startswith("Status: 200")
    finally:
        client.close()


def test_uwsgi_ping(stack: Stack) -> None:
    with socket.create_connection(("127.0.0.1", stack.uwsgi_port), timeout=10) as sock:
        sock.sendall(struct.pack("<BHB", 100, 0, 0))
        reply = b""
        while chunk := sock.recv(100):
            reply += chunk
    assert reply == struct.pack("<BHB", 100, 0, 1)


def test_uwsgi_raw_request(stack: Stack) -> None:
    params = {**_params("/echo", method="POST", body=b"xyz"), "PATH_INFO": "/echo"}
    with socket.create_connection(("127.0.0.1", stack.uwsgi_port), timeout=10) as sock:
        sock.sendall(encode_uwsgi_request(params, b"xyz"))
        reply = b""
        while chunk := sock.recv(1 << 16):
            reply += chunk
    head, body = _split_response(reply)
    assert head.startswith("HTTP/1.1 200 OK")
    assert json.loads(body)["body_length"] == 3


GARBAGE = [
    b"\x00" * 64,
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    struct.pack(">BBHHBx", 1, 1, 1, 8, 0) + b"\x00\x01\x00",  # truncated BEGIN_REQUEST, then EOF
    struct.pack(">BBHHBx", 1, 4, 1, 65535, 255),  # PARAMS for no request, claiming a huge length, then EOF
    struct.pack(">BBHHBx", 9, 1, 1, 8, 0) + bytes(8),  # wrong version
    struct.pack(">BBHHBx", 1, 1, 1, 8, 0)
    + b"\x00\x01\x01"
    + bytes(5)
    + struct.pack(">BBHHBx", 1, 4, 1, 5, 0)
    + b"\x7f\x7fabc",  # name-value lengths overrun the block
]
UWSGI_GARBAGE = [
    b"\x00\xff\xff\x00" + b"\x05\x00abc",  # vars block shorter than announced, then EOF
    b"\x07\x00\x00\x00",  # modifier1 7 is not served
    b"\x00\x06\x00\x00" + b"\xff\xffab\x00\x00",  # key length past the block
    bytes(random.Random(4).randbytes(300)),
]


@pytest.mark.parametrize("garbage", GARBAGE)
def test_fastcgi_garbage_closes_only_that_connection(stack: Stack, garbage: bytes) -> None:
    _send_garbage(stack.fcgi_port, garbage)
    assert request(stack.url, "GET", "/fcgik/hello").body == b"hello"


@pytest.mark.parametrize("garbage", UWSGI_GARBAGE)
def test_uwsgi_garbage_closes_only_that_connection(stack: Stack, garbage: bytes) -> None:
    _send_garbage(stack.uwsgi_port, garbage)
    assert request(stack.url, "GET", "/uwsgi/hello").body == b"hello"


def _send_garbage(port: int, garbage: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(1 << 16):
            pass  # the gateway answers (an error, a refusal) or closes: either way the connection ends


def test_random_garbage_storm_keeps_the_gateway_serving(stack: Stack) -> None:
    rng = random.Random(2026)
    for _ in range(50):
        port = rng.choice([stack.fcgi_port, stack.uwsgi_port])
        with contextlib.suppress(ConnectionResetError):
            _send_garbage(port, rng.randbytes(rng.randint(1, 2000)))
    assert request(stack.url, "GET", "/fcgi/hello").body == b"hello"
    assert request(stack.url, "GET", "/uwsgi/hello").body == b"hello"
    assert stack.gateway.process is not None and stack.gateway.process.poll() is None
    assert os.path.exists(stack.fcgi_path)
