"""What the FastCGI codec reports: frozen, slotted events, one class per thing that happened."""

from __future__ import annotations

from dataclasses import dataclass


# -- application side (ServerConnection) -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request's params are complete; its body (STDIN) follows."""

    request_id: int
    params: dict[str, str]
    #: FCGI_KEEP_CONN: the web server keeps the connection open after this request.
    keep_conn: bool


@dataclass(frozen=True, slots=True)
class BodyData:
    """Part of a request's body, as a view of the bytes fed to the codec (no copy)."""

    request_id: int
    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class RequestComplete:
    """The body ended (empty STDIN record): the request may be dispatched."""

    request_id: int


@dataclass(frozen=True, slots=True)
class RequestAborted:
    """ABORT_REQUEST: the web server's client went away. The application still owes END_REQUEST."""

    request_id: int


@dataclass(frozen=True, slots=True)
class BodyTooLarge:
    """The body (declared or received) exceeds the limit; the rest of it is read and dropped."""

    request_id: int
    limit: int


@dataclass(frozen=True, slots=True)
class BodyBeyondLength:
    """STDIN went on past the request's CONTENT_LENGTH: the excess is dropped (the application gets exactly
    ``declared`` bytes). Reported once per request, when the first excess byte arrives."""

    request_id: int
    declared: int


@dataclass(frozen=True, slots=True)
class BodyIncomplete:
    """STDIN ended before the CONTENT_LENGTH it declared: not a complete request, never dispatched. The input is
    over; the application owes END_REQUEST (after answering 400)."""

    request_id: int
    declared: int
    received: int


ServerEvent = (
    RequestHead | BodyData | RequestComplete | RequestAborted | BodyTooLarge | BodyBeyondLength | BodyIncomplete
)


# -- web-server side (ClientConnection) ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Stdout:
    request_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Stderr:
    request_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class EndRequest:
    request_id: int
    app_status: int
    protocol_status: int


@dataclass(frozen=True, slots=True)
class GetValuesResult:
    values: dict[str, str]


@dataclass(frozen=True, slots=True)
class UnknownType:
    record_type: int


ClientEvent = Stdout | Stderr | EndRequest | GetValuesResult | UnknownType
