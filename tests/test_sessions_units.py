"""The parts of sessions that need no server: ids, the cookie, the app's mapping and the changes it sends back."""

from __future__ import annotations

import asyncio
import datetime
import string
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack.servers import Memcached
from gateway.config.settings import Config
from gateway.loop.dispatch import Dispatcher
from gateway.loop.request import Request
from gateway.loop.session_hook import SessionHook
from gateway.loop.spool import RequestBody
from gateway.sessions import (
    CookieSettings,
    MemcachedStore,
    MemoryStore,
    Session,
    SessionChanges,
    SessionRecord,
    SessionStoreUnavailable,
    SessionTooLarge,
    SessionValueError,
    delete_cookie_value,
    is_valid_session_id,
    new_session_id,
    open_store,
    request_is_https,
    session_id_from_cookies,
    set_cookie_value,
)
from gateway.sessions.store import run_at_once

SETTINGS = CookieSettings()


def _attributes(header: str) -> dict[str, str]:
    """A Set-Cookie value's attributes, names lowercased (the first pair, the cookie itself, under "")."""
    first, *rest = header.split("; ")
    attributes = {"": first}
    for part in rest:
        name, _, value = part.partition("=")
        attributes[name.lower()] = value
    return attributes


# -- ids -----------------------------------------------------------------------------------------------------------


def test_new_ids_are_43_urlsafe_chars_and_distinct() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 43 and is_valid_session_id(i) for i in ids)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a" * 42,
        "a" * 44,
        "a" * 300,
        "a" * 42 + " ",
        "a" * 42 + "\n",
        "a" * 43 + "\n",
        "a" * 42 + "\x00",
        "a" * 42 + "=",
        "a" * 42 + "+",
        "a" * 42 + "/",
        "a" * 42 + "é",
        "a" * 42 + "٣",  # a Unicode digit: \d or \w would take it
        "\uff41" * 43,  # fullwidth "a": a letter to Unicode, not to us
    ],
)
def test_malformed_ids_are_rejected(value: str) -> None:
    assert not is_valid_session_id(value)


def test_any_43_char_base64url_string_is_well_formed() -> None:
    assert is_valid_session_id("x" * 43)
    assert is_valid_session_id("-_" * 21 + "Z")


@given(st.text(max_size=60))
def test_is_valid_session_id_never_raises_and_only_admits_the_alphabet(value: str) -> None:
    allowed = set(string.ascii_letters + string.digits + "-_")
    assert is_valid_session_id(value) == (len(value) == 43 and set(value) <= allowed)


# -- cookie parsing ------------------------------------------------------------------------------------------------


def test_finds_our_cookie_among_others() -> None:
    sid = new_session_id()
    header = f"theme=dark; gwsession={sid}; _ga=GA1.2.3"
    assert session_id_from_cookies(header, SETTINGS) == sid


def test_first_valid_of_several_of_ours_wins() -> None:
    first, second = new_session_id(), new_session_id()
    assert session_id_from_cookies(f"gwsession=garbage; gwsession={first}; gwsession={second}", SETTINGS) == first
    assert session_id_from_cookies(f"gwsession={first};gwsession={second}", SETTINGS) == first


def test_cookie_parsing_tolerates_spaces_quotes_and_other_names() -> None:
    sid = new_session_id()
    assert session_id_from_cookies(f'  gwsession = "{sid}"  ', SETTINGS) == sid
    assert session_id_from_cookies(f"xgwsession={sid}; gwsessionx={sid}", SETTINGS) is None
    assert session_id_from_cookies(f"sid={sid}", CookieSettings(name="sid")) == sid
    assert session_id_from_cookies(f"gwsession={sid}", CookieSettings(name="sid")) is None


@pytest.mark.parametrize(
    "header",
    [
        "",
        ";;;",
        "gwsession",
        "gwsession=",
        "=gwsession",
        "gwsession=" + "a" * 42,
        "gwsession=" + "a" * 44,
        "gwsession=" + "a" * 42 + "\x00",
        "gwsession=" + "a" * 42 + "é",
        "gwsession=" + "a" * 5000,
        'gwsession="' + "a" * 43,
        "gwsession=" + "a" * 43 + " x",
        "\x00\x01\x02\udcff",
    ],
)
def test_garbage_cookie_headers_give_none(header: str) -> None:
    assert session_id_from_cookies(header, SETTINGS) is None


@given(st.text())
def test_cookie_parsing_never_raises_and_returns_only_valid_ids(header: str) -> None:
    found = session_id_from_cookies(header, SETTINGS)
    assert found is None or is_valid_session_id(found)


@given(st.lists(st.sampled_from(["a=b", "gwsession=bad", " ", "=", "gwsession", "x=;y"]), max_size=8))
def test_a_valid_cookie_is_found_wherever_it_sits(noise: list[str]) -> None:
    sid = new_session_id()
    for position in range(len(noise) + 1):
        parts = [*noise[:position], f"gwsession={sid}", *noise[position:]]
        assert session_id_from_cookies("; ".join(parts), SETTINGS) == sid


# -- cookie settings and Set-Cookie ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "https"),
    [
        ({}, False),
        ({"HTTPS": "on"}, True),
        ({"HTTPS": "ON"}, True),
        ({"HTTPS": "1"}, True),
        ({"HTTPS": "off"}, False),
        ({"HTTPS": ""}, False),
        ({"REQUEST_SCHEME": "https"}, True),
        ({"REQUEST_SCHEME": "HTTPS"}, True),
        ({"REQUEST_SCHEME": "http"}, False),
        ({"HTTPS": "off", "REQUEST_SCHEME": "https"}, True),
    ],
)
def test_request_is_https(params: dict[str, str], https: bool) -> None:
    assert request_is_https(params) is https


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "has space"},
        {"name": "semi;colon"},
        {"name": "eq=uals"},
        {"name": "naïve"},
        {"path": "relative"},
        {"path": "/a;b"},
        {"domain": "example.com; Secure"},
        {"domain": "exa mple.com"},
        {"same_site": "None", "secure": "never"},
        {"same_site": "lax"},
        {"secure": "sometimes"},
    ],
)
def test_bad_cookie_settings_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CookieSettings(**kwargs)


def test_set_cookie_defaults() -> None:
    sid = new_session_id()
    attributes = _attributes(set_cookie_value(SETTINGS, sid, https=False, max_age=None))
    assert attributes == {"": f"gwsession={sid}", "path": "/", "httponly": "", "samesite": "Lax"}


def test_set_cookie_all_attributes() -> None:
    sid = new_session_id()
    settings = CookieSettings(name="sid", domain="example.com", path="/app", same_site="Strict", secure="always")
    attributes = _attributes(set_cookie_value(settings, sid, https=False, max_age=3600))
    assert attributes == {
        "": f"sid={sid}",
        "max-age": "3600",
        "path": "/app",
        "domain": "example.com",
        "secure": "",
        "httponly": "",
        "samesite": "Strict",
    }


@pytest.mark.parametrize(
    ("secure", "params", "expected"),
    [
        ("auto", {"HTTPS": "on"}, True),
        ("auto", {"REQUEST_SCHEME": "https"}, True),
        ("auto", {}, False),
        ("always", {}, True),
        ("never", {"HTTPS": "on"}, False),
    ],
)
def test_secure_flag(secure: Any, params: dict[str, str], expected: bool) -> None:
    settings = CookieSettings(secure=secure)
    https = request_is_https(params)
    assert (
        "secure" in _attributes(set_cookie_value(settings, new_session_id(), https=https, max_age=None))
    ) is expected
    assert ("secure" in _attributes(delete_cookie_value(settings, https=https))) is expected


def test_same_site_none_is_allowed_when_secure() -> None:
    header = set_cookie_value(CookieSettings(same_site="None"), new_session_id(), https=True, max_age=None)
    assert {"samesite": "None", "secure": ""}.items() <= _attributes(header).items()


def test_set_cookie_refuses_a_malformed_id_and_a_negative_max_age() -> None:
    with pytest.raises(ValueError, match="malformed"):
        set_cookie_value(SETTINGS, "x\r\nSet-Cookie: evil=1", https=False, max_age=None)
    with pytest.raises(ValueError, match="max_age"):
        set_cookie_value(SETTINGS, new_session_id(), https=False, max_age=-1)


def test_delete_cookie_expires_it_with_the_same_scope() -> None:
    settings = CookieSettings(domain="example.com", path="/app")
    attributes = _attributes(delete_cookie_value(settings, https=False))
    assert attributes[""] == "gwsession="
    assert attributes["max-age"] == "0"
    expires = datetime.datetime.strptime(attributes["expires"], "%a, %d %b %Y %H:%M:%S GMT")
    assert expires < datetime.datetime(2000, 1, 1)
    assert attributes["path"] == "/app"
    assert attributes["domain"] == "example.com"
    assert "httponly" in attributes


# -- the Session mapping -------------------------------------------------------------------------------------------


def _loaded(data: dict[str, Any]) -> Session:
    """A session as the worker builds it: from the bytes the loop loaded (so values are fresh JSON objects)."""
    return Session(new_session_id(), orjson.loads(orjson.dumps(data)))


def test_a_new_session_is_empty_and_unmodified() -> None:
    session = Session(None, None)
    assert session.is_new and session.session_id is None
    assert not session.modified and len(session) == 0
    assert session.changes().empty


def test_loading_and_reading_is_not_a_change() -> None:
    session = _loaded({"user": "ann", "cart": [1, 2], "prefs": {"a": {"b": 1}}})
    assert not session.is_new and session.session_id is not None
    assert session["user"] == "ann"
    assert session["cart"] == [1, 2]
    assert dict(session.items()) == {"user": "ann", "cart": [1, 2], "prefs": {"a": {"b": 1}}}
    assert "cart" in session and "nope" not in session
    assert session.get("nope") is None
    assert not session.modified
    assert session.changes().empty


def test_set_and_delete_are_tracked() -> None:
    session = _loaded({"a": 1, "b": 2})
    session["c"] = 3
    del session["a"]
    assert session.modified
    changes = session.changes()
    assert changes.set == {"c": 3}
    assert changes.deleted == ("a",)
    assert not changes.regenerate and not changes.invalidate


def test_set_after_delete_and_delete_after_set() -> None:
    session = _loaded({"a": 1, "b": 2})
    del session["a"]
    session["a"] = 10
    session["b"] = 20
    del session["b"]
    changes = session.changes()
    assert changes.set == {"a": 10}
    assert changes.deleted == ("b",)


def test_deleting_a_missing_key_raises_key_error() -> None:
    session = _loaded({"a": 1})
    with pytest.raises(KeyError):
        del session["missing"]
    assert session.pop("missing", None) is None
    assert not session.modified


def test_nested_mutation_without_reassignment_is_a_change() -> None:
    session = _loaded({"cart": [1], "prefs": {"theme": {"color": "red"}}, "other": [9]})
    session["cart"].append(2)
    session["prefs"]["theme"]["color"] = "blue"
    _ = session["other"]  # read, not changed
    assert session.modified
    changes = session.changes()
    assert changes.set == {"cart": [1, 2], "prefs": {"theme": {"color": "blue"}}}
    assert changes.deleted == ()


def test_nested_mutation_through_views_and_setdefault() -> None:
    session = _loaded({"a": [1], "b": {"x": 1}})
    for value in session.values():
        if isinstance(value, list):
            value.append(2)
    session.setdefault("b", {})["y"] = 2
    assert session.changes().set == {"a": [1, 2], "b": {"x": 1, "y": 2}}


def test_mutation_back_to_the_original_is_not_a_change() -> None:
    session = _loaded({"cart": [1]})
    session["cart"].append(2)
    session["cart"].pop()
    assert not session.modified
    assert session.changes().empty


def test_non_str_keys_are_refused() -> None:
    session = Session(None, None)
    with pytest.raises(TypeError):
        session[1] = "x"  # type: ignore[index]


def test_a_non_serializable_value_names_its_key() -> None:
    session = _loaded({"fine": 1})
    session["ok"] = [1, 2]
    session["bad"] = {1, 2, 3}
    with pytest.raises(SessionValueError, match="'bad'"):
        session.changes()


def test_a_non_serializable_value_put_into_a_loaded_container_names_its_key() -> None:
    session = _loaded({"cart": []})
    session["cart"].append(object())
    assert session.modified
    with pytest.raises(SessionValueError, match="'cart'"):
        session.changes()


def test_non_str_nested_keys_are_refused_with_the_key() -> None:
    session = Session(None, None)
    session["map"] = {1: "one"}
    with pytest.raises(SessionValueError, match="'map'"):
        session.changes()


def test_regenerate() -> None:
    session = _loaded({"user": None})
    session["user"] = "ann"
    session.regenerate()
    assert session.modified
    assert session.session_id is None  # the new id is minted by the loop
    changes = session.changes()
    assert changes.regenerate and not changes.invalidate
    assert changes.set == {"user": "ann"}
    assert dict(session) == {"user": "ann"}


def test_regenerate_alone_is_a_change() -> None:
    session = _loaded({"user": "ann"})
    session.regenerate()
    assert session.modified
    assert not session.changes().empty


def test_invalidate_clears_and_flags() -> None:
    session = _loaded({"user": "ann", "cart": [1]})
    session["cart"].append(2)
    session.invalidate()
    assert len(session) == 0 and session.modified and session.session_id is None
    changes = session.changes()
    assert changes.invalidate and not changes.regenerate
    assert changes.set == {} and changes.deleted == ()


def test_keys_set_after_invalidate_start_over_under_a_new_id() -> None:
    session = _loaded({"user": "ann"})
    session.invalidate()
    session["flash"] = "logged out"
    changes = session.changes()
    assert changes.invalidate and changes.regenerate
    assert changes.set == {"flash": "logged out"}


def test_events_on_a_new_session() -> None:
    session = Session(None, None)
    session["a"] = 1
    session.regenerate()
    del session["a"]
    session["b"] = 2
    changes = session.changes()
    # Nothing stored under an id yet: nothing to delete, nothing to move.
    assert changes == SessionChanges(set={"b": 2})
    session.invalidate()
    assert session.changes() == SessionChanges(invalidate=True)


def test_session_constructor_checks() -> None:
    with pytest.raises(ValueError, match="well-formed"):
        Session("not an id", {})
    with pytest.raises(ValueError, match="no stored data"):
        Session(None, {"a": 1})
    assert Session(new_session_id(), None).changes().empty


def test_repr_leaks_neither_id_nor_data() -> None:
    sid = new_session_id()
    session = Session(sid, {"secret": "hunter2"})
    assert sid not in repr(session) and "hunter2" not in repr(session)


# -- SessionChanges ------------------------------------------------------------------------------------------------


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@given(
    st.dictionaries(st.text(max_size=10), _json_values, max_size=5),
    st.lists(st.text(max_size=10), max_size=4),
    st.booleans(),
    st.booleans(),
)
def test_changes_json_round_trip(
    values: dict[str, Any], deleted: list[str], regenerate: bool, invalidate: bool
) -> None:
    changes = SessionChanges(set=values, deleted=tuple(deleted), regenerate=regenerate, invalidate=invalidate)
    assert SessionChanges.from_json(changes.to_json()) == changes


def test_changes_empty() -> None:
    assert SessionChanges().empty
    assert SessionChanges(set={}, deleted=(), regenerate=False, invalidate=False).empty
    assert not SessionChanges(set={"a": 1}).empty
    assert not SessionChanges(deleted=("a",)).empty
    assert not SessionChanges(regenerate=True).empty
    assert not SessionChanges(invalidate=True).empty


def test_changes_to_json_names_a_bad_key() -> None:
    with pytest.raises(SessionValueError, match="'when'"):
        SessionChanges(set={"ok": 1, "when": object()}).to_json()


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[]",
        b"{}",
        b'{"set": {}, "deleted": [], "regenerate": false}',
        b'{"set": [], "deleted": [], "regenerate": false, "invalidate": false}',
        b'{"set": {}, "deleted": [1], "regenerate": false, "invalidate": false}',
        b'{"set": {}, "deleted": [], "regenerate": 0, "invalidate": false}',
        b'{"set": {}, "deleted": [], "regenerate": false, "invalidate": false, "extra": 1}',
    ],
)
def test_malformed_changes_raise_session_value_error(payload: bytes) -> None:
    with pytest.raises(SessionValueError, match="malformed"):
        SessionChanges.from_json(payload)


def test_worker_to_loop_round_trip() -> None:
    session = _loaded({"cart": [1], "n": 1})
    session["cart"].append(2)
    session["n"] += 1
    del session["cart"][0]
    received = SessionChanges.from_json(session.changes().to_json())
    assert received.set == {"cart": [2], "n": 2}


# -- errors and open_store ----------------------------------------------------------------------------------------


def test_session_too_large_names_size_and_limit() -> None:
    err = SessionTooLarge(2048, 1024)
    assert (err.size, err.limit) == (2048, 1024)
    assert "2048" in str(err) and "1024" in str(err)


async def test_open_store_forms() -> None:
    assert open_store("off", idle_ttl=60, max_age=None) is None
    memory = open_store("memory", idle_ttl=60, max_age=3600)
    assert isinstance(memory, MemoryStore)
    assert (memory.idle_ttl, memory.max_age) == (60, 3600)
    memcached = open_store("memcached://127.0.0.1:11211", idle_ttl=60, max_age=None, timeout=0.5, pool_size=2)
    assert isinstance(memcached, MemcachedStore)
    assert memcached.timeout == 0.5
    ipv6 = open_store("memcached://[::1]:11211", idle_ttl=60, max_age=None)
    assert isinstance(ipv6, MemcachedStore)
    for store in (memory, memcached, ipv6):
        await store.close()


@pytest.mark.parametrize(
    "url",
    [
        "",
        "Memory",
        "redis://127.0.0.1:6379",
        "memcached://",
        "memcached://127.0.0.1",
        "memcached://127.0.0.1:notaport",
        "memcached://127.0.0.1:99999",
        "memcached://user:pw@127.0.0.1:11211",
        "memcached://127.0.0.1:11211/db",
        "memcached://127.0.0.1:11211?x=1",
        "127.0.0.1:11211",
    ],
)
def test_open_store_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ValueError, match=r"'memory', 'memcached://HOST:PORT' or 'off'"):
        open_store(url, idle_ttl=60, max_age=None)


# -- the gateway's session hook with a store that answers at once -------------------------------------------------
class _Pool:
    """What the dispatcher needs of the worker pool: requests handed to it are recorded."""

    on_request_done: object = None

    def __init__(self) -> None:
        self.submitted: list[Request] = []

    def submit(self, request: Request) -> None:
        self.submitted.append(request)


class _Sink:
    client_gone = False

    def __init__(self) -> None:
        self.calls: list[str] = []

    def send_head(self, head: bytes) -> None:
        self.calls.append(head.split(b"\r\n", 1)[0].decode())

    def send_body(self, data: bytes) -> None:
        pass

    def finish(self) -> None:
        self.calls.append("finish")

    def abort(self) -> None:
        self.calls.append("abort")


def _session_request(session_id: str, tmp_path: Path) -> tuple[Request, _Sink]:
    sink = _Sink()
    params = {"HTTP_COOKIE": f"other=1; gwsession={session_id}", "REQUEST_URI": "/"}
    return Request(params, RequestBody(1 << 20, str(tmp_path)), sink, "fastcgi", 0.0), sink  # type: ignore[arg-type]


def _extras(loaded_id: str | None, issued_id: str, changes: SessionChanges) -> bytes:
    return orjson.dumps([loaded_id, issued_id]) + b"\n" + changes.to_json()


async def test_the_memory_store_is_loaded_and_saved_on_the_spot_without_a_task(tmp_path: Path) -> None:
    store = MemoryStore(idle_ttl=60)
    session_id = new_session_id()
    await store.save(session_id, SessionChanges(set={"n": 1}))
    pool = _Pool()
    dispatcher = Dispatcher(pool, [SessionHook(store, Config())])  # type: ignore[arg-type]
    request, sink = _session_request(session_id, tmp_path)
    dispatcher.submit(request)
    assert pool.submitted == [request]  # already queued: nothing awaited in between
    assert request.session == (session_id, {"n": 1})
    dispatcher.request_done(request, _extras(session_id, session_id, SessionChanges(set={"n": 2})))
    assert sink.calls == ["finish"] and not dispatcher._tasks
    loaded = await store.load(session_id)
    assert loaded is not None and loaded.data == {"n": 2}


async def test_a_session_stored_on_the_spot_that_fails_cuts_the_response(tmp_path: Path) -> None:
    store = MemoryStore(idle_ttl=60, max_item_size=100)
    session_id = new_session_id()
    await store.save(session_id, SessionChanges(set={"n": 1}))
    dispatcher = Dispatcher(_Pool(), [SessionHook(store, Config())])  # type: ignore[arg-type]
    request, sink = _session_request(session_id, tmp_path)
    dispatcher.submit(request)
    dispatcher.request_done(request, _extras(session_id, session_id, SessionChanges(set={"n": "x" * 200})))
    assert sink.calls == ["abort"]
    loaded = await store.load(session_id)
    assert loaded is not None and loaded.data == {"n": 1}


class _BrokenMemoryStore(MemoryStore):
    async def load(self, session_id: str) -> SessionRecord | None:
        raise SessionStoreUnavailable("the disk is on fire")


async def test_a_store_answering_at_once_that_fails_is_a_503_naming_the_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = _Pool()
    dispatcher = Dispatcher(pool, [SessionHook(_BrokenMemoryStore(idle_ttl=60), Config())])  # type: ignore[arg-type]
    request, sink = _session_request(new_session_id(), tmp_path)
    dispatcher.submit(request)  # raises nothing here: the failure is answered like any store failure
    for _ in range(3):
        await asyncio.sleep(0)
    assert sink.calls == ["503 Service Unavailable", "finish"] and not pool.submitted
    assert "the disk is on fire" in caplog.text


async def test_serialized_sessions_and_memcached_still_go_through_tasks(memcached: Memcached) -> None:
    assert not SessionHook(MemoryStore(idle_ttl=60), Config(session_serialize=True)).at_once
    store = MemcachedStore("127.0.0.1", memcached.port, idle_ttl=60)
    try:
        assert not SessionHook(store, Config()).at_once
    finally:
        await store.close()


async def test_run_at_once_refuses_a_call_that_suspends() -> None:
    async def answers() -> int:
        return 7

    async def suspends() -> int:
        await asyncio.sleep(0)
        return 7

    assert run_at_once(answers()) == 7
    with pytest.raises(RuntimeError, match="answers_at_once = False"):
        run_at_once(suspends())
