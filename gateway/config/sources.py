"""Where settings come from besides the command line: a TOML file, ``GATEWAY_*`` variables, and their layering.

Every reader here goes through the one declaration (:data:`~gateway.config.settings.SETTINGS`) and the one call
:func:`~gateway.config.settings.parse_value`: a TOML key is a setting's ``toml_key`` (``max_body_size``; the CLI
spelling ``max-body-size`` is accepted too), a variable its ``env_name`` (``GATEWAY_MAX_BODY_SIZE``). No option is
listed here.

Layers, lowest first: the declared defaults, a uWSGI ini (``--ini``), the TOML file (``--config``), the
environment, the command line. Each value remembers its :class:`Layer` and where in it (file and line, variable),
which is what ``--print-config`` shows and what an error names.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.declaration import ENV_PREFIX, Setting
from gateway.config.errors import ConfigError
from gateway.config.settings import SETTINGS, Config, parse_value

#: Variables with the prefix that are not settings (the build's switch): never reported as unknown.
_NOT_SETTINGS = frozenset({"GATEWAY_PURE_PYTHON"})

_BY_TOML_KEY: dict[str, Setting] = {declared.toml_key: declared for declared in SETTINGS}
_BY_ENV_NAME: dict[str, Setting] = {declared.env_name: declared for declared in SETTINGS}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one value came from: the layer (default, ini, file, environment, command line) and the spot in it."""

    layer: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.layer} {self.where}".strip()


DEFAULT = Origin("default")
COMMAND_LINE = Origin("command line")


@dataclass(slots=True)
class Layered:
    """Parsed values by setting name, each with its origin; later layers replace earlier ones per setting."""

    values: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)
    #: (level, message) lines for the log once it is configured: unknown variables, ini options we ignore.
    notes: list[tuple[str, str]] = field(default_factory=list)

    def set(self, name: str, value: Any, origin: Origin) -> None:
        self.values[name] = value
        self.origins[name] = origin

    def update(self, other: Layered) -> None:
        self.values.update(other.values)
        self.origins.update(other.origins)
        self.notes.extend(other.notes)


def nearest(name: str, known: Iterable[str]) -> str:
    """ ", did you mean 'x'?" for the closest known name, or nothing when none is close."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {matches[0]!r}?" if matches else ""


def _key_lines(text: str) -> dict[str, int]:
    """The line each top-level key is written on (tomllib keeps no positions; errors must name the line)."""
    lines: dict[str, int] = {}
    pattern = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=|^\s*\[+\s*([A-Za-z0-9_-]+)""")
    for number, line in enumerate(text.splitlines(), start=1):
        match = pattern.match(line)
        if match:
            key = next(group for group in match.groups() if group is not None)
            lines.setdefault(key, number)
    return lines


def read_toml(path: str) -> Layered:
    """A TOML file of settings, every key a setting under its CLI name; a ConfigError names file, line and option."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"--config {path}: {err.strerror or err}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    lines = _key_lines(text)
    layered = Layered()
    for key, raw in document.items():
        line = lines.get(key, 0)
        spot = f"{path}, line {line}" if line else path
        if isinstance(raw, dict):
            raise ConfigError(f"{spot}: {key} is a table; settings are top-level keys (key = value)")
        declared = _BY_TOML_KEY.get(key.replace("-", "_"))
        if declared is None:
            raise ConfigError(f"{spot}: unknown option {key!r}{nearest(key.replace('-', '_'), _BY_TOML_KEY)}")
        try:
            value = parse_value(declared.name, raw)
        except ConfigError as err:
            raise ConfigError(f"{spot}: {key}: {err}") from None
        layered.set(declared.name, value, Origin("file", spot))
    return layered


def read_environment(environ: Mapping[str, str]) -> Layered:
    """``GATEWAY_*`` variables naming a setting; one naming none but close to one is reported, never guessed."""
    layered = Layered()
    for variable in sorted(environ):
        if not variable.startswith(ENV_PREFIX) or variable in _NOT_SETTINGS:
            continue
        declared = _BY_ENV_NAME.get(variable)
        if declared is None:
            hint = nearest(variable, _BY_ENV_NAME)
            if hint:
                layered.notes.append(("warning", f"environment variable {variable} is no setting{hint} (ignored)"))
            continue
        try:
            value = parse_value(declared.name, environ[variable])
        except ConfigError as err:
            raise ConfigError(f"environment variable {variable}: {err}") from None
        layered.set(declared.name, value, Origin("environment", variable))
    return layered


def value_of(config: Config, declared: Setting) -> Any:
    """A setting's value as ``parse_value`` returns it (a spread setting's fields gathered back into one)."""
    if declared.spread:
        return tuple(getattr(config, name) for name in declared.spread)
    return getattr(config, declared.name)


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(char if char >= " " and char != "\x7f" else f"\\u{ord(char):04x}" for char in escaped)
    return f'"{escaped}"'


def toml_value(declared: Setting, value: Any) -> str | None:
    """``value`` written as TOML that reads back through ``parse_value`` as the same value; None for unset."""
    kind = declared.kind
    if declared.repeatable:
        return "[" + ", ".join(_toml_string(kind.to_text(item)) for item in value) + "]"
    if value is None:
        return None
    if type(value) in kind.toml_types and type(value) is not str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return repr(value)
    text = kind.to_text(value)
    if int in kind.toml_types and text.isdigit():  # a TOML integer reads back the same (--workers 2)
        return text
    return _toml_string(text)


def render_toml(config: Config, origins: Mapping[str, Origin]) -> str:
    """The effective configuration as a TOML file: each setting with its value and where it came from.

    An unset optional setting (TOML has no null) is written commented out, so the file still reads back whole.
    """
    out = ["# The gateway's effective configuration (python -m gateway --print-config); --config reads it back."]
    for declared in SETTINGS:
        origin = origins.get(declared.name, DEFAULT)
        written = toml_value(declared, value_of(config, declared))
        if written is None:
            out.append(f"# {declared.toml_key}: unset  # {origin}")
        else:
            out.append(f"{declared.toml_key} = {written}  # {origin}")
    return "\n".join(out) + "\n"
