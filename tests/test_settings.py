"""Each setting declared once: the parser, --help, the README tables and parse_value are all read from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import pytest

from devstack import options_table
from gateway.config.addresses import Address
from gateway.config.cli import META_OPTIONS, build_config, build_parser, main
from gateway.config.declaration import Setting
from gateway.config.settings import SETTINGS, Config, ConfigError, config_from, parse_value, setting_named
from gateway.contract.exits import EXIT_CONFIG
from gateway.loop.fastcgi_front import FastCGIConnection
from gateway.loop.front import FrontContext
from gateway.loop.uwsgi_front import UwsgiConnection
from tests.fakes import FakeDispatcher

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def systemd_sockets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sockets handed over by systemd: a command line without --fcgi or --uwsgi is then complete."""
    monkeypatch.setenv("LISTEN_FDS", "1")


def _example_value(declared: Setting) -> Any:
    return True if declared.is_flag else parse_value(declared.name, declared.example)


@pytest.mark.usefixtures("systemd_sockets")
@pytest.mark.parametrize("declared", SETTINGS, ids=lambda declared: declared.cli)
def test_every_setting_round_trips_through_the_parser(declared: Setting) -> None:
    value = _example_value(declared)
    expected = declared.fields_of(value)
    defaults = Config()
    assert any(getattr(defaults, name) != field_value for name, field_value in expected.items()), (
        f"{declared.cli}'s example is its default, so the round trip would prove nothing"
    )
    config = build_config(declared.to_args(value))
    assert {name: getattr(config, name) for name in expected} == expected
    # The text the parser was given reads back the same through the environment's door.
    if not declared.is_flag and not declared.repeatable:
        assert parse_value(declared.name, declared.to_args(value)[-1]) == value


@pytest.mark.usefixtures("systemd_sockets")
def test_an_empty_command_line_leaves_every_declared_default() -> None:
    config = build_config([])
    for declared in SETTINGS:
        assert getattr(config, declared.name) == declared.default, declared.cli
    assert config.workers_max == Config().workers_max


def test_help_renders_each_default_from_the_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping, which would split hyphenated words
    shown = " ".join(build_parser().format_help().split())  # an option's help may start on the next line
    for declared in SETTINGS:
        assert "default:" not in declared.help, f"{declared.cli}: a default written by hand in its help"
        entry = f"{declared.usage} {' '.join(declared.help.split())}"
        assert entry in shown, entry
        rest = shown[shown.index(entry) + len(entry) :]
        if declared.shown_default and not declared.is_flag:
            assert rest.startswith(
                (f" (default: {declared.shown_default})", f" (repeatable; default: {declared.shown_default})")
            ), declared.cli
        else:
            assert not rest.startswith((" (default", " (repeatable; default")), declared.cli


def test_help_follows_a_changed_default() -> None:
    backlog = setting_named("backlog")
    assert "default: 1024)" in backlog.help_text()
    assert "default: 77)" in dataclasses.replace(backlog, default=77).help_text()
    size = setting_named("max_body_size")
    assert "default: 3 MiB)" in dataclasses.replace(size, default=3 << 20).help_text()


def test_every_setting_has_its_own_names() -> None:
    for declared in SETTINGS:
        assert declared.toml_key == declared.name
        assert declared.env_name == "GATEWAY_" + declared.name.upper()
        assert declared.cli.removeprefix("--") == declared.name.replace("_", "-")
    assert len({declared.env_name for declared in SETTINGS}) == len(SETTINGS)
    # The options that say where settings come from (--config, --ini...) are the parser's only others.
    parser_dests = {action.dest for action in build_parser()._actions} - {"help", "version", *META_OPTIONS}
    assert parser_dests == {declared.name for declared in SETTINGS}


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--backlog", "0"], ["--backlog 0", "must be a positive number"]),
        (["--backlog", "many"], ["--backlog 'many'", "an integer"]),
        (["--workers", "0"], ["--workers '0'", "MIN:MAX"]),
        (["--workers", "4:2"], ["--workers 4:2", "MAX must not be below MIN"]),
        (["--sessions", "redis://x"], ["--sessions 'redis://x'", "memory, memcached://HOST:PORT or off"]),
        (["--log-level", "loud"], ["--log-level 'loud'", "debug, info, warning, error"]),
        (["--script-name", "app/"], ["--script-name 'app/'", "must start with '/'"]),
        (["--max-params-size", "0"], ["--max-params-size 0", "within 1-16777216 bytes"]),
        (["--session-ttl", "0"], ["--session-ttl 0", "positive number of seconds"]),
        (["--timeout", "-1"], ["--timeout -1", "must not be negative"]),
        (["--socket-mode", "9"], ["--socket-mode '9'", "octal"]),
        (["--allow-from", "10.0.0.0/8,nope"], ["--allow-from", "'nope'", "IP address or network"]),
        (["--fcgi", "9000"], ["--fcgi", "listen address '9000'", "HOST:PORT"]),
        (["no_colon"], ["application 'no_colon'", "MODULE:CALLABLE"]),
        (["--session-samesite", "None", "--session-secure", "never"], ["--session-samesite None", "Secure"]),
    ],
)
def test_a_bad_value_names_the_option_and_what_is_allowed(argv: list[str], fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(["--fcgi", ":9000", *argv])
    for fragment in fragments:
        assert fragment in str(raised.value)


def test_config_holds_every_reader_to_the_same_checks() -> None:
    with pytest.raises(ConfigError, match="--queue-size 0: must be a positive number"):
        Config(queue_size=0)
    with pytest.raises(ConfigError, match="--session-pool-size 0: must be at least 1"):
        parse_value("session_pool_size", 0)


def test_a_bad_option_exits_with_the_config_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--fcgi", ":9000", "--max-connections", "0"]) == EXIT_CONFIG
    assert "gateway: error: --max-connections 0: must be a positive number" in capsys.readouterr().err


def test_nothing_to_listen_on_is_refused_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    with pytest.raises(ConfigError, match="nothing to listen on"):
        build_config(["app:wsgi"])
    assert config_from({}, environ={"LISTEN_FDS": "2"}).listeners == ()


def test_parse_value_reads_environment_text() -> None:
    assert parse_value("fcgi", ":9000 unix:/run/app.sock") == (
        Address(host="127.0.0.1", port=9000),
        Address(path="/run/app.sock"),
    )
    assert parse_value("allow_from", "10.0.0.0/8,::1 192.0.2.1") == parse_value(
        "allow_from", ["10.0.0.0/8", "::1", "192.0.2.1"]
    )
    assert [parse_value("debug", text) for text in ("1", "yes", "ON", "0", "false", "off")] == [True] * 3 + [False] * 3
    assert parse_value("workers", "2:8") == (2, 8)
    assert parse_value("socket_mode", "660") == 0o660
    assert parse_value("session_ttl", "1.5") == 1.5
    with pytest.raises(ConfigError, match="--debug 'maybe' is not a switch"):
        parse_value("debug", "maybe")
    with pytest.raises(ConfigError, match="--backlog 0: must be a positive number"):
        parse_value("backlog", "0")


def test_parse_value_checks_a_toml_value_type() -> None:
    assert parse_value("backlog", 2048) == 2048
    ttl = parse_value("session_ttl", 60)
    assert ttl == 60.0 and isinstance(ttl, float)
    assert parse_value("workers", 4) == (4, 4)
    assert parse_value("reload", True) is True
    for name, value in [("backlog", True), ("backlog", 1.5), ("debug", 1), ("socket_mode", 660), ("log_level", 3)]:
        with pytest.raises(ConfigError, match=f"{setting_named(name).cli} {value!r} is not"):
            parse_value(name, value)
    with pytest.raises(ConfigError, match="--allow-from: every item of the list must be text"):
        parse_value("allow_from", ["10.0.0.0/8", 7])
    with pytest.raises(ConfigError, match="unknown setting 'no_such_option'"):
        parse_value("no_such_option", "1")


def test_config_from_spreads_a_setting_over_its_fields() -> None:
    config = config_from({"uwsgi": parse_value("uwsgi", ":9001"), "workers": parse_value("workers", "2:8")})
    assert (config.workers, config.workers_max) == (2, 8)
    assert [(listen.protocol, str(listen.address)) for listen in config.listeners] == [("uwsgi", "127.0.0.1:9001")]


def test_readme_options_tables_are_generated() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count("<!-- options:start") == readme.count("<!-- options:end -->") == 3
    assert options_table.render(readme) == readme, "README.md is stale: run python -m devstack.options_table --write"


def test_the_readme_check_fails_on_a_stale_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines() if line.startswith("| `--backlog"))
    stale = tmp_path / "README.md"
    stale.write_text(readme.replace(row, "| `--backlog N` | `100` | listen backlog |"), encoding="utf-8")
    monkeypatch.setattr(options_table, "README", stale)
    assert options_table.main(["--check"]) == 1
    assert "-| `--backlog N` | `100` | listen backlog |" in capsys.readouterr().out
    assert options_table.main(["--write"]) == 0
    assert stale.read_text(encoding="utf-8") == readme
    assert options_table.main(["--check"]) == 0


async def test_the_codecs_take_every_limit_from_config() -> None:
    # Values no codec uses as a default, so a limit the fronts forgot to pass would show.
    config = Config(max_params_size=4099, max_params=1009, max_body_size=(1 << 29) + 3, max_requests_per_connection=61)
    config = dataclasses.replace(config, max_connections=7919)
    dispatcher = FakeDispatcher()  # building a connection's codec never dispatches (a real type: compiled, checked)
    fastcgi = FrontContext(config=config, dispatcher=dispatcher, spool_dir="/tmp", label="test")
    FastCGIConnection(fastcgi)
    limits = dataclasses.asdict(cast(Any, fastcgi.codec_limits))
    assert limits == {name: getattr(config, name) for name in limits}
    uwsgi = FrontContext(config=config, dispatcher=dispatcher, spool_dir="/tmp", label="test")
    UwsgiConnection(uwsgi)
    assert dataclasses.asdict(cast(Any, uwsgi.codec_limits)) == {
        "max_vars_size": config.max_params_size,
        "max_vars": config.max_params,
        "max_body_size": config.max_body_size,
    }
