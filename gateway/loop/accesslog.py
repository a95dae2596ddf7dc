"""The access log: one line per response, in the combined format plus request time and worker, written by the loop.

The format uses gunicorn's atoms (``%(h)s``, ``%(r)s``, ...), so a gunicorn ``access_log_format`` carries over.
The file is opened in append mode and reopened on SIGUSR1, which is what logrotate's ``postrotate`` expects.
"""

from __future__ import annotations

import sys
import time
from typing import IO

from gateway.loop.request import Request

#: Combined log format, then the request time in milliseconds and the worker's pid.
DEFAULT_FORMAT = '%(h)s %(l)s %(u)s [%(t)s] "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms worker=%(p)s'

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


class AccessLog:
    def __init__(self, path: str, log_format: str = DEFAULT_FORMAT) -> None:
        self.path = path
        self.format = log_format
        self._file: IO[str] = sys.stdout
        self.reopen()
        # Fail at start-up, not on the first request, when the format names an unknown atom.
        try:
            log_format % dict.fromkeys(ATOMS, "")
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"--access-log-format {log_format!r}: {err!r}; known atoms: {', '.join(ATOMS)}") from err

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
        params = request.params
        elapsed = max(now - request.received_at, 0.0)
        method = params.get("REQUEST_METHOD", "-")
        uri = params.get("REQUEST_URI") or (params.get("PATH_INFO", "") + _query(params))
        protocol = params.get("SERVER_PROTOCOL", "-")
        values = {
            "h": params.get("REMOTE_ADDR") or "-",
            "l": "-",
            "u": params.get("REMOTE_USER") or "-",
            "t": time.strftime("%d/%b/%Y:%H:%M:%S %z"),
            "r": f"{method} {uri} {protocol}",
            "m": method,
            "U": params.get("PATH_INFO") or params.get("SCRIPT_NAME") or "-",
            "q": params.get("QUERY_STRING", ""),
            "H": protocol,
            "s": status,
            "b": sent or "-",
            "B": sent,
            "f": params.get("HTTP_REFERER", "-"),
            "a": params.get("HTTP_USER_AGENT", "-"),
            "T": int(elapsed),
            "M": int(elapsed * 1000),
            "D": int(elapsed * 1_000_000),
            "p": worker_pid if worker_pid is not None else "-",
            "P": request.protocol,
        }
        self._file.write(self.format % values + "\n")


def _query(params: dict[str, str]) -> str:
    query = params.get("QUERY_STRING")
    return f"?{query}" if query else ""
