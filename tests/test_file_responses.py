"""Zero-copy file responses: ``wsgi.file_wrapper`` over a regular file, its descriptor passed to the loop, which
sends the range with sendfile (gateway/loop/filesend.py).

Through nginx for what a user sees (the bytes, over FastCGI with and without keep-conn and over uwsgi, a start
offset and a Content-Length shorter than the file); straight from a test socket for what nginx's buffering would
hide: a client that does not read (the worker serves others meanwhile, and the whole file still arrives once it
reads) and a client that leaves halfway (the descriptor is closed: the master's open descriptors come back to
their count).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from devstack.nginx import Nginx
from devstack.ports import free_port
from devstack.processes import GatewayProcess
from gateway.protocols.uwsgi import encode_request
from tests.http import request
from tests.load import uwsgi_get
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SIZE = 24 << 20


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("files") / "big.bin"
    block = bytes(range(256)) * 4096
    with path.open("wb") as out:
        for index in range(SIZE // len(block)):
            out.write(bytes([index % 251]) + block[1:])
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Nginx, int]]:
    scratch = tmp_path_factory.mktemp("stack")
    fcgi, uwsgi = free_port(), free_port()
    args = ["--fcgi", f"127.0.0.1:{fcgi}", "--uwsgi", f"127.0.0.1:{uwsgi}", "--workers", "1", "tests.apps:app"]
    gateway = GatewayProcess(scratch, args, env=ENV).start()
    (scratch / "nginx").mkdir()
    nginx = Nginx(scratch / "nginx", free_port(), f"127.0.0.1:{fcgi}", f"127.0.0.1:{uwsgi}")
    try:
        nginx.start()
        yield gateway, nginx, uwsgi
    finally:
        nginx.stop()
        gateway.stop()


def _query(path: Path, **extra: int) -> str:
    return urlencode({"path": str(path), **{key: str(value) for key, value in extra.items()}})


@pytest.mark.parametrize("prefix", ["uwsgi", "fcgi", "fcgik"])
def test_a_file_response_arrives_whole_through_nginx(
    stack: tuple[GatewayProcess, Nginx, int], big_file: Path, prefix: str
) -> None:
    gateway, nginx, _ = stack
    assert request(nginx.url, "GET", f"/{prefix}/hello").body == b"hello"  # nginx's kept connection, if any, is open
    before = gateway.open_files()
    data = big_file.read_bytes()
    reply = request(nginx.url, "GET", f"/{prefix}/file?{_query(big_file)}")
    assert reply.status == 200 and reply.header("Content-Length") == str(SIZE)
    assert hashlib.sha256(reply.body).hexdigest() == hashlib.sha256(data).hexdigest()
    part = request(nginx.url, "GET", f"/{prefix}/file?{_query(big_file, skip=1000, length=300_000)}")
    assert part.status == 200 and part.body == data[1000:301_000]
    wait_for(lambda: gateway.open_files() == before, 10, "the master's descriptors back to their count")


def _uwsgi_request(port: int, path: str) -> socket.socket:
    route, _, query = path.partition("?")
    params = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": route,
        "QUERY_STRING": query,
        "REQUEST_URI": path,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(encode_request(params))
    return sock


def test_a_client_that_does_not_read_holds_no_worker_and_still_gets_the_whole_file(
    stack: tuple[GatewayProcess, Nginx, int], big_file: Path
) -> None:
    _, _, port = stack
    slow = _uwsgi_request(port, f"/file?{_query(big_file)}")
    try:
        first = slow.recv(1 << 12)
        assert first.startswith(b"HTTP/1.1 200")
        # More than the kernel's socket buffers hold: the loop holds the rest (its socket is full), and the one
        # worker is free although the download has barely started: it answers at once.
        assert uwsgi_get(port, "/hello")[2] == b"hello"
        chunks = [first]
        while chunk := slow.recv(1 << 20):
            chunks.append(chunk)
    finally:
        slow.close()
    body = b"".join(chunks).partition(b"\r\n\r\n")[2]
    assert len(body) == SIZE and body == big_file.read_bytes()


def test_a_client_leaving_halfway_closes_the_descriptor(
    stack: tuple[GatewayProcess, Nginx, int], big_file: Path
) -> None:
    gateway, _, port = stack
    assert uwsgi_get(port, "/hello")[2] == b"hello"
    before = gateway.open_files()
    for _ in range(3):
        leaving = _uwsgi_request(port, f"/file?{_query(big_file)}")
        assert leaving.recv(1 << 12).startswith(b"HTTP/1.1 200")
        leaving.close()
    wait_for(lambda: gateway.open_files() == before, 10, "the master's descriptors back to their count")
    assert uwsgi_get(port, "/hello")[2] == b"hello"
