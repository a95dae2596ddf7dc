"""Binding listen sockets and serving a wire protocol on each.

``PROTOCOLS`` maps a protocol name to the module and name of its connection class; HTTP/1.1, the third wire
protocol, was one more entry and one more class, with dispatch untouched (the one change to this seam: a
listener's context may carry TLS). A front's module is imported when a listener for it starts serving, so a
master that speaks no HTTP never loads the HTTP parser and what its front imports (``benchmarks/RESULTS.md``,
History: the master's memory).
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import logging
import os
import socket
import stat
from dataclasses import dataclass

from gateway.config.addresses import Address, Listen
from gateway.config.errors import ConfigError
from gateway.loop.front import FrontConnection, FrontContext

log = logging.getLogger("gateway.listeners")

PROTOCOLS: dict[str, tuple[str, str]] = {
    "fastcgi": ("gateway.loop.fastcgi_front", "FastCGIConnection"),
    "uwsgi": ("gateway.loop.uwsgi_front", "UwsgiConnection"),
    "http": ("gateway.loop.http_front", "HTTPConnection"),
}


def connection_class(protocol: str) -> type[FrontConnection]:
    """The connection class serving ``protocol`` (one of ``PROTOCOLS``), its module imported on first use."""
    module, name = PROTOCOLS[protocol]
    found: type[FrontConnection] = getattr(importlib.import_module(module), name)
    return found


#: Protocols whose connections mostly carry one request (uwsgi always, FastCGI without keep-conn): their TCP
#: listeners are corked, and every socket accepted from them starts corked (Linux copies the option), so a whole
#: response and its close leave together, in one segment with the FIN, without a setsockopt per connection.
#: The first write through a connection's OutputBuffer uncorks it (``FrontConnection._open_output``).
CORKED_PROTOCOLS = frozenset({"fastcgi", "uwsgi"})


def _cork(sock: socket.socket) -> bool:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
    except OSError as err:  # not Linux's TCP, or an adopted socket that refuses it: corked per close instead
        log.debug("listener %s: TCP_CORK refused (%s)", sock, err)
        return False
    return True


@dataclass(slots=True)
class BoundListener:
    listen: Listen
    sock: socket.socket
    server: asyncio.Server | None = None
    #: A socket file we created is ours to remove; one systemd passed us belongs to the socket unit.
    owns_path: bool = True

    def close(self) -> None:
        if self.server is not None:
            self.server.close()  # it owns a duplicate of the socket
            self.server = None
        self.sock.close()
        path = self.listen.address.path
        if path is not None and self.owns_path:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:  # e.g. after --user, the directory is not ours to write
                log.warning("could not remove socket file %s: %s", path, err.strerror or err)


def adopt(listen: Listen, sock: socket.socket) -> BoundListener:
    """A socket that is already listening (systemd socket activation)."""
    sock.setblocking(False)
    return BoundListener(listen, sock, owns_path=False)


def bind(listen: Listen, backlog: int, socket_mode: int | None, *, reuse_port: bool = False) -> BoundListener:
    """Bind and listen; a TCP port 0 is the kernel's choice, and the listener's address then names that port."""
    address = listen.address
    try:
        sock = _bind_unix(address, socket_mode) if address.is_unix else _bind_tcp(address, reuse_port)
        sock.listen(backlog)
    except OSError as err:
        raise ConfigError(f"cannot listen for {listen.protocol} on {address}: {err.strerror or err}") from err
    sock.setblocking(False)
    if address.port == 0:
        listen = Listen(listen.protocol, Address(host=address.host, port=sock.getsockname()[1]))
    return BoundListener(listen, sock)


def _bind_tcp(address: Address, reuse_port: bool) -> socket.socket:
    assert address.host is not None
    assert address.port is not None
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            # --reuse-port: several gateways bind this port and the kernel spreads new connections among them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_unix(address: Address, socket_mode: int | None) -> socket.socket:
    path = address.path
    assert path is not None
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        if socket_mode is not None:
            os.chmod(path, socket_mode)
    except OSError:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a crashed run is replaced; one a live server answers on is never stolen."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("replacing stale socket %s", path)
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another server is listening on {path}")


async def serve(listener: BoundListener, context: FrontContext, backlog: int) -> None:
    """Start accepting on ``listener``; callable again after ``pause`` to resume."""
    loop = asyncio.get_running_loop()
    protocol = listener.listen.protocol
    connection = connection_class(protocol)
    if context.tcp and protocol in CORKED_PROTOCOLS:
        context.corked = _cork(listener.sock)
    # The server gets a duplicate of the listening socket: closing the server (to pause accepting) closes only the
    # duplicate, so the socket keeps listening and the kernel's backlog holds new connections until we resume.
    accepting = socket.socket(fileno=os.dup(listener.sock.fileno()))
    accepting.setblocking(False)
    listener.server = await loop.create_server(
        lambda: connection(context),
        sock=accepting,
        backlog=backlog,
        ssl=context.tls,
        ssl_handshake_timeout=context.config.header_timeout if context.tls is not None else None,
    )


def pause(listener: BoundListener) -> None:
    if listener.server is not None:
        listener.server.close()
        listener.server = None
