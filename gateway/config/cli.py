"""The command line: parse arguments into a Config, then run the gateway on uvloop; or run a subcommand.

Every option comes from the settings' declarations (gateway/config/settings.py); none is written here. The four
options that say where else settings come from (``--config``, ``--ini``, ``--strict-ini``) and what to do with
them (``--print-config``) are the only ones declared here: they are no setting of a run.

Layers, lowest first: defaults, ``--ini``, ``--config``, ``GATEWAY_*`` variables, the command line (see
gateway/config/sources.py). The environment sits between file and command line because that is where containers
and systemd's ``Environment=`` put per-host values (a port, the worker count) over a file baked into an image.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import uvloop

import gateway.protocols
from gateway import __version__
from gateway.config.settings import SECTIONS, SETTINGS, Config, ConfigError, config_from, parse_value
from gateway.config.sources import COMMAND_LINE, Layered, Origin, read_environment, read_toml, render_toml
from gateway.config.uwsgi_ini import read_ini
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
    files = parser.add_argument_group("configuration files")
    files.add_argument("--config", metavar="FILE", help="read settings from this TOML file (the command line wins)")
    files.add_argument(
        "--ini", metavar="FILE[:SECTION]", help="read a uWSGI ini file as uWSGI does ([uwsgi] section by default)"
    )
    files.add_argument(
        "--strict-ini", action="store_true", help="an ini option the gateway does not take is an error, not a warning"
    )
    files.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective configuration as TOML, each value with where it came from, and exit",
    )
    codecs = gateway.protocols.build_kind()
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} (protocol codecs {codecs})")
    return parser


META_OPTIONS = ("config", "ini", "strict_ini", "print_config")


@dataclass(frozen=True, slots=True)
class Loaded:
    """A Config with where each value came from, the notes to log once logging is set up, and ``--print-config``."""

    config: Config
    origins: Mapping[str, Origin]
    notes: Sequence[tuple[str, str]]
    print_config: bool = False


def load(
    argv: Sequence[str] | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    parser: argparse.ArgumentParser | None = None,
) -> Loaded:
    """Every layer into one Config; raises ConfigError naming the file, line or variable and the bad option."""
    given = vars((parser or build_parser()).parse_args(argv))
    layered = Layered()
    if given.get("ini"):
        layered.update(read_ini(given["ini"], strict=bool(given.get("strict_ini")), environ=environ))
    if given.get("config"):
        layered.update(read_toml(given["config"]))
    layered.update(read_environment(environ))
    for name, raw in given.items():
        if name not in META_OPTIONS:
            layered.set(name, parse_value(name, raw), COMMAND_LINE)
    config = config_from(layered.values, environ=environ)
    return Loaded(config, layered.origins, layered.notes, bool(given.get("print_config")))


def build_config(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] = os.environ) -> Config:
    """Parse the command line (and the files and variables it leads to) into a Config; raises ConfigError naming
    the bad option."""
    return load(argv, environ=environ).config


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
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("rules", "probe"):
        return _subcommand(args[0], args[1:])
    try:
        loaded = load(args)
    except ConfigError as err:
        print(f"gateway: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    config = loaded.config
    if loaded.print_config:
        for level, note in loaded.notes:
            print(f"# {level}: {note}")
        sys.stdout.write(render_toml(config, loaded.origins))
        return 0
    try:
        enter_app_directory(config)
    except ConfigError as err:
        print(f"gateway: error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(config.log_level, role=f"gateway {os.getpid()}")
    for level, note in loaded.notes:
        log.log(logging.getLevelName(level.upper()), "%s", note)
    tune_malloc()
    return uvloop.run(Gateway(config).run())


def _subcommand(name: str, args: list[str]) -> int:
    """``python -m gateway rules ...`` and ``probe ...``: operator tools, imported only when asked for."""
    if name == "rules":
        from gateway.ops import rules  # noqa: PLC0415 - the server never pays for the tools' imports

        return rules.main(args)
    from gateway.ops import probe  # noqa: PLC0415

    return probe.main(args)
