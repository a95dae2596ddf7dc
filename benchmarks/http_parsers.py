"""Which HTTP/1.1 parser the --http listener uses: CPU per request of httptools (llhttp) and h11, interleaved.

Each parser reads the same requests on one kept-alive connection, as the loop would (a browser-like GET with a
cookie, a small JSON POST), builds the CGI variables from them and frames a small response; CPU time
(``time.process_time``) per request, three interleaved rounds. h11 is not a dependency of ours: run this with a
Python that has both, e.g. the peers' virtualenv after ``pip install h11 httptools``::

    benchmarks/.peers-venv/bin/python -m benchmarks.http_parsers
"""

from __future__ import annotations

import time
from collections.abc import Callable

import h11
import httptools

GET = (
    b"GET /hello?name=x HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Firefox/120\r\n"
    b"Accept: text/html,application/xhtml+xml\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip\r\n"
    b"Cookie: gwsession=abcdefabcdefabcdefabcdefabcdef\r\nConnection: keep-alive\r\n\r\n"
)
POST = b'POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{"a": "1234"}'
RESPONSE_HEADERS = [(b"Content-Type", b"text/plain"), (b"Content-Length", b"12")]
BODY = b"Hello world\n"


def _cgi(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    environ = {"REQUEST_METHOD": method.decode("ascii"), "PATH_INFO": target.partition(b"?")[0].decode("latin-1")}
    for name, value in headers:
        environ["HTTP_" + name.decode("latin-1").upper().replace("-", "_")] = value.decode("latin-1")
    return environ


class _Callbacks:
    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = 0

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        pass

    def on_message_complete(self) -> None:
        self.complete += 1


def run_httptools(count: int, request: bytes) -> None:
    callbacks = _Callbacks()
    parser = httptools.HttpRequestParser(callbacks)
    for _ in range(count):
        parser.feed_data(request)
        _cgi(parser.get_method(), callbacks.url, callbacks.headers)
        parser.should_keep_alive()
        response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\n" + BODY
        assert response
    assert callbacks.complete == count


def run_h11(count: int, request: bytes) -> None:
    connection = h11.Connection(h11.SERVER)
    for _ in range(count):
        connection.receive_data(request)
        event = connection.next_event()
        assert isinstance(event, h11.Request)
        _cgi(event.method, event.target, list(event.headers))
        while not isinstance(connection.next_event(), h11.EndOfMessage):
            pass
        connection.send(h11.Response(status_code=200, headers=RESPONSE_HEADERS))
        connection.send(h11.Data(data=BODY))
        connection.send(h11.EndOfMessage())
        connection.start_next_cycle()


def main() -> None:
    parsers: dict[str, Callable[[int, bytes], None]] = {"httptools": run_httptools, "h11": run_h11}
    results: dict[tuple[str, str], list[float]] = {}
    count = 20000
    for _ in range(3):
        for name, run in parsers.items():
            for label, request in (("GET", GET), ("POST", POST)):
                started = time.process_time()
                run(count, request)
                results.setdefault((name, label), []).append((time.process_time() - started) / count * 1e6)
    for (name, label), values in results.items():
        print(f"{name:9} {label:4}: median {sorted(values)[1]:6.1f} us CPU per request (rounds: "
              + ", ".join(f"{value:.1f}" for value in values) + ")")  # fmt: skip


if __name__ == "__main__":
    main()
