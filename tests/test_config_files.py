"""``--config`` (TOML), ``GATEWAY_*`` variables, ``--ini`` (uWSGI) and ``--print-config``: every file format gives the
same Config as the equivalent command line, layers override in order, and bad files say where and what.

In-process through ``gateway.config.cli.load`` (the real parser and readers); the CLI's own output through a real
``python -m gateway`` subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from devstack.nginx import Location, Nginx, Upstream
from devstack.ports import free_port
from devstack.processes import GatewayProcess
from gateway.config.cli import load
from gateway.config.errors import ConfigError
from gateway.config.settings import SETTINGS, Config
from gateway.config.sources import render_toml
from gateway.config.uwsgi_ini import UWSGI_OPTIONS, Maps, Part
from tests.http import request

ROOT = Path(__file__).resolve().parent.parent
#: Lets a Config be built without a listener (config_from's rule for systemd's sockets), so each row stays small.
ACTIVATED = {"LISTEN_FDS": "1"}

#: One row per mapped uWSGI option: (ini lines, the same as command-line arguments, the same as TOML lines).
ROWS: list[tuple[str, list[str], str]] = [
    ("socket = 127.0.0.1:3031", ["--uwsgi", "127.0.0.1:3031"], 'uwsgi = ["127.0.0.1:3031"]'),
    ("uwsgi-socket = /tmp/gw-u.sock", ["--uwsgi", "unix:/tmp/gw-u.sock"], 'uwsgi = ["unix:/tmp/gw-u.sock"]'),
    (
        "fastcgi-socket = :9000\nfastcgi-socket = 127.0.0.2:9001",
        ["--fcgi", ":9000", "--fcgi", "127.0.0.2:9001"],
        'fcgi = [":9000", "127.0.0.2:9001"]',
    ),
    ("processes = 3", ["--workers", "3"], "workers = 3"),
    ("workers = 5\ncheaper = 2", ["--workers", "2:5"], 'workers = "2:5"'),
    ("harakiri = 20", ["--timeout", "20"], "timeout = 20"),
    ("max-requests = 100", ["--max-requests", "100"], "max_requests = 100"),
    ("max-requests-delta = 10", ["--max-requests-jitter", "10"], "max_requests_jitter = 10"),
    ("reload-on-rss = 256", ["--max-rss", "256"], "max_rss = 256"),
    ("listen = 4096", ["--backlog", "4096"], "backlog = 4096"),
    ("chmod-socket = 660", ["--socket-mode", "660"], 'socket_mode = "660"'),
    ("uid = www-data\ngid = www-data", ["--user", "www-data", "--group", "www-data"],
     'user = "www-data"\ngroup = "www-data"'),
    ("pidfile = /tmp/gw.pid", ["--pidfile", "/tmp/gw.pid"], 'pidfile = "/tmp/gw.pid"'),
    ("module = tests.apps:app", ["tests.apps:app"], 'app = "tests.apps:app"'),
    ("wsgi = tests.apps\ncallable = app", ["tests.apps:app"], 'app = "tests.apps:app"'),
    ("wsgi-file = tests/apps.py\ncallable = app", ["--pythonpath", "tests", "apps:app"],
     'pythonpath = ["tests"]\napp = "apps:app"'),
    ("mount = /app=tests.apps:app", ["--script-name", "/app", "tests.apps:app"],
     'script_name = "/app"\napp = "tests.apps:app"'),
    (
        'logformat = %(addr) [%(ltime)] "%(method) %(uri) %(proto)" %(status) %(size) %(msecs)',
        ["--access-log-format", '%(addr) [%(ltime)] "%(method) %(uri) %(proto)" %(status) %(size) %(msecs)'],
        'access_log_format = "%(addr) [%(ltime)] \\"%(method) %(uri) %(proto)\\" %(status) %(size) %(msecs)"',
    ),
    (
        "subscribe2 = server=127.0.0.1:2626,key=foo.com",
        ["--subscribe", "127.0.0.1:2626=foo.com"],
        'subscribe = ["127.0.0.1:2626=foo.com"]',
    ),
    ("subscribe-to = 127.0.0.1:2626:foo.com", ["--subscribe", "127.0.0.1:2626=foo.com"],
     'subscribe = ["127.0.0.1:2626=foo.com"]'),
    ("threads = 4", ["--threads", "4"], "threads = 4"),
    ("http = 127.0.0.1:8001", ["--http", "127.0.0.1:8001"], 'http = ["127.0.0.1:8001"]'),
    ("subscribe-freq = 5", ["--subscribe-interval", "5"], "subscribe_interval = 5"),
    ("http-socket = 127.0.0.1:8000", ["--http", "127.0.0.1:8000"], 'http = ["127.0.0.1:8000"]'),
    ("stats = 127.0.0.1:1717", ["--stats", "127.0.0.1:1717"], 'stats = "127.0.0.1:1717"'),
    ("reuse-port = true", ["--reuse-port"], "reuse_port = true"),
    ("buffer-size = 32768", ["--max-params-size", "32768"], "max_params_size = 32768"),
    ("limit-post = 1048576", ["--max-body-size", "1048576"], "max_body_size = 1048576"),
    ("reload-mercy = 15", ["--graceful-timeout", "15"], "graceful_timeout = 15"),
    ("worker-reload-mercy = 12", ["--graceful-timeout", "12"], "graceful_timeout = 12.0"),
    ("py-autoreload = 2", ["--reload"], "reload = true"),
    ("chdir = /tmp", ["--chdir", "/tmp"], 'chdir = "/tmp"'),
    ("pythonpath = /tmp\npythonpath = /usr", ["--pythonpath", "/tmp", "--pythonpath", "/usr"],
     'pythonpath = ["/tmp", "/usr"]'),
]  # fmt: skip


def _from_ini(tmp_path: Path, text: str, *extra: str) -> Config:
    path = tmp_path / "app.ini"
    path.write_text(f"[uwsgi]\n{text}\n")
    return load(["--ini", str(path), *extra], environ=ACTIVATED).config


def _from_toml(tmp_path: Path, text: str, *extra: str) -> Config:
    path = tmp_path / "gateway.toml"
    path.write_text(text + "\n")
    return load(["--config", str(path), *extra], environ=ACTIVATED).config


@pytest.mark.parametrize(("ini", "argv", "toml"), ROWS, ids=[row[0].split(" ")[0] for row in ROWS])
def test_ini_and_toml_give_the_command_lines_config(tmp_path: Path, ini: str, argv: list[str], toml: str) -> None:
    expected = load(argv, environ=ACTIVATED).config
    assert expected != Config(), "the row must change something, or it proves nothing"
    # An ini is a uWSGI instance, whose default (no lazy-apps) imports the app once: test_an_ini_preloads_...
    assert _from_ini(tmp_path, ini) == replace(expected, preload=True)
    assert _from_toml(tmp_path, toml) == expected


@pytest.mark.parametrize(
    ("lines", "preload"),
    [
        ("", True),
        ("lazy-apps = true", False),
        ("lazy-apps = 1", False),
        ("lazy = 1", False),
        ("lazy-apps = false", True),
    ],
)
def test_an_ini_preloads_unless_it_says_lazy_apps(tmp_path: Path, lines: str, preload: bool) -> None:
    """uWSGI imports the app once and forks its workers unless ``lazy-apps`` (or the older ``lazy``) is on: the
    ini's workers share the app as they did under uWSGI."""
    path = tmp_path / "app.ini"
    path.write_text(f"[uwsgi]\nsocket = :3031\n{lines}\n")
    loaded = load(["--ini", str(path)], environ=ACTIVATED)
    assert loaded.config.preload is preload
    key = lines.partition(" ")[0]
    where = f"{path}, line 3 ({key})" if lines else f"{path} (no lazy-apps: uWSGI imports the app once"
    assert str(loaded.origins["preload"]).startswith(f"ini {where}")


def test_lazy_apps_must_be_a_switch_and_later_layers_still_decide(tmp_path: Path) -> None:
    path = tmp_path / "app.ini"
    path.write_text("[uwsgi]\nsocket = :3031\nlazy-apps = sometimes\n")
    with pytest.raises(ConfigError) as raised:
        load(["--ini", str(path)], environ=ACTIVATED)
    assert str(raised.value) == (
        f"{path}, line 3 (lazy-apps): 'sometimes' is not a switch (1, true, yes, on, or 0, false, no, off)"
    )
    path.write_text("[uwsgi]\nsocket = :3031\n")
    (tmp_path / "gw.toml").write_text("preload = false\n")
    config = load(["--ini", str(path), "--config", str(tmp_path / "gw.toml")], environ=ACTIVATED).config
    assert config.preload is False


def test_the_table_covers_every_mapped_uwsgi_option() -> None:
    names = {declared.name for declared in SETTINGS}
    mapped = {key for key, meaning in UWSGI_OPTIONS.items() if isinstance(meaning, Part)}
    mapped |= {key for key, meaning in UWSGI_OPTIONS.items() if isinstance(meaning, Maps) and meaning.target in names}
    covered = {line.split("=")[0].strip() for ini, _, _ in ROWS for line in ini.splitlines()}
    covered |= {"lazy-apps", "lazy"}  # test_an_ini_preloads_unless_it_says_lazy_apps: every ini has an answer
    assert mapped - covered == set()


def test_every_setting_reads_from_toml_by_its_cli_name(tmp_path: Path) -> None:
    """Each setting's example, written under its CLI name (dashes) as TOML text, is what the CLI reads."""
    for declared in SETTINGS:
        if declared.positional:
            continue
        value = "true" if declared.is_flag else repr(declared.example).replace("'", '"')
        if declared.repeatable:
            value = f"[{value}]"
        toml = f"{declared.cli.removeprefix('--')} = {value}"
        argv = [declared.cli] if declared.is_flag else [declared.cli, declared.example]
        assert _from_toml(tmp_path, toml) == load(argv, environ=ACTIVATED).config, declared.cli


def test_layers_file_then_environment_then_command_line(tmp_path: Path) -> None:
    (tmp_path / "gw.toml").write_text('fcgi = [":9000"]\nbacklog = 100\nmax_requests = 5\ntimeout = 7\n')
    environ = {"GATEWAY_BACKLOG": "200", "GATEWAY_MAX_REQUESTS": "6"}
    loaded = load(["--config", str(tmp_path / "gw.toml"), "--max-requests", "9"], environ=environ)
    config = loaded.config
    assert (config.timeout, config.backlog, config.max_requests) == (7.0, 200, 9)
    assert str(loaded.origins["timeout"]) == f"file {tmp_path / 'gw.toml'}, line 4"
    assert str(loaded.origins["backlog"]) == "environment GATEWAY_BACKLOG"
    assert str(loaded.origins["max_requests"]) == "command line"


def test_ini_then_toml(tmp_path: Path) -> None:
    (tmp_path / "app.ini").write_text("[uwsgi]\nsocket = :3031\nprocesses = 2\nharakiri = 30\n")
    (tmp_path / "gw.toml").write_text("workers = 4\n")
    config = load(["--ini", str(tmp_path / "app.ini"), "--config", str(tmp_path / "gw.toml")], environ={}).config
    assert (config.workers, config.timeout) == (4, 30.0)


def test_an_environment_variable_close_to_a_setting_is_reported_not_guessed() -> None:
    loaded = load(["--fcgi", ":9000"], environ={"GATEWAY_WORKRES": "3", "GATEWAY_PURE_PYTHON": "1"})
    assert loaded.config.workers == Config().workers
    hint = "environment variable GATEWAY_WORKRES is no setting; did you mean 'GATEWAY_WORKERS'? (ignored)"
    assert loaded.notes == [("warning", hint)]


def test_print_config_reads_back_as_the_same_config(tmp_path: Path) -> None:
    argv = ["--fcgi", ":9000", "--uwsgi", "unix:/tmp/x.sock", "--workers", "2:6", "--socket-mode", "660",
            "--static", f"/static={tmp_path}", "--debug", "--timeout", "2.5", "--access-log-format", 'a "b" \\ c',
            "tests.apps:app"]  # fmt: skip
    loaded = load(argv, environ={})
    text = render_toml(loaded.config, loaded.origins)
    assert 'workers = "2:6"  # command line' in text
    assert "backlog = 1024  # default" in text
    assert "# pidfile: unset  # default" in text
    (tmp_path / "printed.toml").write_text(text)
    assert load(["--config", str(tmp_path / "printed.toml")], environ={}).config == loaded.config


def test_print_config_on_the_issues_ini_shows_the_toml_equivalent(tmp_path: Path) -> None:
    """The issue's ini, as a user has it, through the real CLI: TOML out, with warnings for what is not here yet."""
    ini = tmp_path / "uwsgi.ini"
    ini.write_text(ISSUE_INI)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--ini", str(ini), "--print-config"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f'uwsgi = ["127.0.0.1:0"]  # ini {ini}, line 7 (socket)' in out
    assert f'app = "app:application"  # ini {ini}, line 9 (wsgi)' in out
    assert "workers = 2  # ini" in out
    assert "timeout = 10.0  # ini" in out and "max_requests = 100  # ini" in out
    assert 'access_log_format = "%(addr) - %(user) [%(ltime)] \\"%(method) %(uri) %(proto)\\" %(status)' in out
    assert f"threads = 4  # ini {ini}, line 6 (threads)" in out
    assert f'subscribe = ["127.0.0.1:2626=foo.com"]  # ini {ini}, line 8 (subscribe2)' in out
    assert f"# info: {ini}, line 3: master: not needed here" in out
    # What was printed is a config file the gateway reads back.
    (tmp_path / "converted.toml").write_text(out)
    load(["--config", str(tmp_path / "converted.toml")], environ={})


ISSUE_INI = """[uwsgi]
plugins = python
master = true
processes = 2
heartbeat = 10
threads = 4
socket = 127.0.0.1:0
subscribe2 = server=127.0.0.1:2626,key=foo.com
wsgi = app
vacuum = true
harakiri = 10
max-requests = 100
logformat = %(addr) - %(user) [%(ltime)] "%(method) %(uri) %(proto)" %(status) %(size) "%(referer)" "%(uagent)"
"""


def test_ini_rules_placeholders_sections_and_repeats(tmp_path: Path) -> None:
    ini = tmp_path / "site.ini"
    ini.write_text(
        "; a comment\n# another\n[other]\nprocesses = 9\n[uwsgi]\nbase = /tmp/gw-%n\n"
        "socket = %(base).sock\nsocket = $(GW_TEST_ADDR)\nprocesses = %k\nunknown-thing = 1\n"
        "logformat = %(addr) %(notanoption)\n"
    )
    refused = r"\(logformat\): --access-log-format '%\(addr\) %\(notanoption\)': is not a log"
    with pytest.raises(ConfigError, match=refused):
        load(["--ini", str(ini)], environ={"GW_TEST_ADDR": "127.0.0.1:3999"})
    ini.write_text(ini.read_text().replace(" %(notanoption)", ""))
    loaded = load(["--ini", str(ini)], environ={"GW_TEST_ADDR": "127.0.0.1:3999"})
    assert [str(a) for a in loaded.config.uwsgi] == ["unix:/tmp/gw-site.sock", "127.0.0.1:3999"]
    assert loaded.config.workers == (os.cpu_count() or 1)
    assert any(note.startswith(f"{ini}, line 6: base: unknown uWSGI option") for _, note in loaded.notes)
    assert any("unknown-thing: unknown uWSGI option" in note for _, note in loaded.notes)
    other = load(["--ini", f"{ini}:other", "--fcgi", ":9000"], environ={})
    assert other.config.workers == 9


def test_strict_ini_makes_every_warning_one_error(tmp_path: Path) -> None:
    ini = tmp_path / "uwsgi.ini"
    ini.write_text(ISSUE_INI + "procesess = 3\ndaemonize = /var/log/x\n")
    with pytest.raises(ConfigError) as raised:
        load(["--ini", str(ini), "--strict-ini"], environ={})
    message = str(raised.value)
    assert message.startswith("--strict-ini: ")
    assert "threads" not in message  # mapped now: --threads
    assert "procesess: unknown uWSGI option; did you mean 'processes'?" in message
    assert "daemonize: not done here: never daemonize" in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("backlog = 100\nworkrs = 3\n", "gateway.toml, line 2: unknown option 'workrs'; did you mean 'workers'?"),
        ("backlog = 0\n", "gateway.toml, line 1: backlog: --backlog 0: must be a positive number"),
        ('backlog = "many"\n', "gateway.toml, line 1: backlog: --backlog 'many' is not an integer"),
        ("debug = 1\n", "gateway.toml, line 1: debug: --debug 1 is not true or false"),
        ('log-level = "loud"\n', "gateway.toml, line 1: log-level: --log-level 'loud' is not one of debug, info"),
        ("fcgi = [9000]\n", "gateway.toml, line 1: fcgi: --fcgi: every item of the list must be text"),
        ("[server]\nport = 1\n", "gateway.toml, line 1: server is a table"),
        ("backlog = = 3\n", "gateway.toml: not valid TOML: Invalid value (at line 1, column 11)"),
    ],
)
def test_a_bad_file_names_file_line_option_and_what_is_allowed(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "gateway.toml").write_text(text)
    with pytest.raises(ConfigError) as raised:
        load(["--config", str(tmp_path / "gateway.toml"), "--fcgi", ":9000"], environ={})
    assert str(raised.value).startswith(f"{tmp_path}/{message}")


def test_a_bad_file_is_one_error_line_and_exit_status_2(tmp_path: Path) -> None:
    (tmp_path / "gw.toml").write_text('fcgi = [":9000"]\nmax_body_sise = 10\n')
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(tmp_path / "gw.toml")],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        f"gateway: error: {tmp_path}/gw.toml, line 2: unknown option 'max_body_sise'; did you mean 'max_body_size'?\n"
    )


def test_the_issues_ini_starts_a_gateway_that_serves_through_nginx(tmp_path: Path) -> None:
    """The ini as users keep it (only its port 0 made a known free port, for nginx to point at): ``wsgi = app``
    imports ``app.py`` from the directory the gateway runs in, once, as uWSGI does without ``lazy-apps``, and
    nginx reaches it over uwsgi."""
    port = free_port()
    (tmp_path / "uwsgi.ini").write_text(ISSUE_INI.replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    (tmp_path / "app.py").write_text(
        "import os\n"
        "IMPORTED_BY = os.getpid()\n"
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [f'served from the ini {IMPORTED_BY} {os.getpid()}'.encode()]\n"
    )
    gateway = GatewayProcess(tmp_path / "gw", ["--ini", str(tmp_path / "uwsgi.ini")], cwd=tmp_path).start()
    nginx = Nginx(tmp_path / "nginx", free_port(), upstreams=[Upstream("ini", f"127.0.0.1:{port}")],
                  locations=[Location("/", "ini", "uwsgi")])  # fmt: skip
    try:
        nginx.start()
        reply = request(nginx.url, "GET", "/")
        prefix, imported_by, served_by = reply.body.decode().rsplit(" ", 2)
        assert (reply.status, prefix) == (200, "served from the ini")
        assert imported_by != served_by, "the worker imported the app itself: the ini did not preload"
    finally:
        nginx.stop()
        gateway.stop()
    log = gateway.log.read_text()
    assert "not supported yet" not in log  # threads and subscribe2 both mapped
    assert "2 workers serving app:application" in log


def test_the_readme_table_names_every_uwsgi_option_the_table_knows() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| uWSGI (`--ini`) |") :]
    table = table[: table.index("\n\n")]
    assert [key for key in UWSGI_OPTIONS if f"`{key}`" not in table] == []
