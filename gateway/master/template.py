"""``--preload`` seen from the master: the template processes and the workers they fork.

The master never forks (it runs the event loop) and never imports the app. It starts a template
(``python -m gateway.worker template``, see ``gateway/worker/template.py``) which imports the app once; each worker
is then asked of the template over its control socket, with the worker's channel and files sockets passed as
descriptors. The forked worker is the template's child, not ours, so :class:`ForkedWorker` stands in for the
``asyncio.subprocess.Process`` a spawned worker has: its exit is seen on a pidfd (which the template opened and
passed us, so it can never name a reused pid), its status comes from the template, which reaps it, and signals go
through the pidfd.

:class:`Preloader` keeps the templates: the current one, which forks every new worker, and older ones (after a
reload) until their last worker is gone. A reload imports the new code in a new template first; only when that
succeeds does it become current. A template that dies is replaced by a new one (importing the code on disk then);
its workers keep serving until they are retired, their exits seen on their pidfds, with no status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from gateway.contract.exits import EXIT_APP_LOAD
from gateway.contract.template import MESSAGE_SIZE, ControlError, Exited, Fork, Forked, Ready, decode, encode

log = logging.getLogger("gateway.pool")

#: After a worker's pidfd says it exited, how long to wait for the template's report of its status.
_STATUS_GRACE = 1.0
#: How long a template may take to answer a fork request.
_FORK_TIMEOUT = 10.0
#: A template that dies sooner than this after its start is replaced only after this delay.
_RESTART_DELAY = 1.0
_STOP_GRACE = 5.0


class TemplateFailed(Exception):
    """A template could not import the app (or died before it said it had); the message says which."""


class ForkedWorker:
    """A worker forked by a template, behind the part of ``asyncio.subprocess.Process`` the supervisor uses.

    ``returncode`` is None while it runs; ``wait`` returns the status the template reported, or None when the
    template was gone before it could report one.
    """

    def __init__(self, pid: int, pidfd: int, template: TemplateProcess) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.pid = pid
        self.template = template
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._status: int | None = None
        self._exited: asyncio.Future[None] = loop.create_future()
        self._reported: asyncio.Future[None] = loop.create_future()
        loop.add_reader(pidfd, self._on_exit)

    def _on_exit(self) -> None:
        self._loop.remove_reader(self._pidfd)
        if not self._exited.done():
            self._exited.set_result(None)

    def reported(self, status: int) -> None:
        """The template reaped it with ``status``."""
        self._status = status
        if not self._reported.done():
            self._reported.set_result(None)

    def template_gone(self) -> None:
        if not self._reported.done():
            self._reported.set_result(None)

    async def wait(self) -> int | None:
        await asyncio.shield(self._exited)
        if self._status is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reported), _STATUS_GRACE)
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
            self.returncode = self._status if self._status is not None else 0
            self.template.worker_gone(self)
        return self._status

    def send_signal(self, signum: int) -> None:
        if self._pidfd < 0 or self._exited.done():
            raise ProcessLookupError(self.pid)
        signal.pidfd_send_signal(self._pidfd, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class TemplateProcess:
    """One template: its process, its control socket (read by the loop), the workers it forked."""

    def __init__(self, process: asyncio.subprocess.Process, control: socket.socket, generation: int) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.process = process
        self.pid = process.pid
        self.control = control
        self.generation = generation
        self.started_at = loop.time()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.workers: dict[int, ForkedWorker] = {}
        #: Forks asked for and not answered yet, by the number the FORK message gave.
        self._forks: dict[int, asyncio.Future[ForkedWorker]] = {}
        self._next_fork = 0
        self.closed = False
        loop.add_reader(control.fileno(), self._readable)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def fork(self, channel: socket.socket, files: socket.socket) -> ForkedWorker:
        """A worker forked from this template on ``channel`` and ``files`` (the worker's ends; ours to close)."""
        await asyncio.shield(self.ready)
        if self.closed or not self.alive:
            raise OSError(f"template {self.pid} is gone")
        self._next_fork += 1
        number = self._next_fork
        answer = self._forks[number] = self._loop.create_future()
        try:
            socket.send_fds(self.control, [encode(Fork(number))], [channel.fileno(), files.fileno()])
            return await asyncio.wait_for(answer, _FORK_TIMEOUT)
        except TimeoutError:
            raise OSError(f"template {self.pid} did not fork a worker within {_FORK_TIMEOUT:g} s") from None
        finally:
            self._forks.pop(number, None)

    def _readable(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.control, MESSAGE_SIZE, 1)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            if not data:
                for fd in fds:
                    os.close(fd)
                self._disconnected()
                return
            try:
                self._handle(data, fds)
            except ControlError as err:
                log.error("template %d: %s", self.pid, err)  # noqa: TRY400 - our bug, not a traceback's matter
                for fd in fds:
                    os.close(fd)

    def _handle(self, data: bytes, fds: list[int]) -> None:
        message = decode(data)
        if isinstance(message, Ready):
            if not self.ready.done():
                self.ready.set_result(None)
        elif isinstance(message, Forked) and len(fds) == 1:
            worker = ForkedWorker(message.pid, fds[0], self)
            self.workers[message.pid] = worker
            answer = self._forks.get(message.worker)
            if answer is not None and not answer.done():
                answer.set_result(worker)
            else:  # asked for by a fork() that gave up: the worker's channel is closed, so it exits at once
                log.warning("template %d forked worker %d too late; it exits", self.pid, message.pid)
        elif isinstance(message, Exited):
            reaped = self.workers.get(message.pid)
            if reaped is not None:
                reaped.reported(message.status)
        else:
            raise ControlError(f"unexpected {message} with {len(fds)} descriptors")

    def _disconnected(self) -> None:
        """The template closed its end: it exited (or is exiting)."""
        self.close()
        for answer in self._forks.values():
            if not answer.done():
                answer.set_exception(OSError(f"template {self.pid} is gone"))

    def worker_gone(self, worker: ForkedWorker) -> None:
        self.workers.pop(worker.pid, None)

    def close(self) -> None:
        """Ask no more of it: it waits for its workers to exit, then exits (their statuses are not reported)."""
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.control.fileno())
            self.control.close()
        for worker in self.workers.values():
            worker.template_gone()


class Preloader:
    """The templates of a ``--preload`` pool: the current one forks every new worker; a reload starts another."""

    def __init__(self, encoded_settings: str, app: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._settings = encoded_settings
        self._app = app
        self.current: TemplateProcess | None = None
        self.templates: list[TemplateProcess] = []
        self._generations = 0
        self.running = True
        self._watchers: set[asyncio.Task[None]] = set()
        self._replacing: asyncio.Task[TemplateProcess] | None = None

    async def start(self) -> None:
        """The first template, its app imported; TemplateFailed if it cannot be."""
        self.current = await self._load(self._generations)

    async def load_new(self) -> int | None:
        """A new template with freshly imported code becomes current; its generation, or None when a newer one
        was asked for meanwhile and got there first. TemplateFailed when the new code cannot be imported: the
        current template stays."""
        self._generations += 1
        template = await self._load(self._generations)
        current = self.current
        if current is not None and current.generation > template.generation:
            template.close()
            return None
        self.current = template
        if current is not None:
            self._release(current)
        return template.generation

    async def fork(self, channel: socket.socket, files: socket.socket) -> tuple[ForkedWorker, int]:
        """A new worker (and its code generation), forked from the current template (restarted if it died)."""
        template = self.current
        if template is None or template.closed or (template.ready.done() and not template.alive):
            template = await self._replace(template.generation if template is not None else self._generations)
        worker = await template.fork(channel, files)
        return worker, template.generation

    def _replace(self, generation: int, delay: float = 0.0) -> asyncio.Future[TemplateProcess]:
        """The current template's replacement (one at a time: a death and a fork asking together share it)."""
        if self._replacing is None or self._replacing.done():

            async def replace() -> TemplateProcess:
                if delay:
                    await asyncio.sleep(delay)
                template = await self._load(generation)
                current = self.current
                if current is not None and current is not template and current.alive and not current.closed:
                    # A reload's template got there meanwhile, with newer code: it forks from now on.
                    template.close()
                    return current
                if self.running:
                    self.current = template
                return template

            self._replacing = self._loop.create_task(replace())
        return asyncio.shield(self._replacing)

    async def _load(self, generation: int) -> TemplateProcess:
        template = await self._start(generation)
        ready = asyncio.ensure_future(asyncio.shield(template.ready))
        exited = asyncio.ensure_future(template.process.wait())
        await asyncio.wait((ready, exited), return_when=asyncio.FIRST_COMPLETED)
        if template.ready.done() and template.alive:
            exited.cancel()
            log.info("template %d imported %s; workers are forked from it", template.pid, self._app)
            self._watch(template)
            return template
        ready.cancel()
        status = await exited
        template.close()
        if not template.ready.done():
            template.ready.set_exception(TemplateFailed("the template is gone"))
            template.ready.exception()  # retrieved: nobody else waits on it
        self.templates.remove(template)
        reason = "could not be loaded" if status == EXIT_APP_LOAD else f"was not loaded (template exited {status})"
        raise TemplateFailed(f"the application {self._app!r} {reason} (see the template's error above)")

    async def _start(self, generation: int) -> TemplateProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.worker",
                "template",
                str(theirs.fileno()),
                self._settings,
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        template = TemplateProcess(process, ours, generation)
        self.templates.append(template)
        return template

    def _watch(self, template: TemplateProcess) -> None:
        async def watch() -> None:
            status = await template.process.wait()
            template._disconnected()
            if template in self.templates:
                self.templates.remove(template)
            if self.running and template is self.current:
                describe = f"signal {-status}" if status < 0 else f"status {status}"
                log.warning(
                    "template %d exited with %s; its %d workers keep serving until retired, and a new template "
                    "is started for the next ones",
                    template.pid,
                    describe,
                    len(template.workers),
                )
                young = self._loop.time() - template.started_at < _RESTART_DELAY * 5
                try:
                    await self._replace(template.generation, _RESTART_DELAY if young else 0.0)
                except TemplateFailed as err:
                    log.critical("%s; no new worker can be started until it can", err)

        task = self._loop.create_task(watch())
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    def _release(self, template: TemplateProcess) -> None:
        """An old template: closed now (it exits once its workers have)."""
        if template is not self.current:
            template.close()

    async def stop(self) -> None:
        """Close every template and wait for them to exit (each once its workers have)."""
        self.running = False
        for template in list(self.templates):
            template.close()
        deadline = self._loop.time() + _STOP_GRACE
        for template in list(self.templates):
            try:
                await asyncio.wait_for(template.process.wait(), max(deadline - self._loop.time(), 0.01))
            except TimeoutError:
                log.warning("template %d did not stop within %.0f s; killing it", template.pid, _STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    template.process.kill()
                await template.process.wait()
        pending = [*self._watchers, *([self._replacing] if self._replacing is not None else [])]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
