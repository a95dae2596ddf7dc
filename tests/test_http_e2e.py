"""The --http listener through real sockets: a real gateway (and workers), raw and http.client clients, TLS with
a throwaway certificate, and a real nginx proxy_pass in front with request buffering off.

Each test drives socket -> loop -> worker -> socket; the decisions themselves are unit-tested on fakes in
test_front_http.py.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import json
import os
import random
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devstack.nginx import Location, Nginx, Upstream
from devstack.ports import free_port
from devstack.processes import GatewayProcess
from tests.load import wait_for

ROOT = Path(__file__).resolve().parent.parent
#: The proxy the gateway trusts; plain clients connect from 127.0.0.1, which it does not.
PROXY_ADDRESS = "127.0.0.2"
MAX_BODY = 1 << 20


@dataclass
class Servers:
    port: int
    tls_port: int
    cafile: Path
    nginx: Nginx
    #: Unix-socket listeners of the plain gateway (which trusts proxies) and of a gateway that trusts none.
    trusting_unix: Path
    untrusting_unix: Path


def _certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made for this run only."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certfile, keyfile


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    scratch = tmp_path_factory.mktemp("http")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port, tls_port = free_port(), free_port()
    common = ["--workers", "1", "--graceful-timeout", "2", "--max-body-size", str(MAX_BODY)]
    trusting_unix, untrusting_unix = scratch / "trusting.sock", scratch / "untrusting.sock"
    plain = GatewayProcess(
        scratch / "plain",
        ["--http", f"127.0.0.1:{port}", "--http", f"unix:{trusting_unix}",
         "--forwarded-allow-ips", PROXY_ADDRESS, "--header-timeout", "1", *common, "tests.apps:validated_app"],
        env=env,
    )  # fmt: skip
    certfile, keyfile = _certificate(scratch)
    tls = GatewayProcess(
        scratch / "tls",
        ["--http", f"127.0.0.1:{tls_port}", "--certfile", str(certfile), "--keyfile", str(keyfile), *common,
         "tests.apps:validated_app"],
        env=env,
    )  # fmt: skip
    untrusting = GatewayProcess(
        scratch / "untrusting", ["--http", f"unix:{untrusting_unix}", *common, "tests.apps:validated_app"], env=env
    )
    nginx = Nginx(
        scratch / "nginx",
        free_port(),
        upstreams=[Upstream("gateway_http", f"127.0.0.1:{port}")],
        locations=[Location("/", "gateway_http", "http", buffered=False)],
        extra=f"proxy_bind {PROXY_ADDRESS}; proxy_set_header Host $host; "
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;",
    )
    (scratch / "nginx").mkdir()
    plain.start()
    try:
        tls.start()
        try:
            untrusting.start()
            try:
                nginx.start()
                try:
                    yield Servers(port, tls_port, certfile, nginx, trusting_unix, untrusting_unix)
                finally:
                    nginx.stop()
            finally:
                untrusting.stop()
        finally:
            tls.stop()
    finally:
        plain.stop()


class _SharedReader:
    """Hands http.client the connection's one buffered reader, so pipelined responses are read in turn."""

    def __init__(self, reader: object) -> None:
        self.reader = reader

    def makefile(self, mode: str) -> object:
        return self.reader


class _Response(http.client.HTTPResponse):
    def _close_conn(self) -> None:  # a response read to its end leaves the connection's reader open
        self.fp = None  # type: ignore[assignment]


# -- a raw client ---------------------------------------------------------------------------------------------
class Client:
    """A raw socket that reads HTTP/1.1 responses one at a time with http.client's parser."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20, source_address=(source, 0))
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> http.client.HTTPResponse:
        response = _Response(_SharedReader(self.reader), method=method)  # type: ignore[arg-type]
        response.begin()
        return response

    def closed_by_server(self) -> bool:
        return self.reader.read() == b""

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def client(servers: Servers) -> Iterator[Client]:
    connection = Client(servers.port)
    yield connection
    connection.close()


def _get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


# -- keep-alive, pipelining, framing --------------------------------------------------------------------------
def test_keep_alive_serves_requests_on_one_connection(client: Client) -> None:
    for _ in range(3):
        client.send(_get("/hello"))
        response = client.response()
        assert (response.status, response.read()) == (200, b"hello")
        assert response.getheader("Content-Length") == "5"
        assert response.getheader("Server") == "gateway"
        assert response.getheader("Date")


def test_pipelined_requests_come_back_in_order(client: Client) -> None:
    client.send(b"".join(_get(f"/echo?i={index}") for index in range(5)))
    assert [json.loads(client.response().read())["query"] for _ in range(5)] == [f"i={i}" for i in range(5)]


def test_chunked_upload_is_decoded_with_its_checksum(client: Client) -> None:
    body = random.randbytes(300_000)
    pieces = []
    position = 0
    while position < len(body):
        size = random.randint(1, 50_000)
        piece = body[position : position + size]
        pieces.append(b"%x\r\n%s\r\n" % (len(piece), piece))
        position += size
    client.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(pieces) + b"0\r\n\r\n"
    )
    reply = json.loads(client.response().read())
    assert reply["body_length"] == len(body)
    assert reply["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_100_continue_accepted_then_the_body(client: Client) -> None:
    client.send(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    assert client.reader.readline() == b"HTTP/1.1 100 Continue\r\n"
    assert client.reader.readline() == b"\r\n"
    client.send(b"body")
    assert json.loads(client.response().read())["body_sha256"] == hashlib.sha256(b"body").hexdigest()


def test_100_continue_refused_over_the_limit_before_any_body(client: Client) -> None:
    client.send(
        f"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {MAX_BODY + 1}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    response = client.response()
    assert response.status == 413
    assert b"--max-body-size" in response.read()
    assert client.closed_by_server()


def test_head_has_the_length_but_no_body(client: Client) -> None:
    client.send(b"HEAD /hello HTTP/1.1\r\nHost: t\r\n\r\n" + _get("/hello"))
    head = client.response("HEAD")
    assert head.getheader("Content-Length") == "5"
    assert head.read() == b""
    assert client.response().read() == b"hello", "the next response starts right after the head"


def test_a_streamed_response_is_chunked_and_a_sized_one_is_not(client: Client) -> None:
    client.send(_get("/stream?n=3&delay=0"))
    streamed = client.response()
    assert streamed.getheader("Transfer-Encoding") == "chunked"
    assert streamed.read().count(b"\n") == 3
    client.send(_get("/download?size=200000"))
    sized = client.response()
    assert sized.getheader("Transfer-Encoding") is None
    assert hashlib.sha256(sized.read()).hexdigest() == sized.getheader("X-Sha256")


def test_http10_is_answered_and_closed(client: Client) -> None:
    client.send(b"GET /stream?n=2&delay=0 HTTP/1.0\r\n\r\n")
    response = client.response()
    assert response.getheader("Transfer-Encoding") is None
    assert response.getheader("Connection") == "close"
    assert response.read().count(b"\n") == 2
    assert client.closed_by_server()


def test_connection_close_is_honoured(client: Client) -> None:
    client.send(_get("/hello", "Connection: close\r\n"))
    response = client.response()
    assert response.getheader("Connection") == "close"
    assert response.read() == b"hello"
    assert client.closed_by_server()


# -- errors and smuggling -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"GET /hello HTTP/1.1\r\nHost: t\r\nX-A: a\r\n folded\r\n\r\n", 400),
        (b"GET /hello HTTP/1.1\nHost: t\n\n", 400),
        (f"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode(), 413),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nHost: t\r\n" + b"".join(b"X-%d: v\r\n" % n for n in range(1001)) + b"\r\n", 431),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    ],
    ids=["garbage", "cl-te", "two-cl", "obs-fold", "bare-lf", "413", "414", "431", "505"],
)
def test_errors_are_one_line_answers_and_a_close(client: Client, data: bytes, status: int) -> None:
    client.send(data)
    response = client.response()
    assert response.status == status
    body = response.read()
    assert body.count(b"\n") == 1, body
    assert b"Traceback" not in body
    assert client.closed_by_server()


def test_a_smuggled_request_behind_a_good_one_never_runs(client: Client, tmp_path: Path) -> None:
    record = tmp_path / "ran"
    client.send(
        _get("/hello")
        + b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + _get(f"/record?file={record}&id=smuggled")
    )
    assert client.response().read() == b"hello"
    refused = client.response()
    assert refused.status == 400
    refused.read()
    assert client.closed_by_server()
    # the same request alone does run (so its absence above means it was never read)
    again = Client(client.sock.getpeername()[1])
    try:
        again.send(_get(f"/record?file={tmp_path / 'alone'}&id=alone"))
        assert again.response().status == 200
    finally:
        again.close()
    assert (tmp_path / "alone").read_text() == "alone\n"
    assert not record.exists()


def test_trailing_garbage_after_a_request(client: Client) -> None:
    client.send(_get("/hello") + b"\x00\x01\x02 garbage")
    assert client.response().read() == b"hello"
    refused = client.response()
    assert refused.status == 400
    refused.read()
    assert client.closed_by_server()


def test_a_byte_at_a_time_request(client: Client) -> None:
    for byte in b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc":
        client.send(bytes([byte]))
    assert json.loads(client.response().read())["body_length"] == 3


def test_an_incomplete_head_gets_408(client: Client) -> None:
    client.send(b"GET /hello HTTP/1.1\r\nHo")
    response = client.response()  # --header-timeout 1: the sweep answers within about two seconds
    assert response.status == 408
    response.read()
    assert client.closed_by_server()


# -- behind a proxy, TLS, sessions ----------------------------------------------------------------------------
FORWARDED = "X-Forwarded-For: 6.6.6.6, 203.0.113.7\r\nX-Forwarded-Proto: https\r\n"


def test_forwarded_headers_from_a_trusted_peer(servers: Servers) -> None:
    proxy = Client(servers.port, source=PROXY_ADDRESS)
    try:
        proxy.send(_get("/echo", FORWARDED))
        reply = json.loads(proxy.response().read())
    finally:
        proxy.close()
    assert (reply["remote_addr"], reply["scheme"]) == ("203.0.113.7", "https")


def test_forwarded_headers_from_anyone_else_are_ignored(client: Client) -> None:
    client.send(_get("/echo", FORWARDED))
    reply = json.loads(client.response().read())
    assert (reply["remote_addr"], reply["scheme"]) == ("127.0.0.1", "http")


def _echo_over_unix(path: Path, extra: str) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(path))
        sock.sendall(_get("/echo", extra + "Connection: close\r\n"))
        response = _Response(_SharedReader(sock.makefile("rb")), method="GET")  # type: ignore[arg-type]
        response.begin()
        reply: dict[str, object] = json.loads(response.read())
        return reply


def test_a_unix_socket_peer_is_a_trusted_proxy_once_any_proxy_is_trusted(servers: Servers) -> None:
    """Only a local process can connect to a unix socket: with --forwarded-allow-ips set, it is believed."""
    reply = _echo_over_unix(servers.trusting_unix, FORWARDED)
    assert (reply["remote_addr"], reply["scheme"]) == ("203.0.113.7", "https")


def test_a_unix_socket_peer_is_not_believed_when_no_proxy_is_trusted(servers: Servers) -> None:
    reply = _echo_over_unix(servers.untrusting_unix, FORWARDED)
    assert reply["remote_addr"] != "203.0.113.7"
    assert reply["scheme"] == "http"


def _tls_connection(servers: Servers) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=str(servers.cafile))
    return http.client.HTTPSConnection("127.0.0.1", servers.tls_port, context=context, timeout=20)


def test_tls_is_https_to_the_app_and_makes_the_session_cookie_secure(servers: Servers) -> None:
    connection = _tls_connection(servers)
    try:
        connection.request("GET", "/echo")
        assert json.loads(connection.getresponse().read())["scheme"] == "https"
        connection.request("GET", "/session/set?user=ada")
        response = connection.getresponse()
        response.read()
        cookie = response.getheader("Set-Cookie") or ""
        assert "; Secure" in cookie
        connection.request("GET", "/session/get", headers={"Cookie": cookie.split(";", 1)[0]})
        assert json.loads(connection.getresponse().read())["data"] == {"user": "ada"}
    finally:
        connection.close()


def test_sessions_over_plain_http_have_no_secure_flag(client: Client) -> None:
    client.send(_get("/session/set?visits=1"))
    response = client.response()
    response.read()
    cookie = response.getheader("Set-Cookie") or ""
    assert cookie.startswith("gwsession=")
    assert "Secure" not in cookie
    client.send(_get("/session/get", f"Cookie: {cookie.split(';', 1)[0]}\r\n"))
    assert json.loads(client.response().read())["data"] == {"visits": "1"}


def test_nginx_proxy_pass_unbuffered_still_cannot_hold_the_worker(servers: Servers) -> None:
    """One worker; a client trickles an upload through nginx (request buffering off), yet another request through
    the same nginx is answered meanwhile: the gateway, not nginx, holds the slow body. The forwarded headers
    nginx adds are believed (it connects from the trusted address), a client's own X-Forwarded-For is not."""
    slow = Client(servers.nginx.port)
    try:
        slow.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nabc")
        fast = http.client.HTTPConnection("127.0.0.1", servers.nginx.port, timeout=10)
        try:
            fast.request("GET", "/echo", headers={"X-Forwarded-For": "6.6.6.6"})
            reply = json.loads(fast.getresponse().read())
        finally:
            fast.close()
        assert (reply["remote_addr"], reply["scheme"]) == ("127.0.0.1", "http")
        slow.send(b"def")
        assert json.loads(slow.response().read())["body_sha256"] == hashlib.sha256(b"abcdef").hexdigest()
    finally:
        slow.close()


DEV_APP = """
VERSION = "{version}"

def application(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("failing on purpose in version " + VERSION)
    body = VERSION.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def _dev_app(directory: Path, version: str) -> None:
    path = directory / "devapp.py"
    path.write_text(DEV_APP.format(version=version))
    stamp = time.time() + (1 if version != "1" else 0)  # a rewrite within the same second still looks changed
    os.utime(path, (stamp, stamp))


def test_the_development_loop_is_one_command(tmp_path: Path) -> None:
    """`python -m gateway --http :PORT --reload --debug app`: a bare :PORT is loopback, a 500 shows its traceback,
    and an edited file is served without a restart."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    _dev_app(app_dir, "1")
    port = free_port()
    gateway = GatewayProcess(
        tmp_path / "dev", ["--http", f":{port}", "--reload", "--debug", "--workers", "1", "devapp:application"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=app_dir,
    ).start()  # fmt: skip
    try:
        assert f"listening for http on 127.0.0.1:{port}" in gateway.log_text()
        client = Client(port)
        try:
            client.send(_get("/"))
            assert client.response().read() == b"1"
            client.send(_get("/boom"))
            page = client.response()
            assert page.status == 500
            assert b"failing on purpose in version 1" in page.read()
        finally:
            client.close()
        wait_for(lambda: "--reload: watching Python files" in gateway.log_text(), 10, "the watcher set up")
        _dev_app(app_dir, "2")

        def serves_version_2() -> bool:
            again = Client(port)
            try:
                again.send(_get("/"))
                return bool(again.response().read() == b"2")
            finally:
                again.close()

        wait_for(serves_version_2, 15, "the edited code to serve")
    finally:
        gateway.stop()
