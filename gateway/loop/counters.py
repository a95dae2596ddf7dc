"""What the master counts for ``--stats`` and ``--metrics``: one object of plain numbers that the loop and the
supervisor update at a handful of points, and that the stats and metrics servers read when asked.

The master sees every request, so it can count them all without any multi-process collector: a worker never
counts anything. Collection points are small on purpose: a response is counted where the access log line is
written (``write`` keeps the access log's signature, so the pool tells both the same way and counts nothing when
neither --stats nor --metrics asked for it); the rare events (a worker started or gone, a client timeout, bytes
spooled to disk, a session store call) are one increment each, on the module's :data:`COUNTERS`, which exists once
per gateway process. Reading them (gauges such as queue depth and open connections) is the servers' business.
"""

from __future__ import annotations

import time
from bisect import bisect_left as _bucket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the spool counts here too, and requests import the spool
    from gateway.loop.accesslog import ResponseLog
    from gateway.loop.request import Request

#: Upper bounds (seconds) of the request-duration histogram: Prometheus' client defaults, which suit web requests.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)

#: Why a worker was replaced, as the metrics label it.
RESTART_CAUSES = ("died", "timeout", "max-requests", "max-rss", "reload")
#: The client time limits, as the metrics label them.
TIMEOUT_KINDS = ("header", "body", "read", "keepalive")


@dataclass(slots=True)
class WorkerTally:
    """One worker slot as uWSGI's stats server numbers them (1..N): a replacement takes the slot of one gone."""

    id: int
    pid: int
    spawned_at: float
    respawn_count: int = 0
    harakiri_count: int = 0
    requests: int = 0
    exceptions: int = 0
    tx: int = 0
    total_time: float = 0.0


@dataclass(slots=True)
class Counters:
    #: Front protocol -> responses by status code (a list indexed by the code: the cheapest count per response).
    status_rows: dict[str, list[int]] = field(default_factory=dict)
    #: Cumulative counts per DURATION_BUCKETS bound (the last is +Inf), with the sum of the durations.
    duration_buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    duration_sum: float = 0.0
    #: Response body bytes sent, over every response.
    tx: int = 0
    #: Live worker slots by pid, and the slots of workers gone (kept for their respawn counts).
    workers: dict[int, WorkerTally] = field(default_factory=dict)
    free_slots: list[WorkerTally] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESTART_CAUSES, 0))
    timeouts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIMEOUT_KINDS, 0))
    spooled_request_bytes: int = 0
    spooled_response_bytes: int = 0
    #: Session store calls by operation (load, save, delete, lock), and those that failed.
    session_operations: dict[str, int] = field(default_factory=dict)
    session_errors: dict[str, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    #: Count each worker's responses too (what uwsgitop shows): only --stats needs them.
    per_worker: bool = True

    # -- the response hook (the access log's signature) ---------------------------------------------------------
    def write(self, request: Request, status: int, sent: int, worker_pid: int | None, now: float) -> None:
        # Once per response, in the loop: a few list and dict operations, no call into prometheus_client.
        row = self.status_rows.get(request.protocol)
        if row is None:
            row = self.status_rows[request.protocol] = [0] * 1000
        row[status % 1000] += 1
        elapsed = now - request.received_at  # the loop's monotonic clock: never negative
        self.duration_buckets[_bucket(DURATION_BUCKETS, elapsed)] += 1
        self.duration_sum += elapsed
        self.tx += sent
        if not self.per_worker:
            return
        tally = self.workers.get(worker_pid)  # type: ignore[arg-type]  # None (the pool answered): no worker's
        if tally is not None:
            tally.requests += 1
            tally.tx += sent
            tally.total_time += elapsed
            if status >= 500:
                tally.exceptions += 1

    # -- the pool's hooks ---------------------------------------------------------------------------------------
    def worker_started(self, pid: int) -> None:
        free = self.free_slots
        if free:
            free.sort(key=lambda slot: slot.id)
            slot = free.pop(0)
            slot.pid, slot.spawned_at = pid, time.time()
            slot.respawn_count += 1
            slot.requests = slot.exceptions = slot.tx = 0
            slot.total_time = 0.0
        else:
            slot = WorkerTally(id=len(self.workers) + 1, pid=pid, spawned_at=time.time())
        self.workers[pid] = slot

    def worker_gone(self, pid: int) -> None:
        slot = self.workers.pop(pid, None)
        if slot is not None:
            self.free_slots.append(slot)

    def worker_restarted(self, cause: str, pid: int | None = None) -> None:
        self.restarts[cause] = self.restarts.get(cause, 0) + 1
        if cause == "timeout" and pid is not None and (slot := self.workers.get(pid)) is not None:
            slot.harakiri_count += 1

    # -- the loop's hooks ---------------------------------------------------------------------------------------
    def client_timeout(self, kind: str) -> None:
        self.timeouts[kind] = self.timeouts.get(kind, 0) + 1

    def session_operation(self, operation: str, *, failed: bool = False) -> None:
        counts = self.session_errors if failed else self.session_operations
        counts[operation] = counts.get(operation, 0) + 1

    # -- reading ------------------------------------------------------------------------------------------------
    @property
    def responses(self) -> dict[tuple[str, int], int]:
        """(front protocol, status code) -> responses, for those that occurred."""
        return {
            (protocol, status): count
            for protocol, row in self.status_rows.items()
            for status, count in enumerate(row)
            if count
        }

    @property
    def requests(self) -> int:
        return sum(sum(row) for row in self.status_rows.values())

    def cumulative_buckets(self) -> Iterable[tuple[float, int]]:
        """(upper bound, requests at most that long), ending with +Inf: the histogram as Prometheus shows it."""
        total = 0
        for bound, count in zip((*DURATION_BUCKETS, float("inf")), self.duration_buckets, strict=True):
            total += count
            yield bound, total

    def reset(self) -> None:
        """Back to zero (tests run several gateways in one interpreter)."""
        fresh = Counters()
        for name in Counters.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))


#: The gateway process's counters.
COUNTERS = Counters()


@dataclass(frozen=True, slots=True)
class ResponseTee:
    """Tells every response to several logs (the access log and the counters), in order."""

    logs: tuple[ResponseLog, ...]

    def write(self, request: Request, status: int, sent: int, worker_pid: int | None, now: float) -> None:
        for log in self.logs:
            log.write(request, status, sent, worker_pid, now)
