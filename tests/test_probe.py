"""``python -m gateway probe``, the real command, against a real gateway over both protocols on TCP and unix
sockets, against a port nothing listens on, and ``--ping`` against the gateway and a real uWSGI (the benchmarks'
peers virtualenv, which ``make test`` fills before the suite).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.peers import PEERS_VENV, ensure_peers
from devstack.ports import free_port
from devstack.processes import GatewayProcess, ListeningProcess
from gateway.ops.probe import Target, main
from gateway.protocols.cgi import split_response_head
from gateway.protocols.errors import RemoteProtocolError
from gateway.protocols.uwsgi import encode_ping, encode_pong, is_pong

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Probed:
    urls: dict[str, str]


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probed]:
    scratch = tmp_path_factory.mktemp("probe")
    fcgi, uwsgi = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    gateway = GatewayProcess(
        scratch,
        ["--fcgi", fcgi, "--uwsgi", uwsgi, "--fcgi", f"unix:{scratch}/f.sock", "--uwsgi", f"unix:{scratch}/u.sock",
         "--workers", "1", "tests.apps:app"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).start()  # fmt: skip
    urls = {
        "fcgi": f"fcgi://{fcgi}",
        "uwsgi": f"uwsgi://{uwsgi}",
        "fcgi-unix": f"fcgi+unix:{scratch}/f.sock:",
        "uwsgi-unix": f"uwsgi+unix:{scratch}/u.sock:",
    }
    try:
        yield Probed(urls)
    finally:
        gateway.stop()


def probe(*args: str) -> subprocess.CompletedProcess[bytes]:
    """The real command, as a health check runs it."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "probe", *args],
        capture_output=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip


def probe_here(capfd: pytest.CaptureFixture[bytes], *args: str) -> subprocess.CompletedProcess[bytes]:
    """The same entry point in-process (the CLI's ``main``), so that many probes cost no interpreter start each."""
    status = main(list(args))
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, status, out, err)


@pytest.mark.parametrize("via", ["fcgi", "uwsgi", "fcgi-unix", "uwsgi-unix"])
def test_probe_prints_the_body_or_the_head_and_exits_by_status(
    probed: Probed, via: str, capfdbinary: pytest.CaptureFixture[bytes]
) -> None:
    url = probed.urls[via]
    body = probe_here(capfdbinary, url + "/hello")
    assert (body.returncode, body.stdout) == (0, b"hello")
    included = probe("-i", url + "/hello")
    assert included.returncode == 0
    assert included.stdout.startswith(b"200 OK\r\n")
    assert b"\r\nContent-Length: 5\r\n\r\nhello" in included.stdout
    quiet = probe_here(capfdbinary, "-q", url + "/hello")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, b"", b"")
    missing = probe_here(capfdbinary, "-q", url + "/status?code=404")
    assert missing.returncode == 1
    echoed = probe_here(capfdbinary, "-X", "POST", "-d", "abc", "-H", "X-Probe: yes", url + "/echo?q=1")
    assert echoed.returncode == 0
    assert b'"method": "POST"' in echoed.stdout or b'"method":"POST"' in echoed.stdout
    assert b"HTTP_X_PROBE" in echoed.stdout
    assert b'"body_length": 3' in echoed.stdout or b'"body_length":3' in echoed.stdout


def test_probe_exits_2_when_nothing_listens(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    down = probe(f"fcgi://127.0.0.1:{free_port()}/")
    assert down.returncode == 2
    assert b"cannot connect to 127.0.0.1:" in down.stderr
    assert probe_here(capfdbinary, "-q", f"uwsgi+unix:{tmp_path}/none.sock").returncode == 2
    assert (
        probe_here(capfdbinary, "http://example.org/").returncode == 2
    )  # not a URL it speaks: said, and no connection tried


def test_ping_the_gateway(probed: Probed, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    pong = probe("--ping", probed.urls["uwsgi"])
    assert (pong.returncode, pong.stdout.endswith(b": pong\n")) == (0, True)
    assert probe_here(capfdbinary, "-q", "--ping", probed.urls["uwsgi-unix"]).returncode == 0
    values = probe_here(capfdbinary, "--ping", probed.urls["fcgi"])  # FastCGI's equivalent: FCGI_GET_VALUES
    assert values.returncode == 0
    assert b"FCGI_MAX_REQS=" in values.stdout


class Uwsgi(ListeningProcess):
    what = "uwsgi"

    def command(self) -> list[str]:
        return [str(PEERS_VENV / "bin" / "uwsgi"), "--socket", f"127.0.0.1:{self.port}", "--master", "--processes",
                "1", "--die-on-term"]  # fmt: skip


def test_ping_a_real_uwsgi(tmp_path: Path) -> None:
    if not (PEERS_VENV / "bin" / "uwsgi").exists():  # `make test` installs it before the suite
        peers = ensure_peers(["uwsgi"])
        assert not peers.failures, peers.failures
    server = Uwsgi(tmp_path, free_port()).start()
    try:
        pong = probe("--ping", f"uwsgi://127.0.0.1:{server.port}")
        assert pong.returncode == 0, pong.stderr
        assert pong.stdout == f"127.0.0.1:{server.port}: pong\n".encode()
    finally:
        server.stop()


def test_url_forms() -> None:
    assert Target.parse("fcgi://127.0.0.1:9000/a/b?x=1") == Target("fastcgi", "127.0.0.1", 9000, None, "/a/b?x=1")
    assert Target.parse("uwsgi://[::1]:9001") == Target("uwsgi", "::1", 9001, None, "/")
    assert Target.parse("fcgi+unix:/run/app.sock:/health") == Target("fastcgi", None, None, "/run/app.sock", "/health")
    assert Target.parse("uwsgi+unix:/run/app.sock") == Target("uwsgi", None, None, "/run/app.sock", "/")
    for bad in ("http://x:1/", "fcgi://nohost/", "fcgi+tcp:/x"):
        with pytest.raises(ValueError, match=r"expected|give HOST:PORT"):
            Target.parse(bad)


def test_response_heads_as_the_client_side_reads_them() -> None:
    assert split_response_head(b"Status: 404 Not Found\r\nX-A: 1\r\n\r\nbody") == (404, "Not Found", [("X-A", "1")], 33)
    assert split_response_head(b"Content-Type: text/plain\r\n\r\n") == (200, "OK", [("Content-Type", "text/plain")], 28)
    redirect = b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n"
    assert split_response_head(redirect) == (302, "Found", [("Location", "/x")], len(redirect))
    assert split_response_head(b"HTTP/1.1 200 OK\r\nPartial: yes") is None
    for bad in (b"no colon here\r\n\r\n", b"Status: abc\r\n\r\n", b"HTTP/1.1 x\r\n\r\n", b" Lead: space\r\n\r\n"):
        with pytest.raises(RemoteProtocolError):
            split_response_head(bad)
    assert is_pong(encode_pong())
    assert not is_pong(encode_ping())
    assert not is_pong(b"\x64")
