"""aiomcache's command code over connections we manage ourselves, immune to two open aiomcache defects.

aiomcache 0.8.2 gets the memcached text protocol right, but its connection handling has two holes that matter in a
server that cancels and times out requests all the time:

* aio-libs/aiomcache#489: its ``acquire`` decorator marks a connection broken only on ``Exception``. A call that is
  cancelled (or hit by ``asyncio.timeout``, which cancels) mid-flight raises ``CancelledError``, a
  ``BaseException``, so the connection goes back to the pool with a reply still unread, and the next caller reads
  someone else's answer: another user's session.
* aio-libs/aiomcache#502: ``_execute_simple_command`` loops ``while not line.endswith(b"\\r\\n")`` over
  ``reader.readline()``. Once the server has closed the connection, ``readline()`` returns ``b""`` immediately,
  without suspending, so the loop spins at 100 % CPU and never yields: not even ``asyncio.timeout`` can fire.

So we keep aiomcache for what it does well (commands, reply parsing, key validation) and call the undecorated
command functions (``functools.wraps`` leaves them on ``__wrapped__``) with connections from our own pool:

* any exception or cancellation while a connection is in use closes it, and it is never handed out again; only a
  call that returned normally, with its whole reply read, puts its connection back;
* our connections' reader raises ConnectionResetError where a line ends without a newline, i.e. at end of file,
  so no read loop can spin on a closed connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import aiomcache
from aiomcache.pool import Connection

_Command = Callable[..., Awaitable[Any]]


def _undecorated(name: str) -> _Command:
    """``aiomcache.Client.<name>`` without the pool-handling ``acquire`` decorator: ``(client, conn, *args)``."""
    command = getattr(aiomcache.Client, name)
    inner = getattr(command, "__wrapped__", None)
    if inner is None:  # pragma: no cover - only if aiomcache changes shape
        raise ImportError(
            f"aiomcache.Client.{name} has no __wrapped__: sessions/_memcache.py was written against aiomcache 0.8.2"
        )
    return cast(_Command, inner)


_GET = _undecorated("get")
_GETS = _undecorated("gets")
_SET = _undecorated("set")
_ADD = _undecorated("add")
_CAS = _undecorated("cas")
_DELETE = _undecorated("delete")
_TOUCH = _undecorated("touch")


class _EofRaisingReader(asyncio.StreamReader):
    """A StreamReader whose ``readline`` raises at end of file instead of returning a short or empty line.

    Every memcached reply line ends in ``\\r\\n``; a line without its newline means the server went away.
    """

    async def readline(self) -> bytes:
        line = await super().readline()
        if not line.endswith(b"\n"):
            raise ConnectionResetError("memcached closed the connection in the middle of a reply")
        return line


class MemcacheConnections:
    """A bounded pool of connections to one memcached (or twemproxy), and the commands the stores use.

    Connections are opened lazily and reopened after any failure, so the pool recovers by itself when the server
    comes back. Callers bound each operation with their own ``asyncio.timeout``; cancellation is always safe here.
    """

    def __init__(self, host: str, port: int, *, size: int) -> None:
        self.host = host
        self.port = port
        # Only its command implementations are used; its own pool never opens a connection.
        self._client = aiomcache.Client(host, port, pool_size=1)
        self._slots = asyncio.Semaphore(size)
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()
        self._closed = False

    async def get(self, key: bytes) -> bytes | None:
        async with self._connection() as conn:
            return cast("bytes | None", await _GET(self._client, conn, key))

    async def gets(self, key: bytes) -> tuple[bytes | None, int | None]:
        async with self._connection() as conn:
            return cast("tuple[bytes | None, int | None]", await _GETS(self._client, conn, key))

    async def set(self, key: bytes, value: bytes, exptime: int) -> bool:
        async with self._connection() as conn:
            return cast(bool, await _SET(self._client, conn, key, value, exptime))

    async def add(self, key: bytes, value: bytes, exptime: int) -> bool:
        async with self._connection() as conn:
            return cast(bool, await _ADD(self._client, conn, key, value, exptime))

    async def cas(self, key: bytes, value: bytes, cas_token: int, exptime: int) -> bool:
        async with self._connection() as conn:
            return cast(bool, await _CAS(self._client, conn, key, value, cas_token, exptime))

    async def delete(self, key: bytes) -> bool:
        async with self._connection() as conn:
            return cast(bool, await _DELETE(self._client, conn, key))

    async def touch(self, key: bytes, exptime: int) -> bool:
        async with self._connection() as conn:
            return cast(bool, await _TOUCH(self._client, conn, key, exptime))

    async def close(self) -> None:
        """Close every connection, in use or idle; later calls raise ConnectionError."""
        self._closed = True
        for conn in list(self._open):
            self._discard(conn)
        # abort() hands the socket's cleanup to the next loop iteration; let it run while the loop surely lives.
        await asyncio.sleep(0)

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        if self._closed:
            raise ConnectionError("the session store is closed")
        async with self._slots:
            conn = self._take_idle() or await self._connect()
            try:
                yield conn
            except BaseException:
                # Including CancelledError: the reply to what was sent may still arrive (aiomcache#489).
                self._discard(conn)
                raise
            if self._closed or not _usable(conn):
                self._discard(conn)
            else:
                self._idle.append(conn)

    def _take_idle(self) -> Connection | None:
        while self._idle:
            conn = self._idle.pop()  # the most recently used is the likeliest to be alive
            if _usable(conn):
                return conn
            self._discard(conn)
        return None

    async def _connect(self) -> Connection:
        """``asyncio.open_connection``, but with our reader (aiomcache#502)."""
        loop = asyncio.get_running_loop()
        reader = _EofRaisingReader(loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.create_connection(lambda: protocol, self.host, self.port)
        conn = Connection(reader, asyncio.StreamWriter(transport, protocol, reader, loop))
        self._open.add(conn)
        return conn

    def _discard(self, conn: Connection) -> None:
        self._open.discard(conn)
        conn.writer.transport.abort()  # drop unsent bytes and any reply still to come


def _usable(conn: Connection) -> bool:
    """Open, not at end of file (the server closed it while idle), no error recorded."""
    return not conn.writer.transport.is_closing() and not conn.reader.at_eof() and conn.reader.exception() is None
