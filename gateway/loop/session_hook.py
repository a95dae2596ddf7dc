"""Sessions in the event loop: load before dispatch, store after the response, never in a worker.

A request without our cookie (or with one we never issued) costs nothing here: no task, no store access. A
request with one costs one ``load`` before it is queued for a worker; if the store cannot answer within
``--session-timeout``, the request gets a 503 and never reaches a worker. The changes the worker sends back are
merged into the stored session (``SessionStore.save``) before the response is completed; if that fails, the
response is cut short so the client sees a failure, never a silent loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AbstractAsyncContextManager

import orjson

from gateway.config.settings import Config
from gateway.contract.startup import WorkerSessionSettings
from gateway.loop.dispatch import HookRefused
from gateway.loop.request import Request
from gateway.sessions import (
    CookieSettings,
    SessionChanges,
    SessionError,
    SessionRecord,
    SessionStore,
    session_ids_from_cookies,
)
from gateway.sessions.store import run_at_once

log = logging.getLogger("gateway.sessions")

#: memcached's default item size; the worker refuses a session that would not fit, while it can still answer 500.
MAX_SESSION_SIZE = 1_000_000


def worker_session_settings(config: Config) -> WorkerSessionSettings:
    """What a worker needs to set the session cookie itself."""
    cookie = CookieSettings(
        name=config.session_cookie,
        domain=config.session_cookie_domain,
        path=config.session_cookie_path,
        same_site=config.session_samesite,
        secure=config.session_secure,
    )
    return WorkerSessionSettings(cookie, config.session_max_age, MAX_SESSION_SIZE)


class SessionHook:
    def __init__(self, store: SessionStore, config: Config) -> None:
        self.store = store
        self.config = config
        self.cookie = worker_session_settings(config).cookie
        self._tasks: set[asyncio.Task[None]] = set()
        #: The memory store is loaded and saved on the spot, without a task (a lock may wait: then tasks again).
        self.at_once = store.answers_at_once and not config.session_serialize

    def prepare(self, request: Request) -> bool:
        """Synchronous part: True when the request carries a session id, so ``before_dispatch`` must run (unless
        the store answers at once: then the session is loaded here)."""
        cookie = request.params.get("HTTP_COOKIE")
        session_ids = session_ids_from_cookies(cookie, self.cookie) if cookie else None
        if not session_ids:
            request.session = (None, None)
            return False
        request.state["session_ids"] = session_ids
        if self.at_once:
            record = None
            try:
                for session_id in session_ids:  # the first that loads (see session_ids_from_cookies)
                    record = run_at_once(self.store.load(session_id))
                    if record is not None:
                        break
            except Exception:  # before_dispatch loads again and answers 503 naming the error
                return True
            _loaded(request, session_id, record)
            return False
        return True

    async def before_dispatch(self, request: Request) -> None:
        session_ids: list[str] = request.state["session_ids"]
        session_id = session_ids[0]
        record: SessionRecord | None = None
        loaded = False
        try:
            if len(session_ids) > 1:
                # Several ids (a forged or stale cookie in front of ours): the first that loads is the session.
                async with asyncio.timeout(self.config.session_timeout):
                    for candidate in session_ids:
                        record = await self.store.load(candidate)
                        if record is not None:
                            session_id = candidate
                            break
                loaded = True
            if self.config.session_serialize:
                await self._lock(request, session_id)
                loaded = False  # loaded again under the lock
            if not loaded:
                async with asyncio.timeout(self.config.session_timeout):
                    record = await self.store.load(session_id)
        except TimeoutError as err:
            # The bound fired before the store said why (an exception without a message): name what timed out.
            reason = f"{self.store.where} did not load the session within {self.config.session_timeout:g} s"
            raise HookRefused("503 Service Unavailable", f"session store unavailable: {reason}") from err
        except SessionError as err:
            reason = str(err) or f"{type(err).__name__} from {self.store.where}"
            raise HookRefused("503 Service Unavailable", f"session store unavailable: {reason}") from err
        _loaded(request, session_id, record)

    async def _lock(self, request: Request, session_id: str) -> None:
        # Wait as long as the request holding the lock may run (--timeout), or 30 s without one.
        wait = (self.config.timeout or 30.0) + self.config.session_timeout
        lock: AbstractAsyncContextManager[None] = self.store.lock(session_id, timeout=wait)
        await lock.__aenter__()

        def release() -> None:
            task = asyncio.get_running_loop().create_task(_exit(lock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        request.cleanups.append(release)

    async def after_response(self, request: Request, extras: bytes) -> None:
        """Store what the worker reported; raises (the dispatcher cuts the response) when it cannot."""
        try:
            async with asyncio.timeout(self.config.session_timeout):
                await self._save(request, extras)
        except TimeoutError as err:
            raise SessionError(f"storing the session timed out after {self.config.session_timeout:g} s") from err

    def after_response_now(self, request: Request, extras: bytes) -> None:
        """``after_response`` on the spot, for a store that answers at once (``at_once``)."""
        run_at_once(self._save(request, extras))

    async def _save(self, request: Request, extras: bytes) -> None:
        ids, _, changes_json = extras.partition(b"\n")
        loaded_id, issued_id = orjson.loads(ids)
        changes = SessionChanges.from_json(changes_json)
        if loaded_id is None:
            await self.store.save(issued_id, changes)
        elif changes.regenerate:
            await self.store.save(loaded_id, changes, new_id=issued_id)
        else:
            await self.store.save(loaded_id, changes, base=request.state.get("session_record"))

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()


def _loaded(request: Request, session_id: str, record: SessionRecord | None) -> None:
    # An id we did not issue, or one that expired, is never adopted: the request starts without a session.
    request.session = (session_id, record.data) if record is not None else (None, None)
    request.state["session_record"] = record  # the save's starting point (see SessionRecord.version)


async def _exit(lock: AbstractAsyncContextManager[None]) -> None:
    with contextlib.suppress(Exception):
        await lock.__aexit__(None, None, None)
