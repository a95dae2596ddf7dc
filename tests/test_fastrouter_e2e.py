"""Many gateways, one service, through the real thing: nginx ``uwsgi_pass`` → a real uWSGI FastRouter (from PyPI,
in the peers' virtualenv) → gateways that subscribed to it with ``--subscribe``, routed by the Host header.

One scenario, in the order an operator lives it: two gateways under one key both serve; one is stopped with
SIGTERM under load and no request fails (it unsubscribes before its listener closes); a third, on port 0, joins
and serves within one interval; one is SIGKILLed (no unsubscription) and the router stops sending to it; a second
key routes to its own gateway throughout.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from benchmarks.peers import PEERS_VENV
from devstack.nginx import Location, Nginx, Upstream
from devstack.ports import free_port
from devstack.processes import GatewayProcess, ListeningProcess

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
UWSGI = PEERS_VENV / "bin" / "uwsgi"
#: Short, so the scenario takes seconds: the gateways renew every INTERVAL, the router forgets after TOLERANCE.
INTERVAL = 1.0
TOLERANCE = 3


class FastRouter(ListeningProcess):
    """``uwsgi --fastrouter`` with a subscription server, as the deployment in issue #19 runs it."""

    what = "fastrouter"
    stop_signal = signal.SIGINT  # uWSGI's master stops on SIGINT/SIGQUIT; SIGTERM means "reload" to it

    def __init__(self, scratch: Path, port: int, subscription_port: int) -> None:
        super().__init__(scratch, port)
        self.subscription_port = subscription_port

    def command(self) -> list[str]:
        return [str(UWSGI), "--master", "--fastrouter", f"127.0.0.1:{self.port}",
                "--fastrouter-subscription-server", f"127.0.0.1:{self.subscription_port}",
                "--subscription-tolerance", str(TOLERANCE), "--fastrouter-timeout", "10"]  # fmt: skip


@pytest.fixture
def router(tmp_path: Path) -> Iterator[FastRouter]:
    if not UWSGI.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"uWSGI is not installed at {UWSGI}: `make peers` installs it")
        pytest.skip(f"uWSGI is not installed at {UWSGI}: run `make peers`")
    fastrouter = FastRouter(tmp_path / "router", free_port(), free_port()).start()
    yield fastrouter
    fastrouter.stop()


def _gateway(tmp_path: Path, name: str, router: FastRouter, key: str, port: int = 0) -> GatewayProcess:
    return GatewayProcess(
        tmp_path / name,
        ["--uwsgi", f"127.0.0.1:{port}", "--workers", "1", "--subscribe", f"127.0.0.1:{router.subscription_port}={key}",
         "--subscribe-interval", str(INTERVAL), "--graceful-timeout", "10", "tests.apps:app"],
        env=ENV,
    )  # fmt: skip


def _who(nginx: Nginx, host: str) -> int:
    """The gateway (master pid) that answered one request for ``host``; an AssertionError for anything but 200."""
    connection = http.client.HTTPConnection("127.0.0.1", nginx.port, timeout=15)
    try:
        connection.putrequest("GET", "/whoami", skip_host=True)  # our Host, the router's key, and no other
        connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    assert response.status == 200, (response.status, body[:200])
    answer = json.loads(body)
    assert answer["host"] == host
    gateway: int = answer["gateway"]
    return gateway


def _until_served_by(nginx: Nginx, host: str, wanted: set[int], timeout: float) -> float:
    """Request until every gateway in ``wanted`` has answered; the seconds it took."""
    started = time.monotonic()
    seen: set[int] = set()
    while not wanted <= seen:
        assert time.monotonic() - started < timeout, f"only {seen} of {wanted} answered within {timeout} s"
        try:
            seen.add(_who(nginx, host))
        except AssertionError:
            time.sleep(0.05)  # 502/503 until a subscription arrived
    return time.monotonic() - started


@dataclass
class Load:
    """Clients requesting ``host`` through nginx until stopped, every outcome counted."""

    nginx: Nginx
    host: str
    served_by: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.served_by[_who(self.nginx, self.host)] += 1
            except (AssertionError, OSError) as err:
                self.failures.append(repr(err)[:200])


def _pid(gateway: GatewayProcess) -> int:
    assert gateway.process is not None
    return gateway.process.pid


def test_fastrouter_balances_subscribed_gateways(tmp_path: Path, router: FastRouter) -> None:
    nginx = Nginx(
        tmp_path / "nginx",
        free_port(),
        upstreams=[Upstream("fastrouter", f"127.0.0.1:{router.port}")],
        locations=[Location("/", "fastrouter", "uwsgi")],
    ).start()
    first = _gateway(tmp_path, "a", router, "foo.test")
    second = _gateway(tmp_path, "b", router, "foo.test")
    other = _gateway(tmp_path, "c", router, "bar.test")
    third = _gateway(tmp_path, "d", router, "foo.test")
    try:
        for gateway in (first, second, other):
            gateway.start()
        # Both gateways under foo.test serve; bar.test is its own gateway's alone.
        _until_served_by(nginx, "foo.test", {_pid(first), _pid(second)}, timeout=10)
        assert {_who(nginx, "bar.test") for _ in range(6)} == {_pid(other)}

        # SIGTERM one under load: it unsubscribes first, then drains; not one request fails.
        load = Load(nginx, "foo.test")
        clients = [threading.Thread(target=load.run) for _ in range(4)]
        for client in clients:
            client.start()
        try:
            time.sleep(1.0)
            before = load.served_by[_pid(first)]
            assert before > 0
            terminated, terminated_port = _pid(first), first.listening_port("uwsgi")
            assert first.stop(signal.SIGTERM) == 0
            served_after_stop = sum(load.served_by.values())
            time.sleep(1.0)
        finally:
            load.stopping.set()
            for client in clients:
                client.join(30)
        assert load.failures == []
        assert sum(load.served_by.values()) > served_after_stop  # the load went on, on the other gateway
        assert "unsubscribing from" in first.log_text()
        assert terminated not in {_who(nginx, "foo.test") for _ in range(6)}

        # A third gateway on port 0 joins and serves within one interval of being ready.
        third.start()
        assert third.listening_port("uwsgi") != 0
        joined = _until_served_by(nginx, "foo.test", {_pid(third)}, timeout=INTERVAL * 5)
        assert joined <= INTERVAL, f"served after {joined:.2f} s"

        # SIGKILL one: no unsubscription. The router still lists it; uWSGI's FastRouter (2.0) then meets a refused
        # connection, marks the node failed and passes the request to the next node at once, so clients see
        # nothing at all (measured here), and the node is dropped for good after the tolerance.
        killed, killed_port = _pid(second), second.listening_port("uwsgi")
        assert second.process is not None
        second.process.kill()
        second.process.wait()
        outcomes: Counter[str] = Counter()
        deadline = time.monotonic() + TOLERANCE + 2 * INTERVAL
        while time.monotonic() < deadline:
            try:
                outcomes["served by the survivor" if _who(nginx, "foo.test") == _pid(third) else "other"] += 1
            except (AssertionError, OSError):
                outcomes["failed"] += 1
        assert outcomes["failed"] == 0 and outcomes["other"] == 0, outcomes
        assert {_who(nginx, "foo.test") for _ in range(10)} == {_pid(third)}, killed
        router_log = router.log.read_text()
        assert f'unable to connect() to node "127.0.0.1:{killed_port}"' in router_log
        assert f"foo.test => marking 127.0.0.1:{killed_port} as failed" in router_log

        # The other key was never disturbed.
        assert {_who(nginx, "bar.test") for _ in range(4)} == {_pid(other)}
    finally:
        for gateway in (first, second, other, third):
            gateway.stop(signal.SIGKILL if gateway is second else signal.SIGTERM)
        nginx.stop()
    # The router took our subscriptions as uWSGI nodes, and our SIGTERM's unsubscription (before it stopped).
    log = router.log.read_text()
    assert f"foo.test => new node: 127.0.0.1:{terminated_port}" in log and "bar.test => new node" in log
    assert f"foo.test => marking 127.0.0.1:{terminated_port} as failed" in log
