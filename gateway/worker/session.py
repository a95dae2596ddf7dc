"""The session inside a worker: ``environ["gateway.session"]``, its cookie, and the changes sent back.

The event loop loaded the session before the request reached this worker and will store the changes after it;
the worker only decides, when the response head goes out, whether the head carries a Set-Cookie: a new session
that was written to, or a regenerated one, gets a fresh id minted here; an invalidated one gets its cookie
deleted. Values that are not JSON, or a session grown past what the store accepts, fail the request with a 500
while that is still possible, rather than losing data silently after the response.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from gateway.contract.startup import WorkerSessionSettings
from gateway.sessions import (
    Session,
    SessionChanges,
    SessionTooLarge,
    delete_cookie_value,
    new_session_id,
    request_is_https,
    set_cookie_value,
)

log = logging.getLogger("gateway.worker")

#: What a stored record adds around the data (timestamps, field names); kept out of the size budget.
_RECORD_OVERHEAD = 128


class WorkerSession:
    __slots__ = ("_data", "_decided", "_failed", "_params", "_settings", "issued_id", "loaded_id", "session")

    def __init__(
        self,
        loaded: tuple[str | None, dict[str, Any] | None],
        settings: WorkerSessionSettings,
        params: dict[str, Any],
    ) -> None:
        self.loaded_id, self._data = loaded
        self.session = Session(self.loaded_id, self._data)
        self._settings = settings
        self._params = params  # for the cookie's Secure flag, looked up only when a cookie is written
        self.issued_id: str | None = None
        self._decided = False
        self._failed = False

    def head_headers(self) -> bytes:
        """Called as the response head is sent: the Set-Cookie header line this response needs, if any."""
        self._decided = True
        session = self.session
        if not session.modified:
            return b""
        try:
            changes = session.changes()
            self._check_size(changes)
        except Exception:
            self._failed = True
            raise
        max_age = int(self._settings.max_age) or None
        https = request_is_https(self._params)
        if changes.regenerate or (session.is_new and changes.set):
            self.issued_id = new_session_id()
            value = set_cookie_value(self._settings.cookie, self.issued_id, https=https, max_age=max_age)
        elif changes.invalidate and self.loaded_id is not None:
            value = delete_cookie_value(self._settings.cookie, https=https)
        else:
            return b""
        return f"Set-Cookie: {value}\r\n".encode("latin-1")

    def _check_size(self, changes: SessionChanges) -> None:
        merged = {} if changes.invalidate or self._data is None else dict(self._data)
        for key in changes.deleted:
            merged.pop(key, None)
        merged.update(changes.set)
        size = len(orjson.dumps(merged)) + _RECORD_OVERHEAD
        limit = self._settings.max_size
        if size > limit:
            raise SessionTooLarge(size, limit)

    def end_payload(self, environ: dict[str, Any]) -> bytes:
        """What the loop must store, as the END frame's payload; empty when nothing changed."""
        session = self.session
        if self._failed or not session.modified:
            return b""
        try:
            changes = session.changes()
        except Exception:
            log.exception("%s: the session cannot be stored", environ.get("REQUEST_URI", environ.get("PATH_INFO")))
            return b""
        if changes.empty:
            return b""
        needs_new_id = changes.regenerate or (session.is_new and bool(changes.set))
        if needs_new_id and self.issued_id is None:
            log.warning(
                "%s: the session changed after the response head was sent, too late for its cookie; "
                "those changes are dropped (write to the session before start_response returns its first chunk)",
                environ.get("REQUEST_URI", environ.get("PATH_INFO")),
            )
            return b""
        if session.is_new and not changes.set:
            return b""
        return orjson.dumps([self.loaded_id, self.issued_id]) + b"\n" + changes.to_json()
