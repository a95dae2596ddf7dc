"""The web-server side of FastCGI: what nginx does, for our raw-socket tests and the benchmark load tool."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gateway.protocols.errors import RemoteProtocolError
from gateway.protocols.fastcgi.events import ClientEvent, EndRequest, GetValuesResult, Stderr, Stdout, UnknownType
from gateway.protocols.fastcgi.records import (
    BEGIN_BODY,
    END_BODY,
    FCGI_KEEP_CONN,
    HEADER,
    HEADER_SIZE,
    UNKNOWN_TYPE_BODY,
    VERSION,
    RecordType,
    Role,
    decode_pairs,
    encode_pairs,
    record,
    stream,
)

#: A result block is made of the names we asked for; far fewer than this.
_MAX_RESULT_PAIRS = 1000


def encode_begin(request_id: int, *, keep_conn: bool = True, role: int = Role.RESPONDER) -> bytes:
    return record(RecordType.BEGIN_REQUEST, request_id, BEGIN_BODY.pack(role, FCGI_KEEP_CONN if keep_conn else 0))


def encode_params(request_id: int, params: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """The whole PARAMS stream, terminator included."""
    return stream(RecordType.PARAMS, request_id, encode_pairs(params)) + record(RecordType.PARAMS, request_id)


def encode_stdin(request_id: int, body: bytes, *, end: bool = True) -> bytes:
    data = stream(RecordType.STDIN, request_id, body)
    return data + record(RecordType.STDIN, request_id) if end else data


def encode_request(
    request_id: int,
    params: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes = b"",
    *,
    keep_conn: bool = True,
    role: int = Role.RESPONDER,
) -> bytes:
    """A complete request as nginx sends it: BEGIN_REQUEST, PARAMS stream, STDIN stream."""
    return (
        encode_begin(request_id, keep_conn=keep_conn, role=role)
        + encode_params(request_id, params)
        + encode_stdin(request_id, body)
    )


def encode_abort(request_id: int) -> bytes:
    return record(RecordType.ABORT_REQUEST, request_id)


def encode_get_values(names: Iterable[str]) -> bytes:
    return record(RecordType.GET_VALUES, 0, encode_pairs([(name, "") for name in names]))


class ClientConnection:
    """Parses what an application sends back."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> list[ClientEvent]:
        """Feed bytes from the application; ``b""`` means it closed the connection."""
        buffer = self._buffer
        if not data:
            if buffer:
                raise RemoteProtocolError(f"connection closed inside a record ({len(buffer)} bytes pending)")
            return []
        buffer += data
        events: list[ClientEvent] = []
        position = 0
        while len(buffer) - position >= HEADER_SIZE:
            version, record_type, request_id, size, padding = HEADER.unpack_from(buffer, position)
            if version != VERSION:
                raise RemoteProtocolError(f"record version {version}, expected {VERSION}")
            end = position + HEADER_SIZE + size
            if end + padding > len(buffer):
                break
            content = bytes(buffer[position + HEADER_SIZE : end])
            position = end + padding
            events.append(_event(record_type, request_id, content))
        del buffer[:position]
        return events


def _event(record_type: int, request_id: int, content: bytes) -> ClientEvent:
    if record_type == RecordType.STDOUT:
        return Stdout(request_id, content)
    if record_type == RecordType.STDERR:
        return Stderr(request_id, content)
    if record_type == RecordType.END_REQUEST:
        if len(content) != END_BODY.size:
            raise RemoteProtocolError(f"END_REQUEST body is {len(content)} bytes, expected {END_BODY.size}")
        app_status, protocol_status = END_BODY.unpack(content)
        return EndRequest(request_id, app_status, protocol_status)
    if record_type == RecordType.GET_VALUES_RESULT:
        return GetValuesResult(dict(decode_pairs(content, _MAX_RESULT_PAIRS)))
    if record_type == RecordType.UNKNOWN_TYPE:
        if len(content) != UNKNOWN_TYPE_BODY.size:
            raise RemoteProtocolError(f"UNKNOWN_TYPE body is {len(content)} bytes, expected {UNKNOWN_TYPE_BODY.size}")
        return UnknownType(UNKNOWN_TYPE_BODY.unpack(content)[0])
    raise RemoteProtocolError(f"record type {record_type} is not one an application sends")
