"""The uwsgi binary protocol, sans-IO. Reference: https://uwsgi-docs.readthedocs.io/en/latest/Protocol.html"""

from gateway.protocols.uwsgi.codec import (
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

__all__ = [
    "MAX_VARS_BLOCK",
    "MODIFIER_PING",
    "MODIFIER_WSGI",
    "BodyData",
    "BodyTooLarge",
    "Event",
    "Limits",
    "Ping",
    "RequestComplete",
    "RequestHead",
    "ServerConnection",
    "decode_vars",
    "encode_ping",
    "encode_pong",
    "encode_request",
    "encode_vars",
]
