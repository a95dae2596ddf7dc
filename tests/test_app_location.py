"""Where the app lives: a gateway started from a project directory outside the checkout, ``--chdir`` and
``--pythonpath``, a clear message when the app is not found, and a project whose own packages are called
``sessions`` and ``protocols`` (names our subpackages carry under ``gateway``, never at the top level)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import gateway.protocols
from devstack.ports import free_port
from devstack.processes import GatewayProcess
from gateway.contract.exits import EXIT_APP_LOAD, EXIT_CONFIG
from tests.load import uwsgi_get

ROOT = Path(__file__).resolve().parent.parent

#: What a user's shell has: no PYTHONPATH pointing into our checkout.
USER_ENV = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}

WSGI = """
import helper
import protocols.feed
import sessions.models


def application(environ, start_response):
    environ["gateway.session"]["seen"] = True  # our sessions run beside the project's own `sessions` package
    body = " ".join([sessions.models.NAME, protocols.feed.NAME, helper.NAME, environ["PATH_INFO"]]).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """``tmp/site``: a project with ``mysite/wsgi.py`` and packages of its own named ``sessions`` and
    ``protocols``; ``tmp/lib/helper.py`` is a module it imports from elsewhere (``--pythonpath``)."""
    site = tmp_path / "site"
    files = {
        "mysite/__init__.py": "",
        "mysite/wsgi.py": WSGI,
        "sessions/__init__.py": "",
        "sessions/models.py": 'NAME = "project-sessions"\n',
        "protocols/__init__.py": "",
        "protocols/feed.py": 'NAME = "project-protocols"\n',
    }
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helper.py").write_text('NAME = "helper"\n')
    return site


def _serve(scratch: Path, cwd: Path, *args: str) -> tuple[GatewayProcess, int]:
    port = free_port()
    process = GatewayProcess(scratch, ["--uwsgi", f"127.0.0.1:{port}", "--workers", "1", *args], env=USER_ENV, cwd=cwd)
    return process.start(), port


def test_started_from_the_project_directory_outside_the_checkout(project: Path, tmp_path: Path) -> None:
    assert ROOT not in project.parents
    running, port = _serve(tmp_path / "run", project, "--pythonpath", "../lib", "mysite.wsgi:application")
    try:
        status, headers, body = uwsgi_get(port, "/page")
    finally:
        running.stop()
    assert (status, body) == (200, b"project-sessions project-protocols helper /page")
    assert "gwsession=" in headers.get("Set-Cookie", "")
    # The compiled codecs load from here as well as from the checkout (their shared library is inside `gateway`).
    interpreted = "protocol codecs run interpreted" in running.log_text()
    assert interpreted == (not gateway.protocols.compiled()), running.log_text()


def test_chdir_names_the_project_from_anywhere(project: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lib = tmp_path / "lib"
    running, port = _serve(
        tmp_path / "run", elsewhere, "--chdir", str(project), "--pythonpath", str(lib), "mysite.wsgi:application"
    )
    try:
        status, _, body = uwsgi_get(port, "/")
    finally:
        running.stop()
    assert (status, body) == (200, b"project-sessions project-protocols helper /")


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway", "--uwsgi", f"127.0.0.1:{free_port()}", "--workers", "1", *args]
    return subprocess.run(command, cwd=cwd, env=USER_ENV, capture_output=True, text=True, timeout=60)


def test_an_app_not_found_says_where_it_was_looked_for(project: Path, tmp_path: Path) -> None:
    result = _run(tmp_path, "mysite.wsgi:application")  # one directory too high, and no --pythonpath
    assert result.returncode == EXIT_APP_LOAD
    assert "No module named 'mysite'" in result.stderr
    assert f"looked up from {tmp_path}" in result.stderr and "--chdir DIR" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ("--chdir", "--chdir 'missing': No such file or directory"),
        ("--pythonpath", "--pythonpath 'missing': no such directory"),
    ],
)
def test_a_missing_directory_is_a_configuration_error(tmp_path: Path, option: str, expected: str) -> None:
    result = _run(tmp_path, option, "missing", "mysite.wsgi:application")
    assert result.returncode == EXIT_CONFIG
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_reload_leaves_out_the_virtualenvs_kept_inside_the_project(tmp_path: Path) -> None:
    # What --reload hands watchfiles as paths to ignore: a pip install into the project's venv reloads nothing.
    from gateway.master.server import virtualenvs_under

    for venv in ("env", "tools/venv", "a/b/c/too-deep"):
        (tmp_path / venv).mkdir(parents=True)
        (tmp_path / venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "env" / "inner").mkdir()
    (tmp_path / "env" / "inner" / "pyvenv.cfg").write_text("")  # inside a venv already left out
    (tmp_path / "mysite").mkdir()
    assert virtualenvs_under([str(tmp_path)]) == [str(tmp_path / "env"), str(tmp_path / "tools" / "venv")]
