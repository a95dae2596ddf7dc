"""The gateway process: binds, starts the workers, serves, and shuts down in order.

Signal handlers only record which signal arrived; the serving coroutine wakes up and acts on it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
from typing import Any

from gateway.config import Config, ConfigError, parse_networks
from gateway.dispatch import Dispatcher
from gateway.front import FrontContext
from gateway.listeners import BoundListener, bind, serve
from gateway.pool import AppLoadFailed, WorkerPool

log = logging.getLogger("gateway.server")

#: Exit statuses, so a process monitor can tell a bad deployment from a crash.
EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_APP_LOAD = 3
EXIT_WORKERS_GONE = 4


class Gateway:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.listeners: list[BoundListener] = []
        self.contexts: list[FrontContext] = []
        self.received_signal: int | None = None
        self._wake: asyncio.Event | None = None

    def _record_signal(self, signum: int) -> None:
        self.received_signal = signum
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> int:
        config = self.config
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            self.listeners = [bind(listen, config.backlog, config.socket_mode) for listen in config.listeners]
        except ConfigError as err:
            log.critical("%s", err)
            self._close_listeners()
            return EXIT_CONFIG
        spool_dir = tempfile.mkdtemp(prefix="gateway-spool-", dir=config.spool_dir)
        pool = WorkerPool(config)
        dispatcher = Dispatcher(pool)
        try:
            if config.uses_demo_app:
                log.info("no application given: serving the built-in demo app (%s)", config.app)
            try:
                await pool.start()
            except AppLoadFailed as err:
                log.critical("%s; exiting", err)
                await pool.stop(0)
                return EXIT_APP_LOAD
            web_server_addrs = os.environ.get("FCGI_WEB_SERVER_ADDRS", "")
            for listener in self.listeners:
                allowed = config.allow_from
                if listener.listen.protocol == "fastcgi" and web_server_addrs:
                    allowed = allowed + parse_networks([web_server_addrs])
                context = FrontContext(config, dispatcher, spool_dir, str(listener.listen.address), allowed)
                self.contexts.append(context)
                await serve(listener, context, config.backlog)
                log.info("listening for %s on %s", listener.listen.protocol, listener.listen.address)
            log.info("%d workers serving %s", config.workers, config.app)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._record_signal, signum)
            assert pool.fatal is not None
            wake_wait = loop.create_task(self._wake.wait())
            waiters: set[asyncio.Future[Any]] = {pool.fatal, wake_wait}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            wake_wait.cancel()
            if pool.fatal.done():
                log.critical("%s; no worker is left, exiting", pool.fatal.result())
                status = EXIT_WORKERS_GONE
            else:
                log.info("received %s: shutting down gracefully", signal.Signals(self.received_signal or 15).name)
                status = EXIT_OK
            await self._shutdown(pool)
            return status
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            self._close_listeners()
            shutil.rmtree(spool_dir, ignore_errors=True)

    async def _shutdown(self, pool: WorkerPool) -> None:
        """Stop accepting, let in-flight requests finish, drain responses, then stop the workers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.graceful_timeout
        for listener in self.listeners:
            if listener.server is not None:
                listener.server.close()
        await pool.stop(self.config.graceful_timeout)
        while any(c.output is not None and c.output.pending for ctx in self.contexts for c in ctx.connections):
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for context in self.contexts:
            for connection in list(context.connections):
                if connection.transport is not None:
                    connection.transport.close()

    def _close_listeners(self) -> None:
        for listener in self.listeners:
            listener.close()
