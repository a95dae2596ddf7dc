"""Fixtures: a real gateway and a real nginx on loopback, each with its own scratch directory.

A missing nginx or memcached makes these fixtures fail (never skip): CI must not pass without the real components.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

import gateway.compiled
import gateway.loop.relay
import gateway.protocols
import gateway.worker.frames
from devstack.nginx import Nginx
from devstack.ports import free_port
from devstack.processes import GatewayProcess
from devstack.servers import Memcached

# Properties are about what the code does, never how fast: on a loaded machine (CI runners, parallel agents)
# neither generating inputs nor running one may fail a test for taking long.
settings.register_profile("gateway", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("gateway")


def pytest_report_header(config: pytest.Config) -> str:
    return f"protocol codecs: {gateway.protocols.build_kind()}"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test other code than the sources: a stale compiled codec, or the wrong build for the pass."""
    if session.config.pluginmanager.has_plugin("tests.pure_python"):
        hot = (gateway.worker.frames.__file__, gateway.loop.relay.__file__)
        if gateway.protocols.compiled() or not all((path or "").endswith(".py") for path in hot):
            pytest.exit("tests.pure_python is loaded but compiled modules were imported", returncode=4)
        return
    stale = gateway.protocols.stale_sources() + gateway.compiled.stale_sources()
    if stale:
        pytest.exit(f"{', '.join(stale)} changed after they were compiled: run `make build`", returncode=4)
    if os.environ.get("CI") == "true" and not gateway.protocols.compiled():
        pytest.exit("CI tests the compiled codecs, but they are not built: run `make build`", returncode=4)


@dataclass
class Stack:
    gateway: GatewayProcess
    nginx: Nginx
    fcgi_path: str
    uwsgi_path: str
    fcgi_port: int
    uwsgi_port: int

    @property
    def url(self) -> str:
        return self.nginx.url


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The test apps behind nginx: unix sockets for nginx, TCP ports for raw-socket tests."""
    scratch = tmp_path_factory.mktemp("stack")
    fcgi_path = str(scratch / "fcgi.sock")
    uwsgi_path = str(scratch / "uwsgi.sock")
    fcgi_port, uwsgi_port = free_port(), free_port()
    gateway = GatewayProcess(
        scratch,
        [
            "--fcgi",
            f"unix:{fcgi_path}",
            "--uwsgi",
            f"unix:{uwsgi_path}",
            "--fcgi",
            f"127.0.0.1:{fcgi_port}",
            "--uwsgi",
            f"127.0.0.1:{uwsgi_port}",
            "--workers",
            "2",
            "--graceful-timeout",
            "5",
            "tests.apps:validated_app",
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    ).start()
    nginx = Nginx(scratch, free_port(), f"unix:{fcgi_path}", f"unix:{uwsgi_path}")
    try:
        nginx.start()
        yield Stack(gateway, nginx, fcgi_path, uwsgi_path, fcgi_port, uwsgi_port)
    finally:
        nginx.stop()
        gateway.stop()


@pytest.fixture(scope="session")
def memcached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Memcached]:
    """One real memcached for the tests that leave it running; their sessions never collide (random ids)."""
    server = Memcached(tmp_path_factory.mktemp("memcached"), free_port()).start()
    try:
        yield server
    finally:
        server.stop()
