"""Sessions through the real path: socket → event loop (load) → worker (environ["gateway.session"]) → loop (store).

Stores: the gateway's own memory and a real memcached (fixtures from devstack.servers); the two-gateway topology
runs through nutcracker (twemproxy) in front of two memcached servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import pytest

from devstack.nginx import Nginx
from devstack.ports import free_port
from devstack.processes import GatewayProcess
from devstack.servers import Memcached, Nutcracker
from gateway.protocols.fastcgi import encode_request as encode_fcgi_request
from gateway.protocols.uwsgi import encode_request
from gateway.sessions.ids import new_session_id
from tests.http import request
from tests.load import load, wait_for
from tests.waiting import Gate

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class Reply:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = [tuple(line.split(": ", 1)) for line in lines[1:]]

    @property
    def set_cookie(self) -> str | None:
        values = [value for name, value in self.headers if name.lower() == "set-cookie"]
        assert len(values) <= 1
        return values[0] if values else None

    @property
    def cookie_id(self) -> str | None:
        if self.set_cookie is None:
            return None
        morsel = SimpleCookie(self.set_cookie)["gwsession"]
        return morsel.value or None

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


def call(port: int, path: str, query: str = "", cookie: str | None = None, *, https: bool = False) -> Reply:
    params = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "REQUEST_URI": f"{path}?{query}",
        "QUERY_STRING": query,
        "SERVER_NAME": "test",
        "SERVER_PORT": "443" if https else "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    if cookie is not None:
        params["HTTP_COOKIE"] = cookie
    if https:
        params["HTTPS"] = "on"
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(encode_request(params))
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return Reply(b"".join(chunks))


@pytest.fixture(scope="module", params=["memory", "memcached"])
def gateway_port(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, memcached: Memcached
) -> Iterator[tuple[GatewayProcess, int]]:
    store = "memory" if request.param == "memory" else f"memcached://127.0.0.1:{memcached.port}"
    port = free_port()
    gateway = GatewayProcess(
        tmp_path_factory.mktemp(f"gw-{request.param}"),
        ["--uwsgi", f"127.0.0.1:{port}", "--workers", "2", "--sessions", store, "tests.apps:app"],
        env=ENV,
    ).start()
    try:
        yield gateway, port
    finally:
        gateway.stop()


def _cookie(session_id: str) -> str:
    return f"theme=dark; gwsession={session_id}; other=1"


def test_no_session_without_a_write(gateway_port: tuple[GatewayProcess, int]) -> None:
    _, port = gateway_port
    reply = call(port, "/session/get")
    assert reply.status == 200
    assert reply.set_cookie is None
    assert reply.json() == {"data": {}, "new": True, "pid": reply.json()["pid"]}


def test_session_is_created_read_and_updated_across_workers(gateway_port: tuple[GatewayProcess, int]) -> None:
    _, port = gateway_port
    first = call(port, "/session/set", "user=ada")
    session_id = first.cookie_id
    assert session_id is not None and len(session_id) == 43
    cookie = first.set_cookie or ""
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie
    pids = set()
    for index in range(6):
        reply = call(port, "/session/append", f"item={index}", _cookie(session_id))
        assert reply.status == 200
        assert reply.set_cookie is None, "an existing session keeps its id: no new cookie"
        pids.add(reply.json()["pid"])
    data = call(port, "/session/get", cookie=_cookie(session_id)).json()["data"]
    assert data == {"user": "ada", "items": [str(i) for i in range(6)]}
    assert len(pids) == 2, "both workers saw the same session"


def test_secure_flag_over_https(gateway_port: tuple[GatewayProcess, int]) -> None:
    _, port = gateway_port
    cookie = call(port, "/session/set", "a=1", https=True).set_cookie
    assert cookie is not None and "Secure" in cookie


@pytest.mark.parametrize(
    "presented",
    [
        "A" * 43,  # well formed, never issued
        "short",
        "x" * 44,
        "bad id with spaces and \x01 control chars " + "y" * 10,
        "caf\xe9" * 11,
        "../../etc/passwd",
    ],
)
def test_forged_or_malformed_ids_are_never_adopted(gateway_port: tuple[GatewayProcess, int], presented: str) -> None:
    gateway, port = gateway_port
    reply = call(port, "/session/set", "k=v", f"gwsession={presented}")
    assert reply.status == 200
    assert reply.json()["new"] is True
    assert reply.cookie_id not in (None, presented)
    assert "Traceback" not in gateway.log_text()


def test_a_forged_cookie_in_front_of_ours_never_logs_the_user_out(gateway_port: tuple[GatewayProcess, int]) -> None:
    """``gwsession=forged; gwsession=real`` (a cookie set on a sibling domain comes first): the id that loads wins,
    and no new session is minted over it."""
    _, port = gateway_port
    real = call(port, "/session/set", "user=ada").cookie_id
    assert real is not None
    forged = new_session_id()  # well-formed, but never issued
    for cookie in (f"gwsession={forged}; gwsession={real}", f"gwsession=bad; gwsession={forged}; gwsession={real}"):
        reply = call(port, "/session/set", "visit=1", cookie)
        assert reply.status == 200
        assert reply.json()["data"]["user"] == "ada"
        assert reply.set_cookie is None, "a new session was minted over a valid one"


def test_regenerate_moves_the_session_and_the_old_id_stops_working(gateway_port: tuple[GatewayProcess, int]) -> None:
    _, port = gateway_port
    old = call(port, "/session/set", "role=guest").cookie_id
    assert old is not None
    moved = call(port, "/session/regenerate", cookie=_cookie(old))
    new = moved.cookie_id
    assert new is not None and new != old
    assert call(port, "/session/get", cookie=_cookie(new)).json()["data"] == {"role": "guest"}
    stale = call(port, "/session/get", cookie=_cookie(old)).json()
    assert stale["new"] is True and stale["data"] == {}


def test_invalidate_deletes_the_session_and_the_cookie(gateway_port: tuple[GatewayProcess, int]) -> None:
    _, port = gateway_port
    session_id = call(port, "/session/set", "user=bob").cookie_id
    assert session_id is not None
    reply = call(port, "/session/invalidate", cookie=_cookie(session_id))
    assert reply.set_cookie is not None and "Max-Age=0" in reply.set_cookie
    assert call(port, "/session/get", cookie=_cookie(session_id)).json()["new"] is True


def test_parallel_requests_of_one_session_lose_no_update(
    gateway_port: tuple[GatewayProcess, int], tmp_path: Path
) -> None:
    _, port = gateway_port
    session_id = call(port, "/session/set", "base=1").cookie_id
    assert session_id is not None
    gate = Gate(tmp_path)
    replies: list[Reply] = []
    threads = [
        threading.Thread(target=lambda q=q: replies.append(call(port, "/session/set", q, _cookie(session_id))))
        for q in (f"left=L&{gate.query('left')}", f"right=R&{gate.query('right')}")
    ]
    for thread in threads:
        thread.start()
    gate.wait_started(2)  # both run in the app at once, each with the session as it was loaded
    gate.release()
    for thread in threads:
        thread.join(20)
    assert [reply.status for reply in replies] == [200, 200]
    data = call(port, "/session/get", cookie=_cookie(session_id)).json()["data"]
    assert data == {"base": "1", "left": "L", "right": "R"}


def test_oversized_session_is_a_500_and_the_stored_one_survives(gateway_port: tuple[GatewayProcess, int]) -> None:
    gateway, port = gateway_port
    session_id = call(port, "/session/set", "keep=me").cookie_id
    assert session_id is not None
    reply = call(port, "/session/big", "size=2000000", _cookie(session_id))
    assert reply.status == 500
    assert "over the store's limit of 1000000 bytes" in gateway.log_text()
    assert call(port, "/session/get", cookie=_cookie(session_id)).json()["data"] == {"keep": "me"}


def test_value_that_is_not_json_is_a_500_naming_the_key(gateway_port: tuple[GatewayProcess, int]) -> None:
    gateway, port = gateway_port
    reply = call(port, "/session/bad")
    assert reply.status == 500
    assert reply.set_cookie is None
    assert "'bad'" in gateway.log_text()


def test_memcached_lazy_access(tmp_path: Path, memcached: Memcached) -> None:
    """A request without a session cookie touches the store not at all."""
    with _one_worker_gateway(tmp_path, memcached) as port:
        before = _stats(memcached.port)
        for _ in range(20):
            assert call(port, "/hello").status == 200
            assert call(port, "/session/get", cookie="unrelated=1").status == 200
        after = _stats(memcached.port)
        for counter in ("cmd_get", "cmd_set", "cmd_touch"):
            assert after[counter] == before[counter], counter


def test_memcached_request_that_changes_its_session_reads_it_once(tmp_path: Path, memcached: Memcached) -> None:
    """Load and save of one request: a gets and a cas. The save starts from what the load read, and the load does
    not touch a session saved moments ago (the save set its expiry)."""
    with _one_worker_gateway(tmp_path, memcached) as port:
        session_id = call(port, "/session/set", "count=0").cookie_id
        assert session_id is not None
        before = _stats(memcached.port)
        for count in range(1, 6):
            reply = call(port, "/session/set", f"count={count}", _cookie(session_id))
            assert reply.status == 200 and reply.json()["data"] == {"count": str(count)}
        after = _stats(memcached.port)
        moved = {counter: after[counter] - before[counter] for counter in ("cmd_get", "cmd_touch", "cas_hits")}
        assert moved == {"cmd_get": 5, "cmd_touch": 0, "cas_hits": 5}, moved


@contextlib.contextmanager
def _one_worker_gateway(tmp_path: Path, memcached: Memcached) -> Iterator[int]:
    """A gateway with one worker and its sessions in ``memcached``; yields its uwsgi port."""
    port = free_port()
    store = f"memcached://127.0.0.1:{memcached.port}"
    gateway = GatewayProcess(
        tmp_path, ["--uwsgi", f"127.0.0.1:{port}", "--workers", "1", "--sessions", store, "tests.apps:app"], env=ENV
    ).start()
    try:
        yield port
    finally:
        gateway.stop()


def _stats(port: int) -> dict[str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            data += sock.recv(65536)
    stats = {}
    for line in data.decode().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "STAT" and parts[2].isdigit():
            stats[parts[1]] = int(parts[2])
    return stats


def test_memcached_stopped_killed_and_restarted_under_load(tmp_path: Path) -> None:
    """Session requests get 503 within the session timeout; others carry on; all recovers by itself."""
    server = Memcached(tmp_path / "mc", free_port()).start()
    port = free_port()
    gateway = GatewayProcess(
        tmp_path / "gw",
        [
            "--uwsgi",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--sessions",
            f"memcached://127.0.0.1:{server.port}",
            "--session-timeout",
            "1",
            "tests.apps:app",
        ],
        env=ENV,
    ).start()
    try:
        session_id = call(port, "/session/set", "n=1").cookie_id
        assert session_id is not None
        with load(port, "/hello", concurrency=2, seconds=12) as background:
            for outage in ("pause", "kill"):
                getattr(server, outage)()
                started = time.monotonic()
                reply = call(port, "/session/get", cookie=_cookie(session_id))
                assert reply.status == 503
                assert time.monotonic() - started < 1 + 1
                for _ in range(10):  # requests without a session never touch the store: served, not refused
                    assert call(port, "/hello").status == 200
                if outage == "pause":
                    server.resume()
                else:
                    server.restart()
                wait_for(
                    lambda: call(port, "/session/set", "n=2", _cookie(session_id)).status == 200,
                    10,
                    f"recovery after memcached {outage}",
                )
            background.stop()
        assert background.total > 100
        assert background.failures == 0, (background.statuses, background.errors[:3])
        # After the restart the memory of memcached is empty: the old id is not adopted, a new session starts.
        assert call(port, "/session/set", "n=3").status == 200
        # The pause is named for what it is: a timeout, how long, and which server (never an empty reason).
        log = gateway.log_text()
        assert f"session store unavailable: memcached at 127.0.0.1:{server.port} did not" in log
        assert "within 1 s" in log
        assert "session store unavailable: ;" not in log
    finally:
        gateway.stop()
        server.stop()


def test_serialized_sessions_run_one_at_a_time(tmp_path: Path) -> None:
    port = free_port()
    gateway = GatewayProcess(
        tmp_path,
        ["--uwsgi", f"127.0.0.1:{port}", "--workers", "2", "--session-serialize", "tests.apps:app"],
        env=ENV,
    ).start()
    try:
        session_id = call(port, "/session/set", "a=1").cookie_id
        assert session_id is not None
        started = time.monotonic()
        threads = [
            threading.Thread(target=call, args=(port, "/session/set", f"k{i}=v&sleep=0.5", _cookie(session_id)))
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert time.monotonic() - started >= 1.0, "the two requests of one session overlapped"
        data = call(port, "/session/get", cookie=_cookie(session_id)).json()["data"]
        assert data == {"a": "1", "k0": "v", "k1": "v"}
    finally:
        gateway.stop()


def test_two_gateways_share_sessions_through_nutcracker(tmp_path: Path) -> None:
    servers = [Memcached(tmp_path / "mc", free_port()).start() for _ in range(2)]
    proxy = Nutcracker(tmp_path / "proxy", free_port(), [server.port for server in servers]).start()
    ports = [free_port(), free_port()]
    gateways = [
        GatewayProcess(
            tmp_path / f"gw{index}",
            [
                "--uwsgi",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--sessions",
                f"memcached://127.0.0.1:{proxy.port}",
                "tests.apps:app",
            ],
            env=ENV,
        ).start()
        for index, port in enumerate(ports)
    ]
    try:
        session_ids = []
        for index in range(8):  # enough sessions that ketama spreads them over both servers
            session_id = call(ports[0], "/session/set", f"made_by=gw0&n={index}").cookie_id
            assert session_id is not None
            reply = call(ports[1], "/session/set", "seen_by=gw1", _cookie(session_id))
            assert reply.json()["data"] == {"made_by": "gw0", "n": str(index), "seen_by": "gw1"}
            session_ids.append(session_id)
        for session_id in session_ids:
            assert call(ports[0], "/session/get", cookie=_cookie(session_id)).json()["data"]["seen_by"] == "gw1"
        assert all(_stats(server.port)["curr_items"] > 0 for server in servers), "ketama used both servers"
    finally:
        for gateway in gateways:
            gateway.stop()
        proxy.stop()
        for server in servers:
            server.stop()


def test_demo_counter_through_nginx(tmp_path: Path) -> None:
    fcgi, uwsgi = free_port(), free_port()
    gateway = GatewayProcess(
        tmp_path, ["--fcgi", f"127.0.0.1:{fcgi}", "--uwsgi", f"127.0.0.1:{uwsgi}", "--workers", "2"], env=ENV
    ).start()
    nginx = Nginx(tmp_path, free_port(), f"127.0.0.1:{fcgi}", f"127.0.0.1:{uwsgi}").start()
    try:
        first = request(nginx.url, "GET", "/")
        assert b"<b id=visits>1</b>" in first.body
        cookie = first.header("Set-Cookie")
        assert cookie is not None
        pair = cookie.split(";", 1)[0]
        for expected, path in ((2, "/"), (3, "/uwsgi/"), (4, "/")):
            reply = request(nginx.url, "GET", path, headers=[("Cookie", pair)])
            assert f"<b id=visits>{expected}</b>".encode() in reply.body
    finally:
        nginx.stop()
        gateway.stop()


@pytest.mark.parametrize("protocol", ["uwsgi", "fastcgi"])
def test_response_whose_session_cannot_be_stored_is_never_sent(tmp_path: Path, protocol: str) -> None:
    """The store fails after the app answered: on a connection that closes after its response (uwsgi, FastCGI
    without keep-conn) the web server gets a reset and no byte of a success."""
    server = Memcached(tmp_path / "mc", free_port()).start()
    port, fcgi_port = free_port(), free_port()
    args = ["--uwsgi", f"127.0.0.1:{port}", "--fcgi", f"127.0.0.1:{fcgi_port}", "--workers", "1"]
    args += ["--sessions", f"memcached://127.0.0.1:{server.port}", "--session-timeout", "1", "tests.apps:app"]
    gateway = GatewayProcess(tmp_path / "gw", args, env=ENV).start()
    params = {"REQUEST_METHOD": "GET", "PATH_INFO": "/session/set", "SCRIPT_NAME": "", "QUERY_STRING": "n=2"}
    try:
        assert call(port, "/session/set", "n=1").status == 200
        server.pause()  # a new session needs no load: the request runs, and its store times out
        received = b""
        target = port if protocol == "uwsgi" else fcgi_port
        with socket.create_connection(("127.0.0.1", target), timeout=20) as sock:
            sock.sendall(
                encode_request(params) if protocol == "uwsgi" else encode_fcgi_request(1, params, keep_conn=False)
            )
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    received += chunk
        assert received == b""
        assert "the session could not be stored" in gateway.log_text()
    finally:
        gateway.stop()
        server.stop()
