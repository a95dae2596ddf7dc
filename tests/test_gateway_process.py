"""The gateway as a process: CLI, start-up failures, listeners, allow-lists, spooling, shutdown, make run."""

from __future__ import annotations

import argparse
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.nginx import Nginx
from devstack.ports import free_port
from devstack.processes import GatewayProcess
from gateway.config.addresses import Address
from gateway.config.cli import build_config, build_parser
from gateway.config.errors import ConfigError
from gateway.protocols.fastcgi import ClientConnection, EndRequest, Stdout, encode_request
from gateway.protocols.uwsgi import encode_request as encode_uwsgi_request
from tests.http import request
from tests.waiting import Gate, wait_for

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _gateway(tmp_path: Path, *args: str) -> GatewayProcess:
    return GatewayProcess(tmp_path, list(args), env=ENV)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":9000", Address(host="127.0.0.1", port=9000)),
        ("0.0.0.0:9000", Address(host="0.0.0.0", port=9000)),
        ("[::1]:9001", Address(host="::1", port=9001)),
        ("unix:/run/app.sock", Address(path="/run/app.sock")),
    ],
)
def test_address_parsing(text: str, expected: Address) -> None:
    assert Address.parse(text) == expected


@pytest.mark.parametrize("text", ["9000", "host:", "unix:", "host:99999", "host:port"])
def test_bad_addresses_are_named(text: str) -> None:
    with pytest.raises(ConfigError, match="listen address"):
        Address.parse(text)


def test_cli_builds_config() -> None:
    config = build_config(
        [
            "--fcgi",
            ":9000",
            "--uwsgi",
            "unix:/tmp/x.sock",
            "--workers",
            "3",
            "--allow-from",
            "10.0.0.0/8,127.0.0.1",
            "--socket-mode",
            "660",
            "app:wsgi",
        ]
    )
    assert [listen.protocol for listen in config.listeners] == ["fastcgi", "uwsgi"]
    assert config.workers == 3 and config.socket_mode == 0o660 and config.app == "app:wsgi"
    assert len(config.allow_from) == 2
    with pytest.raises(ConfigError, match="nothing to listen on"):
        build_config(["app:wsgi"])


def test_help_and_readme_document_every_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
        timeout=30,
    )
    readme = (ROOT / "README.md").read_text()
    options = [
        option
        for action in build_parser()._actions
        if action.help != argparse.SUPPRESS and action.dest not in ("help", "version")
        for option in action.option_strings
        if option.startswith("--")
    ]
    assert len(options) > 40
    for option in options:
        assert option in result.stdout, option
        assert f"`{option}" in readme, f"{option} is missing from the README's option tables"


def test_app_import_error_exits_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "--fcgi",
            f"unix:{tmp_path}/s",
            "--workers",
            "2",
            "no_such_module:app",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert result.returncode == 3
    assert "cannot import module 'no_such_module'" in result.stderr
    assert result.stderr.count("starting a replacement") == 0


def test_address_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "--fcgi", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"cannot listen for fastcgi on 127.0.0.1:{port}" in result.stderr


def test_unix_socket_stale_file_replaced_mode_set_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as a crashed run leaves it
    gateway = _gateway(
        tmp_path, "--uwsgi", f"unix:{path}", "--socket-mode", "660", "--workers", "1", "tests.apps:app"
    ).start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(encode_uwsgi_request({"REQUEST_METHOD": "GET", "PATH_INFO": "/hello"}))
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert reply.endswith(b"\r\n\r\nhello")
        # A second gateway must not steal a live socket.
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "--uwsgi", f"unix:{path}"],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=60,
        )
        assert result.returncode == 2 and "another server is listening" in result.stderr
    finally:
        assert gateway.stop() == 0
    assert not path.exists()


def _closed_without_answer(sock: socket.socket) -> bool:
    """Closed (FIN, or RST since our request was left unread) without a byte of response."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_allow_from_refuses_other_peers(tmp_path: Path) -> None:
    port = free_port()
    gateway = _gateway(
        tmp_path, "--fcgi", f"127.0.0.1:{port}", "--allow-from", "192.0.2.0/24", "--workers", "1"
    ).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(encode_request(1, {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/"}))
            assert _closed_without_answer(sock)
        assert "not in the allow-list" in gateway.log_text()
    finally:
        gateway.stop()


def test_fcgi_web_server_addrs_is_honoured(tmp_path: Path) -> None:
    port = free_port()
    gateway = GatewayProcess(
        tmp_path,
        ["--fcgi", f"127.0.0.1:{port}", "--workers", "1"],
        env={**ENV, "FCGI_WEB_SERVER_ADDRS": "127.0.0.2, 192.0.2.7"},
    ).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(encode_request(1, {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/"}))
            assert _closed_without_answer(sock)
    finally:
        gateway.stop()
    gateway = GatewayProcess(
        tmp_path,
        ["--fcgi", f"127.0.0.1:{port}", "--workers", "1"],
        env={**ENV, "FCGI_WEB_SERVER_ADDRS": "127.0.0.1"},
    ).start()
    try:
        assert b"It works" in _fastcgi_get(port, "/")
    finally:
        gateway.stop()


def _fastcgi_get(port: int, path: str) -> bytes:
    codec = ClientConnection()
    output = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            encode_request(
                1,
                {"REQUEST_METHOD": "GET", "SCRIPT_NAME": path, "SERVER_NAME": "t", "SERVER_PORT": "80"},
                keep_conn=False,
            )
        )
        while True:
            data = sock.recv(1 << 16)
            events = codec.receive_data(data)
            for event in events:
                if isinstance(event, Stdout):
                    output += event.data
                elif isinstance(event, EndRequest):
                    return bytes(output)
            if not data:
                raise AssertionError("closed before END_REQUEST")


def test_large_bodies_spool_to_files_that_are_removed(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    port = free_port()
    gateway = _gateway(
        tmp_path,
        "--uwsgi",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--spool-dir",
        str(spool),
        "--body-spool-threshold",
        "1000",
        "tests.apps:app",
    ).start()
    try:
        body = os.urandom(300_000)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                encode_uwsgi_request(
                    {"REQUEST_METHOD": "POST", "PATH_INFO": "/echo", "CONTENT_LENGTH": str(len(body))}, body
                )
            )
            reply = b""
            while chunk := sock.recv(1 << 16):
                reply += chunk
        assert b'"body_length": 300000' in reply
        # A client that sends half a body and leaves: its temp file must go too.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(
                encode_uwsgi_request(
                    {"REQUEST_METHOD": "POST", "PATH_INFO": "/echo", "CONTENT_LENGTH": str(len(body))}, body
                )[:200_000]
            )
            wait_for(lambda: list(spool.glob("*/body-*")), 10, "the partial body spooled to a file")
        wait_for(lambda: not list(spool.glob("*/body-*")), 10, "the partial body's file removed")
    finally:
        gateway.stop()
    assert not list(spool.iterdir()), "the spool directory is removed at exit"


def test_slow_readers_do_not_hold_workers(tmp_path: Path) -> None:
    """Three clients that read nothing of a 20 MB response; the single worker still serves a fourth."""
    port = free_port()
    gateway = _gateway(tmp_path, "--uwsgi", f"127.0.0.1:{port}", "--workers", "1", "tests.apps:app").start()
    sleepers = []
    try:
        for _ in range(3):
            # Default buffers: a tiny receive window would make the final read crawl on delayed ACKs, and 20 MB is
            # far beyond what loopback socket buffers hold anyway.
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(
                encode_uwsgi_request(
                    {"REQUEST_METHOD": "GET", "PATH_INFO": "/download", "QUERY_STRING": f"size={20 << 20}"}
                )
            )
            sleepers.append(sock)
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(encode_uwsgi_request({"REQUEST_METHOD": "GET", "PATH_INFO": "/hello"}))
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert reply.endswith(b"hello")
        assert time.monotonic() - started < 10
        # The slow readers still get every byte, from the loop's spool.
        sleeper = sleepers[0]
        received = 0
        while chunk := sleeper.recv(1 << 20):
            received += len(chunk)
        assert received > 20 << 20
    finally:
        for sock in sleepers:
            sock.close()
        gateway.stop()


def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    port = free_port()
    gateway = _gateway(tmp_path, "--uwsgi", f"127.0.0.1:{port}", "--workers", "1", "tests.apps:app").start()
    gate = Gate(tmp_path)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            encode_uwsgi_request({"REQUEST_METHOD": "GET", "PATH_INFO": "/hold", "QUERY_STRING": gate.query()})
        )
        gate.wait_started()
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "received SIGTERM" in gateway.log_text(), 10, "the gateway to take the signal")
        gate.release()  # the request, in flight when the signal came, finishes now
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert gateway.process.wait(30) == 0


@pytest.mark.parametrize("sigint", ["default", "inherited ignored"])
def test_demo_stack_serves_and_stops_on_ctrl_c(tmp_path: Path, sigint: str) -> None:
    """What `make run` does, on free ports: "Ready:", the demo page through nginx, then Ctrl-C (SIGINT) stops all;
    also when it was started with SIGINT ignored, as a background job of a non-interactive shell (a CI runner) is."""
    port, fcgi, uwsgi = free_port(), free_port(), free_port()
    command = [sys.executable, "-m", "devstack.stack", "--port", str(port), "--fcgi", f"127.0.0.1:{fcgi}",
               "--uwsgi", f"127.0.0.1:{uwsgi}", "--scratch", str(tmp_path / "run")]  # fmt: skip
    if sigint == "inherited ignored":
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]  # SIG_IGN survives exec
    process = subprocess.Popen(
        command,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        # A user presses Ctrl-C once the stack says it is ready, as the test does.
        printed = _read_until(process, b"Ctrl-C stops everything", timeout=30)
        assert f"Ready: curl http://127.0.0.1:{port}/".encode() in printed
        reply = request(f"http://127.0.0.1:{port}", "GET", "/")
        assert reply.status == 200 and b"It works" in reply.body
        # The app sees the same path over both: the stack tells the gateway where nginx mounts uwsgi.
        for mounted, path in (("", "/admin/login/"), ("/uwsgi", "/admin/login/")):
            page = request(f"http://127.0.0.1:{port}", "GET", mounted + path).body
            assert f"<th>SCRIPT_NAME</th><td>{mounted}</td>".encode() in page
            assert f"<th>PATH_INFO</th><td>{path}</td>".encode() in page
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
    assert "serving the built-in demo app" in (tmp_path / "run" / "gateway.log").read_text()
    for probe in (port, fcgi, uwsgi):
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", probe), timeout=1):
            pass


def test_nginx_fixture_fails_without_nginx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing nginx is an error with the fix in it, never a skip."""
    from devstack import stack as devstack

    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("os.access", lambda path, mode: False)
    with pytest.raises(devstack.StackError, match="apt-get install"):
        Nginx(tmp_path, free_port(), ":1", ":2").start()


def test_body_over_max_body_size_is_answered_413(tmp_path: Path) -> None:
    uwsgi_port, fcgi_port = free_port(), free_port()
    gateway = _gateway(
        tmp_path,
        "--uwsgi",
        f"127.0.0.1:{uwsgi_port}",
        "--fcgi",
        f"127.0.0.1:{fcgi_port}",
        "--max-body-size",
        "1000",
        "--workers",
        "1",
        "tests.apps:app",
    ).start()
    params = {"REQUEST_METHOD": "POST", "PATH_INFO": "/echo", "CONTENT_LENGTH": "5000", "SERVER_PROTOCOL": "HTTP/1.1"}
    try:
        with socket.create_connection(("127.0.0.1", uwsgi_port), timeout=10) as sock:
            sock.sendall(encode_uwsgi_request(params, b"x" * 5000))
            reply = b""
            while chunk := sock.recv(4096):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 413")
        with socket.create_connection(("127.0.0.1", fcgi_port), timeout=10) as sock:
            sock.sendall(encode_request(1, params, b"x" * 5000, keep_conn=False))
            client = ClientConnection()
            stdout = b""
            while chunk := sock.recv(4096):
                for event in client.receive_data(chunk):
                    if isinstance(event, Stdout):
                        stdout += event.data
        assert stdout.startswith(b"Status: 413")
        assert gateway.log_text().count("(--max-body-size); answered 413") == 2
    finally:
        gateway.stop()


@pytest.mark.parametrize("store", ["memcached://localhost", "redis://127.0.0.1:6379", "memcached://h:99999"])
def test_bad_session_store_is_a_clear_error(store: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--uwsgi", f"127.0.0.1:{free_port()}", "--sessions", store],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "memcached://HOST:PORT" in result.stderr
    assert "Traceback" not in result.stderr


def _segments_received(sock: socket.socket) -> int:
    """tcpi_segs_in of Linux's struct tcp_info: segments this socket has received."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int.from_bytes(info[140:144], sys.byteorder)


def test_response_and_close_leave_in_one_segment(tmp_path: Path) -> None:
    """On TCP the connection is corked before its close, so the response's last segment carries the FIN.

    The client then receives three segments: the SYN-ACK, the ACK of its request and the response with the FIN
    (four when the FIN follows in a segment of its own; fewer if the kernel delays its ACK onto the response).
    """
    uwsgi_port, fcgi_port = free_port(), free_port()
    args = ["--uwsgi", f"127.0.0.1:{uwsgi_port}", "--fcgi", f"127.0.0.1:{fcgi_port}", "--workers", "1"]
    gateway = _gateway(tmp_path, *args, "tests.apps:app").start()
    params = {"REQUEST_METHOD": "GET", "PATH_INFO": "/hello", "SCRIPT_NAME": "", "SERVER_PROTOCOL": "HTTP/1.1"}
    try:
        for port, request_bytes in (
            (uwsgi_port, encode_uwsgi_request(params)),
            (fcgi_port, encode_request(1, params, keep_conn=False)),
        ):
            for _ in range(5):
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(request_bytes)
                    received = b""
                    while chunk := sock.recv(1 << 16):
                        received += chunk
                    assert b"hello" in received
                    assert _segments_received(sock) <= 3
    finally:
        gateway.stop()


def _read_until(process: subprocess.Popen[bytes], marker: bytes, timeout: float) -> bytes:
    """What ``process`` prints up to and including ``marker``, read without blocking past ``timeout``."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    printed = b""
    deadline = time.monotonic() + timeout
    while marker not in printed:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} within {timeout:g} s; printed: {printed.decode(errors='replace')}"
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 65536)
            assert chunk, f"exited before {marker!r}; printed: {printed.decode(errors='replace')}"
            printed += chunk
    return printed
