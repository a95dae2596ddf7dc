"""Unit tests of the sans-IO uwsgi codec (``gateway.protocols.uwsgi``): one request per connection, then nothing.

Every valid input is fed three ways by ``feed``: in one read, one byte per read, and followed by trailing bytes,
which must be refused whether they arrive in the same read as the request or in a later one. Body events are
compared after joining adjacent ``BodyData`` (the codec streams the body as it arrives, so the split depends on the
reads); the head and the end of the request must come out identical.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.errors import RemoteProtocolError
from gateway.protocols.uwsgi import (
    MAX_VARS_BLOCK,
    MODIFIER_PING,
    MODIFIER_WSGI,
    BodyData,
    BodyTooLarge,
    Event,
    Limits,
    Ping,
    RequestComplete,
    RequestHead,
    ServerConnection,
    decode_vars,
    encode_ping,
    encode_pong,
    encode_request,
    encode_vars,
)
from gateway.protocols.uwsgi.codec import SUBSCRIBE, UNSUBSCRIBE, _decode_vars_checked, encode_subscription

#: modifier1, vars block size (little-endian u16), modifier2.
HEADER = struct.Struct("<BHB")

MODES = ["whole", "bytewise", "trailing"]
TRAILER = b"GET / HTTP/1.1\r\n"
#: What the codec says about bytes after the request (or after a ping).
AFTER_THE_REQUEST = r"uwsgi carries one request|ping carries no payload"

PARAMS = {
    "REQUEST_METHOD": "POST",
    "PATH_INFO": "/submit",
    "QUERY_STRING": "a=1",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "CONTENT_TYPE": "text/plain",
    "CONTENT_LENGTH": "11",
}
BODY = b"hello world"

CODEC_SETTINGS = settings(max_examples=200, deadline=None)

#: Every limit spelled out, since the codec has none of its own; tests that are about one limit override it.
TEST_LIMITS = {"max_vars_size": MAX_VARS_BLOCK, "max_vars": 1000, "max_body_size": 1 << 30}


def limits(**overrides: int) -> Limits:
    return Limits(**{**TEST_LIMITS, **overrides})


# -- helpers -------------------------------------------------------------------------------------------------------
def coalesce(events: Iterable[Event]) -> list[Event]:
    """Adjacent BodyData joined into one."""
    joined: list[Event] = []
    for event in events:
        if isinstance(event, BodyData) and joined and isinstance(joined[-1], BodyData):
            joined[-1] = BodyData(bytes(joined[-1].data) + event.data)
        else:
            joined.append(event)
    return joined


def feed_raw(conn: ServerConnection, data: bytes, mode: str) -> list[Event]:
    """Feed ``data`` as ``mode`` says ("trailing" appends TRAILER to the same read); events as they came."""
    if mode == "whole":
        return conn.receive_data(data)
    if mode == "bytewise":
        return [event for index in range(len(data)) for event in conn.receive_data(data[index : index + 1])]
    if mode == "trailing":
        return conn.receive_data(data + TRAILER)
    raise AssertionError(f"unknown mode {mode!r}")


def feed(conn: ServerConnection, data: bytes, mode: str) -> list[Event]:
    """Feed a complete request as ``mode`` says and return its events, adjacent BodyData joined.

    In "trailing" mode, the request followed by trailing bytes in the same read must be refused, and so must
    trailing bytes in a read of their own after the request was accepted, each for good; both are tried on
    connections of their own, so that ``conn`` gets the request alone and stays usable.
    """
    if mode == "trailing":
        same_read = ServerConnection(conn.limits)
        with pytest.raises(RemoteProtocolError, match=AFTER_THE_REQUEST) as raised:
            same_read.receive_data(data + TRAILER)
        assert_failed_for_good(same_read, str(raised.value))
        later_read = ServerConnection(conn.limits)
        accepted = later_read.receive_data(data)
        with pytest.raises(RemoteProtocolError, match=AFTER_THE_REQUEST) as raised:
            later_read.receive_data(TRAILER)
        assert_failed_for_good(later_read, str(raised.value))
        events = conn.receive_data(data)
        assert events == accepted
        return coalesce(events)
    return coalesce(feed_raw(conn, data, mode))


def request_bytes(
    params: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes = b"", *, modifier2: int = 0
) -> bytes:
    """A request built by hand, independently of ``encode_request``."""
    items = params.items() if isinstance(params, Mapping) else params
    block = b""
    for key, value in items:
        raw_key, raw_value = key.encode("latin-1"), value.encode("latin-1")
        block += struct.pack("<H", len(raw_key)) + raw_key + struct.pack("<H", len(raw_value)) + raw_value
    return HEADER.pack(0, len(block), modifier2) + block + body


def with_vars_block(block: bytes, *, modifier1: int = 0, modifier2: int = 0) -> bytes:
    return HEADER.pack(modifier1, len(block), modifier2) + block


def assert_failed_for_good(conn: ServerConnection, reason: str) -> None:
    """``conn`` raised RemoteProtocolError(``reason``): from now on every call raises it again."""
    for data in (b"", TRAILER, encode_ping(), request_bytes(PARAMS, BODY)):
        with pytest.raises(RemoteProtocolError, match="the connection already failed") as raised:
            conn.receive_data(data)
        assert reason in str(raised.value)
    assert not conn.input_pending


# -- requests ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_request_with_vars_and_body_gives_head_body_and_completion(mode: str) -> None:
    conn = ServerConnection(limits())
    events = feed(conn, request_bytes(PARAMS, BODY), mode)
    assert events == [RequestHead(PARAMS, 0), BodyData(BODY), RequestComplete()]
    assert conn.receive_data(b"") == []  # closing after a complete request is how it should end


def test_body_bytes_in_the_same_read_as_the_header_come_out_at_once() -> None:
    data = request_bytes(PARAMS, BODY)
    header_end = len(data) - len(BODY)
    conn = ServerConnection(limits())
    assert conn.receive_data(data[: header_end + 4]) == [RequestHead(PARAMS, 0), BodyData(b"hell")]
    assert conn.receive_data(data[header_end + 4 : header_end + 5]) == [BodyData(b"o")]
    assert conn.receive_data(data[header_end + 5 :]) == [BodyData(b" world"), RequestComplete()]


def test_head_and_whole_body_in_one_read_gives_all_events_at_once() -> None:
    events = ServerConnection(limits()).receive_data(request_bytes(PARAMS, BODY))
    assert events == [RequestHead(PARAMS, 0), BodyData(BODY), RequestComplete()]


def test_encode_request_matches_the_hand_built_layout() -> None:
    assert encode_request(PARAMS, BODY, modifier2=3) == request_bytes(PARAMS, BODY, modifier2=3)
    assert encode_request({}) == b"\x00\x00\x00\x00"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("modifier2", [0, 1, 7, 255])
def test_modifier2_is_reported_in_the_head(mode: str, modifier2: int) -> None:
    events = feed(ServerConnection(limits()), request_bytes({"PATH_INFO": "/"}, modifier2=modifier2), mode)
    assert events == [RequestHead({"PATH_INFO": "/"}, modifier2), RequestComplete()]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("params", [{"PATH_INFO": "/"}, {"CONTENT_LENGTH": "0"}, {"CONTENT_LENGTH": ""}, {}])
def test_request_without_body_completes_right_after_the_head(mode: str, params: dict[str, str]) -> None:
    events = feed(ServerConnection(limits()), request_bytes(params), mode)
    assert events == [RequestHead(params, 0), RequestComplete()]


@pytest.mark.parametrize("mode", MODES)
def test_long_keys_and_values_and_latin1_bytes(mode: str) -> None:
    params = {"K" * 300: "v" * 40_000, "PATH_INFO": "/caf\xe9\xff", "EMPTY": "", "": "empty key"}
    events = feed(ServerConnection(limits()), request_bytes(params), mode)
    assert events == [RequestHead(params, 0), RequestComplete()]


@pytest.mark.parametrize("mode", MODES)
def test_repeated_vars_are_merged_like_cgi_headers(mode: str) -> None:
    pairs = [
        ("HTTP_ACCEPT", "text/html"),
        ("HTTP_COOKIE", "a=1"),
        ("PATH_INFO", "/first"),
        ("HTTP_ACCEPT", "text/plain"),
        ("HTTP_COOKIE", "b=2"),
        ("PATH_INFO", "/second"),
        ("HTTP_COOKIE", "c=3"),
    ]
    events = feed(ServerConnection(limits()), request_bytes(pairs), mode)
    expected = {"HTTP_ACCEPT": "text/html, text/plain", "HTTP_COOKIE": "a=1; b=2; c=3", "PATH_INFO": "/second"}
    assert events == [RequestHead(expected, 0), RequestComplete()]


# -- ping ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_ping_is_reported_and_answered_with_a_pong(mode: str) -> None:
    conn = ServerConnection(limits())
    assert encode_ping() == HEADER.pack(MODIFIER_PING, 0, 0)
    assert feed(conn, encode_ping(), mode) == [Ping()]
    assert encode_pong() == struct.pack("<BHB", 100, 0, 1)
    assert conn.receive_data(b"") == []


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize("data", [HEADER.pack(MODIFIER_PING, 4, 0) + b"data", HEADER.pack(MODIFIER_PING, 1, 0)])
def test_ping_with_a_payload_is_an_error(mode: str, data: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="a ping carries no payload"):
        feed_raw(ServerConnection(limits()), data, mode)


# -- refused input -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("modifier1", [1, 5, 17, 72, 99, 101, 255])
def test_other_modifier1_is_an_error(mode: str, modifier1: int) -> None:
    data = with_vars_block(encode_vars({"PATH_INFO": "/"}), modifier1=modifier1)
    with pytest.raises(RemoteProtocolError, match=f"modifier1 {modifier1} is not served"):
        feed_raw(ServerConnection(limits()), data, mode)


@pytest.mark.parametrize("mode", MODES)
def test_vars_block_above_the_limit_is_an_error(mode: str) -> None:
    block = encode_vars({"NAME": "v" * 95})  # 103 bytes
    with pytest.raises(RemoteProtocolError, match="vars block of 103 bytes exceeds 100"):
        feed_raw(ServerConnection(limits(max_vars_size=100)), with_vars_block(block), mode)


def test_vars_block_above_the_limit_is_refused_from_the_header_alone() -> None:
    conn = ServerConnection(limits(max_vars_size=100))
    with pytest.raises(RemoteProtocolError, match="vars block of 101 bytes exceeds 100"):
        conn.receive_data(HEADER.pack(0, 101, 0))


@pytest.mark.parametrize("mode", MODES)
def test_vars_block_exactly_at_the_limit_is_accepted(mode: str) -> None:
    params = {"NAME": "v" * 92}
    assert len(encode_vars(params)) == 100
    events = feed(ServerConnection(limits(max_vars_size=100)), request_bytes(params), mode)
    assert events == [RequestHead(params, 0), RequestComplete()]


@pytest.mark.parametrize("mode", MODES)
def test_largest_possible_vars_block_is_accepted_at_the_protocol_maximum(mode: str) -> None:
    assert MAX_VARS_BLOCK == 0xFFFF
    params = {"BIG": "x" * (MAX_VARS_BLOCK - 2 - 3 - 2)}
    data = encode_request(params)
    assert len(data) == 4 + MAX_VARS_BLOCK
    assert feed(ServerConnection(limits(max_vars_size=MAX_VARS_BLOCK)), data, mode) == [
        RequestHead(params, 0),
        RequestComplete(),
    ]


def test_encode_request_refuses_a_vars_block_that_does_not_fit_the_header() -> None:
    with pytest.raises(ValueError, match="vars block of 65536 bytes does not fit"):
        encode_request({"BIG": "x" * (MAX_VARS_BLOCK - 2 - 3 - 1)})


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x04", "vars block ends inside a key length"),
        (b"\x04\x00PATH", "vars block ends inside a value length"),
        (b"\x04\x00PATH\x01", "vars block ends inside a value length"),
        (b"\x09\x00PATH", "a key claims 9 bytes but the vars block has 4 left"),
        (b"\x04\x00PATH\x05\x00/ab", "a value claims 5 bytes but the vars block has 3 left"),
        (b"\x01\x00A\x01\x00B\xff\xff", "a key claims 65535 bytes but the vars block has 0 left"),
    ],
)
def test_truncated_vars_are_an_error(mode: str, block: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        feed_raw(ServerConnection(limits()), with_vars_block(block), mode)


@pytest.mark.parametrize("mode", MODES)
def test_more_vars_than_the_limit_is_an_error(mode: str) -> None:
    params = {f"V{index}": str(index) for index in range(4)}
    with pytest.raises(RemoteProtocolError, match="more than 3 vars"):
        feed_raw(ServerConnection(limits(max_vars=3)), request_bytes(params), mode)


@pytest.mark.parametrize("mode", MODES)
def test_vars_exactly_at_the_count_limit_are_accepted(mode: str) -> None:
    params = {f"V{index}": str(index) for index in range(3)}
    events = feed(ServerConnection(limits(max_vars=3)), request_bytes(params), mode)
    assert events == [RequestHead(params, 0), RequestComplete()]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("value", ["abc", "-1", "+5", "1.5", " 12", "1e3", "0x10", "\xb2"])
def test_non_numeric_content_length_is_an_error(mode: str, value: str) -> None:
    with pytest.raises(RemoteProtocolError, match=r"CONTENT_LENGTH .* is not a decimal number"):
        feed_raw(ServerConnection(limits()), request_bytes({"CONTENT_LENGTH": value}), mode)


# -- body ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_body_over_the_limit_is_consumed_without_being_reported(mode: str) -> None:
    conn = ServerConnection(limits(max_body_size=10))
    params = {"CONTENT_LENGTH": "25"}
    events = feed(conn, request_bytes(params, b"b" * 25), mode)
    assert events == [RequestHead(params, 0), BodyTooLarge(10)]
    assert conn.receive_data(b"") == []  # the whole body was read


def test_body_over_the_limit_is_dropped_read_by_read() -> None:
    conn = ServerConnection(limits(max_body_size=10))
    params = {"CONTENT_LENGTH": "25"}
    assert conn.receive_data(request_bytes(params, b"b" * 5)) == [RequestHead(params, 0), BodyTooLarge(10)]
    assert conn.receive_data(b"b" * 19) == []
    assert conn.receive_data(b"b") == []
    with pytest.raises(RemoteProtocolError, match="uwsgi carries one request"):
        conn.receive_data(b"b")


def test_end_of_input_inside_a_dropped_body_is_an_error() -> None:
    conn = ServerConnection(limits(max_body_size=10))
    conn.receive_data(request_bytes({"CONTENT_LENGTH": "25"}, b"b" * 24))
    with pytest.raises(RemoteProtocolError, match=r"connection closed before the request was complete \(in BODY\)"):
        conn.receive_data(b"")


@pytest.mark.parametrize("mode", MODES)
def test_body_exactly_at_the_limit_is_accepted(mode: str) -> None:
    params = {"CONTENT_LENGTH": "10"}
    events = feed(ServerConnection(limits(max_body_size=10)), request_bytes(params, b"0123456789"), mode)
    assert events == [RequestHead(params, 0), BodyData(b"0123456789"), RequestComplete()]


def test_body_beyond_content_length_in_a_later_read_is_an_error() -> None:
    conn = ServerConnection(limits())
    data = request_bytes(PARAMS, BODY)
    conn.receive_data(data[:-3])
    with pytest.raises(RemoteProtocolError, match="1 bytes beyond CONTENT_LENGTH"):
        conn.receive_data(data[-3:] + b"!")


# -- after an error ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (with_vars_block(b"", modifier1=7), "modifier1 7 is not served"),
        (with_vars_block(b"\x04"), "ends inside a key length"),
        (HEADER.pack(MODIFIER_PING, 1, 0), "a ping carries no payload"),
        (request_bytes({"CONTENT_LENGTH": "x"}), "is not a decimal number"),
        (request_bytes(PARAMS, BODY + b"!"), AFTER_THE_REQUEST + "|beyond CONTENT_LENGTH"),
    ],
)
def test_after_a_remote_error_every_call_raises(mode: str, broken: bytes, message: str) -> None:
    conn = ServerConnection(limits())
    with pytest.raises(RemoteProtocolError, match=message) as raised:
        feed_raw(conn, broken, mode)
    assert_failed_for_good(conn, str(raised.value))


def test_end_of_input_inside_the_request_fails_the_connection_for_good() -> None:
    conn = ServerConnection(limits())
    conn.receive_data(request_bytes(PARAMS, BODY)[:-1])
    with pytest.raises(RemoteProtocolError, match="closed before the request was complete") as raised:
        conn.receive_data(b"")
    assert_failed_for_good(conn, str(raised.value))


# -- end of input --------------------------------------------------------------------------------------------------
REQUEST = request_bytes(PARAMS, BODY)


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize(
    ("cut", "state"),
    [(1, "HEADER"), (3, "HEADER"), (4, "VARS"), (20, "VARS"), (len(REQUEST) - len(BODY), "BODY"), (-1, "BODY")],
)
def test_end_of_input_before_the_request_is_complete_is_an_error(mode: str, cut: int, state: str) -> None:
    conn = ServerConnection(limits())
    feed_raw(conn, REQUEST[:cut], mode)
    with pytest.raises(RemoteProtocolError, match=rf"closed before the request was complete \(in {state}\)"):
        conn.receive_data(b"")


def test_end_of_input_on_a_fresh_connection_is_clean() -> None:
    conn = ServerConnection(limits())
    assert conn.receive_data(b"") == []
    assert conn.receive_data(b"") == []


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_end_of_input_after_a_ping_is_clean(mode: str) -> None:
    conn = ServerConnection(limits())
    assert feed(conn, encode_ping(), mode) == [Ping()]
    assert conn.receive_data(b"") == []
    with pytest.raises(RemoteProtocolError, match="after the end of the request"):
        conn.receive_data(b"x")


# -- properties ----------------------------------------------------------------------------------------------------
latin1_text = st.characters(min_codepoint=0, max_codepoint=255)
#: Keys that merge_params leaves alone (no HTTP_ joining); CONTENT_LENGTH is set by the test itself.
var_keys = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=255), min_size=1, max_size=300).filter(
    lambda key: not key.startswith("HTTP_") and key != "CONTENT_LENGTH"
)
#: At most 20 * (2 + 300 + 2 + 2000) bytes plus CONTENT_LENGTH: always under the u16 vars block size.
var_dicts = st.dictionaries(var_keys, st.text(alphabet=latin1_text, max_size=2000), max_size=20)


def split_points(data: st.DataObject, size: int) -> list[int]:
    return sorted(data.draw(st.lists(st.integers(min_value=0, max_value=size), max_size=30)))


def chunks_of(payload: bytes, cuts: list[int]) -> list[bytes]:
    return [payload[start:end] for start, end in zip([0, *cuts], [*cuts, len(payload)], strict=True) if end > start]


@CODEC_SETTINGS
@given(params=var_dicts, body=st.binary(max_size=200_000), modifier2=st.integers(0, 255), data=st.data())
def test_request_round_trips_through_any_chunking(
    params: dict[str, str], body: bytes, modifier2: int, data: st.DataObject
) -> None:
    params = {**params, "CONTENT_LENGTH": str(len(body))}
    payload = encode_request(params, body, modifier2=modifier2)
    conn = ServerConnection(limits())
    events: list[Event] = []
    for chunk in chunks_of(payload, split_points(data, len(payload))):
        events += conn.receive_data(chunk)
    if body:
        assert coalesce(events) == [RequestHead(params, modifier2), BodyData(body), RequestComplete()]
    else:
        assert events == [RequestHead(params, modifier2), RequestComplete()]
    assert not any(isinstance(event, BodyData) and not event.data for event in events)
    assert conn.receive_data(b"") == []


@CODEC_SETTINGS
@given(
    pairs=st.lists(
        st.tuples(st.text(alphabet=latin1_text, max_size=300), st.text(alphabet=latin1_text, max_size=300)),
        max_size=50,
    )
)
def test_vars_round_trip(pairs: list[tuple[str, str]]) -> None:
    assert decode_vars(encode_vars(pairs), max(len(pairs), 1)) == pairs


def assert_only_remote_errors(conn: ServerConnection, chunks: Iterable[bytes]) -> None:
    """Feeding may stop at a RemoteProtocolError, and at nothing else; after one, every further call raises."""
    try:
        for chunk in chunks:
            for event in conn.receive_data(chunk):
                assert isinstance(event, RequestHead | BodyData | RequestComplete | Ping | BodyTooLarge)
    except RemoteProtocolError as err:
        assert_failed_for_good(conn, str(err))


@CODEC_SETTINGS
@given(garbage=st.binary(max_size=2000), data=st.data())
def test_arbitrary_bytes_give_events_or_a_remote_error(garbage: bytes, data: st.DataObject) -> None:
    chunks = chunks_of(garbage, split_points(data, len(garbage)))
    assert_only_remote_errors(ServerConnection(limits(max_vars=5, max_body_size=100)), [*chunks, b""])


@CODEC_SETTINGS
@given(
    modifier1=st.sampled_from([MODIFIER_WSGI, MODIFIER_PING]),
    block=st.binary(max_size=300),
    rest=st.binary(max_size=50),
)
def test_well_framed_garbage_vars_give_events_or_a_remote_error(modifier1: int, block: bytes, rest: bytes) -> None:
    data = with_vars_block(block, modifier1=modifier1) + rest
    assert_only_remote_errors(ServerConnection(limits(max_vars=5, max_body_size=100)), [data, b""])


VALID = request_bytes({**PARAMS, "HTTP_COOKIE": "a=1", "EMPTY": ""}, BODY, modifier2=2)


@CODEC_SETTINGS
@given(
    flips=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), min_size=1, max_size=8),
    chunk=st.integers(1, len(VALID)),
)
def test_mutated_valid_requests_give_events_or_a_remote_error(flips: list[tuple[int, int]], chunk: int) -> None:
    mutated = bytearray(VALID)
    for index, mask in flips:
        mutated[index] ^= mask
    chunks = [bytes(mutated[start : start + chunk]) for start in range(0, len(mutated), chunk)]
    assert_only_remote_errors(ServerConnection(limits(max_body_size=5)), [*chunks, b""])


def _outcome(decode: Callable[[bytes, int], list[tuple[str, str]]], block: bytes, limit: int) -> object:
    try:
        return decode(block, limit)
    except RemoteProtocolError as err:
        return str(err)


@given(
    pairs=st.lists(
        st.tuples(st.text(alphabet=latin1_text, max_size=300), st.text(alphabet=latin1_text, max_size=300)),
        max_size=20,
    ),
    cut=st.integers(0, 5),
    garbage=st.binary(max_size=40),
    limit=st.integers(1, 25),
)
def test_the_fast_vars_decoder_agrees_with_the_careful_one(
    pairs: list[tuple[str, str]], cut: int, garbage: bytes, limit: int
) -> None:
    """Same vars, or the same error message, for whole, truncated and garbled blocks and any --max-params."""
    block = encode_vars(pairs)
    for candidate in (block, block[: len(block) - cut], block + garbage, garbage):
        assert _outcome(decode_vars, candidate, limit) == _outcome(_decode_vars_checked, candidate, limit)


@CODEC_SETTINGS
@given(
    prefix=st.integers(0, len(VALID)), garbage=st.binary(min_size=1, max_size=200), data=st.data(), eof=st.booleans()
)
def test_any_input_parses_or_raises_a_remote_error_and_then_fails_for_good(
    prefix: int, garbage: bytes, data: st.DataObject, eof: bool
) -> None:
    # Garbage anywhere in a request, then a whole valid request: the codec refuses at the first byte it cannot
    # take, and from there on refuses everything, however the stream was cut into reads.
    stream = VALID[:prefix] + garbage + VALID
    chunks = chunks_of(stream, split_points(data, len(stream)))
    assert_only_remote_errors(ServerConnection(limits(max_vars=5, max_body_size=100)), chunks + [b""] * eof)


# -- uWSGI's subscription packet (--subscribe) ------------------------------------------------------------------
def _decode_subscription(packet: bytes) -> tuple[int, int, list[tuple[str, str]]]:
    modifier1, size, modifier2 = HEADER.unpack_from(packet)
    assert size == len(packet) - HEADER.size
    return modifier1, modifier2, decode_vars(packet[HEADER.size :], 100)


def test_packet_is_uwsgis_subscription() -> None:
    packet = encode_subscription("example.com", "127.0.0.1:3031", cores=4, load=2, weight=4)
    modifier1, modifier2, pairs = _decode_subscription(packet)
    assert (modifier1, modifier2) == (224, SUBSCRIBE)
    assert pairs == [
        ("key", "example.com"),
        ("address", "127.0.0.1:3031"),
        ("modifier1", "0"),
        ("modifier2", "0"),
        ("cores", "4"),
        ("load", "2"),
        ("weight", "4"),
    ]
    _, modifier2, _ = _decode_subscription(encode_subscription("k", "a:1", cores=1, load=0, weight=1, unsubscribe=True))
    assert modifier2 == UNSUBSCRIBE
    with pytest.raises(ValueError, match="key and an address"):
        encode_subscription("", "a:1", cores=1, load=0, weight=1)
