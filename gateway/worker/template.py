"""``--preload``: the template process, which imports the app once and forks every worker from itself.

Started by the master as ``python -m gateway.worker template CONTROL_FD SETTINGS``. It imports the app (exiting
with ``EXIT_APP_LOAD`` if it cannot, exactly as a worker would), freezes the garbage collector's view of what the
import built (``gc.freeze``: a collection in a worker then never writes to those objects' headers, so their pages
stay shared), says READY on the control socket and waits. It never runs an event loop and never touches a client:
its only work is to fork.

For each FORK message (with the worker's channel and files sockets as descriptors) it forks a child, which closes
the template's own sockets and becomes a normal worker on that channel (``serve_channel``), the app already in
memory. The template answers with the child's pid and a pidfd for it, reaps its children and reports each exit
status, since the master is not their parent. When the master closes the control socket, the template forks no
more, waits for its children and exits. The messages are in ``gateway/contract/template.py``.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import select
import signal
import socket
import sys
from types import FrameType

import setproctitle

from gateway.contract.exits import EXIT_APP_LOAD, EXIT_OK
from gateway.contract.startup import WorkerSettings
from gateway.contract.template import MESSAGE_SIZE, ControlError, Exited, Fork, Forked, Ready, decode, encode
from gateway.log import configure_logging
from gateway.worker.process import import_app, prepare, serve_channel
from gateway.worker.wsgi import WSGIApp

log = logging.getLogger("gateway.template")


def _ignore(signum: int, frame: FrameType | None) -> None:
    """SIGCHLD's handler: the wake-up descriptor does the work, the select loop reaps."""


class Template:
    """The template's one loop: forks on request, reaps and reports its children."""

    def __init__(self, control: socket.socket, app: WSGIApp, settings: WorkerSettings) -> None:
        self.control = control
        self.app = app
        self.settings = settings
        self.children: set[int] = set()
        self._wake_read, self._wake_write = socket.socketpair()
        for sock in (self._wake_read, self._wake_write):
            sock.setblocking(False)

    def serve(self) -> int:
        signal.set_wakeup_fd(self._wake_write.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore)
        listening = True
        while listening or self.children:
            watched = [self._wake_read, self.control] if listening else [self._wake_read]
            readable, _, _ = select.select(watched, [], [])
            if self._wake_read in readable:
                with contextlib.suppress(BlockingIOError):
                    while self._wake_read.recv(4096):
                        pass
            self._reap()
            if listening and self.control in readable:
                listening = self._receive()
        return EXIT_OK

    def _receive(self) -> bool:
        """One control message; False once the master has closed its end."""
        try:
            data, fds, _, _ = socket.recv_fds(self.control, MESSAGE_SIZE, 2)
        except ConnectionResetError:
            data, fds = b"", []
        if not data:
            for fd in fds:
                os.close(fd)
            log.debug("the master closed the control socket: waiting for %d workers to exit", len(self.children))
            return False
        try:
            message = decode(data)
            if not isinstance(message, Fork) or len(fds) != 2:
                raise ControlError(f"expected a fork request with two descriptors, got {message} and {len(fds)}")
        except ControlError as err:
            log.error("%s; ignored", err)  # noqa: TRY400 - the master's bug: the message says it all
            for fd in fds:
                os.close(fd)
            return True
        pid = self._fork(fds[0], fds[1])
        pidfd = os.pidfd_open(pid)  # before any reaping: the pid cannot have been reused yet
        try:
            socket.send_fds(self.control, [encode(Forked(message.worker, pid))], [pidfd])
        except OSError:
            return False  # the master is gone; its children will see their channels close
        finally:
            os.close(pidfd)
        return True

    def _fork(self, channel_fd: int, files_fd: int) -> int:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                self.control.close()
                self._wake_read.close()
                self._wake_write.close()
                configure_logging(self.settings.log_level, role=f"worker {os.getpid()}")
                channel = socket.socket(fileno=channel_fd)
                files = socket.socket(fileno=files_fd)
                status = serve_channel(channel, files, self.app, self.settings)
            except BaseException:
                log.exception("a forked worker failed")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        os.close(channel_fd)
        os.close(files_fd)
        self.children.add(pid)
        return pid

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            with contextlib.suppress(OSError):
                self.control.send(encode(Exited(pid, os.waitstatus_to_exitcode(status))))


def main(argv: list[str]) -> int:
    control = socket.socket(fileno=int(argv[0]))
    control.setblocking(True)
    settings = WorkerSettings.decode(argv[1])
    prepare(settings, "template")
    setproctitle.setproctitle(f"gateway template [{settings.app}]")
    app = import_app(settings)
    if app is None:
        return EXIT_APP_LOAD
    gc.collect()
    gc.freeze()  # what the import built is never rescanned, so a worker's collections leave its pages shared
    try:
        control.send(encode(Ready(os.getpid())))
    except OSError:
        return EXIT_OK  # the master went away while we imported
    return Template(control, app, settings).serve()
