"""The uwsgi binary protocol, application side: one request per connection.

A 4-byte header (modifier1, little-endian u16 size, modifier2), a vars block of ``size`` bytes made of
u16-length-prefixed keys and values, then CONTENT_LENGTH bytes of body. The response is raw HTTP ended by closing
the connection, so there is nothing to encode for it here beyond the ping's pong.

A ``RemoteProtocolError`` is terminal, as in h11: the connection enters ERROR and every later ``receive_data``
raises again, naming the first failure.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum, auto

from gateway.protocols.cgi import content_length, merge_params
from gateway.protocols.errors import RemoteProtocolError

HEADER = struct.Struct("<BHB")
HEADER_SIZE = HEADER.size
_VAR_LENGTH = struct.Struct("<H")

#: modifier1 values: a WSGI request, and uWSGI's ping (modifier2 0 asks, 1 answers).
MODIFIER_WSGI = 0
MODIFIER_PING = 100
#: modifier1 of uWSGI's subscription packet (sent over UDP to a router's subscription server); its modifier2 says
#: which way: SUBSCRIBE or UNSUBSCRIBE.
MODIFIER_SUBSCRIPTION = 224
SUBSCRIBE = 0
UNSUBSCRIBE = 1

#: The header's size field is a u16: no vars block can be larger, whatever the limit says.
MAX_VARS_BLOCK = 0xFFFF


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may make us hold. Each is a CLI option of the gateway (``max_vars_size`` is
    ``--max-params-size``, ``max_vars`` is ``--max-params``).

    No field has a default: the gateway's declared settings are the one place defaults live. A ``max_vars_size``
    above MAX_VARS_BLOCK is allowed and simply never reached.
    """

    max_vars_size: int
    max_vars: int
    max_body_size: int


@dataclass(frozen=True, slots=True)
class RequestHead:
    params: dict[str, str]
    modifier2: int


@dataclass(frozen=True, slots=True)
class BodyData:
    """Part of the body: the bytes fed to the codec, or a view of them (no copy)."""

    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class RequestComplete:
    """The whole body arrived; the request may be dispatched."""


@dataclass(frozen=True, slots=True)
class Ping:
    """A uWSGI ping (modifier1 100): answer ``encode_pong()`` and close."""


@dataclass(frozen=True, slots=True)
class BodyTooLarge:
    """CONTENT_LENGTH exceeds the limit; the body will be read and dropped."""

    limit: int


Event = RequestHead | BodyData | RequestComplete | Ping | BodyTooLarge


class _State(Enum):
    HEADER = auto()
    VARS = auto()
    BODY = auto()
    DONE = auto()
    #: A RemoteProtocolError was raised: every further call raises.
    ERROR = auto()


def decode_vars(block: bytes | bytearray, max_vars: int) -> list[tuple[str, str]]:
    """Parse a complete vars block; raise RemoteProtocolError on truncation or too many vars.

    This runs in the event loop for every request, so the loop below checks only what keeps it in bounds, once
    per pair; a block it cannot parse is parsed again by the careful version, which says what is wrong.
    """
    # latin-1 maps each byte to one code point, so offsets into the decoded text are offsets into ``block``: one
    # decode for the whole block, then string slices.
    text = block.decode("latin-1")
    pairs: list[tuple[str, str]] = []
    append = pairs.append
    position = 0
    end = len(block)
    while position < end:
        key_start = position + 2
        if key_start > end:
            return _decode_vars_checked(block, max_vars)
        key_end = key_start + (block[position] | block[position + 1] << 8)
        value_start = key_end + 2
        if value_start > end:
            return _decode_vars_checked(block, max_vars)
        position = value_start + (block[key_end] | block[key_end + 1] << 8)
        if position > end:
            return _decode_vars_checked(block, max_vars)
        append((text[key_start:key_end], text[value_start:position]))
    if len(pairs) > max_vars:
        raise _too_many_vars(max_vars)
    return pairs


def _decode_vars_checked(block: bytes | bytearray, max_vars: int) -> list[tuple[str, str]]:
    """decode_vars checking every step, to name what is wrong with a block the fast loop could not parse."""
    text = block.decode("latin-1")
    pairs: list[tuple[str, str]] = []
    position = 0
    end = len(block)
    while position < end:
        if len(pairs) >= max_vars:
            raise _too_many_vars(max_vars)
        key_start, key_end = _string_span(block, position, end, "key")
        value_start, position = _string_span(block, key_end, end, "value")
        pairs.append((text[key_start:key_end], text[value_start:position]))
    return pairs


def _too_many_vars(max_vars: int) -> RemoteProtocolError:
    return RemoteProtocolError(f"more than {max_vars} vars (raise --max-params if this is legitimate)")


def _string_span(block: bytes | bytearray, position: int, end: int, what: str) -> tuple[int, int]:
    """Where the u16-length-prefixed string at ``position`` lies: (start, stop)."""
    if position + 2 > end:
        raise RemoteProtocolError(f"vars block ends inside a {what} length")
    (length,) = _VAR_LENGTH.unpack_from(block, position)
    start = position + 2
    stop = start + length
    if stop > end:
        raise RemoteProtocolError(f"a {what} claims {length} bytes but the vars block has {end - start} left")
    return start, stop


class ServerConnection:
    """One uwsgi connection as the application sees it.

    Once ``receive_data`` raised a RemoteProtocolError the connection is in ERROR, for good: every later call
    raises RemoteProtocolError again, saying that the connection already failed and why. Nothing is sent through
    this object, so there is no output to refuse.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._state = _State.HEADER
        self._buffer = bytearray()
        self._vars_size = 0
        self._body_left = 0
        self._declared = 0
        self._discard_body = False
        #: The vars carried HTTP_CONTENT_LENGTH (a client's header) and no CONTENT_LENGTH: named when bytes
        #: follow the request, since the header never frames the body.
        self._unframed_header = ""
        #: In ERROR: the message of the error that put us there.
        self._failure = ""

    @property
    def input_pending(self) -> bool:
        """The request (header, vars or body) is not complete: the web server owes us bytes."""
        return self._state is not _State.DONE and self._state is not _State.ERROR

    @property
    def unframed_length(self) -> str:
        """The request's HTTP_CONTENT_LENGTH (at most 40 characters) when it carried no CONTENT_LENGTH, else "":
        a client's header that never frames the body, worth a log line (it points at the web server's setup)."""
        return self._unframed_header

    @property
    def buffered(self) -> int:
        """Bytes of a header and vars block cut across reads, held until they are whole (body bytes never are)."""
        return len(self._buffer)

    @property
    def head_pending(self) -> bool:
        """The header and vars block are not complete."""
        return self._state in (_State.HEADER, _State.VARS)

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the web server; ``b""`` means it closed (or half-closed) its side.

        Raises RemoteProtocolError when the web server broke the protocol or a limit; the connection is then in
        ERROR and every later call raises (see the class).
        """
        try:
            return self._receive(data)
        except RemoteProtocolError as err:
            if self._state is not _State.ERROR:
                self._state, self._failure = _State.ERROR, str(err)
                self._buffer = bytearray()
            raise

    def _receive(self, data: bytes) -> list[Event]:
        state = self._state
        if state is _State.ERROR:
            raise RemoteProtocolError(f"the connection already failed ({self._failure}); no input is accepted")
        if not data:
            if state is _State.DONE or (state is _State.HEADER and not self._buffer):
                return []
            raise RemoteProtocolError(f"connection closed before the request was complete (in {state.name})")
        if state is _State.BODY:
            return self._body(data, [])
        if state is _State.DONE:
            raise self._beyond(f"{len(data)} bytes after the end of the request")
        # A header and vars block that arrive in one read (the common case) are parsed straight out of it, and
        # the body bytes behind them are passed on as a view; only a head cut across reads is buffered.
        buffer = self._buffer
        source: bytes | bytearray = data
        if buffer:
            buffer += data
            source = buffer
        events: list[Event] = []
        if self._state is _State.HEADER:
            if len(source) < HEADER_SIZE:
                if source is data:
                    buffer += data
                return events
            modifier1, size, modifier2 = HEADER.unpack_from(source)
            if modifier1 == MODIFIER_PING:
                if size or len(source) > HEADER_SIZE:
                    raise RemoteProtocolError("a ping carries no payload and ends the conversation")
                self._state = _State.DONE
                events.append(Ping())
                return events
            if modifier1 != MODIFIER_WSGI:
                raise RemoteProtocolError(
                    f"modifier1 {modifier1} is not served: only 0 (WSGI) and 100 (ping); "
                    "check uwsgi_modifier1 in the web server's configuration"
                )
            if size > self.limits.max_vars_size:
                raise RemoteProtocolError(
                    f"vars block of {size} bytes exceeds {self.limits.max_vars_size} "
                    "(raise --max-params-size if this is legitimate)"
                )
            self._vars_size = size
            self._state = _State.VARS
        end = HEADER_SIZE + self._vars_size
        if len(source) < end:
            if source is data:
                buffer += data
            return events
        params = merge_params(decode_vars(source[HEADER_SIZE:end], self.limits.max_vars))
        modifier2 = source[3]
        rest: bytes | memoryview = memoryview(data)[end:] if source is data else bytes(buffer[end:])
        self._buffer = bytearray()
        events.append(RequestHead(params, modifier2))
        try:
            declared = content_length(params) or 0
        except ValueError as err:
            raise RemoteProtocolError(str(err)) from None
        self._body_left = self._declared = declared
        if not declared:
            header = params.get("HTTP_CONTENT_LENGTH", "0")
            if header and header != "0":
                self._unframed_header = header[:40]
        if declared > self.limits.max_body_size:
            self._discard_body = True
            events.append(BodyTooLarge(self.limits.max_body_size))
        self._state = _State.BODY
        return self._body(rest, events)

    def _beyond(self, what: str) -> RemoteProtocolError:
        """Bytes past the body that CONTENT_LENGTH framed (uwsgi carries one request per connection)."""
        reason = f"{what} (uwsgi carries one request)"
        if self._unframed_header:
            reason += (
                f"; the vars carry HTTP_CONTENT_LENGTH {self._unframed_header!r}, a client's header, which never "
                "frames the body: the web server must send CONTENT_LENGTH (nginx's uwsgi_params does)"
            )
        return RemoteProtocolError(reason)

    def _body(self, data: bytes | memoryview, events: list[Event]) -> list[Event]:
        left = self._body_left
        if len(data) > left:
            raise self._beyond(f"{len(data) - left} bytes beyond CONTENT_LENGTH {self._declared}")
        if data and not self._discard_body:
            events.append(BodyData(data))
        left -= len(data)
        self._body_left = left
        if not left:
            self._state = _State.DONE
            if not self._discard_body:
                events.append(RequestComplete())
        return events


# -- the web server's side, for tests and the benchmark load tool ----------------------------------------------
def encode_vars(params: Mapping[str, str] | Iterable[tuple[str, str]]) -> bytes:
    items = params.items() if isinstance(params, Mapping) else params
    parts: list[bytes] = []
    pack = _VAR_LENGTH.pack
    for key, value in items:
        raw_key = key.encode("latin-1")
        raw_value = value.encode("latin-1")
        parts += (pack(len(raw_key)), raw_key, pack(len(raw_value)), raw_value)
    return b"".join(parts)


def encode_request(
    params: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes = b"",
    *,
    modifier1: int = MODIFIER_WSGI,
    modifier2: int = 0,
) -> bytes:
    block = encode_vars(params)
    if len(block) > MAX_VARS_BLOCK:
        raise ValueError(f"vars block of {len(block)} bytes does not fit the u16 size field")
    return HEADER.pack(modifier1, len(block), modifier2) + block + body


def encode_ping() -> bytes:
    return HEADER.pack(MODIFIER_PING, 0, 0)


def encode_pong() -> bytes:
    """What uWSGI answers to a ping: the same header with modifier2 1 and no payload."""
    return HEADER.pack(MODIFIER_PING, 0, 1)


def is_pong(data: bytes) -> bool:
    """Whether ``data`` (what a server sent back to ``encode_ping()``) is uWSGI's pong."""
    return len(data) >= HEADER_SIZE and HEADER.unpack_from(data) == (MODIFIER_PING, 0, 1)


# -- a node's side of uWSGI's subscription system (a FastRouter's subscription server) -------------------------
def encode_subscription(
    key: str,
    address: str,
    *,
    cores: int,
    load: int,
    weight: int,
    unsubscribe: bool = False,
    modifier1: int = MODIFIER_WSGI,
    modifier2: int = 0,
) -> bytes:
    """One subscription datagram: "route ``key`` to ``address``" (or stop, with ``unsubscribe``).

    The vars and their order are those of uWSGI's own subscriber (core/subscription.c): ``key``, ``address``,
    ``modifier1`` and ``modifier2`` (what the router must send us), ``cores``, ``load``, ``weight``, every value
    as decimal text. The router keys its nodes by ``address`` and forgets one that is not announced again within
    its subscription tolerance.
    """
    if not key or not address:
        raise ValueError("a subscription needs a key and an address")
    return encode_request(
        (
            ("key", key),
            ("address", address),
            ("modifier1", str(modifier1)),
            ("modifier2", str(modifier2)),
            ("cores", str(cores)),
            ("load", str(load)),
            ("weight", str(weight)),
        ),
        modifier1=MODIFIER_SUBSCRIPTION,
        modifier2=UNSUBSCRIBE if unsubscribe else SUBSCRIBE,
    )
