"""``python -m gateway probe URL``: one request to a FastCGI or uwsgi server, as a web server would send it.

For systemd's ``ExecStartPost``, container health checks and debugging without a web server (what ``cgi-fcgi`` and
``uwsgi --ping`` are used for). It speaks through the codecs' client side (``protocols.fastcgi.client``,
``protocols.uwsgi``), over blocking sockets with one overall deadline: a tool run once, not the event loop.

URLs: ``fcgi://HOST:PORT/path?query``, ``uwsgi://HOST:PORT/path``, and for unix sockets ``fcgi+unix:/run/app.sock``
or ``uwsgi+unix:/run/app.sock``, optionally followed by ``:/path?query``. Exit status: 0 for a 2xx or 3xx answer
(or a pong), 1 for any other answer, 2 when the server cannot be reached or does not answer in time.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.protocols.cgi import split_response_head
from gateway.protocols.errors import RemoteProtocolError
from gateway.protocols.fastcgi import EndRequest, GetValuesResult, Stderr, Stdout
from gateway.protocols.fastcgi.client import ClientConnection, encode_get_values, encode_request
from gateway.protocols.uwsgi import encode_ping, is_pong
from gateway.protocols.uwsgi import encode_request as encode_uwsgi_request

EXIT_GOOD = 0
EXIT_BAD_ANSWER = 1
EXIT_UNREACHABLE = 2

_SCHEMES = {"fcgi": "fastcgi", "fastcgi": "fastcgi", "uwsgi": "uwsgi"}


class Unreachable(Exception):
    """The server could not be connected to, or did not answer within the deadline."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect, over which protocol, and the request URI (path and query)."""

    protocol: str
    host: str | None
    port: int | None
    path: str | None
    uri: str

    @classmethod
    def parse(cls, url: str) -> Target:
        scheme, sep, rest = url.partition(":")
        base, _, unix = scheme.partition("+")
        if not sep or base not in _SCHEMES or unix not in ("", "unix"):
            raise ValueError(f"{url!r}: expected fcgi://HOST:PORT/path, uwsgi://HOST:PORT/path or fcgi+unix:PATH")
        protocol = _SCHEMES[base]
        if unix:
            socket_path, found, request = rest.partition(":/")
            return cls(
                protocol, None, None, socket_path if found else rest.rstrip(":"), "/" + request if found else "/"
            )
        parsed = urllib.parse.urlsplit(url)
        if parsed.hostname is None or parsed.port is None:
            raise ValueError(f"{url!r}: give HOST:PORT, e.g. {base}://127.0.0.1:9000/")
        uri = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        return cls(protocol, parsed.hostname, parsed.port, None, uri)

    def connect(self, timeout: float) -> socket.socket:
        try:
            if self.path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(self.path)
                except OSError:
                    sock.close()
                    raise
                return sock
            assert self.host is not None
            assert self.port is not None
            return socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as err:
            raise Unreachable(f"cannot connect to {self.where}: {err.strerror or err}") from None

    @property
    def where(self) -> str:
        return f"unix:{self.path}" if self.path is not None else f"{self.host}:{self.port}"

    def params(self, method: str, headers: Sequence[tuple[str, str]], body: bytes) -> dict[str, str]:
        """The CGI variables nginx's stock params files send for this request."""
        path, _, query = self.uri.partition("?")
        params = {
            "REQUEST_METHOD": method,
            "REQUEST_URI": self.uri,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote(path),
            "QUERY_STRING": query,
            "SERVER_NAME": self.host or "localhost",
            "SERVER_PORT": str(self.port or 80),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "REMOTE_PORT": "0",
            "HTTP_HOST": self.host or "localhost",
            "HTTP_USER_AGENT": "gateway-probe",
        }
        if body:
            params["CONTENT_LENGTH"] = str(len(body))
        for name, value in headers:
            key = name.upper().replace("-", "_")
            params[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
        return params


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    #: What the app wrote to FastCGI's STDERR stream.
    errors: bytes = b""


def _receive(sock: socket.socket, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Unreachable("no complete answer within the timeout")
    sock.settimeout(remaining)
    try:
        return sock.recv(65536)
    except TimeoutError:
        raise Unreachable("no complete answer within the timeout") from None
    except OSError as err:
        raise Unreachable(f"connection failed: {err.strerror or err}") from None


def _answer(raw: bytes, errors: bytes = b"") -> Answer:
    head = split_response_head(raw)
    if head is None:
        raise RemoteProtocolError(f"the answer has no complete head ({len(raw)} bytes)")
    status, reason, headers, start = head
    return Answer(status, reason, headers, raw[start:], errors)


def request(target: Target, method: str, headers: Sequence[tuple[str, str]], body: bytes, timeout: float) -> Answer:
    """One request and its whole answer; Unreachable, or RemoteProtocolError for an answer that breaks the protocol."""
    deadline = time.monotonic() + timeout
    with target.connect(timeout) as sock:
        params = target.params(method, headers, body)
        if target.protocol == "uwsgi":
            sock.sendall(encode_uwsgi_request(params, body))
            received = bytearray()
            while chunk := _receive(sock, deadline):
                received += chunk
            return _answer(bytes(received))
        client = ClientConnection()
        sock.sendall(encode_request(1, params, body, keep_conn=False))
        stdout, stderr = bytearray(), bytearray()
        while True:
            chunk = _receive(sock, deadline)
            for event in client.receive_data(chunk):
                if isinstance(event, Stdout):
                    stdout += event.data
                elif isinstance(event, Stderr):
                    stderr += event.data
                elif isinstance(event, EndRequest):
                    return _answer(bytes(stdout), bytes(stderr))
            if not chunk:
                raise RemoteProtocolError("connection closed before END_REQUEST")


def ping(target: Target, timeout: float) -> str:
    """uWSGI's ping (modifier1 100) or, over FastCGI, FCGI_GET_VALUES; what answered, or RemoteProtocolError."""
    deadline = time.monotonic() + timeout
    with target.connect(timeout) as sock:
        if target.protocol == "uwsgi":
            sock.sendall(encode_ping())
            received = bytearray()
            while len(received) < 4 and (chunk := _receive(sock, deadline)):
                received += chunk
            if not is_pong(bytes(received)):
                raise RemoteProtocolError(f"not a uWSGI pong: {bytes(received[:16])!r}")
            return "pong"
        client = ClientConnection()
        sock.sendall(encode_get_values(["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"]))
        while chunk := _receive(sock, deadline):
            for event in client.receive_data(chunk):
                if isinstance(event, GetValuesResult):
                    return " ".join(f"{name}={value}" for name, value in sorted(event.values.items()))
        raise RemoteProtocolError("connection closed before FCGI_GET_VALUES_RESULT")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway probe",
        description="Send one request over FastCGI or uwsgi and print the answer. Exit 0 for 2xx/3xx (or a pong), "
        "1 for any other answer, 2 when the server cannot be reached.",
        epilog="URL: fcgi://HOST:PORT/path, uwsgi://HOST:PORT/path, fcgi+unix:/run/app.sock[:/path], "
        "uwsgi+unix:/run/app.sock[:/path]",
    )
    parser.add_argument("url", help="where to send the request")
    parser.add_argument("-i", "--include", action="store_true", help="print the status line and headers too")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing: the exit status says it")
    parser.add_argument("--ping", action="store_true", help="uWSGI's ping (modifier1 100); FCGI_GET_VALUES for fcgi")
    parser.add_argument("-X", "--method", default="GET", help="request method (default: GET)")
    parser.add_argument("-H", "--header", action="append", default=[], metavar="NAME: VALUE", help="a request header")
    parser.add_argument("-d", "--data", default="", help="request body")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for the whole exchange (default: 10)")
    return parser


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        target = Target.parse(args.url)
        headers = [tuple(part.strip() for part in header.split(":", 1)) for header in args.header]
        if any(len(header) != 2 for header in headers):
            raise ValueError("a --header is NAME: VALUE")
    except ValueError as err:
        print(f"gateway probe: error: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        if args.ping:
            what = ping(target, args.timeout)
            if not args.quiet:
                print(f"{target.where}: {what}")
            return EXIT_GOOD
        answer = request(target, args.method, [(h[0], h[1]) for h in headers], args.data.encode(), args.timeout)
    except Unreachable as err:
        if not args.quiet:
            print(f"gateway probe: {err}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RemoteProtocolError as err:
        if not args.quiet:
            print(f"gateway probe: {target.where} broke the protocol: {err}", file=sys.stderr)
        return EXIT_BAD_ANSWER
    if not args.quiet:
        out = sys.stdout.buffer
        if args.include:
            out.write(f"{answer.status} {answer.reason}\r\n".encode("latin-1"))
            out.write(b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in answer.headers) + b"\r\n")
        out.write(answer.body)
        out.flush()
        if answer.errors:
            sys.stderr.buffer.write(answer.errors)
    return EXIT_GOOD if 200 <= answer.status < 400 else EXIT_BAD_ANSWER
