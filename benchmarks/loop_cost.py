"""The Python each request costs the event loop and a worker, measured without the kernel, nginx or wrk.

A whole-system run on a busy 2-core machine swings by ±20% from one minute to the next, which hides a change
worth a few per cent. Here the real front connection (FastCGI with or without keep-conn, uwsgi, or HTTP/1.1 with
keep-alive or ``Connection: close``, as wrk sends it to ``--http``), the real
dispatcher with the default session hook, and the real supervisor, scheduler and relays run on an event loop, with
in-memory transports, and each worker is played in this process by the real worker ``Channel`` and
``run_request`` on an in-memory socket. Time spent in the loop's code and in the workers' code is counted apart,
per request, as the median of several repetitions. Use it to compare two versions of the hot path (run it in each
checkout); the system benchmarks (``make bench``) say what the change is worth end to end.

Even this timing moves by ±20% on a shared virtual machine, whose speed itself varies. ``--opcodes`` counts the
Python bytecode instructions each request executes instead (with ``sys.settrace``, so slowly, over fewer
requests): a deterministic measure of the interpreted work, blind only to time spent inside C functions.

    python -m benchmarks.loop_cost [--mode fcgi-keep|fcgi|uwsgi|http-keep|http ...] [--requests N] [--repeat K]
        [--opcodes] [--counters]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks.apps import app as benchmark_app
from gateway.config.settings import Config
from gateway.contract.channel import Kind, encode_frame
from gateway.contract.startup import WorkerSettings
from gateway.loop.counters import COUNTERS
from gateway.loop.dispatch import Dispatcher
from gateway.loop.fastcgi_front import FastCGIConnection
from gateway.loop.front import FrontConnection, FrontContext
from gateway.loop.http_front import HTTPConnection
from gateway.loop.uwsgi_front import UwsgiConnection
from gateway.master.server import session_hook_for
from gateway.master.supervisor import Supervisor
from gateway.protocols.fastcgi.client import encode_request as fastcgi_request
from gateway.protocols.uwsgi import encode_request as uwsgi_request
from gateway.worker.process import Channel, run_request

#: What nginx's stock fastcgi_params / uwsgi_params send for ``GET /hello`` from wrk (which sends only Host).
PARAMS = {
    "QUERY_STRING": "",
    "REQUEST_METHOD": "GET",
    "CONTENT_TYPE": "",
    "CONTENT_LENGTH": "",
    "SCRIPT_NAME": "/t/ours/hello",
    "REQUEST_URI": "/t/ours/hello",
    "DOCUMENT_URI": "/t/ours/hello",
    "DOCUMENT_ROOT": "/usr/share/nginx/html",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REQUEST_SCHEME": "http",
    "GATEWAY_INTERFACE": "CGI/1.1",
    "SERVER_SOFTWARE": "nginx/1.22.1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "40000",
    "SERVER_ADDR": "127.0.0.1",
    "SERVER_PORT": "8080",
    "SERVER_NAME": "localhost",
    "REDIRECT_STATUS": "200",
    "HTTP_HOST": "127.0.0.1:8080",
}
#: What wrk sends to an HTTP listener (``-H "Connection: close"`` for the one-request mode).
HTTP_REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"
HTTP_CLOSE_REQUEST = b"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nConnection: close\r\n\r\n"
MODES = ("fcgi-keep", "fcgi", "uwsgi", "http-keep", "http")
#: Modes whose connections carry many requests: opened once, not per request.
KEPT_MODES = ("fcgi-keep", "http-keep")


class _FrontTransport:
    """Stands in for the web server's connection: counts what the gateway writes to it."""

    def __init__(self, protocol: FrontConnection, call_soon: Callable[..., object]) -> None:
        self.protocol = protocol
        self.call_soon = call_soon
        self.written = 0
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += len(data)

    def writelines(self, pieces: list[bytes]) -> None:
        self.written += sum(map(len, pieces))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.call_soon(self.protocol.connection_lost, None)  # as uvloop does, on the next turn

    abort = close

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # The addresses a TCP listener's transport gives (the HTTP front copies them into each request).
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class _MemorySocket:
    """The worker's end of its channel, in memory: what the loop wrote is read here, what the worker sends is kept."""

    def __init__(self) -> None:
        self.inbox = bytearray()
        self.outbox: list[bytes] = []

    def recv(self, size: int, flags: int = 0) -> bytes:
        if not self.inbox:
            if flags & socket.MSG_DONTWAIT:
                raise BlockingIOError
            return b""  # nothing more this turn: the stand-in stops reading
        data = bytes(self.inbox[:size])
        del self.inbox[:size]
        return data

    def sendall(self, data: bytes) -> None:
        self.outbox.append(data)


class _ChannelTransport:
    """The loop's end of a worker's channel: frames the relay writes go straight to the stand-in's socket."""

    def __init__(self, sock: _MemorySocket) -> None:
        self.sock = sock

    def write(self, data: bytes | bytearray) -> None:
        self.sock.inbox += data

    def writelines(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.sock.inbox += piece

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


@dataclass
class _Process:
    pid: int


class _StandIn:
    """One worker process played in this process."""

    def __init__(self, pool: Supervisor, pid: int, settings: WorkerSettings) -> None:
        self.sock = _MemorySocket()
        self.channel = Channel(self.sock)  # type: ignore[arg-type]  # only recv and sendall are used
        self.settings = settings
        self.relay = pool.attach(_Process(pid))  # type: ignore[arg-type]  # only the pid is used
        self.relay.connection_made(_ChannelTransport(self.sock))  # type: ignore[arg-type]
        # What a started worker says once it has imported the app: from here on it gets requests.
        self.relay.data_received(encode_frame(Kind.READY, b'{"pid": %d}' % pid))

    def run_requests(self) -> bool:
        """Run every request the loop handed over; True if there were any."""
        ran = False
        while self.sock.inbox or self.channel.has_pending_input:  # frames read ahead wait there
            frame = self.channel.next_request()
            if frame is None:
                break
            run_request(self.channel, benchmark_app, self.settings, frame[1])
            ran = True
        return ran

    def deliver(self) -> None:
        """What the worker sent reaches the loop in one read, as it would from the socket."""
        if self.sock.outbox:
            data = b"".join(self.sock.outbox)
            self.sock.outbox.clear()
            self.relay.data_received(data)


@dataclass
class Cost:
    loop_us: float
    worker_us: float
    loop_opcodes: float = 0.0
    worker_opcodes: float = 0.0


class _OpcodeCounter:
    """Counts the bytecode instructions executed in frames entered while it is installed, per side."""

    def __init__(self) -> None:
        self.counts = {"loop": 0, "worker": 0}
        self.side = "loop"

    def install(self) -> None:
        sys.settrace(self._entered)

    def remove(self) -> None:
        sys.settrace(None)

    def _entered(self, frame: Any, event: str, arg: Any) -> Callable[..., Any]:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return self._step

    def _step(self, frame: Any, event: str, arg: Any) -> Callable[..., Any]:
        if event == "opcode":
            self.counts[self.side] += 1
        return self._step


async def measure(
    mode: str, requests: int, connections: int, workers: int, count_opcodes: bool = False, counters: bool = False
) -> Cost:
    config = Config(workers=workers)
    # Driven without starting processes: stand-ins attach in their place. With ``counters``, each response is
    # counted as under --stats or --metrics.
    pool = Supervisor(config, access_log=COUNTERS if counters else None)
    hook = session_hook_for(config)
    dispatcher = Dispatcher(pool, [hook] if hook is not None else [])
    spool = tempfile.mkdtemp(prefix="loop-cost-")
    context = FrontContext(config, dispatcher, spool, "loop-cost")
    settings = pool.worker_settings  # what a real worker is started with
    stand_ins = [_StandIn(pool, 1000 + number, settings) for number in range(workers)]
    keep = mode in KEPT_MODES
    factory: Callable[[FrontContext], FrontConnection]
    if mode == "uwsgi":
        payload = uwsgi_request(PARAMS)
        factory = UwsgiConnection
    elif mode.startswith("http"):
        payload = HTTP_REQUEST if keep else HTTP_CLOSE_REQUEST
        factory = HTTPConnection
    else:
        payload = fastcgi_request(1, PARAMS, keep_conn=keep)
        factory = FastCGIConnection
    size = len(payload)
    kept: list[tuple[FrontConnection, _FrontTransport]] = []

    def open_connection() -> tuple[FrontConnection, _FrontTransport]:
        connection = factory(context)
        transport = _FrontTransport(connection, context.call_soon)
        connection.connection_made(transport)  # type: ignore[arg-type]
        return connection, transport

    if keep:
        kept = [open_connection() for _ in range(connections)]
    gc.collect()
    gc.freeze()
    loop_seconds = worker_seconds = 0.0
    transports: list[_FrontTransport] = []
    done = 0
    clock = time.perf_counter
    counter = _OpcodeCounter()
    if count_opcodes:
        counter.install()
    while done < requests:
        started = clock()
        batch = kept or [open_connection() for _ in range(connections)]
        for connection, _ in batch:
            # As uvloop reads: into the buffer the connection hands out, then buffer_updated (its recv_into is
            # the slice assignment here).
            connection.get_buffer(-1)[:size] = payload
            connection.buffer_updated(size)
        await asyncio.sleep(0)
        loop_seconds += clock() - started
        while True:
            started = clock()
            counter.side = "worker"
            ran = [stand_in.run_requests() for stand_in in stand_ins]
            counter.side = "loop"
            worker_seconds += clock() - started
            if not any(ran):
                break
            started = clock()
            for stand_in in stand_ins:
                stand_in.deliver()
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            loop_seconds += clock() - started
        if not kept:
            transports += [transport for _, transport in batch]
        done += connections
    counter.remove()
    transports += [transport for _, transport in kept]
    gc.unfreeze()
    answered = sum(transport.written for transport in transports)
    if pool.scheduler.queue or answered < done * len(b"Hello world\n"):
        raise SystemExit(f"{mode}: only {answered} bytes answered for {done} requests; the driver is broken")
    return Cost(
        loop_seconds / done * 1e6,
        worker_seconds / done * 1e6,
        counter.counts["loop"] / done,
        counter.counts["worker"] / done,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loop_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", action="append", choices=MODES, help="default: all five")
    parser.add_argument("--requests", type=int, default=20_000, help="per repetition (default 20000)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions; medians are printed (default 5)")
    parser.add_argument("--connections", type=int, default=32, help="requests in flight at once (default 32)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--opcodes", action="store_true", help="count bytecode instructions instead of timing")
    parser.add_argument("--counters", action="store_true", help="count each response, as --stats or --metrics do")
    args = parser.parse_args(argv)
    try:
        import uvloop  # noqa: PLC0415

        run: Callable[[Any], Any] = uvloop.run
    except ImportError:
        run = asyncio.run
    for mode in args.mode or MODES:
        if args.opcodes:
            cost = run(measure(mode, min(args.requests, 2_000), args.connections, args.workers, True, args.counters))
            print(f"{mode:10s} loop {cost.loop_opcodes:6.0f} opcodes/request   "
                  f"worker {cost.worker_opcodes:6.0f} opcodes/request", flush=True)  # fmt: skip
            continue
        costs = [
            run(measure(mode, args.requests, args.connections, args.workers, counters=args.counters))
            for _ in range(args.repeat)
        ]
        loop_us = statistics.median(cost.loop_us for cost in costs)
        worker_us = statistics.median(cost.worker_us for cost in costs)
        print(f"{mode:10s} loop {loop_us:6.1f} µs/request   worker {worker_us:6.1f} µs/request", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
