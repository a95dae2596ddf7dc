"""The worker processes, and the queue of buffered requests waiting for one.

The event loop's process is the master: it starts each worker as a fresh interpreter (``python -m
gateway.worker``; a process running an event loop is never forked), hands it one whole request at a time over a
unix socket pair, relays its response frames to the request's sink, and replaces it when it dies. Only the
request a dead worker was running fails, with a 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, cast

import orjson

from gateway.config.settings import Config
from gateway.contract.channel import (
    ChannelError,
    FrameDecoder,
    Kind,
    Payload,
    decode_response,
    encode_cancel,
    encode_request,
)
from gateway.contract.exits import EXIT_APP_LOAD
from gateway.contract.startup import WorkerSettings
from gateway.loop.accesslog import AccessLog
from gateway.loop.request import Request, respond_error
from gateway.loop.session_hook import worker_session_settings

log = logging.getLogger("gateway.pool")

#: Called with a finished request and the worker's END payload; it finishes the sink (after session hooks).
RequestDone = Callable[[Request, bytes], None]

#: The socket pair's kernel buffers: a 64 KiB response fits in one write and one wake-up of the loop.
_CHANNEL_BUFFER = 1 << 20
#: A worker that dies sooner than this after starting is restarted after a growing delay, up to the maximum.
_STABLE_AFTER = 5.0
_MAX_BACKOFF = 5.0
_STOP_GRACE = 5.0


#: --pipeline hands a request ahead of time only to a worker whose running request started this recently: one
#: that has already run long is the likeliest to run longer.
_PIPELINE_BEHIND = 0.05
#: Frames for a worker smaller than this together are joined into one buffer; larger ones go out vectored.
_JOIN_BELOW = 1 << 16
#: How often the supervisor looks at running requests, the queue and idle workers.
_TICK = 0.25
#: After --timeout, a worker gets SIGTERM, then SIGKILL this much later.
_KILL_GRACE = 2.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class AppLoadFailed(Exception):
    """The application could not be imported by a worker; the message says why."""


class _State(enum.Enum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    GONE = "gone"


class Worker:
    """The master's view of one worker process."""

    __slots__ = (
        "_head_sent",
        "_outgoing",
        "busy_since",
        "decoder",
        "dispatched",
        "generation",
        "head_answered",
        "idle_since",
        "killed",
        "max_requests",
        "pid",
        "pool",
        "process",
        "requests",
        "retiring",
        "sent",
        "served",
        "started_at",
        "state",
        "status",
        "transport",
    )

    def __init__(
        self, pool: WorkerPool, process: asyncio.subprocess.Process, started_at: float, generation: int
    ) -> None:
        self.pool = pool
        self.process = process
        self.pid = process.pid
        self.started_at = started_at
        self.generation = generation
        self.state = _State.STARTING
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder()
        #: Requests handed to this worker, in order: the first one runs, the others wait in its channel.
        self.requests: deque[Request] = deque()
        #: How many requests were ever handed over; the worker numbers them the same way (CANCEL names one).
        self.dispatched = 0
        #: The running request was already answered by the pool (--timeout): its late output is dropped.
        self.head_answered = False
        self._head_sent = False
        self._outgoing: list[bytes | bytearray | memoryview] | None = None
        self.busy_since = 0.0
        self.idle_since = started_at
        self.served = 0
        self.max_requests = pool.draw_max_requests()
        #: Taken out of rotation: its channel is closed once it is idle, and it exits.
        self.retiring = False
        #: Killed for running past --timeout.
        self.killed = False
        self.status = 0
        self.sent = 0

    @property
    def request(self) -> Request | None:
        """The request this worker runs now."""
        return self.requests[0] if self.requests else None

    def run(self, request: Request) -> None:
        """Hand ``request`` over: it runs at once if the worker is idle, else after those before it."""
        if not self.requests:
            self.state = _State.BUSY
            self._started(self.pool.now())
        self.requests.append(request)
        self.served += 1
        self.dispatched += 1
        body = request.body
        for piece in encode_request(request.params, body.finish(), body.path, request.protocol, request.session):
            self._send(piece)

    def _started(self, now: float) -> None:
        self._head_sent = False
        self.head_answered = False
        self.status = 0
        self.sent = 0
        self.busy_since = now

    def _send(self, frame: bytes | bytearray | memoryview) -> None:
        # Frames queued in one turn of the loop (requests for a pipelining worker, cancels) leave in one write.
        outgoing = self._outgoing
        if outgoing is None:
            self._outgoing = [frame]
            self.pool.call_soon(self._flush)
        else:
            outgoing.append(frame)

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, None
        if outgoing and self.transport is not None and not self.transport.is_closing():
            if len(outgoing) == 1:
                self.transport.write(outgoing[0])
            elif sum(map(len, outgoing)) <= _JOIN_BELOW:
                self.transport.write(b"".join(outgoing))
            else:
                self.transport.writelines(outgoing)  # one vectored write: a large body is not copied

    def cancel(self, request: Request) -> None:
        """``request``'s client is gone: the worker stops its output, or skips it if it has not started."""
        if self.transport is None or self.state is not _State.BUSY:
            return
        for position, waiting in enumerate(self.requests):
            if waiting is request:
                self._send(encode_cancel(self.dispatched - len(self.requests) + 1 + position))
                return

    def close_channel(self) -> None:
        """EOF on the worker's channel: it finishes what it runs, then exits."""
        if self.transport is not None:
            self._flush()
            self.transport.close()

    def on_frames(self, frames: list[tuple[int, Payload]]) -> None:
        for kind, payload in frames:
            request = self.request
            if kind == Kind.RESPONSE:
                response, head_length, extras = decode_response(payload)
                self._head_sent = True
                self.status = _status_code(response[:3].tobytes())
                self.sent += len(response) - head_length
                if request is not None and not self.head_answered and not request.sink.client_gone:
                    request.sink.send_response(response)
                self._ended(request, Kind.END, extras)
            elif kind == Kind.BODY:
                self.sent += len(payload)
                if request is not None and not self.head_answered and not request.sink.client_gone:
                    request.sink.send_body(payload)
            else:
                # A head or END extras come as a view only from 16 KiB on (rare); bytes() returns bytes as they are.
                self._on_frame(kind, bytes(payload), request)

    def _on_frame(self, kind: int, payload: bytes, request: Request | None) -> None:
        if kind == Kind.HEAD:
            self._head_sent = True
            self.status = _status_code(payload)
            if request is not None and not self.head_answered and not request.sink.client_gone:
                request.sink.send_head(payload)
        elif kind in (Kind.END, Kind.ABORT):
            self._ended(request, kind, payload)
        elif kind == Kind.READY:
            self.state = _State.IDLE
            self.pool.worker_ready(self, orjson.loads(payload))
        else:
            raise ChannelError(f"worker {self.pid} sent an unknown frame kind {kind}")

    def _ended(self, request: Request | None, kind: int, extras: bytes) -> None:
        """The running request's response is complete (END) or cut short (ABORT): on to the next one."""
        answered = self.head_answered
        if self.requests:
            self.requests.popleft()
        if self.requests:
            self._started(self.pool.now())
        elif self.state is _State.BUSY:
            self.state = _State.IDLE
        if request is not None and not answered:
            self.pool.request_done(self, request, aborted=kind == Kind.ABORT, extras=extras)
        if self.state is _State.IDLE:
            self.pool.worker_idle(self)
        elif self.state is _State.BUSY:
            self.pool.worker_has_room(self)

    def lost(self) -> None:
        """The channel closed: the process died or is exiting. Fail what it ran; requeue what it never started."""
        if self.state is _State.GONE:
            return
        self.state = _State.GONE
        requests = list(self.requests)
        self.requests.clear()
        if not requests:
            return
        running, waiting = requests[0], requests[1:]
        if waiting:
            log.warning("worker %d is gone with %d requests it had not started: they wait for another worker",
                        self.pid, len(waiting))  # fmt: skip
            self.pool.requeue(waiting)
        if self.head_answered:
            return
        log.error(
            "worker %d died while running %s %s",
            self.pid,
            running.params.get("REQUEST_METHOD"),
            running.params.get("REQUEST_URI", ""),
        )
        self.fail(running, "502 Bad Gateway")

    def fail(self, request: Request, status: str) -> None:
        """End ``request``, which this worker will never finish: ``status`` if its head is not out yet, else cut."""
        if request.sink.client_gone:
            request.release()
        elif self._head_sent:
            request.release()
            request.sink.abort()
        else:
            self.pool.answer(request, status, worker=self)

    def rss(self) -> int:
        """Resident memory in bytes, from /proc (0 where unavailable)."""
        try:
            with open(f"/proc/{self.pid}/statm", "rb") as statm:
                return int(statm.read().split()[1]) * _PAGE_SIZE
        except (OSError, IndexError, ValueError):
            return 0


def _status_code(head: bytes) -> int:
    try:
        return int(head[:3])
    except ValueError:
        return 0


class _ChannelProtocol(asyncio.Protocol):
    """The master's end of a worker's socket pair."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.worker.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.worker.decoder.feed(data)
            self.worker.on_frames(frames)
        except ChannelError as err:
            log.error("worker %d: %s; stopping it", self.worker.pid, err)  # noqa: TRY400 - the message says it all
            with contextlib.suppress(ProcessLookupError):
                self.worker.process.kill()

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.lost()


class WorkerPool:
    """The workers, their supervision, and the bounded FIFO queue of requests waiting for one of them.

    Every change of the pool's shape (a death, a recycle, a reload, growing or shrinking) goes through one rule:
    ``_replenish`` starts workers until the workers in rotation reach ``target``; a worker leaves rotation by
    ``_retire``, which closes its channel once it is idle. A replacement therefore always starts before the
    worker it replaces stops taking requests, and no request is ever dropped by the pool's own decisions.
    """

    def __init__(
        self,
        config: Config,
        on_request_done: RequestDone | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.config = config
        self.workers: set[Worker] = set()
        self.idle: deque[Worker] = deque()
        self.queue: deque[Request] = deque()
        self.on_request_done = on_request_done
        self.access_log = access_log
        self.target = config.workers
        self.workers_min = config.workers
        self.workers_max = max(config.workers_max, config.workers)
        self.generation = 0
        self._running = False
        self._respawn_delay = 0.0
        self._startup: asyncio.Future[None] | None = None
        self._starting = 0
        self._spawning = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._tick: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.worker_settings = WorkerSettings(
            app=config.app,
            app_dir=os.getcwd(),
            script_name=config.script_name,
            log_level=config.log_level,
            debug=config.debug,
            scheduling=config.worker_scheduling,
            session=worker_session_settings(config),
        )
        self._encoded_settings = self.worker_settings.encode()
        self.fatal: asyncio.Future[str] | None = None
        self._ready_pids: set[int] = set()

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def call_soon(self, callback: Callable[[], None]) -> None:
        assert self._loop is not None
        self._loop.call_soon(callback)

    def draw_max_requests(self) -> int:
        """This worker's request budget: --max-requests plus jitter, so workers do not all recycle at once."""
        if not self.config.max_requests:
            return 0
        return self.config.max_requests + random.randint(0, self.config.max_requests_jitter)  # noqa: S311 - spreading, not secrecy

    @property
    def in_rotation(self) -> list[Worker]:
        return [worker for worker in self.workers if not worker.retiring]

    # -- life cycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the workers and wait until each has imported the app; raise AppLoadFailed if it cannot."""
        loop = self._loop = asyncio.get_running_loop()
        self._running = True
        self.fatal = loop.create_future()
        self._startup = loop.create_future()
        self._starting = self.target
        for _ in range(self.target):
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
        self._tick = loop.create_task(self._supervise())

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (parent, child):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _CHANNEL_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _CHANNEL_BUFFER)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway.worker",
                str(child.fileno()),
                self._encoded_settings,
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child.close()
        worker = Worker(self, process, loop.time(), self.generation)
        self.workers.add(worker)
        await loop.connect_accepted_socket(lambda: _ChannelProtocol(worker), parent)
        self._background(self._reap(worker))

    def _background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _replenish(self) -> None:
        """Start workers until those in rotation (and those starting) reach the target."""
        if not self._running:
            return
        missing = self.target - len(self.in_rotation) - self._spawning
        for _ in range(max(missing, 0)):
            self._spawn_one(self._respawn_delay)

    def _spawn_one(self, delay: float = 0.0) -> None:
        self._spawning += 1

        async def spawn() -> None:
            try:
                if delay:
                    await asyncio.sleep(delay)
                if self._running:
                    await self._spawn()
            finally:
                self._spawning -= 1

        self._background(spawn())

    async def _reap(self, worker: Worker) -> None:
        status = await worker.process.wait()
        if worker.transport is not None:
            worker.transport.close()
        worker.lost()
        self.workers.discard(worker)
        with contextlib.suppress(ValueError):
            self.idle.remove(worker)
        was_starting = worker.pid not in self._ready_pids
        self._ready_pids.discard(worker.pid)
        if status == EXIT_APP_LOAD and was_starting:
            self._app_load_failed(worker)
            return
        if not self._running:
            return
        if not worker.retiring:
            describe = f"signal {-status}" if status < 0 else f"status {status}"
            log.warning("worker %d exited with %s; starting a replacement", worker.pid, describe)
            if asyncio.get_running_loop().time() - worker.started_at < _STABLE_AFTER:
                self._respawn_delay = min(max(self._respawn_delay * 2, 0.1), _MAX_BACKOFF)
            else:
                self._respawn_delay = 0.0
        self._replenish()

    def _app_load_failed(self, worker: Worker) -> None:
        message = f"the application {self.config.app!r} could not be loaded (see the worker's error above)"
        if self._startup is not None and not self._startup.done():
            self._startup.set_exception(AppLoadFailed(message))
        elif worker.generation > 0 and any(w.pid in self._ready_pids for w in self.in_rotation):
            log.critical("%s; reload abandoned, the running workers keep serving the previous code", message)
            # Back to the newest generation that actually serves, so no more of the old workers are retired.
            self.generation = max(w.generation for w in self.in_rotation if w.pid in self._ready_pids)
        elif self.fatal is not None and not self.fatal.done() and not self.workers:
            self.fatal.set_result(message)
        else:
            log.critical("%s; not restarting that worker", message)

    def worker_ready(self, worker: Worker, info: dict[str, Any]) -> None:
        self._ready_pids.add(worker.pid)
        log.debug("worker %d ready", info.get("pid", worker.pid))
        if self._startup is not None and not self._startup.done():
            self._starting -= 1
            if self._starting == 0:
                self._startup.set_result(None)
        if worker.generation == self.generation:
            self._retire_previous_generation()
        self.worker_idle(worker)

    def _retire_previous_generation(self) -> None:
        """A reloaded worker is ready: one worker running the previous code leaves rotation, idle ones first."""
        old = [w for w in self.in_rotation if w.generation < self.generation]
        if not old:
            return
        old.sort(key=lambda w: w.state is not _State.IDLE)
        self._retire(old[0], "replaced by a reloaded worker", replace=False)

    def _retire(self, worker: Worker, reason: str, *, replace: bool = True) -> None:
        if worker.retiring:
            return
        log.info("worker %d leaves the pool: %s", worker.pid, reason)
        worker.retiring = True
        with contextlib.suppress(ValueError):
            self.idle.remove(worker)
        if worker.state is not _State.BUSY:
            worker.close_channel()
        if replace:
            self._replenish()

    async def stop(self, timeout: float) -> None:
        """Let running and queued requests finish (up to ``timeout``), then stop every worker."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.queue or self.busy) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self._running = False
        if self._tick is not None:
            self._tick.cancel()
        for request in self.queue:
            self.answer(request, "503 Service Unavailable", retry_after=True)
        self.queue.clear()
        for worker in list(self.workers):
            worker.retiring = True
            if worker.state is _State.BUSY and timeout <= 0:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.terminate()
            worker.close_channel()
        stop_deadline = loop.time() + _STOP_GRACE
        for worker in list(self.workers):
            try:
                await asyncio.wait_for(worker.process.wait(), max(stop_deadline - loop.time(), 0.01))
            except TimeoutError:
                log.warning("worker %d did not stop within %.0f s; killing it", worker.pid, _STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGKILL)
                await worker.process.wait()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- operator actions (signals) ----------------------------------------------------------------------------
    def reload(self) -> None:
        """Start a full set of workers importing the app afresh; each one ready retires one running old code."""
        if not self._running:
            return
        self.generation += 1
        log.info("reloading: starting %d workers with freshly imported code", self.target)
        for _ in range(self.target):
            self._spawn_one()

    def add_worker(self) -> None:
        self.target += 1
        self.workers_max = max(self.workers_max, self.target)
        log.info("one more worker requested: the pool's target is now %d", self.target)
        self._replenish()

    def remove_worker(self) -> None:
        if self.target <= 1:
            log.warning("one fewer worker requested, but the pool keeps at least one")
            return
        self.target -= 1
        self.workers_min = min(self.workers_min, self.target)
        candidates = sorted(self.in_rotation, key=lambda w: w.state is not _State.IDLE)
        if candidates:
            self._retire(candidates[0], f"one fewer worker requested (target {self.target})", replace=False)

    # -- supervision -------------------------------------------------------------------------------------------
    async def _supervise(self) -> None:
        while self._running:
            await asyncio.sleep(_TICK)
            now = self.now()
            self._enforce_timeout(now)
            self._enforce_max_rss()
            self._expire_queue(now)
            self._shrink(now)

    def _enforce_timeout(self, now: float) -> None:
        timeout = self.config.timeout
        if not timeout:
            return
        for worker in list(self.workers):
            if worker.state is _State.BUSY and not worker.killed and now - worker.busy_since > timeout:
                self._kill_overdue(worker, now - worker.busy_since)

    def _kill_overdue(self, worker: Worker, elapsed: float) -> None:
        request = worker.request
        worker.killed = True
        worker.head_answered = True  # requests waiting behind it are requeued once the process is gone
        params = request.params if request is not None else {}
        log.error(
            "worker %d ran %s %s for %.1f s, over --timeout %g s: answered 504, killing and replacing the worker",
            worker.pid,
            params.get("REQUEST_METHOD", "-"),
            params.get("REQUEST_URI", "-"),
            elapsed,
            self.config.timeout,
        )
        if request is not None:
            worker.fail(request, "504 Gateway Timeout")
        self._retire(worker, "killed after --timeout")
        with contextlib.suppress(ProcessLookupError):
            worker.process.terminate()
        assert self._loop is not None
        self._loop.call_later(_KILL_GRACE, self._kill, worker)

    @staticmethod
    def _kill(worker: Worker) -> None:
        if worker.process.returncode is None:
            log.warning("worker %d ignored SIGTERM for %.0f s; sending SIGKILL", worker.pid, _KILL_GRACE)
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()

    def _enforce_max_rss(self) -> None:
        """--max-rss, checked here rather than per request: a pipelining worker may never be idle under load."""
        max_rss = self.config.max_rss
        if not max_rss:
            return
        for worker in self.in_rotation:
            if worker.state in (_State.IDLE, _State.BUSY) and (rss := worker.rss()) > max_rss << 20:
                self._retire(worker, f"resident memory {rss >> 20} MiB over --max-rss {max_rss} MiB")

    def _expire_queue(self, now: float) -> None:
        queue = self.queue
        limit = self.config.queue_timeout
        while queue and now - queue[0].received_at > limit:
            request = queue.popleft()
            log.warning(
                "%s %s waited %.1f s for a worker (--queue-timeout %g s): answered 503",
                request.params.get("REQUEST_METHOD", "-"),
                request.params.get("REQUEST_URI", "-"),
                now - request.received_at,
                limit,
            )
            self.answer(request, "503 Service Unavailable", retry_after=True)

    def _shrink(self, now: float) -> None:
        if self.target <= self.workers_min or self.queue:
            return
        after = self.config.scale_down_after
        for worker in self.idle:
            if now - worker.idle_since > after:
                self.target -= 1
                self._retire(worker, f"idle for {after:g} s (pool target {self.target})", replace=False)
                return

    def _grow(self) -> None:
        if self.target < self.workers_max and not self._spawning and self._starting_workers() == 0:
            self.target += 1
            log.info("requests are waiting for a worker: growing the pool to %d", self.target)
            self._replenish()

    def _starting_workers(self) -> int:
        return sum(1 for worker in self.workers if worker.state is _State.STARTING)

    # -- dispatch ----------------------------------------------------------------------------------------------
    @property
    def busy(self) -> int:
        return sum(1 for worker in self.workers if worker.state is _State.BUSY)

    def submit(self, request: Request) -> None:
        if self.idle:
            self._run(self.idle.popleft(), request)
            return
        if len(self.queue) >= self.config.queue_size:
            log.warning(
                "%s %s: %d requests already wait for a worker (--queue-size): answered 503",
                request.params.get("REQUEST_METHOD", "-"),
                request.params.get("REQUEST_URI", "-"),
                len(self.queue),
            )
            self.answer(request, "503 Service Unavailable", retry_after=True)
            return
        self.queue.append(request)
        self._grow()

    def _run(self, worker: Worker, request: Request) -> None:
        worker.run(request)
        if worker.max_requests and worker.served >= worker.max_requests:
            self._retire(worker, f"served {worker.served} requests (--max-requests)")

    def cancel(self, request: Request) -> None:
        """The client of ``request`` went away: drop it if it still waits here, tell its worker if it has it."""
        # Membership first: deque.remove of a missing item builds an error message with the request's repr.
        for worker in self.workers:
            if request in worker.requests:
                worker.cancel(request)
                return
        if request in self.queue:
            self.queue.remove(request)
            request.release()

    def requeue(self, requests: list[Request]) -> None:
        """Requests a dead worker never started go back to the head of the queue, in their order."""
        if not self._running:
            for request in requests:
                self.answer(request, "503 Service Unavailable", retry_after=True)
            return
        self.queue.extendleft(reversed(requests))
        while self.queue and self.idle:
            self.worker_idle(self.idle.popleft())

    def worker_idle(self, worker: Worker) -> None:
        worker.idle_since = self.now()
        if worker.retiring:
            worker.close_channel()
            return
        if not self._feed(worker):
            self.idle.append(worker)

    def worker_has_room(self, worker: Worker) -> None:
        """A worker finished one request and runs the next it was handed: top it up from the queue."""
        if not worker.retiring:
            self._feed(worker)

    def _feed(self, worker: Worker) -> bool:
        """Hand ``worker`` the next queued request if it has none; True if it got one.

        With --pipeline N, while the queue is at least as deep as the pool (every request in it will wait
        anyway), a worker also gets up to N more ahead of time, so it goes from one to the next without waiting
        for the loop, and the loop writes several requests (and reads several responses) per system call. Never
        when fewer wait: what a worker holds cannot move to another worker that frees up sooner.
        """
        queue = self.queue
        fed = False
        while queue:
            held = len(worker.requests)
            if held and (
                held > self.config.pipeline
                or len(queue) < len(self.workers)
                or worker.busy_since < self.now() - _PIPELINE_BEHIND
            ):
                break
            request = queue.popleft()
            if request.sink.client_gone:
                request.release()
                continue
            self._run(worker, request)
            fed = True
            if worker.retiring:
                break
        return fed

    def request_done(self, worker: Worker, request: Request, aborted: bool, extras: bytes) -> None:
        request.body.discard()
        if self.access_log is not None:
            self.access_log.write(request, worker.status, worker.sent, worker.pid, self.now())
        if aborted:
            request.release()
            if not request.sink.client_gone:
                request.sink.abort()
        elif self.on_request_done is not None:
            self.on_request_done(request, extras)  # it finishes the sink and releases the request
        else:
            request.release()
            if not request.sink.client_gone:
                request.sink.finish()

    def answer(self, request: Request, status: str, *, worker: Worker | None = None, retry_after: bool = False) -> None:
        """Answer ``request`` on the pool's behalf (502, 503, 504) and log it like any other response."""
        request.release()
        if self.access_log is not None:
            self.access_log.write(request, int(status[:3]), 0, worker.pid if worker else None, self.now())
        if not request.sink.client_gone:
            respond_error(request.sink, status, "Retry-After: 1\r\n" if retry_after else "")
