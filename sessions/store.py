"""What every session store promises, and the errors the gateway turns into responses.

The event-loop process is the only one that talks to a store: it loads a session before a request is dispatched
and saves the request's :class:`~gateway.sessions.mapping.SessionChanges` after the app answered. Several requests
of one session may be in flight at once (a page and its XHRs), so ``save`` merges instead of overwriting: each request
writes only the keys it touched, on top of whatever is stored at that moment.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Coroutine

    from gateway.sessions.mapping import SessionChanges

_T = TypeVar("_T")


class SessionError(Exception):
    """Base of everything the sessions package raises on purpose."""


class SessionStoreUnavailable(SessionError):
    """The store did not answer in time, refused the connection or answered nonsense: the gateway answers 503.

    Transient by nature; stores reconnect by themselves, so the next request may well succeed.
    """


class SessionTooLarge(SessionError):
    """The serialized session is over the store's item limit; nothing was written, the stored session is intact."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"the session is {size} bytes serialized, over the store's limit of {limit} bytes")


class SessionValueError(SessionError):
    """A session value cannot be stored as JSON (or session changes from a worker are malformed); names the key."""


class SessionLockTimeout(SessionError):
    """Another request held the session's lock for longer than the caller was prepared to wait."""


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A stored session: its data and wall-clock times (seconds since the epoch).

    ``created`` anchors the absolute maximum age; ``accessed`` is when it was last loaded or saved.
    """

    data: dict[str, Any]
    created: float
    accessed: float
    #: The store's token for the stored state this record was loaded from (memcached's cas unique), or None. A
    #: ``save`` given this record as ``base`` may then write without reading the session again first, as long as
    #: nothing was stored in between; that is how a request's load and save cost two round trips, not three.
    version: int | None = None


class SessionStore(Protocol):
    """The contract every store keeps (:class:`~gateway.sessions.memory.MemoryStore`,
    :class:`~gateway.sessions.memcached.MemcachedStore`).

    Session ids passed in are expected to satisfy :func:`gateway.sessions.ids.is_valid_session_id`; ``load`` answers
    None and ``delete`` does nothing for any other string, ``save`` and ``lock`` raise ValueError (a gateway bug).
    """

    #: True when ``load`` and ``save`` never suspend (no I/O): the gateway then runs them to their end on the spot
    #: instead of in a task, which is most of what a session costs the event loop with the memory store.
    answers_at_once: bool

    @property
    def where(self) -> str:
        """Where the sessions live, for log lines: "memcached at HOST:PORT", "the gateway's memory"."""
        ...

    async def load(self, session_id: str) -> SessionRecord | None:
        """The stored session, or None when absent, idle for longer than the idle TTL, or past its max age.

        A successful load counts as activity: it slides the idle expiry forward.
        """
        ...

    async def save(
        self,
        session_id: str,
        changes: SessionChanges,
        *,
        new_id: str | None = None,
        base: SessionRecord | None = None,
    ) -> SessionRecord:
        """Merge one request's changes into the stored session and return what is now stored.

        ``base`` is what this request loaded, if it did: a hint only (the result is the same with or without it),
        which lets a store that versions its records skip reading the session again when it is unchanged.

        Keys this request did not touch keep whatever is stored now (another request may have written them); of
        two requests writing one key, the last save wins. An absent session is created (``created`` = now).
        With ``new_id`` (required when ``changes.regenerate``) the merged session moves to ``new_id`` and
        ``session_id`` is deleted. With ``changes.invalidate`` the stored session is deleted; keys the app set
        after invalidating start a fresh session under ``new_id`` (or ``session_id`` for a brand-new one).
        Raises SessionTooLarge before writing anything when the result would not fit.
        """
        ...

    async def delete(self, session_id: str) -> None:
        """Forget the session; deleting an absent one is not an error."""
        ...

    def lock(self, session_id: str, *, timeout: float) -> AbstractAsyncContextManager[None]:
        """An exclusive lock on one session, for apps that need its requests one at a time.

        Raises SessionLockTimeout when not acquired within ``timeout`` seconds.
        """
        ...

    async def close(self) -> None:
        """Release connections and memory; the store is unusable afterwards."""
        ...


def run_at_once(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run a store call that never suspends (see ``SessionStore.answers_at_once``) to its end, without a task."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a session store that answers at once suspended; it must set answers_at_once = False")
