"""The worker processes: started, watched, replaced, recycled and reloaded.

The master starts each worker as a fresh interpreter (``python -m gateway.worker``; a process running an event loop
is never forked) with a unix socket pair as its channel, whose master end is the worker's :class:`Relay`. With
``--preload`` the worker is instead forked by a template process that imported the app once
(``gateway/master/template.py``); the channel is made here all the same, and the rest of the pool cannot tell. The
:class:`Scheduler` decides which worker runs which request; the supervisor carries out what changes the pool's
shape and answers on the pool's behalf (502 for the request a dead worker ran, 503 when the queue is full or a
request waited too long, 504 past --timeout).

Every change of shape (a death, a recycle, a reload, growing or shrinking) goes through one rule: ``_replenish``
starts workers until the workers in rotation reach the scheduler's target; a worker leaves rotation by
``_retire``, which closes its channel once it is idle. A replacement therefore always starts before the worker it
replaces stops taking requests, and no request is ever dropped by the pool's own decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any, Protocol

from gateway.config.settings import Config
from gateway.contract.channel import ChannelError
from gateway.contract.exits import EXIT_APP_LOAD
from gateway.contract.startup import WorkerSettings
from gateway.loop.accesslog import ResponseLog
from gateway.loop.counters import COUNTERS
from gateway.loop.relay import Relay, RequestDone, State
from gateway.loop.request import Request, respond_error
from gateway.loop.scheduler import Scheduler
from gateway.loop.session_hook import worker_session_settings
from gateway.master.template import Preloader, TemplateFailed

log = logging.getLogger("gateway.pool")

#: The socket pair's kernel buffers: a 64 KiB response fits in one write and one wake-up of the loop.
_CHANNEL_BUFFER = 1 << 20
#: A worker that dies sooner than this after starting is restarted after a growing delay, up to the maximum.
_STABLE_AFTER = 5.0
_MAX_BACKOFF = 5.0
_STOP_GRACE = 5.0
#: How often the supervisor looks at running requests, the queue and idle workers.
_TICK = 0.25
#: After --timeout, a worker gets SIGTERM, then SIGKILL this much later.
_KILL_GRACE = 2.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class AppLoadFailed(Exception):
    """The application could not be imported by a worker; the message says why."""


class WorkerHandle(Protocol):
    """What the supervisor does with a worker's process: an ``asyncio.subprocess.Process`` it started, or a
    ``ForkedWorker`` a --preload template forked (whose status is None when its template was gone first)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int | None: ...

    def send_signal(self, signum: int) -> None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class WorkerProcess:
    """One worker's process: its handle, when and with which code generation it started, and how it ends."""

    __slots__ = ("generation", "kill_at", "killed", "pid", "process", "ready", "relay", "started_at")

    def __init__(self, process: WorkerHandle, relay: Relay, started_at: float, generation: int) -> None:
        self.process = process
        self.pid = process.pid
        self.relay = relay
        self.started_at = started_at
        self.generation = generation
        #: It sent READY: the app imported.
        self.ready = False
        #: Retired for running a request past --timeout; it is stopped (SIGTERM) at ``kill_at`` or as soon as
        #: only answered requests are left running on it (its other threads finished), whichever comes first.
        self.killed = False
        self.kill_at = 0.0

    def rss(self) -> int:
        """Resident memory in bytes, from /proc (0 where unavailable)."""
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as statm:
                return int(statm.read().split()[1]) * _PAGE_SIZE
        except (OSError, IndexError, ValueError):
            return 0


class Supervisor:
    """The workers' life cycle and the operator's actions on them; the pool the dispatcher submits to.

    Built inside the running event loop (its clock is the loop's). ``submit`` and ``cancel`` are the scheduler's
    own methods, so a request goes from the dispatcher to the scheduler in one call.
    """

    def __init__(self, config: Config, access_log: ResponseLog | None = None) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.config = config
        self.access_log = access_log
        self.on_request_done: RequestDone | None = None
        self.scheduler: Scheduler[Relay] = Scheduler(
            clock=loop.time,
            refuse=self._refuse,
            retire=self._recycle,
            grow=self._grow,
            workers=config.workers,
            workers_max=config.workers_max,
            queue_size=config.queue_size,
            queue_timeout=config.queue_timeout,
            timeout=config.timeout,
            pipeline=config.pipeline,
            scale_down_after=config.scale_down_after,
        )
        self.submit = self.scheduler.submit
        self.cancel = self.scheduler.cancel
        self.workers: dict[Relay, WorkerProcess] = {}
        self.generation = 0
        self.running = False
        self._respawn_delay = 0.0
        self._startup: asyncio.Future[None] | None = None
        self._starting = 0
        self._spawning = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._tick: asyncio.Task[None] | None = None
        self.worker_settings = WorkerSettings(
            app=config.app,
            app_dir=os.getcwd(),
            python_path=tuple(os.path.abspath(directory) for directory in config.pythonpath),
            script_name=config.script_name,
            log_level=config.log_level,
            debug=config.debug,
            scheduling=config.worker_scheduling,
            session=worker_session_settings(config),
            threads=config.threads,
        )
        self._encoded_settings = self.worker_settings.encode()
        #: --preload: the template processes that import the app and fork the workers.
        self.preloader = Preloader(self._encoded_settings, config.app) if config.preload else None
        self.fatal: asyncio.Future[str] = loop.create_future()

    def draw_max_requests(self) -> int:
        """A worker's request budget: --max-requests plus jitter, so workers do not all recycle at once."""
        if not self.config.max_requests:
            return 0
        return self.config.max_requests + random.randint(0, self.config.max_requests_jitter)  # noqa: S311 - spreading, not secrecy

    def _serving(self) -> list[WorkerProcess]:
        return [self.workers[relay] for relay in self.scheduler.in_rotation()]

    # -- life cycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the workers and wait until each has imported the app; raise AppLoadFailed if it cannot."""
        self.running = True
        self._startup = self._loop.create_future()
        self._starting = self.scheduler.target
        if self.preloader is not None:
            try:
                await self.preloader.start()
            except TemplateFailed as err:
                raise AppLoadFailed(str(err)) from None
            except OSError as err:
                raise AppLoadFailed(f"cannot start the --preload template ({sys.executable}): {err}") from None
        for _ in range(self.scheduler.target):
            try:
                await self._spawn()
            except OSError as err:
                raise AppLoadFailed(
                    f"cannot start a worker ({sys.executable} -m gateway.worker): {err}; with --user, that user "
                    "must be able to run the interpreter and read the app"
                ) from None
        try:
            await self._startup
        finally:
            self._startup = None
        self._tick = self._loop.create_task(self._supervise())

    def attach(self, process: WorkerHandle, generation: int | None = None) -> Relay:
        """Take a started worker process into the pool; its channel's protocol is the relay returned.

        It gets requests once its READY frame arrives. ``generation``: the code it runs (the pool's newest unless
        said: a --preload worker runs its template's).
        """
        loop = self._loop
        relay = Relay(
            self,
            self.scheduler,
            process.pid,
            max_requests=self.draw_max_requests(),
            threads=self.config.threads,
            clock=loop.time,
            call_soon=loop.call_soon,
        )
        generation = self.generation if generation is None else generation
        self.workers[relay] = WorkerProcess(process, relay, loop.time(), generation)
        COUNTERS.worker_started(process.pid)
        self.scheduler.add(relay)
        self.scheduler.starting += 1  # until its READY frame, or its death
        return relay

    async def _spawn(self) -> None:
        """Start one worker process and take it into the pool."""
        loop = self._loop
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (parent, child):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _CHANNEL_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _CHANNEL_BUFFER)
        # File responses' descriptors: one per message (see gateway/contract/channel.py).
        files_parent, files_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        files_parent.setblocking(False)
        process: WorkerHandle
        generation = None
        try:
            if self.preloader is not None:
                process, generation = await self.preloader.fork(child, files_child)
            else:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "gateway.worker",
                    str(child.fileno()),
                    self._encoded_settings,
                    str(files_child.fileno()),
                    pass_fds=(child.fileno(), files_child.fileno()),
                    stdin=asyncio.subprocess.DEVNULL,
                )
        except BaseException:
            files_parent.close()
            parent.close()
            raise
        finally:
            child.close()
            files_child.close()
        relay = self.attach(process, generation)
        relay.files = files_parent
        await loop.connect_accepted_socket(lambda: relay, parent)
        self._background(self._reap(self.workers[relay]))
        if not self.running:
            # Its spawn began before ``stop`` and ended after ``stop`` told every worker it knew of to leave (a
            # replacement for a worker recycled just before SIGTERM): told now, or nothing ever would.
            relay.retiring = True
            relay.close()

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _replenish(self) -> None:
        """Start workers until those in rotation (and those starting) reach the target."""
        if not self.running:
            return
        missing = self.scheduler.target - len(self.scheduler.in_rotation()) - self._spawning
        for _ in range(max(missing, 0)):
            self._spawn_one(self._respawn_delay)

    def _spawn_one(self, delay: float = 0.0) -> None:
        self._spawning += 1
        self.scheduler.starting += 1  # a worker on its way: the pool does not grow again meanwhile

        async def spawn() -> None:
            try:
                if delay:
                    await asyncio.sleep(delay)
                if self.running:
                    await self._spawn()
            except (OSError, TemplateFailed) as err:
                if isinstance(err, TemplateFailed) and not self.workers:
                    if not self.fatal.done():
                        self.fatal.set_result(str(err))
                    return
                log.error("cannot start a worker: %s; trying again in %g s", err, _MAX_BACKOFF)  # noqa: TRY400
                self._loop.call_later(_MAX_BACKOFF, self._replenish)
            finally:
                self._spawning -= 1
                self.scheduler.starting -= 1  # counted by attach() from the moment the process exists

        self._background(spawn())

    async def _reap(self, worker: WorkerProcess) -> None:
        status = await worker.process.wait()
        relay = worker.relay
        if relay.transport is not None:
            relay.transport.close()
        relay.lost()
        self.workers.pop(relay, None)
        self.scheduler.remove(relay)
        COUNTERS.worker_gone(worker.pid)
        was_starting = not worker.ready
        if was_starting:
            self.scheduler.starting -= 1
        if status == EXIT_APP_LOAD and was_starting:
            self._app_load_failed(worker)
            return
        if not self.running:
            return
        if not relay.retiring:
            if status is None:
                describe = "an unknown status (its --preload template was gone)"
            else:
                describe = f"signal {-status}" if status < 0 else f"status {status}"
            log.warning("worker %d exited with %s; starting a replacement", worker.pid, describe)
            COUNTERS.worker_restarted("died")
            if self._loop.time() - worker.started_at < _STABLE_AFTER:
                self._respawn_delay = min(max(self._respawn_delay * 2, 0.1), _MAX_BACKOFF)
            else:
                self._respawn_delay = 0.0
        self._replenish()

    def _app_load_failed(self, worker: WorkerProcess) -> None:
        message = f"the application {self.config.app!r} could not be loaded (see the worker's error above)"
        serving = [w for w in self._serving() if w.ready]
        if self._startup is not None and not self._startup.done():
            self._startup.set_exception(AppLoadFailed(message))
        elif worker.generation > 0 and serving:
            log.critical("%s; reload abandoned, the running workers keep serving the previous code", message)
            # Back to the newest generation that actually serves, so no more of the old workers are retired.
            self.generation = max(w.generation for w in serving)
        elif not self.fatal.done() and not self.workers:
            self.fatal.set_result(message)
        else:
            log.critical("%s; not restarting that worker", message)

    def _retire_superseded(self, ready: WorkerProcess) -> None:
        """A worker is ready: one worker running older code leaves rotation, idle ones first.

        Also when ``ready`` itself was superseded before it got there (reloads quicker than a worker starts):
        it still replaces one older than itself, and with none left it leaves in turn if the pool is above its
        target, so a burst of reloads ends with the target's number of workers, all on the newest code.
        """
        old = [w for w in self._serving() if w.generation < ready.generation]
        if old:
            old.sort(key=lambda w: (w.relay.state is not State.IDLE, w.generation))
            COUNTERS.worker_restarted("reload")
            self._retire(old[0].relay, "replaced by a reloaded worker", replace=False)
        elif ready.generation < self.generation and len(self.scheduler.in_rotation()) > self.scheduler.target:
            self._retire(ready.relay, "its code was reloaded again before it was ready", replace=False)

    def _recycle(self, relay: Relay, reason: str) -> None:
        """The scheduler's retirement: a worker that served its --max-requests."""
        if not relay.retiring:
            COUNTERS.worker_restarted("max-requests")
        self._retire(relay, reason)

    def _retire(self, relay: Relay, reason: str, *, replace: bool = True) -> None:
        if relay.retiring:
            return
        log.info("worker %d leaves the pool: %s", relay.pid, reason)
        if self.scheduler.take_out(relay):
            relay.close()
        if replace:
            self._replenish()

    async def stop(self, timeout: float) -> None:
        """Let running and queued requests finish (up to ``timeout``), then stop every worker."""
        loop = self._loop
        scheduler = self.scheduler
        deadline = loop.time() + timeout
        while (scheduler.queue or scheduler.busy) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.running = False
        if self._tick is not None:
            self._tick.cancel()
        for request in scheduler.queue:
            self.answer(request, "503 Service Unavailable", retry_after=True)
        scheduler.queue.clear()
        for worker in list(self.workers.values()):
            worker.relay.retiring = True
            if worker.relay.state is State.BUSY and timeout <= 0:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.terminate()
            worker.relay.close()
        stop_deadline = loop.time() + _STOP_GRACE
        for worker in list(self.workers.values()):
            try:
                await asyncio.wait_for(worker.process.wait(), max(stop_deadline - loop.time(), 0.01))
            except TimeoutError:
                log.warning("worker %d did not stop within %.0f s; killing it", worker.pid, _STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGKILL)
                await worker.process.wait()
        while self._tasks:  # spawns that end now start their worker's reap: wait for those too
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.preloader is not None:
            await self.preloader.stop()

    # -- what relays report ------------------------------------------------------------------------------------
    def relay_ready(self, relay: Relay, info: dict[str, Any]) -> None:
        worker = self.workers[relay]
        if not worker.ready:
            worker.ready = True
            self.scheduler.starting -= 1
        log.debug("worker %d ready", info.get("pid", worker.pid))
        if self._startup is not None and not self._startup.done():
            self._starting -= 1
            if self._starting == 0:
                self._startup.set_result(None)
        self._retire_superseded(worker)
        if not relay.retiring:
            self.scheduler.lane_idle(relay)

    def relay_lost(self, relay: Relay, running: list[Request], waiting: list[Request]) -> None:
        if waiting:
            log.warning("worker %d is gone with %d requests it had not started: they wait for another worker",
                        relay.pid, len(waiting))  # fmt: skip
            if self.running:
                self.scheduler.requeue(waiting)
            else:
                for request in waiting:
                    self.answer(request, "503 Service Unavailable", retry_after=True)
        for request in running:
            log.error(
                "worker %d died while running %s %s",
                relay.pid,
                request.params.get("REQUEST_METHOD"),
                request.params.get("REQUEST_URI", ""),
            )
            self._fail(request, "502 Bad Gateway", relay.pid)

    def relay_broken(self, relay: Relay, error: ChannelError) -> None:
        log.error("worker %d: %s; stopping it", relay.pid, error)
        worker = self.workers.get(relay)
        if worker is not None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()

    def _fail(self, request: Request, status: str, pid: int) -> None:
        """End ``request``, which worker ``pid`` will never finish: ``status`` if its head is not out, else cut."""
        if request.sink.client_gone:
            request.release()
        elif request.head_sent:
            request.release()
            request.sink.abort()
        else:
            self.answer(request, status, pid=pid)

    # -- operator actions (signals) ----------------------------------------------------------------------------
    def reload(self) -> None:
        """Start a full set of workers importing the app afresh; each one ready retires one running old code."""
        if not self.running:
            return
        if self.preloader is not None:
            log.info("reloading: a new template process imports the app afresh")
            self._background(self._reload_preloaded(self.preloader))
            return
        self.generation += 1
        log.info("reloading: starting %d workers with freshly imported code", self.scheduler.target)
        for _ in range(self.scheduler.target):
            self._spawn_one()

    async def _reload_preloaded(self, preloader: Preloader) -> None:
        """--preload: new workers are forked only once the new template has imported the new code; each one ready
        retires one running older code, as without --preload. If it cannot be imported, nothing changes."""
        try:
            generation = await preloader.load_new()
        except TemplateFailed as err:
            log.critical("%s; reload abandoned, the running workers keep serving the previous code", err)
            return
        except OSError as err:
            log.critical("cannot start a new template (%s); reload abandoned", err)
            return
        if generation is None or not self.running:
            return  # a later reload got there first
        self.generation = generation
        log.info("reloading: forking %d workers from the new template", self.scheduler.target)
        for _ in range(self.scheduler.target):
            self._spawn_one()

    def add_worker(self) -> None:
        self.scheduler.more()
        log.info("one more worker requested: the pool's target is now %d", self.scheduler.target)
        self._replenish()

    def remove_worker(self) -> None:
        if self.scheduler.target <= 1:
            log.warning("one fewer worker requested, but the pool keeps at least one")
            return
        relay = self.scheduler.fewer()
        if relay is not None:
            self._retire(relay, f"one fewer worker requested (target {self.scheduler.target})", replace=False)

    # -- supervision -------------------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        while self.running:
            await asyncio.sleep(_TICK)
            self.tick(self._loop.time())

    def tick(self, now: float) -> None:
        """One look at running requests (--timeout), memory (--max-rss), the queue and idle workers."""
        scheduler = self.scheduler
        for relay, request in scheduler.overdue(now):
            self._answer_overdue(relay, request, now)
        self._stop_overdue_workers(now)
        self._enforce_max_rss()
        for request in scheduler.expired(now):
            log.warning(
                "%s %s waited %.1f s for a worker (--queue-timeout %g s): answered 503",
                request.params.get("REQUEST_METHOD", "-"),
                request.params.get("REQUEST_URI", "-"),
                now - request.received_at,
                scheduler.queue_timeout,
            )
            self.answer(request, "503 Service Unavailable", retry_after=True)
        surplus = scheduler.idle_surplus(now)
        if surplus is not None:
            after = scheduler.scale_down_after
            self._retire(surplus, f"idle for {after:g} s (pool target {scheduler.target})", replace=False)

    def _answer_overdue(self, relay: Relay, request: Request, now: float) -> None:
        """``request`` ran past --timeout: it alone is answered 504; its worker leaves the pool and is stopped
        once its other threads are done (at once with one thread), or after --graceful-timeout."""
        worker = self.workers.get(relay)
        if worker is None:
            return
        request.answered = True  # its late output is dropped; requests behind it are requeued if the process goes
        params = request.params
        log.error(
            "worker %d ran %s %s for %.1f s, over --timeout %g s: answered 504, %s",
            worker.pid,
            params.get("REQUEST_METHOD", "-"),
            params.get("REQUEST_URI", "-"),
            now - request.started_at,
            self.config.timeout,
            "killing and replacing the worker"
            if relay.threads == 1
            else "retiring the worker once its other "
            f"threads are done (within --graceful-timeout {self.config.graceful_timeout:g} s)",
        )
        self._fail(request, "504 Gateway Timeout", worker.pid)
        if not worker.killed:
            COUNTERS.worker_restarted("timeout", worker.pid)
            worker.killed = True
            worker.kill_at = now + (self.config.graceful_timeout if relay.threads > 1 else 0.0)
            self._retire(relay, "a request ran past --timeout")

    def _stop_overdue_workers(self, now: float) -> None:
        """SIGTERM (then SIGKILL) the workers retired for --timeout whose other requests are done, or late."""
        for worker in list(self.workers.values()):
            if not worker.killed or worker.kill_at < 0:
                continue
            relay = worker.relay
            if now >= worker.kill_at or all(request.answered for request in relay.running):
                worker.kill_at = -1.0  # stopped: not again
                with contextlib.suppress(ProcessLookupError):
                    worker.process.terminate()
                self._loop.call_later(_KILL_GRACE, self._kill, worker)

    @staticmethod
    def _kill(worker: WorkerProcess) -> None:
        if worker.process.returncode is None:
            log.warning("worker %d ignored SIGTERM for %.0f s; sending SIGKILL", worker.pid, _KILL_GRACE)
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()

    def _enforce_max_rss(self) -> None:
        """--max-rss, checked here rather than per request: a pipelining worker may never be idle under load."""
        max_rss = self.config.max_rss
        if not max_rss:
            return
        for worker in self._serving():
            if worker.relay.state in (State.IDLE, State.BUSY) and (rss := worker.rss()) > max_rss << 20:
                COUNTERS.worker_restarted("max-rss")
                self._retire(worker.relay, f"resident memory {rss >> 20} MiB over --max-rss {max_rss} MiB")

    def _grow(self) -> None:
        log.info("requests are waiting for a worker: growing the pool to %d", self.scheduler.target)
        self._replenish()

    # -- answers on the pool's behalf --------------------------------------------------------------------------
    def _refuse(self, request: Request) -> None:
        log.warning(
            "%s %s: %d requests already wait for a worker (--queue-size): answered 503",
            request.params.get("REQUEST_METHOD", "-"),
            request.params.get("REQUEST_URI", "-"),
            len(self.scheduler.queue),
        )
        self.answer(request, "503 Service Unavailable", retry_after=True)

    def answer(self, request: Request, status: str, *, pid: int | None = None, retry_after: bool = False) -> None:
        """Answer ``request`` on the pool's behalf (502, 503, 504) and log it like any other response."""
        request.release()
        if self.access_log is not None:
            self.access_log.write(request, int(status[:3]), 0, pid, self._loop.time())
        if not request.sink.client_gone:
            respond_error(request.sink, status, "Retry-After: 1\r\n" if retry_after else "")
