"""What the FastCGI codec reports: slotted events, one class per thing that happened.

Not ``frozen``: compiled by mypyc, a frozen dataclass is still built by the Python ``__init__`` that dataclasses
generates (about 390 ns each, against about 90 for these; RESULTS.md, History), and every request makes two.
Nothing changes an event after the codec made it."""

from __future__ import annotations

from dataclasses import dataclass


# -- application side (ServerConnection) -----------------------------------------------------------------------
@dataclass(slots=True)
class RequestHead:
    """A request's params are complete; its body (STDIN) follows."""

    request_id: int
    params: dict[str, str]
    #: FCGI_KEEP_CONN: the web server keeps the connection open after this request.
    keep_conn: bool


@dataclass(slots=True)
class BodyData:
    """Part of a request's body, as a view of the bytes fed to the codec (no copy)."""

    request_id: int
    data: bytes | memoryview


@dataclass(slots=True)
class RequestComplete:
    """The body ended (empty STDIN record): the request may be dispatched."""

    request_id: int


@dataclass(slots=True)
class RequestAborted:
    """ABORT_REQUEST: the web server's client went away. The application still owes END_REQUEST."""

    request_id: int


@dataclass(slots=True)
class BodyTooLarge:
    """The body (declared or received) exceeds the limit; the rest of it is read and dropped."""

    request_id: int
    limit: int


@dataclass(slots=True)
class BodyBeyondLength:
    """STDIN went on past the request's CONTENT_LENGTH: the excess is dropped (the application gets exactly
    ``declared`` bytes). Reported once per request, when the first excess byte arrives."""

    request_id: int
    declared: int


@dataclass(slots=True)
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
@dataclass(slots=True)
class Stdout:
    request_id: int
    data: bytes


@dataclass(slots=True)
class Stderr:
    request_id: int
    data: bytes


@dataclass(slots=True)
class EndRequest:
    request_id: int
    app_status: int
    protocol_status: int


@dataclass(slots=True)
class GetValuesResult:
    values: dict[str, str]


@dataclass(slots=True)
class UnknownType:
    record_type: int


ClientEvent = Stdout | Stderr | EndRequest | GetValuesResult | UnknownType
