"""A private nginx on loopback: one config renderer and one process helper for ``make run``, the tests and the
benchmarks.

Everything nginx writes (config, pid, logs, temp files) lives under one scratch directory; the system nginx and its
configuration are never touched. The stock ``fastcgi_params`` and ``uwsgi_params`` files are included as shipped,
because that is what users run. What differs between uses is data: the upstreams, the locations that route to them,
and a few tunings (``NginxTuning``); the gateway's own routes are ``gateway_routes``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from devstack.processes import ListeningProcess, find_binary

NGINX_PARAMS_DIR = Path("/etc/nginx")
Protocol = Literal["fcgi", "uwsgi", "http"]
#: The nginx directive prefix for each protocol (fastcgi_pass, uwsgi_pass, proxy_pass...).
_DIRECTIVE: dict[Protocol, str] = {"fcgi": "fastcgi", "uwsgi": "uwsgi", "http": "proxy"}


@dataclass(frozen=True)
class Upstream:
    """An upstream block: one server at ``address`` (our ADDR syntax: HOST:PORT, :PORT or unix:PATH)."""

    name: str
    address: str
    keepalive: int = 0  # idle upstream connections nginx keeps (0: a new connection per request)

    def render(self) -> str:
        keep = f" keepalive {self.keepalive};" if self.keepalive else ""
        return f"    upstream {self.name} {{ server {upstream_address(self.address)};{keep} }}"


@dataclass(frozen=True)
class Location:
    """A ``location`` that passes ``prefix`` to ``upstream`` over ``protocol``."""

    prefix: str
    upstream: str
    protocol: Protocol
    keep_conn: bool = False  # fastcgi_keep_conn, or HTTP/1.1 with an empty Connection header for proxy_pass
    buffered: bool = True  # False: request and response buffering off, so slow clients reach the backend

    def render(self) -> str:
        directive = _DIRECTIVE[self.protocol]
        if self.protocol == "http":
            lines = [f"proxy_pass http://{self.upstream};"]
            if self.keep_conn:
                lines += ["proxy_http_version 1.1;", 'proxy_set_header Connection "";']
        else:
            lines = [f"include {NGINX_PARAMS_DIR}/{directive}_params;", f"{directive}_pass {self.upstream};"]
            if self.keep_conn and self.protocol == "fcgi":  # nginx keeps no uwsgi upstream connection
                lines.append("fastcgi_keep_conn on;")
        if not self.buffered:
            lines += [f"{directive}_request_buffering off;", f"{directive}_buffering off;"]
        body = "\n            ".join(lines)
        return f"        location {self.prefix} {{\n            {body}\n        }}"


@dataclass(frozen=True)
class NginxTuning:
    """What a use of nginx sets beyond its routes. The default suits ``make run`` and the tests; ``BENCH_TUNING``
    is for the benchmarks."""

    worker_connections: int = 4096
    error_level: str = "warn"
    access_log: bool = True
    max_body: str = "256m"
    #: Buffer directives, so that the benchmarks' 64 KiB response and 1 MiB upload stay out of temp files.
    buffers: tuple[str, ...] = ()
    backlog: int | None = None
    rlimit_nofile: int | None = None


#: Access logging off (a cost shared by all servers, and disk noise on a small machine); room for thousands of
#: slow clients; buffers large enough for the benchmarks' bodies.
BENCH_TUNING = NginxTuning(
    worker_connections=20000,
    error_level="error",
    access_log=False,
    max_body="64m",
    buffers=(
        "client_body_buffer_size 2m;",
        "fastcgi_buffers 16 16k;",
        "uwsgi_buffers 16 16k;",
        "proxy_buffers 16 16k;",
    ),
    backlog=4096,
    rlimit_nofile=30000,
)


def upstream_address(address: str) -> str:
    """Our ADDR syntax to nginx's: unix:PATH stays, :PORT gets the loopback host."""
    if address.startswith("unix:"):
        return address
    return f"127.0.0.1{address}" if address.startswith(":") else address


def gateway_routes(fcgi: str, uwsgi: str) -> tuple[list[Upstream], list[Location]]:
    """The gateway's routes: ``/`` and ``/fcgi/`` over FastCGI (a new connection per request), ``/fcgik/`` over
    FastCGI with ``fastcgi_keep_conn`` and upstream keepalive, ``/uwsgi/`` over uwsgi."""
    upstreams = [
        Upstream("gateway_fcgi", fcgi),
        Upstream("gateway_fcgi_keep", fcgi, keepalive=8),
        Upstream("gateway_uwsgi", uwsgi),
    ]
    locations = [
        Location("/", "gateway_fcgi", "fcgi"),
        Location("/fcgi/", "gateway_fcgi", "fcgi"),
        Location("/fcgik/", "gateway_fcgi_keep", "fcgi", keep_conn=True),
        Location("/uwsgi/", "gateway_uwsgi", "uwsgi"),
    ]
    return upstreams, locations


def render_nginx_conf(
    scratch: Path,
    port: int,
    upstreams: Sequence[Upstream],
    locations: Sequence[Location],
    *,
    tuning: NginxTuning = NginxTuning(),
    extra: str = "",
) -> str:
    """One nginx, ``worker_processes 1``, in the foreground, with everything it writes under ``scratch`` and one
    server on 127.0.0.1:PORT serving ``locations`` (and the raw directives in ``extra``)."""
    user = "user root root;\n" if os.geteuid() == 0 else ""
    rlimit = f"worker_rlimit_nofile {tuning.rlimit_nofile};\n" if tuning.rlimit_nofile else ""
    access_log = f"{scratch}/nginx-access.log" if tuning.access_log else "off"
    backlog = f" backlog={tuning.backlog}" if tuning.backlog else ""
    temp = scratch / "nginx-temp"
    http = [
        f"access_log {access_log};",
        *(f"{kind}_temp_path {temp}/{kind};" for kind in ("fastcgi", "uwsgi", "proxy", "scgi")),
        f"client_body_temp_path {temp}/client;",
        f"client_max_body_size {tuning.max_body};",
        *tuning.buffers,
    ]
    http_text = "".join(f"    {line}\n" for line in http)
    upstream_text = "".join(f"{upstream.render()}\n" for upstream in upstreams)
    location_text = "".join(f"{location.render()}\n" for location in locations)
    extra_text = f"        {extra}\n" if extra else ""
    return f"""{user}daemon off;
worker_processes 1;
{rlimit}pid {scratch}/nginx.pid;
error_log {scratch}/nginx-error.log {tuning.error_level};
events {{ worker_connections {tuning.worker_connections}; }}
http {{
{http_text}{upstream_text}    server {{
        listen 127.0.0.1:{port}{backlog};
{location_text}{extra_text}    }}
}}
"""


def find_nginx() -> str:
    return find_binary("nginx", "nginx-light")


class Nginx(ListeningProcess):
    """A private nginx master on 127.0.0.1:``port`` with its own config under ``scratch``.

    ``Nginx(scratch, port, fcgi, uwsgi)`` fronts one gateway with ``gateway_routes``; any other set of routes is
    given as ``upstreams`` and ``locations``.
    """

    what = "nginx"
    stop_signal = signal.SIGQUIT  # graceful: finish the requests in flight
    start_timeout = 15.0

    def __init__(
        self,
        scratch: Path,
        port: int,
        fcgi: str | None = None,
        uwsgi: str | None = None,
        *,
        upstreams: Sequence[Upstream] = (),
        locations: Sequence[Location] = (),
        tuning: NginxTuning = NginxTuning(),
        extra: str = "",
    ) -> None:
        super().__init__(scratch, port)
        self.upstreams, self.locations = list(upstreams), list(locations)
        if fcgi is not None and uwsgi is not None:
            gateway_upstreams, gateway_locations = gateway_routes(fcgi, uwsgi)
            self.upstreams += gateway_upstreams
            self.locations += gateway_locations
        self.tuning = tuning
        self.extra = extra

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def error_log(self) -> Path:
        """Where nginx reports why it could not start (a port it could not bind among them)."""
        return self.scratch / "nginx-error.log"

    @property
    def log(self) -> Path:
        return self.error_log

    @property
    def conf(self) -> Path:
        return self.scratch / "nginx.conf"

    def prepare(self) -> None:
        (self.scratch / "nginx-temp").mkdir(exist_ok=True)
        self.conf.write_text(
            render_nginx_conf(
                self.scratch, self.port, self.upstreams, self.locations, tuning=self.tuning, extra=self.extra
            )
        )

    def command(self) -> list[str]:
        return [find_nginx(), "-p", str(self.scratch), "-c", str(self.conf), "-e", str(self.error_log)]
