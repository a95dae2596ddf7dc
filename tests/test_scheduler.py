"""The scheduler's decisions, driven directly: fake workers, fake requests and a clock the test sets."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from gateway.config.settings import Config
from gateway.loop.request import Request
from gateway.loop.scheduler import PIPELINE_BEHIND, Scheduler
from gateway.loop.spool import RequestBody


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Sink:
    def __init__(self) -> None:
        self.client_gone = False

    def send_head(self, head: bytes) -> None: ...
    def send_body(self, data: bytes | memoryview) -> None: ...
    def send_response(self, response: bytes | memoryview) -> None: ...
    def send_file(self, fd: int, offset: int, length: int) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...


#: The names of the requests released (over, however they ended), in order.
released: list[str] = []


def _request(name: str, received_at: float = 100.0) -> Request:
    request = Request({"REQUEST_URI": name}, RequestBody(1 << 20, None), _Sink(), "fastcgi", received_at)
    request.cleanups.append(lambda: released.append(name))
    return request


@dataclass(eq=False)
class _Lane:
    """A worker as the scheduler sees it; handing over records the request, as the relay would send it."""

    clock: _Clock
    name: str = "w"
    requests: deque[Request] = field(default_factory=deque)
    threads: int = 1
    busy_since: float = 0.0
    idle_since: float = 0.0
    served: int = 0
    max_requests: int = 0
    retiring: bool = False
    cancelled: list[Request] = field(default_factory=list)
    closed: bool = False

    def hand_over(self, request: Request) -> None:
        self.requests.append(request)
        if len(self.requests) <= self.threads:
            request.started_at = self.busy_since = self.clock()
        self.served += 1

    def cancel(self, request: Request) -> None:
        self.cancelled.append(request)

    def close(self) -> None:
        self.closed = True

    def finish(self, done: Request | None = None) -> Request:
        """A running request ended (the oldest unless named); the next one the lane holds starts now."""
        done = done if done is not None else self.requests[0]
        self.requests.remove(done)
        if len(self.requests) >= self.threads:
            self.requests[self.threads - 1].started_at = self.busy_since = self.clock()
        return done

    @property
    def uris(self) -> list[str]:
        return [request.params["REQUEST_URI"] for request in self.requests]


#: The scheduler's settings as a gateway started without options has them, but one worker and no pipelining: each
#: test states what it changes.
_DEFAULTS: dict[str, Any] = {
    **{name: getattr(Config(), name) for name in ("queue_size", "queue_timeout", "timeout", "scale_down_after")},
    "workers": 1,
    "workers_max": 1,
    "pipeline": 0,
}


class _Pool:
    """A scheduler with recorded effects and ``count`` ready lanes."""

    def __init__(self, count: int = 1, **settings: Any) -> None:
        self.clock = _Clock()
        self.refused: list[Request] = []
        self.retired: list[tuple[_Lane, str]] = []
        self.grown = 0
        self.scheduler: Scheduler[_Lane] = Scheduler(
            clock=self.clock,
            refuse=self.refused.append,
            retire=lambda lane, reason: self.retired.append((lane, reason)),
            grow=self._grow,
            **{**_DEFAULTS, **settings},
        )
        self.lanes = [_Lane(self.clock, f"w{number}") for number in range(count)]
        for lane in self.lanes:
            self.scheduler.add(lane)
            self.scheduler.lane_idle(lane)

    def _grow(self) -> None:
        self.grown += 1


@pytest.fixture(autouse=True)
def _forget_releases() -> None:
    released.clear()


def _uris(requests: deque[Request] | list[Request]) -> list[str]:
    return [request.params["REQUEST_URI"] for request in requests]


def test_an_idle_worker_gets_a_request_at_once() -> None:
    pool = _Pool(2)
    pool.scheduler.submit(_request("/a"))
    pool.scheduler.submit(_request("/b"))
    assert [lane.uris for lane in pool.lanes] == [["/a"], ["/b"]]
    assert not pool.scheduler.idle and not pool.scheduler.queue


def test_queued_requests_go_out_in_arrival_order() -> None:
    pool = _Pool(1)
    lane = pool.lanes[0]
    for name in ("/a", "/b", "/c"):
        pool.scheduler.submit(_request(name))
    assert lane.uris == ["/a"] and _uris(pool.scheduler.queue) == ["/b", "/c"]
    lane.finish()
    pool.scheduler.lane_idle(lane)
    assert lane.uris == ["/b"]
    lane.finish()
    pool.scheduler.lane_idle(lane)
    assert lane.uris == ["/c"] and not pool.scheduler.queue
    lane.finish()
    pool.scheduler.lane_idle(lane)
    assert list(pool.scheduler.idle) == [lane]


def test_a_full_queue_refuses() -> None:
    pool = _Pool(1, queue_size=2)
    requests = [_request(f"/{number}") for number in range(4)]
    for request in requests:
        pool.scheduler.submit(request)
    assert pool.lanes[0].requests[0] is requests[0]
    assert list(pool.scheduler.queue) == requests[1:3]
    assert pool.refused == [requests[3]]


def test_requests_that_waited_past_the_queue_timeout_expire_oldest_first() -> None:
    pool = _Pool(1, queue_timeout=5.0)
    pool.scheduler.submit(_request("/running", received_at=90.0))
    old, newer = _request("/old", received_at=90.0), _request("/newer", received_at=96.0)
    pool.scheduler.submit(old)
    pool.scheduler.submit(newer)
    assert pool.scheduler.expired(95.0) == []
    assert pool.scheduler.expired(100.0) == [old]
    assert list(pool.scheduler.queue) == [newer]
    assert pool.scheduler.expired(101.5) == [newer]


def test_a_request_running_past_the_timeout_is_overdue_once_answered_for() -> None:
    pool = _Pool(2, timeout=10.0)
    slow, quick = pool.lanes
    pool.scheduler.submit(slow_request := _request("/slow"))
    pool.clock.now = 108.0
    pool.scheduler.submit(quick_request := _request("/quick"))
    assert pool.scheduler.overdue(110.0) == []
    assert pool.scheduler.overdue(110.5) == [(slow, slow_request)]
    slow_request.answered = True
    assert pool.scheduler.overdue(119.0) == [(quick, quick_request)]


def test_no_timeout_means_nothing_is_ever_overdue() -> None:
    pool = _Pool(1)
    pool.scheduler.submit(_request("/a"))
    assert pool.scheduler.overdue(1e9) == []


def _pipelining_pool(depth: int) -> _Pool:
    """Two lanes, each running one request, with ``depth`` more queued."""
    pool = _Pool(2, pipeline=2, queue_size=100)
    for number in range(2 + depth):
        pool.scheduler.submit(_request(f"/{number}"))
    return pool


def test_pipelining_hands_ahead_while_the_queue_is_as_deep_as_the_pool() -> None:
    pool = _pipelining_pool(depth=5)
    first = pool.lanes[0]
    first.finish()
    pool.scheduler.lane_idle(first)
    # /2 runs at once, and --pipeline 2 more go ahead of time while at least 2 (the pool's size) still wait.
    assert first.uris == ["/2", "/3", "/4"]
    assert _uris(pool.scheduler.queue) == ["/5", "/6"]
    second = pool.lanes[1]
    pool.scheduler.lane_has_room(second)  # it still runs /1, started just now: it gets the next one only
    assert second.uris == ["/1", "/5"] and _uris(pool.scheduler.queue) == ["/6"]


def test_pipelining_stops_when_fewer_wait_than_there_are_workers() -> None:
    pool = _pipelining_pool(depth=2)
    first = pool.lanes[0]
    first.finish()
    pool.scheduler.lane_idle(first)
    # /2 runs at once; with only /3 left (fewer than 2 workers), nothing is handed ahead.
    assert first.uris == ["/2"] and _uris(pool.scheduler.queue) == ["/3"]


def test_pipelining_never_hands_ahead_behind_a_request_that_has_run_a_while() -> None:
    pool = _pipelining_pool(depth=5)
    first = pool.lanes[0]
    pool.clock.now += PIPELINE_BEHIND * 2
    pool.scheduler.lane_has_room(first)
    assert first.uris == ["/0"]
    pool.clock.now -= PIPELINE_BEHIND * 2  # the same worker, its request started just now
    pool.scheduler.lane_has_room(first)
    assert first.uris == ["/0", "/2", "/3"]


def test_without_pipelining_a_worker_holds_one_request() -> None:
    pool = _Pool(1, queue_size=100)
    for number in range(4):
        pool.scheduler.submit(_request(f"/{number}"))
    pool.scheduler.lane_has_room(pool.lanes[0])
    assert pool.lanes[0].uris == ["/0"]


def test_requeued_requests_go_to_the_head_in_their_order() -> None:
    pool = _Pool(1)
    lane = pool.lanes[0]
    pool.scheduler.submit(_request("/running"))
    pool.scheduler.submit(_request("/queued"))
    pool.scheduler.requeue([_request("/x"), _request("/y")])
    assert _uris(pool.scheduler.queue) == ["/x", "/y", "/queued"]
    lane.finish()
    pool.scheduler.lane_idle(lane)
    assert lane.uris == ["/x"]


def test_requeued_requests_go_straight_to_idle_workers() -> None:
    pool = _Pool(2)
    pool.scheduler.requeue([_request("/x"), _request("/y")])
    assert sorted(lane.uris[0] for lane in pool.lanes) == ["/x", "/y"] and not pool.scheduler.queue


def test_cancelling_a_queued_request_drops_and_releases_it() -> None:
    pool = _Pool(1)
    running, queued = _request("/running"), _request("/queued")
    pool.scheduler.submit(running)
    pool.scheduler.submit(queued)
    pool.scheduler.cancel(queued)
    assert not pool.scheduler.queue and released == ["/queued"]
    assert pool.lanes[0].cancelled == []


def test_cancelling_a_handed_over_request_tells_its_worker() -> None:
    pool = _Pool(2)
    first, second = _request("/first"), _request("/second")
    pool.scheduler.submit(first)
    pool.scheduler.submit(second)
    pool.scheduler.cancel(second)
    assert pool.lanes[1].cancelled == [second] and pool.lanes[0].cancelled == []
    assert released == []  # it is the worker's to end: its END or ABORT still comes


def test_a_queued_request_whose_client_left_is_skipped() -> None:
    pool = _Pool(1)
    lane = pool.lanes[0]
    pool.scheduler.submit(_request("/running"))
    gone = _request("/gone")
    pool.scheduler.submit(gone)
    pool.scheduler.submit(_request("/next"))
    cast(_Sink, gone.sink).client_gone = True
    lane.finish()
    pool.scheduler.lane_idle(lane)
    assert lane.uris == ["/next"] and released == ["/gone"]


def test_a_worker_is_retired_at_its_max_requests() -> None:
    pool = _Pool(1)
    lane = pool.lanes[0]
    lane.max_requests = 2
    pool.scheduler.submit(_request("/a"))
    assert pool.retired == []
    lane.finish()
    pool.scheduler.lane_idle(lane)
    pool.scheduler.submit(_request("/b"))
    assert pool.retired == [(lane, "served 2 requests (--max-requests)")]


def test_a_retiring_worker_gets_nothing_more_and_is_closed_when_idle() -> None:
    pool = _Pool(1)
    lane = pool.lanes[0]
    pool.scheduler.submit(_request("/a"))
    pool.scheduler.submit(_request("/b"))
    assert pool.scheduler.take_out(lane) is False  # busy: closed later
    lane.finish()
    pool.scheduler.lane_idle(lane)
    assert lane.closed and not lane.requests and _uris(pool.scheduler.queue) == ["/b"]


def test_the_pool_grows_by_the_requests_waiting_beyond_the_workers_starting() -> None:
    pool = _Pool(1, workers=1, workers_max=4)
    pool.scheduler.submit(_request("/a"))
    assert pool.grown == 0  # an idle worker took it
    pool.scheduler.submit(_request("/b"))
    assert pool.grown == 1 and pool.scheduler.target == 2
    pool.scheduler.starting = 1  # the new worker is on its way: it will take /b
    pool.scheduler.submit(_request("/c"))  # but nobody takes /c
    assert pool.grown == 2 and pool.scheduler.target == 3
    pool.scheduler.starting = 2
    pool.scheduler.submit(_request("/d"))
    pool.scheduler.submit(_request("/e"))
    assert pool.grown == 3 and pool.scheduler.target == 4  # at the maximum
    pool.scheduler.submit(_request("/f"))
    assert pool.grown == 3 and pool.scheduler.target == 4


def test_requests_handed_ahead_to_a_busy_worker_count_as_waiting_for_growth() -> None:
    # --pipeline moves queued requests into the busy workers' channels: the queue looks short, the work is not.
    pool = _Pool(2, workers=2, workers_max=2, pipeline=2)
    for uri in ("/a", "/b", "/c", "/d", "/e", "/f"):
        pool.scheduler.submit(_request(uri))
    first = pool.lanes[0]
    first.finish()
    pool.scheduler.lane_idle(first)
    assert first.uris == ["/c", "/d", "/e"] and _uris(pool.scheduler.queue) == ["/f"]
    pool.scheduler.workers_max = 6  # room to grow from here on
    pool.scheduler.submit(_request("/g"))
    # Waiting: /f and /g in the queue, /d and /e behind /c: four more workers, not one per queued request.
    assert pool.grown == 1 and pool.scheduler.target == 6


def test_an_idle_worker_beyond_the_minimum_is_retired_after_the_scale_down_delay() -> None:
    pool = _Pool(2, workers=1, workers_max=2, scale_down_after=30.0)
    pool.scheduler.target = 2
    assert pool.scheduler.idle_surplus(125.0) is None
    assert pool.scheduler.idle_surplus(131.0) is pool.lanes[0]
    assert pool.scheduler.target == 1
    assert pool.scheduler.idle_surplus(200.0) is None  # back at the minimum


def test_no_scale_down_while_requests_wait() -> None:
    pool = _Pool(1, workers=1, workers_max=2, scale_down_after=30.0)
    pool.scheduler.target = 2
    pool.scheduler.submit(_request("/running"))
    pool.scheduler.submit(_request("/queued"))
    assert pool.scheduler.idle_surplus(1000.0) is None


def test_fewer_workers_retires_an_idle_one_first_and_keeps_one() -> None:
    pool = _Pool(2, workers=2)
    pool.scheduler.submit(_request("/a"))
    assert pool.scheduler.fewer() is pool.lanes[1]
    assert pool.scheduler.target == 1 and pool.scheduler.workers_min == 1
    assert pool.scheduler.fewer() is None


def test_more_workers_raises_the_maximum_if_need_be() -> None:
    pool = _Pool(1, workers=1, workers_max=1)
    pool.scheduler.more()
    assert pool.scheduler.target == 2 and pool.scheduler.workers_max == 2


# -- --threads: a lane runs several requests at once ----------------------------------------------------------------
def _threaded_pool(count: int = 1, threads: int = 3, **settings: Any) -> _Pool:
    pool = _Pool(0, **settings)
    for number in range(count):
        lane = _Lane(pool.clock, f"w{number}", threads=threads)
        pool.lanes.append(lane)
        pool.scheduler.add(lane)
        pool.scheduler.lane_idle(lane)
    return pool


def test_a_threaded_worker_takes_as_many_requests_as_it_has_threads_before_any_queue() -> None:
    pool = _threaded_pool(threads=3, queue_size=100)
    for number in range(5):
        pool.scheduler.submit(_request(f"/{number}"))
    lane = pool.lanes[0]
    assert lane.uris == ["/0", "/1", "/2"] and _uris(pool.scheduler.queue) == ["/3", "/4"]
    assert all(request.started_at == 100.0 for request in lane.requests)
    assert not pool.scheduler.idle


def test_free_threads_are_spread_over_the_workers() -> None:
    pool = _threaded_pool(count=2, threads=2)
    for number in range(4):
        pool.scheduler.submit(_request(f"/{number}"))
    assert [lane.uris for lane in pool.lanes] == [["/0", "/2"], ["/1", "/3"]]


def test_a_request_ending_out_of_order_frees_its_thread_for_the_queue() -> None:
    pool = _threaded_pool(threads=2, queue_size=100)
    requests = [_request(f"/{number}") for number in range(4)]
    for request in requests:
        pool.scheduler.submit(request)
    lane = pool.lanes[0]
    pool.clock.now = 101.0
    lane.finish(requests[1])  # the second one ends first; the first still runs
    pool.scheduler.lane_has_room(lane)
    assert lane.uris == ["/0", "/2"] and _uris(pool.scheduler.queue) == ["/3"]
    assert requests[2].started_at == 101.0


def test_a_worker_with_a_free_thread_parks_among_the_idle_ones_while_it_runs_others() -> None:
    pool = _threaded_pool(threads=2)
    first, second = _request("/a"), _request("/b")
    pool.scheduler.submit(first)
    pool.scheduler.submit(second)
    lane = pool.lanes[0]
    assert not pool.scheduler.idle
    lane.finish(first)
    pool.scheduler.lane_has_room(lane)
    assert list(pool.scheduler.idle) == [lane]
    pool.scheduler.submit(third := _request("/c"))
    assert lane.uris == ["/b", "/c"] and third.started_at and not pool.scheduler.idle


def test_the_pool_grows_only_when_no_thread_is_free() -> None:
    pool = _threaded_pool(threads=2, workers=1, workers_max=3)
    pool.scheduler.submit(_request("/a"))
    pool.scheduler.submit(_request("/b"))
    assert pool.grown == 0  # both went to the one worker's two threads
    pool.scheduler.submit(_request("/c"))
    assert pool.grown == 1 and pool.scheduler.target == 2


def test_a_partly_busy_worker_is_not_idle_for_scaling_down() -> None:
    pool = _threaded_pool(count=2, threads=2, workers=1, workers_max=2, scale_down_after=5.0)
    pool.scheduler.target = 2
    pool.scheduler.submit(_request("/a"))  # the first lane runs one request and keeps a free thread
    busy, idle = pool.lanes
    assert list(pool.scheduler.idle) == [idle, busy]
    assert pool.scheduler.idle_surplus(200.0) is idle
    assert pool.scheduler.idle_surplus(200.0) is None  # at the minimum now


def test_pipelining_with_threads_hands_ahead_only_beyond_the_threads() -> None:
    pool = _threaded_pool(count=2, threads=2, pipeline=1, queue_size=100)
    requests = [_request(f"/{number}") for number in range(10)]
    for request in requests:
        pool.scheduler.submit(request)
    first = pool.lanes[0]
    assert first.uris == ["/0", "/2"]  # threads first; nothing ahead until a thread frees up
    first.finish(requests[0])
    pool.scheduler.lane_has_room(first)
    # /4 runs on the freed thread, and one more (--pipeline 1) waits ahead while the queue is as deep as the pool.
    assert first.uris == ["/2", "/4", "/5"]
    assert requests[5].started_at == 0.0


def test_only_the_overdue_thread_is_overdue() -> None:
    pool = _threaded_pool(threads=3, timeout=10.0)
    lane = pool.lanes[0]
    slow = _request("/slow")
    pool.scheduler.submit(slow)
    pool.clock.now = 105.0
    pool.scheduler.submit(_request("/a"))
    pool.scheduler.submit(_request("/b"))
    assert pool.scheduler.overdue(110.5) == [(lane, slow)]
    slow.answered = True
    assert pool.scheduler.overdue(110.5) == []


def test_a_request_waiting_in_a_workers_channel_is_never_overdue() -> None:
    pool = _threaded_pool(count=1, threads=1, timeout=10.0, pipeline=2, queue_size=100)
    lane = pool.lanes[0]
    lane.requests.extend([running := _request("/running"), waiting := _request("/waiting")])
    running.started_at = 100.0
    assert waiting.started_at == 0.0
    assert pool.scheduler.overdue(200.0) == [(lane, running)]


def test_max_requests_counts_requests_on_a_threaded_worker() -> None:
    pool = _threaded_pool(threads=4)
    lane = pool.lanes[0]
    lane.max_requests = 3
    for number in range(3):
        pool.scheduler.submit(_request(f"/{number}"))
    assert pool.retired == [(lane, "served 3 requests (--max-requests)")]


def test_fewer_workers_retires_the_least_busy_one() -> None:
    pool = _threaded_pool(count=2, threads=2, workers=2, workers_max=2)
    pool.scheduler.target = 2
    for number in range(3):
        pool.scheduler.submit(_request(f"/{number}"))
    busier, lighter = pool.lanes
    assert len(busier.requests) == 2 and len(lighter.requests) == 1
    assert pool.scheduler.fewer() is lighter
