"""--threads through the real path: nginx → loop → one worker running several requests at once → nginx.

What must hold per request even when a worker runs several: concurrency itself (N requests that each wait 1 s end
together), --timeout answering only the overdue request (its siblings' responses intact), a crash failing exactly
the requests that were running while those the worker held but never started are served elsewhere, sessions, the
access log, and a client that leaves cancelling its own request only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.processes import GatewayProcess
from devstack.servers import Memcached
from gateway.protocols.fastcgi import encode_request
from gateway.protocols.uwsgi import encode_request as encode_uwsgi
from tests.http import Reply, request
from tests.load import children, load, uwsgi_get
from tests.stacks import ENV, NginxStack
from tests.test_raw_sockets import FastCGIClient, _params, _split_response
from tests.waiting import Gate, read_by_peer, wait_for


class Stack(NginxStack):
    """One gateway running ``tests.apps:app`` behind its own nginx."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        super().__init__(tmp_path, args, "tests.apps:app")

    def get(self, path: str, headers: list[tuple[str, str]] | None = None) -> Reply:
        return request(self.nginx.url, "GET", path, headers=headers)

    def workers(self) -> set[int]:
        return children(self.master)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(16) as executor:
        yield executor


def test_n_requests_that_each_wait_one_second_end_together_on_one_worker(
    tmp_path: Path, pool: ThreadPoolExecutor
) -> None:
    with Stack(tmp_path, "--workers", "1", "--threads", "4") as stack:
        for prefix in ("uwsgi", "fcgik"):
            started = time.monotonic()
            paths = [f"/{prefix}/sleep?s=1&id={i}" for i in range(4)]
            replies = list(pool.map(stack.get, paths))
            elapsed = time.monotonic() - started
            assert [reply.status for reply in replies] == [200] * 4
            assert len({reply.json()["pid"] for reply in replies}) == 1
            assert elapsed < 2.5, f"4 requests of 1 s on one worker with 4 threads took {elapsed:.2f} s"
        assert stack.get("/uwsgi/echo").json()["multithread"] is True


def test_a_threaded_worker_runs_its_requests_at_the_same_time(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    gate = Gate(tmp_path)
    with Stack(tmp_path, "--workers", "1", "--threads", "3", "--access-log", str(tmp_path / "access.log")) as stack:
        held = [pool.submit(stack.get, f"/uwsgi{gate.path(str(i))}") for i in range(3)]
        gate.wait_started(3)  # all three in the app at once, on one worker: none can end before the release
        assert not any(future.done() for future in held)
        gate.release()
        assert [future.result().status for future in held] == [200, 200, 200]
        assert len({future.result().json()["pid"] for future in held}) == 1
        wait_for(lambda: (tmp_path / "access.log").read_text().count("GET /uwsgi/hold") == 3, 10, "3 log lines")


def test_a_timeout_on_one_thread_leaves_its_siblings_responses_intact(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    """Two clients keep the worker's other threads busy with 0.3 s requests while one request overruns
    --timeout: it alone gets a 504; the siblings running at that moment on the same worker still answer 200."""
    args = ("--workers", "1", "--threads", "3", "--timeout", "2", "--graceful-timeout", "20")
    with Stack(tmp_path, *args) as stack:
        (worker,) = stack.workers()
        answered_504 = threading.Event()
        stop = threading.Event()

        def siblings() -> list[tuple[int, int, bool]]:
            replies = []
            while not stop.is_set():
                reply = stack.get("/uwsgi/sleep?s=0.3")
                pid = reply.json()["pid"] if reply.status == 200 else 0
                replies.append((reply.status, pid, answered_504.is_set()))
            return replies

        clients = [pool.submit(siblings) for _ in range(2)]
        overdue = stack.get("/uwsgi/sleep?s=30")
        answered_504.set()
        assert overdue.status == 504
        wait_for(lambda: stack.workers() and worker not in stack.workers(), 15, "the worker stopped and replaced")
        stop.set()
        replies = [reply for client in clients for reply in client.result()]
        assert {status for status, _, _ in replies} == {200}, replies
        after = [pid for _, pid, late in replies if late and pid == worker]
        assert after, "a sibling running on the retired worker when the 504 went out still answered 200"
        assert stack.get("/uwsgi/hello").body == b"hello"
        log = stack.gateway.log_text()
        assert "over --timeout 2 s: answered 504, retiring the worker once its other threads are done" in log
        assert f"worker {worker} died" not in log


def test_a_crash_fails_exactly_the_running_requests_and_gives_back_the_unstarted_ones(tmp_path: Path) -> None:
    """Over one multiplexed FastCGI connection from the test itself (no nginx), so that the test knows when the
    gateway has read every request (``read_by_peer``) and so which ones wait where."""
    running, first = Gate(tmp_path, "running"), Gate(tmp_path, "first")
    record = tmp_path / "record"
    port = free_port()
    args = ["--fcgi", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2", "--pipeline", "2", "tests.apps:app"]
    gateway = GatewayProcess(tmp_path, args, env=ENV).start()
    client = FastCGIClient(port)
    try:
        assert gateway.process is not None
        (worker,) = children(gateway.process.pid)
        client.send(encode_request(1, _params("/hold", running.query("a")), keep_conn=True))
        client.send(encode_request(2, _params("/hold", first.query("x")), keep_conn=True))
        running.wait_started(1)
        first.wait_started(1)
        # Both threads are busy: these three wait in the loop's queue.
        client.send(encode_request(3, _params("/hold", running.query("b")), keep_conn=True))
        for i in (4, 5):
            client.send(encode_request(i, _params("/record", f"file={record}&id={i}"), keep_conn=True))
        wait_for(read_by_peer(client.sock), 5, "the gateway to read requests 3 to 5")
        first.release()  # x ends: b runs on its thread, and 4 and 5 are handed over ahead of time, not started
        client.wait_ended({2})
        running.wait_started(2)
        os.kill(worker, signal.SIGKILL)
        client.wait_ended({1, 3, 4, 5})
        for i in (1, 3):
            assert _split_response(bytes(client.stdout[i]))[0].startswith("Status: 502"), i
        for i in (4, 5):
            head, body = _split_response(bytes(client.stdout[i]))
            assert head.startswith("Status: 200"), head
            assert json.loads(body)["pid"] != worker
        assert sorted(record.read_text().split()) == ["4", "5"], "each ran once, on the replacement"
        log = gateway.log_text()
        assert f"worker {worker} is gone with 2 requests it had not started" in log
        assert log.count(f"worker {worker} died while running GET /hold") == 2
    finally:
        running.release()
        client.close()
        gateway.stop()


def test_sessions_with_threads(tmp_path: Path, pool: ThreadPoolExecutor, memcached: Memcached) -> None:
    """Each request loads and stores its own session, while several run at once on one worker."""
    for store in ("memory", f"memcached://127.0.0.1:{memcached.port}"):
        directory = tmp_path / store.split(":")[0]
        directory.mkdir()
        with Stack(directory, "--workers", "1", "--threads", "4", "--sessions", store) as stack:
            created = list(pool.map(lambda i: stack.get(f"/uwsgi/session/set?user=u{i}&sleep=0.2"), range(8)))
            cookies = [reply.header("Set-Cookie") for reply in created]
            assert all(cookie and cookie.startswith("gwsession=") for cookie in cookies)
            sessions = [str(cookie).split(";")[0] for cookie in cookies]
            assert len(set(sessions)) == 8

            for first in (0, 8):  # two rounds: the 8 sessions at once, never one session twice at once
                paths = [f"/uwsgi/session/append?item={index}&sleep=0.1" for index in range(first, first + 8)]
                cookies_sent = [[("Cookie", session)] for session in sessions]
                assert {reply.status for reply in pool.map(stack.get, paths, cookies_sent)} == {200}
            for index, session in enumerate(sessions):
                data = stack.get("/uwsgi/session/get", [("Cookie", session)]).json()["data"]
                assert data == {"user": f"u{index}", "items": [str(index), str(index + 8)]}, store


def test_max_requests_counts_requests_on_a_threaded_worker(tmp_path: Path) -> None:
    """A worker running 4 at once is recycled after 10 requests, not 10 batches, and no request fails."""
    port = free_port()
    args = ["--uwsgi", f"127.0.0.1:{port}", "--workers", "1", "--threads", "4", "--max-requests", "10"]
    gateway = GatewayProcess(tmp_path, [*args, "tests.apps:app"], env=ENV).start()
    try:
        with load(port, "/sleep?s=0.01", concurrency=6, requests=60) as result:
            pass
        assert result.failures == 0, (result.statuses, result.errors[:3])
        pids = {json.loads(body)["pid"] for body in result.bodies}
        assert len(pids) >= 6, f"60 requests at 10 per worker ran on only {len(pids)} workers"
        assert gateway.log_text().count("served 10 requests (--max-requests)") >= 5
    finally:
        gateway.stop()


def test_a_client_leaving_cancels_its_own_request_only(tmp_path: Path, pool: ThreadPoolExecutor) -> None:
    gate = Gate(tmp_path)
    port = free_port()
    args = ["--uwsgi", f"127.0.0.1:{port}", "--workers", "1", "--threads", "2", "--log-level", "debug"]
    gateway = GatewayProcess(tmp_path, [*args, "tests.apps:app"], env=ENV).start()
    try:
        sibling = pool.submit(uwsgi_get, port, "/hold", gate.query("sibling"))
        gate.wait_started(1)
        leaving = socket.create_connection(("127.0.0.1", port), timeout=20)
        params = {"REQUEST_METHOD": "GET", "PATH_INFO": "/stream", "QUERY_STRING": "n=200&delay=0.05",
                  "REQUEST_URI": "/stream?n=200&delay=0.05", "SERVER_NAME": "t", "SERVER_PORT": "80"}  # fmt: skip
        leaving.sendall(encode_uwsgi(params))
        assert leaving.recv(4096).startswith(b"HTTP/1.1 200")
        leaving.close()
        wait_for(lambda: "client went away; stopped iterating" in gateway.log_text(), 15, "the stream stopped")
        assert not sibling.done()
        gate.release()
        assert sibling.result()[0] == 200
    finally:
        gate.release()
        gateway.stop()
