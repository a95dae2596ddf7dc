"""Which worker gets which request, and when: the pool's decisions, with no I/O.

The scheduler holds the bounded FIFO queue of buffered requests waiting for a worker and the idle workers waiting
for a request. It decides what to hand over (one at a time, or ahead of time with --pipeline), what to refuse
(--queue-size) and what has waited or run too long (--queue-timeout, --timeout), and when the pool should grow or
shrink. Time comes from an injected clock, and each worker is a :class:`Lane`: handing a request over is the lane's
business (the relay writes the frames), so the scheduler runs unchanged against fakes in the unit tests.

A worker runs up to ``lane.threads`` requests at once (--threads): the first ``threads`` requests a lane holds run,
the others wait in its channel. A lane with a free thread is in ``idle`` (for one thread: a lane with nothing to
run), so "an idle worker" reads "a free thread" everywhere, and the pool grows only when no thread is free.

Its effects on the pool's shape go out through three callbacks the supervisor gives it: ``refuse`` (answer 503),
``retire`` (a worker reached --max-requests) and ``grow`` (requests wait while the pool can grow). They
are called, not returned, because they arise in the middle of the per-request path, which must allocate nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from gateway.loop.request import Request

#: --pipeline hands a request ahead of time only to a worker whose running request started this recently: one
#: that has already run long is the likeliest to run longer.
PIPELINE_BEHIND = 0.05


class Lane(Protocol):
    """What the scheduler knows of one worker: the requests it holds, its clock marks and its budget."""

    #: Requests handed over and not finished, in order: the first ``threads`` run, the others wait in the
    #: worker's channel. Each running one has its ``started_at``.
    requests: deque[Request]
    #: How many requests the worker runs at once (--threads).
    threads: int
    #: When the request that started last began running (the clock's time).
    busy_since: float
    #: When the worker last had nothing to run.
    idle_since: float
    #: Requests ever handed over, and how many it may serve before it is recycled (0: no limit).
    served: int
    max_requests: int
    #: Out of rotation: it gets nothing more, and its channel is closed once it is idle.
    retiring: bool

    def hand_over(self, request: Request) -> None:
        """Send ``request`` to the worker; it runs after those the worker already holds."""

    def cancel(self, request: Request) -> None:
        """``request``'s client is gone: the worker stops its output, or skips it if it has not started."""

    def close(self) -> None:
        """Close the worker's channel: it finishes what it runs, then exits."""


L = TypeVar("L", bound=Lane)


class Scheduler(Generic[L]):
    """The queue, the idle workers and the pool's target size; every decision on them.

    ``lanes`` is every worker the pool has (starting, serving or retiring): the pipelining rule compares the
    queue's depth with it. ``starting`` counts the workers asked for and not ready yet, kept by the supervisor: a
    pool under load grows by the requests waiting beyond those, not again for requests a starting worker will take.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        refuse: Callable[[Request], None],
        retire: Callable[[L, str], None],
        grow: Callable[[], None],
        workers: int,
        workers_max: int,
        queue_size: int,
        queue_timeout: float,
        timeout: float,
        pipeline: int,
        scale_down_after: float,
    ) -> None:
        self.clock = clock
        self.refuse = refuse
        self.retire = retire
        self.grow = grow
        self.queue: deque[Request] = deque()
        self.idle: deque[L] = deque()
        self.lanes: set[L] = set()
        self.starting = 0
        self.target = workers
        self.workers_min = workers
        self.workers_max = max(workers_max, workers)
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.timeout = timeout
        self.pipeline = pipeline
        self.scale_down_after = scale_down_after

    @property
    def busy(self) -> int:
        """How many workers run a request now."""
        return sum(1 for lane in self.lanes if lane.requests)

    # -- per request -------------------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        """An idle worker gets ``request`` at once; else it waits at the queue's tail, or is refused when full."""
        idle = self.idle
        if idle:
            lane = idle.popleft()
            self._hand(lane, request)
            if len(lane.requests) < lane.threads and not lane.retiring:
                idle.append(lane)  # a thread is still free; the other workers' free threads come first
            return
        if len(self.queue) >= self.queue_size:
            self.refuse(request)
            return
        self.queue.append(request)
        if self.target < self.workers_max:
            self._grow_for_waiting()

    def _grow_for_waiting(self) -> None:
        """Raise the target by the requests that wait with no worker to run them, up to --workers MAX.

        Waiting are the queued requests and those handed ahead of time to a worker whose threads are all busy
        (--pipeline moves queued requests there, so the queue alone looks short); each worker already starting
        will take one of them.
        """
        ahead = sum(len(lane.requests) - lane.threads for lane in self.lanes if len(lane.requests) > lane.threads)
        more = min(self.workers_max - self.target, len(self.queue) + ahead - self.starting)
        if more > 0:
            self.target += more
            self.grow()

    def _hand(self, lane: L, request: Request) -> None:
        lane.hand_over(request)
        if lane.max_requests and lane.served >= lane.max_requests:
            self.retire(lane, f"served {lane.served} requests (--max-requests)")

    def lane_idle(self, lane: L) -> None:
        """``lane`` has nothing to run (it became ready, or finished its last request): feed it or park it."""
        lane.idle_since = self.clock()
        if lane.retiring:
            lane.close()
            return
        if not self.feed(lane) or len(lane.requests) < lane.threads:
            idle = self.idle
            if lane not in idle:  # a lane of several threads may already be there
                idle.append(lane)

    def lane_has_room(self, lane: L) -> None:
        """``lane`` finished one request and still runs (or holds) others: top it up from the queue, and park it
        among the free threads if one of its threads is still free."""
        if not lane.retiring:
            self.feed(lane)
            if lane.threads > 1 and len(lane.requests) < lane.threads and lane not in self.idle:
                self.idle.append(lane)

    def feed(self, lane: L) -> bool:
        """Hand ``lane`` the next queued request if it has none; True if it got one.

        With --pipeline N, while the queue is at least as deep as the pool (every request in it will wait
        anyway), a worker also gets up to N more ahead of time, so it goes from one to the next without waiting
        for the loop, and the loop writes several requests (and reads several responses) per system call. Never
        when fewer wait, and never behind a request that has already run a while: what a worker holds cannot
        move to another worker that frees up sooner.
        """
        queue = self.queue
        fed = False
        threads = lane.threads
        while queue:
            held = len(lane.requests)
            if held >= threads and (
                held >= threads + self.pipeline
                or len(queue) < len(self.lanes)
                or lane.busy_since < self.clock() - PIPELINE_BEHIND
            ):
                break
            request = queue.popleft()
            if request.sink.client_gone:
                request.release()
                continue
            self._hand(lane, request)
            fed = True
            if lane.retiring:
                break
        return fed

    def cancel(self, request: Request) -> None:
        """The client of ``request`` went away: drop it if it still waits here, tell its worker if it has it."""
        # Membership first: deque.remove of a missing item builds an error message with the request's repr.
        for lane in self.lanes:
            if request in lane.requests:
                lane.cancel(request)
                return
        if request in self.queue:
            self.queue.remove(request)
            request.release()

    def requeue(self, requests: list[Request]) -> None:
        """Requests a lost worker never started go back to the head of the queue, in their order."""
        self.queue.extendleft(reversed(requests))
        while self.queue and self.idle:
            lane = self.idle.popleft()
            if lane.requests:
                self.lane_has_room(lane)
            else:
                self.lane_idle(lane)

    # -- the pool's members ------------------------------------------------------------------------------------
    def add(self, lane: L) -> None:
        """A worker joins the pool; it gets requests once :meth:`lane_idle` says it is ready."""
        self.lanes.add(lane)

    def remove(self, lane: L) -> None:
        """A worker's process is gone."""
        self.lanes.discard(lane)
        if lane in self.idle:
            self.idle.remove(lane)

    def take_out(self, lane: L) -> bool:
        """``lane`` leaves rotation; True if it is idle, so its channel can be closed now."""
        lane.retiring = True
        if lane in self.idle:
            self.idle.remove(lane)
        return not lane.requests

    def in_rotation(self) -> list[L]:
        return [lane for lane in self.lanes if not lane.retiring]

    # -- periodic decisions ------------------------------------------------------------------------------------
    def expired(self, now: float) -> list[Request]:
        """Take out the queued requests that waited longer than --queue-timeout (the oldest come first)."""
        queue = self.queue
        limit = self.queue_timeout
        expired = []
        while queue and now - queue[0].received_at > limit:
            expired.append(queue.popleft())
        return expired

    def overdue(self, now: float) -> list[tuple[L, Request]]:
        """The running requests (with their workers) that have run past --timeout and were not answered already.

        Each is overdue alone: a worker's other threads are not.
        """
        timeout = self.timeout
        if not timeout:
            return []
        found = []
        for lane in self.lanes:
            for request in islice(lane.requests, lane.threads):
                if not request.answered and request.started_at and now - request.started_at > timeout:
                    found.append((lane, request))
        return found

    def idle_surplus(self, now: float) -> L | None:
        """A worker idle for longer than --scale-down-after while the pool is above its minimum, if any.

        The target drops by one with it, so the supervisor retires it without a replacement.
        """
        if self.target <= self.workers_min or self.queue:
            return None
        after = self.scale_down_after
        for lane in self.idle:
            if not lane.requests and now - lane.idle_since > after:
                self.target -= 1
                return lane
        return None

    def fewer(self) -> L | None:
        """One fewer worker requested (SIGTTOU): the one to retire, idle ones first; None at one worker."""
        if self.target <= 1:
            return None
        self.target -= 1
        self.workers_min = min(self.workers_min, self.target)
        candidates = sorted(self.in_rotation(), key=lambda lane: len(lane.requests))
        return candidates[0] if candidates else None

    def more(self) -> None:
        """One more worker requested (SIGTTIN): the target grows, beyond --workers-max if need be."""
        self.target += 1
        self.workers_max = max(self.workers_max, self.target)
