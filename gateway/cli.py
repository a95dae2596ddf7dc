"""The command line: parse arguments into a Config, then run the gateway on uvloop. Nothing else."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import uvloop

from gateway import __version__
from gateway.config import DEMO_APP, Address, Config, ConfigError, Listen, parse_networks
from gateway.log import configure_logging
from gateway.server import EXIT_CONFIG, Gateway

log = logging.getLogger("gateway")


def _octal(text: str) -> int:
    try:
        return int(text, 8)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode such as 660") from err


def _workers(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of workers")
    return int(text)


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
        default=os.cpu_count() or 1,
        metavar="N",
        help="worker processes (default: the number of CPUs, %(default)s)",
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def build_config(argv: Sequence[str] | None = None) -> Config:
    """Parse the command line into a Config; raises ConfigError naming the bad option."""
    args = build_parser().parse_args(argv)
    listeners = tuple(Listen("fastcgi", Address.parse(a)) for a in args.fcgi) + tuple(
        Listen("uwsgi", Address.parse(a)) for a in args.uwsgi
    )
    if not listeners:
        raise ConfigError("nothing to listen on: give --fcgi ADDR and/or --uwsgi ADDR, e.g. --fcgi :9000")
    return Config(
        listeners=listeners,
        app=args.app,
        workers=args.workers,
        script_name=args.script_name,
        socket_mode=args.socket_mode,
        backlog=args.backlog,
        allow_from=parse_networks(args.allow_from),
        max_params_size=args.max_params_size,
        max_params=args.max_params,
        max_body_size=args.max_body_size,
        max_requests_per_connection=args.max_requests_per_connection,
        body_spool_threshold=args.body_spool_threshold,
        response_spool_threshold=args.response_spool_threshold,
        spool_dir=args.spool_dir,
        graceful_timeout=args.graceful_timeout,
        log_level=args.log_level,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = build_config(argv)
    except ConfigError as err:
        print(f"gateway: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level, role=f"gateway {os.getpid()}")
    return uvloop.run(Gateway(config).run())
