"""The worker process: imports the app once, then runs buffered requests one at a time (or on N threads).

Started by the master as ``python -m gateway.worker FD SETTINGS`` (a fresh interpreter, never a fork of the event
loop's process). FD is this worker's end of a unix socket pair; the request arrives whole, body included, so the
app never waits on a client. Output is sent back as it is produced and the loop buffers it, so the worker is free
as soon as the app is done, however slowly the client reads.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
import setproctitle

from gateway.contract.channel import (
    CANCEL_PAYLOAD,
    FRAME_HEADER,
    FrameDecoder,
    Kind,
    Payload,
    decode_request,
)
from gateway.contract.exits import EXIT_APP_LOAD
from gateway.contract.startup import WorkerSettings
from gateway.log import configure_logging
from gateway.memory import tune_malloc
from gateway.worker.frames import ResponseFrames
from gateway.worker.scheduling import use_batch_scheduling
from gateway.worker.session import WorkerSession
from gateway.worker.threads import ThreadedServer
from gateway.worker.wsgi import WSGIApp, body_stream, build_environ, run_app, use_threads

log = logging.getLogger("gateway.worker")

_FRAME_HEADER_SIZE = FRAME_HEADER.size
#: What one read asks for (more when the frame being assembled lacks more).
_READ_SIZE = 1 << 16
#: A frame with more than this still to come is received in place (see FrameDecoder.complete_in_place).
_RECEIVE_IN_PLACE = 1 << 16
#: A request that waited in this worker at least this long (seconds since the read that brought it) has the socket
#: polled for a CANCEL before it runs. A shorter wait is not worth the system call (and the BlockingIOError it
#: usually ends in): its client leaving in that time is treated as leaving just after the request started, whose
#: response the loop drops. Polling after 1 ms costs at most a few µs per ms waited.
CANCEL_POLL_AFTER = 0.001


class AppImportError(Exception):
    """The application named on the command line cannot be imported or is not callable."""


def load_app(spec: str, settings: WorkerSettings | None = None) -> WSGIApp:
    """The WSGI callable ``spec`` (MODULE:CALLABLE) names; an AppImportError says why not, and where a missing
    module was looked for (the app's directory and ``--pythonpath``), since that is what a newcomer gets wrong."""
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        message = f"cannot import module {module_name!r} of application {spec!r}: {err!r}"
        if isinstance(err, ModuleNotFoundError) and settings is not None:
            path = ", ".join([*settings.python_path, settings.app_dir]) + f" and {sys.prefix}'s installed packages"
            message += (
                f"; looked up from {settings.app_dir} with the import path {path}"
                " (give the project's directory with --chdir DIR, or add one with --pythonpath DIR)"
            )
        raise AppImportError(message) from err
    app: Any = module
    for part in attribute.split("."):
        try:
            app = getattr(app, part)
        except AttributeError as err:
            raise AppImportError(
                f"module {module_name!r} has no attribute {attribute!r} (application {spec!r})"
            ) from err
    if not callable(app):
        raise AppImportError(f"application {spec!r} is a {type(app).__name__}, not a WSGI callable")
    return app  # type: ignore[no-any-return]


class Channel(ResponseFrames):
    """The worker's end of the socket pair: blocking reads of requests, batched writes of responses.

    Requests are numbered in the order they arrive (the loop counts the same way); ``number`` is the one running.
    A CANCEL names a number: the running request's stops its output, a later one's makes us skip that request
    when its turn comes (the loop may have handed it to us ahead of time, while we ran another).

    Frames are cut out of what the socket gives by the loop's own FrameDecoder; those decoded ahead of their turn
    (the loop may send ahead: ``--pipeline``) wait in ``_frames``, in order. A request that waited there is checked
    for a CANCEL first: among the frames already read always, on the socket only once it waited CANCEL_POLL_AFTER.
    """

    def __init__(
        self, sock: socket.socket, files: socket.socket | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.sock = sock
        #: The files socket, over which file responses' descriptors go to the loop (None: not given one).
        self.file_socket = files
        self.files = files is not None
        self._decoder = FrameDecoder()
        self._frames: deque[tuple[int, Payload]] = deque()
        self.number = 0
        self._cancelled: set[int] = set()
        self._clock = clock
        #: When the socket was last read (the clock's time): every CANCEL the loop sent before then is in ``_frames``.
        self._read_at = 0.0

    @property
    def has_pending_input(self) -> bool:
        """Bytes already read from the socket wait to be decoded (frames the loop sent ahead of time)."""
        return bool(self._frames or self._decoder.pending)

    def read_frame(self) -> tuple[int, Payload] | None:
        """Block until one whole frame is here; None when the loop closed the channel.

        A frame with more than _RECEIVE_IN_PLACE bytes still to come (a large request body) is received straight
        into a buffer of its size, stopping at its end; smaller ones come from reads of at least 64 KiB, which may
        bring the frames after them too.
        """
        frames = self._frames
        decoder = self._decoder
        while not frames:
            if decoder.pending:
                lacking = decoder.lacking
                if lacking > _RECEIVE_IN_PLACE:
                    return decoder.complete_in_place(self.sock.recv_into)
                chunk = self.sock.recv(max(lacking, _READ_SIZE))
            else:
                chunk = self.sock.recv(_READ_SIZE)
            if not chunk:
                return None
            self._read_at = self._clock()
            frames.extend(decoder.feed(chunk))
        return frames.popleft()

    def next_request(self) -> tuple[int, bytes | memoryview] | None:
        """The next request to run as (number, payload), skipping cancelled ones; None when the loop closed."""
        while True:
            # it was here before we asked: it waited behind another
            waited = bool(self._frames) or self._decoder.pending >= _FRAME_HEADER_SIZE
            frame = self.read_frame()
            if frame is None:
                return None
            kind, payload = frame
            if kind == Kind.CANCEL:
                self._note_cancel(payload)
                continue
            if kind != Kind.REQUEST:
                continue
            self.number += 1
            if waited:  # its client may have left while it waited
                if self._clock() - self._read_at >= CANCEL_POLL_AFTER:
                    self._poll_cancels()
                else:
                    self._take_cancels()  # only those read with it
            if self._cancelled:
                if self.number in self._cancelled:
                    self._cancelled.discard(self.number)
                    log.debug("request %d skipped: its client left while it waited in this worker", self.number)
                    self.finish(Kind.END)  # never started: the loop only needs to know it is over
                    continue
                self._cancelled = {number for number in self._cancelled if number > self.number}
            return self.number, payload

    def _note_cancel(self, payload: bytes | memoryview) -> None:
        (number,) = CANCEL_PAYLOAD.unpack(payload)
        if number >= self.number:
            self._cancelled.add(number)

    def _poll_cancels(self) -> None:
        """Read what the loop sent meanwhile without blocking, and take the CANCEL frames out of it; the other
        frames keep their place in the queue."""
        try:
            chunk = self.sock.recv(_READ_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            self._read_at = self._clock()  # nothing new; the frames read before may still hold one
        else:
            if not chunk:
                self._cancelled.add(self.number)  # the loop itself is gone
                return
            self._read_at = self._clock()
            self._frames.extend(self._decoder.feed(chunk))
        self._take_cancels()

    def _take_cancels(self) -> None:
        """Note the CANCEL frames among those already read, and take them out of the queue."""
        frames = self._frames
        if not frames:
            return
        for _ in range(len(frames)):  # once round the queue: the CANCEL frames taken out, the others in order
            frame = frames.popleft()
            if frame[0] == Kind.CANCEL:
                self._note_cancel(frame[1])
            else:
                frames.append(frame)

    def cancelled(self) -> bool:
        """Whether the loop said the running request's client is gone; a non-blocking read per call."""
        if self.number not in self._cancelled:
            self._poll_cancels()
        return self.number in self._cancelled

    def _write(self, data: bytes, end: bool) -> None:
        self.sock.sendall(data)

    def _write_file(self, data: bytes, fd: int) -> None:
        assert self.file_socket is not None
        socket.send_fds(self.file_socket, [b"F"], [fd])
        self.sock.sendall(data)


def serve(channel: Channel, app: WSGIApp, settings: WorkerSettings) -> None:
    while True:
        frame = channel.next_request()
        if frame is None:
            return
        run_request(channel, app, settings, frame[1])


def run_request(channel: ResponseFrames, app: WSGIApp, settings: WorkerSettings, payload: bytes | memoryview) -> None:
    """One REQUEST frame through the app, its response sent on ``channel`` (or one thread's part of it)."""
    params, body_bytes, body_path, _, loaded_session = decode_request(payload)
    body = body_stream(body_bytes, body_path)
    try:
        environ = build_environ(params, body, script_name=settings.script_name)
        session = None
        if loaded_session is not None:
            session = WorkerSession(loaded_session, settings.session, environ)
            environ["gateway.session"] = session.session
        try:
            run_app(
                app,
                environ,
                channel,
                debug=settings.debug,
                head_hook=session.head_headers if session else None,
            )
        except Exception:
            log.exception(
                "%s %s failed after its response had started; the response is cut short",
                environ.get("REQUEST_METHOD"),
                environ.get("REQUEST_URI", environ.get("PATH_INFO")),
            )
            channel.finish(Kind.ABORT)
            return
        channel.finish(Kind.END, session.end_payload(environ) if session is not None else b"")
    finally:
        body.close()


def prepare(settings: WorkerSettings, role: str) -> None:
    """What a worker (or a --preload template, whose forked workers inherit it) sets up before the import."""
    # Ctrl-C reaches the whole process group; the loop decides when workers stop (it closes the channel).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_level, role=f"{role} {os.getpid()}")
    tune_malloc()
    if settings.scheduling == "batch":
        use_batch_scheduling()
    sys.path[:0] = [*settings.python_path, settings.app_dir]


def import_app(settings: WorkerSettings) -> WSGIApp | None:
    """The app, imported; None (after one critical log line saying why) when it cannot be."""
    try:
        return load_app(settings.app, settings)
    except AppImportError as err:
        log.critical("%s", err)
        log.debug("%s", traceback.format_exc())
        return None


def serve_channel(sock: socket.socket, files: socket.socket | None, app: WSGIApp, settings: WorkerSettings) -> int:
    """Say READY on the channel, then serve its requests until the loop closes it; the exit status."""
    setproctitle.setproctitle(f"gateway worker [{settings.app}]")
    sock.setblocking(True)
    channel = Channel(sock, files)
    # BrokenPipe/ConnectionReset: the loop went away (it may be shutting down while we started), so nothing is
    # left to answer.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        channel.finish(Kind.READY, orjson.dumps({"pid": os.getpid()}))
        if settings.threads > 1:
            use_threads()
            server = ThreadedServer(channel, settings.threads, sock.sendall, files)
            server.serve(lambda output, payload: run_request(output, app, settings, payload))
        else:
            serve(channel, app, settings)
    return 0


def main(argv: list[str]) -> int:
    fd = int(argv[0])
    settings = WorkerSettings.decode(argv[1])
    prepare(settings, "worker")
    setproctitle.setproctitle(f"gateway worker [{settings.app}]")
    sock = socket.socket(fileno=fd)
    files = socket.socket(fileno=int(argv[2])) if len(argv) > 2 else None
    app = import_app(settings)
    if app is None:
        return EXIT_APP_LOAD
    gc.freeze()  # the app's modules live as long as the worker: never rescan them
    return serve_channel(sock, files, app, settings)
