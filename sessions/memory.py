"""Sessions in the event loop's memory: for development, tests and single-host deployments that accept losing
every session on restart.

It keeps the contract of the memcached store exactly (same bytes, same limits, same merge), only without the
network: every method runs without awaiting anything, so a load or save is atomic with respect to other requests
and needs no compare-and-swap. Memory is bounded by ``max_sessions``: past it, the least recently used session
is dropped, as memcached would under memory pressure.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from gateway.sessions import _record
from gateway.sessions.ids import is_valid_session_id
from gateway.sessions.mapping import SessionChanges
from gateway.sessions.store import SessionLockTimeout, SessionRecord


@dataclass(slots=True)
class _Entry:
    blob: bytes  # what memcached would hold
    created: float  # duplicated from the blob so expiry checks need no parsing
    accessed: float


@dataclass(slots=True)
class _LockSlot:
    lock: asyncio.Lock
    users: int = 0  # holders and waiters; the slot goes when the last one leaves, so idle ids cost nothing


class MemoryStore:
    """An in-process :class:`~gateway.sessions.store.SessionStore`; ``clock`` is injectable so tests need not sleep."""

    answers_at_once = True  # load and save await nothing (lock may wait for another holder)

    @property
    def where(self) -> str:
        return "the gateway's memory"

    def __init__(
        self,
        *,
        idle_ttl: float,
        max_age: float | None = None,
        max_sessions: int = 100_000,
        max_item_size: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if idle_ttl <= 0:
            raise ValueError(f"idle_ttl must be > 0 seconds, not {idle_ttl}")
        if max_age is not None and max_age <= 0:
            raise ValueError(f"max_age must be > 0 seconds or None, not {max_age}")
        if max_sessions < 1 or max_item_size < 1:
            raise ValueError("max_sessions and max_item_size must be at least 1")
        self.idle_ttl = idle_ttl
        self.max_age = max_age
        self.max_sessions = max_sessions
        self.max_item_size = max_item_size
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._locks: dict[str, _LockSlot] = {}

    def __len__(self) -> int:
        """How many sessions are held, expired ones not yet noticed included."""
        return len(self._entries)

    async def load(self, session_id: str) -> SessionRecord | None:
        if not is_valid_session_id(session_id):
            return None
        now = self._clock()
        entry = self._live(session_id, now)
        if entry is None:
            return None
        entry.accessed = now
        self._entries.move_to_end(session_id)
        record = _record.decode(entry.blob)
        if record is None:  # cannot happen with bytes we wrote ourselves; treated like memcached garbage
            del self._entries[session_id]
            return None
        return SessionRecord(data=record.data, created=entry.created, accessed=now)

    async def save(
        self,
        session_id: str,
        changes: SessionChanges,
        *,
        new_id: str | None = None,
        base: SessionRecord | None = None,  # a hint for versioned stores: reading our own dict costs nothing
    ) -> SessionRecord:
        _record.check_save_arguments(session_id, changes, new_id)
        now = self._clock()
        if changes.invalidate:
            record = _record.restarted(changes, now)
            if not record.data:
                self._entries.pop(session_id, None)
                return record
            blob = _record.encode(record, self.max_item_size)  # may raise: nothing has been touched yet
            self._entries.pop(session_id, None)
            self._put(new_id or session_id, blob, record)
            return record
        entry = self._live(session_id, now)
        current = _record.decode(entry.blob) if entry is not None else None
        record = _record.merge(current, changes, now)
        blob = _record.encode(record, self.max_item_size)  # may raise: nothing has been touched yet
        if new_id is not None:
            self._entries.pop(session_id, None)
        self._put(new_id or session_id, blob, record)
        return record

    async def delete(self, session_id: str) -> None:
        self._entries.pop(session_id, None)

    def lock(self, session_id: str, *, timeout: float) -> AbstractAsyncContextManager[None]:
        if not is_valid_session_id(session_id):
            raise ValueError("lock() needs a well-formed session id")
        return self._locked(session_id, timeout)

    async def close(self) -> None:
        self._entries.clear()

    def _live(self, session_id: str, now: float) -> _Entry | None:
        """The entry, unless it has expired (then it is dropped on the spot)."""
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        idle = now - entry.accessed >= self.idle_ttl
        if idle or (self.max_age is not None and now - entry.created >= self.max_age):
            del self._entries[session_id]
            return None
        return entry

    def _put(self, session_id: str, blob: bytes, record: SessionRecord) -> None:
        self._entries[session_id] = _Entry(blob=blob, created=record.created, accessed=record.accessed)
        self._entries.move_to_end(session_id)
        while len(self._entries) > self.max_sessions:
            self._entries.popitem(last=False)

    @asynccontextmanager
    async def _locked(self, session_id: str, timeout: float) -> AsyncIterator[None]:
        slot = self._locks.get(session_id)
        if slot is None:
            slot = self._locks[session_id] = _LockSlot(asyncio.Lock())
        slot.users += 1
        try:
            try:
                async with asyncio.timeout(timeout):
                    await slot.lock.acquire()
            except TimeoutError:
                raise SessionLockTimeout(f"the session's lock was not acquired within {timeout:g} s") from None
            try:
                yield
            finally:
                slot.lock.release()
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._locks[session_id]
