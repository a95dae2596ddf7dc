"""The session as the app sees it (``environ["gateway.session"]``), and the changes that travel back to the loop.

The worker does no session I/O: it gets the data the event loop loaded, hands the app a :class:`Session`, and
after the app answered sends :meth:`Session.changes` back. Only changes travel, not the whole session, because
the store merges them into whatever is stored by then (another request of the same session may have written other
keys meanwhile).

Detecting changes must not depend on the app reassigning values: ``session["cart"].append(item)`` mutates a list in
place and is a change all the same. So the first time a loaded dict or list is read, its orjson serialization is
remembered, and :meth:`Session.changes` compares it with a fresh serialization. Scalars cannot be mutated in place
and values never read cannot have been changed, so neither costs anything.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.sessions.ids import is_valid_session_id
from gateway.sessions.store import SessionValueError

_CHANGES_FIELDS = frozenset({"set", "deleted", "regenerate", "invalidate"})


@dataclass(frozen=True, slots=True)
class SessionChanges:
    """What one request did to its session: keys set (with their new values), keys deleted, and the two events.

    ``regenerate``: move the session to a new id (at login, against session fixation). ``invalidate``: the stored
    session is to be deleted and the cookie with it (logout); ``set`` then holds only what the app set afterwards.
    """

    set: dict[str, Any] = field(default_factory=dict)
    deleted: tuple[str, ...] = ()
    regenerate: bool = False
    invalidate: bool = False

    @property
    def empty(self) -> bool:
        """Nothing to store: the loop can skip the store round trip (the load already slid the expiry)."""
        return not (self.set or self.deleted or self.regenerate or self.invalidate)

    def to_json(self) -> bytes:
        """The changes as orjson bytes, for the frame from the worker to the loop."""
        try:
            return orjson.dumps(
                {
                    "set": self.set,
                    "deleted": list(self.deleted),
                    "regenerate": self.regenerate,
                    "invalidate": self.invalidate,
                }
            )
        except orjson.JSONEncodeError as err:
            raise _value_error(self.set, err) from err

    @classmethod
    def from_json(cls, payload: bytes) -> SessionChanges:
        """Parse :meth:`to_json` output; anything else raises SessionValueError (never KeyError or TypeError)."""
        try:
            raw = orjson.loads(payload)
        except orjson.JSONDecodeError as err:
            raise SessionValueError(f"malformed session changes: {err}") from err
        if not isinstance(raw, dict) or raw.keys() != _CHANGES_FIELDS:
            expected = sorted(_CHANGES_FIELDS)
            raise SessionValueError(f"malformed session changes: expected an object with keys {expected}")
        values, deleted = raw["set"], raw["deleted"]
        regenerate, invalidate = raw["regenerate"], raw["invalidate"]
        if (
            not isinstance(values, dict)
            or not isinstance(deleted, list)
            or not all(isinstance(key, str) for key in deleted)
            or not isinstance(regenerate, bool)
            or not isinstance(invalidate, bool)
        ):
            raise SessionValueError("malformed session changes: wrong field types")
        return cls(set=values, deleted=tuple(deleted), regenerate=regenerate, invalidate=invalidate)


class Session(MutableMapping[str, Any]):
    """A dict-like session that records what the app did to it.

    ``Session(None, None)`` is a new session (the request had no cookie, or its id was not found);
    ``Session(session_id, data)`` wraps a loaded one. Keys are str and values anything orjson can serialize
    (checked in :meth:`changes`, which names the offending key).
    """

    __slots__ = ("_assigned", "_data", "_deleted", "_invalidated", "_loaded_id", "_regenerate", "_snapshots")

    def __init__(self, session_id: str | None, data: dict[str, Any] | None) -> None:
        if session_id is not None and not is_valid_session_id(session_id):
            raise ValueError("Session() needs a well-formed session id or None")
        if session_id is None and data:
            raise ValueError("a new session (session_id=None) has no stored data")
        self._loaded_id = session_id
        self._data: dict[str, Any] = dict(data) if data else {}
        self._snapshots: dict[str, bytes] = {}  # key -> serialization of the loaded value, taken on first read
        self._assigned: dict[str, None] = {}  # ordered sets: the order keys were touched in
        self._deleted: dict[str, None] = {}
        self._regenerate = False
        self._invalidated = False

    # -- the mapping -----------------------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        if isinstance(value, dict | list) and key not in self._assigned and key not in self._snapshots:
            try:
                self._snapshots[key] = orjson.dumps(value)
            except orjson.JSONEncodeError:
                # Not from the store, then; the only safe assumption is that it must be written.
                self._assigned[key] = None
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError(f"session keys are str, not {type(key).__name__}")
        self._data[key] = value
        self._assigned[key] = None
        self._deleted.pop(key, None)
        self._snapshots.pop(key, None)

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._assigned.pop(key, None)
        self._snapshots.pop(key, None)
        self._deleted[key] = None

    def __contains__(self, key: object) -> bool:
        # The mixin would go through __getitem__ and take a snapshot just to answer a membership test.
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        # Neither the id (a bearer credential) nor the data (personal) belongs in a log line.
        state = "new" if self.is_new else "loaded"
        return f"<Session {state}, {len(self._data)} keys{', modified' if self.modified else ''}>"

    # -- session events --------------------------------------------------------------------------------------------

    def regenerate(self) -> None:
        """Move this session to a new id when the request ends (call it at login); the old id stops working."""
        self._regenerate = True

    def invalidate(self) -> None:
        """End this session (logout): its data is cleared now, the stored session deleted and the cookie removed.

        Keys set afterwards start a fresh session under a new id.
        """
        self._data.clear()
        self._snapshots.clear()
        self._assigned.clear()
        self._deleted.clear()
        self._invalidated = True

    # -- state -----------------------------------------------------------------------------------------------------

    @property
    def session_id(self) -> str | None:
        """The id this session was loaded under; None for a new session, and after regenerate() or invalidate(),
        because the id the session continues under is minted by the event loop when it stores the changes."""
        if self._regenerate or self._invalidated:
            return None
        return self._loaded_id

    @property
    def is_new(self) -> bool:
        """No stored session was loaded for this request."""
        return self._loaded_id is None

    @property
    def modified(self) -> bool:
        """Whether the app set, deleted, regenerated, invalidated or mutated anything in place."""
        if self._assigned or self._deleted or self._regenerate or self._invalidated:
            return True
        if not self._snapshots:
            return False
        return any(self._changed_in_place(key, snapshot) for key, snapshot in self._snapshots.items())

    def changes(self) -> SessionChanges:
        """What the store must apply; raises SessionValueError naming the first key whose value is not JSON."""
        updated: dict[str, Any] = {key: self._data[key] for key in self._assigned}
        for key, snapshot in self._snapshots.items():
            if self._changed_in_place(key, snapshot):
                updated[key] = self._data[key]
        for key, value in updated.items():
            try:
                orjson.dumps(value)
            except orjson.JSONEncodeError as err:
                raise _value_error({key: value}, err) from err
        if self.is_new:
            # Nothing is stored under an id yet: nothing to delete, and the id the loop mints is new anyway.
            return SessionChanges(set=updated, invalidate=self._invalidated)
        return SessionChanges(
            set=updated,
            deleted=tuple(self._deleted),
            # Data set after a logout must not live on under the id that was just logged out.
            regenerate=self._regenerate or (self._invalidated and bool(updated)),
            invalidate=self._invalidated,
        )

    def _changed_in_place(self, key: str, snapshot: bytes) -> bool:
        try:
            return orjson.dumps(self._data[key]) != snapshot
        except orjson.JSONEncodeError:
            return True  # it serialized when loaded, so something was put into it


def _value_error(values: dict[str, Any], err: orjson.JSONEncodeError) -> SessionValueError:
    """A SessionValueError naming the first key of ``values`` whose value orjson refuses."""
    for key, value in values.items():
        try:
            orjson.dumps(value)
        except orjson.JSONEncodeError as value_err:
            return SessionValueError(f"session[{key!r}] cannot be stored as JSON: {value_err}")
    return SessionValueError(f"the session cannot be stored as JSON: {err}")
