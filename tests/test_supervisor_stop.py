"""The supervisor's stop against a spawn still under way, in-process with a fake worker process: a replacement
that a --max-requests recycle started just before SIGTERM must still be told to leave, and the stop must wait for
it. (Before the fix the gateway hung on SIGTERM about once in twenty runs of test_monitoring's metrics test.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.config.settings import Config
from gateway.master.supervisor import Supervisor


class FakeWorkerProcess:
    """What ``asyncio.create_subprocess_exec`` returns, for a worker that exits once told to (``exit``)."""

    pid = 424242
    returncode: int | None = None

    def __init__(self) -> None:
        self.exited = asyncio.Event()

    def exit(self) -> None:
        self.returncode = 0
        self.exited.set()

    async def wait(self) -> int:
        await self.exited.wait()
        return 0

    def send_signal(self, signum: int) -> None:
        self.exit()

    def terminate(self) -> None:
        self.exit()

    def kill(self) -> None:
        self.exit()


async def test_a_worker_whose_spawn_ends_after_the_stop_began_is_told_to_leave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    supervisor = Supervisor(Config(workers=1))
    supervisor.running = True
    exec_called, exec_may_return = asyncio.Event(), asyncio.Event()
    started: list[FakeWorkerProcess] = []

    async def slow_exec(*args: Any, **kwargs: Any) -> FakeWorkerProcess:
        exec_called.set()
        await exec_may_return.wait()  # the interpreter is still starting when SIGTERM arrives
        started.append(FakeWorkerProcess())
        return started[-1]

    monkeypatch.setattr(asyncio, "create_subprocess_exec", slow_exec)
    supervisor._spawn_one()
    await exec_called.wait()
    stopping = asyncio.create_task(supervisor.stop(timeout=0))
    while supervisor.running:
        await asyncio.sleep(0)
    exec_may_return.set()
    for _ in range(1000):  # the spawn's remaining steps: attach, connect the channel, and then the check
        await asyncio.sleep(0)
        if supervisor.workers and next(iter(supervisor.workers)).retiring:
            break
    (relay,) = supervisor.workers
    assert relay.retiring
    assert relay.transport is not None and relay.transport.is_closing()  # its channel closed: the worker leaves
    assert not stopping.done()  # and the stop waits for it to be gone
    started[0].exit()
    await asyncio.wait_for(stopping, 5)
    assert supervisor.workers == {}
