"""FastCGI 1.0, sans-IO: the application side (``ServerConnection``) and the web-server side for tests and tools.

The specification: https://fastcgi-archives.github.io/FastCGI_Specification.html
"""

from gateway.protocols.fastcgi.client import (
    ClientConnection,
    encode_abort,
    encode_begin,
    encode_get_values,
    encode_params,
    encode_request,
    encode_stdin,
)
from gateway.protocols.fastcgi.events import (
    BodyBeyondLength,
    BodyData,
    BodyIncomplete,
    BodyTooLarge,
    ClientEvent,
    EndRequest,
    GetValuesResult,
    RequestAborted,
    RequestComplete,
    RequestHead,
    ServerEvent,
    Stderr,
    Stdout,
    UnknownType,
)
from gateway.protocols.fastcgi.records import (
    FCGI_MAX_CONNS,
    FCGI_MAX_REQS,
    FCGI_MPXS_CONNS,
    MAX_CONTENT,
    ProtocolStatus,
    RecordType,
    Role,
    decode_pairs,
    encode_pairs,
    record,
)
from gateway.protocols.fastcgi.server import Limits, ServerConnection

__all__ = [
    "FCGI_MAX_CONNS",
    "FCGI_MAX_REQS",
    "FCGI_MPXS_CONNS",
    "MAX_CONTENT",
    "BodyBeyondLength",
    "BodyData",
    "BodyIncomplete",
    "BodyTooLarge",
    "ClientConnection",
    "ClientEvent",
    "EndRequest",
    "GetValuesResult",
    "Limits",
    "ProtocolStatus",
    "RecordType",
    "RequestAborted",
    "RequestComplete",
    "RequestHead",
    "Role",
    "ServerConnection",
    "ServerEvent",
    "Stderr",
    "Stdout",
    "UnknownType",
    "decode_pairs",
    "encode_abort",
    "encode_begin",
    "encode_get_values",
    "encode_pairs",
    "encode_params",
    "encode_request",
    "encode_stdin",
    "record",
]
