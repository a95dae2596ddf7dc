"""Listeners on real sockets in this process: what ``serve`` sets on a listening socket reaches what it accepts.

The fronts' decisions are tested on fakes (tests/test_front_*.py); here the kernel's part is checked: a TCP
listener for FastCGI or uwsgi is corked, Linux copies the option to every socket accepted from it, and a
connection's first write through its OutputBuffer uncorks its own socket (a stream must not wait for the cork's
200 ms timer). HTTP listeners, whose connections are kept alive, are left alone.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config.addresses import Address, Listen, ProtocolName
from gateway.config.settings import Config
from gateway.loop.front import FrontConnection, FrontContext
from gateway.loop.listeners import bind, serve
from gateway.protocols.uwsgi import encode_request
from tests.fakes import FakeDispatcher, params


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.001)


def _corked(sock: socket.socket) -> int:
    """TCP_CORK of a socket (or of the TransportSocket an asyncio transport gives for it)."""
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_CORK))


@pytest.mark.parametrize(("protocol", "corked"), [("uwsgi", True), ("fastcgi", True), ("http", False)])
async def test_one_request_protocols_accept_corked_sockets(
    tmp_path: Path, protocol: ProtocolName, corked: bool
) -> None:
    listener = bind(Listen(protocol, Address(host="127.0.0.1", port=0)), 16, None)
    dispatcher = FakeDispatcher()
    context = FrontContext(Config(workers=1), dispatcher, str(tmp_path), "test", tcp=True)
    await serve(listener, context, 16)
    try:
        assert context.corked is corked
        assert _corked(listener.sock) == int(corked)
        port = listener.listen.address.port
        assert port is not None
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            await _until(lambda: len(context.connections) == 1, "the connection accepted")
            (connection,) = context.connections
            assert isinstance(connection, FrontConnection) and connection.transport is not None
            accepted = connection.transport.get_extra_info("socket")
            assert _corked(accepted) == int(corked), "the listener's cork is inherited by the accepted socket"
            if protocol != "uwsgi":
                return
            client.sendall(encode_request(params()))
            await _until(lambda: len(dispatcher.submitted) == 1, "the request read")
            sink = dispatcher.submitted[0].sink
            sink.send_head(b"200 OK\r\n\r\n")  # a stream: through the OutputBuffer
            assert _corked(accepted) == 0, "a stream is uncorked before its first byte"
            sink.send_body(b"streamed")
            sink.finish()
            client.setblocking(False)
            received = b""
            while chunk := await asyncio.get_running_loop().sock_recv(client, 1 << 16):
                received += chunk
            assert received == b"HTTP/1.1 200 OK\r\n\r\nstreamed"
    finally:
        listener.close()
