"""The one typed configuration object, and the parsing of listen addresses.

The CLI only builds a :class:`Config`; everything that acts on it (binding sockets, importing the app in the
workers) happens later, in one place each, so a Config can be built and checked in tests without side effects.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Literal

ProtocolName = Literal["fastcgi", "uwsgi"]
LogLevel = Literal["debug", "info", "warning", "error"]

#: FastCGI and uwsgi carry no authentication, so a bare ``:PORT`` binds loopback only; listening on every
#: interface must be asked for explicitly (``0.0.0.0:9000``).
DEFAULT_HOST = "127.0.0.1"

#: Far above any real header set; a bound so one connection cannot make us buffer without end.
MAX_PARAMS_SIZE_CEILING = 16 << 20

DEMO_APP = "gateway.demo:application"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(ValueError):
    """A setting is invalid; the message names the option and what to write instead."""


@dataclass(frozen=True, slots=True)
class Address:
    """Where a listener binds: a TCP host and port, or a unix socket path."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``HOST:PORT``, ``:PORT``, ``[IPV6]:PORT`` or ``unix:PATH``."""
        if text.startswith("unix:"):
            path = text[5:]
            if not path:
                raise ConfigError(f"listen address {text!r} has no path; write unix:/run/app.sock")
            return cls(path=os.path.abspath(path))
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ConfigError(f"listen address {text!r} is not HOST:PORT, :PORT or unix:PATH")
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ConfigError(f"listen address {text!r}: port {port} is outside 0-65535")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return cls(host=host or DEFAULT_HOST, port=port)

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        if self.host is not None and ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Listen:
    """One listener: a wire protocol on an address."""

    protocol: ProtocolName
    address: Address


def parse_networks(items: list[str]) -> tuple[IPNetwork, ...]:
    """Parse allow-list entries (addresses or CIDR networks), naming the bad one on error."""
    networks = []
    for item in items:
        for raw in item.split(","):
            part = raw.strip()
            if not part:
                continue
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError as err:
                raise ConfigError(f"allow-from entry {part!r} is not an IP address or network") from err
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of a gateway run, with production defaults."""

    listeners: tuple[Listen, ...] = ()
    app: str = DEMO_APP
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    script_name: str = ""
    socket_mode: int | None = None
    backlog: int = 1024
    allow_from: tuple[IPNetwork, ...] = ()
    # Codec limits; the defaults are those of protocols.fastcgi / protocols.uwsgi.
    max_params_size: int = 64 * 1024
    max_params: int = 1000
    max_body_size: int = 1 << 30
    max_requests_per_connection: int = 128
    max_connections: int = 10000
    # A body or a pending response beyond this many bytes moves from memory to a temporary file.
    body_spool_threshold: int = 1 << 20
    response_spool_threshold: int = 1 << 20
    spool_dir: str | None = None
    graceful_timeout: float = 30.0
    log_level: LogLevel = "info"
    # Worker lifecycle. workers_max above workers makes the pool grow under load and shrink back when idle.
    workers_max: int = 0
    timeout: float = 0.0  # seconds a request may run; 0 = no limit
    max_requests: int = 0  # recycle a worker after this many requests; 0 = never
    max_requests_jitter: int = 0
    max_rss: int = 0  # MiB; recycle a worker whose resident memory grew beyond it; 0 = never
    pipeline: int = 2  # requests a busy worker may be handed ahead of time
    #: "batch": workers run under SCHED_BATCH, so waking one never preempts the event loop (gateway/scheduling.py).
    worker_scheduling: Literal["batch", "normal"] = "batch"
    queue_size: int = 1024
    queue_timeout: float = 30.0
    scale_down_after: float = 30.0
    # Time limits on what clients send (the slow-client protections); all in seconds.
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    read_timeout: float = 600.0
    keepalive_timeout: float = 300.0
    # Sessions, loaded and stored by the event loop (see sessions/).
    sessions: str = "memory"  # "memory", "memcached://HOST:PORT" or "off"
    session_ttl: float = 1800.0  # idle, sliding
    session_max_age: float = 0.0  # absolute, from creation; 0 = none
    session_cookie: str = "gwsession"
    session_cookie_domain: str | None = None
    session_cookie_path: str = "/"
    session_samesite: Literal["Lax", "Strict", "None"] = "Lax"
    session_secure: Literal["auto", "always", "never"] = "auto"
    session_serialize: bool = False
    session_timeout: float = 2.0
    session_prefix: str = "gw:s:"
    session_pool_size: int = 16
    debug: bool = False
    reload: bool = False
    access_log: str | None = None
    access_log_format: str = ""
    pidfile: str | None = None
    user: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, not {self.workers}")
        if self.script_name and (not self.script_name.startswith("/") or self.script_name.endswith("/")):
            raise ConfigError(f"--script-name {self.script_name!r} must start with '/' and not end with one, e.g. /app")
        if self.workers_max and self.workers_max < self.workers:
            raise ConfigError(f"--workers {self.workers}:{self.workers_max}: MAX must not be below MIN")
        if not (self.sessions in ("memory", "off") or self.sessions.startswith("memcached://")):
            raise ConfigError(f"--sessions {self.sessions!r}: use memory, memcached://HOST:PORT or off")
        if self.session_samesite == "None" and self.session_secure == "never":
            raise ConfigError("--session-samesite None requires a Secure cookie: drop --session-secure never")
        for name in ("session_ttl", "session_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number of seconds")
        if self.session_max_age < 0 or self.session_pool_size < 1:
            raise ConfigError("--session-max-age must not be negative and --session-pool-size must be at least 1")
        for name in ("header_timeout", "body_timeout", "read_timeout", "keepalive_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number of seconds")
        negatives = ("pipeline", "timeout", "queue_timeout", "scale_down_after", "max_requests", "max_requests_jitter")
        for name in (*negatives, "max_rss"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must not be negative")
        if not 1 <= self.max_params_size <= MAX_PARAMS_SIZE_CEILING:
            raise ConfigError(f"--max-params-size must be within 1-{MAX_PARAMS_SIZE_CEILING} bytes")
        for name in (
            "max_params",
            "max_body_size",
            "max_requests_per_connection",
            "max_connections",
            "body_spool_threshold",
            "response_spool_threshold",
            "backlog",
            "queue_size",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number")
        if ":" not in self.app:
            raise ConfigError(f"application {self.app!r} is not MODULE:CALLABLE, e.g. myproject.wsgi:application")

    @property
    def uses_demo_app(self) -> bool:
        return self.app == DEMO_APP
