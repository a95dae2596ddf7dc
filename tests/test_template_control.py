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
from collections.abc import Iterator

import pytest

from gateway.contract.template import ControlError, Exited, Fork, Forked, Ready, decode, encode
from gateway.master.template import _STATUS_GRACE, ForkedWorker, TemplateProcess


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
    loop = asyncio.get_running_loop()

    def errors() -> list[str]:
        return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]

    with caplog.at_level(logging.ERROR, "gateway.pool"):
        peer.send(b'{"no": "such message"}')
        peer.send(encode(Fork(1)))  # a message only the master sends
        deadline = loop.time() + 5
        while len(errors()) < 2 and loop.time() < deadline:
            await asyncio.sleep(0)  # the loop's turn to read the control socket
    assert len(errors()) == 2
    assert "unknown control message" in errors()[0]
    assert "unexpected Fork" in errors()[1]
    assert not template.closed
    template.close()
    peer.close()
