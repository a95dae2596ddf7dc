"""End to end through a real nginx: socket -> event loop -> worker -> socket, over every front.

``/fcgi/`` is FastCGI with a new connection per request, ``/fcgik/`` FastCGI with ``fastcgi_keep_conn`` and
upstream keepalive, ``/uwsgi/`` the uwsgi protocol. The apps are wrapped in ``wsgiref.validate.validator``.
"""

from __future__ import annotations

import hashlib
import http.client
import socket
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest

from gateway.protocols.fastcgi import encode_begin
from gateway.protocols.uwsgi import encode_request as encode_uwsgi_request
from tests.apps import pattern
from tests.conftest import Stack
from tests.http import request

FRONTS = ["fcgi", "fcgik", "uwsgi"]


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_get_with_query_string(stack: Stack, front: str) -> None:
    reply = request(stack.url, "GET", f"/{front}/echo?a=1&b=two%20words&a=3")
    assert reply.status == 200
    data = reply.json()
    assert data["method"] == "GET"
    assert data["query"] == "a=1&b=two%20words&a=3"
    assert data["script_name"] == ""
    assert data["path_info"] == f"/{front}/echo"
    assert data["multiprocess"] is True


def test_post_form(stack: Stack, front: str) -> None:
    form = urlencode({"name": "Ada Lovelace", "lang": ["en", "fr"]}, doseq=True).encode()
    reply = request(stack.url, "POST", f"/{front}/form", form, [("Content-Type", "application/x-www-form-urlencoded")])
    assert reply.status == 200
    assert reply.json() == {"name": ["Ada Lovelace"], "lang": ["en", "fr"]}


def test_ten_megabyte_upload(stack: Stack, front: str) -> None:
    body = hashlib.sha256(b"seed").digest() * (10 * 1024 * 1024 // 32)
    reply = request(stack.url, "POST", f"/{front}/echo", body, [("Content-Type", "application/octet-stream")])
    assert reply.status == 200
    data = reply.json()
    assert data["body_length"] == len(body)
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_ten_megabyte_download(stack: Stack, front: str) -> None:
    size = 10 * 1024 * 1024 + 7
    reply = request(stack.url, "GET", f"/{front}/download?size={size}")
    assert reply.status == 200
    assert len(reply.body) == size
    assert hashlib.sha256(reply.body).hexdigest() == reply.header("X-Sha256")
    assert reply.body == b"".join(pattern(size))


def test_repeated_and_multi_valued_headers(stack: Stack, front: str) -> None:
    reply = request(stack.url, "GET", f"/{front}/cookies", headers=[("Cookie", "x=1; y=2")])
    assert reply.status == 200
    assert reply.all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    assert reply.all("X-Multi") == ["one", "two"]
    assert reply.body == b"x=1; y=2"


def test_repeated_request_header_reaches_the_app(stack: Stack, front: str) -> None:
    reply = request(stack.url, "GET", f"/{front}/echo", headers=[("X-Tag", "one"), ("X-Tag", "two")])
    assert reply.json()["headers"]["HTTP_X_TAG"] == "one, two"


@pytest.mark.parametrize("code", [201, 204, 404, 418, 503])
def test_non_200_statuses(stack: Stack, front: str, code: int) -> None:
    reply = request(stack.url, "GET", f"/{front}/status?code={code}")
    assert reply.status == code


def test_redirect(stack: Stack, front: str) -> None:
    reply = request(stack.url, "GET", f"/{front}/redirect")
    assert reply.status == 302
    assert reply.header("Location") == "/fcgi/hello"


def test_streaming_response_arrives_as_produced(stack: Stack, front: str, tmp_path: Path) -> None:
    """The first chunk reaches the client while the app holds back the next ones until the client has it."""
    release = tmp_path / "release"
    connection = http.client.HTTPConnection("127.0.0.1", stack.nginx.port, timeout=10)
    try:
        # nginx buffers upstream responses unless told otherwise; X-Accel-Buffering is the app's standard switch
        # and works the same for FastCGI and uwsgi, so request a stream the app marks unbuffered.
        connection.request("GET", f"/{front}/stream?{urlencode({'n': 4, 'delay': 0, 'release': release})}")
        response = connection.getresponse()
        first = response.readline()  # a buffered response would time out here: the app waits for the release
        release.touch()
        rest = response.read()
    finally:
        connection.close()
    assert first.startswith(b"chunk 0")
    assert [line.split()[:2] for line in rest.splitlines()] == [[b"chunk", str(i).encode()] for i in (1, 2, 3)]


def test_write_callable(stack: Stack, front: str) -> None:
    reply = request(stack.url, "GET", f"/{front}/write")
    assert reply.body == b"written and returned"


def test_app_exception_is_a_500_without_the_traceback(stack: Stack, front: str) -> None:
    reply = request(stack.url, "GET", f"/{front}/error")
    assert reply.status == 500
    assert b"Traceback" not in reply.body and b"on purpose" not in reply.body
    assert "the app failed on purpose" in stack.gateway.log_text()


@pytest.mark.parametrize("route", ["hop-by-hop", "crlf"])
def test_invalid_response_headers_are_a_500(stack: Stack, front: str, route: str) -> None:
    reply = request(stack.url, "GET", f"/{front}/{route}")
    assert reply.status == 500
    assert reply.header("X-Injected") is None
    assert reply.all("Set-Cookie") == []


def test_failure_after_head_is_not_a_clean_response(stack: Stack) -> None:
    """With keep-conn, a response without END_REQUEST is one nginx knows was cut short; it must not end cleanly.

    Without keep-conn (and over uwsgi) nginx takes a close as the end of the response whatever we do on a unix
    socket; test_raw_sockets checks what the gateway sends there (no END_REQUEST, a TCP reset).
    """
    with pytest.raises((http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError)):
        request(stack.url, "GET", "/fcgik/error-after")


def test_unicode_path(stack: Stack, front: str) -> None:
    path = f"/{front}/unicode/café/日本"
    reply = request(stack.url, "GET", quote(path))
    assert reply.status == 200
    assert reply.json()["path_info"] == path


def test_worker_crash_fails_only_that_request(stack: Stack) -> None:
    reply = request(stack.url, "GET", "/fcgi/crash")
    assert reply.status == 502
    for front in FRONTS:
        assert request(stack.url, "GET", f"/{front}/hello").body == b"hello"


def test_demo_page_is_not_served_when_an_app_is_given(stack: Stack) -> None:
    assert b"It works" not in request(stack.url, "GET", "/").body


def test_idle_connections_do_not_block_requests(stack: Stack) -> None:
    """Many more idle connections than the gateway has workers (2) and loops (1), on both fronts, some with half a
    request: every front still serves, and the idle connections are still open afterwards (so they were held)."""
    idle: list[socket.socket] = []
    try:
        for index in range(100):
            sock = socket.create_connection(("127.0.0.1", (stack.fcgi_port, stack.uwsgi_port)[index % 2]), timeout=10)
            if index % 4 >= 2:  # half a request: the codec waits for the rest
                sock.sendall(encode_begin(1) if index % 2 == 0 else encode_uwsgi_request({"PATH_INFO": "/hello"})[:6])
            idle.append(sock)
        for _ in range(3):
            for front in FRONTS:
                assert request(stack.url, "GET", f"/{front}/hello", timeout=10).body == b"hello"
        for sock in idle:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)  # neither data nor a close: still open, still waiting
    finally:
        for sock in idle:
            sock.close()
