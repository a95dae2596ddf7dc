"""``python -m gateway rules``: the printed configuration is deterministic, and each one runs in the real server.

nginx, Apache (mod_proxy_fcgi and mod_proxy_uwsgi) and lighttpd (mod_fastcgi, and mod_scgi speaking uwsgi) are
started privately on loopback with the generated rules, in front of one real gateway. Through each: a static file
comes from the web server (the gateway's access log never sees it) and a dynamic page from the gateway (its access
log does). A missing server fails the test (``make test-deps`` installs them).
"""

from __future__ import annotations

import http.client
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.ports import free_port
from devstack.processes import GatewayProcess, ListeningProcess
from devstack.webservers import Apache, Lighttpd, RulesNginx
from gateway.config.errors import ConfigError
from gateway.ops.rules import rules
from tests.http import Reply

ROOT = Path(__file__).resolve().parent.parent
STATIC_TEXT = b"served by the web server itself\n"


@dataclass
class Backend:
    gateway: GatewayProcess
    fcgi: str
    uwsgi: str
    access_log: Path
    static_dir: Path


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    scratch = tmp_path_factory.mktemp("rules")
    # Apache's children run as www-data: the static directory must be readable by others, unlike pytest's tmp.
    static_dir = Path(tempfile.mkdtemp(prefix="gateway-static-"))
    static_dir.chmod(0o755)
    (static_dir / "hello.txt").write_bytes(STATIC_TEXT)
    (static_dir / "hello.txt").chmod(0o644)
    fcgi, uwsgi = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    access_log = scratch / "access.log"
    gateway = GatewayProcess(
        scratch,
        ["--fcgi", fcgi, "--uwsgi", uwsgi, "--workers", "1", "--access-log", str(access_log), "tests.apps:app"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).start()
    try:
        yield Backend(gateway, fcgi, uwsgi, access_log, static_dir)
    finally:
        gateway.stop()
        shutil.rmtree(static_dir, ignore_errors=True)


def _logged(access_log: Path, path: str, timeout: float = 15.0) -> bool:
    """Whether the gateway's access log gets a line for ``path`` (it writes it as the response leaves)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if access_log.exists() and f" {path} " in access_log.read_text():
            return True
        time.sleep(0.05)
    return False


def _get(port: int, path: str) -> Reply:
    """GET with ``Host: localhost``, the --server-name the rules were made for."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", "localhost")
        connection.endheaders()
        response = connection.getresponse()
        return Reply(response.status, response.reason, response.getheaders(), response.read())
    finally:
        connection.close()


def _check_through(server: ListeningProcess, backend: Backend, marker: str) -> None:
    static = _get(server.port, f"/static/hello.txt?{marker}")
    assert static.status == 200, static
    assert static.body == STATIC_TEXT
    page = _get(server.port, f"/hello?{marker}")
    assert (page.status, page.body) == (200, b"hello"), page
    assert _logged(backend.access_log, f"/hello?{marker}"), "the dynamic page must come from the gateway"
    echoed_reply = _get(server.port, f"/unicode/a%20b?{marker}")
    assert echoed_reply.status == 200, echoed_reply
    echoed = echoed_reply.json()  # the app sees the path the client asked for
    assert (echoed["script_name"], echoed["path_info"], echoed["query"]) == ("", "/unicode/a b", marker)
    # The dynamic request was logged after the static one was answered: a static line would be there by now.
    assert f"/static/hello.txt?{marker}" not in backend.access_log.read_text()


def _argv(backend: Backend, protocol: str, port: int) -> list[str]:
    address = backend.fcgi if protocol == "fcgi" else backend.uwsgi
    return [f"--{protocol}", address, "--static", f"/static={backend.static_dir}", "--listen", f"127.0.0.1:{port}",
            "--server-name", "localhost"]  # fmt: skip


@pytest.mark.parametrize("protocol", ["fcgi", "uwsgi"])
def test_nginx_runs_its_rules(backend: Backend, tmp_path: Path, protocol: str) -> None:
    port = free_port()
    text = rules(["nginx", *_argv(backend, protocol, port)])
    with_server(RulesNginx(tmp_path, port, text), backend, f"nginx-{protocol}")


@pytest.mark.parametrize("protocol", ["fcgi", "uwsgi"])
def test_apache_runs_its_rules(backend: Backend, tmp_path: Path, protocol: str) -> None:
    port = free_port()
    text = rules(["apache", *_argv(backend, protocol, port)])
    module = "proxy_fcgi" if protocol == "fcgi" else "proxy_uwsgi"
    with_server(Apache(tmp_path, port, text, (module,)), backend, f"apache-{protocol}")


@pytest.mark.parametrize("protocol", ["fcgi", "uwsgi"])
def test_lighttpd_runs_its_rules_from_include_shell(backend: Backend, tmp_path: Path, protocol: str) -> None:
    """As Nagare's users do: lighttpd runs the real command at start-up and reads what it prints."""
    port = free_port()
    command = shlex.join([sys.executable, "-m", "gateway", "rules", "lighttpd", *_argv(backend, protocol, port)])
    include = f'include_shell "cd {ROOT} && {command}"\n'
    with_server(Lighttpd(tmp_path, port, include), backend, f"lighttpd-{protocol}")


def with_server(server: ListeningProcess, backend: Backend, marker: str) -> None:
    server.start()
    try:
        _check_through(server, backend, marker)
    finally:
        server.stop()


def test_output_is_deterministic_and_complete(tmp_path: Path) -> None:
    argv = ["nginx", "--fcgi", ":9000", "--fcgi", "unix:/run/gw.sock", "--static", f"/static={tmp_path}",
            "--static", "/media/=gateway:ops", "--server-name", "example.org", "--listen", "8080"]  # fmt: skip
    first = rules(argv)
    assert first == rules(argv)
    ops = Path(__file__).resolve().parent.parent / "gateway" / "ops"
    assert first.splitlines()[2:] == [
        "upstream gateway_fastcgi {",
        "    server 127.0.0.1:9000;",
        "    server unix:/run/gw.sock;",
        "    keepalive 16;",
        "}",
        "",
        "server {",
        "    listen 8080;",
        "    server_name example.org;",
        "",
        "    location /static/ {",
        f"        alias {tmp_path}/;",
        "    }",
        "",
        "    location /media/ {",
        f"        alias {ops}/;",
        "    }",
        "",
        "    location / {",
        "        include fastcgi_params;",
        "        fastcgi_keep_conn on;",
        "        fastcgi_pass gateway_fastcgi;",
        "    }",
        "}",
    ]
    apache = rules(["apache", "--uwsgi", "unix:/run/gw.sock", "--script-name", "/app"])
    assert '    ProxyPass "/app/" "unix:/run/gw.sock|uwsgi://localhost/"' in apache.splitlines()
    lighttpd = rules(["lighttpd", "--fcgi", "127.0.0.1:9000"]).splitlines()
    assert lighttpd[-1] == (
        'fastcgi.server = ( "/" => ( "gateway-0" => ( "host" => "127.0.0.1", "port" => 9000, '
        '"check-local" => "disable", "fix-root-scriptname" => "enable" ) ) )'
    )


def test_rules_need_a_listener_and_a_real_static_directory() -> None:
    with pytest.raises(ConfigError, match="nothing to listen on"):
        rules(["nginx"])
    with pytest.raises(ConfigError, match="is not a directory"):
        rules(["nginx", "--fcgi", ":9000", "--static", "/s=/no/such/dir"])
    with pytest.raises(ConfigError, match=r"cannot be found|is not an installed package"):
        rules(["nginx", "--fcgi", ":9000", "--static", "/s=no_such_package_xyz:static"])


@pytest.fixture(scope="module")
def mounted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway whose app is mounted under /app (--script-name), as the rules for it say."""
    scratch = tmp_path_factory.mktemp("mounted")
    fcgi = f"127.0.0.1:{free_port()}"
    gateway = GatewayProcess(
        scratch,
        ["--fcgi", fcgi, "--script-name", "/app", "--workers", "1", "tests.apps:app"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).start()
    try:
        yield fcgi
    finally:
        gateway.stop()


@pytest.mark.parametrize("server", ["nginx", "apache", "lighttpd"])
def test_an_app_mounted_under_a_prefix(mounted: str, tmp_path: Path, server: str) -> None:
    port = free_port()
    text = rules([server, "--fcgi", mounted, "--script-name", "/app", "--listen", f"127.0.0.1:{port}"])
    process: ListeningProcess
    if server == "nginx":
        process = RulesNginx(tmp_path, port, text)
    elif server == "apache":
        process = Apache(tmp_path, port, text, ("proxy_fcgi",))
    else:
        process = Lighttpd(tmp_path, port, text)
    process.start()
    try:
        reply = _get(port, "/app/unicode/x%20y?q=2")
        assert reply.status == 200, reply
        echoed = reply.json()
        assert (echoed["script_name"], echoed["path_info"], echoed["query"]) == ("/app", "/unicode/x y", "q=2")
    finally:
        process.stop()
