"""How a setting is declared: once, on the :class:`~gateway.config.settings.Config` field that holds it.

A field's ``metadata`` carries a :class:`Setting` (made by :func:`setting`): its kind of value, section, help text,
README text, metavar, checks and whether it repeats. Every reader and every document is generated from those
declarations, never written beside them: the argparse parser, ``--help`` with its defaults, the README's options
tables (``python -m devstack.options_table``) and, later, a TOML file and ``GATEWAY_*`` environment variables,
whose key and variable name derive from the option's CLI name (``--max-body-size``: ``max_body_size``,
``GATEWAY_MAX_BODY_SIZE``). gunicorn's ``config.py`` (one class per setting) is the model; field metadata gives the
same single declaration without a class hierarchy beside the dataclass.

A :class:`Kind` says how one kind of value is written: as text (one command-line argument, or an environment
variable) and as a native TOML value. Converting is kept apart from checking: a kind turns text into a value of the
right type, and a setting's :class:`Check` objects say which values of that type are allowed; ``Config`` runs the
checks however it was built, so a Config made in a test is held to the same rules as one from the command line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.config.errors import ConfigError

#: The metadata key under which a Config field carries its Setting.
METADATA_KEY = "gateway.setting"

#: Environment variable names are this prefix and the TOML key in upper case.
ENV_PREFIX = "GATEWAY_"

#: How an error message names the TOML types a setting takes natively.
_TOML_NAMES: dict[type, str] = {int: "an integer", float: "a number", bool: "true or false", str: "text"}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class Kind:
    """How one kind of value is written as text and as a TOML value.

    For a repeatable setting the value is a tuple: ``from_text`` reads one occurrence (one ``--fcgi ADDR``) into a
    tuple of items, which occurrences add up to, and ``to_text`` writes one item back.
    """

    #: What the text must look like, completing "--option 'x' is not ...".
    describe: str
    from_text: Callable[[str], Any]
    #: The inverse of ``from_text``: text that reads back as the same value (what round-trips through the CLI).
    to_text: Callable[[Any], str]
    #: Native TOML types that carry this kind besides text (text is always read by ``from_text``).
    toml_types: tuple[type, ...] = ()
    #: Turns a native TOML value of one of ``toml_types`` into the setting's value (a TOML int for a float).
    from_toml: Callable[[Any], Any] = lambda value: value
    #: How a default reads in ``--help`` and the README, when it is not the text itself (sizes in KiB, MiB).
    show: Callable[[Any], str] | None = None
    #: The only texts allowed, when the kind is an enumeration.
    choices: tuple[str, ...] = ()

    def shown(self, value: Any) -> str:
        return (self.show or self.to_text)(value)


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(text)


def _seconds_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _size_text(value: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if value >= 1 << shift and value % (1 << shift) == 0:
            return f"{value >> shift} {unit}"
    return str(value)


INTEGER = Kind("an integer", int, str, (int,))
#: An integer number of bytes; its default reads in KiB, MiB or GiB.
BYTES = Kind("a number of bytes", int, str, (int,), show=_size_text)
SECONDS = Kind("a number of seconds", float, _seconds_text, (int, float), from_toml=float)
TEXT = Kind("text", str, str, (str,))
#: File permissions in octal, as chmod writes them; never a TOML integer, whose ``660`` would be decimal.
OCTAL = Kind("an octal mode such as 660", lambda text: int(text, 8), lambda value: format(value, "o"))
#: A switch: on the command line its presence; as text (environment) 1/0, true/false, yes/no or on/off.
FLAG = Kind("a switch (1, true, yes, on, or 0, false, no, off)", _flag, lambda on: "true" if on else "false", (bool,))


def choice(*choices: str) -> Kind:
    """A kind whose text must be one of ``choices``, kept as that text."""

    def from_text(text: str) -> str:
        if text not in choices:
            raise ValueError(text)
        return text

    return Kind("one of " + ", ".join(choices), from_text, str, choices=choices)


@dataclass(frozen=True, slots=True)
class Check:
    """A rule a setting's value must keep, and how an error message says what is allowed."""

    test: Callable[[Any], bool]
    #: Completes "--option VALUE: ...", e.g. "must be a positive number".
    allowed: str


POSITIVE = Check(lambda value: value >= 1, "must be a positive number")
AT_LEAST_ONE = Check(lambda value: value >= 1, "must be at least 1")
POSITIVE_SECONDS = Check(lambda value: value > 0, "must be a positive number of seconds")
NOT_NEGATIVE = Check(lambda value: value >= 0, "must not be negative")


def within(low: int, high: int, unit: str) -> Check:
    return Check(lambda value: low <= value <= high, f"must be within {low}-{high} {unit}")


def _literal(value: Any) -> str:
    """A value as an error message quotes it: text quoted, numbers bare."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return _seconds_text(value)
    return str(value)


@dataclass(frozen=True, slots=True)
class Setting:
    """One option, declared once: everything a reader or a document needs to know about it.

    ``name`` is the Config field that carries the declaration; :func:`bind` fills it in and the field's default.
    """

    kind: Kind
    section: str
    #: The short text of ``--help``; its default is appended from the declaration, never written into it.
    help: str
    #: The README's longer explanation; ``help`` when empty.
    doc: str = ""
    metavar: str | None = None
    #: How the default reads where the value itself says little ("the number of CPUs", "never" for a 0).
    default_text: str | None = None
    repeatable: bool = False
    #: The application, given without an option name.
    positional: bool = False
    checks: tuple[Check, ...] = ()
    #: The Config fields one value fills, in order, when it is a tuple of several (``--workers MIN:MAX``).
    spread: tuple[str, ...] = ()
    #: A text the setting accepts that is not its default: what the tests' round trip through the parser reads.
    example: str = ""
    #: What an error message calls the setting when that is not its CLI name (the positional application).
    label_text: str = ""
    name: str = ""
    default: Any = None

    @property
    def cli(self) -> str:
        """The CLI name: ``--max-body-size``, or the bare name of the positional."""
        dashed = self.name.replace("_", "-")
        return dashed if self.positional else f"--{dashed}"

    @property
    def toml_key(self) -> str:
        return self.cli.removeprefix("--").replace("-", "_")

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.toml_key.upper()

    @property
    def label(self) -> str:
        return self.label_text or self.cli

    @property
    def is_flag(self) -> bool:
        return self.kind is FLAG

    @property
    def shown_metavar(self) -> str:
        if self.metavar:
            return self.metavar
        return "|".join(self.kind.choices) if self.kind.choices else self.name.upper()

    @property
    def usage(self) -> str:
        """How the option is written: ``--fcgi ADDR``, ``--debug``, ``MODULE:CALLABLE``."""
        if self.positional:
            return self.shown_metavar
        return self.cli if self.is_flag else f"{self.cli} {self.shown_metavar}"

    @property
    def shown_default(self) -> str:
        """The default as ``--help`` and the README show it; empty when there is nothing to say."""
        if self.default_text:
            return self.default_text
        if self.is_flag:
            return "off"
        if self.default is None or self.default in ("", ()):
            return ""
        return self.kind.shown(self.default)

    @property
    def explanation(self) -> str:
        """The README's text: the longer ``doc``, else ``help``."""
        text = self.doc or self.help
        return f"{text} (repeatable)" if self.repeatable else text

    def help_text(self) -> str:
        """``--help``'s line, its default rendered from the declaration (``%`` escaped for argparse)."""
        notes = ["repeatable"] if self.repeatable else []
        if self.shown_default and not self.is_flag:
            notes.append(f"default: {self.shown_default}")
        text = f"{self.help} ({'; '.join(notes)})" if notes else self.help
        return text.replace("%", "%%")

    def convert(self, text: str) -> Any:
        """One occurrence of text (a CLI argument) into a value; a ConfigError names the option and the form."""
        try:
            return self.kind.from_text(text)
        except ConfigError as err:
            raise ConfigError(f"{self.label}: {err}") from err
        except ValueError as err:
            raise ConfigError(f"{self.label} {text!r} is not {self.kind.describe}") from err

    def from_texts(self, texts: Sequence[str]) -> Any:
        """A repeatable setting's occurrences, added up into one tuple."""
        items: list[Any] = []
        for text in texts:
            items.extend(self.convert(text))
        return tuple(items)

    def parse(self, raw: object) -> Any:
        """Text (an environment variable, a TOML string) or a native TOML value, checked, into the value."""
        if isinstance(raw, str):
            value = self.from_texts(raw.split()) if self.repeatable else self.convert(raw)
        elif self.repeatable and isinstance(raw, list):
            if not all(isinstance(item, str) for item in raw):
                raise ConfigError(f"{self.label}: every item of the list must be text, not {raw!r}")
            value = self.from_texts(raw)
        elif type(raw) in self.kind.toml_types:  # type(), not isinstance: a TOML true is no integer
            value = self.kind.from_toml(raw)
        else:
            wanted = [_TOML_NAMES[kind] for kind in self.kind.toml_types] + [f"text that is {self.kind.describe}"]
            raise ConfigError(f"{self.label} {raw!r} is not {' or '.join(wanted)}")
        # The field carrying the declaration; Config checks the others of a spread value against each other.
        self.check(self.fields_of(value)[self.name])
        return value

    def to_args(self, value: Any) -> list[str]:
        """Command-line arguments that give ``value`` (the inverse of the parser, for the round trip)."""
        if self.is_flag:
            return [self.cli] if value else []
        if self.repeatable:
            return [arg for item in value for arg in (self.cli, self.kind.to_text(item))]
        text = self.kind.to_text(value)
        return [text] if self.positional else [self.cli, text]

    def fields_of(self, value: Any) -> dict[str, Any]:
        """The Config keyword arguments ``value`` stands for."""
        if self.spread:
            return dict(zip(self.spread, value, strict=True))
        return {self.name: value}

    def check(self, value: Any) -> None:
        """Raise a ConfigError naming the option, the value and what is allowed, when a check fails."""
        for rule in self.checks:
            if not rule.test(value):
                raise ConfigError(f"{self.label} {_literal(value)}: {rule.allowed}")


def setting(
    kind: Kind,
    *,
    section: str,
    help: str,
    default: Any = dataclasses.MISSING,
    default_factory: Callable[[], Any] | None = None,
    **details: Any,
) -> Any:
    """A Config field carrying its Setting; ``details`` are the other :class:`Setting` fields.

    Returns ``Any`` as :func:`dataclasses.field` does, so that the annotation on the field stays its type.
    """
    declared = Setting(kind=kind, section=section, help=help, **details)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={METADATA_KEY: declared})
    return dataclasses.field(default=default, metadata={METADATA_KEY: declared})


def bind(cls: type) -> tuple[Setting, ...]:
    """The settings declared on the dataclass ``cls``, in field order, each knowing its name and default."""
    bound = []
    for field in dataclasses.fields(cls):
        declared = field.metadata.get(METADATA_KEY)
        if declared is None:
            continue
        factory = field.default_factory
        default = field.default if factory is dataclasses.MISSING else factory()
        bound.append(dataclasses.replace(declared, name=field.name, default=default))
    return tuple(bound)


def by_name(settings: Sequence[Setting]) -> Mapping[str, Setting]:
    return {declared.name: declared for declared in settings}
