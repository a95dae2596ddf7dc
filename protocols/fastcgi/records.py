"""FastCGI 1.0 record layer: the 8-byte header, record types, and name-value pairs.

Shared by the application side (``server``) and the web-server side (``client``) of the codec.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from enum import IntEnum

from gateway.protocols.errors import RemoteProtocolError

VERSION = 1

#: version, type, request id, content length, padding length, reserved.
HEADER = struct.Struct(">BBHHBx")
HEADER_SIZE = HEADER.size

#: Content length is a u16: longer streams are split into several records.
MAX_CONTENT = 0xFFFF

#: A name or value length above 127 takes four bytes with the high bit set; lengths are at most 2**31 - 1.
_LONG_LENGTH = struct.Struct(">I")
_LONG_FLAG = 0x80000000

#: BEGIN_REQUEST body: role, flags, five reserved bytes.
BEGIN_BODY = struct.Struct(">HB5x")
#: END_REQUEST body: application status, protocol status, three reserved bytes.
END_BODY = struct.Struct(">IB3x")
#: UNKNOWN_TYPE body: the type we did not understand, seven reserved bytes.
UNKNOWN_TYPE_BODY = struct.Struct(">B7x")

FCGI_KEEP_CONN = 1

#: The variable names a web server may ask for with GET_VALUES.
FCGI_MAX_CONNS = "FCGI_MAX_CONNS"
FCGI_MAX_REQS = "FCGI_MAX_REQS"
FCGI_MPXS_CONNS = "FCGI_MPXS_CONNS"


class RecordType(IntEnum):
    BEGIN_REQUEST = 1
    ABORT_REQUEST = 2
    END_REQUEST = 3
    PARAMS = 4
    STDIN = 5
    STDOUT = 6
    STDERR = 7
    DATA = 8
    GET_VALUES = 9
    GET_VALUES_RESULT = 10
    UNKNOWN_TYPE = 11


class Role(IntEnum):
    RESPONDER = 1
    AUTHORIZER = 2
    FILTER = 3


class ProtocolStatus(IntEnum):
    REQUEST_COMPLETE = 0
    CANT_MPX_CONN = 1
    OVERLOADED = 2
    UNKNOWN_ROLE = 3


_HEADER_PACK = HEADER.pack


def record(record_type: int, request_id: int, content: bytes = b"") -> bytes:
    """One record; ``content`` must fit a record (at most 65535 bytes).

    We send no padding: the specification only recommends 8-byte alignment, and every web server accepts unpadded
    records, so padding would cost bytes and a copy for nothing.
    """
    return _HEADER_PACK(VERSION, record_type, request_id, len(content), 0) + content


def stream(record_type: int, request_id: int, data: bytes) -> bytes:
    """``data`` as one or more records of a stream, without the empty terminator; nothing for empty data."""
    size = len(data)
    if size <= MAX_CONTENT:
        return _HEADER_PACK(VERSION, record_type, request_id, size, 0) + data if size else b""
    return b"".join(stream_pieces(record_type, request_id, data))


def stream_pieces(record_type: int, request_id: int, data: bytes | memoryview) -> list[bytes | memoryview]:
    """The records of ``stream`` as pieces to write in order: each header, then a view of its part of ``data``.
    Nothing is copied, so a writer that sends them vectored never copies a large response body."""
    size = len(data)
    if size <= MAX_CONTENT:
        return [_HEADER_PACK(VERSION, record_type, request_id, size, 0), data] if size else []
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    for start in range(0, size, MAX_CONTENT):
        chunk = view[start : start + MAX_CONTENT]
        parts.append(_HEADER_PACK(VERSION, record_type, request_id, len(chunk), 0))
        parts.append(chunk)
    return parts


def _encode_length(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    if length > 0x7FFFFFFF:
        raise ValueError(f"name-value length {length} exceeds the FastCGI maximum of 2**31 - 1")
    return _LONG_LENGTH.pack(length | _LONG_FLAG)


def encode_pairs(pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    """Name-value pairs, latin-1 encoded (CGI meta-variables are byte strings; latin-1 maps bytes 1:1)."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    parts = []
    for name, value in items:
        raw_name = name.encode("latin-1")
        raw_value = value.encode("latin-1")
        parts.append(_encode_length(len(raw_name)))
        parts.append(_encode_length(len(raw_value)))
        parts.append(raw_name)
        parts.append(raw_value)
    return b"".join(parts)


def decode_pairs(data: bytes | bytearray, max_pairs: int) -> list[tuple[str, str]]:
    """Parse a complete name-value pair block; raise RemoteProtocolError on truncation or too many pairs."""
    # latin-1 maps each byte to one code point, so offsets into the decoded text are offsets into ``data``: one
    # decode for the whole block, then string slices.
    text = data.decode("latin-1")
    unpack_long = _LONG_LENGTH.unpack_from
    pairs: list[tuple[str, str]] = []
    position = 0
    end = len(data)
    while position < end:
        if len(pairs) >= max_pairs:
            raise RemoteProtocolError(f"more than {max_pairs} params (raise --max-params if this is legitimate)")
        name_length = data[position]
        if name_length < 0x80:
            position += 1
        elif position + 4 <= end:
            name_length = unpack_long(data, position)[0] & ~_LONG_FLAG
            position += 4
        else:
            raise RemoteProtocolError("params block ends inside a four-byte name-value length")
        if position >= end:
            raise RemoteProtocolError("params block ends inside a name-value length")
        value_length = data[position]
        if value_length < 0x80:
            position += 1
        elif position + 4 <= end:
            value_length = unpack_long(data, position)[0] & ~_LONG_FLAG
            position += 4
        else:
            raise RemoteProtocolError("params block ends inside a four-byte name-value length")
        name_end = position + name_length
        value_end = name_end + value_length
        if value_end > end:
            raise RemoteProtocolError(
                f"name-value pair claims {name_length}+{value_length} bytes but the params block has "
                f"{end - position} left"
            )
        pairs.append((text[position:name_end], text[name_end:value_end]))
        position = value_end
    return pairs
