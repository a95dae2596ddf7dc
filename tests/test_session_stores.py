"""Both session stores against one contract, memcached for real (started here), and memcached's failure modes.

The contract tests run twice, on a MemoryStore and on a MemcachedStore talking to a private memcached. Then the
memcached store alone: a stopped server (SIGSTOP), a killed and restarted one, the two aiomcache defects it is
built to survive (aio-libs/aiomcache#489 and #502, each also shown to bite plain aiomcache), and two stores
sharing sessions through nutcracker in front of two memcached servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomcache
import pytest

from devstack.ports import free_port
from devstack.processes import find_binary as _binary
from devstack.servers import Memcached, Nutcracker
from gateway.sessions import (
    MemcachedStore,
    MemoryStore,
    SessionChanges,
    SessionLockTimeout,
    SessionStore,
    SessionStoreUnavailable,
    SessionTooLarge,
    new_session_id,
)
from tests.waiting import unread_by_server

PREFIX = b"gw:s:"


@pytest.fixture
def fragile_memcached(tmp_path: Path) -> Iterator[Memcached]:
    """A memcached of the test's own, for tests that stop, kill or restart it."""
    server = Memcached(tmp_path / "fragile", free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def twemproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nutcracker, list[Memcached]]]:
    scratch = tmp_path_factory.mktemp("twemproxy")
    servers = [Memcached(scratch, free_port()).start(), Memcached(scratch, free_port()).start()]
    proxy = Nutcracker(scratch, free_port(), [server.port for server in servers])
    try:
        proxy.start()
        yield proxy, servers
    finally:
        proxy.stop()
        for server in servers:
            server.stop()


class FakeClock:
    """The stores' wall clock, moved by hand: max ages and the memory store's idle TTL without sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    kind: str
    clock: FakeClock
    make: Callable[..., SessionStore]

    async def idle(self, seconds: float) -> None:
        """Let ``seconds`` pass as far as idle expiry goes: memcached keeps that time itself, so really wait."""
        self.clock.advance(seconds)
        if self.kind == "memcached":
            await asyncio.sleep(seconds)


@pytest.fixture(params=["memory", "memcached"])
async def harness(request: pytest.FixtureRequest, memcached: Memcached) -> AsyncIterator[Harness]:
    clock = FakeClock()
    stores: list[SessionStore] = []

    def make(**kwargs: Any) -> SessionStore:
        kwargs.setdefault("idle_ttl", 60)
        kwargs.setdefault("clock", clock)
        store: SessionStore
        if request.param == "memory":
            store = MemoryStore(**kwargs)
        else:
            store = MemcachedStore("127.0.0.1", memcached.port, **kwargs)
        stores.append(store)
        return store

    yield Harness(request.param, clock, make)
    for store in stores:
        await store.close()


@contextlib.asynccontextmanager
async def raw_client(port: int) -> AsyncIterator[aiomcache.Client]:
    """Plain aiomcache, to look at what the store wrote (never cancelled, so its defects cannot bite here)."""
    client = aiomcache.Client("127.0.0.1", port, pool_size=1)
    try:
        yield client
    finally:
        await client.close()


async def _enter(lock: contextlib.AbstractAsyncContextManager[object]) -> object:
    return await lock.__aenter__()


@contextlib.asynccontextmanager
async def ticker(period: float = 0.05) -> AsyncIterator[list[float]]:
    """A task that records a timestamp every ``period``: if the loop is blocked, the list stops growing."""
    ticks: list[float] = []

    async def tick() -> None:
        while True:
            await asyncio.sleep(period)
            ticks.append(time.monotonic())

    task = asyncio.create_task(tick())
    try:
        yield ticks
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def changes(**values: Any) -> SessionChanges:
    return SessionChanges(set=values)


# -- the contract, on both stores ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "session_id",
    [
        new_session_id(),  # well-formed, never stored
        "A" * 43,  # well-formed forgery
        "-" * 43,
        "",
        "short",
        "a" * 300,
        "é" * 43,
        "a" * 42 + "\n",
        "key with spaces",
        "x" * 20 + "\r\nflush_all\r\n" + "x" * 10,
    ],
)
async def test_unknown_forged_and_malformed_ids_load_as_none(harness: Harness, session_id: str) -> None:
    store = harness.make()
    assert await store.load(session_id) is None
    await store.delete(session_id)  # never an error, never reaches the server with a bad key


async def test_save_creates_and_load_returns_a_fresh_copy(harness: Harness) -> None:
    store = harness.make()
    sid = new_session_id()
    created = harness.clock.now
    record = await store.save(sid, changes(user="ann", cart=[1, 2]))
    assert record.data == {"user": "ann", "cart": [1, 2]}
    assert record.created == record.accessed == created

    harness.clock.advance(5)
    loaded = await store.load(sid)
    assert loaded is not None
    assert loaded.data == {"user": "ann", "cart": [1, 2]}
    assert loaded.created == created
    assert loaded.accessed == created + 5

    loaded.data["cart"].append(3)  # the caller's copy, not the store's
    again = await store.load(sid)
    assert again is not None and again.data["cart"] == [1, 2]


async def test_idle_expiry_slides_with_every_load(harness: Harness) -> None:
    store = harness.make(idle_ttl=1)
    sid = new_session_id()
    await store.save(sid, changes(n=1))
    # Loaded every 0.6 s for 2.4 s: longer than any unloaded session could live (memcached: at most ttl + 1 s).
    for _ in range(4):
        await harness.idle(0.6)
        assert await store.load(sid) is not None
    await harness.idle(2.2)
    assert await store.load(sid) is None


async def test_absolute_max_age_holds_however_active_the_session(harness: Harness) -> None:
    store = harness.make(idle_ttl=60, max_age=10)
    sid = new_session_id()
    first = await store.save(sid, changes(n=1))
    harness.clock.advance(6)
    assert await store.load(sid) is not None
    saved = await store.save(sid, changes(n=2))
    assert saved.created == first.created  # saving does not restart the max age
    harness.clock.advance(5)  # 11 s after creation, 5 s after the last activity
    assert await store.load(sid) is None
    # A save after expiry starts a new session (a request that loaded it just before expiry finishing late).
    restarted = await store.save(sid, changes(n=3))
    assert restarted.created == harness.clock.now
    assert restarted.data == {"n": 3}


async def test_concurrent_saves_of_different_keys_both_land(harness: Harness) -> None:
    store = harness.make()
    sid = new_session_id()
    await store.save(sid, changes(a=0, b=0, untouched="yes"))
    # Two requests that loaded the same session (on two connections, so that both read it before either writes),
    # each changing its own key.
    await asyncio.gather(store.load(sid), store.load(sid))
    await asyncio.gather(store.save(sid, changes(a=1)), store.save(sid, changes(b=2)))
    loaded = await store.load(sid)
    assert loaded is not None and loaded.data == {"a": 1, "b": 2, "untouched": "yes"}


async def test_a_save_from_a_stale_base_merges_into_what_is_stored_now(harness: Harness) -> None:
    store = harness.make()
    sid = new_session_id()
    await store.save(sid, changes(a=0, b=0, untouched="yes"))
    first, second = await asyncio.gather(store.load(sid), store.load(sid))
    assert first is not None and second is not None
    await store.save(sid, changes(a=1), base=first)
    # ``second`` was loaded before ``first`` was saved: its base is stale, yet nothing of the first save is lost.
    record = await store.save(sid, SessionChanges(set={"b": 2}, deleted=("untouched",)), base=second)
    assert record.data == {"a": 1, "b": 2}
    loaded = await store.load(sid)
    assert loaded is not None and loaded.data == {"a": 1, "b": 2}
    # A base whose session was deleted meanwhile starts a new one, as a save without a base would.
    await store.delete(sid)
    record = await store.save(sid, changes(c=3), base=loaded)
    assert record.data == {"c": 3}
    loaded = await store.load(sid)
    assert loaded is not None and loaded.data == {"c": 3}


async def test_many_concurrent_writers_all_land(harness: Harness) -> None:
    store = harness.make(pool_size=4) if harness.kind == "memcached" else harness.make()
    sid = new_session_id()
    await store.save(sid, changes(base=True))
    await asyncio.gather(*(store.save(sid, SessionChanges(set={f"k{i}": i})) for i in range(12)))
    loaded = await store.load(sid)
    assert loaded is not None
    assert loaded.data == {"base": True, **{f"k{i}": i for i in range(12)}}


async def test_deleted_keys_go_and_untouched_keys_stay(harness: Harness) -> None:
    store = harness.make()
    sid = new_session_id()
    await store.save(sid, changes(a=1, b=2, c=3))
    record = await store.save(sid, SessionChanges(set={"d": 4}, deleted=("a", "never-there")))
    assert record.data == {"b": 2, "c": 3, "d": 4}
    loaded = await store.load(sid)
    assert loaded is not None and loaded.data == {"b": 2, "c": 3, "d": 4}


async def test_same_key_last_save_wins(harness: Harness) -> None:
    store = harness.make()
    sid = new_session_id()
    await store.save(sid, changes(k="first", other=1))
    await store.save(sid, changes(k="second"))
    loaded = await store.load(sid)
    assert loaded is not None and loaded.data == {"k": "second", "other": 1}
    # Concurrently, one of the two wins whole; nothing else is disturbed.
    await asyncio.gather(store.save(sid, changes(k=["x"])), store.save(sid, changes(k=["y"])))
    loaded = await store.load(sid)
    assert loaded is not None and loaded.data["k"] in (["x"], ["y"]) and loaded.data["other"] == 1


async def test_regenerate_moves_the_data_and_the_old_id_is_gone(harness: Harness) -> None:
    store = harness.make()
    old, new = new_session_id(), new_session_id()
    first = await store.save(old, changes(cart=[1], user=None))
    harness.clock.advance(1)
    record = await store.save(old, SessionChanges(set={"user": "ann"}, regenerate=True), new_id=new)
    assert record.data == {"cart": [1], "user": "ann"}
    assert record.created == first.created
    assert await store.load(old) is None
    moved = await store.load(new)
    assert moved is not None and moved.data == {"cart": [1], "user": "ann"}


async def test_save_argument_errors_are_value_errors(harness: Harness) -> None:
    store = harness.make()
    sid = new_session_id()
    with pytest.raises(ValueError, match="new_id"):
        await store.save(sid, SessionChanges(regenerate=True))
    with pytest.raises(ValueError, match="different"):
        await store.save(sid, SessionChanges(regenerate=True), new_id=sid)
    with pytest.raises(ValueError, match="well-formed"):
        await store.save(sid, SessionChanges(regenerate=True), new_id="bad id")
    with pytest.raises(ValueError, match="well-formed"):
        await store.save("bad id", changes(a=1))
    with pytest.raises(ValueError, match="well-formed"):
        store.lock("bad id", timeout=1)


async def test_invalidate_deletes(harness: Harness) -> None:
    store = harness.make()
    sid = new_session_id()
    await store.save(sid, changes(user="ann"))
    record = await store.save(sid, SessionChanges(invalidate=True))
    assert record.data == {}
    assert await store.load(sid) is None
    await store.save(sid, SessionChanges(invalidate=True))  # invalidating what is gone is fine


async def test_keys_set_after_invalidate_live_under_the_new_id_only(harness: Harness) -> None:
    store = harness.make()
    old, new = new_session_id(), new_session_id()
    await store.save(old, changes(user="ann", cart=[1]))
    logout = SessionChanges(set={"flash": "bye"}, regenerate=True, invalidate=True)
    record = await store.save(old, logout, new_id=new)
    assert record.data == {"flash": "bye"}
    assert await store.load(old) is None
    fresh = await store.load(new)
    assert fresh is not None and fresh.data == {"flash": "bye"}


async def test_a_new_session_invalidated_then_set_is_stored_under_its_new_id(harness: Harness) -> None:
    store = harness.make()
    sid = new_session_id()  # minted by the loop for a new session
    await store.save(sid, SessionChanges(set={"a": 1}, invalidate=True))
    loaded = await store.load(sid)
    assert loaded is not None and loaded.data == {"a": 1}


async def test_delete(harness: Harness) -> None:
    store = harness.make()
    sid = new_session_id()
    await store.save(sid, changes(a=1))
    await store.delete(sid)
    assert await store.load(sid) is None
    await store.delete(sid)


async def test_oversized_session_raises_and_leaves_the_stored_one_intact(harness: Harness) -> None:
    store = harness.make(max_item_size=2_000)
    sid, new = new_session_id(), new_session_id()
    await store.save(sid, changes(note="small"))
    with pytest.raises(SessionTooLarge) as raised:
        await store.save(sid, changes(big="x" * 5_000))
    assert raised.value.limit == 2_000 and raised.value.size > 5_000
    assert str(raised.value.size) in str(raised.value) and "2000" in str(raised.value)
    with pytest.raises(SessionTooLarge):
        await store.save(sid, SessionChanges(set={"big": "x" * 5_000}, regenerate=True), new_id=new)
    with pytest.raises(SessionTooLarge):
        await store.save(sid, SessionChanges(set={"big": "x" * 5_000}, invalidate=True, regenerate=True), new_id=new)
    loaded = await store.load(sid)
    assert loaded is not None and loaded.data == {"note": "small"}
    assert await store.load(new) is None


async def test_lock_serializes_two_holders(harness: Harness) -> None:
    store = harness.make()
    sid = new_session_id()
    events: list[tuple[str, float]] = []

    async def hold(name: str, seconds: float) -> None:
        async with store.lock(sid, timeout=5):
            events.append((f"{name} in", time.monotonic()))
            await asyncio.sleep(seconds)
            events.append((f"{name} out", time.monotonic()))

    first = asyncio.create_task(hold("a", 0.3))
    await _until(lambda: bool(events), "a to hold the lock")
    await asyncio.gather(first, hold("b", 0))
    assert [name for name, _ in events] == ["a in", "a out", "b in", "b out"]
    # b got the lock promptly after a let go: released, not left to expire.
    assert events[2][1] - events[1][1] < 0.5


async def test_lock_times_out_and_is_released_on_errors(harness: Harness) -> None:
    store = harness.make()
    sid, other = new_session_id(), new_session_id()
    async with store.lock(sid, timeout=1):
        started = time.monotonic()
        with pytest.raises(SessionLockTimeout):
            async with store.lock(sid, timeout=0.3):
                pytest.fail("acquired a held lock")
        assert 0.25 < time.monotonic() - started < 1.0
        async with store.lock(other, timeout=0.3):  # other sessions are not held up
            pass
    with pytest.raises(RuntimeError, match="app failed"):
        async with store.lock(sid, timeout=1):
            raise RuntimeError("app failed")
    started = time.monotonic()
    async with store.lock(sid, timeout=1):
        pass
    assert time.monotonic() - started < 0.5


# -- memcached only ------------------------------------------------------------------------------------------------


async def test_memory_store_evicts_the_least_recently_used() -> None:
    store = MemoryStore(idle_ttl=60, max_sessions=3)
    a, b, c, d = (new_session_id() for _ in range(4))
    for sid in (a, b, c):
        await store.save(sid, changes(sid=sid))
    assert await store.load(a) is not None  # a is now the most recently used
    await store.save(d, changes(sid=d))
    assert len(store) == 3
    assert await store.load(b) is None
    for sid in (a, c, d):
        assert await store.load(sid) is not None


async def test_memcached_keys_are_prefix_plus_id_and_prefixes_keep_stores_apart(memcached: Memcached) -> None:
    one = MemcachedStore("127.0.0.1", memcached.port, idle_ttl=60)
    two = MemcachedStore("127.0.0.1", memcached.port, idle_ttl=60, prefix="other:")
    try:
        sid = new_session_id()
        await one.save(sid, changes(a=1))
        assert await two.load(sid) is None
        async with raw_client(memcached.port) as raw:
            assert await raw.get(PREFIX + sid.encode()) is not None
    finally:
        await one.close()
        await two.close()


async def test_memcached_corrupt_record_counts_as_absent(memcached: Memcached) -> None:
    store = MemcachedStore("127.0.0.1", memcached.port, idle_ttl=60)
    sid = new_session_id()
    try:
        async with raw_client(memcached.port) as raw:
            await raw.set(PREFIX + sid.encode(), b"\xff not json")
            assert await store.load(sid) is None
            assert await raw.get(PREFIX + sid.encode()) is None  # removed, not left to confuse anyone
            await raw.set(PREFIX + sid.encode(), b'{"v": 1, "d": []}')
            record = await store.save(sid, changes(a=1))  # replaced atomically by a fresh session
            assert record.data == {"a": 1}
    finally:
        await store.close()


async def test_memcached_concurrent_writers_really_conflict_and_retry(memcached: Memcached) -> None:
    store = MemcachedStore("127.0.0.1", memcached.port, idle_ttl=60, pool_size=8)
    sid = new_session_id()
    try:
        await store.save(sid, changes(base=True))
        async with raw_client(memcached.port) as raw:
            before = int((await raw.stats())[b"cas_badval"] or 0)
            await asyncio.gather(*(store.save(sid, SessionChanges(set={f"k{i}": i})) for i in range(8)))
            after = int((await raw.stats())[b"cas_badval"] or 0)
        assert after > before  # the merge did go through compare-and-swap conflicts
        loaded = await store.load(sid)
        assert loaded is not None and len(loaded.data) == 9
    finally:
        await store.close()


async def test_memcached_save_of_a_loaded_session_does_not_read_it_again(memcached: Memcached) -> None:
    store = MemcachedStore("127.0.0.1", memcached.port, idle_ttl=60)
    sid = new_session_id()
    try:
        await store.save(sid, changes(count=1))
        loaded = await store.load(sid)
        assert loaded is not None and loaded.version is not None
        async with raw_client(memcached.port) as raw:

            async def reads_and_cas_hits() -> tuple[int, int]:
                stats = await raw.stats()
                return int(stats[b"cmd_get"] or 0), int(stats[b"cas_hits"] or 0)

            reads, cas_hits = await reads_and_cas_hits()
            await store.save(sid, changes(count=2), base=loaded)
            assert await reads_and_cas_hits() == (reads, cas_hits + 1)  # one cas, no gets
            await store.save(sid, changes(count=3))
            assert await reads_and_cas_hits() == (reads + 1, cas_hits + 2)  # without a base: gets, then cas
            stale = await store.save(sid, changes(count=4), base=loaded)  # its cas fails: gets and cas again
            assert stale.data == {"count": 4}
            assert await reads_and_cas_hits() == (reads + 2, cas_hits + 3)
    finally:
        await store.close()


async def test_memcached_load_touches_only_a_session_not_saved_moments_ago(memcached: Memcached) -> None:
    clock = FakeClock()
    store = MemcachedStore("127.0.0.1", memcached.port, idle_ttl=100, clock=clock)  # touch slack: 10 s
    sid = new_session_id()
    try:
        async with raw_client(memcached.port) as raw:

            async def touches() -> int:
                return int((await raw.stats())[b"cmd_touch"] or 0)

            await store.save(sid, changes(n=1))
            before = await touches()
            clock.advance(9)
            assert await store.load(sid) is not None
            assert await touches() == before  # the save 9 s ago set an expiry beyond 9 s + the idle TTL
            clock.advance(2)
            assert await store.load(sid) is not None
            assert await touches() == before + 1
            clock.advance(-20)  # a save stamped by a host whose clock runs ahead: never trusted, always touched
            assert await store.load(sid) is not None
            assert await touches() == before + 2
    finally:
        await store.close()


async def test_memcached_refusing_an_item_as_too_large_is_session_too_large(memcached: Memcached) -> None:
    # Our limit set above memcached's 1 MB item size: the server's refusal must not pass for an outage.
    store = MemcachedStore("127.0.0.1", memcached.port, idle_ttl=60, max_item_size=4_000_000)
    try:
        with pytest.raises(SessionTooLarge):
            await store.save(new_session_id(), changes(big="x" * 2_000_000))
    finally:
        await store.close()


async def test_memcached_oversized_session_is_refused_before_it_is_sent(memcached: Memcached) -> None:
    # Checked before sending: besides the wasted megabyte, memcached answers an oversized ``set`` by deleting the
    # item it had (a ``cas`` it refuses leaves the item alone).
    store = MemcachedStore("127.0.0.1", memcached.port, idle_ttl=60)
    sid = new_session_id()
    try:
        await store.save(sid, changes(note="keep me"))
        async with raw_client(memcached.port) as raw:
            before = int((await raw.stats())[b"bytes_read"] or 0)
            with pytest.raises(SessionTooLarge):
                await store.save(sid, changes(big="x" * 1_100_000))  # over memcached's 1 MB
            with pytest.raises(SessionTooLarge):
                await store.save(
                    sid, SessionChanges(set={"big": "x" * 1_100_000}, regenerate=True), new_id=new_session_id()
                )
            assert int((await raw.stats())[b"bytes_read"] or 0) - before < 10_000
        loaded = await store.load(sid)
        assert loaded is not None and loaded.data == {"note": "keep me"}
    finally:
        await store.close()


async def test_memcached_lock_release_spares_a_lock_that_is_no_longer_ours(memcached: Memcached) -> None:
    store = MemcachedStore("127.0.0.1", memcached.port, idle_ttl=60)
    sid = new_session_id()
    lock_key = PREFIX + b"lock:" + sid.encode()
    try:
        async with raw_client(memcached.port) as raw:
            async with store.lock(sid, timeout=1):
                assert await raw.get(lock_key) is not None
                await raw.set(lock_key, b"another-owner", exptime=30)  # ours expired, someone else took it
            assert await raw.get(lock_key) == b"another-owner"
            await raw.delete(lock_key)
    finally:
        await store.close()


async def test_memcached_closed_store_is_unavailable(memcached: Memcached) -> None:
    store = MemcachedStore("127.0.0.1", memcached.port, idle_ttl=60)
    await store.save(new_session_id(), changes(a=1))
    await store.close()
    with pytest.raises(SessionStoreUnavailable, match="closed"):
        await store.load(new_session_id())


async def test_stopped_memcached_is_unavailable_within_the_timeout_and_the_loop_keeps_running(
    fragile_memcached: Memcached,
) -> None:
    store = MemcachedStore("127.0.0.1", fragile_memcached.port, idle_ttl=60, timeout=0.5)
    sid = new_session_id()
    try:
        await store.save(sid, changes(a=1))
        fragile_memcached.pause()
        try:
            async with ticker() as ticks:
                started = time.monotonic()
                operations: tuple[Callable[[], Awaitable[object]], ...] = (
                    lambda: store.load(sid),
                    lambda: store.save(sid, changes(b=2)),
                    lambda: _enter(store.lock(new_session_id(), timeout=5)),
                )
                for operation in operations:
                    begun = time.monotonic()
                    with pytest.raises(SessionStoreUnavailable, match=r"within 0\.5 s"):
                        await operation()
                    assert time.monotonic() - begun < 0.5 + 1
                elapsed = time.monotonic() - started
            assert len(ticks) >= elapsed / 0.05 * 0.6  # the loop ran the ticker all along
        finally:
            fragile_memcached.resume()
        loaded = await store.load(sid)  # back by itself
        assert loaded is not None and loaded.data == {"a": 1}
    finally:
        await store.close()


async def test_killed_memcached_is_unavailable_then_recovers_by_itself(fragile_memcached: Memcached) -> None:
    store = MemcachedStore("127.0.0.1", fragile_memcached.port, idle_ttl=60, timeout=0.5)
    sid = new_session_id()
    try:
        await store.save(sid, changes(a=1))
        fragile_memcached.kill()
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(SessionStoreUnavailable):
                await store.load(sid)
            with pytest.raises(SessionStoreUnavailable):
                await store.save(sid, changes(b=2))
            assert time.monotonic() - started < 2 * (0.5 + 1)
        fragile_memcached.restart()
        deadline = time.monotonic() + 5
        while True:
            try:
                assert await store.load(sid) is None  # a restarted memcached is empty
                break
            except SessionStoreUnavailable:
                assert time.monotonic() < deadline, "the store did not recover within 5 s"
                await asyncio.sleep(0.1)
        await store.save(sid, changes(c=3))
        loaded = await store.load(sid)
        assert loaded is not None and loaded.data == {"c": 3}
    finally:
        await store.close()


async def _cancel_a_get_in_flight(memcached: Memcached, get: Callable[[], Any]) -> None:
    """Send a get to a stopped memcached, cancel it while it waits for the reply, let the server answer."""
    memcached.pause()
    try:
        task = asyncio.ensure_future(get())
        # The command has reached the stopped server; its reply will come only after SIGCONT.
        await _until(lambda: unread_by_server(memcached.port) > 0, "the get to reach memcached")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        memcached.resume()
    # memcached has read (and so answered) it: on plain aiomcache the stale reply waits in a pooled connection.
    await _until(lambda: unread_by_server(memcached.port) == 0, "memcached to read the cancelled get")


async def _until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` without blocking the loop (the store's own tasks must run meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_aiomcache_489_control_plain_aiomcache_hands_out_a_stale_reply(fragile_memcached: Memcached) -> None:
    """Shows the scenario below does reproduce #489: plain aiomcache then reads the cancelled call's reply."""
    async with raw_client(fragile_memcached.port) as raw:
        await raw.set(b"a", b"value-a")
        await raw.set(b"b", b"value-b")
        await _cancel_a_get_in_flight(fragile_memcached, lambda: raw.get(b"a"))
        # get(b) reads "VALUE a ..." meant for the cancelled call, so it finds no "b" in it.
        assert await raw.get(b"b") != b"value-b"


async def test_aiomcache_489_a_cancelled_load_never_leaks_its_reply(fragile_memcached: Memcached) -> None:
    store = MemcachedStore("127.0.0.1", fragile_memcached.port, idle_ttl=60, pool_size=1, timeout=5)
    a, b = new_session_id(), new_session_id()
    try:
        await store.save(a, changes(owner="a"))
        await store.save(b, changes(owner="b"))
        await _cancel_a_get_in_flight(fragile_memcached, lambda: store.load(a))
        for _ in range(3):
            loaded_b, loaded_a = await store.load(b), await store.load(a)
            assert loaded_b is not None and loaded_b.data == {"owner": "b"}
            assert loaded_a is not None and loaded_a.data == {"owner": "a"}

        # The same through the caller's own timeout (which cancels the load inside).
        fragile_memcached.pause()
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await store.load(a)
        finally:
            fragile_memcached.resume()
        await _until(lambda: unread_by_server(fragile_memcached.port) == 0, "memcached to read the timed-out get")
        loaded_b = await store.load(b)
        assert loaded_b is not None and loaded_b.data == {"owner": "b"}
    finally:
        await store.close()


class _Handler(socketserver.StreamRequestHandler):
    """Answers retrievals with "nothing stored", then closes the connection right after reading a storage command.

    The data block is read before closing, so the client gets a clean end of file (FIN), not a reset: exactly
    the case where aiomcache's ``readline()`` returns b"" forever.
    """

    def handle(self) -> None:
        for line in self.rfile:
            words = line.split()
            if not words:
                return
            command = words[0]
            if command in (b"get", b"gets"):
                self.wfile.write(b"END\r\n")
            elif command in (b"touch", b"delete"):
                self.wfile.write(b"NOT_FOUND\r\n")
            elif command in (b"set", b"add", b"cas", b"replace", b"append", b"prepend"):
                self.rfile.read(int(words[4]) + 2)
                return
            else:
                self.wfile.write(b"ERROR\r\n")
            self.wfile.flush()


class _ClosingServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def closing_server() -> Iterator[int]:
    server = _ClosingServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def fail_if_the_loop_spins(seconds: float) -> Iterator[None]:
    """If the event loop spins without yielding, no asyncio timeout can fire: a SIGALRM handler still runs
    (between bytecodes, in the main thread) and turns a hung test into a failing one."""

    def alarm(signum: int, frame: object) -> None:
        raise AssertionError(f"still busy after {seconds} s: the event loop is spinning (aiomcache#502)")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_SPIN_SCRIPT = """
import asyncio, sys
import aiomcache

async def main():
    client = aiomcache.Client("127.0.0.1", int(sys.argv[1]))
    print("sending", flush=True)
    try:
        await asyncio.wait_for(client.set(b"k", b"v"), 1.0)
    except BaseException as err:
        print("returned", type(err).__name__, flush=True)
    else:
        print("returned", flush=True)

asyncio.run(main())
"""


def _process_state(pid: int) -> str:
    """The scheduler state letter of ``pid``: "R" running or runnable, "S" asleep waiting for something."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_aiomcache_502_control_plain_aiomcache_spins() -> None:
    """Shows the fake server does reproduce #502: plain aiomcache never returns, even from a 1 s wait_for,
    and stays runnable all along: spinning, not waiting (a waiting event loop sleeps in epoll, state "S")."""
    with closing_server() as port:
        process = subprocess.Popen([sys.executable, "-c", _SPIN_SCRIPT, str(port)], stdout=subprocess.PIPE)
        assert process.stdout is not None
        try:
            assert process.stdout.readline() == b"sending\n"
            with pytest.raises(subprocess.TimeoutExpired):
                process.wait(2.5)
            states = []
            for _ in range(20):
                states.append(_process_state(process.pid))
                time.sleep(0.01)
            assert states.count("R") >= 18, states
        finally:
            process.kill()
            process.wait()
            assert b"returned" not in process.stdout.read()
            process.stdout.close()


async def test_aiomcache_502_server_closing_after_a_storage_command_is_unavailable_not_a_spin() -> None:
    with closing_server() as port:
        store = MemcachedStore("127.0.0.1", port, idle_ttl=60, timeout=2)
        try:
            with fail_if_the_loop_spins(8):
                cpu, started = time.process_time(), time.monotonic()
                async with asyncio.timeout(5):
                    with pytest.raises(SessionStoreUnavailable, match="closed the connection"):
                        await store.save(new_session_id(), changes(a=1))  # gets, then add: closed
                    with pytest.raises(SessionStoreUnavailable, match="closed the connection"):
                        async with store.lock(new_session_id(), timeout=1):  # add: closed
                            pytest.fail("acquired a lock from a server that hung up")
                assert time.monotonic() - started < 2
                assert time.process_time() - cpu < 0.5
        finally:
            await store.close()


async def test_two_stores_share_sessions_through_nutcracker(twemproxy: tuple[Nutcracker, list[Memcached]]) -> None:
    proxy, servers = twemproxy
    one = MemcachedStore("127.0.0.1", proxy.port, idle_ttl=60)
    two = MemcachedStore("127.0.0.1", proxy.port, idle_ttl=60)
    try:
        ids = [new_session_id() for _ in range(24)]
        for n, sid in enumerate(ids):
            await one.save(sid, changes(n=n))
        for n, sid in enumerate(ids):
            loaded = await two.load(sid)
            assert loaded is not None and loaded.data == {"n": n}

        await two.save(ids[0], changes(by_two=True))
        await one.save(ids[0], changes(by_one=True))
        loaded = await two.load(ids[0])
        assert loaded is not None and loaded.data == {"n": 0, "by_two": True, "by_one": True}

        moved = new_session_id()
        await two.save(ids[1], SessionChanges(regenerate=True), new_id=moved)
        assert await one.load(ids[1]) is None
        assert await one.load(moved) is not None

        async with one.lock(ids[2], timeout=1):
            with pytest.raises(SessionLockTimeout):
                async with two.lock(ids[2], timeout=0.2):
                    pytest.fail("two stores held one session's lock at once")
        async with two.lock(ids[2], timeout=0.5):
            pass

        # Through the proxy the sessions are spread over both servers.
        held = []
        for server in servers:
            async with raw_client(server.port) as raw:
                values = await raw.multi_get(*(PREFIX + sid.encode() for sid in ids))
                held.append(sum(value is not None for value in values))
        assert all(count > 0 for count in held)
        assert sum(held) == len(ids) - 1  # ids[1] moved to an id outside the list
    finally:
        await one.close()
        await two.close()


def test_a_missing_server_binary_fails_with_the_install_command(tmp_path: Path) -> None:
    class Missing(Memcached):
        def command(self) -> list[str]:
            return [_binary("no-such-memcached-binary", "memcached"), "-p", str(self.port)]

    with pytest.raises(RuntimeError, match="apt-get install -y memcached"):
        Missing(tmp_path, free_port()).start()
