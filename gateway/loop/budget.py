"""What clients can make the loop hold before their requests are complete: bounded per connection and in all.

A request is read whole before a worker sees it, so until it is complete its params and the in-memory part of its
body live in the loop's process. A FastCGI connection may open ``--max-requests-per-connection`` ids and send up
to ``--max-params-size`` of params for each without ever ending one; many such connections, or many uploads
still under the spool threshold, add up. Two budgets bound that:

- per connection (``--max-connection-buffer``): a connection whose incomplete requests hold more is closed, with
  one log line. Nothing a well-behaved web server sends comes near it (nginx multiplexes nothing: one request of
  at most ``--max-params-size`` plus ``--body-spool-threshold`` at a time, which the setting must allow).
- in all (``--max-buffered``): beyond it, the connection whose read went over spools its bodies to temporary
  files, and if its incomplete requests still hold more than ``PAUSE_ABOVE`` (params, or a head, that a read
  did not complete) the loop stops reading from it. Requests that arrive whole in a read, and uploads (whose
  bodies are now in files, leaving only a record's start held), keep being read and served; a paused connection
  still counts against ``--header-timeout`` and ``--body-timeout``, so a peer that never completes its requests
  is closed on time, and its kernel buffers, not the loop's heap, hold what it sends meanwhile. Reading resumes
  once the total is back under three quarters of the budget.

  Why not a fair share (the budget divided among the holders): what a connection holds only goes down when its
  requests complete, so letting each newcomer read up to a share computed when there were fewer holders adds up
  to the budget times the logarithm of the number of connections (1,000 connections: 100 MiB held against 32).

The accounting costs a request whose params and body arrive in one read nothing but one comparison: a
connection reports what it holds after each read (``FrontConnection.account``) only when that changed.

Reads: a read is in memory before it can be accounted, so what the budget can refuse is the next read, not the
one that went over. Every connection may thus hold its share plus one read, and with a thousand connections one
read each is most of the memory: uvloop reads up to 256 KiB at a time, and a hostile peer's first read is as
large as its kernel buffer allows. So the loop's connections read into one shared buffer (``read_view``, handed
to uvloop by ``FrontConnection.get_buffer``) whose size the budget sets: ``MAX_READ`` while the total is under
half the budget, ``PRESSED_READ`` above it. Beyond the budget, then, N connections add at most N times
``PAUSE_ABOVE`` plus a small read; well-behaved requests (a head of a few KiB) still arrive in one read, and
uploads read in smaller pieces only while the budget is more than half used.

Freed memory: the heap keeps up to 32 MiB of free memory (gateway/memory.py), and a burst of small params
buffers fragments it, so that what the hostile connections held stays resident after they close. Once a second
the sweep trims the heap (``malloc_trim``) when what incomplete requests hold has fallen from a peak of at least
``TRIM_AFTER`` to a quarter of it: only after a burst, never on a steady load.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING

from gateway.memory import trim_heap

if TYPE_CHECKING:
    from gateway.loop.front import FrontConnection
    from gateway.loop.request import Request

log = logging.getLogger("gateway.front")

#: A peak of held bytes at least this large, once fallen to a quarter, is followed by a heap trim.
TRIM_AFTER = 8 << 20
#: The most one read takes from a socket: uvloop's own read size.
MAX_READ = 256 << 10
#: The most one read takes once incomplete requests hold more than half the budget: a request head of nginx's
#: (a few KiB) still arrives whole, and a thousand connections add 16 MiB, not 256 MiB, past the budget.
PRESSED_READ = 16 << 10
#: Over the budget, a connection whose incomplete requests still hold more than this once their bodies are
#: spooled stops being read: more than a record's start (an upload streaming into its file holds a few bytes).
PAUSE_ABOVE = 4 << 10


class MemoryBudget:
    """The loop-wide account of bytes held by incomplete requests, shared by every listener's connections."""

    __slots__ = (
        "_half",
        "_low_water",
        "_peak",
        "_pressed_view",
        "holders",
        "limit",
        "paused",
        "per_connection",
        "pressed",
        "read_buffer",
        "read_view",
        "total",
        "trims",
        "waiting",
    )

    def __init__(self, per_connection: int, limit: int) -> None:
        self.per_connection = per_connection
        self.limit = limit
        self._low_water = limit * 3 // 4
        self._half = limit // 2
        #: The loop's one read buffer: every connection's read lands here and is copied out into a bytes object
        #: of the read's size (as uvloop does with its own buffer), so it is never held past the read.
        self.read_buffer = memoryview(bytearray(MAX_READ))
        self._pressed_view = self.read_buffer[:PRESSED_READ]
        #: The part of it the next read gets: less while the budget is more than half used.
        self.read_view = self.read_buffer
        #: Bytes held now (incomplete requests, and complete ones waiting for a worker), and the connections
        #: holding any of the incomplete ones.
        self.total = 0
        self.holders: set[FrontConnection] = set()
        #: Complete requests whose bodies the loop holds in memory, and the bytes counted for each (see ``wait``).
        self.waiting: dict[Request, int] = {}
        #: Connections whose reading the budget paused.
        self.paused: set[FrontConnection] = set()
        #: Over the budget since the last time it fell back under its low water (logged once per episode).
        self.pressed = False
        self._peak = 0
        #: Heap trims done (for tests and stats).
        self.trims = 0

    def change(self, connection: FrontConnection, before: int, after: int) -> None:
        """``connection``'s holding went from ``before`` to ``after`` bytes."""
        total = self.total = self.total + after - before
        if not before:
            self.holders.add(connection)
        elif not after:
            self.holders.discard(connection)
        self._peak = max(self._peak, total)
        self.read_view = self._pressed_view if total > self._half else self.read_buffer

    def wait(self, request: Request) -> None:
        """``request`` is complete and part of its body is in memory: counted until the request ends.

        Until then the loop holds the body: while it waits for a worker (in the queue, or for its session), and
        after a worker took it too, since the body keeps its chunks until the request is released. The
        per-connection budget does not count it (it is a request, served in turn, not input still owed), and
        nothing is paused for it: a complete request that would take the total over the budget has its body
        written to its file at once instead, as the bodies of the requests still waiting for a worker are when a
        read goes over.
        """
        size = request.body.memory
        if not size:
            return
        if self.total + size > self.limit:
            request.body.spool()
            return
        self.waiting[request] = size
        request.cleanups.append(partial(self.settle, request))
        total = self.total = self.total + size
        self._peak = max(self._peak, total)
        self.read_view = self._pressed_view if total > self._half else self.read_buffer

    def settle(self, request: Request) -> None:
        """``request`` ended (a cleanup of its): its body is no longer the loop's to hold."""
        size = self.waiting.pop(request, 0)
        if size:
            total = self.total = self.total - size
            self.read_view = self._pressed_view if total > self._half else self.read_buffer
            if self.paused:
                self.relieve()

    def _spool_waiting(self) -> None:
        """The bodies of the requests no worker has taken yet go to their files (``number`` is given at the hand
        over); those a worker has are its to read and stay counted until their requests end."""
        waiting = self.waiting
        for request in [request for request in waiting if not request.number]:
            request.body.spool()
            self.total -= waiting.pop(request)

    @property
    def over(self) -> bool:
        return self.total > self.limit

    def pressure(self, connection: FrontConnection) -> None:
        """``connection``'s read took the total over the budget.

        The first time (entering pressure): the bodies of every request waiting for a worker and of every holder
        go to their files, then every holder still
        holding more than ``PAUSE_ABOVE`` stops being read. While the pressure lasts, only the connection whose
        read grew is looked at, so a read costs no pass over the connections.
        """
        if not self.pressed:
            self.pressed = True
            log.warning(
                "incomplete requests hold %d bytes in all, over --max-buffered (%d): spooling their bodies and "
                "pausing reads from the connections whose requests a read did not complete",
                self.total,
                self.limit,
            )
            self._spool_waiting()
            holders = list(self.holders)
            for holder in holders:
                holder.spool_bodies()
            for holder in holders:
                self._pause_if_holding(holder)
        else:
            connection.spool_bodies()
            self._pause_if_holding(connection)

    def _pause_if_holding(self, connection: FrontConnection) -> None:
        if self.total > self.limit and connection.held > PAUSE_ABOVE and connection.pause_input():
            self.paused.add(connection)

    def relieve(self) -> None:
        """Resume the paused connections once the total is back under the low water."""
        if self.total >= self._low_water:
            return
        paused, self.paused = self.paused, set()
        for connection in paused:
            connection.resume_input()
        if self.pressed:
            self.pressed = False
            log.info(
                "incomplete requests hold %d bytes in all, under --max-buffered again: reading resumed on %d "
                "connections",
                self.total,
                len(paused),
            )

    def forget(self, connection: FrontConnection) -> None:
        self.paused.discard(connection)

    def sweep(self) -> None:
        """Once a second: resume what can be (and end a pressure that paused nobody), and trim the heap after a
        burst."""
        if self.paused or self.pressed:
            self.relieve()
        peak = self._peak
        if peak >= TRIM_AFTER and self.total <= peak // 4:
            self._peak = self.total
            self.trims += 1
            trim_heap()
