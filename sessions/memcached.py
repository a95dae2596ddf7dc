"""Sessions in memcached (directly, or through twemproxy/nutcracker for several servers).

Expiry is split between the server and us. The idle TTL is memcached's own expiry time, slid forward by every save
and by a ``touch`` on every load that does not follow a save closely, so an abandoned session costs nothing to clean
up. The absolute max age is checked by us against the record's ``created`` time (the server's expiry is also capped
at it, so a session past it vanishes soon).

Saving merges with compare-and-swap: ``gets`` the record, apply this request's keys, ``cas`` it back (or ``add`` it
when absent), and start over when another request stored first, a bounded number of times. A load is a ``gets``
too, and a save handed the loaded record starts with the ``cas`` on its token; the load's ``touch`` is skipped
when the session was saved moments ago (see _TOUCH_SLACK_SHARE): a request that loads and changes an active
session costs two round trips (gets, cas), not four, unless another request stored in between. The size limit is
checked before storing, because memcached answers an oversized ``set``/``cas`` by deleting the item it had.

Every operation runs under ``timeout`` and every failure of the server or the network becomes
SessionStoreUnavailable; connections that failed are dropped and new ones opened on the next call, so the store
recovers by itself when memcached comes back. See ``sessions/_memcache.py`` for why connections are our own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypeVar

import aiomcache

from gateway.sessions import _record
from gateway.sessions._memcache import MemcacheConnections
from gateway.sessions.ids import SESSION_ID_LENGTH, is_valid_session_id
from gateway.sessions.mapping import SessionChanges
from gateway.sessions.store import SessionLockTimeout, SessionRecord, SessionStoreUnavailable, SessionTooLarge

log = logging.getLogger("gateway.sessions.memcached")

_T = TypeVar("_T")

# Memcached reads an expiry time over 30 days as an absolute Unix time, and one in the past as "already expired":
# a ``cas`` with this value replaces an item with one that is gone at once, i.e. an atomic compare-and-delete.
_RELATIVE_EXPTIME_LIMIT = 30 * 24 * 3600
_EXPIRED_AT_ONCE = _RELATIVE_EXPTIME_LIMIT + 1
# Memcached's clock ticks once a second and an item expires when the tick reaches its expiry, up to a second
# early; one second more guarantees a session is never dropped before it has been idle for the whole TTL.
_CLOCK_GRACE = 1
# A load skips its touch when the session was saved less than this long ago (its share of the idle TTL, at most a
# minute), and saves set the expiry that much further: an active session costs a gets and a cas per request, not a
# gets, a touch and a cas, and still never expires before it has been idle for the whole TTL (at most the slack
# later). The saved time is the saving host's clock, so hosts sharing memcached need clocks within that slack.
_TOUCH_SLACK_SHARE = 0.1
_TOUCH_SLACK_MAX = 60.0
_CAS_ATTEMPTS = 16  # each conflict means another request stored; 16 concurrent writers of one session is plenty
_LOCK_TTL = 30  # seconds: a lock whose holder died frees itself; a request holding it longer loses exclusivity
_LOCK_POLL_FIRST = 0.005
_LOCK_POLL_MAX = 0.1
_LOCK_KEY_INFIX = "lock:"  # ":" is not in the id alphabet, so a lock key never equals a session key
_MEMCACHED_KEY_LIMIT = 250

# What a dead, stopped or misbehaving server produces: socket errors (including our ConnectionResetError on EOF),
# a reply cut short (IncompleteReadError is an EOFError), an unexpected reply aiomcache recognises
# (ClientException), or one it cannot even parse (ValueError, IndexError from splitting the line).
_UNAVAILABLE = (OSError, EOFError, aiomcache.ClientException, ValueError, IndexError)


class MemcachedStore:
    """A :class:`~gateway.sessions.store.SessionStore` on memcached; keys are ``prefix`` + session id."""

    answers_at_once = False

    def __init__(
        self,
        host: str,
        port: int,
        *,
        idle_ttl: float,
        max_age: float | None = None,
        prefix: str = "gw:s:",
        pool_size: int = 16,
        timeout: float = 2.0,
        max_item_size: int = 1_000_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if idle_ttl <= 0:
            raise ValueError(f"idle_ttl must be > 0 seconds, not {idle_ttl}")
        if max_age is not None and max_age <= 0:
            raise ValueError(f"max_age must be > 0 seconds or None, not {max_age}")
        if timeout <= 0 or pool_size < 1 or max_item_size < 1:
            raise ValueError("timeout must be > 0, pool_size and max_item_size at least 1")
        longest_key = len(prefix) + len(_LOCK_KEY_INFIX) + SESSION_ID_LENGTH
        if not prefix.isascii() or not prefix.isprintable() or " " in prefix or longest_key > _MEMCACHED_KEY_LIMIT:
            raise ValueError(f"prefix {prefix!r} must be short printable ASCII without spaces (memcached key rules)")
        self.idle_ttl = idle_ttl
        self.max_age = max_age
        self.timeout = timeout
        self.max_item_size = max_item_size
        self._prefix = prefix
        self._clock = clock
        self._touch_slack = min(idle_ttl * _TOUCH_SLACK_SHARE, _TOUCH_SLACK_MAX)
        self._memcache = MemcacheConnections(host, port, size=pool_size)

    @property
    def where(self) -> str:
        return f"memcached at {self._memcache.host}:{self._memcache.port}"

    def __repr__(self) -> str:
        return f"<MemcachedStore {self._memcache.host}:{self._memcache.port} prefix={self._prefix!r}>"

    # -- the SessionStore contract ---------------------------------------------------------------------------------

    async def load(self, session_id: str) -> SessionRecord | None:
        if not is_valid_session_id(session_id):
            return None
        return await self._bounded("load", lambda: self._load(self._key(session_id)))

    async def save(
        self,
        session_id: str,
        changes: SessionChanges,
        *,
        new_id: str | None = None,
        base: SessionRecord | None = None,
    ) -> SessionRecord:
        _record.check_save_arguments(session_id, changes, new_id)
        if changes.invalidate:
            return await self._bounded("save", lambda: self._restart(session_id, changes, new_id))
        if new_id is not None:
            return await self._bounded("save", lambda: self._move(session_id, changes, new_id))
        return await self._bounded("save", lambda: self._merge(session_id, changes, base))

    async def delete(self, session_id: str) -> None:
        if is_valid_session_id(session_id):
            await self._bounded("delete", lambda: self._memcache.delete(self._key(session_id)))

    def lock(self, session_id: str, *, timeout: float) -> AbstractAsyncContextManager[None]:
        if not is_valid_session_id(session_id):
            raise ValueError("lock() needs a well-formed session id")
        return self._locked(self._key(session_id, _LOCK_KEY_INFIX), timeout)

    async def close(self) -> None:
        await self._memcache.close()

    # -- operations, each run under _bounded -----------------------------------------------------------------------

    async def _load(self, key: bytes) -> SessionRecord | None:
        # gets, not get: its cas token lets the save skip a read (a touch leaves the token as it is).
        blob, cas_token = await self._memcache.gets(key)
        if blob is None:
            return None
        now = self._clock()
        record = self._live(blob, now)
        exptime = self._exptime(record.created, now) if record is not None else None
        if record is None or exptime is None:
            await self._memcache.delete(key)  # corrupt or past its max age: nobody may see it again
            return None
        if not 0 <= now - record.accessed < self._touch_slack and not await self._memcache.touch(key, exptime):
            return None  # deleted (logout, regenerate) between our get and touch
        return SessionRecord(data=record.data, created=record.created, accessed=now, version=cas_token)

    async def _merge(self, session_id: str, changes: SessionChanges, base: SessionRecord | None) -> SessionRecord:
        key = self._key(session_id)
        if base is not None and base.version is not None:
            # What the request loaded is still what is stored unless the cas fails: then read and merge again.
            now = self._clock()
            if not _record.past_max_age(base, self.max_age, now):
                record = _record.merge(base, changes, now)
                payload = _record.encode(record, self.max_item_size)
                exptime = self._exptime(record.created, now, saving=True) or 1
                if await self._store(self._memcache.cas(key, payload, base.version, exptime), len(payload)):
                    return record
        for _ in range(_CAS_ATTEMPTS):
            blob, cas_token = await self._memcache.gets(key)
            now = self._clock()
            current = self._live(blob, now) if blob is not None else None
            record = _record.merge(current, changes, now)
            payload = _record.encode(record, self.max_item_size)
            exptime = self._exptime(record.created, now, saving=True) or 1
            if blob is None:
                stored = await self._store(self._memcache.add(key, payload, exptime), len(payload))
            elif cas_token is None:
                raise SessionStoreUnavailable("memcached answered gets without a cas token")
            else:  # also replaces a dead (corrupt or too old) record, atomically
                stored = await self._store(self._memcache.cas(key, payload, cas_token, exptime), len(payload))
            if stored:
                return record
        raise SessionStoreUnavailable(f"the session changed under {_CAS_ATTEMPTS} attempts to store it; try again")

    async def _move(self, session_id: str, changes: SessionChanges, new_id: str) -> SessionRecord:
        old_key, new_key = self._key(session_id), self._key(new_id)
        blob = await self._memcache.get(old_key)
        now = self._clock()
        current = self._live(blob, now) if blob is not None else None
        record = _record.merge(current, changes, now)  # keeps ``created``: the max age spans the regeneration
        payload = _record.encode(record, self.max_item_size)
        exptime = self._exptime(record.created, now, saving=True) or 1
        if not await self._store(self._memcache.set(new_key, payload, exptime), len(payload)):
            raise SessionStoreUnavailable("memcached did not store the regenerated session")
        await self._memcache.delete(old_key)
        return record

    async def _restart(self, session_id: str, changes: SessionChanges, new_id: str | None) -> SessionRecord:
        now = self._clock()
        record = _record.restarted(changes, now)
        if record.data:
            payload = _record.encode(record, self.max_item_size)  # may raise: nothing has been touched yet
            target = new_id or session_id
            exptime = self._exptime(now, now, saving=True) or 1
            if not await self._store(self._memcache.set(self._key(target), payload, exptime), len(payload)):
                raise SessionStoreUnavailable("memcached did not store the restarted session")
            if target == session_id:
                return record
        await self._memcache.delete(self._key(session_id))
        return record

    @asynccontextmanager
    async def _locked(self, key: bytes, timeout: float) -> AsyncIterator[None]:
        owner = secrets.token_hex(16).encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = _LOCK_POLL_FIRST
        while not await self._bounded("lock", lambda: self._memcache.add(key, owner, _LOCK_TTL)):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SessionLockTimeout(f"the session's lock was not acquired within {timeout:g} s")
            # Jitter keeps waiters from polling in lockstep; it protects no secret.
            await asyncio.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))  # noqa: S311
            delay = min(delay * 2, _LOCK_POLL_MAX)
        try:
            yield
        finally:
            try:
                await self._bounded("unlock", lambda: self._release(key, owner))
            except SessionStoreUnavailable as err:
                # Not worth failing a request that has already run: the lock expires by itself.
                log.warning("could not release a session lock (it expires within %d s): %s", _LOCK_TTL, err)

    async def _release(self, key: bytes, owner: bytes) -> None:
        """Release the lock only if it is still ours: it may have expired and been taken by another request."""
        value, cas_token = await self._memcache.gets(key)
        if value == owner and cas_token is not None:
            await self._memcache.cas(key, b"", cas_token, _EXPIRED_AT_ONCE)

    # -- helpers ---------------------------------------------------------------------------------------------------

    async def _bounded(self, what: str, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``operation`` under the store's timeout; server and network failures become SessionStoreUnavailable."""
        where = f"memcached at {self._memcache.host}:{self._memcache.port}"
        try:
            async with asyncio.timeout(self.timeout):
                return await operation()
        except TimeoutError as err:
            message = f"{where} did not complete a session {what} within {self.timeout:g} s"
            raise SessionStoreUnavailable(message) from err
        except _UNAVAILABLE as err:
            raise SessionStoreUnavailable(f"{where} failed a session {what}: {err!r}") from err

    async def _store(self, command: Awaitable[bool], size: int) -> bool:
        """A storage command, with memcached's own "too large" refusal (its item limit below ours) made explicit."""
        try:
            return await command
        except aiomcache.ClientException as err:
            if "too large" in str(err):
                raise SessionTooLarge(size, self.max_item_size) from err
            raise

    def _key(self, session_id: str, infix: str = "") -> bytes:
        return f"{self._prefix}{infix}{session_id}".encode("ascii")

    def _live(self, blob: bytes, now: float) -> SessionRecord | None:
        """The record in ``blob`` unless it is corrupt or past its max age (then it counts as absent)."""
        record = _record.decode(blob)
        if record is None:
            log.warning("ignoring a corrupt session record in %r", self)
            return None
        if _record.past_max_age(record, self.max_age, now):
            return None
        return record

    def _exptime(self, created: float, now: float, *, saving: bool = False) -> int | None:
        """Memcached's expiry time for a session created at ``created``; None when it is past its max age.

        A save adds the touch slack: a load within that time of the save skips its touch (see _load), and the
        session must still outlive that load by the whole idle TTL.
        """
        ttl = self.idle_ttl + self._touch_slack if saving else self.idle_ttl
        if self.max_age is not None:
            remaining = created + self.max_age - now
            if remaining <= 0:
                return None
            ttl = min(ttl, remaining)
        seconds = math.ceil(ttl) + _CLOCK_GRACE
        if seconds > _RELATIVE_EXPTIME_LIMIT:
            # Memcached would read this as an absolute time; the server's clock is the wall clock, not ours.
            return int(time.time()) + seconds
        return seconds
