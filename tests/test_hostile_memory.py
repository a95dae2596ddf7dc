"""The params-pinning attack of issue #16 through a real gateway: the master's memory stays bounded, well-behaved
requests are served meanwhile, and the memory comes back once the hostile connections are gone.

The attack and the well-behaved client are benchmarks/hostile.py's (``python -m benchmarks.hostile`` measures the
same at full size); here it runs at a size that takes seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.hostile import Attack, HelloClient, rss, start_gateway
from devstack.ports import free_port
from devstack.processes import GatewayProcess
from tests.waiting import wait_for

MIB = 1 << 20


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[GatewayProcess, int]]:
    port = free_port()
    process = start_gateway(tmp_path, port, ["--header-timeout", "3"])
    try:
        yield process, port
    finally:
        process.stop(timeout=30)


def _master_rss(gateway: GatewayProcess) -> int:
    assert gateway.process is not None
    return rss(gateway.process.pid)


def _push_until(attack: Attack, client: HelloClient, seconds: float, gateway: GatewayProcess) -> int:
    """Push the attack for ``seconds`` while the client is served one request at a time; the master's RSS peak."""
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        attack.push()
        client.one()
        peak = max(peak, _master_rss(gateway))
    return peak


def test_128_ids_of_64_kib_params_close_the_connection_not_the_master(gateway: tuple[GatewayProcess, int]) -> None:
    process, port = gateway
    client = HelloClient(port)
    try:
        client.rate(0.3)
        base = _master_rss(process)
        attack = Attack(port, connections=8, ids=128, size=65000)  # 8 MiB each: 64 MiB in all, unbounded before
        attack.start()
        peak = _push_until(attack, client, 3, process)
        wait_for(lambda: process.log_text().count("over --max-connection-buffer") >= 8, 15, "every attacker refused")
        attack.close()
        assert peak - base < 32 * MIB, f"master RSS grew {(peak - base) / MIB:.0f} MiB"
        assert client.served > 10
    finally:
        client.sock.close()


def test_many_connections_under_their_own_budget_are_held_by_the_loop_wide_one(
    gateway: tuple[GatewayProcess, int],
) -> None:
    process, port = gateway
    client = HelloClient(port)
    try:
        client.rate(0.3)
        base = _master_rss(process)
        attack = Attack(port, connections=120, ids=16, size=65000)  # 1 MiB each, under 2 MiB: 120 MiB in all
        attack.start()
        served_before = client.served
        peak = _push_until(attack, client, 4, process)
        assert "over --max-buffered" in process.log_text()
        assert client.served - served_before > 10, "well-behaved requests kept being served"
        assert peak - base < 64 * MIB, f"master RSS grew {(peak - base) / MIB:.0f} MiB"
        # The gateway closes them at --header-timeout; the heap is trimmed after the burst.
        wait_for(lambda: attack.alive() == 0, 15, "the hostile connections to be closed by the gateway")
        attack.close()
        wait_for(lambda: _master_rss(process) - base < 16 * MIB, 10, "the master's memory to come back")
    finally:
        client.sock.close()


def test_a_thousand_hostile_connections_cost_the_master_at_most_64_mib(gateway: tuple[GatewayProcess, int]) -> None:
    """The issue's target at its size: every connection pushes 1 MiB of params that never end. Each read is
    accounted once it is in memory, so the bound is the budget plus what a connection may read before it is
    paused: small reads past half the budget (before them, 1,000 first reads of up to 256 KiB took +150 MiB)."""
    process, port = gateway
    client = HelloClient(port)
    try:
        client.rate(0.3)
        base = _master_rss(process)
        attack = Attack(port, connections=1000, ids=16, size=65000)
        attack.start()
        served_before = client.served
        peak = _push_until(attack, client, 4, process)
        assert "over --max-buffered" in process.log_text()
        assert client.served - served_before > 10, "well-behaved requests kept being served"
        assert peak - base < 64 * MIB, f"master RSS grew {(peak - base) / MIB:.0f} MiB"
        attack.close()
    finally:
        client.sock.close()
