"""The master's side of --preload on fakes: the test plays the template on the other end of the control socket.

What is decided here without a real template: a fork request carries the worker's two descriptors, the answer
becomes a ForkedWorker whose exit is seen on its pidfd and whose status is the one the template reported; a
template that goes away fails the forks still waiting and leaves its workers' statuses unknown (at once, not
after a grace); signals go through the pidfd; a malformed message is one log line and nothing else changes.
The forked "workers" are ``sleep`` processes of the test's own, whose pidfds the fake template passes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator

import pytest

from gateway.contract.exits import EXIT_APP_LOAD
from gateway.contract.template import ControlError, Exited, Fork, Forked, Ready, decode, encode
from gateway.master import template as template_module
from gateway.master.template import _STATUS_GRACE, ForkedWorker, Preloader, TemplateFailed, TemplateProcess


class _FakeProcess:
    """The template's asyncio process handle, which these tests never start."""

    def __init__(self) -> None:
        self.pid = 4242
        self.returncode: int | None = None


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "30"])
    yield process
    process.kill()
    process.wait()


def test_every_message_round_trips_and_garbage_is_a_control_error() -> None:
    for message in (Ready(1), Fork(2), Forked(3, 4), Exited(5, -9)):
        assert decode(encode(message)) == message
    for garbage in (b"", b"{", b"[]", b'{"what": 1}', b'{"forked": 1}', b'{"fork": "x"}'):
        with pytest.raises(ControlError):
            decode(garbage)


async def _until(predicate: Callable[[], bool], what: str) -> None:
    """Let the loop run until ``predicate`` holds (each turn reads what the sockets hold), within 5 s."""
    deadline = asyncio.get_running_loop().time() + 5
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within 5 s: {what}")
        await asyncio.sleep(0)


def _running(worker: ForkedWorker) -> bool:
    return worker.returncode is None


async def _template() -> tuple[TemplateProcess, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    template = TemplateProcess(_FakeProcess(), ours, generation=0)  # type: ignore[arg-type]
    theirs.send(encode(Ready(4242)))
    await asyncio.wait_for(template.ready, 5)
    return template, theirs


async def _forked(template: TemplateProcess, peer: socket.socket, pid: int) -> tuple[ForkedWorker, list[int]]:
    """A fork asked of ``template``, answered by the test as the template would; (worker, descriptors got)."""
    channel, channel_peer = socket.socketpair()
    files, files_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    asking = asyncio.ensure_future(template.fork(channel_peer, files_peer))
    loop = asyncio.get_running_loop()
    data, fds, _, _ = await loop.run_in_executor(None, socket.recv_fds, peer, 4096, 2)
    message = decode(data)
    assert isinstance(message, Fork)
    pidfd = os.pidfd_open(pid)
    socket.send_fds(peer, [encode(Forked(message.worker, pid))], [pidfd])
    os.close(pidfd)
    worker = await asyncio.wait_for(asking, 5)
    for sock in (channel, channel_peer, files, files_peer):
        sock.close()
    return worker, fds


async def test_a_fork_passes_two_descriptors_and_its_worker_reports_the_templates_status(
    sleeper: subprocess.Popen[bytes],
) -> None:
    template, peer = await _template()
    worker, fds = await _forked(template, peer, sleeper.pid)
    assert len(fds) == 2
    for fd in fds:
        os.close(fd)
    assert worker.pid == sleeper.pid
    assert _running(worker)
    worker.terminate()  # through the pidfd
    sleeper.wait(5)  # we are its parent here; the real template reaps and reports
    peer.send(encode(Exited(sleeper.pid, -signal.SIGTERM)))
    assert await asyncio.wait_for(worker.wait(), 5) == -signal.SIGTERM
    assert worker.returncode == -signal.SIGTERM
    assert sleeper.pid not in template.workers
    with pytest.raises(ProcessLookupError):
        worker.kill()
    template.close()
    peer.close()


async def test_a_template_that_goes_away_fails_waiting_forks_and_leaves_statuses_unknown(
    sleeper: subprocess.Popen[bytes],
) -> None:
    template, peer = await _template()
    worker, fds = await _forked(template, peer, sleeper.pid)
    for fd in fds:
        os.close(fd)
    channel, files = socket.socketpair(), socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    asking = asyncio.ensure_future(template.fork(channel[1], files[1]))
    loop = asyncio.get_running_loop()
    _, sent, _, _ = await loop.run_in_executor(None, socket.recv_fds, peer, 4096, 2)  # the request is out
    for fd in sent:
        os.close(fd)
    peer.close()  # the template dies before it answers
    with pytest.raises(OSError, match="is gone"):
        await asyncio.wait_for(asking, 5)
    sleeper.kill()  # its orphaned worker ends later: no status can come now
    sleeper.wait(5)
    started = loop.time()
    assert await asyncio.wait_for(worker.wait(), 5) is None
    assert loop.time() - started < _STATUS_GRACE
    with pytest.raises(OSError, match="is gone"):
        await template.fork(channel[1], files[1])
    for sock in (*channel, *files):
        sock.close()


async def test_a_malformed_message_is_one_log_line_and_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    template, peer = await _template()

    def errors() -> list[str]:
        return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]

    with caplog.at_level(logging.ERROR, "gateway.pool"):
        peer.send(b'{"no": "such message"}')
        peer.send(encode(Fork(1)))  # a message only the master sends
        await _until(lambda: len(errors()) >= 2, "both messages read")
    assert len(errors()) == 2
    assert "unknown control message" in errors()[0]
    assert "unexpected Fork" in errors()[1]
    assert not template.closed
    template.close()
    peer.close()


class _ScriptedProcess:
    """A template process whose exit the test decides."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = asyncio.Event()

    def exit(self, status: int) -> None:
        self.returncode = status
        self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        self.exit(-signal.SIGKILL)


class _ScriptedPreloader(Preloader):
    """A Preloader whose templates are fakes: the test holds each one's other end and says READY or exits."""

    def __init__(self) -> None:
        super().__init__("{}", "app:app")
        self.started: list[tuple[TemplateProcess, _ScriptedProcess, socket.socket]] = []
        self.started_one = asyncio.Event()

    async def _start(self, generation: int) -> TemplateProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        process = _ScriptedProcess(1000 + len(self.started))
        template = TemplateProcess(process, ours, generation)  # type: ignore[arg-type]
        self.templates.append(template)
        self.started.append((template, process, theirs))
        self.started_one.set()
        return template

    async def nth(self, index: int) -> tuple[TemplateProcess, _ScriptedProcess, socket.socket]:
        while len(self.started) <= index:
            self.started_one.clear()
            await asyncio.wait_for(self.started_one.wait(), 5)
        return self.started[index]

    async def finish(self) -> None:
        """Every fake template exits and its socket closes; the preloader stops (its watchers end)."""
        for _, process, peer in self.started:
            peer.close()
            if process.returncode is None:
                process.exit(0)
        await self.stop()

    async def ready(self, index: int) -> TemplateProcess:
        template, _, peer = await self.nth(index)
        peer.send(encode(Ready(template.pid)))
        return template


async def test_a_reload_that_a_later_one_overtakes_is_closed_and_the_later_one_forks() -> None:
    preloader = _ScriptedPreloader()
    starting = asyncio.ensure_future(preloader.start())
    first = await preloader.ready(0)
    await starting
    slow = asyncio.ensure_future(preloader.load_new())
    quick = asyncio.ensure_future(preloader.load_new())
    await preloader.nth(2)
    newest = await preloader.ready(2)
    assert await asyncio.wait_for(quick, 5) == 2
    assert preloader.current is newest
    assert first.closed  # the old one exits once its workers have
    overtaken = await preloader.ready(1)
    assert await asyncio.wait_for(slow, 5) is None
    assert overtaken.closed
    assert preloader.current is newest
    await preloader.finish()


async def test_a_reload_whose_code_cannot_be_imported_changes_nothing() -> None:
    preloader = _ScriptedPreloader()
    starting = asyncio.ensure_future(preloader.start())
    first = await preloader.ready(0)
    await starting
    reloading = asyncio.ensure_future(preloader.load_new())
    _, process, _ = await preloader.nth(1)
    process.exit(EXIT_APP_LOAD)
    with pytest.raises(TemplateFailed, match="could not be loaded"):
        await asyncio.wait_for(reloading, 5)
    assert preloader.current is first
    assert not first.closed
    await preloader.finish()


async def test_a_dead_templates_replacement_gives_way_to_a_reload_that_got_there_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(template_module, "_RESTART_DELAY", 0.0)
    preloader = _ScriptedPreloader()
    starting = asyncio.ensure_future(preloader.start())
    first = await preloader.ready(0)
    await starting
    reloading = asyncio.ensure_future(preloader.load_new())
    await preloader.nth(1)  # the reload's template is importing
    _, first_process, first_peer = preloader.started[0]
    first_peer.close()
    first_process.exit(-signal.SIGKILL)  # the watcher starts a replacement, importing the code on disk
    await preloader.nth(2)
    reloaded = await preloader.ready(1)
    assert await asyncio.wait_for(reloading, 5) == 1
    replacement = await preloader.ready(2)  # the replacement finishes last
    await _until(lambda: replacement.closed, "the replacement, second, closed")
    assert preloader.current is reloaded
    assert first is not preloader.current
    await preloader.finish()


async def test_forks_asked_while_the_template_is_dead_share_one_replacement() -> None:
    preloader = _ScriptedPreloader()
    starting = asyncio.ensure_future(preloader.start())
    await preloader.ready(0)
    await starting
    preloader.running = False  # no watcher-driven restart: the forks alone must start one
    _, process, peer = preloader.started[0]
    peer.close()
    process.exit(1)
    await _until(lambda: preloader.current is not None and preloader.current.closed, "the dead template seen")
    preloader.running = True
    pairs = [socket.socketpair() for _ in range(4)]
    forks = [asyncio.ensure_future(preloader.fork(pairs[i][0], pairs[i + 1][0])) for i in (0, 2)]
    replacement = await preloader.ready(1)
    await _until(lambda: preloader.current is replacement, "the replacement taken in")
    assert len(preloader.started) == 2  # one replacement for both forks
    for fork in forks:
        fork.cancel()
    await asyncio.gather(*forks, return_exceptions=True)
    for pair in pairs:
        for sock in pair:
            sock.close()
    await preloader.finish()
