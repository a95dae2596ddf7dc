"""The systemd socket unit in deploy/ runs as written: its socket, its name and its mode, handed to a real gateway
the way systemd hands them (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID), answer FastCGI through that socket.

Only the path moves (the unit's /run/gateway is root's and systemd's): everything else is read from the file.
"""

from __future__ import annotations

import configparser
import os
import shlex
import socket
import stat
import subprocess
from pathlib import Path

import pytest

from gateway.config.cli import build_config
from gateway.protocols.fastcgi import EndRequest, Stdout
from gateway.protocols.fastcgi.client import ClientConnection, encode_request
from tests.activation import start_activated

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SOCKET_UNIT = ROOT / "deploy" / "systemd" / "gateway.socket"


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def _fastcgi_get(path: str, uri: str) -> tuple[bytes, int]:
    """One FastCGI request over a unix socket, as nginx sends it: (STDOUT bytes, app status)."""
    params = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": uri, "REQUEST_URI": uri,
              "SERVER_NAME": "localhost", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1"}  # fmt: skip
    client = ClientConnection()
    stdout = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(path)
        sock.sendall(encode_request(1, params, keep_conn=False))
        while chunk := sock.recv(65536):
            for event in client.receive_data(chunk):
                if isinstance(event, Stdout):
                    stdout += event.data
                elif isinstance(event, EndRequest):
                    return stdout, event.app_status
    raise AssertionError(f"no END_REQUEST; got {stdout!r}")


def test_socket_unit_is_served_as_its_name_says(tmp_path: Path) -> None:
    section = _unit(SOCKET_UNIT)["Socket"]
    listen_path = section["ListenStream"]
    name = section["FileDescriptorName"]
    mode = int(section["SocketMode"], 8)
    assert listen_path.startswith("/"), "the example listens on a unix socket"
    assert "uwsgi" not in name, "the example's name makes it a FastCGI socket"
    path = str(tmp_path / Path(listen_path).name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    os.chmod(path, mode)
    listener.listen(16)
    log_path = tmp_path / "gateway.log"
    process = start_activated(listener, name, ["--workers", "1", "tests.apps:app"], ENV, log_path)
    try:
        # The kernel queues the connection on the inherited socket until the gateway serves it.
        stdout, app_status = _fastcgi_get(path, "/hello")
        assert app_status == 0
        assert stdout.startswith(b"Status: 200 OK\r\n")
        assert stdout.endswith(b"\r\n\r\nhello")
        process.terminate()
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert f"socket activation: fastcgi socket unix:{path} named {name!r}" in log_path.read_text()
    # The socket file belongs to the socket unit: the gateway leaves it, with the unit's mode, behind.
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


RUNIT_SERVICE = ROOT / "deploy" / "runit" / "gateway"


def test_runit_service_runs_the_real_cli_in_the_foreground() -> None:
    """runsv supervises what ``run`` execs: the gateway itself, in the foreground, with options the CLI accepts."""
    for script in (RUNIT_SERVICE / "run", RUNIT_SERVICE / "log" / "run"):
        assert os.access(script, os.X_OK), f"{script} must be executable for runsv"
        assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0, f"{script}: shell syntax"
    lines = (RUNIT_SERVICE / "run").read_text().splitlines()
    command = next(line for line in lines if line.startswith("exec ") and " -m gateway " in line)
    assert not command.rstrip().endswith("&"), "runsv must supervise the gateway itself"
    argv = shlex.split(command)
    config = build_config(argv[argv.index("gateway") + 1 :], environ={})
    assert config.listeners
    assert config.app == "myapp.wsgi:application"
    assert "exec 2>&1" in lines, "stderr joins stdout, so that svlogd keeps the error log too"


TEMPLATE_UNIT = ROOT / "deploy" / "systemd" / "gateway@.service"


@pytest.mark.parametrize("instance", ["1", "2"])
def test_template_unit_runs_several_gateways_on_one_port(instance: str) -> None:
    """gateway@.service: each instance's command line, as systemd expands %i, is what the CLI accepts, shares the
    port (--reuse-port) and the sessions (memcached), and has stats and metrics ports of its own."""
    service = _unit(TEMPLATE_UNIT)["Service"]
    assert service["Type"] == "notify"
    argv = service["ExecStart"].replace("%i", instance).split()
    config = build_config(argv[argv.index("gateway") + 1 :])
    assert config.reuse_port
    assert config.sessions.startswith("memcached://")
    assert [str(listen.address) for listen in config.listeners] == ["127.0.0.1:9001"]
    assert config.stats is not None and config.stats.port == int(f"171{instance}")
    assert config.metrics is not None and config.metrics.port == int(f"910{instance}")
