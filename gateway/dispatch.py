"""From a buffered request to a worker, with the one place where asynchronous hooks (sessions) run.

A hook's ``before_dispatch`` runs in the event loop after the request has arrived whole and before it is queued
for a worker (the session is loaded here, so a worker never waits on session I/O); its ``after_response`` runs
after the worker has finished and before the response is completed to the client (the session is stored here).
Without hooks a request goes straight to the pool, with no task created: the common path stays cheap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, Protocol

from gateway.pool import WorkerPool
from gateway.request import Request, respond_error

log = logging.getLogger("gateway.dispatch")


class RequestHook(Protocol):
    async def before_dispatch(self, request: Request) -> None: ...

    async def after_response(self, request: Request, extras: bytes) -> None: ...


class Dispatcher:
    def __init__(self, pool: WorkerPool, hooks: Sequence[RequestHook] = ()) -> None:
        self.pool = pool
        self.hooks = tuple(hooks)
        pool.on_request_done = self.request_done
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, request: Request) -> None:
        if self.hooks:
            self._spawn(self._before_then_submit(request))
        else:
            self.pool.submit(request)

    def cancel(self, request: Request) -> None:
        self.pool.cancel(request)

    def request_done(self, request: Request, extras: bytes) -> None:
        if self.hooks:
            self._spawn(self._after_then_finish(request, extras))
        else:
            request.sink.finish()

    async def _before_then_submit(self, request: Request) -> None:
        try:
            for hook in self.hooks:
                await hook.before_dispatch(request)
        except Exception:
            log.exception("a request hook failed before dispatch; answering 503")
            if not request.sink.client_gone:
                respond_error(request.sink, "503 Service Unavailable")
            request.release()
            return
        if request.sink.client_gone:
            request.release()
        else:
            self.pool.submit(request)

    async def _after_then_finish(self, request: Request, extras: bytes) -> None:
        try:
            for hook in self.hooks:
                await hook.after_response(request, extras)
        except Exception:
            log.exception("a request hook failed after the response; cutting the response short")
            if not request.sink.client_gone:
                request.sink.abort()
            return
        if not request.sink.client_gone:
            request.sink.finish()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
