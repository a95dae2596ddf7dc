"""Coverage-guided fuzzing of the codecs and the channel frame decoder (atheris).

``python -m fuzz.codecs TARGET [libFuzzer options]``, TARGET one of ``fastcgi``, ``uwsgi``, ``channel``; e.g.
``-max_total_time=60`` or ``-runs=100000``. Each input is cut into reads at offsets taken from its first bytes and
fed to a fresh decoder; the only exception allowed is the protocol's own error, after which every further call
must raise it again, and what the decoder holds is checked against its limits after every read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris

# The codecs' Python sources, so that atheris sees their branches (the compiled build is the same code).
import tests.pure_python  # noqa: F401  # installs the sources-only import hook before anything imports protocols

with atheris.instrument_imports():
    from gateway.contract.channel import MAX_FRAME, ChannelError, FrameDecoder
    from gateway.protocols.errors import RemoteProtocolError
    from gateway.protocols.fastcgi import (
        BodyIncomplete,
        Limits,
        RequestAborted,
        RequestComplete,
        RequestHead,
        ServerConnection,
    )
    from gateway.protocols.uwsgi import Limits as UwsgiLimits
    from gateway.protocols.uwsgi import ServerConnection as UwsgiConnection

FASTCGI_LIMITS = Limits(
    max_params_size=4096, max_params=50, max_body_size=1 << 16, max_requests_per_connection=8, max_connections=16
)
UWSGI_LIMITS = UwsgiLimits(max_vars_size=4096, max_vars=50, max_body_size=1 << 16)
#: One record's largest content and padding, with its header: the most a record cut by a read can leave held.
_RECORD_MAX = 8 + 0xFFFF + 0xFF


def reads(data: bytes) -> list[bytes]:
    """``data`` without its first byte, cut at offsets that byte seeds (1..32 pieces), then ``b""`` (EOF)."""
    if not data:
        return [b""]
    cuts = data[0] % 32
    body = data[1:]
    step = max(1, len(body) // (cuts + 1))
    pieces = [body[offset : offset + step] for offset in range(0, len(body), step)] or [b""]
    return [piece for piece in pieces if piece] + [b""]


def fastcgi(data: bytes) -> None:
    codec = ServerConnection(FASTCGI_LIMITS)
    failed = False
    for piece in reads(data):
        try:
            events = codec.receive_data(piece)
        except RemoteProtocolError:
            failed = True
            break
        for event in events:
            # Answer what the application owes, as the gateway does, so the output paths run too.
            if type(event) in (RequestComplete, RequestAborted, BodyIncomplete) and codec.is_active(event.request_id):
                codec.end_request(event.request_id)
            elif type(event) is RequestHead:
                assert codec.is_active(event.request_id)
        codec.data_to_send()
        assert codec.active_requests <= FASTCGI_LIMITS.max_requests_per_connection
        held_limit = FASTCGI_LIMITS.max_requests_per_connection * (FASTCGI_LIMITS.max_params_size + 0xFFFF)
        assert codec.buffered <= held_limit + _RECORD_MAX, codec.buffered
    if failed:
        _must_raise(lambda: codec.receive_data(b"x"), RemoteProtocolError)


def uwsgi(data: bytes) -> None:
    codec = UwsgiConnection(UWSGI_LIMITS)
    for piece in reads(data):
        try:
            codec.receive_data(piece)
        except RemoteProtocolError:
            _must_raise(lambda: codec.receive_data(b"x"), RemoteProtocolError)
            return
        assert codec.buffered <= 4 + UWSGI_LIMITS.max_vars_size, codec.buffered


def channel(data: bytes) -> None:
    decoder = FrameDecoder()
    for piece in reads(data)[:-1]:
        try:
            frames = decoder.feed(piece)
        except ChannelError:
            return
        for kind, payload in frames:
            assert 0 <= kind <= 255
            assert len(payload) <= MAX_FRAME
        assert decoder.pending <= 5 + MAX_FRAME


def _must_raise(call: Callable[[], object], error: type[Exception]) -> None:
    try:
        call()
    except error:
        return
    raise AssertionError(f"a failed decoder accepted more input instead of raising {error.__name__}")


TARGETS: dict[str, Callable[[bytes], None]] = {"fastcgi": fastcgi, "uwsgi": uwsgi, "channel": channel}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: python -m fuzz.codecs {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[argv[1]]
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
