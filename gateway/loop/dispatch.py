"""From a buffered request to a worker, with the one place where asynchronous hooks (sessions) run.

A hook's ``before_dispatch`` runs in the event loop after the request has arrived whole and before it is queued
for a worker (the session is loaded here, so a worker never waits on session I/O); its ``after_response`` runs
after the worker has finished and before the response is completed to the client (the session is stored here).
Each hook first says synchronously whether it has anything to do (``prepare``): a request that needs no I/O goes
straight to the pool with no task created, so the common path stays cheap.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

from mypy_extensions import mypyc_attr

from gateway.loop.request import Request, respond_error

log = logging.getLogger("gateway.dispatch")


class HookRefused(Exception):
    """A hook cannot let the request through: the dispatcher answers ``status`` and logs ``reason`` (one line)."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class RequestHook(Protocol):
    #: Whether the hook needs no task at all: its work before dispatch is done in ``prepare`` and the work after
    #: the response in ``after_response_now``.
    at_once: bool

    def prepare(self, request: Request) -> bool:
        """Set up ``request`` synchronously; True when ``before_dispatch`` must run."""
        ...

    def after_response_now(self, request: Request, extras: bytes) -> None:
        """``after_response`` without suspending; called instead of it when ``at_once``."""

    async def before_dispatch(self, request: Request) -> None:
        """May raise HookRefused to answer the request without a worker."""

    async def after_response(self, request: Request, extras: bytes) -> None:
        """Called when the worker's END frame carried ``extras``; raising cuts the response short."""


class Pool(Protocol):
    """What the dispatcher needs of the worker pool: it takes requests, forgets them, and reports them done."""

    #: Set by the dispatcher: called with a finished request and its END extras; it finishes the sink.
    on_request_done: Callable[[Request, bytes], None] | None

    def submit(self, request: Request) -> None:
        """Run ``request`` on a worker, now or after those queued before it (or answer 503 when full)."""

    def cancel(self, request: Request) -> None:
        """``request``'s client is gone: drop it from the queue, or tell the worker that holds it."""


class StaticServer(Protocol):
    def serve(self, request: Request) -> bool:
        """Answer ``request`` from the loop (True), or leave it for a worker (False)."""
        ...


@mypyc_attr(allow_interpreted_subclasses=True)  # the front tests' FakeDispatcher takes requests instead
class Dispatcher:
    def __init__(self, pool: Pool, hooks: Sequence[RequestHook] = (), static: StaticServer | None = None) -> None:
        self.pool = pool
        self.hooks = tuple(hooks)
        #: ``--static`` mappings: answered in the loop before any hook or worker sees the request.
        self.static = static
        pool.on_request_done = self.request_done
        self._tasks: set[asyncio.Task[None]] = set()
        self._after_at_once = all(hook.at_once for hook in self.hooks)

    def submit(self, request: Request) -> None:
        if self.static is not None and self.static.serve(request):
            return
        hooks = self.hooks
        if len(hooks) == 1:
            must_wait = hooks[0].prepare(request)
        else:
            must_wait = bool(hooks) and any([hook.prepare(request) for hook in hooks])  # noqa: C419 - all prepare
        if must_wait:
            self._spawn(self._before_then_submit(request))
        else:
            self.pool.submit(request)

    def cancel(self, request: Request) -> None:
        self.pool.cancel(request)

    def request_done(self, request: Request, extras: bytes) -> None:
        if self.hooks and extras:
            if not self._after_at_once:
                self._spawn(self._after_then_finish(request, extras))
                return
            try:
                for hook in self.hooks:
                    hook.after_response_now(request, extras)
            except Exception as err:  # whatever it was, the client must not see a success
                self._not_stored(request, err)
                return
        request.release()
        if not request.sink.client_gone:
            request.sink.finish()

    async def _before_then_submit(self, request: Request) -> None:
        try:
            for hook in self.hooks:
                await hook.before_dispatch(request)
        except HookRefused as refused:
            log.warning(
                "%s %s: %s; answered %s",
                request.params.get("REQUEST_METHOD", "-"),
                request.params.get("REQUEST_URI", "-"),
                refused,
                refused.status,
            )
            self._answer(request, refused.status)
            return
        except Exception:
            log.exception("a request hook failed before dispatch; answering 503")
            self._answer(request, "503 Service Unavailable")
            return
        if request.sink.client_gone:
            request.release()
        else:
            self.pool.submit(request)

    def _answer(self, request: Request, status: str) -> None:
        request.release()
        if not request.sink.client_gone:
            respond_error(request.sink, status, "Retry-After: 1\r\n" if status.startswith("503") else "")

    async def _after_then_finish(self, request: Request, extras: bytes) -> None:
        try:
            for hook in self.hooks:
                await hook.after_response(request, extras)
        except Exception as err:  # whatever it was, the client must not see a success
            self._not_stored(request, err)
            return
        request.release()
        if not request.sink.client_gone:
            request.sink.finish()

    def _not_stored(self, request: Request, err: Exception) -> None:
        log.error(
            "%s %s: the session could not be stored (%s); the response is cut short",
            request.params.get("REQUEST_METHOD", "-"),
            request.params.get("REQUEST_URI", "-"),
            err,
        )
        request.release()
        if not request.sink.client_gone:
            request.sink.abort()

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
