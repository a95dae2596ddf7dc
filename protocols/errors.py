"""The two ways a conversation on the wire can go wrong, and whose fault it was."""

from __future__ import annotations


class ProtocolError(Exception):
    """Base of every codec error; the connection it happened on cannot continue."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol or one of our limits.

    The I/O layer logs one line naming the peer and this message, then closes that connection only.
    """


class LocalProtocolError(ProtocolError):
    """We asked the codec for something the protocol forbids (e.g. output for a request that already ended).

    This is a bug in the caller, never in the peer's input.
    """
