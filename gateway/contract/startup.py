"""What a worker is told when it starts: one JSON argument on its command line, typed on both sides.

The master builds a :class:`WorkerSettings` from its Config; the worker decodes the same class, so a setting
added for the workers is declared here once and both sides fail to type-check until each handles it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import orjson

from gateway.sessions import CookieSettings

SchedulingPolicy = Literal["batch", "normal"]


@dataclass(frozen=True, slots=True)
class WorkerSessionSettings:
    """What a worker needs to set the session cookie itself and to refuse a session the store would not keep."""

    cookie: CookieSettings
    max_age: float  # 0: a browser-session cookie
    max_size: int


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    app: str  # MODULE:CALLABLE
    app_dir: str  # the master's directory (after --chdir): prepended to sys.path before the import
    python_path: tuple[str, ...]  # --pythonpath, absolute, put ahead of app_dir
    script_name: str
    log_level: str
    debug: bool
    scheduling: SchedulingPolicy
    session: WorkerSessionSettings  # used only for requests that carry a session (not with --sessions off)
    threads: int = 1  # requests run at once (--threads); above 1 the worker answers through SELECT frames

    def encode(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def decode(cls, text: str) -> WorkerSettings:
        fields = orjson.loads(text)
        session = fields.pop("session")
        fields["python_path"] = tuple(fields["python_path"])
        cookie = CookieSettings(**session["cookie"])
        return cls(session=WorkerSessionSettings(cookie, float(session["max_age"]), int(session["max_size"])), **fields)
