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
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import orjson

from gateway.channel import ChannelError, FrameDecoder, Kind, WorkerRequest, encode_frame
from gateway.config import Config
from gateway.request import Request, respond_error
from gateway.worker import APP_LOAD_ERROR

log = logging.getLogger("gateway.pool")

#: Called with a finished request and the worker's END payload; it finishes the sink (after session hooks).
RequestDone = Callable[[Request, bytes], None]

#: The socket pair's kernel buffers: a 64 KiB response fits in one write and one wake-up of the loop.
_CHANNEL_BUFFER = 1 << 20
#: A worker that dies sooner than this after starting is restarted after a growing delay, up to the maximum.
_STABLE_AFTER = 5.0
_MAX_BACKOFF = 5.0
_STOP_GRACE = 5.0


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
        "decoder",
        "pid",
        "pool",
        "process",
        "request",
        "started_at",
        "state",
        "transport",
    )

    def __init__(self, pool: WorkerPool, process: asyncio.subprocess.Process, started_at: float) -> None:
        self.pool = pool
        self.process = process
        self.pid = process.pid
        self.started_at = started_at
        self.state = _State.STARTING
        self.transport: asyncio.Transport | None = None
        self.decoder = FrameDecoder()
        self.request: Request | None = None
        self._head_sent = False

    def run(self, request: Request) -> None:
        assert self.transport is not None
        self.state = _State.BUSY
        self.request = request
        self._head_sent = False
        body = request.body.finish()
        frame = WorkerRequest(request.params, body, request.body.path, request.protocol).encode()
        self.transport.write(frame)

    def cancel(self) -> None:
        if self.transport is not None and self.state is _State.BUSY:
            self.transport.write(encode_frame(Kind.CANCEL))

    def on_frames(self, frames: list[tuple[int, bytes]]) -> None:
        for kind, payload in frames:
            request = self.request
            if kind == Kind.BODY:
                if request is not None and not request.sink.client_gone:
                    request.sink.send_body(payload)
            elif kind == Kind.HEAD:
                self._head_sent = True
                if request is not None and not request.sink.client_gone:
                    request.sink.send_head(payload)
            elif kind in (Kind.END, Kind.ABORT):
                self.request = None
                self.state = _State.IDLE
                if request is not None:
                    self.pool.request_done(request, aborted=kind == Kind.ABORT, extras=payload)
                self.pool.worker_idle(self)
            elif kind == Kind.READY:
                self.state = _State.IDLE
                self.pool.worker_ready(self, orjson.loads(payload))
            else:
                raise ChannelError(f"worker {self.pid} sent an unknown frame kind {kind}")

    def lost(self) -> None:
        """The channel closed: the process died or is exiting. Fail what it was running."""
        if self.state is _State.GONE:
            return
        self.state = _State.GONE
        request, self.request = self.request, None
        if request is not None:
            log.error(
                "worker %d died while running %s %s",
                self.pid,
                request.params.get("REQUEST_METHOD"),
                request.params.get("REQUEST_URI", ""),
            )
            if request.sink.client_gone:
                request.release()
            elif self._head_sent:
                request.sink.abort()
                request.release()
            else:
                respond_error(request.sink, "502 Bad Gateway")
                request.release()
        self.pool.worker_lost(self)


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
    """A fixed number of workers and a FIFO queue of requests waiting for one of them."""

    def __init__(self, config: Config, on_request_done: RequestDone | None = None) -> None:
        self.config = config
        self.workers: set[Worker] = set()
        self.idle: deque[Worker] = deque()
        self.queue: deque[Request] = deque()
        self.on_request_done = on_request_done
        self._running = False
        self._respawn_delay = 0.0
        self._startup: asyncio.Future[None] | None = None
        self._starting = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._settings = orjson.dumps(
            {
                "app": config.app,
                "app_dir": os.getcwd(),
                "script_name": config.script_name,
                "log_level": config.log_level,
            }
        ).decode()
        self.fatal: asyncio.Future[str] | None = None
        self._ready_pids: set[int] = set()

    # -- life cycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start every worker and wait until each has imported the app; raise AppLoadFailed if it cannot."""
        loop = asyncio.get_running_loop()
        self._running = True
        self.fatal = loop.create_future()
        self._startup = loop.create_future()
        self._starting = self.config.workers
        for _ in range(self.config.workers):
            await self._spawn()
        try:
            await self._startup
        finally:
            self._startup = None

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
                self._settings,
                pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child.close()
        worker = Worker(self, process, loop.time())
        self.workers.add(worker)
        await loop.connect_accepted_socket(lambda: _ChannelProtocol(worker), parent)
        self._watch(worker)

    def _watch(self, worker: Worker) -> None:
        task = asyncio.get_running_loop().create_task(self._reap(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reap(self, worker: Worker) -> None:
        status = await worker.process.wait()
        if worker.transport is not None:
            worker.transport.close()
        worker.lost()
        was_starting = worker.state is _State.GONE and worker.pid not in self._ready_pids
        self._ready_pids.discard(worker.pid)
        if status == APP_LOAD_ERROR and was_starting:
            message = f"the application {self.config.app!r} could not be loaded (see the worker's error above)"
            if self._startup is not None and not self._startup.done():
                self._startup.set_exception(AppLoadFailed(message))
            elif self.fatal is not None and not self.fatal.done() and not self.workers:
                self.fatal.set_result(message)
            else:
                log.critical("%s; not restarting that worker", message)
            return
        if not self._running:
            return
        describe = f"signal {-status}" if status < 0 else f"status {status}"
        log.warning("worker %d exited with %s; starting a replacement", worker.pid, describe)
        if asyncio.get_running_loop().time() - worker.started_at < _STABLE_AFTER:
            self._respawn_delay = min(max(self._respawn_delay * 2, 0.1), _MAX_BACKOFF)
        else:
            self._respawn_delay = 0.0
        await asyncio.sleep(self._respawn_delay)
        if self._running:
            await self._spawn()

    def worker_ready(self, worker: Worker, info: dict[str, Any]) -> None:
        self._ready_pids.add(worker.pid)
        log.debug("worker %d ready", info.get("pid", worker.pid))
        if self._startup is not None and not self._startup.done():
            self._starting -= 1
            if self._starting == 0:
                self._startup.set_result(None)
        self.worker_idle(worker)

    def worker_lost(self, worker: Worker) -> None:
        self.workers.discard(worker)
        with contextlib.suppress(ValueError):
            self.idle.remove(worker)

    async def stop(self, timeout: float) -> None:
        """Let running and queued requests finish (up to ``timeout``), then stop every worker."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self.queue or self.busy) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self._running = False
        for request in self.queue:
            respond_error(request.sink, "503 Service Unavailable")
            request.release()
        self.queue.clear()
        for worker in list(self.workers):
            if worker.transport is not None:
                worker.transport.close()  # EOF on its channel: the worker exits once idle
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

    # -- dispatch ----------------------------------------------------------------------------------------------
    @property
    def busy(self) -> int:
        return sum(1 for worker in self.workers if worker.state is _State.BUSY)

    def submit(self, request: Request) -> None:
        if self.idle:
            self.idle.popleft().run(request)
        else:
            self.queue.append(request)

    def cancel(self, request: Request) -> None:
        """The client of ``request`` went away: drop it if it still waits, tell its worker if it runs."""
        try:
            self.queue.remove(request)
        except ValueError:
            for worker in self.workers:
                if worker.request is request:
                    worker.cancel()
                    return
        else:
            request.release()

    def worker_idle(self, worker: Worker) -> None:
        queue = self.queue
        while queue:
            request = queue.popleft()
            if request.sink.client_gone:
                request.release()
                continue
            worker.run(request)
            return
        self.idle.append(worker)

    def request_done(self, request: Request, aborted: bool, extras: bytes) -> None:
        request.release()
        if request.sink.client_gone:
            return
        if aborted:
            request.sink.abort()
        elif self.on_request_done is not None:
            self.on_request_done(request, extras)
        else:
            request.sink.finish()
