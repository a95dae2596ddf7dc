"""The worker process: imports the app once, then runs one buffered request at a time.

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
import traceback
from typing import Any

import orjson
import setproctitle

from gateway.contract.channel import CANCEL_PAYLOAD, FRAME_HEADER, Kind, WorkerRequest, encode_frame, encode_response
from gateway.contract.exits import EXIT_APP_LOAD
from gateway.contract.startup import WorkerSettings
from gateway.log import configure_logging
from gateway.memory import tune_malloc
from gateway.worker.scheduling import use_batch_scheduling
from gateway.worker.session import WorkerSession
from gateway.worker.wsgi import WSGIApp, body_stream, build_environ, run_app

log = logging.getLogger("gateway.worker")

#: Below this a body chunk waits for the next one, so a list response leaves in one write.
_COALESCE = 1 << 16
#: A frame with more than this still to come is received in place (see Channel._receive_in_place).
_RECEIVE_IN_PLACE = 1 << 16


class AppImportError(Exception):
    """The application named on the command line cannot be imported or is not callable."""


def load_app(spec: str) -> WSGIApp:
    module_name, _, attribute = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise AppImportError(f"cannot import module {module_name!r} of application {spec!r}: {err!r}") from err
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


class Channel:
    """The worker's end of the socket pair: blocking reads of requests, batched writes of responses.

    Requests are numbered in the order they arrive (the loop counts the same way); ``number`` is the one running.
    A CANCEL names a number: the running request's stops its output, a later one's makes us skip that request
    when its turn comes (the loop may have handed it to us ahead of time, while we ran another).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._rbuf = bytearray()
        self._out: list[bytes] = []
        self._out_size = 0
        # The head and the body chunks sent after it, held until the response ends (they leave as one RESPONSE
        # frame) or until something must go out now (a flush, or more than _COALESCE bytes).
        self._head: bytes | None = None
        self._held: list[bytes] = []
        self.number = 0
        self._cancelled: set[int] = set()

    @property
    def has_pending_input(self) -> bool:
        """Bytes already read from the socket wait to be decoded (frames the loop sent ahead of time)."""
        return bool(self._rbuf)

    def read_frame(self) -> tuple[int, bytes | memoryview] | None:
        """Block until one whole frame is here; None when the loop closed the channel."""
        header_size = FRAME_HEADER.size
        while True:
            buffer = self._rbuf
            if len(buffer) >= header_size:
                length, kind = FRAME_HEADER.unpack_from(buffer)
                end = header_size + length
                if len(buffer) >= end:
                    payload = bytes(memoryview(buffer)[header_size:end])
                    del buffer[:end]
                    return kind, payload
                if end - len(buffer) > _RECEIVE_IN_PLACE:
                    frame = self._receive_in_place(end)
                    return None if frame is None else (kind, frame[header_size:])
                chunk = self.sock.recv(max(end - len(buffer), 1 << 16))
            else:
                chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            buffer += chunk

    def _receive_in_place(self, end: int) -> memoryview | None:
        """The rest of a large frame (a request body) received straight into one buffer of its size: no growing
        buffer to copy from and no copy out of it. Reads stop at the frame's end, so the next frames stay queued."""
        frame = memoryview(bytearray(end))
        got = len(self._rbuf)
        frame[:got] = self._rbuf
        self._rbuf.clear()
        while got < end:
            received = self.sock.recv_into(frame[got:])
            if not received:
                return None
            got += received
        return frame

    def next_request(self) -> tuple[int, bytes | memoryview] | None:
        """The next request to run as (number, payload), skipping cancelled ones; None when the loop closed."""
        while True:
            waited = len(self._rbuf) >= FRAME_HEADER.size  # it was here before we asked: it waited behind another
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
            if waited:
                self._poll_cancels()  # its client may have left while it waited
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
        """Read what the loop sent meanwhile without blocking, and take the CANCEL frames out of it."""
        try:
            chunk = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)
        except BlockingIOError:
            chunk = None
        if chunk == b"":
            self._cancelled.add(self.number)  # the loop itself is gone
            return
        buffer = self._rbuf
        if chunk:
            buffer += chunk
        header_size = FRAME_HEADER.size
        offset = 0
        while len(buffer) - offset >= header_size:
            length, kind = FRAME_HEADER.unpack_from(buffer, offset)
            end = offset + header_size + length
            if end > len(buffer):
                break
            if kind == Kind.CANCEL:
                self._note_cancel(bytes(buffer[offset + header_size : end]))
                del buffer[offset:end]
            else:
                offset = end

    # ResponseOutput
    def send_head(self, head: bytes) -> None:
        self._release_head()
        self._head = head

    def send_body(self, data: bytes, flush: bool) -> None:
        if self._head is not None:
            self._held.append(data)
            self._out_size += len(data)
            if flush or self._out_size >= _COALESCE:
                self._release_head()
                self.flush()
            return
        self._queue(FRAME_HEADER.pack(len(data), Kind.BODY))
        self._queue(data)
        if flush or self._out_size >= _COALESCE:
            self.flush()

    def _take_held(self) -> tuple[bytes, list[bytes]]:
        """The held head and body chunks, no longer held (nor counted as queued)."""
        head, held = self._head, self._held
        assert head is not None
        self._head, self._held = None, []
        self._out_size -= sum(map(len, held))
        return head, held

    def _release_head(self) -> None:
        """The held head and body go out as HEAD and BODY frames: the response continues after them."""
        if self._head is None:
            return
        head, held = self._take_held()
        self._queue(encode_frame(Kind.HEAD, head))
        for data in held:
            self._queue(FRAME_HEADER.pack(len(data), Kind.BODY))
            self._queue(data)

    def cancelled(self) -> bool:
        """Whether the loop said the running request's client is gone; a non-blocking read per call."""
        if self.number not in self._cancelled:
            self._poll_cancels()
        return self.number in self._cancelled

    def finish(self, kind: Kind, payload: bytes = b"") -> None:
        if kind == Kind.END and self._head is not None:
            head, held = self._take_held()
            for piece in encode_response(head, held, payload):
                self._queue(piece)
        else:
            self._release_head()
            self._queue(encode_frame(kind, payload))
        self.flush()

    def _queue(self, data: bytes) -> None:
        self._out.append(data)
        self._out_size += len(data)

    def flush(self) -> None:
        if self._out:
            self.sock.sendall(b"".join(self._out) if len(self._out) > 1 else self._out[0])
            self._out.clear()
            self._out_size = 0


def serve(channel: Channel, app: WSGIApp, settings: WorkerSettings) -> None:
    while True:
        frame = channel.next_request()
        if frame is None:
            return
        run_request(channel, app, settings, frame[1])


def run_request(channel: Channel, app: WSGIApp, settings: WorkerSettings, payload: bytes | memoryview) -> None:
    """One REQUEST frame through the app, its response sent on ``channel``."""
    request = WorkerRequest.decode(payload)
    body = body_stream(request.body, request.body_path)
    try:
        environ = build_environ(request.environ, body, script_name=settings.script_name)
        session = None
        if request.session is not None:
            session = WorkerSession(request.session, settings.session, environ)
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


def main(argv: list[str]) -> int:
    fd = int(argv[0])
    settings = WorkerSettings.decode(argv[1])
    # Ctrl-C reaches the whole process group; the loop decides when workers stop (it closes the channel).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(settings.log_level, role=f"worker {os.getpid()}")
    tune_malloc()
    if settings.scheduling == "batch":
        use_batch_scheduling()
    setproctitle.setproctitle(f"gateway worker [{settings.app}]")
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    channel = Channel(sock)
    if settings.app_dir:
        sys.path.insert(0, settings.app_dir)
    try:
        app = load_app(settings.app)
    except AppImportError as err:
        log.critical("%s", err)
        log.debug("%s", traceback.format_exc())
        return EXIT_APP_LOAD
    gc.freeze()  # the app's modules live as long as the worker: never rescan them
    # BrokenPipe/ConnectionReset: the loop went away (it may be shutting down while we started), so nothing is
    # left to answer.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        channel.finish(Kind.READY, orjson.dumps({"pid": os.getpid()}))
        serve(channel, app, settings)
    return 0
