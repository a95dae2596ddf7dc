"""Server-side sessions: ids, the cookie, the app's session mapping, and the stores behind them.

Who does what (the gateway wires it up):

* event loop, before dispatch: ``session_id_from_cookies`` on ``HTTP_COOKIE``; if an id was found,
  ``await store.load(id)`` (SessionStoreUnavailable → 503); the record's data (or none) goes to the worker.
* worker: ``Session(id or None, data or None)`` as ``environ["gateway.session"]``. When the response head goes
  out, the worker decides the cookie: a new session that was written to, or a regenerated one, gets an id
  minted there (``new_session_id()``) and ``set_cookie_value``; an invalidated one gets ``delete_cookie_value``.
  After the app answered, the loaded and issued ids and ``session.changes().to_json()`` go back in the END
  frame (SessionValueError there is the app's bug: a 500 in the worker).
* event loop, after the response: ``SessionChanges.from_json``; ``await store.save(...)`` under the loaded id
  (the issued one for a new session, and ``new_id=`` the issued one when ``changes.regenerate``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from gateway.sessions.cookies import (
    CookieSettings,
    delete_cookie_value,
    request_is_https,
    session_id_from_cookies,
    session_ids_from_cookies,
    set_cookie_value,
)
from gateway.sessions.ids import is_valid_session_id, new_session_id
from gateway.sessions.mapping import Session, SessionChanges
from gateway.sessions.store import (
    SessionError,
    SessionLockTimeout,
    SessionRecord,
    SessionStore,
    SessionStoreUnavailable,
    SessionTooLarge,
    SessionValueError,
)

if TYPE_CHECKING:
    from gateway.sessions.memcached import MemcachedStore
    from gateway.sessions.memory import MemoryStore

__all__ = [
    "CookieSettings",
    "MemcachedStore",
    "MemoryStore",
    "Session",
    "SessionChanges",
    "SessionError",
    "SessionLockTimeout",
    "SessionRecord",
    "SessionStore",
    "SessionStoreUnavailable",
    "SessionTooLarge",
    "SessionValueError",
    "delete_cookie_value",
    "is_valid_session_id",
    "new_session_id",
    "open_store",
    "request_is_https",
    "session_id_from_cookies",
    "session_ids_from_cookies",
    "set_cookie_value",
]

_ACCEPTED = "'memory', 'memcached://HOST:PORT' or 'off'"


def __getattr__(name: str) -> object:
    """The stores, imported when first named: they run in the event loop (asyncio, aiomcache), while a worker
    imports this package for the session mapping and the cookie rules and must not load them (asyncio alone is
    about 7 MiB in every worker and in the --preload template; tests/test_layout.py)."""
    if name == "MemcachedStore":
        from gateway.sessions.memcached import MemcachedStore  # noqa: PLC0415 (loop side only, see above)

        return MemcachedStore
    if name == "MemoryStore":
        from gateway.sessions.memory import MemoryStore  # noqa: PLC0415 (loop side only, see above)

        return MemoryStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_store(
    url: str,
    *,
    idle_ttl: float,
    max_age: float | None,
    timeout: float = 2.0,
    prefix: str = "gw:s:",
    pool_size: int = 16,
) -> SessionStore | None:
    """The store a configuration string names: ``memory``, ``memcached://HOST:PORT``, or ``off`` (None).

    Opening connects to nothing: a memcached store opens its connections on first use, so the gateway starts even
    while memcached is down and its requests get 503 until it is back.
    """
    if url == "off":
        return None
    if url == "memory":
        from gateway.sessions.memory import MemoryStore  # noqa: PLC0415 (loop side only, see __getattr__)

        return MemoryStore(idle_ttl=idle_ttl, max_age=max_age)
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as err:  # e.g. a port out of range or not a number
        raise ValueError(f"bad session store {url!r} ({err}): use {_ACCEPTED}") from None
    if (
        parts.scheme != "memcached"
        or not host
        or port is None
        or parts.username is not None
        or parts.password is not None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(f"bad session store {url!r}: use {_ACCEPTED}")
    from gateway.sessions.memcached import MemcachedStore  # noqa: PLC0415 (aiomcache: only for memcached)

    return MemcachedStore(
        host, port, idle_ttl=idle_ttl, max_age=max_age, timeout=timeout, prefix=prefix, pool_size=pool_size
    )
