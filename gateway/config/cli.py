"""The command line: parse arguments into a Config, then run the gateway on uvloop. Nothing else.

Every option comes from the settings' declarations (gateway/config/settings.py); none is written here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import uvloop

import gateway.protocols
from gateway import __version__
from gateway.config.settings import SECTIONS, SETTINGS, Config, ConfigError, config_from, parse_value
from gateway.contract.exits import EXIT_CONFIG
from gateway.log import configure_logging
from gateway.master.server import Gateway
from gateway.memory import tune_malloc

log = logging.getLogger("gateway")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser, generated from the declarations in :data:`~gateway.config.settings.SETTINGS`.

    It only gathers text: every option's default is ``SUPPRESS`` (an option not given is left out, so Config's
    default applies), and converting and checking are :func:`build_config`'s, through the same ``parse_value`` a
    TOML file or the environment will use.
    """
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="Serve a WSGI application over FastCGI and/or uwsgi to a web server (nginx, Apache, "
        "lighttpd). One event loop buffers each request whole; a pool of worker processes runs the app.",
        epilog="ADDR is HOST:PORT, :PORT (binds 127.0.0.1: FastCGI and uwsgi carry no authentication, so "
        "listening on every interface must be asked for, e.g. 0.0.0.0:9000), [IPV6]:PORT, or unix:PATH.",
        argument_default=argparse.SUPPRESS,
    )
    groups = {section: parser.add_argument_group(section, about or None) for section, about in SECTIONS.items()}
    for declared in SETTINGS:
        if declared.positional:
            parser.add_argument(declared.name, nargs="?", metavar=declared.shown_metavar, help=declared.help_text())
        elif declared.is_flag:
            groups[declared.section].add_argument(
                declared.cli, dest=declared.name, action="store_true", help=declared.help_text()
            )
        else:
            groups[declared.section].add_argument(
                declared.cli,
                dest=declared.name,
                action="append" if declared.repeatable else "store",
                metavar=declared.shown_metavar,
                help=declared.help_text(),
            )
    codecs = gateway.protocols.build_kind()
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (protocol codecs {codecs})")
    return parser


def build_config(argv: Sequence[str] | None = None) -> Config:
    """Parse the command line into a Config; raises ConfigError naming the bad option."""
    given = vars(build_parser().parse_args(argv))
    return config_from({name: parse_value(name, raw) for name, raw in given.items()})


def enter_app_directory(config: Config) -> None:
    """``--chdir`` first, as gunicorn and uWSGI do it: the app, ``--pythonpath`` and relative paths in the other
    options are then read from the app's directory. A ConfigError names the option and the directory."""
    if config.chdir:
        try:
            os.chdir(config.chdir)
        except OSError as err:
            raise ConfigError(f"--chdir {config.chdir!r}: {err.strerror}") from None
    for directory in config.pythonpath:
        if not os.path.isdir(directory):
            raise ConfigError(f"--pythonpath {directory!r}: no such directory (looked up from {os.getcwd()})")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = build_config(argv)
        enter_app_directory(config)
    except ConfigError as err:
        print(f"gateway: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level, role=f"gateway {os.getpid()}")
    tune_malloc()
    return uvloop.run(Gateway(config).run())
