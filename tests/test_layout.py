"""The layout along the process boundary holds: the master never loads the worker side, the worker never loads the
event loop's, and development tooling is not part of the installed package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _all_modules_loaded_by(statement: str) -> set[str]:
    """Every module a fresh interpreter holds after ``statement`` (run from the checkout)."""
    probe = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(output.stdout))


def _modules_loaded_by(statement: str) -> set[str]:
    """The project's modules a fresh interpreter holds after ``statement``."""
    return {name for name in _all_modules_loaded_by(statement) if name.split(".")[0] in ("gateway", "devstack")}


def test_the_master_never_loads_worker_or_wsgi_code() -> None:
    # What `python -m gateway` imports before it runs anything: the CLI and, through it, the whole master.
    loaded = _modules_loaded_by("import gateway.config.cli")
    assert {"gateway.master.server", "gateway.master.supervisor", "gateway.loop.dispatch"} <= loaded  # the probe works
    assert not {name for name in loaded if name.startswith(("gateway.worker", "devstack"))}


def test_a_master_loads_the_http_front_and_static_files_only_when_it_serves_them() -> None:
    # Each is memory in every master (the HTTP parser, MIME tables, HTTP dates): only a listener or --static needing
    # it imports it.
    serving = "import gateway.config.cli\nfrom gateway.loop.listeners import connection_class\n"
    loaded = _modules_loaded_by(serving + "connection_class('fastcgi'), connection_class('uwsgi')")
    assert {"gateway.loop.fastcgi_front", "gateway.loop.uwsgi_front", "gateway.loop.tls"} <= loaded
    assert not loaded & {"gateway.loop.http_front", "gateway.protocols.http", "gateway.loop.static"}
    with_http = _modules_loaded_by(serving + "connection_class('http')")
    assert {"gateway.loop.http_front", "gateway.protocols.http"} <= with_http


def test_a_worker_never_loads_the_event_loop_side() -> None:
    loaded = _modules_loaded_by("import gateway.worker.process")
    assert {"gateway.worker.wsgi", "gateway.contract.channel"} <= loaded
    assert not {name for name in loaded if name.startswith(("gateway.loop", "gateway.master", "gateway.config"))}


def test_a_worker_and_the_preload_template_never_load_asyncio_or_the_session_stores() -> None:
    # They run no event loop: the stores (asyncio, aiomcache) are the loop's, and asyncio alone is megabytes in
    # every worker process.
    loaded = _all_modules_loaded_by("import gateway.worker.process, gateway.worker.template")
    assert {"gateway.worker.wsgi", "gateway.sessions.mapping", "gateway.sessions.cookies"} <= loaded
    assert not loaded & {"asyncio", "aiomcache", "gateway.sessions.memcached", "gateway.sessions.memory"}
    # The loop still finds them where it always did.
    stores = _all_modules_loaded_by("from gateway.sessions import MemcachedStore, MemoryStore, open_store")
    assert {"gateway.sessions.memcached", "gateway.sessions.memory", "aiomcache"} <= stores


def test_everything_installed_is_under_the_one_package_gateway() -> None:
    # What setuptools packs (pyproject's find, which follows the links gateway/protocols and gateway/sessions):
    # the codecs and the stores as subpackages, so no top-level name of ours can shadow a project's own.
    from setuptools import find_packages

    packages = set(find_packages(str(ROOT), include=["gateway*"]))
    assert {"gateway.protocols.fastcgi", "gateway.protocols.uwsgi", "gateway.sessions"} <= packages
    assert (ROOT / "gateway" / "protocols").resolve() == ROOT / "protocols"
    assert (ROOT / "gateway" / "sessions").resolve() == ROOT / "sessions"


def test_development_tooling_is_not_installed_with_the_package() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'include = ["gateway*"]' in pyproject
    assert not list((ROOT / "gateway").rglob("devstack*"))
    assert (ROOT / "devstack" / "__main__.py").exists()  # `make run`'s entry point lives beside the package
