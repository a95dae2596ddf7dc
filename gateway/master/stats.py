"""``--stats ADDR``: uWSGI's stats server, so ``uwsgitop ADDR`` and the scripts that read uWSGI's stats JSON work on
a gateway unchanged.

As uWSGI does (core/stats.c), each connection gets one JSON document and is closed. The keys are uWSGI's: the
top-level ``version``, ``listen_queue`` (the kernel's accept queue of the listeners, from TCP_INFO as uWSGI reads
it on Linux), ``pid`` and friends, and per worker ``id`` (a slot 1..N that a replacement inherits, with its
``respawn_count``), ``pid``, ``requests``, ``exceptions`` (5xx answers), ``status`` (idle, busy, or cheap while it
starts), ``avg_rt`` (µs), ``rss``, ``vsz``, ``tx``, ``harakiri_count`` (--timeout kills), ``running_time`` (µs in
requests), ``last_spawn``, ``signals`` and one entry in ``cores``. Our own numbers are under ``gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Sequence
from typing import Any

import orjson

import gateway
from gateway.config.addresses import Address
from gateway.config.errors import ConfigError
from gateway.loop.counters import COUNTERS, Counters
from gateway.loop.front import FrontContext
from gateway.loop.listeners import BoundListener
from gateway.loop.relay import State
from gateway.master.supervisor import Supervisor, WorkerProcess

log = logging.getLogger("gateway.stats")

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
#: struct tcp_info: eight u8 fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked. On a listening socket
#: Linux reports the accept queue's length in ``unacked`` and its limit in ``sacked``.
_TCP_INFO = struct.Struct("8B6I")
_STATUS = {State.STARTING: "cheap", State.IDLE: "idle", State.BUSY: "busy", State.GONE: "cheap"}


def listen_queue(listeners: Sequence[BoundListener]) -> int:
    """Connections the kernel accepted for us that we have not taken yet, over every TCP listener."""
    waiting = 0
    for listener in listeners:
        sock = listener.sock
        if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.fileno() < 0:
            continue
        with contextlib.suppress(OSError, struct.error):
            waiting += _TCP_INFO.unpack(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size))[12]
    return waiting


def _memory(pid: int) -> tuple[int, int]:
    """(rss, vsz) in bytes, from /proc (zeros when the process is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            size, resident = statm.read().split()[:2]
    except (OSError, ValueError):
        return 0, 0
    return int(resident) * _PAGE_SIZE, int(size) * _PAGE_SIZE


def _worker(worker: WorkerProcess, counters: Counters) -> dict[str, Any]:
    tally = counters.workers.get(worker.pid)
    requests = tally.requests if tally else 0
    total_time = tally.total_time if tally else 0.0
    rss, vsz = _memory(worker.pid)
    status = _STATUS[worker.relay.state]
    return {
        "id": tally.id if tally else 0,
        "pid": worker.pid,
        "accepting": int(status != "cheap"),
        "requests": requests,
        "delta_requests": requests,
        "exceptions": tally.exceptions if tally else 0,
        "harakiri_count": tally.harakiri_count if tally else 0,
        "signals": 0,
        "signal_queue": 0,
        "status": status,
        "rss": rss,
        "vsz": vsz,
        "running_time": int(total_time * 1_000_000),
        "last_spawn": int(tally.spawned_at) if tally else 0,
        "respawn_count": tally.respawn_count if tally else 0,
        "tx": tally.tx if tally else 0,
        "avg_rt": int(total_time / requests * 1_000_000) if requests else 0,
        "apps": [],
        "cores": [
            {
                "id": 0,
                "requests": requests,
                "static_requests": 0,
                "routed_requests": 0,
                "offloaded_requests": 0,
                "write_errors": 0,
                "read_errors": 0,
                "in_request": int(status == "busy"),
                "vars": [],
                "req_info": {},
            }
        ],
    }


def stats_document(pool: Supervisor, contexts: Sequence[FrontContext], listeners: Sequence[BoundListener]) -> bytes:
    counters = COUNTERS
    scheduler = pool.scheduler
    in_flight = sum(len(relay.requests) for relay in pool.workers)
    by_class: dict[str, int] = {}
    for (_, status), count in counters.responses.items():
        label = f"{status // 100}xx"
        by_class[label] = by_class.get(label, 0) + count
    requests = counters.requests
    document = {
        "version": f"gateway-{gateway.__version__}",
        "listen_queue": listen_queue(listeners),
        "listen_queue_errors": 0,
        "signal_queue": 0,
        "load": in_flight + len(scheduler.queue),
        "pid": os.getpid(),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "cwd": os.getcwd(),
        "locks": [],
        "sockets": [
            {
                "name": str(listener.listen.address),
                "proto": listener.listen.protocol,
                "queue": 0,
                "max_queue": 0,
                "shared": 0,
                "can_offload": 0,
            }
            for listener in listeners
        ],
        "workers": sorted(
            (_worker(worker, counters) for worker in pool.workers.values()), key=lambda entry: entry["id"]
        ),
        "gateway": {
            "requests": requests,
            "responses_by_class": by_class,
            "errors": by_class.get("5xx", 0),
            "latency": {
                "avg_us": int(counters.duration_sum / requests * 1_000_000) if requests else 0,
                "buckets_seconds": {
                    ("+Inf" if bound == float("inf") else repr(bound)): count
                    for bound, count in counters.cumulative_buckets()
                },
            },
            "in_flight": in_flight,
            "queue_depth": len(scheduler.queue),
            "open_connections": sum(len(context.connections) for context in contexts),
            "client_timeouts": dict(counters.timeouts),
            "spooled_bytes": {
                "request": counters.spooled_request_bytes,
                "response": counters.spooled_response_bytes,
            },
            "sessions": {
                "operations": dict(counters.session_operations),
                "errors": dict(counters.session_errors),
            },
            "worker_restarts": dict(counters.restarts),
            "tx": counters.tx,
        },
    }
    return orjson.dumps(document)


async def open_server(address: Address, handler: Any, what: str, limit: int = 1 << 16) -> asyncio.Server:
    """A TCP or unix server for ``handler(reader, writer)``; an address that cannot be bound is a ConfigError
    naming the option ``what``."""
    try:
        if address.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address.path)
            return await asyncio.start_unix_server(handler, path=address.path, limit=limit)
        return await asyncio.start_server(
            handler, host=address.host, port=address.port, reuse_address=True, limit=limit
        )
    except OSError as err:
        raise ConfigError(f"{what} {address}: cannot listen: {err.strerror or err}") from None


class StatsServer:
    """One JSON document per connection, then close (uWSGI's stats server)."""

    def __init__(self, pool: Supervisor, contexts: Sequence[FrontContext], listeners: Sequence[BoundListener]) -> None:
        self.pool = pool
        self.contexts = contexts
        self.listeners = listeners
        self.server: asyncio.Server | None = None
        self.path: str | None = None

    async def start(self, address: Address) -> None:
        self.server = await open_server(address, self._answer, "--stats")
        self.path = address.path
        log.info("stats (uWSGI's format, for uwsgitop) on %s", bound_address(self.server, address))

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(stats_document(self.pool, self.contexts, self.listeners))
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        close_server(self.server, self.path)
        self.server = None


def close_server(server: asyncio.Server | None, path: str | None) -> None:
    """Stop listening; a unix socket file we created goes too."""
    if server is None:
        return
    server.close()
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


def bound_address(server: asyncio.Server, address: Address) -> str:
    """Where ``server`` listens, the kernel's port for a ``:0``."""
    if address.path is not None or not server.sockets:
        return str(address)
    host, port = server.sockets[0].getsockname()[:2]
    return str(Address(host=host, port=port))
