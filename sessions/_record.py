"""The stored form of a session and the merge rule, shared by every store so they behave identically.

A record is stored as orjson bytes ``{"v": 1, "c": created, "a": accessed, "d": data}``. The memory store keeps the
same bytes as memcached does, so serialization errors and size limits show up in development exactly as in
production, and a loaded session is always a fresh copy the caller may mutate.
"""

from __future__ import annotations

from typing import Any, TypeGuard, cast

import orjson

from gateway.sessions.ids import is_valid_session_id
from gateway.sessions.mapping import SessionChanges
from gateway.sessions.store import SessionRecord, SessionTooLarge, SessionValueError

_FORMAT = 1


def check_save_arguments(session_id: str, changes: SessionChanges, new_id: str | None) -> None:
    """Reject what can only be a caller's bug, before any I/O."""
    if not is_valid_session_id(session_id):
        raise ValueError("save() needs a well-formed session id")
    if new_id is not None and (not is_valid_session_id(new_id) or new_id == session_id):
        raise ValueError("save(new_id=...) needs a well-formed session id different from the current one")
    if changes.regenerate and new_id is None:
        raise ValueError("these changes regenerate the session: pass new_id=new_session_id()")


def encode(record: SessionRecord, limit: int) -> bytes:
    """The record's stored bytes; SessionTooLarge past ``limit``, SessionValueError naming a non-JSON key."""
    try:
        blob = orjson.dumps({"v": _FORMAT, "c": record.created, "a": record.accessed, "d": record.data})
    except orjson.JSONEncodeError as err:
        raise _offending_key(record.data, err) from err
    if len(blob) > limit:
        raise SessionTooLarge(len(blob), limit)
    return blob


def decode(blob: bytes) -> SessionRecord | None:
    """The record in ``blob``, or None when it is not one of ours (corrupt, or another format)."""
    try:
        raw = orjson.loads(blob)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(raw, dict) or raw.get("v") != _FORMAT:
        return None
    data, created, accessed = raw.get("d"), raw.get("c"), raw.get("a")
    if not isinstance(data, dict) or not _is_number(created) or not _is_number(accessed):
        return None
    return SessionRecord(data=data, created=float(created), accessed=float(accessed))


def merge(current: SessionRecord | None, changes: SessionChanges, now: float) -> SessionRecord:
    """``changes`` applied on top of what is stored now; keys the request did not touch are kept as stored."""
    data: dict[str, Any] = dict(current.data) if current is not None else {}
    for key in changes.deleted:
        data.pop(key, None)
    data.update(changes.set)
    return SessionRecord(data=data, created=current.created if current is not None else now, accessed=now)


def restarted(changes: SessionChanges, now: float) -> SessionRecord:
    """After an invalidation: a fresh record holding only what the app set after invalidating."""
    return SessionRecord(data=dict(changes.set), created=now, accessed=now)


def past_max_age(record: SessionRecord, max_age: float | None, now: float) -> bool:
    return max_age is not None and now - record.created >= max_age


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _offending_key(data: dict[str, Any], err: orjson.JSONEncodeError) -> SessionValueError:
    # The annotation says str keys; a caller handing us a dict built elsewhere may not have kept to it.
    for key, value in cast("dict[object, Any]", data).items():
        if not isinstance(key, str):
            return SessionValueError(f"session key {key!r} is not a str")
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError as value_err:
            return SessionValueError(f"session[{key!r}] cannot be stored as JSON: {value_err}")
    return SessionValueError(f"the session cannot be stored as JSON: {err}")
