"""PEP 3333 in the worker: environ building, header validation, the response state machine, close()."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.worker import wsgi
from gateway.worker.wsgi import InvalidResponse, build_environ, encode_head, run_app


class Recorder:
    """A ResponseOutput that records what the worker would send."""

    def __init__(self, cancel_after: int | None = None) -> None:
        self.head: bytes | None = None
        self.chunks: list[tuple[bytes, bool]] = []
        self.cancel_after = cancel_after

    def send_head(self, head: bytes) -> None:
        assert self.head is None, "head sent twice"
        self.head = head

    def send_body(self, data: bytes, flush: bool) -> None:
        assert self.head is not None, "body before head"
        self.chunks.append((data, flush))

    def cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.chunks) >= self.cancel_after

    @property
    def body(self) -> bytes:
        return b"".join(chunk for chunk, _ in self.chunks)


NGINX_FASTCGI = {  # what nginx's stock fastcgi_params sends for GET /app/page?x=1
    "QUERY_STRING": "x=1",
    "REQUEST_METHOD": "GET",
    "CONTENT_TYPE": "",
    "CONTENT_LENGTH": "",
    "SCRIPT_NAME": "/app/page",
    "REQUEST_URI": "/app/page?x=1",
    "DOCUMENT_URI": "/app/page",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REQUEST_SCHEME": "http",
    "SERVER_NAME": "example.org",
    "SERVER_PORT": "80",
}
NGINX_UWSGI = {  # what nginx's stock uwsgi_params sends for the same request
    "QUERY_STRING": "x=1",
    "REQUEST_METHOD": "GET",
    "CONTENT_TYPE": "",
    "CONTENT_LENGTH": "",
    "REQUEST_URI": "/app/page?x=1",
    "PATH_INFO": "/app/page",
    "DOCUMENT_ROOT": "/srv",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REQUEST_SCHEME": "https",
    "HTTPS": "on",
    "SERVER_NAME": "example.org",
    "SERVER_PORT": "443",
}


@pytest.mark.parametrize("params", [NGINX_FASTCGI, NGINX_UWSGI], ids=["fastcgi_params", "uwsgi_params"])
def test_stock_params_give_script_name_and_path_info(params: dict[str, str]) -> None:
    environ = build_environ(dict(params), io.BytesIO())
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("", "/app/page")


@pytest.mark.parametrize("params", [NGINX_FASTCGI, NGINX_UWSGI], ids=["fastcgi_params", "uwsgi_params"])
def test_script_name_prefix(params: dict[str, str]) -> None:
    environ = build_environ(dict(params), io.BytesIO(), script_name="/app")
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/app", "/page")
    other = build_environ({**params, "PATH_INFO": "/application", "SCRIPT_NAME": ""}, io.BytesIO(), script_name="/app")
    assert (other["SCRIPT_NAME"], other["PATH_INFO"]) == ("", "/application"), "a prefix matches whole segments"


def test_explicit_split_path_info_is_respected() -> None:
    environ = build_environ({**NGINX_FASTCGI, "SCRIPT_NAME": "/index.py", "PATH_INFO": "/x"}, io.BytesIO())
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == ("/index.py", "/x")


def test_environ_is_pep_3333() -> None:
    body = io.BytesIO(b"data")
    environ = build_environ({**NGINX_UWSGI, "HTTP_CONTENT_TYPE": "text/plain"}, body)
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["wsgi.input"] is body
    assert environ["wsgi.multiprocess"] is True and environ["wsgi.multithread"] is False
    assert environ["wsgi.errors"] is sys.stderr
    assert "HTTP_CONTENT_TYPE" not in environ
    assert callable(environ["wsgi.file_wrapper"])


@pytest.mark.parametrize(
    ("status", "headers", "message"),
    [
        ("200", [], None),
        ("200 OK", [("Content-Type", "text/plain")], None),
        ("OK", [], "invalid status"),
        ("200 OK\r\nX: y", [], "invalid status"),
        (b"200 OK", [], "invalid status"),
        ("200 OK", [("Connection", "close")], "hop-by-hop"),
        ("200 OK", [("Transfer-Encoding", "chunked")], "hop-by-hop"),
        ("200 OK", [("X-A", "b\r\nSet-Cookie: x")], "CR, LF"),
        ("200 OK", [("Bad Name", "v")], "header name"),
        ("200 OK", [("X-A", "ünïcødé€")], "latin-1"),
        ("200 OK", (("X-A", "b"),), "must be a list"),
        ("200 OK", [("Content-Length", "ten")], "Content-Length"),
    ],
)
def test_encode_head_validates(status: Any, headers: Any, message: str | None) -> None:
    if message is None:
        head, _ = encode_head(status, headers)
        assert head.endswith(b"\r\n\r\n")
    else:
        with pytest.raises(InvalidResponse, match=message):
            encode_head(status, headers)


def test_a_repeated_head_is_validated_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Observed through the cache, not by wrapping the validation: a compiled build calls it directly.
    cache: dict[object, tuple[bytes, int | None]] = {}
    monkeypatch.setattr(wsgi, "_head_cache", cache)
    headers = [("Content-Type", "text/plain"), ("Content-Length", "12")]
    first = encode_head("200 OK", headers)
    assert list(cache.values()) == [first]
    again = encode_head("200 OK", list(headers))
    assert again == first == (b"200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\n", 12)
    assert again[0] is first[0] and len(cache) == 1  # the encoded head looked up, not made again
    assert encode_head("404 Not Found", headers)[0].startswith(b"404 Not Found\r\n")
    assert len(cache) == 2


@pytest.mark.parametrize(
    ("valid", "invalid", "message"),
    [
        ([("X-A", "1")], [("X-A", 1)], "invalid value"),
        ([("X-A", "b")], [["X-A", "b"]], "not a \\(name, value\\) tuple"),
        ([("X-A", "b")], [("X-A", b"b")], "invalid value"),
    ],
)
def test_a_cached_head_never_lets_a_bad_one_through(valid: Any, invalid: Any, message: str) -> None:
    encode_head("200 OK", valid)
    for _ in range(2):  # an invalid head is never cached either
        with pytest.raises(InvalidResponse, match=message):
            encode_head("200 OK", invalid)
    with pytest.raises(InvalidResponse, match="invalid status"):
        encode_head(b"200 OK", valid)


def test_the_head_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wsgi, "_head_cache", {})
    for number in range(wsgi.HEAD_CACHE_SIZE * 3):
        head, length = encode_head("200 OK", [("Content-Length", str(number))])
        assert head == f"200 OK\r\nContent-Length: {number}\r\n\r\n".encode() and length == number
        assert len(wsgi._head_cache) <= wsgi.HEAD_CACHE_SIZE


class ClosingIterable:
    def __init__(self, chunks: list[bytes], fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.fail_at = fail_at
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_at:
                raise RuntimeError("boom")
            yield chunk

    def close(self) -> None:
        self.closed += 1


def test_list_response_is_one_flush() -> None:
    out = Recorder()

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "5")])
        return [b"hel", b"lo"]

    assert run_app(app, {}, out) == 200
    assert out.body == b"hello"
    assert not any(flush for _, flush in out.chunks)


def test_generator_chunks_are_flushed_and_close_is_called() -> None:
    out = Recorder()
    result = ClosingIterable([b"a", b"", b"b"])

    def app(environ: Any, start_response: Any) -> ClosingIterable:
        start_response("200 OK", [])
        return result

    run_app(app, {}, out)
    assert out.chunks == [(b"a", True), (b"b", True)]
    assert result.closed == 1


def test_exception_before_head_is_500_and_close_is_called() -> None:
    out = Recorder()
    result = ClosingIterable([b"x"], fail_at=0)

    def app(environ: Any, start_response: Any) -> ClosingIterable:
        start_response("200 OK", [])
        return result

    assert run_app(app, {}, out) == 500
    assert out.head is not None and out.head.startswith(b"500 ")
    assert b"boom" not in out.body
    assert result.closed == 1


def test_debug_shows_the_traceback_in_the_page() -> None:
    out = Recorder()

    def app(environ: Any, start_response: Any) -> list[bytes]:
        raise ValueError("visible in debug")

    run_app(app, {}, out, debug=True)
    assert b"visible in debug" in out.body


def test_exception_after_head_propagates_and_close_is_called() -> None:
    out = Recorder()
    result = ClosingIterable([b"x", b"y"], fail_at=1)

    def app(environ: Any, start_response: Any) -> ClosingIterable:
        start_response("200 OK", [])
        return result

    with pytest.raises(RuntimeError):
        run_app(app, {}, out)
    assert result.closed == 1


def test_exc_info_replaces_status_before_the_head_is_sent() -> None:
    out = Recorder()

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        try:
            raise KeyError("x")
        except KeyError:
            start_response("503 Service Unavailable", [], sys.exc_info())
        return [b"sorry"]

    assert run_app(app, {}, out) == 503


def test_lazy_start_response_from_a_generator() -> None:
    out = Recorder()

    def app(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("201 Created", [])
        yield b"made"

    assert run_app(app, {}, out) == 201
    assert out.body == b"made"


def test_content_length_is_honoured() -> None:
    out = Recorder()

    def longer(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Length", "3")])
        return [b"abcdef"]

    run_app(longer, {}, out)
    assert out.body == b"abc"

    def shorter(environ: Any, start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "10")])
        yield b"abc"

    with pytest.raises(InvalidResponse, match="3 of its declared 10"):
        run_app(shorter, {}, Recorder())


def test_cancel_stops_iteration() -> None:
    out = Recorder(cancel_after=2)
    result = ClosingIterable([b"1", b"2", b"3", b"4"])

    def app(environ: Any, start_response: Any) -> ClosingIterable:
        start_response("200 OK", [])
        return result

    run_app(app, {}, out)
    assert out.body == b"12"
    assert result.closed == 1


def test_no_start_response_is_500() -> None:
    out = Recorder()
    assert run_app(lambda environ, start_response: [b"x"], {}, out) == 500


@pytest.mark.parametrize(
    ("status", "headers", "chunks", "logged"),
    [
        (b"200 OK", [], [b"x"], "invalid status b'200 OK'"),
        ("200 OK", [(b"X-A", "b")], [b"x"], "invalid response header name b'X-A'"),
        ("200 OK", [("X-A", "b")], ["text"], "the application yielded str, not bytes"),
    ],
)
def test_what_an_app_passes_wrongly_is_named_in_the_log_compiled_or_not(
    status: Any, headers: Any, chunks: list[Any], logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A compiled build checks its own annotations: where the app calls in, they accept anything, so the
    # validation names the mistake instead of a bare TypeError from the build.
    out = Recorder()

    def app(environ: Any, start_response: Any) -> list[Any]:
        start_response(status, headers)
        return chunks

    assert run_app(app, {}, out) == 500
    assert logged in caplog.text


def test_an_app_may_subclass_the_file_wrapper() -> None:
    out = Recorder()

    def app(environ: Any, start_response: Any) -> Any:
        wrapper: Any = environ["wsgi.file_wrapper"]

        class Upper(wrapper):  # type: ignore[misc]
            def __iter__(self) -> Iterator[bytes]:
                return (block.upper() for block in super().__iter__())

        start_response("200 OK", [])
        return Upper(io.BytesIO(b"hello"))

    assert run_app(app, build_environ(dict(NGINX_UWSGI), io.BytesIO()), out) == 200
    assert out.body == b"HELLO"
