"""What lets several gateways serve one service and be watched as one: the FastRouter subscription, the stats
server, the Prometheus endpoint, and the response and session counting they read.

The gateway process calls four methods, in its order of events: ``prepare`` (with the other start-up checks, so a
router that does not resolve is a start-up error), ``start`` (once the workers are ready: the first announcement
goes out, the stats and metrics servers listen), ``leave`` (first thing on a stop signal: unsubscribe, and keep
accepting for a moment, since the router may route a request or two before our unsubscription reaches it), and
``close``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from gateway.config.settings import Config, ConfigError
from gateway.loop.accesslog import ResponseLog
from gateway.loop.counters import COUNTERS, ResponseTee
from gateway.loop.front import FrontContext
from gateway.loop.listeners import BoundListener
from gateway.master.stats import StatsServer
from gateway.master.subscription import Subscriber
from gateway.master.supervisor import Supervisor
from gateway.sessions import SessionStore
from gateway.sessions.mapping import SessionChanges
from gateway.sessions.store import SessionRecord

if TYPE_CHECKING:  # imported when --metrics is given: prometheus_client costs every master ~3 MiB otherwise
    from gateway.master.metrics import MetricsServer

log = logging.getLogger("gateway.cluster")

#: After unsubscribing, how long the listeners stay open for what the router sent before it read the packet.
UNSUBSCRIBE_GRACE = 0.5


def response_log(config: Config, access_log: ResponseLog | None) -> ResponseLog | None:
    """What the pool tells each response: the access log, the counters (only with --stats or --metrics), both."""
    COUNTERS.per_worker = config.stats is not None
    logs = [log for log in (access_log, COUNTERS if config.stats or config.metrics else None) if log is not None]
    if len(logs) > 1:
        return ResponseTee(tuple(logs))
    return logs[0] if logs else None


class CountingStore:
    """A session store that counts its calls and failures (for --stats and --metrics) and otherwise is the store."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        self.answers_at_once = store.answers_at_once

    @property
    def where(self) -> str:
        return self.store.where

    async def load(self, session_id: str) -> SessionRecord | None:
        try:
            record = await self.store.load(session_id)
        except Exception:
            COUNTERS.session_operation("load", failed=True)
            raise
        COUNTERS.session_operation("load")
        return record

    async def save(
        self,
        session_id: str,
        changes: SessionChanges,
        *,
        new_id: str | None = None,
        base: SessionRecord | None = None,
    ) -> SessionRecord:
        try:
            record = await self.store.save(session_id, changes, new_id=new_id, base=base)
        except Exception:
            COUNTERS.session_operation("save", failed=True)
            raise
        COUNTERS.session_operation("save")
        return record

    async def delete(self, session_id: str) -> None:
        try:
            await self.store.delete(session_id)
        except Exception:
            COUNTERS.session_operation("delete", failed=True)
            raise
        COUNTERS.session_operation("delete")

    def lock(self, session_id: str, *, timeout: float) -> AbstractAsyncContextManager[None]:
        COUNTERS.session_operation("lock")
        return self.store.lock(session_id, timeout=timeout)

    async def close(self) -> None:
        await self.store.close()


class ClusterServices:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.subscriber: Subscriber | None = None
        self.stats: StatsServer | None = None
        self.metrics: MetricsServer | None = None

    def prepare(self, listeners: Sequence[BoundListener]) -> None:
        """Check and resolve what can be, before any worker starts (a ConfigError is a start-up error)."""
        config = self.config
        if not config.subscribe:
            return
        uwsgi = [listener for listener in listeners if listener.listen.protocol == "uwsgi"]
        if not uwsgi:
            raise ConfigError("--subscribe announces a uwsgi listener: give --uwsgi ADDR (a FastRouter speaks uwsgi)")
        self.subscriber = Subscriber(
            config.subscribe,
            uwsgi[0].listen.address,
            interval=config.subscribe_interval,
        )

    async def start(
        self, pool: Supervisor, contexts: Sequence[FrontContext], listeners: Sequence[BoundListener]
    ) -> None:
        config = self.config
        if config.stats is not None:
            self.stats = StatsServer(pool, contexts, listeners)
            await self.stats.start(config.stats)
        if config.metrics is not None:
            from gateway.master.metrics import MetricsServer  # noqa: PLC0415 - only with --metrics (see above)

            self.metrics = MetricsServer(pool, contexts)
            await self.metrics.start(config.metrics)
        if self.subscriber is not None:
            scheduler = pool.scheduler
            self.subscriber.start(cores=lambda: scheduler.target, load=lambda: scheduler.busy + len(scheduler.queue))

    async def leave(self, *, immediate: bool) -> None:
        """Before the listeners close: unsubscribe, and give the router a moment to read it."""
        if self.subscriber is None or not self.subscriber.routers:
            return
        self.subscriber.unsubscribe()
        if not immediate:
            await asyncio.sleep(UNSUBSCRIBE_GRACE)

    def close(self) -> None:
        for service in (self.stats, self.metrics, self.subscriber):
            if service is not None:
                service.close()
