"""Each signal reaches the handler named after it, and what the handler returns is the gateway's decision.

Driven in-process: the decision needs no real signal and no running gateway, only a pool that records what is
asked of it.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from gateway.config.settings import Config
from gateway.loop.accesslog import AccessLog
from gateway.master.server import HANDLED_SIGNALS, Gateway, Stop


class _Pool:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def reload(self) -> None:
        self.calls.append("reload")

    def add_worker(self) -> None:
        self.calls.append("add_worker")

    def remove_worker(self) -> None:
        self.calls.append("remove_worker")


@pytest.fixture
def gateway() -> tuple[Gateway, _Pool]:
    gateway = Gateway(Config())
    pool = _Pool()
    gateway.pool = pool
    return gateway, pool


@pytest.mark.parametrize(
    ("signum", "decision"),
    [(signal.SIGTERM, Stop.GRACEFUL), (signal.SIGINT, Stop.GRACEFUL), (signal.SIGQUIT, Stop.IMMEDIATE)],
)
def test_stop_signals_return_how_to_stop_and_touch_no_worker(
    gateway: tuple[Gateway, _Pool], signum: signal.Signals, decision: Stop
) -> None:
    server, pool = gateway
    assert server.dispatch_signal(signum) is decision
    assert pool.calls == []
    assert not server.pending_signals  # nothing is put back to be read again


@pytest.mark.parametrize(
    ("signum", "call"),
    [(signal.SIGHUP, "reload"), (signal.SIGTTIN, "add_worker"), (signal.SIGTTOU, "remove_worker")],
)
def test_pool_signals_act_on_the_pool_and_keep_serving(
    gateway: tuple[Gateway, _Pool], signum: signal.Signals, call: str
) -> None:
    server, pool = gateway
    assert server.dispatch_signal(signum) is None
    assert pool.calls == [call]


def test_usr1_reopens_the_access_log(gateway: tuple[Gateway, _Pool], tmp_path: Path) -> None:
    server, _ = gateway
    path = tmp_path / "access.log"
    server.access_log = AccessLog(str(path))
    try:
        path.rename(tmp_path / "access.log.1")  # what logrotate does before it sends SIGUSR1
        assert server.dispatch_signal(signal.SIGUSR1) is None
        assert path.exists()
    finally:
        server.access_log.close()


def test_every_handled_signal_has_its_handler(gateway: tuple[Gateway, _Pool]) -> None:
    server, _ = gateway
    for signum in HANDLED_SIGNALS:
        assert callable(getattr(server, f"handle_{signum.name[3:].lower()}"))


def test_a_signal_without_a_handler_is_logged_and_ignored(
    gateway: tuple[Gateway, _Pool], caplog: pytest.LogCaptureFixture
) -> None:
    server, pool = gateway
    assert server.dispatch_signal(signal.SIGWINCH) is None
    assert pool.calls == [] and "SIGWINCH" in caplog.text
