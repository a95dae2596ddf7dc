"""devstack's own promises: ports nobody else is handed, readiness from sd_notify, and servers that say why they
could not start."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import ports
from devstack.nginx import BENCH_TUNING, Location, Nginx, Upstream, gateway_routes, render_nginx_conf
from devstack.ports import free_port
from devstack.processes import GatewayProcess, NotifySocket, StackError
from devstack.servers import Memcached

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
#: /proc/net/tcp's state code for TIME_WAIT.
TIME_WAIT = "06"


def _tcp_states(port: int) -> set[str]:
    """The states of the IPv4 TCP sockets whose local address is 127.0.0.1:``port``."""
    local = f"0100007F:{port:04X}"
    states = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            states.add(fields[3])
    return states


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        yield sock
    finally:
        sock.close()


def test_free_port_is_held_in_time_wait_against_plain_binds(listener: socket.socket) -> None:
    port = free_port()
    assert TIME_WAIT in _tcp_states(port)
    with socket.socket() as plain, pytest.raises(OSError) as refused:
        plain.bind(("127.0.0.1", port))  # what bind(0) or an ephemeral connect() would have to do
    assert refused.value.errno == errno.EADDRINUSE
    # A server with SO_REUSEADDR, as every server devstack starts, takes it and serves on it.
    listener.bind(("127.0.0.1", port))
    listener.listen(1)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        accepted, _ = listener.accept()
        accepted.close()


def test_free_port_never_repeats_in_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    first = free_port()
    fresh = next(port for port in range(20000, 30000) if port not in ports._given)
    offers = iter([first, first, fresh])  # the kernel offering a port again once its TIME_WAIT has expired
    monkeypatch.setattr(ports, "_reserve", lambda: next(offers))
    assert free_port() == fresh
    monkeypatch.undo()
    many = [free_port() for _ in range(100)]
    assert len(set(many)) == len(many)
    assert first not in many
    assert fresh not in many


def test_free_port_gives_up_when_every_offer_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setattr(ports, "_reserve", lambda: port)
    with pytest.raises(StackError, match="no loopback port"):
        free_port()


def test_nginx_that_cannot_bind_says_so(tmp_path: Path, listener: socket.socket) -> None:
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    taken = listener.getsockname()[1]
    nginx = Nginx(tmp_path, taken, ":1", ":2")
    try:
        with pytest.raises(StackError, match=r"nginx exited with status 1(.|\n)*Address already in use"):
            nginx.start()  # our listener accepts connections: only the listener's owner tells the two apart
        assert nginx.process is None  # reaped
    finally:
        nginx.stop()


def test_memcached_that_cannot_bind_says_so(tmp_path: Path, listener: socket.socket) -> None:
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    with pytest.raises(StackError, match=r"memcached exited with status \d+(.|\n)*failed to listen"):
        Memcached(tmp_path, listener.getsockname()[1]).start()


def test_one_renderer_serves_the_gateway_and_the_benchmarks(tmp_path: Path) -> None:
    upstreams, locations = gateway_routes(":9000", "unix:/run/u.sock")
    conf = render_nginx_conf(tmp_path, 8080, upstreams, locations)
    assert "upstream gateway_fcgi { server 127.0.0.1:9000; }" in conf
    assert "upstream gateway_fcgi_keep { server 127.0.0.1:9000; keepalive 8; }" in conf
    assert "upstream gateway_uwsgi { server unix:/run/u.sock; }" in conf
    assert "location /fcgik/ {" in conf and "fastcgi_keep_conn on;" in conf
    assert f"access_log {tmp_path}/nginx-access.log;" in conf and "listen 127.0.0.1:8080;" in conf
    bench = render_nginx_conf(
        tmp_path,
        8081,
        [Upstream("up_w", "127.0.0.1:7000", keepalive=64)],
        [Location("/s/w/", "up_w", "http", keep_conn=True, buffered=False)],
        tuning=BENCH_TUNING,
    )
    assert "access_log off;" in bench and "listen 127.0.0.1:8081 backlog=4096;" in bench
    assert "proxy_http_version 1.1;" in bench and "proxy_request_buffering off;" in bench
    assert "proxy_buffering off;" in bench and "fastcgi_pass" not in bench


class _Scripted(GatewayProcess):
    """A stand-in for the gateway: a Python one-liner, to drive readiness without starting a real one."""

    script = ""

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.script]


_NOTIFY = (
    "import os, socket, time\n"
    "address = os.environ['NOTIFY_SOCKET']\n"
    "address = '\\0' + address[1:] if address.startswith('@') else address\n"
    "def notify(state):\n"
    "    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:\n"
    "        sock.connect(address)\n"
    "        sock.sendall(state.encode())\n"
)


def test_readiness_is_the_ready_notification_not_a_log_line(tmp_path: Path) -> None:
    # Many notifications before READY=1: more than the kernel queues for a socket nobody reads.
    script = _NOTIFY + "for n in range(40): notify(f'STATUS={n}')\nnotify('READY=1')\ntime.sleep(60)\n"
    process = type("Ready", (_Scripted,), {"script": script})(tmp_path, [])
    process.start(timeout=20)
    try:
        assert process.notify is not None
        assert process.notify.messages[-1] == {"READY=1"}
        assert process.log_text() == ""  # nothing was printed: the readiness came from the socket
    finally:
        assert process.stop() == -signal.SIGTERM
    assert not (tmp_path / "notify.sock").exists()


def test_readiness_fails_with_the_log_when_the_process_exits(tmp_path: Path) -> None:
    process = type("Dies", (_Scripted,), {"script": "import sys; print('cannot import the app'); sys.exit(3)"})
    with pytest.raises(StackError, match=r"exited with status 3:\ncannot import the app"):
        process(tmp_path, []).start(timeout=20)


def test_readiness_times_out_and_stops_the_process(tmp_path: Path) -> None:
    silent = type("Silent", (_Scripted,), {"script": "print('starting', flush=True); import time; time.sleep(60)"})
    gateway = silent(tmp_path, [])
    with pytest.raises(StackError, match=r"was not ready within 0 s:\n") as raised:
        gateway.start(timeout=0.5)
    assert gateway.process is not None
    assert gateway.process.returncode is not None  # killed and reaped, not left running
    # The message ends with the log as it was once the process was stopped (a loaded machine may not have let it
    # print yet: what matters is that whatever it said is there).
    assert str(raised.value).endswith(":\n" + gateway.log_text())


def test_a_long_scratch_path_falls_back_to_an_abstract_address(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    script = _NOTIFY + "notify('READY=1')\n"
    process = type("Deep", (_Scripted,), {"script": script})(deep, [])
    process.start(timeout=20)
    try:
        assert process.notify is not None
        assert process.notify.address.startswith("@")
    finally:
        process.stop()


def test_gateway_restarts_and_reloads_in_the_same_scratch(tmp_path: Path) -> None:
    port = free_port()
    gateway = GatewayProcess(tmp_path, ["--uwsgi", f"127.0.0.1:{port}", "--workers", "1", "tests.apps:app"], env=ENV)
    gateway.start()
    try:
        gateway.reload()
        assert gateway.notify is not None
        states = [state for message in gateway.notify.messages for state in sorted(message)]
        assert states.index("RELOADING=1") < len(states) - 1 - states[::-1].index("READY=1")
    finally:
        assert gateway.stop() == 0
    gateway.start()  # the same scratch directory: the old socket file is replaced
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        assert gateway.stop() == 0


def _blocked_signals(thread_id: int) -> set[int]:
    """The signals a thread of this process blocks, from the SigBlk mask in /proc."""
    status = Path(f"/proc/self/task/{thread_id}/status").read_text()
    mask = int(next(line for line in status.splitlines() if line.startswith("SigBlk:")).split()[1], 16)
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}


def test_the_notify_thread_leaves_ctrl_c_to_the_main_thread(tmp_path: Path) -> None:
    """A Ctrl-C the kernel handed to the draining thread would never wake the main thread's blocking wait (`make
    run` hung on Ctrl-C under load): the thread blocks the stop signals, and the main thread still takes them."""
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        thread_id = notify._thread.native_id
        assert thread_id is not None
        blocked = _blocked_signals(thread_id)
        assert {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT} <= blocked
        assert signal.SIGINT not in _blocked_signals(threading.get_native_id())
    finally:
        notify.close()
