"""The one typed configuration object, each of its settings declared once on its field.

The CLI only builds a :class:`Config`; everything that acts on it (binding sockets, importing the app in the
workers) happens later, in one place each, so a Config can be built and checked in tests without side effects.
Every option's type, default, checks, help and README text is the ``setting(...)`` on its field (see
:mod:`gateway.config.declaration`); the parser, ``--help``, the README tables and any later reader (a TOML file,
``GATEWAY_*`` variables) are generated from :data:`SETTINGS`. The codecs' limits
(``gateway.protocols.fastcgi.Limits``, ``gateway.protocols.uwsgi.Limits``) are built by the fronts from these fields:
this is the one place their defaults live.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.config.addresses import Address, IPNetwork, Listen, Subscription, parse_networks
from gateway.config.declaration import (
    AT_LEAST_ONE,
    BYTES,
    FLAG,
    INTEGER,
    NOT_NEGATIVE,
    OCTAL,
    POSITIVE,
    POSITIVE_SECONDS,
    SECONDS,
    TEXT,
    Check,
    Kind,
    Setting,
    bind,
    by_name,
    choice,
    setting,
    within,
)
from gateway.config.errors import ConfigError
from gateway.config.static_dirs import StaticMount, parse_static
from gateway.loop.accesslog import ATOMS as ACCESS_ATOMS
from gateway.loop.accesslog import DEFAULT_FORMAT as DEFAULT_ACCESS_FORMAT
from gateway.loop.accesslog import UWSGI_VARIABLES
from gateway.loop.accesslog import format_error as access_format_error

__all__ = ["DEMO_APP", "SECTIONS", "SETTINGS", "Config", "ConfigError", "config_from", "parse_value", "setting_named"]

LogLevel = Literal["debug", "info", "warning", "error"]

#: Far above any real header set; a bound so one connection cannot make us buffer without end.
MAX_PARAMS_SIZE_CEILING = 16 << 20

DEMO_APP = "gateway.demo:application"

#: The CLI's argument groups, in ``--help`` order, with the line shown under a group's title (if any).
SECTIONS: dict[str, str] = {
    "listeners": "",
    "application": "",
    "limits": "",
    "operations": "",
    "sessions": "environ['gateway.session'], loaded and stored by the event loop, never by a worker",
    "worker lifecycle": "",
    "many gateways": "subscription to a uWSGI FastRouter, shared ports, stats and metrics",
}


def _workers_text(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    if not low.isdigit() or int(low) < 1 or (high and not high.isdigit()):
        raise ValueError(text)
    return int(low), int(high or low)


def _workers_to_text(value: tuple[int, int]) -> str:
    low, high = value
    return str(low) if high <= low else f"{low}:{high}"


#: ``N`` or ``MIN:MAX``; a TOML integer is a fixed number.
_WORKERS = Kind(
    "a number of workers (N) or a range (MIN:MAX), e.g. 2:8",
    _workers_text,
    _workers_to_text,
    (int,),
    from_toml=lambda value: (value, value),
)
_ADDRESSES = Kind("HOST:PORT, :PORT, [IPV6]:PORT or unix:PATH", lambda text: (Address.parse(text),), str)
_STATIC = Kind("URL=DIR or URL=package:dir", parse_static, str)
_NETWORKS = Kind("a list of IP addresses or networks", lambda text: parse_networks([text]), str)
_DIRECTORIES = Kind("a directory", lambda text: (text,), str)

_APP = Check(lambda app: ":" in app, "must be MODULE:CALLABLE, e.g. myproject.wsgi:application")
_PREFIX = Check(
    lambda prefix: not prefix or (prefix.startswith("/") and not prefix.endswith("/")),
    "must start with '/' and not end with one, e.g. /app",
)
_STORE = Check(
    lambda store: store in ("memory", "off") or store.startswith("memcached://"),
    "must be memory, memcached://HOST:PORT or off",
)

_SUBSCRIPTIONS = Kind(
    "SERVER=KEY, the router's subscription address and the domain it routes, e.g. 127.0.0.1:2626=example.com",
    lambda text: (Subscription.parse(text),),
    str,
)
_STATS_ADDRESS = Kind("HOST:PORT, :PORT, [IPV6]:PORT or unix:PATH", Address.parse, str)
_ACCESS_FORMAT = Check(
    lambda text: access_format_error(text) is None,
    "is not a log format: gunicorn atoms (%(h)s), uWSGI variables (%(addr)) or json; see --help",
)

_ATOMS_HELP = ", ".join(f"%({atom})s {meaning}" for atom, meaning in ACCESS_ATOMS.items())
_UWSGI_HELP = ", ".join(f"%({name})" for name in UWSGI_VARIABLES)


@dataclass(frozen=True, slots=True)
class Config:
    """Every setting of a gateway run, with production defaults."""

    app: str = setting(
        TEXT,
        default=DEMO_APP,
        section="application",
        positional=True,
        metavar="MODULE:CALLABLE",
        label_text="application",
        help="the WSGI application",
        default_text="the built-in demo app",
        checks=(_APP,),
        example="myproject.wsgi:application",
    )
    fcgi: tuple[Address, ...] = setting(
        _ADDRESSES,
        default=(),
        section="listeners",
        metavar="ADDR",
        repeatable=True,
        help="serve FastCGI on ADDR",
        example=":9000",
    )
    uwsgi: tuple[Address, ...] = setting(
        _ADDRESSES,
        default=(),
        section="listeners",
        metavar="ADDR",
        repeatable=True,
        help="serve the uwsgi protocol on ADDR",
        example="unix:/run/gateway/uwsgi.sock",
    )
    http: tuple[Address, ...] = setting(
        _ADDRESSES,
        default=(),
        section="listeners",
        metavar="ADDR",
        repeatable=True,
        help="serve HTTP/1.1 on ADDR (to browsers, or behind a proxy), buffered like the other listeners",
        doc="serve HTTP/1.1 and 1.0 on ADDR, to clients directly or behind a proxy; requests are buffered whole "
        "as on the other listeners",
        example=":8000",
    )
    forwarded_allow_ips: tuple[IPNetwork, ...] = setting(
        _NETWORKS,
        default=(),
        section="listeners",
        metavar="NETS",
        repeatable=True,
        help="HTTP listeners: trust X-Forwarded-For/-Proto and Forwarded only from these proxies (comma-separated)",
        doc="HTTP listeners: take the client address and scheme from `X-Forwarded-For`, `X-Forwarded-Proto` and "
        "`Forwarded` only when the peer is one of these proxies (comma-separated addresses or networks)",
        default_text="nobody",
        example="127.0.0.1",
    )
    certfile: str | None = setting(
        TEXT,
        default=None,
        section="listeners",
        metavar="PATH",
        help="HTTP listeners: serve TLS with this certificate chain (PEM); needs --keyfile",
        doc="HTTP listeners: serve HTTPS with this certificate chain (PEM), with `--keyfile`",
        example="/etc/ssl/site.pem",
    )
    keyfile: str | None = setting(
        TEXT,
        default=None,
        section="listeners",
        metavar="PATH",
        help="the private key (PEM) of --certfile",
        example="/etc/ssl/private/site.key",
    )
    no_server_header: bool = setting(
        FLAG,
        default=False,
        section="listeners",
        help="HTTP listeners: send no Server header (otherwise Server: gateway)",
    )
    socket_mode: int | None = setting(
        OCTAL,
        default=None,
        section="listeners",
        metavar="MODE",
        help="permissions of unix sockets, in octal (e.g. 660 so nginx's group can connect)",
        default_text="as the umask leaves them",
        example="660",
    )
    backlog: int = setting(
        INTEGER,
        default=1024,
        section="listeners",
        metavar="N",
        help="listen backlog per socket",
        doc="listen backlog per socket (uWSGI's default of 100 is a known source of 502s)",
        checks=(POSITIVE,),
        example="4096",
    )
    allow_from: tuple[IPNetwork, ...] = setting(
        _NETWORKS,
        default=(),
        section="listeners",
        metavar="NETS",
        repeatable=True,
        help="accept TCP connections only from these addresses or networks (comma-separated); FastCGI listeners "
        "also honour FCGI_WEB_SERVER_ADDRS",
        doc="accept TCP peers only from these addresses or networks (comma-separated); FastCGI listeners also "
        "honour the spec's `FCGI_WEB_SERVER_ADDRS`",
        default_text="everyone",
        example="10.0.0.0/8",
    )
    workers: int = setting(
        _WORKERS,
        default_factory=lambda: os.cpu_count() or 1,
        section="application",
        metavar="N|MIN:MAX",
        spread=("workers", "workers_max"),
        help="worker processes: a fixed number, or MIN:MAX to grow while requests wait and shrink back after "
        "--scale-down-after idle seconds",
        doc="worker processes; a range MIN:MAX grows the pool while requests wait and shrinks it back after "
        "`--scale-down-after` idle seconds, never below MIN",
        default_text="the number of CPUs",
        checks=(AT_LEAST_ONE,),
        example="2:8",
    )
    #: The MAX of ``--workers MIN:MAX`` (0 or ``workers``: a fixed pool); the pool grows up to it under load.
    workers_max: int = 0
    static: tuple[StaticMount, ...] = setting(
        _STATIC,
        default=(),
        section="application",
        metavar="URL=DIR",
        repeatable=True,
        help="serve the files of DIR (or package:dir, a directory inside an installed package) under URL from the "
        "event loop, never a worker; `rules` makes the web server serve them instead",
        doc="serve the files of DIR (or `package:dir`, a directory inside an installed Python package) under URL "
        "from the event loop itself, never a worker: sendfile, Content-Type, Last-Modified/If-Modified-Since, "
        "HEAD, Range; nothing outside DIR (`..`, symlinks out, encoded slashes: 404). `python -m gateway rules` "
        "makes the web server serve the same mappings",
        example="/static=/tmp",
    )
    debug: bool = setting(
        FLAG,
        default=False,
        section="application",
        help="show an app's traceback as an HTML page in the 500 response (development only)",
    )
    reload: bool = setting(
        FLAG,
        default=False,
        section="application",
        help="restart the workers when a Python file under the app's directory or a --pythonpath changes "
        "(development; virtualenvs inside them are not watched)",
        doc="restart the workers when a `.py` file under the app's directory or a `--pythonpath` changes "
        "(development; watchfiles); a virtualenv kept inside them is not watched",
    )
    chdir: str = setting(
        TEXT,
        default="",
        section="application",
        metavar="DIR",
        help="change to DIR before anything else: the app is imported from it, and relative paths in other "
        "options are read from it (as gunicorn's and uWSGI's chdir)",
        default_text="the directory the gateway starts in",
        example="/srv/mysite",
    )
    pythonpath: tuple[str, ...] = setting(
        _DIRECTORIES,
        default=(),
        section="application",
        metavar="DIR",
        repeatable=True,
        help="put DIR on the app's import path, ahead of the app's directory (as gunicorn's and uWSGI's pythonpath)",
        example="/srv/lib",
    )
    script_name: str = setting(
        TEXT,
        default="",
        section="application",
        metavar="PREFIX",
        help="the URL prefix the app is mounted under, e.g. /app (SCRIPT_NAME)",
        checks=(_PREFIX,),
        example="/app",
    )
    max_params_size: int = setting(
        BYTES,
        default=64 * 1024,
        section="limits",
        metavar="BYTES",
        help="largest FastCGI params block; a uwsgi vars block is also capped at 65535 by its u16 size field",
        doc="largest FastCGI params block (uWSGI's 4 KiB default breaks large cookies); a uwsgi vars block is "
        "also capped at 65535 by its u16 size field",
        checks=(within(1, MAX_PARAMS_SIZE_CEILING, "bytes"),),
        example="131072",
    )
    max_params: int = setting(
        INTEGER,
        default=1000,
        section="limits",
        metavar="N",
        help="most params/vars in one request",
        checks=(POSITIVE,),
        example="200",
    )
    max_body_size: int = setting(
        BYTES,
        default=1 << 30,
        section="limits",
        metavar="BYTES",
        help="largest request body; larger ones are answered 413",
        checks=(POSITIVE,),
        example="1048576",
    )
    max_requests_per_connection: int = setting(
        INTEGER,
        default=128,
        section="limits",
        metavar="N",
        help="concurrent requests multiplexed on one FastCGI connection",
        doc="concurrent requests multiplexed on one FastCGI connection (reported to the web server as FCGI_MAX_REQS)",
        checks=(POSITIVE,),
        example="16",
    )
    max_connections: int = setting(
        INTEGER,
        default=10000,
        section="limits",
        metavar="N",
        help="open connections at most; beyond it the gateway stops accepting and the listen backlog holds new ones",
        doc="open connections at most; at the cap the gateway stops accepting and the kernel's listen backlog "
        "holds new connections (established ones are unaffected); it resumes below the cap",
        checks=(POSITIVE,),
        example="500",
    )
    header_timeout: float = setting(
        SECONDS,
        default=10.0,
        section="limits",
        metavar="SECONDS",
        help="a connection must deliver a request's complete params/vars within this (a new connection too)",
        checks=(POSITIVE_SECONDS,),
        example="2.5",
    )
    body_timeout: float = setting(
        SECONDS,
        default=60.0,
        section="limits",
        metavar="SECONDS",
        help="longest pause between two pieces of a request body",
        checks=(POSITIVE_SECONDS,),
        example="15",
    )
    read_timeout: float = setting(
        SECONDS,
        default=600.0,
        section="limits",
        metavar="SECONDS",
        help="a whole request (params and body) must arrive within this",
        checks=(POSITIVE_SECONDS,),
        example="120",
    )
    keepalive_timeout: float = setting(
        SECONDS,
        default=300.0,
        section="limits",
        metavar="SECONDS",
        help="close a kept-alive FastCGI connection idle this long; keep it above nginx's upstream "
        "keepalive_timeout (60 s)",
        doc="close a kept-alive FastCGI connection idle this long; keep it above nginx's upstream "
        "`keepalive_timeout` (60 s)",
        checks=(POSITIVE_SECONDS,),
        example="75",
    )
    body_spool_threshold: int = setting(
        BYTES,
        default=1 << 20,
        section="limits",
        metavar="BYTES",
        help="request bodies larger than this go to a temporary file",
        checks=(POSITIVE,),
        example="65536",
    )
    response_spool_threshold: int = setting(
        BYTES,
        default=1 << 20,
        section="limits",
        metavar="BYTES",
        help="response bytes a client has not taken yet beyond this go to a temporary file",
        doc="response bytes a slow client has not taken yet go to a temporary file beyond this",
        checks=(POSITIVE,),
        example="65536",
    )
    spool_dir: str | None = setting(
        TEXT,
        default=None,
        section="limits",
        metavar="DIR",
        help="where temporary files go",
        doc="where those temporary files (request bodies, unsent responses) go",
        default_text="the system temporary directory",
        example="/srv/spool",
    )
    # -- memory budgets against hostile peers (issue #16): gateway/loop/budget.py -------------------------------
    max_connection_buffer: int = setting(
        BYTES,
        default=2 << 20,
        section="limits",
        metavar="BYTES",
        help="memory the incomplete requests of one connection may hold (params, bodies not yet spooled); "
        "beyond it the connection is closed",
        doc="memory the incomplete requests of one connection may hold together (the params of every FastCGI "
        "request id, and the in-memory part of their bodies); beyond it that connection is closed with one log "
        "line. At least `--max-params-size` plus `--body-spool-threshold`, so one request of each largest size fits",
        checks=(POSITIVE,),
        example="4194304",
    )
    max_buffered: int = setting(
        BYTES,
        default=32 << 20,
        section="limits",
        metavar="BYTES",
        help="memory the requests of all connections may hold together (incomplete ones, and the in-memory "
        "bodies of complete ones); beyond it bodies go to temporary files and reading pauses on the connections "
        "still holding more than 4 KiB",
        doc="memory the requests of all connections may hold together: incomplete ones (every listener's), and the "
        "in-memory bodies of complete ones until they end; past half of it each read takes at most 16 KiB, and "
        "beyond it the bodies being received or waiting for a worker go to temporary files and the loop stops "
        "reading from the connections whose incomplete requests still hold more than 4 KiB until the total is "
        "back under three quarters of it, so well-behaved requests keep being served",
        checks=(POSITIVE,),
        example="134217728",
    )
    graceful_timeout: float = setting(
        SECONDS,
        default=30.0,
        section="operations",
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long in-flight requests may take to finish",
        example="5",
    )
    log_level: LogLevel = setting(  # noqa: RUF009 - a field() with metadata; ruff only knows Literal is immutable
        choice("debug", "info", "warning", "error"),
        default="info",
        section="operations",
        help="how much the error log (stderr) says",
        example="debug",
    )
    access_log: str | None = setting(
        TEXT,
        default=None,
        section="operations",
        metavar="PATH|-",
        help="write an access log line per response to PATH, or to stdout with -",
        doc="one line per response to PATH, or stdout with `-`: combined format, then request time and worker pid "
        "(`--access-log-format` to change it)",
        default_text="off",
        example="/var/log/gateway/access.log",
    )
    access_log_format: str = setting(
        TEXT,
        default=DEFAULT_ACCESS_FORMAT,
        section="operations",
        metavar="FORMAT",
        help=f"json (one object per line), gunicorn-style atoms: {_ATOMS_HELP}; or uWSGI logformat variables: "
        f"{_UWSGI_HELP}",
        doc="gunicorn's atoms, e.g. `%(h)s %(r)s %(s)s %(b)s %(f)s %(a)s %(M)s %(p)s`, uWSGI's logformat variables "
        "(`%(addr) %(method) %(uri) %(status) %(msecs)`), or `json`: one object per line with every atom (every "
        "atom and variable in `--help`)",
        checks=(_ACCESS_FORMAT,),
        example="%(h)s %(r)s %(s)s",
    )
    pidfile: str | None = setting(
        TEXT,
        default=None,
        section="operations",
        metavar="PATH",
        help="write the gateway's pid here",
        doc="the gateway's pid, written at start and removed at exit",
        example="/run/gateway.pid",
    )
    user: str | None = setting(
        TEXT,
        default=None,
        section="operations",
        metavar="USER",
        help="switch to this user after binding the sockets",
        doc="switch to this user after binding (so ports below 1024 and root-owned socket directories work); unix "
        "socket files are handed to it",
        example="www-data",
    )
    group: str | None = setting(
        TEXT,
        default=None,
        section="operations",
        metavar="GROUP",
        help="switch to this group after binding the sockets",
        doc="switch to this group after binding; unix socket files are handed to it",
        example="www-data",
    )
    sessions: str = setting(
        TEXT,
        default="memory",
        section="sessions",
        metavar="memory|memcached://HOST:PORT|off",
        help="where sessions live: the gateway's own memory (shared by every worker), memcached through aiomcache "
        "(shared by several gateway hosts), or off",
        doc="where sessions live: the gateway's own memory (a bounded LRU of 100,000 sessions in the loop's process, "
        "shared by every worker), memcached through aiomcache (shared by several gateway hosts), or off",
        checks=(_STORE,),
        example="memcached://127.0.0.1:11211",
    )
    session_ttl: float = setting(
        SECONDS,
        default=1800.0,
        section="sessions",
        metavar="SECONDS",
        help="idle timeout, sliding",
        checks=(POSITIVE_SECONDS,),
        example="600",
    )
    session_max_age: float = setting(
        SECONDS,
        default=0.0,
        section="sessions",
        metavar="SECONDS",
        help="absolute lifetime from creation, also the cookie's Max-Age",
        default_text="none, a browser-session cookie",
        checks=(NOT_NEGATIVE,),
        example="86400",
    )
    session_cookie: str = setting(
        TEXT,
        default="gwsession",
        section="sessions",
        metavar="NAME",
        help="cookie name",
        example="sid",
    )
    session_cookie_domain: str | None = setting(
        TEXT,
        default=None,
        section="sessions",
        metavar="DOMAIN",
        help="cookie Domain",
        default_text="none, a host-only cookie",
        example="example.org",
    )
    session_cookie_path: str = setting(
        TEXT,
        default="/",
        section="sessions",
        metavar="PATH",
        help="cookie Path",
        example="/app",
    )
    session_samesite: Literal["Lax", "Strict", "None"] = setting(
        choice("Lax", "Strict", "None"),
        default="Lax",
        section="sessions",
        help="cookie SameSite",
        example="Strict",
    )
    session_secure: Literal["auto", "always", "never"] = setting(
        choice("auto", "always", "never"),
        default="auto",
        section="sessions",
        help="cookie Secure flag; auto = when the request came over HTTPS (HTTPS or REQUEST_SCHEME param)",
        example="always",
    )
    session_serialize: bool = setting(
        FLAG,
        default=False,
        section="sessions",
        help="run one session's requests one at a time (a lock in the store; across hosts with memcached)",
    )
    session_timeout: float = setting(
        SECONDS,
        default=2.0,
        section="sessions",
        metavar="SECONDS",
        help="bound on each store operation; a request whose session cannot be loaded gets 503",
        checks=(POSITIVE_SECONDS,),
        example="0.5",
    )
    session_prefix: str = setting(
        TEXT,
        default="gw:s:",
        section="sessions",
        metavar="PREFIX",
        help="memcached key prefix",
        example="app1:",
    )
    session_pool_size: int = setting(
        INTEGER,
        default=16,
        section="sessions",
        metavar="N",
        help="memcached connections",
        doc="memcached connections: at most this many memcached commands in flight at once (a request with a "
        "session makes one or two to load it, one more to store its changes)",
        checks=(AT_LEAST_ONE,),
        example="4",
    )
    timeout: float = setting(
        SECONDS,
        default=0.0,
        section="worker lifecycle",
        metavar="SECONDS",
        help="a request running longer is answered 504 and its worker killed and replaced",
        doc="a request running longer is answered **504**, its worker killed (SIGTERM, SIGKILL 2 s later) and "
        "replaced; the log names the worker, the request and the elapsed time",
        default_text="no limit",
        checks=(NOT_NEGATIVE,),
        example="30",
    )
    max_requests: int = setting(
        INTEGER,
        default=0,
        section="worker lifecycle",
        metavar="N",
        help="recycle a worker after N requests, a replacement starting first",
        doc="recycle a worker after N requests: its replacement starts while it runs its last one",
        default_text="never",
        checks=(NOT_NEGATIVE,),
        example="1000",
    )
    max_requests_jitter: int = setting(
        INTEGER,
        default=0,
        section="worker lifecycle",
        metavar="N",
        help="add a random 0..N to each worker's --max-requests so they do not recycle together",
        doc="add a random 0..N to each worker's `--max-requests` so workers do not recycle together",
        checks=(NOT_NEGATIVE,),
        example="50",
    )
    max_rss: int = setting(
        INTEGER,
        default=0,
        section="worker lifecycle",
        metavar="MIB",
        help="recycle a worker whose resident memory exceeds this, checked 4 times a second",
        default_text="never",
        checks=(NOT_NEGATIVE,),
        example="512",
    )
    worker_scheduling: Literal["batch", "normal"] = setting(
        choice("batch", "normal"),
        default="batch",
        section="worker lifecycle",
        help="CPU scheduling of the workers: 'batch' (Linux SCHED_BATCH) keeps their wake-ups from preempting the "
        "event loop, 'normal' leaves the default policy",
        doc="`batch` runs the workers under Linux's `SCHED_BATCH` (same priority and CPU share, no privilege "
        "needed): waking a worker with a request then never preempts the event loop in the middle of its batch of "
        "events, which lowers the CPU each request costs (why: `gateway/worker/scheduling.py`; what it measured: "
        "[benchmarks/RESULTS.md](benchmarks/RESULTS.md)); `normal` keeps the default policy",
        example="normal",
    )
    pipeline: int = setting(
        INTEGER,
        default=2,
        section="worker lifecycle",
        metavar="N",
        help="while at least as many requests wait as there are workers, hand each worker up to N of them ahead of "
        "time, so it never waits for the loop between requests (0: off)",
        doc="while at least as many requests wait as there are workers, hand each worker up to N of them ahead of "
        "time, so it goes from one request to the next without waiting for the loop (and the loop writes and "
        "reads several per system call); never when fewer wait, and only behind a request that started under "
        "50 ms earlier. The price: under saturation a request handed ahead cannot move to another worker that "
        "frees up sooner; with requests of very unequal length (a 10 s report among 5 ms pages) use 0, which "
        "turns it off",
        checks=(NOT_NEGATIVE,),
        example="0",
    )
    queue_size: int = setting(
        INTEGER,
        default=1024,
        section="worker lifecycle",
        metavar="N",
        help="requests that may wait for a worker; beyond it they are answered 503 at once",
        doc="requests that may wait for a worker, in arrival order; beyond it **503** with `Retry-After` at once",
        checks=(POSITIVE,),
        example="64",
    )
    queue_timeout: float = setting(
        SECONDS,
        default=30.0,
        section="worker lifecycle",
        metavar="SECONDS",
        help="a request waiting longer for a worker is answered 503",
        doc="a request waiting longer for a worker is answered 503 with `Retry-After`",
        checks=(NOT_NEGATIVE,),
        example="5",
    )
    scale_down_after: float = setting(
        SECONDS,
        default=30.0,
        section="worker lifecycle",
        metavar="SECONDS",
        help="with --workers MIN:MAX, retire a worker idle this long, never below MIN",
        doc="with `--workers MIN:MAX`, retire a worker idle this long, never below MIN",
        checks=(NOT_NEGATIVE,),
        example="120",
    )
    subscribe: tuple[Subscription, ...] = setting(
        _SUBSCRIPTIONS,
        default=(),
        section="many gateways",
        metavar="SERVER=KEY",
        repeatable=True,
        help="announce the first uwsgi listener to a uWSGI FastRouter's subscription server SERVER under the domain "
        "KEY (uWSGI's subscription packet over UDP), once the workers are ready and then every "
        "--subscribe-interval; unsubscribed first on SIGTERM, SIGINT and SIGQUIT",
        doc="announce the first uwsgi listener to a uWSGI FastRouter's subscription server SERVER under the domain "
        "KEY (uWSGI's `subscribe2 = server=...,key=...`: its subscription packet over UDP), once the workers are "
        "ready and then every `--subscribe-interval`; unsubscribed first on SIGTERM, SIGINT and SIGQUIT, kept on "
        "SIGHUP",
        example="127.0.0.1:2626=example.com",
    )
    subscribe_interval: float = setting(
        SECONDS,
        default=10.0,
        section="many gateways",
        metavar="SECONDS",
        help="how often the subscription is renewed; keep it below the router's subscription-tolerance (17 s)",
        doc="how often the subscription is renewed; keep it below the router's `subscription-tolerance` (17 s)",
        checks=(POSITIVE_SECONDS,),
        example="5",
    )
    reuse_port: bool = setting(
        FLAG,
        default=False,
        section="many gateways",
        help="bind TCP listeners with SO_REUSEPORT, so several gateways share a port and the kernel spreads "
        "connections among them",
    )
    stats: Address | None = setting(  # noqa: RUF009 - a field() with metadata, as for log_level
        _STATS_ADDRESS,
        default=None,
        section="many gateways",
        metavar="ADDR",
        help="serve uWSGI-compatible stats JSON (what uwsgitop reads) on ADDR: one document per connection",
        example="127.0.0.1:1717",
    )
    metrics: Address | None = setting(  # noqa: RUF009 - a field() with metadata, as for log_level
        _STATS_ADDRESS,
        default=None,
        section="many gateways",
        metavar="ADDR",
        help="serve Prometheus metrics over HTTP on ADDR (GET /metrics)",
        example="127.0.0.1:9100",
    )
    # -- issue #21: real applications (threads in workers) -------------------------------------------------------
    threads: int = setting(
        INTEGER,
        default=1,
        section="worker lifecycle",
        metavar="N",
        help="run up to N requests at once in each worker, on N threads (for apps that wait on I/O)",
        doc="run up to N requests at once in each worker process, on N threads (`wsgi.multithread` is then true): "
        "for apps that wait on databases or services. Every per-request rule stays per request: a client that "
        "leaves cancels its own request, `--timeout` answers 504 for the overdue request alone (the worker is then "
        "retired: its other threads get `--graceful-timeout` to finish before it is killed), `--max-requests` "
        "counts requests, and a worker that dies fails only the requests it was running (502) and gives back the "
        "ones it had not started; `--workers MIN:MAX` grows the pool only when no thread is free",
        checks=(AT_LEAST_ONE,),
        example="4",
    )
    preload: bool = setting(
        FLAG,
        default=False,
        section="worker lifecycle",
        help="import the app once in a template process and fork the workers from it (memory shared "
        "copy-on-write; a respawn is a fork, not an import)",
        doc="import the app once, in a template process that never runs an event loop, and fork every worker "
        "from it: the app's memory is shared copy-on-write between the workers and a respawn costs a fork, not "
        "an import. SIGHUP and `--reload` import the new code in a new template first; only once it imported "
        "are the old workers retired and new ones forked from it (if it fails, the old workers keep serving). "
        "An app that opens sockets or starts threads at import shares them between the forked workers: open "
        "them on first use instead",
    )
    #: What to bind: ``fcgi``, ``uwsgi`` then ``http``, derived so that each protocol stays one setting of its own.
    listeners: tuple[Listen, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        for declared in SETTINGS:
            declared.check(getattr(self, declared.name))
        if self.workers_max and self.workers_max < self.workers:
            raise ConfigError(f"--workers {self.workers}:{self.workers_max}: MAX must not be below MIN")
        if self.max_connection_buffer < self.max_params_size + self.body_spool_threshold:
            raise ConfigError(
                f"--max-connection-buffer {self.max_connection_buffer} must be at least --max-params-size plus "
                f"--body-spool-threshold ({self.max_params_size + self.body_spool_threshold}), so that one request "
                "of the largest params and an in-memory body fits"
            )
        if self.session_samesite == "None" and self.session_secure == "never":
            raise ConfigError("--session-samesite None requires a Secure cookie: drop --session-secure never")
        listeners = tuple(Listen("fastcgi", address) for address in self.fcgi)
        listeners += tuple(Listen("uwsgi", address) for address in self.uwsgi)
        listeners += tuple(Listen("http", address) for address in self.http)
        object.__setattr__(self, "listeners", listeners)

    @property
    def uses_demo_app(self) -> bool:
        return self.app == DEMO_APP


#: Every setting, in declaration order (``--help`` groups them by section).
SETTINGS: tuple[Setting, ...] = bind(Config)
_BY_NAME = by_name(SETTINGS)


def setting_named(name: str) -> Setting:
    """The setting a Config field or TOML key names; a ConfigError for an unknown one."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown setting {name!r}") from None


def parse_value(name: str, raw: object) -> Any:
    """What a reader calls per setting: text or a TOML value into the checked value ``config_from`` takes.

    ``raw`` is text as an environment variable carries it (a repeatable setting's occurrences separated by
    whitespace: ``GATEWAY_FCGI=":9000 unix:/run/app.sock"``), or a native TOML value whose type the setting
    checks (an integer for ``--backlog``, a list of strings for ``--allow-from``, true for ``--debug``). A
    ConfigError names the option and what it allows.
    """
    return setting_named(name).parse(raw)


def config_from(values: Mapping[str, Any], *, environ: Mapping[str, str] = os.environ) -> Config:
    """A Config from ``{setting name: value from parse_value}``, the rest at their defaults.

    Something must be listened on: an address, or sockets handed over by systemd (``LISTEN_FDS`` in ``environ``).
    """
    fields: dict[str, Any] = {}
    for name, value in values.items():
        fields.update(setting_named(name).fields_of(value))
    config = Config(**fields)
    if not config.listeners and not environ.get("LISTEN_FDS"):
        raise ConfigError("nothing to listen on: give --fcgi ADDR, --uwsgi ADDR or --http ADDR, e.g. --fcgi :9000")
    return config
