"""The WSGI apps every server in the benchmarks serves, one callable routed by the last path segment.

Standard library only (but for the peers' session route below): uWSGI, gunicorn, waitress, flup and fcgisgi import this
module from the peers' virtualenv, where our project's dependencies are not installed. Routing looks at SCRIPT_NAME +
PATH_INFO because the servers split the URL differently (nginx's ``fastcgi_params`` sends the whole path as SCRIPT_NAME
and no PATH_INFO; flup passes that through, our gateway and uWSGI derive PATH_INFO), and at the last segment only, so
one nginx ``location`` prefix per server needs no rewriting.

| segment | what it measures |
|---|---|
| ``hello`` | the fixed cost of a request: 12 bytes out |
| ``64k`` | moving a 64 KiB response |
| ``upload`` | a request body read fully by the app (the benchmark sends 1 MiB) |
| ``sleep`` | an app waiting 5 ms on I/O: concurrency, not CPU |
| ``cpu`` | 2 ms of CPU in the app |
| ``big?size=N`` | a large streamed response (default 16 MiB) for the slow-reader clients and the memory curve |
| ``session`` | read and write ``environ["gateway.session"]``; on a peer, the same done by the app in memcached |

The peers have no session store in the server, so their users keep sessions in the app: with
``BENCH_SESSION_MEMCACHED=HOST:PORT`` in its environment, a peer's ``session`` route loads and stores a JSON
session in that memcached with pymemcache (installed in the peers' virtualenv, never imported by our gateway's
workers, which get ``gateway.session``); without it the route answers 501.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

HELLO = b"Hello world\n"
SIXTY_FOUR_K = b"x" * 65536
CHUNK = 65536
SLEEP_SECONDS = 0.005
CPU_SECONDS = 0.002
BIG_DEFAULT = 16 << 20
APP_SESSION_COOKIE = "app_session"
APP_SESSION_TTL = 3600

#: This process's pymemcache client per server, connected on first use (after a prefork server forked).
_memcache_clients: dict[str, Any] = {}


def _plain(start_response: StartResponse, body: bytes, status: str = "200 OK") -> list[bytes]:
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def _read_all(environ: Environ) -> int:
    """Read the whole body in 64 KiB reads, as a form parser would; return how many bytes came."""
    stream = environ["wsgi.input"]
    left = int(environ.get("CONTENT_LENGTH") or 0)
    total = 0
    while left > 0:
        chunk = stream.read(min(left, CHUNK))
        if not chunk:
            break
        total += len(chunk)
        left -= len(chunk)
    return total


def _burn(seconds: float) -> int:
    """Spin until this thread has used ``seconds`` of CPU (thread time, so preemption does not shorten it)."""
    start = time.thread_time()
    spins = 0
    while time.thread_time() - start < seconds:
        spins += 1
    return spins


def _stream(size: int) -> Iterator[bytes]:
    block = b"y" * CHUNK
    sent = 0
    while sent < size:
        piece = block[: min(CHUNK, size - sent)]
        sent += len(piece)
        yield piece


def _app_session(environ: Environ, start_response: StartResponse, server: str) -> list[bytes]:
    """What a peer's user writes: the session id from a cookie, a get and a set in memcached, JSON."""
    memcache = _memcache_clients.get(server)
    if memcache is None:
        from pymemcache.client.base import Client  # noqa: PLC0415 (in the peers' virtualenv only)

        host, _, port = server.rpartition(":")
        memcache = _memcache_clients[server] = Client((host, int(port)), connect_timeout=5, timeout=5, no_delay=True)
    cookies: SimpleCookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
    morsel = cookies.get(APP_SESSION_COOKIE)
    session_id = morsel.value if morsel is not None else None
    stored = memcache.get(f"session:{session_id}") if session_id else None
    data = json.loads(stored) if stored is not None else {}
    headers = [("Content-Type", "text/plain")]
    if stored is None:
        session_id = secrets.token_urlsafe(32)
        headers.append(("Set-Cookie", f"{APP_SESSION_COOKIE}={session_id}; Path=/; HttpOnly; SameSite=Lax"))
    count = int(data.get("count", 0)) + 1
    data["count"] = count
    memcache.set(f"session:{session_id}", json.dumps(data).encode(), expire=APP_SESSION_TTL)
    body = f"{count}\n".encode()
    start_response("200 OK", [*headers, ("Content-Length", str(len(body)))])
    return [body]


def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    name = path.rstrip("/").rsplit("/", 1)[-1]
    if name == "hello":
        return _plain(start_response, HELLO)
    if name == "64k":
        return _plain(start_response, SIXTY_FOUR_K)
    if name == "upload":
        return _plain(start_response, f"{_read_all(environ)}\n".encode())
    if name == "sleep":
        time.sleep(SLEEP_SECONDS)
        return _plain(start_response, HELLO)
    if name == "cpu":
        _burn(CPU_SECONDS)
        return _plain(start_response, HELLO)
    if name == "big":
        query = parse_qs(environ.get("QUERY_STRING", ""))
        size = int(query.get("size", [str(BIG_DEFAULT)])[0])
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        return _stream(size)
    if name == "session":
        session = environ.get("gateway.session")
        if session is None:
            server = os.environ.get("BENCH_SESSION_MEMCACHED")
            if server:
                return _app_session(environ, start_response, server)
            return _plain(start_response, b"no gateway.session here\n", "501 Not Implemented")
        count = int(session.get("count", 0)) + 1
        session["count"] = count
        return _plain(start_response, f"{count}\n".encode())
    return _plain(start_response, f"no route {path!r}\n".encode(), "404 Not Found")
