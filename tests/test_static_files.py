"""``--static URL=DIR`` served by the event loop: through a real gateway over FastCGI and uwsgi (TCP and unix),
content (a multi-record file byte for byte), headers, HEAD, Range, 304, and every traversal attempt a 404; the
worker never sees these requests (the access log, written for worker responses, has no line for them, and the app
that would answer 200 to any path is not what answers). Range and path decisions also in-process.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.processes import GatewayProcess
from gateway.config.errors import ConfigError
from gateway.config.static_dirs import parse_static
from gateway.loop.static import StaticFiles, _segments, parse_range
from gateway.ops.probe import Answer, Target, request
from gateway.protocols.fastcgi import EndRequest, Stdout
from gateway.protocols.fastcgi.client import ClientConnection, encode_abort, encode_request
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
BIG = bytes(range(256)) * 1200  # 300 KiB: several FastCGI records and sendfile calls
TEXT = b"plain text\n"
RANDOM = os.urandom(4 << 20)  # every byte in its place: pieces out of order or interleaved would show
#: A file too large for any socket buffer to swallow whole, so a test can leave or abort in the middle of it.
HUGE = 256 << 20


@dataclass
class Served:
    gateway: GatewayProcess
    targets: dict[str, str]
    root: Path
    access_log: Path
    fcgi: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    scratch = tmp_path_factory.mktemp("static")
    root = scratch / "files"
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(BIG)
    (root / "random.bin").write_bytes(RANDOM)
    with (root / "huge.bin").open("wb") as huge:
        huge.truncate(HUGE)  # sparse: no disk, yet more than any socket buffer holds
    (root / "a.txt").write_bytes(TEXT)
    (root / "sub" / "style.css").write_bytes(b"body{}\n")
    (root / "empty.txt").write_bytes(b"")
    (scratch / "secret.txt").write_bytes(b"outside\n")
    (root / "link-out.txt").symlink_to(scratch / "secret.txt")
    (root / "dir-out").symlink_to(scratch)
    (root / "link-in.txt").symlink_to(root / "a.txt")
    fcgi, uwsgi, http = (f"127.0.0.1:{free_port()}" for _ in range(3))
    fcgi_unix, uwsgi_unix = scratch / "f.sock", scratch / "u.sock"
    access_log = scratch / "access.log"
    gateway = GatewayProcess(
        scratch,
        ["--fcgi", fcgi, "--uwsgi", uwsgi, "--fcgi", f"unix:{fcgi_unix}", "--uwsgi", f"unix:{uwsgi_unix}",
         "--http", http, "--static", f"/static={root}", "--workers", "1", "--access-log", str(access_log),
         "tests.apps:app"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).start()  # fmt: skip
    targets = {
        "fcgi": f"fcgi://{fcgi}",
        "uwsgi": f"uwsgi://{uwsgi}",
        "fcgi-unix": f"fcgi+unix:{fcgi_unix}:",
        "uwsgi-unix": f"uwsgi+unix:{uwsgi_unix}:",
        "http": http,
    }
    try:
        yield Served(gateway, targets, root, access_log, fcgi)
    finally:
        gateway.stop()


def _get(
    served: Served, via: str, uri: str, headers: list[tuple[str, str]] | None = None, method: str = "GET"
) -> Answer:
    if via == "http":
        connection = http.client.HTTPConnection(served.targets["http"], timeout=20)
        try:
            connection.putrequest(method, uri, skip_accept_encoding=True)
            for name, value in headers or []:
                connection.putheader(name, value)
            connection.endheaders()
            response = connection.getresponse()
            return Answer(response.status, response.reason, response.getheaders(), response.read())
        finally:
            connection.close()
    return request(Target.parse(served.targets[via] + uri), method, headers or [], b"", 20.0)


def _header(answer: Answer, name: str) -> str | None:
    return next((value for key, value in answer.headers if key.lower() == name.lower()), None)


VIAS = ["fcgi", "uwsgi", "fcgi-unix", "uwsgi-unix", "http"]


@pytest.mark.parametrize("via", VIAS)
def test_content_and_headers(served: Served, via: str) -> None:
    big = _get(served, via, "/static/big.bin")
    assert big.status == 200
    assert hashlib.sha256(big.body).digest() == hashlib.sha256(BIG).digest()
    assert _header(big, "Content-Length") == str(len(BIG))
    assert _header(big, "Content-Type") == "application/octet-stream"
    mtime = int((served.root / "big.bin").stat().st_mtime)
    assert _header(big, "Last-Modified") == email.utils.formatdate(mtime, usegmt=True)
    css = _get(served, via, "/static/sub/style.css")
    assert (css.status, css.body, _header(css, "Content-Type")) == (200, b"body{}\n", "text/css; charset=utf-8")
    assert _get(served, via, "/static/empty.txt").body == b""
    assert _get(served, via, "/static/link-in.txt").body == TEXT  # a symlink inside the directory is fine


@pytest.mark.parametrize("via", ["fcgi", "uwsgi", "http"])
def test_head_range_and_not_modified(served: Served, via: str) -> None:
    head = _get(served, via, "/static/big.bin", method="HEAD")
    assert (head.status, head.body, _header(head, "Content-Length")) == (200, b"", str(len(BIG)))
    part = _get(served, via, "/static/big.bin", [("Range", "bytes=1000-70999")])
    assert part.status == 206
    assert part.body == BIG[1000:71000]
    assert _header(part, "Content-Range") == f"bytes 1000-70999/{len(BIG)}"
    tail = _get(served, via, "/static/big.bin", [("Range", "bytes=-10")])
    assert (tail.status, tail.body) == (206, BIG[-10:])
    beyond = _get(served, via, "/static/big.bin", [("Range", f"bytes={len(BIG)}-")])
    assert (beyond.status, _header(beyond, "Content-Range")) == (416, f"bytes */{len(BIG)}")
    modified = _header(head, "Last-Modified")
    assert modified is not None
    cached = _get(served, via, "/static/big.bin", [("If-Modified-Since", modified)])
    assert (cached.status, cached.body) == (304, b"")
    stale = _get(served, via, "/static/big.bin", [("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")])
    assert stale.status == 200
    assert _get(served, via, "/static/a.txt", method="POST").status == 405


TRAVERSALS = [
    "/static/../apps.py",
    "/static/%2e%2e/secret.txt",
    "/static/sub/..%2f..%2fsecret.txt",
    "/static/sub%2fstyle.css",
    "/static/sub%5c..%5csecret.txt",
    "/static/link-out.txt",
    "/static/dir-out/secret.txt",
    "/static/sub",
    "/static/",
    "/static/missing.txt",
    "/static/a.txt%00.png",
]


@pytest.mark.parametrize("via", ["fcgi", "uwsgi", "http"])
@pytest.mark.parametrize("uri", TRAVERSALS)
def test_nothing_outside_the_directory(served: Served, via: str, uri: str) -> None:
    answer = _get(served, via, uri)
    assert answer.status == 404, (uri, answer)
    assert b"outside" not in answer.body


def test_the_worker_never_sees_static_requests(served: Served) -> None:
    assert _get(served, "fcgi", "/static/a.txt?never-logged").status == 200
    dynamic = _get(served, "fcgi", "/hello?logged")
    assert (dynamic.status, dynamic.body) == (200, b"hello")
    log = served.access_log.read_text()  # line-buffered: the dynamic line is written before its response leaves
    assert "/hello?logged" in log
    assert "never-logged" not in log
    assert _get(served, "fcgi", "/statics/a.txt").body != TEXT  # only the prefix itself is mapped


def test_path_segments_refuse_what_could_escape() -> None:
    assert _segments("/sub/style.css") == ["sub", "style.css"]
    assert _segments("/a%20b.txt") == ["a b.txt"]
    for bad in ("/..", "/./a", "/%2e%2e/x", "/a%2fb", "/a%5cb", "/a%00b"):
        assert _segments(bad) is None, bad


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", (0, 9)),
        ("bytes=5-", (5, 99)),
        ("bytes=-5", (95, 99)),
        ("bytes=90-200", (90, 99)),
        ("bytes=-500", (0, 99)),
        ("bytes=100-", False),
        ("bytes=-0", False),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=9-3", None),
        ("bytes=x-3", None),
    ],
)
def test_range_decisions(header: str, expected: object) -> None:
    assert parse_range(header, 100) == expected


def _connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader: sendfile meets a full socket
    sock.settimeout(30)
    sock.connect((host, int(port)))
    return sock


def test_a_file_and_dynamic_pages_multiplexed_on_one_fastcgi_connection(served: Served) -> None:
    """While the file goes out with sendfile, the worker's answers to the other requests on the connection wait in
    its buffer: every response arrives whole and in its own records."""
    with _connect(served.fcgi) as sock:
        requests = [encode_request(1, _params("/static/random.bin"), keep_conn=True)]
        requests += [encode_request(i, _params("/hello"), keep_conn=True) for i in range(2, 6)]
        sock.sendall(b"".join(requests))
        client = ClientConnection()
        stdout: dict[int, bytearray] = {i: bytearray() for i in range(1, 6)}
        ended: set[int] = set()
        while len(ended) < 5:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed; ended: {ended}"
            for event in client.receive_data(chunk):
                if isinstance(event, Stdout):
                    stdout[event.request_id] += event.data
                elif isinstance(event, EndRequest):
                    ended.add(event.request_id)
    head, _, body = bytes(stdout[1]).partition(b"\r\n\r\n")
    assert head.startswith(b"Status: 200 OK\r\n")
    assert body == RANDOM
    for request_id in range(2, 6):
        assert bytes(stdout[request_id]).endswith(b"\r\n\r\nhello")


def test_a_client_leaving_mid_file_costs_only_its_connection(served: Served) -> None:
    assert _get(served, "fcgi", "/hello").body == b"hello"
    before = served.gateway.open_files()
    with _connect(served.fcgi) as sock:
        sock.sendall(encode_request(1, _params("/static/huge.bin"), keep_conn=False))
        assert sock.recv(4096)
        assert served.gateway.open_files() == before + 1  # the file, held while the client does not read
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    wait_for(lambda: served.gateway.open_files() == before, 20, "the file closed once its client left")
    assert _get(served, "fcgi", "/static/a.txt").body == TEXT
    assert _get(served, "fcgi", "/hello").body == b"hello"


def test_an_aborted_file_stops_at_a_record_boundary(served: Served) -> None:
    """ABORT_REQUEST for a file being sent: its records stop whole, END_REQUEST follows, the connection goes on."""
    with _connect(served.fcgi) as sock:
        sock.sendall(encode_request(1, _params("/static/huge.bin"), keep_conn=True))
        client = ClientConnection()
        received = 0
        ended: set[int] = set()
        hello = bytearray()
        aborted = False
        while len(ended) < 2:
            chunk = sock.recv(4096)
            assert chunk, f"connection closed; ended: {ended}"
            for event in client.receive_data(chunk):  # a cut record would raise here
                if isinstance(event, Stdout) and event.request_id == 1:
                    received += len(event.data)
                elif isinstance(event, Stdout):
                    hello += event.data
                elif isinstance(event, EndRequest):
                    ended.add(event.request_id)
            if not aborted and received:
                sock.sendall(encode_abort(1) + encode_request(2, _params("/hello"), keep_conn=True))
                aborted = True
    assert received < HUGE
    assert bytes(hello).endswith(b"\r\n\r\nhello")


def _params(uri: str) -> dict[str, str]:
    return {"REQUEST_METHOD": "GET", "REQUEST_URI": uri, "SCRIPT_NAME": "", "PATH_INFO": uri, "QUERY_STRING": "",
            "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1"}  # fmt: skip


def test_a_relative_directory_is_read_from_the_apps_directory(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    mount = parse_static("/s=assets")[0]
    assert mount.directory == "assets"  # kept as written until --chdir is known
    assert mount.resolved(str(tmp_path)).directory == str(tmp_path / "assets")
    with pytest.raises(ConfigError, match="is not a directory"):
        StaticFiles([parse_static("/s=no-such-dir")[0]])
