"""FileSegment and the OutputBuffer that pushes it, in-process over a real socket pair (sendfile needs real
descriptors) and without an event loop: the turn budget, a full socket, a range cut short by ABORT_REQUEST
at a record boundary, and the order of what is written after a file."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.loop import filesend
from gateway.loop.filesend import RECORD_MAX, FileSegment, Push
from gateway.loop.spool import OutputBuffer
from gateway.protocols.fastcgi import ClientConnection, Stdout
from gateway.protocols.fastcgi.records import HEADER, VERSION, RecordType
from tests.fakes import FakeLoop

#: Larger than a socket pair holds, so that a push meets a full socket.
SIZE = (1 << 20) + 12_345
#: The turn budget in the tests of turns, small enough that the socket pair never fills before it.
TURN = 8192


class SocketTransport(asyncio.WriteTransport):
    """The little of a transport a segment and an OutputBuffer use, writing straight into a real socket."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.unsent = 0
        self.aborted = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16_384, 65_536)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sock.sendall(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


@pytest.fixture
def content(tmp_path: Path) -> bytes:
    data = os.urandom(SIZE)
    (tmp_path / "file.bin").write_bytes(data)
    return data


@pytest.fixture
def small_turns(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(filesend, "TURN_BYTES", TURN)
    return 5 * TURN + 123


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)  # the socket fills long before the file is out
    theirs.settimeout(5)
    yield ours, theirs
    ours.close()
    theirs.close()


def _stdout_header(size: int) -> bytes:
    return HEADER.pack(VERSION, RecordType.STDOUT, 1, size, 0)


def _segment(tmp_path: Path, framed: bool, offset: int = 0, length: int = SIZE) -> FileSegment:
    fd = os.open(tmp_path / "file.bin", os.O_RDONLY)
    return FileSegment(fd, offset, length, _stdout_header if framed else None)


def _read_available(sock: socket.socket) -> bytes:
    """What the peer can read now, without waiting for more."""
    received = bytearray()
    sock.setblocking(False)
    try:
        while chunk := sock.recv(1 << 20):
            received += chunk
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(5)
    return bytes(received)


def test_a_raw_range_leaves_the_loop_after_each_turn_budget(
    tmp_path: Path, content: bytes, pair: tuple[socket.socket, socket.socket], small_turns: int
) -> None:
    ours, theirs = pair
    segment = _segment(tmp_path, framed=False, length=small_turns)
    transport = SocketTransport(ours)
    received = bytearray()
    states = []
    while True:
        state = segment.push(transport)
        states.append(state)
        received += _read_available(theirs)
        if state is Push.DONE:
            break
        assert state is Push.TURN
        assert len(received) % TURN == 0  # a turn sends its budget and not one byte more
    segment.close()
    assert states.count(Push.TURN) == small_turns // TURN
    assert bytes(received) == content[:small_turns]


def test_a_full_socket_makes_the_segment_wait_and_every_record_arrives_whole(
    tmp_path: Path, content: bytes, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    segment = _segment(tmp_path, framed=True)
    transport = SocketTransport(ours)
    client = ClientConnection()
    body = bytearray()
    waits = 0
    while (state := segment.push(transport)) is not Push.DONE:
        waits += state is Push.SOCKET
        for event in client.receive_data(_read_available(theirs)):
            assert isinstance(event, Stdout)
            assert len(event.data) <= RECORD_MAX
            body += event.data
    for event in client.receive_data(_read_available(theirs)):
        assert isinstance(event, Stdout)
        body += event.data
    segment.close()
    assert waits >= 4  # 1 MiB through a socket pair that holds a fraction of it: it filled again and again
    assert bytes(body) == content


@pytest.mark.parametrize("read_first", [0, 1, 4096, 70_000])
def test_a_cut_range_ends_with_the_record_under_way(
    tmp_path: Path, content: bytes, pair: tuple[socket.socket, socket.socket], read_first: int
) -> None:
    """ABORT_REQUEST in the middle of a file: what is on the wire is a whole number of records, then nothing."""
    ours, theirs = pair
    segment = _segment(tmp_path, framed=True)
    transport = SocketTransport(ours)
    assert segment.push(transport) is Push.SOCKET
    early = theirs.recv(read_first) if read_first else b""
    dropped = segment.end_with_record()
    assert 0 < dropped < SIZE
    while segment.push(transport) is not Push.DONE:
        early += _read_available(theirs)
    early += _read_available(theirs)
    segment.close()
    records = [event for event in ClientConnection().receive_data(early) if isinstance(event, Stdout)]
    body = b"".join(record.data for record in records)
    assert len(early) == len(records) * HEADER.size + len(body)  # nothing half-way: the last record is whole
    assert len(body) == SIZE - dropped
    assert body == content[: len(body)]
    assert segment.end_with_record() == 0  # closed: a second abort holds nothing


def test_a_range_cut_before_it_started_sends_nothing(
    tmp_path: Path, content: bytes, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    segment = _segment(tmp_path, framed=True, offset=100, length=SIZE - 100)
    assert segment.end_with_record() == SIZE - 100
    assert segment.push(SocketTransport(ours)) is Push.DONE
    segment.close()
    assert _read_available(theirs) == b""


def test_the_output_buffer_takes_turns_and_keeps_later_writes_behind_the_file(
    tmp_path: Path, content: bytes, pair: tuple[socket.socket, socket.socket], small_turns: int
) -> None:
    ours, theirs = pair
    loop = FakeLoop()
    output = OutputBuffer(SocketTransport(ours), 1 << 20, None, call_soon=loop.call_soon)
    sent: list[str] = []
    segment = _segment(tmp_path, framed=False, length=small_turns)
    segment.on_sent = lambda: sent.append("file")
    output.write(b"head:")
    output.send_file(segment)
    output.write(b":tail")
    received = bytearray(_read_available(theirs))
    assert len(received) == len(b"head:") + TURN  # one turn's budget, then the loop is given back
    assert output.pending == small_turns - TURN + len(b":tail")
    turns = 0
    while loop.ready:
        ready, loop.ready = loop.ready, []
        for callback, args in ready:
            callback(*args)
        turns += 1
        received += _read_available(theirs)
    assert turns == small_turns // TURN  # the file's last piece and the tail go in the last turn
    assert sent == ["file"]
    assert bytes(received) == b"head:" + content[:small_turns] + b":tail"
    assert output.pending == 0
