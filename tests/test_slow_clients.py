"""Slow, idle and hostile clients: each protection fires and logs, and none of them ever holds a worker.

Short timeouts make the protections fire within seconds; one worker makes "a worker was held" visible as a fast
request that is not served. When each limit fires, and which, is decided in-process on a fake clock
(tests/test_front_fastcgi.py, tests/test_front_uwsgi.py); here real sockets show the limits are wired up.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import socket
import threading
import time
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.processes import GatewayProcess
from gateway.protocols.fastcgi import ClientConnection, EndRequest, encode_request
from gateway.protocols.uwsgi import encode_request as encode_uwsgi_request
from tests.apps import pattern
from tests.load import uwsgi_get
from tests.waiting import accept_queue, unread, wait_for

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

PARAMS = {
    "REQUEST_METHOD": "POST",
    "PATH_INFO": "/echo",
    "REQUEST_URI": "/echo",
    "SERVER_NAME": "test",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
}


def _start(tmp_path: Path, *args: str) -> tuple[GatewayProcess, int, int]:
    uwsgi_port, fcgi_port = free_port(), free_port()
    gateway = GatewayProcess(
        tmp_path,
        ["--uwsgi", f"127.0.0.1:{uwsgi_port}", "--fcgi", f"127.0.0.1:{fcgi_port}", *args, "tests.apps:app"],
        env=ENV,
    ).start()
    return gateway, uwsgi_port, fcgi_port


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def _fast_request(port: int) -> None:
    """With one worker, an answer at all shows no slow client holds it (uwsgi_get gives up after 10 s)."""
    status, _, body = uwsgi_get(port, "/hello", timeout=10)
    assert (status, body) == (200, b"hello")


def test_header_timeout_closes_a_connection_that_never_finishes_its_vars(tmp_path: Path) -> None:
    gateway, uwsgi_port, _ = _start(tmp_path, "--workers", "1", "--header-timeout", "1")
    try:
        with socket.create_connection(("127.0.0.1", uwsgi_port)) as sock:
            sock.sendall(encode_uwsgi_request(PARAMS)[:6])
            assert _closed_by_server(sock, 5)
        assert "(--header-timeout); connection closed" in gateway.log_text()
        # A connection that sends nothing at all is held to the same deadline.
        with socket.create_connection(("127.0.0.1", uwsgi_port)) as sock:
            assert _closed_by_server(sock, 3)
    finally:
        gateway.stop()


def test_body_timeout_and_read_timeout(tmp_path: Path) -> None:
    gateway, uwsgi_port, _ = _start(tmp_path, "--workers", "1", "--body-timeout", "1", "--read-timeout", "3")
    try:
        with socket.create_connection(("127.0.0.1", uwsgi_port)) as sock:
            sock.sendall(encode_uwsgi_request({**PARAMS, "CONTENT_LENGTH": "100"}, b"0123456789"))
            assert _closed_by_server(sock, 3)
        assert "no body data for" in gateway.log_text()
        # Trickling a byte every half second never trips the inactivity limit, but the whole-request one.
        with socket.create_connection(("127.0.0.1", uwsgi_port)) as sock:
            sock.sendall(encode_uwsgi_request({**PARAMS, "CONTENT_LENGTH": "100"}))
            deadline = time.monotonic() + 10
            closed = False
            while not closed:
                assert time.monotonic() < deadline, "the trickled request was never cut off"
                try:
                    sock.sendall(b"x")
                except OSError:
                    break
                closed = _closed_by_server(sock, 0.5)  # the client's pace, and a look for the close
        wait_for(lambda: "(--read-timeout)" in gateway.log_text(), 5, "the read-timeout log line")
        assert gateway.log_text().count("no body data for") == 1, "the trickle never broke --body-timeout"
    finally:
        gateway.stop()


def test_idle_keepalive_connection_is_closed(tmp_path: Path) -> None:
    gateway, _, fcgi_port = _start(tmp_path, "--workers", "1", "--keepalive-timeout", "1")
    try:
        with socket.create_connection(("127.0.0.1", fcgi_port)) as sock:
            sock.sendall(encode_request(1, {**PARAMS, "REQUEST_METHOD": "GET", "PATH_INFO": "/hello"}))
            client = ClientConnection()
            ended = False
            while not ended:
                ended = any(isinstance(event, EndRequest) for event in client.receive_data(sock.recv(65536)))
            assert _closed_by_server(sock, 5)
        assert "(--keepalive-timeout); closed" in gateway.log_text()
    finally:
        gateway.stop()


def test_max_connections_stops_accepting_and_resumes(tmp_path: Path) -> None:
    gateway, uwsgi_port, _ = _start(tmp_path, "--workers", "1", "--max-connections", "3")
    idle = [socket.create_connection(("127.0.0.1", uwsgi_port)) for _ in range(3)]
    try:
        wait_for(lambda: "(--max-connections): not accepting" in gateway.log_text(), 5, "the pause")
        waiting = socket.create_connection(("127.0.0.1", uwsgi_port), timeout=5)
        waiting.sendall(encode_uwsgi_request({**PARAMS, "REQUEST_METHOD": "GET", "PATH_INFO": "/hello"}))
        assert accept_queue(uwsgi_port) == 1, "not accepted while the gateway is at its connection cap"
        assert unread(waiting) == 0
        idle.pop().close()
        waiting.settimeout(5)
        reply = b""
        while chunk := waiting.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"hello")
        waiting.close()
        assert "accepting again" in gateway.log_text()
    finally:
        for sock in idle:
            sock.close()
        gateway.stop()


def test_file_descriptor_limit_is_raised(tmp_path: Path) -> None:
    gateway, _, _ = _start(tmp_path, "--workers", "1")
    try:
        assert gateway.process is not None
        limits = Path(f"/proc/{gateway.process.pid}/limits").read_text()
        soft, hard = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits).groups()  # type: ignore[union-attr]
        assert soft == hard
    finally:
        gateway.stop()


def test_trickled_body_never_occupies_the_worker(tmp_path: Path) -> None:
    """A 40-byte body sent one byte every 0.1 s: the only worker keeps serving others meanwhile."""
    gateway, uwsgi_port, _ = _start(tmp_path, "--workers", "1")
    body = b"slow body arriving one byte at a time!!!"
    result: dict[str, bytes] = {}
    begun, sent = threading.Event(), threading.Event()

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", uwsgi_port), timeout=30) as sock:
            sock.sendall(encode_uwsgi_request({**PARAMS, "CONTENT_LENGTH": str(len(body))}))
            begun.set()
            for byte in body:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)  # the slow client's pace
            sent.set()
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            result["reply"] = b"".join(chunks)

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        assert begun.wait(10)
        served_meanwhile = 0
        while not sent.is_set() and served_meanwhile < 10:
            _fast_request(uwsgi_port)
            served_meanwhile += not sent.is_set()
        thread.join(30)
        assert served_meanwhile == 10, "fast requests are served while the body is still arriving"
        assert hashlib.sha256(body).hexdigest().encode() in result["reply"]
    finally:
        gateway.stop()


def test_slow_reader_of_50_mb_does_not_hold_the_worker_and_gets_every_byte(tmp_path: Path) -> None:
    gateway, uwsgi_port, _ = _start(tmp_path, "--workers", "1")
    size = 50 << 20
    try:
        reader = socket.create_connection(("127.0.0.1", uwsgi_port), timeout=30)
        reader.sendall(
            encode_uwsgi_request(
                {**PARAMS, "REQUEST_METHOD": "GET", "PATH_INFO": "/download", "QUERY_STRING": f"size={size}"}
            )
        )
        received = bytearray(reader.recv(100))  # the response has started; now read nothing until the end
        _fast_request(uwsgi_port)
        expected = hashlib.sha256()
        for piece in pattern(size):
            expected.update(piece)
        while chunk := reader.recv(1 << 20):
            received += chunk
        reader.close()
        body = bytes(received).split(b"\r\n\r\n", 1)[1]
        assert len(body) == size
        assert hashlib.sha256(body).digest() == expected.digest()
    finally:
        gateway.stop()


def test_whole_uwsgi_response_reaches_a_late_reader_and_then_the_connection_closes(tmp_path: Path) -> None:
    """A whole response (under 64 KiB) goes from the worker's frame straight to the transport, which sends what the
    socket does not take at once later and closes the connection only then."""
    gateway, uwsgi_port, _ = _start(tmp_path, "--workers", "1")
    size = 60_000
    try:
        for _ in range(3):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as reader:
                reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                reader.settimeout(10)  # a response that never ends in a close fails here
                reader.connect(("127.0.0.1", uwsgi_port))
                query = f"size={size}&whole=1"
                reader.sendall(
                    encode_uwsgi_request(
                        {**PARAMS, "REQUEST_METHOD": "GET", "PATH_INFO": "/download", "QUERY_STRING": query}
                    )
                )
                wait_for(lambda: unread(reader) > 0, 10, "the response arriving before the reader reads")
                received = bytearray()
                while chunk := reader.recv(1024):
                    received += chunk
            head, body = bytes(received).split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert len(body) == size
            assert hashlib.sha256(body).hexdigest().encode() in head
    finally:
        gateway.stop()


def _deleted_files(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith("(deleted)"):
                count += 1
        except OSError:
            continue
    return count


def test_disconnects_remove_temporary_files(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    gateway, uwsgi_port, _ = _start(
        tmp_path,
        "--workers",
        "1",
        "--spool-dir",
        str(spool),
        "--body-spool-threshold",
        "1024",
        "--response-spool-threshold",
        "1024",
    )
    assert gateway.process is not None
    try:
        # A body past the threshold, cut off half-way: its named temp file goes.
        with socket.create_connection(("127.0.0.1", uwsgi_port)) as sock:
            sock.sendall(encode_uwsgi_request({**PARAMS, "CONTENT_LENGTH": str(1 << 20)}, b"x" * (256 << 10)))
            wait_for(lambda: any(spool.rglob("*")) and any(p.is_file() for p in spool.rglob("*")), 5, "a body file")
        wait_for(lambda: not any(p.is_file() for p in spool.rglob("*")), 5, "the body file removed")
        # A response spooled for a reader that leaves: its unnamed temp file is closed.
        sock = socket.create_connection(("127.0.0.1", uwsgi_port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            encode_uwsgi_request(
                {**PARAMS, "REQUEST_METHOD": "GET", "PATH_INFO": "/download", "QUERY_STRING": "size=30000000"}
            )
        )
        wait_for(lambda: _deleted_files(gateway.process.pid) > 0, 10, "a response spool file")
        sock.close()
        wait_for(lambda: _deleted_files(gateway.process.pid) == 0, 10, "the spool file closed")
        _fast_request(uwsgi_port)
    finally:
        gateway.stop()


def test_thousands_of_idle_connections_leave_the_worker_serving(tmp_path: Path) -> None:
    """3000 connections that send nothing or half a request, held open at once against one worker: requests on
    both fronts are served meanwhile, and every idle connection is still open (so all of them were held)."""
    count = 3000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    gateway, uwsgi_port, fcgi_port = _start(tmp_path, "--workers", "1", "--header-timeout", "120")
    assert gateway.process is not None
    idle: list[socket.socket] = []
    try:
        half_fastcgi = encode_request(1, PARAMS)[:20]
        half_uwsgi = encode_uwsgi_request(PARAMS)[:10]
        for index in range(count):
            port = (uwsgi_port, fcgi_port)[index % 2]
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            if index % 3 == 0:
                sock.sendall(half_uwsgi if port == uwsgi_port else half_fastcgi)
            idle.append(sock)
        pid = gateway.process.pid
        wait_for(lambda: len(os.listdir(f"/proc/{pid}/fd")) > count, 30, f"the gateway holding {count} connections")
        for _ in range(5):
            _fast_request(uwsgi_port)
        with socket.create_connection(("127.0.0.1", fcgi_port), timeout=10) as sock:
            sock.sendall(encode_request(1, {**PARAMS, "REQUEST_METHOD": "GET", "PATH_INFO": "/hello"}))
            client, ended = ClientConnection(), False
            while not ended:
                ended = any(isinstance(event, EndRequest) for event in client.receive_data(sock.recv(65536)))
        for sock in idle:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)  # neither data nor a close: still held
    finally:
        for sock in idle:
            sock.close()
        gateway.stop()
