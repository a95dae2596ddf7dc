"""--pipeline: requests handed to a busy worker ahead of time, through a real gateway with one worker.

With one worker, every request beyond the running one makes the queue as deep as the pool, so the next ones are
handed over ahead of time. What must hold: each response still reaches its own request, a request whose client
leaves while it waits inside the worker never runs, and requests a dying worker held but never started are
served by its replacement.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.processes import GatewayProcess
from gateway.protocols.fastcgi import encode_abort, encode_request
from tests.test_raw_sockets import FastCGIClient, _params, _split_response
from tests.waiting import Gate, read_by_peer, wait_for

ENV = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[GatewayProcess, int]]:
    port = free_port()
    args = ["--fcgi", f"127.0.0.1:{port}", "--workers", "1", "--pipeline", "2", "--log-level", "debug"]
    gateway = GatewayProcess(tmp_path, [*args, "tests.apps:app"], env=ENV).start()
    try:
        yield gateway, port
    finally:
        gateway.stop()


def _body(client: FastCGIClient, request_id: int) -> tuple[str, dict[str, str]]:
    head, body = _split_response(bytes(client.stdout[request_id]))
    return head, json.loads(body)


def test_each_response_reaches_its_own_request(gateway: tuple[GatewayProcess, int]) -> None:
    _, port = gateway
    client = FastCGIClient(port)
    try:
        ids = range(1, 41)
        client.send(b"".join(encode_request(i, _params("/sleep", f"s=0.005&id={i}"), keep_conn=True) for i in ids))
        client.wait_ended(set(ids))
        for i in ids:
            head, answer = _body(client, i)
            assert head.startswith("Status: 200"), head
            assert answer["id"] == str(i)
    finally:
        client.close()


def test_a_request_whose_client_left_while_it_waited_in_the_worker_never_runs(
    gateway: tuple[GatewayProcess, int], tmp_path: Path
) -> None:
    server, port = gateway
    record = tmp_path / "ran.txt"
    first, second = Gate(tmp_path, "first"), Gate(tmp_path, "second")
    client = FastCGIClient(port)
    try:
        client.send(encode_request(1, _params("/hold", first.query("1")), keep_conn=True))
        first.wait_started()  # request 1 runs
        # Request 2 waits in the queue; when 1 ends, the worker takes 2 and gets 3 and 4 ahead of time.
        client.send(encode_request(2, _params("/hold", second.query("2")), keep_conn=True))
        for i in (3, 4):
            client.send(encode_request(i, _params("/record", f"file={record}&id={i}"), keep_conn=True))
        wait_for(read_by_peer(client.sock), 5, "the gateway to read requests 2 to 4")
        first.release()
        client.wait_ended({1})
        second.wait_started()  # request 2 runs; 3 and 4 wait inside the worker
        client.send(encode_abort(3))
        wait_for(read_by_peer(client.sock), 5, "the gateway to read the abort")
        second.release()
        client.wait_ended({2, 3, 4})
        assert _body(client, 4)[1]["id"] == "4"
        assert record.read_text().split() == ["4"], "the aborted request 3 must never reach the app"
        assert not client.stdout.get(3), "an aborted request gets END_REQUEST and no output"
        wait_for(lambda: "request 3 skipped" in server.log_text(), 5, "the worker's debug line about the skip")
    finally:
        client.close()


def test_requests_a_dead_worker_held_are_served_by_its_replacement(
    gateway: tuple[GatewayProcess, int], tmp_path: Path
) -> None:
    server, port = gateway
    gate = Gate(tmp_path)
    client = FastCGIClient(port)
    try:
        client.send(encode_request(1, _params("/hold", gate.query("1")), keep_conn=True))
        gate.wait_started()
        client.send(encode_request(2, _params("/crash"), keep_conn=True))
        for i in (3, 4):
            client.send(encode_request(i, _params("/sleep", f"s=0&id={i}"), keep_conn=True))
        wait_for(read_by_peer(client.sock), 5, "the gateway to read requests 2 to 4")
        gate.release()  # the worker ends 1, takes 2 with 3 and 4 ahead of time, and dies in 2
        client.wait_ended({1, 2, 3, 4})
        assert _split_response(bytes(client.stdout[2]))[0].startswith("Status: 502")
        for i in (3, 4):
            head, answer = _body(client, i)
            assert head.startswith("Status: 200"), head
            assert answer["id"] == str(i)
        assert "with 2 requests it had not started" in server.log_text()
    finally:
        client.close()


def test_every_access_line_says_what_its_client_received(tmp_path: Path) -> None:
    # Requests handed over ahead of time finish while the next one's frames are already in: each line must still
    # carry its own response's status and size, not the next one's (reset) accounting.
    port = free_port()
    access = tmp_path / "access.log"
    args = ["--fcgi", f"127.0.0.1:{port}", "--workers", "1", "--pipeline", "2", "--access-log", str(access)]
    server = GatewayProcess(tmp_path, [*args, "tests.apps:app"], env=ENV).start()
    client = FastCGIClient(port)
    ids = range(1, 25)
    uris = {i: f"/status?code={200 + i}&pad={'x' * i}" if i % 3 else f"/sleep?s=0.01&id={i}" for i in ids}
    try:
        requests = []
        for i in ids:
            path, _, query = uris[i].partition("?")
            params = {**_params(path, query), "REQUEST_URI": uris[i]}
            requests.append(encode_request(i, params, keep_conn=True))
        client.send(b"".join(requests))
        client.wait_ended(set(ids))
        wait_for(lambda: access.exists() and len(access.read_text().splitlines()) == len(ids), 10, "every line")
    finally:
        client.close()
        server.stop()
    logged = {}
    for line in access.read_text().splitlines():
        uri = line.split('"GET ', 1)[1].split(" HTTP/1.1", 1)[0]
        status, size = line.split('HTTP/1.1" ', 1)[1].split()[:2]
        logged[uri] = (status, size)
    for i in ids:
        head, body = _split_response(bytes(client.stdout[i]))
        status = head.split("Status: ", 1)[1][:3] if "Status: " in head else "200"
        assert logged[uris[i]] == (status, str(len(body)) if body else "-"), (uris[i], head)
