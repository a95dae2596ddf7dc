"""WSGI apps the end-to-end tests serve through the gateway; ``validated_app`` wraps them in wsgiref.validate."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs
from wsgiref.validate import validator

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
PREFIXES = ("fcgi", "fcgik", "uwsgi")
CHUNK = 1 << 16


def pattern(size: int) -> Iterator[bytes]:
    """Deterministic bytes, so both sides can checksum a download without storing it."""
    block = bytes(range(256)) * (CHUNK // 256)
    sent = 0
    while sent < size:
        piece = block[: min(CHUNK, size - sent)]
        sent += len(piece)
        yield piece


def _json(start_response: StartResponse, data: object, status: str = "200 OK") -> list[bytes]:
    body = json.dumps(data).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def _read_body(environ: Environ) -> bytes:
    stream = environ["wsgi.input"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    chunks = []
    while length > 0:
        chunk = stream.read(min(length, CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        length -= len(chunk)
    return b"".join(chunks)


def route(environ: Environ) -> tuple[str, dict[str, list[str]]]:
    path = environ["PATH_INFO"]
    parts = path.split("/", 2)
    if len(parts) > 2 and parts[1] in PREFIXES:
        path = "/" + parts[2]
    return path, parse_qs(environ.get("QUERY_STRING", ""))


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path, query = route(environ)
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]
    if path == "/whoami":  # which gateway (the worker's parent) and worker answered, for several gateways
        return _json(start_response, {"gateway": os.getppid(), "pid": os.getpid(), "host": environ.get("HTTP_HOST")})
    if path == "/echo" or path.startswith("/unicode/"):
        body = _read_body(environ)
        return _json(
            start_response,
            {
                "method": environ["REQUEST_METHOD"],
                "script_name": environ["SCRIPT_NAME"],
                "path_info": environ["PATH_INFO"].encode("latin-1").decode("utf-8"),
                "query": environ.get("QUERY_STRING", ""),
                "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
                "content_type": environ.get("CONTENT_TYPE", ""),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "body_length": len(body),
                "scheme": environ["wsgi.url_scheme"],
                "remote_addr": environ.get("REMOTE_ADDR", ""),
                "multiprocess": environ["wsgi.multiprocess"],
                "multithread": environ["wsgi.multithread"],
                "pid": os.getpid(),
            },
        )
    if path == "/read-all":
        # Reads wsgi.input to its end, ignoring CONTENT_LENGTH (as PEP 3333 forbids, and careless apps do): what
        # comes back is everything the server let through to the app.
        chunks = []
        while chunk := environ["wsgi.input"].read(CHUNK):
            chunks.append(chunk)
        return _json(
            start_response,
            {
                "content_length": environ.get("CONTENT_LENGTH"),
                "http_content_length": environ.get("HTTP_CONTENT_LENGTH"),
                "body": b"".join(chunks).decode("latin-1"),
            },
        )
    if path == "/mirror":
        # The query, a bar, then the body: a response a checker can predict byte for byte (fuzz/gateway.py).
        mirrored = environ.get("QUERY_STRING", "").encode("latin-1") + b"|" + _read_body(environ)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(mirrored)))])
        return [mirrored]
    if path == "/close-raises":
        # A complete, valid response whose close() fails: the failure is the app's clean-up, not the response's.
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "8")])
        return _CloseRaises([b"complete"])
    if path == "/form":
        form = parse_qs(_read_body(environ).decode())
        return _json(start_response, form)
    if path == "/download":
        size = int(query["size"][0])
        digest = hashlib.sha256()
        for piece in pattern(size):
            digest.update(piece)
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/octet-stream"),
                ("Content-Length", str(size)),
                ("X-Sha256", digest.hexdigest()),
            ],
        )
        if "whole" in query:  # one list item: the worker sends it as a whole response, not streamed
            return [b"".join(pattern(size))]
        return pattern(size)
    if path == "/file":  # wsgi.file_wrapper over a regular file: the loop sends it (sendfile)
        handle = open(query["path"][0], "rb")  # noqa: SIM115 - the wrapper closes it with the response
        handle.seek(int(query.get("skip", ["0"])[0]))
        size = os.fstat(handle.fileno()).st_size - handle.tell()
        length = int(query.get("length", [str(size)])[0])
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(length))])
        wrapper: Callable[..., Iterable[bytes]] = environ["wsgi.file_wrapper"]
        return wrapper(handle)
    if path == "/grow":
        _HELD.append(bytearray(int(query["mb"][0]) << 20))  # kept: the worker's resident memory grows
        return _json(start_response, {"pid": os.getpid()})
    if path.startswith("/session/"):
        return _session_route(environ, start_response, path, query)
    if path == "/status":
        code = query["code"][0]
        if code in ("204", "304"):
            start_response(f"{code} Custom Reason", [])
            return []
        return _json(start_response, {"code": code}, f"{code} Custom Reason")
    if path == "/redirect":
        start_response(
            "302 Found", [("Location", "/fcgi/hello"), ("Content-Type", "text/plain"), ("Content-Length", "0")]
        )
        return []
    if path == "/cookies":
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/plain"),
                ("Set-Cookie", "a=1; Path=/"),
                ("Set-Cookie", "b=2; Path=/"),
                ("X-Multi", "one"),
                ("X-Multi", "two"),
            ],
        )
        return [environ.get("HTTP_COOKIE", "").encode()]
    if path == "/stream":
        count = int(query.get("n", ["3"])[0])
        delay = float(query.get("delay", ["0.3"])[0])
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Accel-Buffering", "no")])
        return _stream(count, delay, query.get("release", [""])[0])
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"and returned"]
    if path == "/sleep":
        time.sleep(float(query["s"][0]))
        return _json(start_response, {"pid": os.getpid(), "id": query.get("id", [""])[0]})
    if path == "/hold":
        _hold(query)
        return _json(start_response, {"pid": os.getpid(), "id": query.get("id", [""])[0]})
    if path == "/record":
        # A side effect a test can look for: proof that the app ran (or never ran) this request.
        with open(query["file"][0], "a") as record:
            record.write(query["id"][0] + "\n")
        return _json(start_response, {"pid": os.getpid(), "id": query["id"][0]})
    if path == "/error":
        raise RuntimeError("the app failed on purpose")
    if path == "/error-after":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _fail_after_first()
    if path == "/crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if path == "/hop-by-hop":
        start_response("200 OK", [("Connection", "close")])
        return [b"never"]
    if path == "/crlf":
        start_response("200 OK", [("X-Injected", "a\r\nSet-Cookie: evil=1")])
        return [b"never"]
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"no such route\n"]


def _hold(query: dict[str, list[str]]) -> None:
    """Held until the test releases it (tests/waiting.py Gate): a busy worker for exactly as long as a test needs
    one, announced when it starts. Bounded, so a test that fails before releasing still frees the worker."""
    with open(query["started"][0], "a") as started:
        started.write(query.get("id", ["-"])[0] + "\n")
    deadline = time.monotonic() + 60
    while not os.path.exists(query["release"][0]) and time.monotonic() < deadline:
        time.sleep(0.005)


def _stream(count: int, delay: float, release: str) -> Iterator[bytes]:
    for index in range(count):
        yield f"chunk {index} at {time.time():.3f}\n".encode()
        if release and index == 0:
            # The rest is produced only once the test has seen the first chunk and released the app (bounded).
            deadline = time.monotonic() + 60
            while not os.path.exists(release) and time.monotonic() < deadline:
                time.sleep(0.005)
        else:
            time.sleep(delay)


def _fail_after_first() -> Iterator[bytes]:
    yield b"partial "
    raise RuntimeError("failed after the head was sent")


validated_app = validator(app)


#: Memory the /grow route holds on to, so a worker's RSS grows across requests.
_HELD: list[bytearray] = []


class _CloseRaises(list[bytes]):
    def close(self) -> None:
        raise RuntimeError("close() failed on purpose")


class _NotJSON:
    pass


def _session_route(
    environ: dict[str, Any], start_response: StartResponse, path: str, query: dict[str, list[str]]
) -> list[bytes]:
    """Session routes: the session is environ["gateway.session"], loaded and stored by the gateway's loop."""
    session = environ["gateway.session"]
    if "sleep" in query:
        time.sleep(float(query["sleep"][0]))
    if "started" in query:
        _hold(query)
    if path == "/session/set":
        for key, values in query.items():
            if key not in ("sleep", "started", "release", "id"):
                session[key] = values[0]
    elif path == "/session/append":
        session.setdefault("items", [])
        session["items"].append(query["item"][0])  # in place: the change is still detected
    elif path == "/session/regenerate":
        session.regenerate()
    elif path == "/session/invalidate":
        session.invalidate()
    elif path == "/session/big":
        session["big"] = "x" * int(query["size"][0])
    elif path == "/session/bad":
        session["bad"] = _NotJSON()
    return _json(start_response, {"data": dict(session), "new": session.is_new, "pid": os.getpid()})
