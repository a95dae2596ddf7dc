"""What every wire protocol's connection shares: admission, output flow control, closing on bad input.

A front connection is an ``asyncio.BufferedProtocol`` whose reads land in the loop's one read buffer, sized by the
memory budget (gateway/loop/budget.py), and whose ``data_received`` only feeds its sans-IO codec and acts on the
events. Subclasses (FastCGI, uwsgi, HTTP) differ only in the codec and in how a response is framed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from gateway.config.addresses import IPNetwork
from gateway.config.settings import Config
from gateway.loop.budget import MemoryBudget
from gateway.loop.counters import COUNTERS
from gateway.loop.dispatch import Dispatcher
from gateway.loop.filesend import FileSegment
from gateway.loop.request import ResponseSink, respond_error
from gateway.loop.spool import OutputBuffer, RequestBody

log = logging.getLogger("gateway.front")

#: The transport's own buffer before it asks us to pause; beyond it the OutputBuffer holds (and spools) data.
_WRITE_HIGH_WATER = 1 << 18

#: struct linger {on, 0 seconds}: close() sends RST and drops unsent data.
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass(slots=True, eq=False)
class FrontContext:
    """What connections of one listener need from the gateway."""

    config: Config
    dispatcher: Dispatcher
    spool_dir: str
    label: str  # the listener, for log lines about unix-socket peers
    allowed: tuple[IPNetwork, ...] = ()
    connections: set[FrontConnection] = field(default_factory=set)
    #: Told when a connection opens or closes, to enforce --max-connections across listeners.
    on_count_changed: Callable[[], None] | None = None
    #: The listener is TCP: a close is corked with its last bytes (``close_when_drained``), a reset is an RST.
    tcp: bool = False
    #: The listener itself is corked (``listeners.serve``: FastCGI and uwsgi on TCP), so every connection it
    #: accepts starts corked: a whole response and its close leave in one segment with the FIN at no cost per
    #: connection, and the first write through an OutputBuffer (a stream, a kept-alive FastCGI connection)
    #: uncorks it (``_open_output``).
    corked: bool = False
    #: TLS served by the loop on this listener (HTTP with --certfile/--keyfile); None for plain text.
    tls: ssl.SSLContext | None = None
    #: The listener's codec limits, built from the config by its first connection and shared by the rest. (Any,
    #: not object: compiled, a dataclass field annotated with a builtin other than the primitives fails at import.)
    codec_limits: Any = None
    #: What incomplete requests may hold, loop-wide: one for every listener (the gateway passes it); made from the
    #: config when not given (a context of its own, as in-process tests build).
    shared_budget: MemoryBudget | None = None
    # The loop's bound methods, looked up once: asyncio.get_running_loop() costs a getpid() syscall per call.
    clock: Callable[[], float] = field(init=False)
    budget: MemoryBudget = field(init=False)
    #: The budget's whole read buffer, where every read lands (``FrontConnection.buffer_updated``): a memoryview
    #: (typed Any for mypyc, as ``codec_limits``).
    read_buffer: Any = field(init=False)
    call_soon: Callable[..., object] = field(init=False)

    def new_body(self) -> RequestBody:
        return RequestBody(self.config.body_spool_threshold, self.spool_dir)

    def __post_init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.clock = loop.time
        self.call_soon = loop.call_soon
        budget = self.shared_budget
        if budget is None:
            budget = MemoryBudget(self.config.max_connection_buffer, self.config.max_buffered)
        self.budget = budget
        self.read_buffer = budget.read_buffer

    def sweep(self, now: float) -> None:
        for connection in list(self.connections):
            connection.check_timeouts(now)


class FrontConnection(asyncio.BufferedProtocol):
    """Base of the per-connection protocols."""

    protocol_name = "?"
    #: Bytes this connection's incomplete requests hold (its share of ``context.budget``), and whether the budget
    #: paused its reading. Class defaults, shadowed per instance once they change: a connection that never holds
    #: anything (a request whole in one read) never pays for setting them.
    held = 0
    input_paused = False
    # The same for the rest of the per-connection state: a connection that carries one request (uwsgi, FastCGI
    # without keep-conn) sets only what it changes.
    transport: asyncio.Transport | None = None
    #: Made by the first write that needs it (``_open_output``); a whole response and its close never do.
    output: OutputBuffer | None = None
    _peer: str | None = None
    closed = False
    # Timeout bookkeeping, read by FrontContext.sweep once a second: plain floats, no timer per connection.
    # ``input_since`` is set by __init__ (a new connection owes us a request); ``last_input`` is read only once a
    # read has set it (``head_pending`` false), ``idle_since`` only once ``input_since`` went back to None.
    head_pending = True
    last_input = 0.0
    idle_since = 0.0

    def __init__(self, context: FrontContext) -> None:
        self.context = context
        self.input_since: float | None = context.clock()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without always subclassing it.
        self.transport = transport  # type: ignore[assignment]
        context = self.context
        if context.allowed:
            peername = transport.get_extra_info("peername")
            if isinstance(peername, tuple) and peername and not _allowed(peername[0], context.allowed):
                log.warning(
                    "%s %s: peer is not in the allow-list (--allow-from / FCGI_WEB_SERVER_ADDRS); closed",
                    self.protocol_name,
                    self.peer,
                )
                self.closed = True
                cast(asyncio.Transport, transport).abort()
                return
        # The transport's write limits are set with the OutputBuffer (``_open_output``): only its flow control
        # reads them, and a connection answered by one write and its close never makes one.
        context.connections.add(self)
        if context.on_count_changed is not None:
            context.on_count_changed()

    # -- input: the budget sizes each read (gateway/loop/budget.py) -------------------------------------------------
    def get_buffer(self, sizehint: int) -> memoryview:
        return self.context.budget.read_view

    def buffer_updated(self, nbytes: int) -> None:
        # A bytes object of its own, as uvloop makes from its buffer: the codecs keep views of it (body chunks).
        self.data_received(bytes(self.context.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        """One read's bytes, for the codec; the subclass's."""
        raise NotImplementedError

    @property
    def peer(self) -> str:
        """HOST:PORT of the other end (the listener for unix sockets); looked up only when a log line needs it."""
        peer = self._peer
        if peer is None:
            peername = self.transport.get_extra_info("peername") if self.transport is not None else None
            peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) and peername else self.context.label
            self._peer = peer
        return peer

    def _open_output(self) -> OutputBuffer | None:
        """The connection's OutputBuffer, made on first use; None once the connection is closed.

        Made lazily because a connection that closes after one whole response needs none: the response goes
        straight to the transport with the close (``UwsgiConnection.finish``, ``FastCGIConnection.end``), which
        saves the buffer's set-up and end-of-turn flush.
        """
        output = self.output
        transport = self.transport
        if output is None and not self.closed and transport is not None:
            context = self.context
            if context.corked:
                _set_cork(transport, 0)  # written as produced from here on, not held for the close
            transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
            output = self.output = OutputBuffer(
                transport, context.config.response_spool_threshold, context.spool_dir, context.call_soon
            )
        return output

    def write(self, data: bytes | memoryview) -> None:
        output = self.output or self._open_output()
        if output is not None:
            output.write(data)

    def writelines(self, pieces: list[bytes | memoryview]) -> None:
        output = self.output or self._open_output()
        if output is not None:
            output.writelines(pieces)

    def send_segment(self, segment: FileSegment) -> None:
        """A file's range, sent by the kernel after what was written before (gateway/loop/filesend.py)."""
        output = self.output or self._open_output()
        if output is None:
            segment.close()
        else:
            output.send_file(segment)

    def close_when_drained(self, last: bytes = b"") -> None:
        """Write ``last``, then close once everything written has been handed to the transport (which sends it
        before closing).

        On TCP the socket is corked first, so the response's last segment carries the FIN instead of a segment of
        its own after it: 8 segments per connection instead of 10 for both kernels to process, and the web server
        reads the response and its end in one wake-up. Full segments still leave at once; only the last partial
        one waits, for the close that follows.
        """
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return
        output = self.output
        if output is None:
            if self.context.tcp and not self.context.corked:
                _set_cork(transport, 1)
            if last:
                transport.write(last)
            transport.close()
        else:
            if self.context.tcp:
                _set_cork(transport, 1)
            if last:
                output.write(last)
            output.close_when_drained()

    def pause_writing(self) -> None:
        if self.output is None and self.transport is not None and self.transport.is_closing():
            return  # a whole response written with the close: nothing of ours to hold back
        output = self.output or self._open_output()
        if output is not None:
            output.pause_writing()

    def resume_writing(self) -> None:
        if self.output is not None:
            self.output.resume_writing()

    def protocol_error(self, reason: object) -> None:
        """Bad input from the peer: one log line, this connection closed, nothing else touched."""
        log.warning("%s %s: %s; connection closed", self.protocol_name, self.peer, reason)
        self.abort_connection()

    def body_too_large(self, sink: ResponseSink, limit: int) -> None:
        log.warning(
            "%s %s: request body exceeds %d bytes (--max-body-size); answered 413", self.protocol_name, self.peer, limit
        )
        respond_error(sink, "413 Content Too Large")

    def abort_connection(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def reset_connection(self) -> None:
        """Close with a TCP reset, so the web server sees a failed response rather than one ended by close.

        A plain close is how a uwsgi response (and a FastCGI one without keep-conn, to lenient servers) ends
        successfully; SO_LINGER 0 turns the close into an RST, which no web server mistakes for success.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.output is not None:
            self.output.flush()  # what the app produced goes out before the reset
        sock = transport.get_extra_info("socket") if self.context.tcp else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self in self.context.connections:
            self.context.connections.discard(self)
            if self.context.on_count_changed is not None:
                self.context.on_count_changed()
        if self.output is not None:
            self.output.discard()
        self.release_requests()
        if self.held or self.input_paused:
            self.release_held()

    # -- memory budgets (gateway/loop/budget.py) ----------------------------------------------------------------
    def account(self, held: int) -> None:
        """After a read: this connection's incomplete requests now hold ``held`` bytes (a change)."""
        budget = self.context.budget
        before, self.held = self.held, held
        budget.change(self, before, held)
        if held > budget.per_connection:
            log.warning(
                "%s %s: incomplete requests hold %d bytes, over --max-connection-buffer (%d); connection closed",
                self.protocol_name,
                self.peer,
                held,
                budget.per_connection,
            )
            self.abort_connection()
            self.release_requests()
            self.release_held()
        elif held > before:
            if budget.total > budget.limit:
                budget.pressure(self)
        elif budget.paused:
            budget.relieve()

    def release_held(self) -> None:
        """This connection holds nothing any more (closed, or its requests released)."""
        budget = self.context.budget
        if self.held:
            budget.change(self, self.held, 0)
            self.held = 0
        if self.input_paused:
            self.input_paused = False
            budget.forget(self)
        if budget.paused:
            budget.relieve()

    def spool_bodies(self) -> None:
        """Move the bodies of incomplete requests to their files now (the loop-wide budget is exceeded), and
        account for what that freed (``set_held``)."""

    def set_held(self, held: int) -> None:
        """``held`` without the checks of ``account``: it only went down (bodies spooled)."""
        self.context.budget.change(self, self.held, held)
        self.held = held

    def pause_input(self) -> bool:
        """Stop reading from this connection (the loop-wide budget); False if it cannot be paused."""
        transport = self.transport
        if self.input_paused or self.closed or transport is None or transport.is_closing():
            return False
        transport.pause_reading()
        self.input_paused = True
        return True

    def resume_input(self) -> None:
        transport = self.transport
        if self.input_paused and transport is not None and not transport.is_closing():
            transport.resume_reading()
        self.input_paused = False

    def release_requests(self) -> None:
        """Release whatever requests this connection had in flight."""

    def busy(self) -> bool:
        """A request of this connection is being served (so no idle or input timeout applies)."""
        return False

    def track_input(self, input_pending: bool, head_pending: bool) -> float:
        """Called after each read with what the codec still waits for; returns the time of the read."""
        now = self.last_input = self.context.clock()
        if input_pending:
            if self.input_since is None:
                self.input_since = now
            self.head_pending = head_pending
        else:
            self.input_since = None
            self.idle_since = now
        return now

    def check_timeouts(self, now: float) -> None:
        """Close this connection if the web server (or whoever connected) broke one of the time limits."""
        config = self.context.config
        if self.closed:
            return
        since = self.input_since
        if since is not None:
            if self.head_pending and now - since > config.header_timeout:
                self._timed_out(
                    f"params not complete {now - since:.1f} s after the request began (--header-timeout)", "header"
                )
            elif not self.head_pending and now - self.last_input > config.body_timeout:
                self._timed_out(f"no body data for {now - self.last_input:.1f} s (--body-timeout)", "body")
            elif now - since > config.read_timeout:
                self._timed_out(f"request still incomplete after {now - since:.1f} s (--read-timeout)", "read")
        elif now - self.idle_since > config.keepalive_timeout and not self.busy():
            if self.output is not None and self.output.pending:
                return  # still writing a response to a slow reader
            log.info(
                "%s %s: idle for %.0f s (--keepalive-timeout); closed",
                self.protocol_name,
                self.peer,
                now - self.idle_since,
            )
            COUNTERS.client_timeout("keepalive")
            if self.transport is not None:
                self.transport.close()

    def _timed_out(self, reason: str, kind: str) -> None:
        COUNTERS.client_timeout(kind)
        log.warning("%s %s: %s; connection closed", self.protocol_name, self.peer, reason)
        self.abort_connection()


def _set_cork(transport: asyncio.Transport, on: int) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, on)


def _allowed(host: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
