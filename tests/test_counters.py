"""The counters behind --stats and --metrics, in-process: what one response, one worker's life and one restart
change; and the stats server's accept-queue reading on a real listening socket."""

from __future__ import annotations

import socket
from typing import cast

from gateway.config.addresses import Address, Listen
from gateway.loop.counters import DURATION_BUCKETS, Counters, ResponseTee
from gateway.loop.listeners import BoundListener
from gateway.loop.request import Request, ResponseSink
from gateway.loop.spool import RequestBody
from gateway.master.stats import listen_queue


def _request(protocol: str = "uwsgi", received_at: float = 10.0) -> Request:
    return Request({}, RequestBody(1 << 20, None), cast(ResponseSink, None), protocol, received_at)


def test_a_response_is_counted_by_protocol_status_duration_and_worker() -> None:
    counters = Counters()
    counters.worker_started(101)
    counters.write(_request(), 200, 12, 101, 10.003)
    counters.write(_request("fastcgi"), 200, 5, 101, 10.2)
    counters.write(_request(), 502, 0, None, 11.0)  # answered by the pool: no worker's tally
    assert counters.responses == {("uwsgi", 200): 1, ("fastcgi", 200): 1, ("uwsgi", 502): 1}
    assert counters.requests == 3
    cumulative = dict(counters.cumulative_buckets())
    assert cumulative[0.005] == 1 and cumulative[0.25] == 2 and cumulative[1.0] == 3
    assert cumulative[float("inf")] == 3 and len(cumulative) == len(DURATION_BUCKETS) + 1
    assert abs(counters.duration_sum - (0.003 + 0.2 + 1.0)) < 1e-9
    tally = counters.workers[101]
    assert (tally.requests, tally.tx, tally.exceptions) == (2, 17, 0)
    counters.write(_request(), 500, 3, 101, 10.0)
    assert tally.exceptions == 1


def test_worker_slots_are_reused_with_their_respawn_count() -> None:
    counters = Counters()
    for pid in (1, 2):
        counters.worker_started(pid)
    assert [counters.workers[pid].id for pid in (1, 2)] == [1, 2]
    counters.worker_restarted("timeout", 1)
    assert counters.workers[1].harakiri_count == 1
    counters.worker_gone(1)
    counters.worker_started(3)  # the replacement takes slot 1
    slot = counters.workers[3]
    assert (slot.id, slot.respawn_count, slot.harakiri_count, slot.requests) == (1, 1, 1, 0)
    assert counters.restarts["timeout"] == 1 and counters.restarts["died"] == 0


def test_tee_tells_every_log() -> None:
    first, second = Counters(), Counters()
    ResponseTee((first, second)).write(_request(), 204, 0, None, 10.0)
    assert first.requests == second.requests == 1


def test_listen_queue_is_the_kernels_accept_queue() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    listener = BoundListener(Listen("uwsgi", Address(host="127.0.0.1", port=server.getsockname()[1])), server)
    clients = [socket.create_connection(server.getsockname()) for _ in range(3)]
    try:
        assert listen_queue([listener]) == 3  # connected, not accepted
        server.accept()[0].close()
        assert listen_queue([listener]) == 2
    finally:
        for client in clients:
            client.close()
        server.close()
