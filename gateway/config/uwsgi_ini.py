"""A uWSGI ini file read as uWSGI reads it, and mapped onto our settings through one table.

uWSGI's rules (its ``ini.c`` and the "Configuring uWSGI" page): options live in the ``[uwsgi]`` section (or the one
named by ``FILE:SECTION``); ``#`` and ``;`` start a comment line; a key may repeat (each occurrence adds a value to a
repeatable option, the last one wins for the others); ``%(name)`` is replaced by the value of an option set earlier
in the file, and left as written when there is none (so ``logformat = %(addr) ...`` stays a log format); the magic
variables ``%d %p %s %n %e %c %x %k %h %%`` and ``$(VAR)`` (the environment) are expanded.

:data:`UWSGI_OPTIONS` says, per uWSGI option, what it means here:

- :class:`Maps`: its value (converted to our syntax) is the value of our setting ``target``. When ``target`` names
  no setting of this build yet (``env`` today), the option gets one "not supported yet" warning; the
  day the setting is declared, the entry starts working with no other change.
- :class:`Needless`: meaningful for uWSGI, not needed here (``master``, ``vacuum``...): an info line says why.
- :class:`Refused`: meaningful, deliberately not done (``daemonize``): a warning says what to do instead.
- :class:`Part`: one piece of a setting made of several options (``module`` + ``callable``, ``cheaper`` +
  ``processes``), combined once the whole file is read.

An ini means a uWSGI instance, so it also brings uWSGI's defaults where ours differ and its users count on them:
without ``lazy-apps`` uWSGI imports the app once and forks its workers, so an ini turns ``--preload`` on unless it
says ``lazy-apps = true`` (or ``lazy``). An app that loads a large model at import keeps one copy shared by the
workers, as it had under uWSGI, instead of one per worker.

Any other option gets one warning naming it; ``--strict-ini`` turns every warning into one error.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config.declaration import FLAG
from gateway.config.errors import ConfigError
from gateway.config.settings import SETTINGS, parse_value
from gateway.config.sources import Layered, Origin, nearest

_SETTING_NAMES = frozenset(declared.name for declared in SETTINGS)


def _same(text: str) -> str:
    return text


def _address(text: str) -> str:
    """uWSGI's socket syntax into ours: a path is a unix socket; ``:PORT`` keeps our loopback default."""
    if text.startswith("@"):
        raise ConfigError(f"abstract unix socket {text!r} is not supported; use a path or HOST:PORT")
    if text.startswith("unix:"):
        return text
    if "/" in text or ":" not in text:
        return f"unix:{text}"
    return text


def _mode(text: str) -> str:
    """``chmod-socket`` alone means 666 in uWSGI."""
    return text or "666"


def _switched_on(text: str) -> str:
    """``py-autoreload = N`` (seconds between scans): any N above 0 turns reloading on."""
    return "true" if text.strip().isdigit() and int(text) > 0 else FLAG.to_text(FLAG.from_text(text or "1"))


def _subscribe2(text: str) -> str:
    """``subscribe2 = server=127.0.0.1:2626,key=foo.com`` into our ``SERVER=KEY``; its other keys (``modifier1``,
    ``weight``, signing...) have no setting here and are refused by name."""
    fields = dict(part.partition("=")[::2] for part in text.split(",") if part)
    unknown = sorted(set(fields) - {"server", "key"})
    if unknown or not fields.get("server") or not fields.get("key"):
        raise ConfigError(f"subscribe2 {text!r}: only server=HOST:PORT,key=DOMAIN is supported (not {unknown})")
    return f"{fields['server']}={fields['key']}"


def _subscribe_to(text: str) -> str:
    """``subscribe-to = 127.0.0.1:2626:foo.com`` (the router's address, then the key) into ``SERVER=KEY``."""
    server, _, key = text.rpartition(":")
    return f"{server}={key}"


@dataclass(frozen=True, slots=True)
class Maps:
    """The option's value, converted, is the value of our setting ``target`` (not supported yet while absent)."""

    target: str
    convert: Callable[[str], str] = _same


@dataclass(frozen=True, slots=True)
class Needless:
    """uWSGI needs this option; the gateway does not, for the reason given (an info line)."""

    why: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A meaning the gateway deliberately does not take on; ``instead`` says what to do (a warning)."""

    instead: str


@dataclass(frozen=True, slots=True)
class Part:
    """One piece of a setting built from several options (see :func:`_combine`)."""

    piece: str


Meaning = Maps | Needless | Refused | Part

#: Every uWSGI option that means something here, and what. To map one more: add its line.
UWSGI_OPTIONS: dict[str, Meaning] = {
    "socket": Maps("uwsgi", _address),
    "uwsgi-socket": Maps("uwsgi", _address),
    "fastcgi-socket": Maps("fcgi", _address),
    "http-socket": Maps("http", _address),
    "http": Maps("http", _address),
    "processes": Part("workers"),
    "workers": Part("workers"),
    "cheaper": Part("cheaper"),
    "cheaper-initial": Needless("the pool starts at its minimum (--workers MIN:MAX) and grows while requests wait"),
    "threads": Maps("threads"),
    "harakiri": Maps("timeout"),
    "max-requests": Maps("max_requests"),
    "max-requests-delta": Maps("max_requests_jitter"),
    "reload-on-rss": Maps("max_rss"),
    "listen": Maps("backlog"),
    "chmod-socket": Maps("socket_mode", _mode),
    "uid": Maps("user"),
    "gid": Maps("group"),
    "pidfile": Maps("pidfile"),
    "module": Part("module"),
    "wsgi": Part("module"),
    "wsgi-file": Part("wsgi-file"),
    "callable": Part("callable"),
    "mount": Part("mount"),
    "manage-script-name": Needless("SCRIPT_NAME and PATH_INFO are always derived from the web server's params"),
    "chdir": Maps("chdir"),
    "pythonpath": Maps("pythonpath"),
    "virtualenv": Refused("run the virtualenv's own python: VENV/bin/python -m gateway"),
    "home": Refused("run the virtualenv's own python: VENV/bin/python -m gateway"),
    "env": Maps("env"),
    "subscribe2": Maps("subscribe", _subscribe2),
    "subscribe-to": Maps("subscribe", _subscribe_to),
    "subscribe-freq": Maps("subscribe_interval"),
    "stats": Maps("stats", _address),
    "reuse-port": Maps("reuse_port", _switched_on),
    "logformat": Maps("access_log_format"),  # --access-log-format reads uWSGI's variables as they are
    "buffer-size": Maps("max_params_size"),
    "limit-post": Maps("max_body_size"),
    "reload-mercy": Maps("graceful_timeout"),
    "worker-reload-mercy": Maps("graceful_timeout"),
    "py-autoreload": Maps("reload", _switched_on),
    "post-buffering": Needless("every request body is read whole by the event loop before a worker sees it"),
    "vacuum": Needless("unix sockets and the pidfile are always removed at exit"),
    "master": Needless("the gateway always has a master: the event loop that supervises the workers"),
    "die-on-term": Needless("SIGTERM always stops the gateway gracefully"),
    "plugins": Needless("Python WSGI is all the gateway serves; there are no plugins"),
    "plugin": Needless("Python WSGI is all the gateway serves; there are no plugins"),
    "heartbeat": Needless("the heartbeat is for uWSGI's Emperor; a process monitor watches the gateway"),
    "enable-threads": Needless("the app may start threads in any worker"),
    "lazy-apps": Part("lazy-apps"),
    "lazy": Part("lazy-apps"),
    "single-interpreter": Needless("each worker runs one interpreter"),
    "thunder-lock": Needless("one event loop accepts every connection: there is no accept lock to take"),
    "auto-procname": Needless("process titles always name the role (gateway master, gateway worker)"),
    "strict": Needless("use --strict-ini for the same effect"),
    "harakiri-verbose": Needless("a --timeout always logs the worker, the request and the elapsed time"),
    "daemonize": Refused("never daemonize: run the gateway in the foreground under systemd, supervisord or runit"),
    "logto": Refused("the error log is stderr: let the process monitor (journald, svlogd, supervisord) keep it"),
}


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    value: str
    line: int


def _magic(path: Path) -> dict[str, str]:
    """uWSGI's magic variables for a config file at ``path``."""
    absolute = path.resolve()
    return {
        "d": str(absolute.parent) + "/",
        "p": str(absolute),
        "s": absolute.name,
        "n": absolute.stem,
        "e": absolute.suffix.lstrip("."),
        "c": absolute.parent.name,
        "x": absolute.name,
        "k": str(os.cpu_count() or 1),
        "h": socket.gethostname(),
        "u": str(os.getuid()),
        "U": getpass.getuser(),
        "%": "%",
    }


def _expand(value: str, seen: Mapping[str, str], magic: Mapping[str, str], environ: Mapping[str, str]) -> str:
    def placeholder(match: re.Match[str]) -> str:
        if match.group(1) is not None:  # %(name): an option set earlier, else kept as written
            return seen.get(match.group(1), match.group(0))
        if match.group(2) is not None:  # $(VAR)
            return environ.get(match.group(2), "")
        return magic.get(match.group(3), match.group(0))

    return re.sub(r"%\(([\w-]+)\)|\$\(([\w]+)\)|%([a-zA-Z%])", placeholder, value)


def parse_ini(text: str, path: Path, section: str, environ: Mapping[str, str]) -> list[_Entry]:
    """The ``section``'s entries in order, placeholders expanded, as uWSGI's ini reader sees them."""
    entries: list[_Entry] = []
    seen: dict[str, str] = {}
    magic = _magic(path)
    current: str | None = None
    found = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1].strip()
            found = found or current == section
            continue
        if current != section:
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"{path}, line {number}: {line!r} is not KEY = VALUE")
        value = _expand(value.strip(), seen, magic, environ)
        seen[key] = value
        entries.append(_Entry(key, value, number))
    if not found:
        raise ConfigError(f"{path}: no [{section}] section")
    return entries


def read_ini(spec: str, *, strict: bool = False, environ: Mapping[str, str] = os.environ) -> Layered:
    """``FILE`` or ``FILE:SECTION`` (uWSGI's own syntax) into our settings; ``strict`` makes warnings one error."""
    file_name, _, section = spec.partition(":")
    path = Path(file_name)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"--ini {file_name}: {err.strerror or err}") from None
    layered = Layered()
    problems: list[str] = []
    repeated: dict[str, list[tuple[str, Origin]]] = {}
    parts: dict[str, tuple[str, Origin]] = {}
    for entry in parse_ini(text, path, section or "uwsgi", environ):
        origin = Origin("ini", f"{path}, line {entry.line} ({entry.key})")
        spot = f"{path}, line {entry.line}: {entry.key}"
        meaning = UWSGI_OPTIONS.get(entry.key)
        if meaning is None:
            problems.append(f"{spot}: unknown uWSGI option{nearest(entry.key, UWSGI_OPTIONS)}")
        elif isinstance(meaning, Needless):
            layered.notes.append(("info", f"{spot}: not needed here: {meaning.why}"))
        elif isinstance(meaning, Refused):
            problems.append(f"{spot}: not done here: {meaning.instead}")
        elif isinstance(meaning, Part):
            parts[meaning.piece] = (entry.value, origin)
        elif meaning.target not in _SETTING_NAMES:
            problems.append(f"{spot}: not supported yet (no --{meaning.target.replace('_', '-')} in this version)")
        else:
            try:
                converted = meaning.convert(entry.value)
            except ConfigError as err:
                raise ConfigError(f"{spot}: {err}") from None
            repeated.setdefault(meaning.target, []).append((converted, origin))
    for target, occurrences in repeated.items():
        declared = next(declared for declared in SETTINGS if declared.name == target)
        texts = [text for text, _ in occurrences]
        raw: object = texts if declared.repeatable else texts[-1]
        try:
            layered.set(target, parse_value(target, raw), occurrences[-1][1])
        except ConfigError as err:
            raise ConfigError(f"{occurrences[-1][1].where}: {err}") from None
    _combine(parts, layered, path)
    if problems and strict:
        raise ConfigError("--strict-ini: " + "; ".join(problems))
    layered.notes.extend(("warning", problem) for problem in problems)
    return layered


def _combine(parts: Mapping[str, tuple[str, Origin]], layered: Layered, path: Path) -> None:
    """The settings several uWSGI options make together: the app, the mount prefix, the worker range, and whether
    the app is imported once (uWSGI's default) or by each worker (``lazy-apps``)."""
    module = parts.get("module")
    wsgi_file = parts.get("wsgi-file")
    mount = parts.get("mount")
    callable_name = parts["callable"][0] if "callable" in parts else "application"
    app: tuple[str, Origin] | None = None
    if mount is not None:
        prefix, _, target = mount[0].partition("=")
        layered.set("script_name", parse_value("script_name", prefix.rstrip("/")), mount[1])
        app = (target, mount[1])
    elif module is not None:
        app = module
    elif wsgi_file is not None:
        # uWSGI executes the file; we import it as a module from its directory, put on the import path.
        app = (Path(wsgi_file[0]).stem, wsgi_file[1])
        directory = os.path.dirname(wsgi_file[0])
        if directory:
            paths = layered.values.get("pythonpath", ()) + parse_value("pythonpath", [directory])
            layered.set("pythonpath", paths, wsgi_file[1])
    if app is not None:
        text, origin = app
        if text.endswith(".py"):
            text = Path(text).stem
        if ":" not in text:
            text = f"{text}:{callable_name}"
        layered.set("app", parse_value("app", text), origin)
    workers = parts.get("workers")
    cheaper = parts.get("cheaper")
    if workers is not None:
        text = f"{cheaper[0]}:{workers[0]}" if cheaper is not None and cheaper[0] != "0" else workers[0]
        layered.set("workers", parse_value("workers", text), workers[1])
    lazy = parts.get("lazy-apps")
    if lazy is None:
        layered.set("preload", True, Origin("ini", f"{path} (no lazy-apps: uWSGI imports the app once and forks)"))
    else:
        text, origin = lazy
        try:
            lazy_apps = FLAG.from_text(text or "1")
        except ValueError:
            raise ConfigError(f"{origin.where}: {text!r} is not {FLAG.describe}") from None
        layered.set("preload", not lazy_apps, origin)
