"""A worker with --threads: the main thread reads the channel, N threads run requests, one lock for writing.

The loop hands this worker up to N requests at once (more only with --pipeline under a deep queue). The main
thread reads every frame as it comes: a REQUEST goes into a FIFO that the runner threads take from in order, a
CANCEL is noted at once (a running request stops its output between chunks; one not started yet is skipped when
its turn comes), so a thread never reads the socket. A thread takes its next request only after it has sent the
END of the last one, which is what lets the loop tell which requests run (the first N it has not seen end) and
which it may give back to another worker if this one dies.

Each request writes its own frames (:class:`ThreadResponse`) through the channel's lock: a SELECT frame naming the
request goes first whenever the frames before it on the socket were another request's, and an END or ABORT ends
the selection.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import Protocol

from gateway.contract.channel import CANCEL_PAYLOAD, Kind, Payload, encode_select
from gateway.worker.frames import ResponseFrames

log = logging.getLogger("gateway.worker")

#: Cancellations remembered beyond this many are pruned to the most recent requests' numbers.
_CANCELS_KEPT = 256


class _Reader(Protocol):
    def read_frame(self) -> tuple[int, Payload] | None: ...


class ThreadResponse(ResponseFrames):
    """One request's response on a threaded worker: batched as on a one-thread worker, written under the lock."""

    def __init__(self, server: ThreadedServer, number: int) -> None:
        super().__init__()
        self._server = server
        self.number = number
        self.files = server.files is not None

    def _write(self, data: bytes, end: bool) -> None:
        self._server.write(self.number, data, end)

    def _write_file(self, data: bytes, fd: int) -> None:
        self._server.write(self.number, data, False, fd)

    def cancelled(self) -> bool:
        return self.number in self._server.cancelled


#: What runs one request: its output and its REQUEST frame's payload.
RunRequest = Callable[[ResponseFrames, Payload], None]


class ThreadedServer:
    """The threads of one worker and the state they share: the work queue, the cancellations, the writer lock."""

    def __init__(
        self,
        channel: _Reader,
        threads: int,
        sock_sendall: Callable[[bytes], None],
        files: socket.socket | None = None,
    ) -> None:
        self._channel = channel
        self._sendall = sock_sendall
        self.files = files
        self.threads = threads
        self._work: queue.SimpleQueue[tuple[int, Payload] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: The request whose frames were written last, while its response is not over (0: none).
        self._selected = 0
        #: Numbers of the requests whose clients left (set.add and `in` are atomic under the GIL).
        self.cancelled: set[int] = set()
        self.number = 0

    def serve(self, run: RunRequest) -> None:
        """Run requests until the loop closes the channel, then let the threads finish what they hold."""
        runners = [
            threading.Thread(target=self._run, args=(run,), name=f"gateway-request-{index}", daemon=True)
            for index in range(self.threads)
        ]
        for runner in runners:
            runner.start()
        try:
            self._read()
        finally:
            for _ in runners:
                self._work.put(None)
            for runner in runners:
                runner.join()

    def _read(self) -> None:
        read_frame = self._channel.read_frame
        while (frame := read_frame()) is not None:
            kind, payload = frame
            if kind == Kind.REQUEST:
                self.number += 1
                self._work.put((self.number, payload))
            elif kind == Kind.CANCEL:
                (number,) = CANCEL_PAYLOAD.unpack(payload)
                cancelled = self.cancelled
                cancelled.add(number)
                if len(cancelled) > _CANCELS_KEPT:
                    # A CANCEL that crossed its request's END is never discarded by a thread: forget old ones.
                    oldest = self.number - _CANCELS_KEPT
                    self.cancelled = {kept for kept in cancelled if kept > oldest}

    def _run(self, run: RunRequest) -> None:
        work = self._work
        while (item := work.get()) is not None:
            number, payload = item
            output = ThreadResponse(self, number)
            try:
                if number in self.cancelled:
                    log.debug("request %d skipped: its client left while it waited in this worker", number)
                    output.finish(Kind.END)  # never started: the loop only needs to know it is over
                else:
                    run(output, payload)
            except (BrokenPipeError, ConnectionResetError):
                return  # the loop is gone: nothing is left to answer
            finally:
                self.cancelled.discard(number)

    def write(self, number: int, data: bytes, end: bool, fd: int = -1) -> None:
        """Frames of request ``number``, selected first if the socket's last frames were another request's; a
        file response's descriptor (``fd``) goes over the files socket first, in the same order as its frame."""
        with self._lock:
            if fd >= 0:
                assert self.files is not None
                socket.send_fds(self.files, [b"F"], [fd])
            if self._selected != number:
                self._sendall(encode_select(number) + data)
            else:
                self._sendall(data)
            self._selected = 0 if end else number
