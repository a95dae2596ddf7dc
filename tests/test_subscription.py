"""--subscribe: uWSGI's subscription packet, sent by a real gateway to a router we play with a UDP socket.

What the real uWSGI FastRouter makes of these packets is tests/test_fastrouter_e2e.py, and the packet's bytes are
tests/test_uwsgi_codec.py's; here each rule is checked where it can fail on its own: when they are sent (ready,
every interval, kept over SIGHUP, withdrawn first on SIGTERM while the listener still accepts), port 0, and bad
input (a name that does not resolve, a router that is down, no uwsgi listener).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from devstack.processes import GatewayProcess, StackError
from gateway.config.addresses import Subscription
from gateway.config.cli import build_config
from gateway.config.errors import ConfigError
from gateway.contract.exits import EXIT_CONFIG
from gateway.protocols.uwsgi import MODIFIER_SUBSCRIPTION, SUBSCRIBE, UNSUBSCRIBE, decode_vars
from gateway.protocols.uwsgi.codec import HEADER
from tests.load import uwsgi_get

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _decode(packet: bytes) -> tuple[int, int, list[tuple[str, str]]]:
    modifier1, size, modifier2 = HEADER.unpack_from(packet)
    assert size == len(packet) - HEADER.size
    return modifier1, modifier2, decode_vars(packet[HEADER.size :], 100)


@pytest.mark.parametrize("text", ["example.com", "127.0.0.1:2626", "127.0.0.1=k", ":2626=k", "h:99999=k", "h:1="])
def test_bad_subscribe_text_names_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--subscribe .* is not SERVER=KEY"):
        Subscription.parse(text)


def test_subscribe_parses_and_repeats() -> None:
    config = build_config(["--uwsgi", ":0", "--subscribe", "127.0.0.1:2626=a.com", "--subscribe", "[::1]:2727=b.com"])
    assert [str(item) for item in config.subscribe] == ["127.0.0.1:2626=a.com", "[::1]:2727=b.com"]
    assert config.subscribe_interval == 10.0


class Router:
    """A subscription server's socket: what a gateway sent it, decoded."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def next(self, timeout: float) -> tuple[int, dict[str, str], float]:
        """(modifier2, vars, arrival time) of the next packet."""
        self.sock.settimeout(timeout)
        packet = self.sock.recv(65536)
        arrived = time.monotonic()
        modifier1, modifier2, pairs = _decode(packet)
        assert modifier1 == MODIFIER_SUBSCRIPTION
        return modifier2, dict(pairs), arrived

    def close(self) -> None:
        self.sock.close()


def test_announced_at_ready_every_interval_kept_on_hup_withdrawn_first_on_term(tmp_path: Path) -> None:
    router = Router()
    interval = 0.4
    gateway = GatewayProcess(
        tmp_path,
        ["--uwsgi", "127.0.0.1:0", "--workers", "1", "--subscribe", f"127.0.0.1:{router.port}=foo.test",
         "--subscribe-interval", str(interval), "tests.apps:app"],
        env=ENV,
    )  # fmt: skip
    try:
        gateway.start()
        port = gateway.listening_port("uwsgi")
        assert port != 0
        modifier2, announced, first = router.next(5)
        assert modifier2 == SUBSCRIBE
        assert announced["key"] == "foo.test"
        assert announced["address"] == f"127.0.0.1:{port}"  # the kernel's port, not 0
        assert announced["cores"] == "1"
        assert uwsgi_get(port, "/hello")[0] == 200  # what is announced serves
        _, _, second = router.next(5)
        assert second - first == pytest.approx(interval, abs=0.3)
        gateway.reload()  # SIGHUP: still subscribed, never withdrawn
        for _ in range(3):
            modifier2, announced, _ = router.next(5)
            assert modifier2 == SUBSCRIBE
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        while True:  # a renewal may be in flight already
            modifier2, withdrawn, _ = router.next(5)
            if modifier2 == UNSUBSCRIBE:
                break
        assert withdrawn["address"] == f"127.0.0.1:{port}"
        # First: the listener still accepts when the unsubscription arrives, so the router stops before we do.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert gateway.process.wait(30) == 0
        log = gateway.log_text()
        assert f"subscribing 127.0.0.1:{port} to the router 127.0.0.1:{router.port} under 'foo.test'" in log
        assert "unsubscribing from" in log
    finally:
        gateway.stop()
        router.close()


def test_unresolvable_router_is_a_startup_error_naming_it(tmp_path: Path) -> None:
    gateway = GatewayProcess(
        tmp_path, ["--uwsgi", "127.0.0.1:0", "--subscribe", "no-such-router.invalid:2626=foo.test"], env=ENV
    )
    with pytest.raises(StackError, match=f"exited with status {EXIT_CONFIG}"):
        gateway.start()
    assert "the router no-such-router.invalid:2626 cannot be resolved" in gateway.log_text()


def test_subscribe_without_a_uwsgi_listener_is_refused(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path, ["--fcgi", "127.0.0.1:0", "--subscribe", "127.0.0.1:2626=foo.test"], env=ENV)
    with pytest.raises(StackError, match=f"exited with status {EXIT_CONFIG}"):
        gateway.start()
    assert "--subscribe announces a uwsgi listener: give --uwsgi ADDR" in gateway.log_text()


def test_router_down_costs_one_warning_per_interval(tmp_path: Path) -> None:
    closed = Router()
    port = closed.port
    closed.close()  # nothing listens there: the kernel answers each datagram with "port unreachable"
    interval = 0.25
    gateway = GatewayProcess(
        tmp_path,
        ["--uwsgi", "127.0.0.1:0", "--workers", "1", "--subscribe", f"127.0.0.1:{port}=foo.test",
         "--subscribe-interval", str(interval), "tests.apps:app"],
        env=ENV,
    )  # fmt: skip
    try:
        gateway.start()
        started = time.monotonic()
        warning = f"the router 127.0.0.1:{port} did not take our subscription for 'foo.test'"
        deadline = started + 10
        while gateway.log_text().count(warning) < 4:
            assert time.monotonic() < deadline, gateway.log_text()
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        # One per interval: four warnings need at least three intervals (the first comes one interval in).
        assert elapsed >= 3 * interval
        assert uwsgi_get(gateway.listening_port("uwsgi"), "/hello")[0] == 200  # serving regardless
    finally:
        assert gateway.stop() == 0
