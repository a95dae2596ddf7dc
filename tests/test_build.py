"""The compiled codecs: each pass of ``make test`` runs the build it says, and edits after a build are caught."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import ModuleType

import pytest

import gateway.compiled
import gateway.protocols
from gateway.config.cli import build_parser
from gateway.master import server

ROOT = Path(__file__).resolve().parent.parent


def _load_build_script() -> ModuleType:
    """setup.py as a module: it only builds when run as __main__ (by setuptools or `python setup.py`)."""
    spec = importlib.util.spec_from_file_location("build_script", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup = _load_build_script()

EXTENSION = EXTENSION_SUFFIXES[0]


def test_every_codec_module_runs_the_build_of_this_pass(pytestconfig: pytest.Config) -> None:
    interpreted = pytestconfig.pluginmanager.has_plugin("tests.pure_python")
    if not interpreted and not gateway.protocols.compiled() and os.environ.get("CI") != "true":
        pytest.skip("the codecs are not built here (`make build`); CI refuses to run without them")
    names = [module.removesuffix(".py").replace("/", ".") for module in setup.compiled_modules()]
    assert "gateway.protocols.fastcgi.server" in names and "gateway.protocols.uwsgi.codec" in names
    for name in names:
        module_file = importlib.import_module(name).__file__ or ""
        assert module_file.endswith(".py") == interpreted, f"{name} loaded from {module_file}"


def test_the_worker_hot_path_runs_the_build_of_this_pass(pytestconfig: pytest.Config) -> None:
    interpreted = pytestconfig.pluginmanager.has_plugin("tests.pure_python")
    if not interpreted and not gateway.compiled.compiled() and os.environ.get("CI") != "true":
        pytest.skip("the worker's hot path is not built here (`make build`); CI refuses to run without it")
    assert setup.hot_modules() == list(gateway.compiled.HOT_MODULES)
    for name in gateway.compiled.HOT_MODULE_NAMES:
        module_file = importlib.import_module(name).__file__ or ""
        assert module_file.endswith(".py") == interpreted, f"{name} loaded from {module_file}"


def test_the_makefile_rebuilds_when_a_hot_path_module_changes() -> None:
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")  # continuation lines joined
    line = next(line for line in makefile.splitlines() if line.startswith("HOT_SOURCES :="))
    assert line.split(":=", 1)[1].split() == list(gateway.compiled.HOT_MODULES)


def test_hot_path_stale_sources_names_modules_edited_after_their_build(tmp_path: Path) -> None:
    for number, module in enumerate(gateway.compiled.HOT_MODULES):
        source = tmp_path / module
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("")
        built = source.with_name(source.name.removesuffix(".py") + EXTENSION)
        built.write_bytes(b"")
        source_time, build_time = (300, 200) if number == 1 else (100, 200)
        os.utime(source, (source_time, source_time))
        os.utime(built, (build_time, build_time))
    assert gateway.compiled.compiled(tmp_path)
    assert gateway.compiled.stale_sources(tmp_path) == []  # no setup.py: not a checkout
    (tmp_path / "setup.py").write_text("")
    assert gateway.compiled.stale_sources(tmp_path) == [gateway.compiled.HOT_MODULES[1]]
    built.unlink()
    assert not gateway.compiled.compiled(tmp_path)


def test_stale_sources_names_codecs_edited_after_their_build_in_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "protocols"
    (package / "uwsgi").mkdir(parents=True)
    for name, source_time, build_time in [("cgi", 100, 200), ("uwsgi/codec", 300, 200), ("errors", 100, None)]:
        source = package / f"{name}.py"
        source.write_text("")
        os.utime(source, (source_time, source_time))
        if build_time is not None:
            extension = package / f"{name}{EXTENSION}"
            extension.write_bytes(b"")
            os.utime(extension, (build_time, build_time))
    monkeypatch.setattr(gateway.protocols, "_ROOT", package)
    assert gateway.protocols.stale_sources() == []  # installed: no checkout around the package, file times mean nothing
    (tmp_path / "setup.py").write_text("")
    assert gateway.protocols.stale_sources() == ["protocols/uwsgi/codec.py"]


def test_startup_says_when_codecs_run_interpreted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(gateway.protocols, "compiled", lambda: False)
    with caplog.at_level(logging.INFO, logger="gateway.server"):
        server.log_codec_build()
    assert "protocol codecs run interpreted" in caplog.text and "apt-get install gcc python3-dev" in caplog.text


def test_startup_names_stale_codec_sources(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(gateway.protocols, "compiled", lambda: True)
    monkeypatch.setattr(gateway.protocols, "stale_sources", lambda: ["protocols/cgi.py"])
    with caplog.at_level(logging.INFO, logger="gateway.server"):
        server.log_codec_build()
    assert "protocols/cgi.py changed after it was compiled" in caplog.text
    assert "make build" in caplog.text


def test_build_falls_back_to_interpreted_codecs_without_a_compiler(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    assert setup.missing_build_tools() == "no C compiler (/nonexistent/cc)"
    assert setup.extensions() == []
    assert "installed interpreted, not compiled: no C compiler" in capsys.readouterr().err


def test_build_compiles_every_codec_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    modules = setup.compiled_modules()
    assert "gateway/protocols/fastcgi/server.py" in modules and "gateway/protocols/uwsgi/codec.py" in modules
    assert not any(module.endswith("__init__.py") for module in modules)
    monkeypatch.setenv("GATEWAY_PURE_PYTHON", "1")
    assert setup.extensions() == []


def test_version_says_how_the_codecs_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    expected = "compiled" if gateway.protocols.compiled() else "interpreted"
    assert f"(protocol codecs {expected})" in capsys.readouterr().out
