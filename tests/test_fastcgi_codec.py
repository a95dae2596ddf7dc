"""Unit tests of the sans-IO FastCGI codec (``gateway.protocols.fastcgi``), application side first.

Every input is fed three ways by ``feed``: in one read, one byte per read, and followed by the start of a next
request, which must stay buffered without producing anything until the rest of it arrives. The codec's own output
is decoded with ``ClientConnection`` (the web-server side) rather than compared with hand-made bytes, except where
the exact layout on the wire is the point of the test.
"""

from __future__ import annotations

import copy
import itertools
import struct
from collections.abc import Iterable, Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocols import compiled
from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.fastcgi import (
    FCGI_MAX_CONNS,
    FCGI_MAX_REQS,
    FCGI_MPXS_CONNS,
    MAX_CONTENT,
    BodyBeyondLength,
    BodyData,
    BodyIncomplete,
    BodyTooLarge,
    ClientConnection,
    ClientEvent,
    EndRequest,
    GetValuesResult,
    Limits,
    ProtocolStatus,
    RecordType,
    RequestAborted,
    RequestComplete,
    RequestHead,
    Role,
    ServerConnection,
    ServerEvent,
    Stdout,
    UnknownType,
    decode_pairs,
    encode_abort,
    encode_begin,
    encode_get_values,
    encode_pairs,
    encode_params,
    encode_request,
    encode_stdin,
    record,
)

#: The record header as the specification draws it: version, type, request id, content length, padding length.
HEADER = struct.Struct(">BBHHBx")

MODES = ["whole", "bytewise", "trailing"]

#: What "trailing" appends: the first bytes of another request, cut inside its BEGIN_REQUEST record.
NEXT_ID = 0xBEEF
NEXT_PARAMS = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/next"}
NEXT_REQUEST = encode_request(NEXT_ID, NEXT_PARAMS)
NEXT_PREFIX = NEXT_REQUEST[:11]

PARAMS = {
    "REQUEST_METHOD": "POST",
    "SCRIPT_NAME": "/submit",
    "QUERY_STRING": "a=1&b=2",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "CONTENT_LENGTH": "11",
    "CONTENT_TYPE": "text/plain",
}
BODY = b"hello world"

CODECS_COMPILED = compiled()
CODEC_SETTINGS = settings(max_examples=200, deadline=None)

#: Every limit spelled out, since the codec has none of its own; tests that are about one limit override it.
TEST_LIMITS = {
    "max_params_size": 64 * 1024,
    "max_params": 1000,
    "max_body_size": 1 << 30,
    "max_requests_per_connection": 128,
    "max_connections": 1024,
}


def limits(**overrides: int) -> Limits:
    return Limits(**{**TEST_LIMITS, **overrides})


# -- helpers -------------------------------------------------------------------------------------------------------
def feed(conn: ServerConnection, data: bytes, mode: str) -> list[ServerEvent]:
    """Feed ``data`` as ``mode`` says and return the events it produced."""
    if mode == "whole":
        return conn.receive_data(data)
    if mode == "bytewise":
        return coalesce([event for index in range(len(data)) for event in conn.receive_data(data[index : index + 1])])
    if mode == "trailing":
        events = conn.receive_data(data + NEXT_PREFIX)
        assert_next_request_is_buffered(conn)
        return events
    raise AssertionError(f"unknown mode {mode!r}")


def coalesce(events: Iterable[ServerEvent]) -> list[ServerEvent]:
    """Adjacent BodyData of one request joined into one: the pieces a STDIN record streams in as it arrives."""
    joined: list[ServerEvent] = []
    for event in events:
        last = joined[-1] if joined else None
        if isinstance(event, BodyData) and isinstance(last, BodyData) and last.request_id == event.request_id:
            joined[-1] = BodyData(event.request_id, bytes(last.data) + event.data)
        else:
            joined.append(event)
    return joined


def as_fed(mode: str, events: list[ServerEvent]) -> list[ServerEvent]:
    """The events ``feed`` reports in ``mode`` when whole records give ``events``."""
    return coalesce(events) if mode == "bytewise" else events


def assert_next_request_is_buffered(conn: ServerConnection) -> None:
    """The partial next request was kept: completing it (on a copy, so ``conn`` is untouched) yields that request.

    Objects compiled by mypyc cannot be deep-copied, so this runs in the pure-Python pass of ``make test``.
    """
    if CODECS_COMPILED:
        return
    probe = copy.deepcopy(conn)
    overloaded = probe.active_requests >= probe.limits.max_requests_per_connection
    events = probe.receive_data(NEXT_REQUEST[len(NEXT_PREFIX) :])
    if overloaded:
        assert events == []
        assert decode_output(probe.data_to_send())[-1] == EndRequest(NEXT_ID, 0, ProtocolStatus.OVERLOADED)
    else:
        # FCGI_KEEP_CONN is each request's own flag, whatever earlier requests on the connection said.
        assert events == [RequestHead(NEXT_ID, NEXT_PARAMS, True), RequestComplete(NEXT_ID)]


def decode_output(data: bytes) -> list[ClientEvent]:
    """What a web server reads from ``data``, which must be whole records."""
    client = ClientConnection()
    events = client.receive_data(data)
    assert client.receive_data(b"") == []
    return events


def padded_record(record_type: int, request_id: int, content: bytes, padding: int, filler: bytes = b"\xa5") -> bytes:
    """A record with ``padding`` bytes of garbage after its content, built by hand."""
    return HEADER.pack(1, record_type, request_id, len(content), padding) + content + filler * padding


def begin_body(role: int = Role.RESPONDER, flags: int = 1) -> bytes:
    return struct.pack(">HB5x", role, flags)


def head_of(request_id: int, params: Mapping[str, str] | Iterable[tuple[str, str]], *, keep_conn: bool = True) -> bytes:
    """BEGIN_REQUEST and the whole PARAMS stream, but no STDIN."""
    return encode_begin(request_id, keep_conn=keep_conn) + encode_params(request_id, params)


def events_for(events: list[ServerEvent], request_id: int) -> list[ServerEvent]:
    return [event for event in events if event.request_id == request_id]


def assert_failed_for_good(conn: ServerConnection, reason: str) -> None:
    """``conn`` raised RemoteProtocolError(``reason``): from now on every input and every output call raises."""
    already = "the connection already failed"
    for data in (b"", b"\x01", encode_request(1, {})):
        with pytest.raises(RemoteProtocolError, match=already) as raised:
            conn.receive_data(data)
        assert reason in str(raised.value)
    with pytest.raises(LocalProtocolError, match=already):
        conn.data_to_send()
    for request_id in (1, NEXT_ID):
        with pytest.raises(LocalProtocolError, match=already):
            conn.send_stdout(request_id, b"x")
        with pytest.raises(LocalProtocolError, match=already):
            conn.send_stdout_pieces(request_id, b"x")
        with pytest.raises(LocalProtocolError, match=already):
            conn.end_request(request_id)
    assert conn.active_requests == 0
    assert not conn.input_pending


# -- a complete request --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_responder_request_gives_head_body_and_completion(mode: str) -> None:
    conn = ServerConnection(limits())
    events = feed(conn, encode_request(1, PARAMS, BODY), mode)
    assert events == [RequestHead(1, PARAMS, True), BodyData(1, BODY), RequestComplete(1)]
    assert conn.is_active(1)
    assert conn.active_requests == 1
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("mode", MODES)
def test_request_without_body_completes_after_head(mode: str) -> None:
    conn = ServerConnection(limits())
    events = feed(conn, encode_request(7, {"REQUEST_METHOD": "GET"}), mode)
    assert events == [RequestHead(7, {"REQUEST_METHOD": "GET"}, True), RequestComplete(7)]


@pytest.mark.parametrize("mode", MODES)
def test_body_in_several_stdin_records_gives_one_body_data_per_record(mode: str) -> None:
    conn = ServerConnection(limits())
    data = encode_begin(3) + encode_params(3, {}) + encode_stdin(3, b"abc", end=False)
    data += encode_stdin(3, b"defg", end=False) + encode_stdin(3, b"")
    events = feed(conn, data, mode)
    assert events == as_fed(
        mode, [RequestHead(3, {}, True), BodyData(3, b"abc"), BodyData(3, b"defg"), RequestComplete(3)]
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("keep_conn", [True, False])
def test_keep_conn_flag_decides_whether_to_close_after_the_response(mode: str, keep_conn: bool) -> None:
    conn = ServerConnection(limits())
    events = feed(conn, encode_request(1, PARAMS, BODY, keep_conn=keep_conn), mode)
    assert events[0] == RequestHead(1, PARAMS, keep_conn)
    assert conn.close_after_response is (not keep_conn)


@pytest.mark.parametrize("mode", MODES)
def test_one_request_without_keep_conn_makes_the_connection_close(mode: str) -> None:
    conn = ServerConnection(limits())
    data = encode_request(1, {}, keep_conn=True) + encode_request(2, {}, keep_conn=False)
    feed(conn, data, mode)
    assert conn.close_after_response


# -- params --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_params_split_across_several_params_records(mode: str) -> None:
    block = encode_pairs(PARAMS)
    cuts = [0, 1, 5, 17, len(block) // 2, len(block) - 1, len(block)]
    data = encode_begin(1)
    for start, end in itertools.pairwise(cuts):
        data += record(RecordType.PARAMS, 1, block[start:end])  # one name-value pair spans several records
    data += record(RecordType.PARAMS, 1) + encode_stdin(1, BODY)
    events = feed(ServerConnection(limits()), data, mode)
    assert events == [RequestHead(1, PARAMS, True), BodyData(1, BODY), RequestComplete(1)]


@pytest.mark.parametrize("mode", MODES)
def test_params_stream_longer_than_one_record(mode: str) -> None:
    params = {"HUGE": "v" * 70_000, "SMALL": "s"}
    conn = ServerConnection(limits(max_params_size=100_000))
    events = feed(conn, encode_request(1, params), mode)
    assert events == [RequestHead(1, params, True), RequestComplete(1)]


@pytest.mark.parametrize("mode", MODES)
def test_one_and_four_byte_name_value_lengths(mode: str) -> None:
    long_name = "N" * 130
    long_value = "v" * 200
    block = (
        bytes([5]) + struct.pack(">I", 0x80000000 | 200) + b"SHORT" + long_value.encode()  # 1-byte name, 4-byte value
        + struct.pack(">I", 0x80000000 | 130) + bytes([1]) + long_name.encode() + b"x"  # 4-byte name, 1-byte value
        + struct.pack(">I", 0x80000000 | 130) + struct.pack(">I", 0x80000000 | 200)  # both long
        + ("M" * 130).encode() + long_value.encode()
        + bytes([127, 0]) + b"L" * 127  # the longest 1-byte length, and an empty value
    )  # fmt: skip
    data = encode_begin(1) + record(RecordType.PARAMS, 1, block) + record(RecordType.PARAMS, 1) + encode_stdin(1, b"")
    events = feed(ServerConnection(limits()), data, mode)
    expected = {"SHORT": long_value, long_name: "x", "M" * 130: long_value, "L" * 127: ""}
    assert events == [RequestHead(1, expected, True), RequestComplete(1)]


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x00\x00\x80"),
        (130, b"\x80\x00\x00\x82"),
        (200, b"\x80\x00\x00\xc8"),
        (70_000, b"\x80\x01\x11\x70"),
    ],
)
def test_name_length_uses_four_bytes_above_127(length: int, encoded: bytes) -> None:
    block = encode_pairs({"n" * length: "v"})
    assert block == encoded + b"\x01" + b"n" * length + b"v"
    assert decode_pairs(block, 1) == [("n" * length, "v")]


def test_encode_pairs_keeps_latin1_bytes_one_to_one() -> None:
    block = encode_pairs([("PATH_INFO", "/caf\xe9\xff")])
    assert block == b"\x09\x06PATH_INFO/caf\xe9\xff"
    assert decode_pairs(block, 1) == [("PATH_INFO", "/caf\xe9\xff")]


@pytest.mark.parametrize("mode", MODES)
def test_repeated_params_are_merged_like_cgi_headers(mode: str) -> None:
    pairs = [
        ("HTTP_X_FORWARDED_FOR", "10.0.0.1"),
        ("HTTP_COOKIE", "a=1"),
        ("SCRIPT_NAME", "/first"),
        ("HTTP_X_FORWARDED_FOR", "10.0.0.2"),
        ("HTTP_COOKIE", "b=2"),
        ("SCRIPT_NAME", "/second"),
        ("HTTP_X_FORWARDED_FOR", "10.0.0.3"),
    ]
    events = feed(ServerConnection(limits()), encode_request(1, pairs), mode)
    expected = {
        "HTTP_X_FORWARDED_FOR": "10.0.0.1, 10.0.0.2, 10.0.0.3",
        "HTTP_COOKIE": "a=1; b=2",
        "SCRIPT_NAME": "/second",
    }
    assert events == [RequestHead(1, expected, True), RequestComplete(1)]


# -- padding -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("padding", [1, 7, 255])
def test_padding_bytes_are_skipped(mode: str, padding: int) -> None:
    data = (
        padded_record(RecordType.BEGIN_REQUEST, 1, begin_body(), padding)
        + padded_record(RecordType.PARAMS, 1, encode_pairs(PARAMS), padding)
        + padded_record(RecordType.PARAMS, 1, b"", padding)
        + padded_record(RecordType.STDIN, 1, BODY, padding, filler=b"\x01")  # filler that looks like a header
        + padded_record(RecordType.STDIN, 1, b"", padding)
    )
    events = feed(ServerConnection(limits()), data, mode)
    assert events == [RequestHead(1, PARAMS, True), BodyData(1, BODY), RequestComplete(1)]


def test_record_is_not_handled_before_its_padding_arrived() -> None:
    conn = ServerConnection(limits())
    conn.receive_data(encode_begin(1))
    params = padded_record(RecordType.PARAMS, 1, b"", 4)
    assert conn.receive_data(params[:-1]) == []
    assert conn.receive_data(params[-1:]) == [RequestHead(1, {}, True)]


def test_stdin_content_is_passed_on_as_it_arrives_and_its_padding_skipped() -> None:
    conn = ServerConnection(limits())
    conn.receive_data(head_of(1, {}))
    stdin = padded_record(RecordType.STDIN, 1, b"abcdefgh", 5) + encode_stdin(1, b"")
    assert conn.receive_data(stdin[:11]) == [BodyData(1, b"abc")]
    assert conn.receive_data(stdin[11:16]) == [BodyData(1, b"defgh")]
    assert conn.input_pending
    assert conn.receive_data(stdin[16:20]) == []  # padding
    assert conn.receive_data(stdin[20:]) == [RequestComplete(1)]
    assert not conn.input_pending


def test_streamed_stdin_is_a_view_of_the_input_not_a_copy() -> None:
    conn = ServerConnection(limits())
    conn.receive_data(head_of(1, {}))
    stdin = encode_stdin(1, b"x" * 40_000, end=False)
    first, second = stdin[:30_000], stdin[30_000:]
    (piece,) = conn.receive_data(first)
    assert isinstance(piece, BodyData)
    assert isinstance(piece.data, memoryview)
    assert piece.data.obj is first
    (rest,) = conn.receive_data(second)
    assert isinstance(rest, BodyData)
    assert isinstance(rest.data, memoryview)
    assert rest.data.obj is second
    assert bytes(piece.data) + rest.data == b"x" * 40_000


def test_end_of_input_inside_a_streamed_stdin_record_names_the_request() -> None:
    conn = ServerConnection(limits())
    conn.receive_data(head_of(9, {}) + encode_stdin(9, b"abcdef", end=False)[:-2])
    with pytest.raises(RemoteProtocolError, match=r"inside a STDIN record of request 9 \(\d+ bytes pending\)"):
        conn.receive_data(b"")


# -- refused requests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", [Role.AUTHORIZER, Role.FILTER, 0, 99])
def test_unknown_role_is_refused_with_unknown_role(mode: str, role: int) -> None:
    conn = ServerConnection(limits())
    events = feed(conn, encode_request(5, PARAMS, BODY, role=role), mode)
    assert events == []  # its PARAMS and STDIN are dropped
    assert decode_output(conn.data_to_send()) == [EndRequest(5, 0, ProtocolStatus.UNKNOWN_ROLE)]
    assert conn.data_to_send() == b""
    assert not conn.is_active(5)
    with pytest.raises(LocalProtocolError, match="not active"):
        conn.end_request(5)


@pytest.mark.parametrize("mode", MODES)
def test_requests_beyond_the_per_connection_limit_are_overloaded(mode: str) -> None:
    conn = ServerConnection(limits(max_requests_per_connection=2))
    data = encode_request(1, {"N": "1"}) + encode_request(2, {"N": "2"}) + encode_request(3, {"N": "3"}, BODY)
    events = feed(conn, data, mode)
    assert events == [
        RequestHead(1, {"N": "1"}, True),
        RequestComplete(1),
        RequestHead(2, {"N": "2"}, True),
        RequestComplete(2),
    ]
    assert decode_output(conn.data_to_send()) == [EndRequest(3, 0, ProtocolStatus.OVERLOADED)]
    assert conn.active_requests == 2
    assert not conn.is_active(3)


def test_a_slot_freed_by_end_request_accepts_a_new_request() -> None:
    conn = ServerConnection(limits(max_requests_per_connection=1))
    conn.receive_data(encode_request(1, {}))
    conn.end_request(1)
    assert conn.receive_data(encode_request(2, {})) == [RequestHead(2, {}, True), RequestComplete(2)]
    assert conn.data_to_send() == b""


# -- abort and ended requests --------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_abort_of_an_active_request_is_reported(mode: str) -> None:
    conn = ServerConnection(limits())
    data = head_of(1, PARAMS) + encode_stdin(1, b"hello", end=False) + encode_abort(1)
    events = feed(conn, data, mode)
    assert events == [RequestHead(1, PARAMS, True), BodyData(1, b"hello"), RequestAborted(1)]
    assert conn.is_active(1)  # the application still owes END_REQUEST
    assert decode_output(conn.end_request(1)) == [Stdout(1, b""), EndRequest(1, 0, ProtocolStatus.REQUEST_COMPLETE)]


@pytest.mark.parametrize("mode", MODES)
def test_abort_while_params_arrive_is_answered_by_the_codec(mode: str) -> None:
    """The application never heard of the request: the codec ends it itself, and the slot is free again."""
    conn = ServerConnection(limits())
    partial_params = encode_params(4, PARAMS)[:-8]  # the params stream without its empty end record
    events = feed(conn, encode_begin(4) + partial_params + encode_abort(4), mode)
    assert events == []
    assert not conn.is_active(4)
    assert conn.buffered == (len(NEXT_PREFIX) if mode == "trailing" else 0)
    assert decode_output(conn.data_to_send()) == [EndRequest(4, 0, ProtocolStatus.REQUEST_COMPLETE)]
    assert not conn.head_pending or mode == "trailing"


def _phase_after(conn: ServerConnection, data: bytes) -> str | None:
    conn.receive_data(data)
    return conn.phase(1)


@pytest.mark.parametrize(
    ("stage", "data", "phase"),
    [
        ("params", encode_begin(1) + encode_params(1, PARAMS)[:-8], "receiving params"),
        ("body", encode_begin(1) + encode_params(1, PARAMS) + encode_stdin(1, b"hel", end=False), "receiving the body"),
        ("complete", encode_request(1, PARAMS, BODY), "input complete, awaiting the response"),
        (
            "refused",
            encode_begin(1) + encode_params(1, {**PARAMS, "CONTENT_LENGTH": str(1 << 31)}),
            "dropping a refused body",
        ),
    ],
)
def test_abort_in_every_phase_gets_exactly_one_end_request(stage: str, data: bytes, phase: str) -> None:
    """Whatever phase an id is in, ABORT_REQUEST leads to one END_REQUEST for it: from the codec (params) or
    from the application after one RequestAborted (every later phase); a second abort changes nothing."""
    conn = ServerConnection(limits())
    assert _phase_after(conn, data) == phase
    events = conn.receive_data(encode_abort(1) + encode_abort(1))
    if stage == "params":
        assert events == []
        assert decode_output(conn.data_to_send()) == [EndRequest(1, 0, ProtocolStatus.REQUEST_COMPLETE)]
        assert not conn.is_active(1)
        return
    assert events == [RequestAborted(1)]
    assert conn.phase(1) == "aborted by the web server, awaiting END_REQUEST"
    assert conn.receive_data(encode_stdin(1, b"more")) == []  # input for an aborted request is moot
    assert not conn.input_pending
    assert decode_output(conn.end_request(1)) == [Stdout(1, b""), EndRequest(1, 0, ProtocolStatus.REQUEST_COMPLETE)]


def test_buffered_counts_the_params_of_every_incomplete_request_and_a_cut_record() -> None:
    conn = ServerConnection(limits())
    block = encode_params(1, PARAMS)[:-8]
    conn.receive_data(encode_begin(1) + block + encode_begin(2) + encode_params(2, PARAMS)[:-8])
    one = len(block) - 8  # the record's content, without its header
    assert conn.buffered == 2 * one
    conn.receive_data(encode_params(1, {}) + b"\x01")  # request 1's params end; a record starts
    assert conn.buffered == one + 1
    conn.receive_data(encode_abort(2)[1:])
    assert conn.buffered == 0


@pytest.mark.parametrize("mode", MODES)
def test_stdin_beyond_content_length_never_reaches_the_application(mode: str) -> None:
    conn = ServerConnection(limits())
    data = head_of(1, {**PARAMS, "CONTENT_LENGTH": "3"}) + encode_stdin(1, b"abc" + b"x" * 18, end=False)
    data += encode_stdin(1, b"more")
    events = feed(conn, data, mode)
    body = b"".join(bytes(event.data) for event in events if isinstance(event, BodyData))
    assert body == b"abc"
    assert [event for event in events if not isinstance(event, BodyData | RequestHead)] == [
        BodyBeyondLength(1, 3),
        RequestComplete(1),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_stdin_shorter_than_content_length_is_not_a_complete_request(mode: str) -> None:
    conn = ServerConnection(limits())
    events = feed(conn, encode_request(1, {**PARAMS, "CONTENT_LENGTH": "30"}, BODY), mode)
    assert events[-1] == BodyIncomplete(1, 30, len(BODY))
    assert not any(isinstance(event, RequestComplete) for event in events)
    assert conn.phase(1) == "input complete, awaiting the response"
    assert conn.input_pending is (mode == "trailing")  # only the next request's cut record is still owed


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("request_id", [2, 300, 0xFFFF])
def test_abort_of_an_unknown_request_is_ignored(mode: str, request_id: int) -> None:
    conn = ServerConnection(limits())
    conn.receive_data(encode_request(1, {}))
    assert feed(conn, encode_abort(request_id), mode) == []
    assert conn.data_to_send() == b""
    assert conn.active_requests == 1


@pytest.mark.parametrize("mode", MODES)
def test_records_for_an_ended_request_are_ignored(mode: str) -> None:
    conn = ServerConnection(limits())
    conn.receive_data(head_of(1, PARAMS) + encode_stdin(1, b"part", end=False))
    conn.end_request(1)
    late = (
        encode_stdin(1, b"rest of the body")
        + record(RecordType.PARAMS, 1, encode_pairs({"A": "b"}))
        + encode_abort(1)
        + record(RecordType.DATA, 1, b"filter data")
    )
    assert feed(conn, late, mode) == []
    assert conn.data_to_send() == b""
    assert not conn.is_active(1)


@pytest.mark.parametrize("mode", MODES)
def test_request_id_can_be_reused_after_end_request(mode: str) -> None:
    conn = ServerConnection(limits())
    conn.receive_data(encode_request(1, {"N": "first"}))
    conn.end_request(1)
    events = feed(conn, encode_request(1, {"N": "second"}, b"x"), mode)
    assert events == [RequestHead(1, {"N": "second"}, True), BodyData(1, b"x"), RequestComplete(1)]


@pytest.mark.parametrize("mode", MODES)
def test_data_records_are_ignored(mode: str) -> None:
    data = (
        head_of(1, {}) + record(RecordType.DATA, 1, b"filter file") + record(RecordType.DATA, 1) + encode_stdin(1, b"")
    )
    assert feed(ServerConnection(limits()), data, mode) == [RequestHead(1, {}, True), RequestComplete(1)]


@pytest.mark.parametrize("mode", MODES)
def test_stdin_after_the_end_of_the_body_is_ignored(mode: str) -> None:
    data = encode_request(1, {}, b"body") + encode_stdin(1, b"extra")
    events = feed(ServerConnection(limits()), data, mode)
    assert events == [RequestHead(1, {}, True), BodyData(1, b"body"), RequestComplete(1)]


# -- management records --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_get_values_reports_multiplexing_and_limits(mode: str) -> None:
    conn = ServerConnection(limits(max_connections=7, max_requests_per_connection=5))
    query = encode_get_values([FCGI_MPXS_CONNS, FCGI_MAX_CONNS, FCGI_MAX_REQS, "FCGI_UNHEARD_OF"])
    assert feed(conn, query, mode) == []
    assert decode_output(conn.data_to_send()) == [
        GetValuesResult({FCGI_MPXS_CONNS: "1", FCGI_MAX_CONNS: "7", FCGI_MAX_REQS: "35"})
    ]
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("mode", MODES)
def test_get_values_with_only_unknown_names_gets_an_empty_result(mode: str) -> None:
    conn = ServerConnection(limits())
    assert feed(conn, encode_get_values(["NOPE"]), mode) == []
    output = conn.data_to_send()
    assert output == record(RecordType.GET_VALUES_RESULT, 0)
    assert decode_output(output) == [GetValuesResult({})]


def test_oversized_get_values_is_an_error() -> None:
    conn = ServerConnection(limits())
    with pytest.raises(RemoteProtocolError, match="GET_VALUES block of 5000 bytes"):
        conn.receive_data(record(RecordType.GET_VALUES, 0, encode_pairs({"X" * 4995: ""})))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("record_type", [42, 12, 255])
def test_unknown_management_record_type_is_answered_with_unknown_type(mode: str, record_type: int) -> None:
    conn = ServerConnection(limits())
    assert feed(conn, record(record_type, 0, b"whatever"), mode) == []
    output = conn.data_to_send()
    assert decode_output(output) == [UnknownType(record_type)]
    assert output == record(RecordType.UNKNOWN_TYPE, 0, bytes([record_type]) + bytes(7))


# -- multiplexing --------------------------------------------------------------------------------------------------
def records_of(request_id: int, params: dict[str, str], body_parts: list[bytes]) -> list[bytes]:
    block = encode_pairs(params)
    middle = len(block) // 2
    parts = [
        encode_begin(request_id),
        record(RecordType.PARAMS, request_id, block[:middle]),
        record(RecordType.PARAMS, request_id, block[middle:]),
        record(RecordType.PARAMS, request_id),
    ]
    parts += [record(RecordType.STDIN, request_id, part) for part in body_parts]
    parts.append(record(RecordType.STDIN, request_id))
    return parts


@pytest.mark.parametrize("mode", MODES)
def test_interleaved_requests_each_get_their_own_events(mode: str) -> None:
    requests = {
        1: ({"SCRIPT_NAME": "/one", "CONTENT_LENGTH": "3"}, [b"a", b"bc"]),
        2: ({"SCRIPT_NAME": "/two"}, []),
        0x1234: ({"SCRIPT_NAME": "/three", "HTTP_HOST": "example.org"}, [b"x" * 1000, b"y", b"z" * 10]),
    }
    streams = {request_id: records_of(request_id, *request) for request_id, request in requests.items()}
    interleaved = b""
    for position in range(max(len(parts) for parts in streams.values())):
        for parts in streams.values():
            if position < len(parts):
                interleaved += parts[position]
    conn = ServerConnection(limits())
    events = feed(conn, interleaved, mode)
    for request_id, (params, body_parts) in requests.items():
        expected: list[ServerEvent] = [RequestHead(request_id, params, True)]
        expected += [BodyData(request_id, part) for part in body_parts]
        expected.append(RequestComplete(request_id))
        assert events_for(events, request_id) == expected
    assert len(events) == sum(len(body_parts) + 2 for _, body_parts in requests.values())
    assert conn.active_requests == 3


def test_responses_of_interleaved_requests_are_independent() -> None:
    conn = ServerConnection(limits())
    conn.receive_data(encode_request(1, {}) + encode_request(2, {}))
    output = conn.send_stdout(2, b"two") + conn.send_stdout(1, b"one") + conn.end_request(2) + conn.end_request(1)
    assert decode_output(output) == [
        Stdout(2, b"two"),
        Stdout(1, b"one"),
        Stdout(2, b""),
        EndRequest(2, 0, ProtocolStatus.REQUEST_COMPLETE),
        Stdout(1, b""),
        EndRequest(1, 0, ProtocolStatus.REQUEST_COMPLETE),
    ]
    assert conn.active_requests == 0


# -- output --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "record_sizes"),
    [
        (1, [1]),
        (65_535, [65_535]),
        (65_536, [65_535, 1]),
        (2 * 65_535 + 10, [65_535, 65_535, 10]),
        (3 * 65_535, [65_535] * 3),
    ],
)
def test_send_stdout_splits_data_into_records_of_at_most_65535_bytes(size: int, record_sizes: list[int]) -> None:
    conn = ServerConnection(limits())
    conn.receive_data(encode_request(9, {}))
    assert MAX_CONTENT == 65_535  # the content length is a u16
    data = bytes(index % 251 for index in range(size))
    events = decode_output(conn.send_stdout(9, data))
    assert all(isinstance(event, Stdout) and event.request_id == 9 for event in events)
    assert [len(event.data) for event in events if isinstance(event, Stdout)] == record_sizes
    assert b"".join(event.data for event in events if isinstance(event, Stdout)) == data


@pytest.mark.parametrize("size", [1, 65_535, 65_536, 200_000])
def test_send_stdout_pieces_are_the_same_records_with_the_data_not_copied(size: int) -> None:
    conn = ServerConnection(limits())
    conn.receive_data(encode_request(9, {}))
    data = bytes(index % 251 for index in range(size))
    pieces = conn.send_stdout_pieces(9, data)
    assert b"".join(pieces) == conn.send_stdout(9, data)
    contents = pieces[1::2]
    assert all(piece is data or (isinstance(piece, memoryview) and piece.obj is data) for piece in contents)
    with pytest.raises(LocalProtocolError, match="STDOUT for request 8, which is not active"):
        conn.send_stdout_pieces(8, data)


def test_send_stdout_of_nothing_sends_no_record() -> None:
    # An empty STDOUT record would end the stream before the response does.
    conn = ServerConnection(limits())
    conn.receive_data(encode_request(1, {}))
    assert conn.send_stdout(1, b"") == b""


@pytest.mark.parametrize(("app_status", "on_the_wire"), [(0, 0), (3, 3), (255, 255), (-1, 0xFFFFFFFF)])
def test_end_request_closes_stdout_then_ends_the_request(app_status: int, on_the_wire: int) -> None:
    conn = ServerConnection(limits())
    conn.receive_data(encode_request(2, {}))
    output = conn.end_request(2, app_status)
    assert decode_output(output) == [Stdout(2, b""), EndRequest(2, on_the_wire, ProtocolStatus.REQUEST_COMPLETE)]
    assert output.startswith(record(RecordType.STDOUT, 2))
    assert not conn.is_active(2)
    with pytest.raises(LocalProtocolError, match="STDOUT for request 2, which is not active"):
        conn.send_stdout(2, b"late")
    with pytest.raises(LocalProtocolError, match="END_REQUEST for request 2, which is not active"):
        conn.end_request(2)


@pytest.mark.parametrize("request_id", [2, 0, 0xFFFF])
def test_output_for_a_request_that_never_began_is_a_local_error(request_id: int) -> None:
    conn = ServerConnection(limits())
    conn.receive_data(encode_begin(1))
    assert decode_output(conn.send_stdout(1, b"ok")) == [Stdout(1, b"ok")]  # active as soon as it began
    with pytest.raises(LocalProtocolError, match=f"STDOUT for request {request_id}, which is not active"):
        conn.send_stdout(request_id, b"x")
    with pytest.raises(LocalProtocolError, match=f"END_REQUEST for request {request_id}, which is not active"):
        conn.end_request(request_id)


# -- body size limit -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_declared_body_over_the_limit_is_refused_right_after_the_head(mode: str) -> None:
    conn = ServerConnection(limits(max_body_size=10))
    params = {"CONTENT_LENGTH": "11"}
    events = feed(conn, encode_request(1, params, b"x" * 11), mode)
    assert events == [RequestHead(1, params, True), BodyTooLarge(1, 10)]
    assert conn.is_active(1)  # the application answers it (413) and ends it


@pytest.mark.parametrize("mode", MODES)
def test_declared_body_at_the_limit_is_accepted(mode: str) -> None:
    params = {"CONTENT_LENGTH": "10"}
    events = feed(ServerConnection(limits(max_body_size=10)), encode_request(1, params, b"x" * 10), mode)
    assert events == [RequestHead(1, params, True), BodyData(1, b"x" * 10), RequestComplete(1)]


@pytest.mark.parametrize("mode", MODES)
def test_streamed_body_over_the_limit_is_refused_once(mode: str) -> None:
    conn = ServerConnection(limits(max_body_size=10))
    data = head_of(1, {}) + b"".join(encode_stdin(1, b"abcdef", end=False) for _ in range(4)) + encode_stdin(1, b"")
    events = feed(conn, data, mode)
    # Whole records: the record that crosses the limit is refused whole. Fed a byte at a time, every byte up to
    # the limit was already passed on when the eleventh crossed it.
    passed = b"abcdefabcd" if mode == "bytewise" else b"abcdef"
    assert events == [RequestHead(1, {}, True), BodyData(1, passed), BodyTooLarge(1, 10)]


@pytest.mark.parametrize("mode", MODES)
def test_streamed_body_exactly_at_the_limit_is_accepted(mode: str) -> None:
    data = head_of(1, {}) + encode_stdin(1, b"abcde", end=False) + encode_stdin(1, b"fghij")
    events = feed(ServerConnection(limits(max_body_size=10)), data, mode)
    expected: list[ServerEvent] = [
        RequestHead(1, {}, True),
        BodyData(1, b"abcde"),
        BodyData(1, b"fghij"),
        RequestComplete(1),
    ]
    assert events == as_fed(mode, expected)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("value", ["abc", "-1", "+5", "1.5", " 12", "12 ", "1e3", "0x10", "\xb2"])
def test_non_numeric_content_length_is_an_error(mode: str, value: str) -> None:
    with pytest.raises(RemoteProtocolError, match=r"CONTENT_LENGTH .* is not a decimal number"):
        feed(ServerConnection(limits()), encode_request(1, {"CONTENT_LENGTH": value}), mode)


@pytest.mark.parametrize("mode", MODES)
def test_empty_content_length_means_no_declared_length(mode: str) -> None:
    params = {"CONTENT_LENGTH": ""}
    events = feed(ServerConnection(limits(max_body_size=1)), encode_request(1, params, b"x"), mode)
    assert events == [RequestHead(1, params, True), BodyData(1, b"x"), RequestComplete(1)]


# -- protocol errors -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("version", [0, 2, 255])
def test_record_version_other_than_1_is_an_error(mode: str, version: int) -> None:
    data = bytes([version]) + encode_begin(1)[1:]
    with pytest.raises(RemoteProtocolError, match=f"record version {version}, expected 1"):
        feed(ServerConnection(limits()), data, mode)


@pytest.mark.parametrize("mode", MODES)
def test_wrong_version_in_a_later_record_is_an_error(mode: str) -> None:
    stdin = encode_stdin(1, BODY)
    data = head_of(1, PARAMS) + bytes([2]) + stdin[1:]
    with pytest.raises(RemoteProtocolError, match="record version 2, expected 1"):
        feed(ServerConnection(limits()), data, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("length", [0, 7, 9, 16])
def test_begin_request_with_a_wrong_body_length_is_an_error(mode: str, length: int) -> None:
    content = (begin_body() + bytes(16))[:length]
    with pytest.raises(RemoteProtocolError, match=f"BEGIN_REQUEST body is {length} bytes, expected 8"):
        feed(ServerConnection(limits()), record(RecordType.BEGIN_REQUEST, 1, content), mode)


@pytest.mark.parametrize("mode", MODES)
def test_duplicate_begin_request_for_an_active_id_is_an_error(mode: str) -> None:
    data = head_of(3, PARAMS) + encode_begin(3)
    with pytest.raises(RemoteProtocolError, match="BEGIN_REQUEST for request id 3, which is already active"):
        feed(ServerConnection(limits()), data, mode)


@pytest.mark.parametrize("mode", MODES)
def test_params_after_the_params_stream_ended_is_an_error(mode: str) -> None:
    data = head_of(1, PARAMS) + record(RecordType.PARAMS, 1, encode_pairs({"LATE": "1"}))
    with pytest.raises(RemoteProtocolError, match="PARAMS for request 1 after its params stream ended"):
        feed(ServerConnection(limits()), data, mode)


@pytest.mark.parametrize("mode", MODES)
def test_second_params_terminator_is_an_error(mode: str) -> None:
    data = head_of(1, PARAMS) + record(RecordType.PARAMS, 1)
    with pytest.raises(RemoteProtocolError, match="after its params stream ended"):
        feed(ServerConnection(limits()), data, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stdin", [encode_stdin(1, BODY), encode_stdin(1, b"")])
def test_stdin_before_the_params_ended_is_an_error(mode: str, stdin: bytes) -> None:
    data = encode_begin(1) + record(RecordType.PARAMS, 1, encode_pairs(PARAMS)) + stdin
    with pytest.raises(RemoteProtocolError, match="STDIN for request 1 before its params stream ended"):
        feed(ServerConnection(limits()), data, mode)


@pytest.mark.parametrize("mode", MODES)
def test_params_over_the_size_limit_are_an_error(mode: str) -> None:
    block = encode_pairs({"NAME": "v" * 95})  # 101 bytes
    data = encode_begin(1) + record(RecordType.PARAMS, 1, block[:60]) + record(RecordType.PARAMS, 1, block[60:])
    with pytest.raises(RemoteProtocolError, match="params of request 1 exceed 100 bytes"):
        feed(ServerConnection(limits(max_params_size=100)), data, mode)


@pytest.mark.parametrize("mode", MODES)
def test_params_exactly_at_the_size_limit_are_accepted(mode: str) -> None:
    params = {"NAME": "v" * 94}
    assert len(encode_pairs(params)) == 100
    events = feed(ServerConnection(limits(max_params_size=100)), encode_request(1, params), mode)
    assert events == [RequestHead(1, params, True), RequestComplete(1)]


@pytest.mark.parametrize("mode", MODES)
def test_more_params_than_the_limit_is_an_error(mode: str) -> None:
    params = {f"P{index}": str(index) for index in range(4)}
    with pytest.raises(RemoteProtocolError, match="more than 3 params"):
        feed(ServerConnection(limits(max_params=3)), encode_request(1, params), mode)


@pytest.mark.parametrize("mode", MODES)
def test_params_exactly_at_the_count_limit_are_accepted(mode: str) -> None:
    params = {f"P{index}": str(index) for index in range(3)}
    events = feed(ServerConnection(limits(max_params=3)), encode_request(1, params), mode)
    assert events == [RequestHead(1, params, True), RequestComplete(1)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("block", "message"),
    [
        (b"\x04", "ends inside a name-value length"),
        (b"\x04\x80\x00", "ends inside a four-byte name-value length"),
        (b"\x80\x00\x00", "ends inside a four-byte name-value length"),
        (b"\x04\x05NAMEval", r"claims 4\+5 bytes but the params block has 7 left"),
        (b"\x80\x00\x01\x00\x01" + b"N" * 255, r"claims 256\+1 bytes but the params block has 255 left"),
        (b"\x01\x01AB\x03\x03XY", r"claims 3\+3 bytes but the params block has 2 left"),
    ],
)
def test_truncated_name_value_pair_is_an_error(mode: str, block: bytes, message: str) -> None:
    data = encode_begin(1) + record(RecordType.PARAMS, 1, block) + record(RecordType.PARAMS, 1)
    with pytest.raises(RemoteProtocolError, match=message):
        feed(ServerConnection(limits()), data, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("record_type", "content"),
    [
        (RecordType.STDOUT, b"HTTP/1.1 200 OK\r\n"),
        (RecordType.STDOUT, b""),
        (RecordType.STDERR, b"oops"),
        (RecordType.END_REQUEST, struct.pack(">IB3x", 0, 0)),
        (RecordType.GET_VALUES_RESULT, b""),
        (RecordType.UNKNOWN_TYPE, bytes(8)),
    ],
)
def test_records_that_only_flow_to_the_web_server_are_an_error(mode: str, record_type: int, content: bytes) -> None:
    data = head_of(1, PARAMS) + record(record_type, 1, content)
    name = RecordType(record_type).name
    with pytest.raises(RemoteProtocolError, match=f"{name} record sent to the application"):
        feed(ServerConnection(limits()), data, mode)


# -- after an error ------------------------------------------------------------------------------------------------
#: (what breaks the protocol, what the error says): each is followed by a valid request in the same read.
BROKEN = [
    (bytes([2]) + encode_begin(1)[1:], "record version 2"),
    (head_of(3, PARAMS) + encode_begin(3), "already active"),
    (record(RecordType.BEGIN_REQUEST, 1, b"short"), "BEGIN_REQUEST body is 5 bytes"),
    (head_of(1, PARAMS) + record(RecordType.STDOUT, 1, b"x"), "STDOUT record sent to the application"),
    (encode_begin(1) + record(RecordType.PARAMS, 1, b"\x04") + record(RecordType.PARAMS, 1), "ends inside"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("broken", "message"), BROKEN)
def test_after_a_remote_error_every_call_raises(mode: str, broken: bytes, message: str) -> None:
    conn = ServerConnection(limits())
    with pytest.raises(RemoteProtocolError, match=message) as raised:
        feed(conn, broken + encode_request(NEXT_ID, NEXT_PARAMS), mode)
    assert_failed_for_good(conn, str(raised.value))


def test_a_valid_request_after_an_error_is_refused_in_a_read_of_its_own() -> None:
    conn = ServerConnection(limits())
    assert conn.receive_data(head_of(1, PARAMS)) == [RequestHead(1, PARAMS, True)]
    with pytest.raises(RemoteProtocolError, match="record version 0"):
        conn.receive_data(bytes(8))
    with pytest.raises(RemoteProtocolError, match=r"already failed \(record version 0, expected 1\)"):
        conn.receive_data(encode_request(2, {"A": "b"}))
    with pytest.raises(LocalProtocolError, match="already failed"):
        conn.end_request(1)  # active before the error: no request survives it


@pytest.mark.parametrize(
    "data",
    [encode_begin(1)[:3], encode_begin(1)[:12], head_of(1, {}) + encode_stdin(1, b"abcdefgh", end=False)[:12]],
    ids=["in a header", "in a buffered record", "in a streamed STDIN record"],
)
def test_end_of_input_inside_a_record_fails_the_connection_for_good(data: bytes) -> None:
    conn = ServerConnection(limits())
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError, match="connection closed inside") as raised:
        conn.receive_data(b"")
    assert_failed_for_good(conn, str(raised.value))


def test_data_after_end_of_input_fails_the_connection_for_good() -> None:
    conn = ServerConnection(limits())
    assert conn.receive_data(b"") == []
    with pytest.raises(RemoteProtocolError, match="data after the end of the connection") as raised:
        conn.receive_data(encode_request(1, {}))
    assert_failed_for_good(conn, str(raised.value))


# -- end of input --------------------------------------------------------------------------------------------------
REQUEST = encode_request(1, PARAMS, BODY)
RECORD_BOUNDARIES = [16, 16 + 8 + len(encode_pairs(PARAMS)), len(REQUEST) - 8]


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize("cut", [1, 7, 8, 12, 15, 17, RECORD_BOUNDARIES[1] - 1, len(REQUEST) - 1])
def test_end_of_input_inside_a_record_is_an_error(mode: str, cut: int) -> None:
    # The "trailing" mode is this very case: a complete request and the first bytes of the next one.
    conn = ServerConnection(limits())
    feed(conn, REQUEST[:cut], mode)
    with pytest.raises(RemoteProtocolError, match=r"connection closed inside a record \(\d+ bytes pending\)"):
        conn.receive_data(b"")


def test_end_of_input_after_a_complete_request_and_part_of_the_next_is_an_error() -> None:
    conn = ServerConnection(limits())
    assert conn.receive_data(REQUEST + NEXT_PREFIX) == [
        RequestHead(1, PARAMS, True),
        BodyData(1, BODY),
        RequestComplete(1),
    ]
    with pytest.raises(RemoteProtocolError, match=f"{len(NEXT_PREFIX)} bytes pending"):
        conn.receive_data(b"")


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
@pytest.mark.parametrize("cut", [*RECORD_BOUNDARIES, len(REQUEST)])
def test_end_of_input_between_records_is_clean(mode: str, cut: int) -> None:
    conn = ServerConnection(limits())
    feed(conn, REQUEST[:cut], mode)
    assert conn.receive_data(b"") == []
    assert conn.receive_data(b"") == []


@pytest.mark.parametrize("mode", ["whole", "bytewise"])
def test_data_after_end_of_input_is_an_error(mode: str) -> None:
    conn = ServerConnection(limits())
    feed(conn, REQUEST, mode)
    assert conn.receive_data(b"") == []
    with pytest.raises(RemoteProtocolError, match="data after the end of the connection"):
        conn.receive_data(encode_abort(1))


def test_end_of_input_on_a_fresh_connection_is_clean() -> None:
    conn = ServerConnection(limits())
    assert conn.receive_data(b"") == []
    with pytest.raises(RemoteProtocolError, match="data after the end of the connection"):
        conn.receive_data(b"\x01")


# -- properties ----------------------------------------------------------------------------------------------------
#: Names that merge_params leaves alone (no HTTP_ joining) and that do not declare a body length.
param_names = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=255), min_size=1, max_size=300).filter(
    lambda name: not name.startswith("HTTP_") and name != "CONTENT_LENGTH"
)
latin1_text = st.characters(min_codepoint=0, max_codepoint=255)


def repeated_text(unit: str, size: int) -> str:
    """``unit`` repeated to exactly ``size`` characters: Hypothesis cannot draw values this large directly."""
    return (unit * (size // len(unit) + 1))[:size]


def repeated_bytes(unit: bytes, size: int) -> bytes:
    return (unit * (size // len(unit) + 1))[:size]


#: Values over 65535 bytes span several PARAMS records and use the four-byte length.
param_values = st.one_of(
    st.text(alphabet=latin1_text, max_size=300),
    st.builds(repeated_text, st.text(alphabet=latin1_text, min_size=1, max_size=20), st.integers(60_000, 70_000)),
)
bodies = st.one_of(
    st.binary(max_size=200_000),
    st.builds(repeated_bytes, st.binary(min_size=1, max_size=50), st.integers(MAX_CONTENT - 10, 200_000)),
)
params_dicts = st.dictionaries(param_names, param_values, max_size=12).filter(
    lambda params: sum(len(value) for value in params.values()) < 300_000
)


def split_points(data: st.DataObject, size: int) -> list[int]:
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=size), max_size=30))
    return sorted(cuts)


def feed_in_chunks(conn: ServerConnection, payload: bytes, cuts: list[int]) -> list[ServerEvent]:
    events: list[ServerEvent] = []
    for start, end in zip([0, *cuts], [*cuts, len(payload)], strict=True):
        if end > start:
            events += conn.receive_data(payload[start:end])
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(params=params_dicts, body=bodies, request_id=st.integers(1, 0xFFFF), data=st.data())
def test_request_round_trips_through_any_chunking(
    params: dict[str, str], body: bytes, request_id: int, data: st.DataObject
) -> None:
    params = {**params, "CONTENT_LENGTH": str(len(body))}
    payload = encode_request(request_id, params, body)
    conn = ServerConnection(limits(max_params_size=1 << 24))
    events = feed_in_chunks(conn, payload, split_points(data, len(payload)))
    assert events[0] == RequestHead(request_id, params, True)
    assert events[-1] == RequestComplete(request_id)
    body_events = events[1:-1]
    assert all(isinstance(event, BodyData) and event.request_id == request_id for event in body_events)
    assert b"".join(event.data for event in body_events if isinstance(event, BodyData)) == body
    assert conn.receive_data(b"") == []


body_parts = st.lists(
    st.binary(min_size=1, max_size=3000)
    | st.builds(repeated_bytes, st.binary(min_size=1, max_size=9), st.integers(30_000, MAX_CONTENT)),
    max_size=4,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(parts_by_request=st.lists(body_parts, min_size=2, max_size=3), data=st.data())
def test_interleaved_bodies_round_trip_through_any_chunking(
    parts_by_request: list[list[bytes]], data: st.DataObject
) -> None:
    # STDIN records of several requests, interleaved and cut anywhere: the pieces streamed out of records cut by
    # a read still add up to each request's own body.
    params = {"SCRIPT_NAME": "/upload"}
    streams = [records_of(request_id, params, parts) for request_id, parts in enumerate(parts_by_request, start=1)]
    payload = b"".join(
        parts[position] for position in range(max(map(len, streams))) for parts in streams if position < len(parts)
    )
    conn = ServerConnection(limits())
    events = feed_in_chunks(conn, payload, split_points(data, len(payload)))
    for request_id, parts in enumerate(parts_by_request, start=1):
        mine = events_for(events, request_id)
        assert mine[0] == RequestHead(request_id, params, True)
        assert mine[-1] == RequestComplete(request_id)
        assert b"".join(event.data for event in mine if isinstance(event, BodyData)) == b"".join(parts)
    assert conn.receive_data(b"") == []


@CODEC_SETTINGS
@given(pairs=st.lists(st.tuples(st.text(alphabet=latin1_text, max_size=300), st.text(alphabet=latin1_text))))
def test_name_value_pairs_round_trip(pairs: list[tuple[str, str]]) -> None:
    assert decode_pairs(encode_pairs(pairs), max(len(pairs), 1)) == pairs


def assert_only_remote_errors(conn: ServerConnection, chunks: Iterable[bytes]) -> None:
    """Feeding may stop at a RemoteProtocolError, nothing else, and after one every further call raises; whatever
    the codec answered until then (collected after each read, as the gateway does) parses cleanly."""
    answered = b""
    try:
        for chunk in chunks:
            for event in conn.receive_data(chunk):
                assert event.request_id > 0
            answered += conn.data_to_send()
    except RemoteProtocolError as err:
        assert_failed_for_good(conn, str(err))
    decode_output(answered)


@CODEC_SETTINGS
@given(garbage=st.binary(max_size=2000), data=st.data())
def test_arbitrary_bytes_give_events_or_a_remote_error(garbage: bytes, data: st.DataObject) -> None:
    cuts = split_points(data, len(garbage))
    chunks = [garbage[start:end] for start, end in zip([0, *cuts], [*cuts, len(garbage)], strict=True)]
    assert_only_remote_errors(ServerConnection(limits(max_params=5, max_body_size=100)), [*chunks, b""])


record_soup = st.lists(
    st.builds(
        padded_record,
        st.integers(0, 12),
        st.sampled_from([0, 1, 2, 3]),
        st.one_of(st.binary(max_size=60), st.just(begin_body()), st.just(begin_body(flags=0))),
        st.integers(0, 3),
    ),
    max_size=30,
)


@CODEC_SETTINGS
@given(records=record_soup)
def test_arbitrary_well_framed_records_give_events_or_a_remote_error(records: list[bytes]) -> None:
    conn = ServerConnection(limits(max_params=5, max_body_size=100, max_requests_per_connection=2))
    assert_only_remote_errors(conn, [*records, b""])


VALID = encode_request(1, PARAMS, BODY) + encode_get_values([FCGI_MPXS_CONNS]) + encode_request(2, {"A": "b"}, b"xy")


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
    assert_only_remote_errors(ServerConnection(limits()), [*chunks, b""])


@CODEC_SETTINGS
@given(
    prefix=st.integers(0, len(VALID)), garbage=st.binary(min_size=1, max_size=200), data=st.data(), eof=st.booleans()
)
def test_any_input_parses_or_raises_a_remote_error_and_then_fails_for_good(
    prefix: int, garbage: bytes, data: st.DataObject, eof: bool
) -> None:
    # Garbage inside or between valid records, then whole valid requests: if the garbage broke the framing, those
    # requests must be refused too, however the stream was cut into reads.
    stream = VALID[:prefix] + garbage + VALID
    cuts = split_points(data, len(stream))
    chunks = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert_only_remote_errors(ServerConnection(limits(max_params=5, max_body_size=100)), chunks + [b""] * eof)
