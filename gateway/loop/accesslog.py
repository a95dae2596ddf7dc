"""The access log: one line per response, in the combined format plus request time and worker, written by the loop.

The format uses gunicorn's atoms (``%(h)s``, ``%(r)s``, ...), so a gunicorn ``access_log_format`` carries over;
uWSGI's logformat variables (``%(addr)``, ``%(msecs)``, ...: the same ``%(name)`` without the ``s``) are accepted
beside them, so an operator's uWSGI ``logformat`` line works unchanged; and ``json`` writes one orjson object per
line with every atom under a readable name, for log pipelines. The format is compiled once at start-up into a list
of literal pieces and value getters, so a name that does not exist is a start-up error, not a failing request.
The file is opened in append mode and reopened on SIGUSR1, which is what logrotate's ``postrotate`` expects.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol

import orjson

from gateway.loop.request import Request

#: Combined log format, then the request time in milliseconds and the worker's pid.
DEFAULT_FORMAT = '%(h)s %(l)s %(u)s [%(t)s] "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms worker=%(p)s'

#: ``--access-log-format json``: one JSON object per line.
JSON_FORMAT = "json"

#: What each atom means, for --help and the README.
ATOMS = {
    "h": "remote address",
    "l": "'-'",
    "u": "remote user",
    "t": "time of the response",
    "r": "request line",
    "m": "method",
    "U": "path",
    "q": "query string",
    "H": "protocol",
    "s": "status",
    "b": "body bytes sent by the app ('-' when none)",
    "B": "body bytes sent by the app",
    "f": "referer",
    "a": "user agent",
    "T": "request time in seconds",
    "M": "request time in milliseconds",
    "D": "request time in microseconds",
    "p": "worker pid ('-' when the loop answered)",
    "P": "the gateway's front protocol (fastcgi, uwsgi)",
}

#: The key each atom has in a JSON line (``l``, always '-', and ``b``, which is ``B`` or '-', are left out).
JSON_KEYS = {
    "h": "remote_addr",
    "u": "remote_user",
    "t": "time",
    "r": "request",
    "m": "method",
    "U": "path",
    "q": "query",
    "H": "server_protocol",
    "s": "status",
    "B": "bytes",
    "f": "referer",
    "a": "user_agent",
    "T": "seconds",
    "M": "msecs",
    "D": "micros",
    "p": "worker_pid",
    "P": "protocol",
}

#: uWSGI's logformat variables that we can give (its LogFormat documentation), and what each is here.
UWSGI_VARIABLES = {
    "uri": "REQUEST_URI",
    "method": "REQUEST_METHOD",
    "user": "REMOTE_USER",
    "addr": "REMOTE_ADDR",
    "host": "HTTP_HOST",
    "proto": "SERVER_PROTOCOL",
    "uagent": "HTTP_USER_AGENT",
    "referer": "HTTP_REFERER",
    "status": "response status code",
    "micros": "response time in microseconds",
    "msecs": "response time in milliseconds",
    "secs": "response time in seconds (a decimal number)",
    "time": "Unix time of the start of the request",
    "ctime": "ctime of the start of the request",
    "ltime": "Apache-style time of the start of the request",
    "epoch": "the current Unix time",
    "tmsecs": "Unix time of the start of the request in milliseconds",
    "tmicros": "Unix time of the start of the request in microseconds",
    "size": "response body bytes (the head is not counted here, unlike uWSGI)",
    "rsize": "response body bytes",
    "cl": "CONTENT_LENGTH of the request",
    "pid": "the worker's pid ('-' when the loop answered)",
    "var.NAME": "the request variable NAME, e.g. %(var.HTTP_X_REQUEST_ID)",
}

_PIECE = re.compile(r"%%|%\(([^)]*)\)(s?)")


class ResponseLog(Protocol):
    """What the pool tells about every response it finished or answered: the access log, the counters."""

    def write(self, request: Request, status: int, sent: int, worker_pid: int | None, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Entry:
    """One response, as every getter sees it."""

    request: Request
    status: int
    sent: int
    worker_pid: int | None
    #: Seconds from the request's arrival to its response.
    elapsed: float
    #: Wall-clock time of the response.
    wall: float

    @property
    def started(self) -> float:
        return self.wall - self.elapsed


Getter = Callable[[Entry], object]


def _param(name: str, empty: str = "-") -> Getter:
    return lambda entry: entry.request.params.get(name) or empty


def _uri(entry: Entry) -> str:
    params = entry.request.params
    return params.get("REQUEST_URI") or (params.get("PATH_INFO", "") + _query(params))


def _request_line(entry: Entry) -> str:
    params = entry.request.params
    return f"{params.get('REQUEST_METHOD', '-')} {_uri(entry)} {params.get('SERVER_PROTOCOL', '-')}"


def _pid(entry: Entry) -> object:
    return entry.worker_pid if entry.worker_pid is not None else "-"


_ATOM_GETTERS: dict[str, Getter] = {
    "h": _param("REMOTE_ADDR"),
    "l": lambda entry: "-",
    "u": _param("REMOTE_USER"),
    "t": lambda entry: time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(entry.wall)),
    "r": _request_line,
    "m": _param("REQUEST_METHOD"),
    "U": lambda entry: entry.request.params.get("PATH_INFO") or entry.request.params.get("SCRIPT_NAME") or "-",
    "q": _param("QUERY_STRING", ""),
    "H": _param("SERVER_PROTOCOL"),
    "s": lambda entry: entry.status,
    "b": lambda entry: entry.sent or "-",
    "B": lambda entry: entry.sent,
    "f": _param("HTTP_REFERER"),
    "a": _param("HTTP_USER_AGENT"),
    "T": lambda entry: int(entry.elapsed),
    "M": lambda entry: int(entry.elapsed * 1000),
    "D": lambda entry: int(entry.elapsed * 1_000_000),
    "p": _pid,
    "P": lambda entry: entry.request.protocol,
}

_UWSGI_GETTERS: dict[str, Getter] = {
    "uri": _uri,
    "method": _param("REQUEST_METHOD"),
    "user": _param("REMOTE_USER"),
    "addr": _param("REMOTE_ADDR"),
    "host": _param("HTTP_HOST"),
    "proto": _param("SERVER_PROTOCOL"),
    "uagent": _param("HTTP_USER_AGENT"),
    "referer": _param("HTTP_REFERER"),
    "status": lambda entry: entry.status,
    "micros": lambda entry: int(entry.elapsed * 1_000_000),
    "msecs": lambda entry: int(entry.elapsed * 1000),
    "secs": lambda entry: f"{entry.elapsed:.6f}",
    "time": lambda entry: int(entry.started),
    "ctime": lambda entry: time.ctime(entry.started),
    "ltime": lambda entry: time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(entry.started)),
    "epoch": lambda entry: int(entry.wall),
    "tmsecs": lambda entry: int(entry.started * 1000),
    "tmicros": lambda entry: int(entry.started * 1_000_000),
    "size": lambda entry: entry.sent,
    "rsize": lambda entry: entry.sent,
    "cl": _param("CONTENT_LENGTH", "0"),
    "pid": _pid,
}


def _uwsgi_getter(name: str) -> Getter | None:
    if name.startswith("var.") and len(name) > 4:
        return _param(name[4:])
    return _UWSGI_GETTERS.get(name)


def _known() -> str:
    atoms = ", ".join(f"%({atom})s" for atom in ATOMS)
    variables = ", ".join(f"%({name})" for name in UWSGI_VARIABLES)
    return f"gunicorn atoms {atoms}; uWSGI variables {variables}; or the whole format 'json'"


Formatter = Callable[[Entry], str]


def compile_format(log_format: str) -> Formatter:
    """The function that writes one line (without its newline); a ValueError names what is unknown."""
    if log_format == JSON_FORMAT:
        getters = [(JSON_KEYS[atom], _ATOM_GETTERS[atom]) for atom in JSON_KEYS]

        def json_line(entry: Entry) -> str:
            record = {key: getter(entry) for key, getter in getters}
            return orjson.dumps(record).decode()

        return json_line
    pieces: list[str | Getter] = []
    position = 0

    def literal(text: str) -> None:
        if "%" in text:
            raise ValueError(
                f"--access-log-format {log_format!r}: a '%' that is not %(name)s, %(name) or %%; known: {_known()}"
            )
        pieces.append(text)

    for match in _PIECE.finditer(log_format):
        if match.start() > position:
            literal(log_format[position : match.start()])
        position = match.end()
        name, atom_suffix = match.group(1), match.group(2)
        if name is None:
            pieces.append("%")
            continue
        getter = _ATOM_GETTERS.get(name) if atom_suffix else _uwsgi_getter(name)
        if getter is None and atom_suffix:
            # ``%(status)s`` reads as a uWSGI variable followed by an "s" when no atom has that name.
            getter = _uwsgi_getter(name)
            if getter is not None:
                pieces += [getter, "s"]
                continue
        if getter is None:
            raise ValueError(f"--access-log-format: unknown variable %({name}){atom_suffix}; known: {_known()}")
        pieces.append(getter)
    if position < len(log_format):
        literal(log_format[position:])

    def line(entry: Entry) -> str:
        return "".join(piece if isinstance(piece, str) else str(piece(entry)) for piece in pieces)

    return line


def format_error(log_format: str) -> str | None:
    """Why ``log_format`` cannot be used, or None (the settings' check)."""
    try:
        compile_format(log_format)
    except ValueError as err:
        return str(err)
    return None


class AccessLog:
    def __init__(self, path: str, log_format: str = DEFAULT_FORMAT) -> None:
        self.path = path
        self.format = log_format
        # Fail at start-up, not on the first request, when the format names an unknown atom.
        self._line = compile_format(log_format)
        self._file: IO[str] = sys.stdout
        self.reopen()

    def reopen(self) -> None:
        if self.path == "-":
            self._file = sys.stdout
            return
        previous = self._file
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives until close()
        if previous is not sys.stdout:
            previous.close()

    def close(self) -> None:
        if self._file is not sys.stdout:
            self._file.close()

    def write(self, request: Request, status: int, sent: int, worker_pid: int | None, now: float) -> None:
        elapsed = max(now - request.received_at, 0.0)
        self._file.write(self._line(Entry(request, status, sent, worker_pid, elapsed, time.time())) + "\n")


def _query(params: dict[str, str]) -> str:
    query = params.get("QUERY_STRING")
    return f"?{query}" if query else ""
