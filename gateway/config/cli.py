"""The command line: parse arguments into a Config, then run the gateway on uvloop. Nothing else."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import uvloop

import protocols
from gateway import __version__
from gateway.config.settings import DEMO_APP, Address, Config, ConfigError, Listen, parse_networks
from gateway.contract.exits import EXIT_CONFIG
from gateway.log import configure_logging
from gateway.loop.accesslog import ATOMS as ACCESS_ATOMS
from gateway.loop.accesslog import DEFAULT_FORMAT as DEFAULT_ACCESS_FORMAT
from gateway.master.server import Gateway
from gateway.memory import tune_malloc

log = logging.getLogger("gateway")


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 660") from err


def _workers(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    if not low.isdigit() or int(low) < 1 or (high and not high.isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (N) or a range (MIN:MAX), e.g. 2:8")
    return int(low), int(high or low)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Serve a WSGI application over FastCGI and/or uwsgi to a web server (nginx, Apache, "
        "lighttpd). One event loop buffers each request whole; a pool of worker processes runs the app.",
        epilog="ADDR is HOST:PORT, :PORT (binds 127.0.0.1: FastCGI and uwsgi carry no authentication, so "
        "listening on every interface must be asked for, e.g. 0.0.0.0:9000), [IPV6]:PORT, or unix:PATH.",
    )
    parser.add_argument(
        "app",
        nargs="?",
        default=DEMO_APP,
        metavar="MODULE:CALLABLE",
        help="the WSGI application (default: the built-in demo app)",
    )
    listen = parser.add_argument_group("listeners")
    listen.add_argument(
        "--fcgi", action="append", default=[], metavar="ADDR", help="serve FastCGI on ADDR (repeatable)"
    )
    listen.add_argument(
        "--uwsgi",
        action="append",
        default=[],
        metavar="ADDR",
        help="serve the uwsgi protocol on ADDR (repeatable)",
    )
    listen.add_argument(
        "--socket-mode",
        type=_octal,
        default=None,
        metavar="MODE",
        help="permissions of unix sockets, in octal (e.g. 660 so nginx's group can connect)",
    )
    listen.add_argument(
        "--backlog",
        type=int,
        default=1024,
        metavar="N",
        help="listen backlog per socket (default: %(default)s)",
    )
    listen.add_argument(
        "--allow-from",
        action="append",
        default=[],
        metavar="NETS",
        help="accept TCP connections only from these addresses or networks (comma-separated, "
        "repeatable); FastCGI listeners also honour FCGI_WEB_SERVER_ADDRS",
    )
    app = parser.add_argument_group("application")
    app.add_argument(
        "--workers",
        type=_workers,
        default=(os.cpu_count() or 1, os.cpu_count() or 1),
        metavar="N|MIN:MAX",
        help="worker processes: a fixed number, or MIN:MAX to grow while requests wait and shrink back after "
        "--scale-down-after idle seconds (default: the number of CPUs)",
    )
    app.add_argument(
        "--debug",
        action="store_true",
        help="show an app's traceback as an HTML page in the 500 response (development only)",
    )
    app.add_argument(
        "--reload",
        action="store_true",
        help="restart the workers when a Python file under the current directory changes (development)",
    )
    app.add_argument(
        "--script-name",
        default="",
        metavar="PREFIX",
        help="the URL prefix the app is mounted under, e.g. /app (SCRIPT_NAME)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-params-size",
        type=int,
        default=64 * 1024,
        metavar="BYTES",
        help="largest FastCGI params block (default: %(default)s); a uwsgi vars block is also capped at 65535 "
        "by its u16 size field",
    )
    limits.add_argument(
        "--max-params",
        type=int,
        default=1000,
        metavar="N",
        help="most params/vars in one request (default: %(default)s)",
    )
    limits.add_argument(
        "--max-body-size",
        type=int,
        default=1 << 30,
        metavar="BYTES",
        help="largest request body; larger ones are answered 413 (default: %(default)s)",
    )
    limits.add_argument(
        "--max-requests-per-connection",
        type=int,
        default=128,
        metavar="N",
        help="concurrent requests multiplexed on one FastCGI connection (default: %(default)s)",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=10000,
        metavar="N",
        help="open connections at most; beyond it the gateway stops accepting and the listen backlog holds new "
        "ones (default: %(default)s)",
    )
    limits.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a connection must deliver a request's complete params/vars within this (default: %(default)s)",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="longest pause between two pieces of a request body (default: %(default)s)",
    )
    limits.add_argument(
        "--read-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="a whole request (params and body) must arrive within this (default: %(default)s)",
    )
    limits.add_argument(
        "--keepalive-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="close a kept-alive FastCGI connection idle this long; keep it above nginx's upstream "
        "keepalive_timeout (60 s) (default: %(default)s)",
    )
    limits.add_argument(
        "--body-spool-threshold",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="request bodies larger than this go to a temporary file (default: %(default)s)",
    )
    limits.add_argument(
        "--response-spool-threshold",
        type=int,
        default=1 << 20,
        metavar="BYTES",
        help="response bytes a client has not taken yet beyond this go to a temporary file (default: %(default)s)",
    )
    limits.add_argument(
        "--spool-dir",
        default=None,
        metavar="DIR",
        help="where temporary files go (default: the system temporary directory)",
    )
    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long in-flight requests may take to finish (default: %(default)s)",
    )
    ops.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    ops.add_argument("--access-log", metavar="PATH|-", default=None, help="write an access log line per response")
    ops.add_argument(
        "--access-log-format",
        metavar="FORMAT",
        default=DEFAULT_ACCESS_FORMAT,
        help="gunicorn-style atoms: " + ", ".join(f"%%({k})s {v}" for k, v in ACCESS_ATOMS.items()),
    )
    ops.add_argument("--pidfile", metavar="PATH", default=None, help="write the gateway's pid here")
    ops.add_argument("--user", default=None, help="switch to this user after binding the sockets")
    ops.add_argument("--group", default=None, help="switch to this group after binding the sockets")
    sessions = parser.add_argument_group(
        "sessions", "environ['gateway.session'], loaded and stored by the event loop, never by a worker"
    )
    sessions.add_argument(
        "--sessions",
        default="memory",
        metavar="memory|memcached://HOST:PORT|off",
        help="where sessions live: the gateway's own memory (shared by every worker), memcached through "
        "aiomcache (shared by several gateway hosts), or off (default: %(default)s)",
    )
    sessions.add_argument(
        "--session-ttl", type=float, default=1800.0, metavar="SECONDS", help="idle timeout, sliding (default: 1800)"
    )
    sessions.add_argument(
        "--session-max-age",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="absolute lifetime from creation, also the cookie's Max-Age (default: none, a browser-session cookie)",
    )
    sessions.add_argument("--session-cookie", default="gwsession", metavar="NAME", help="cookie name")
    sessions.add_argument("--session-cookie-domain", default=None, metavar="DOMAIN", help="cookie Domain")
    sessions.add_argument("--session-cookie-path", default="/", metavar="PATH", help="cookie Path (default: /)")
    sessions.add_argument(
        "--session-samesite", choices=("Lax", "Strict", "None"), default="Lax", help="cookie SameSite (default: Lax)"
    )
    sessions.add_argument(
        "--session-secure",
        choices=("auto", "always", "never"),
        default="auto",
        help="cookie Secure flag; auto = when the request came over HTTPS (HTTPS or REQUEST_SCHEME param)",
    )
    sessions.add_argument(
        "--session-serialize",
        action="store_true",
        help="run one session's requests one at a time (a lock in the store; across hosts with memcached)",
    )
    sessions.add_argument(
        "--session-timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="bound on each store operation; a request whose session cannot be loaded gets 503 (default: 2)",
    )
    sessions.add_argument("--session-prefix", default="gw:s:", metavar="PREFIX", help="memcached key prefix")
    sessions.add_argument(
        "--session-pool-size", type=int, default=16, metavar="N", help="memcached connections (default: 16)"
    )
    life = parser.add_argument_group("worker lifecycle")
    life.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="a request running longer is answered 504 and its worker killed and replaced (default: no limit)",
    )
    life.add_argument(
        "--max-requests",
        type=int,
        default=0,
        metavar="N",
        help="recycle a worker after N requests, a replacement starting first (default: never)",
    )
    life.add_argument(
        "--max-requests-jitter",
        type=int,
        default=0,
        metavar="N",
        help="add a random 0..N to each worker's --max-requests so they do not recycle together",
    )
    life.add_argument(
        "--max-rss",
        type=int,
        default=0,
        metavar="MIB",
        help="recycle a worker whose resident memory exceeds this, checked 4 times a second (default: never)",
    )
    life.add_argument(
        "--worker-scheduling",
        choices=("batch", "normal"),
        default="batch",
        help="CPU scheduling of the workers: 'batch' (Linux SCHED_BATCH) keeps their wake-ups from preempting the "
        "event loop, 'normal' leaves the default policy (default: %(default)s)",
    )
    life.add_argument(
        "--pipeline",
        type=int,
        default=2,
        metavar="N",
        help="while at least as many requests wait as there are workers, hand each worker up to N of them ahead "
        "of time, so it never waits for the loop between requests (0: off; default: %(default)s)",
    )
    life.add_argument(
        "--queue-size",
        type=int,
        default=1024,
        metavar="N",
        help="requests that may wait for a worker; beyond it they are answered 503 at once (default: %(default)s)",
    )
    life.add_argument(
        "--queue-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a request waiting longer for a worker is answered 503 (default: %(default)s)",
    )
    life.add_argument(
        "--scale-down-after",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="with --workers MIN:MAX, retire a worker idle this long, never below MIN (default: %(default)s)",
    )
    codecs = protocols.build_kind()
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (protocol codecs {codecs})")
    return parser


def build_config(argv: Sequence[str] | None = None) -> Config:
    """Parse the command line into a Config; raises ConfigError naming the bad option."""
    args = build_parser().parse_args(argv)
    listeners = tuple(Listen("fastcgi", Address.parse(a)) for a in args.fcgi) + tuple(
        Listen("uwsgi", Address.parse(a)) for a in args.uwsgi
    )
    if not listeners and not os.environ.get("LISTEN_FDS"):
        raise ConfigError("nothing to listen on: give --fcgi ADDR and/or --uwsgi ADDR, e.g. --fcgi :9000")
    return Config(
        listeners=listeners,
        app=args.app,
        workers=args.workers[0],
        workers_max=args.workers[1],
        script_name=args.script_name,
        socket_mode=args.socket_mode,
        backlog=args.backlog,
        allow_from=parse_networks(args.allow_from),
        max_params_size=args.max_params_size,
        max_params=args.max_params,
        max_body_size=args.max_body_size,
        max_requests_per_connection=args.max_requests_per_connection,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        read_timeout=args.read_timeout,
        keepalive_timeout=args.keepalive_timeout,
        body_spool_threshold=args.body_spool_threshold,
        response_spool_threshold=args.response_spool_threshold,
        spool_dir=args.spool_dir,
        graceful_timeout=args.graceful_timeout,
        log_level=args.log_level,
        timeout=args.timeout,
        max_requests=args.max_requests,
        max_requests_jitter=args.max_requests_jitter,
        max_rss=args.max_rss,
        pipeline=args.pipeline,
        worker_scheduling=args.worker_scheduling,
        queue_size=args.queue_size,
        queue_timeout=args.queue_timeout,
        scale_down_after=args.scale_down_after,
        sessions=args.sessions,
        session_ttl=args.session_ttl,
        session_max_age=args.session_max_age,
        session_cookie=args.session_cookie,
        session_cookie_domain=args.session_cookie_domain,
        session_cookie_path=args.session_cookie_path,
        session_samesite=args.session_samesite,
        session_secure=args.session_secure,
        session_serialize=args.session_serialize,
        session_timeout=args.session_timeout,
        session_prefix=args.session_prefix,
        session_pool_size=args.session_pool_size,
        debug=args.debug,
        reload=args.reload,
        access_log=args.access_log,
        access_log_format=args.access_log_format,
        pidfile=args.pidfile,
        user=args.user,
        group=args.group,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = build_config(argv)
    except ConfigError as err:
        print(f"gateway: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level, role=f"gateway {os.getpid()}")
    tune_malloc()
    return uvloop.run(Gateway(config).run())
