"""The application side of a FastCGI connection as a state machine: bytes in, events out.

Every request id is independent (multiplexing): its params, body and end are tracked on their own, and records of
different ids may interleave freely. Management records (request id 0) are answered by the codec itself through
``data_to_send``, as are requests we refuse (unknown role, too many at once).

The record parser's state is one ``_State`` value, in h11's spirit: between records, inside a record cut by a read
(its start buffered), inside a streamed STDIN record's content or padding, closed, or failed. A
``RemoteProtocolError`` is terminal: the connection enters ERROR and refuses every further call, since whatever
follows a broken record cannot be framed with any confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from gateway.protocols.cgi import content_length, merge_params
from gateway.protocols.errors import LocalProtocolError, RemoteProtocolError
from gateway.protocols.fastcgi.events import (
    BodyBeyondLength,
    BodyData,
    BodyIncomplete,
    BodyTooLarge,
    RequestAborted,
    RequestComplete,
    RequestHead,
    ServerEvent,
)
from gateway.protocols.fastcgi.records import (
    BEGIN_BODY,
    END_BODY,
    FCGI_KEEP_CONN,
    FCGI_MAX_CONNS,
    FCGI_MAX_REQS,
    FCGI_MPXS_CONNS,
    HEADER,
    HEADER_SIZE,
    UNKNOWN_TYPE_BODY,
    VERSION,
    ProtocolStatus,
    RecordType,
    Role,
    decode_pairs,
    encode_pairs,
    record,
    stream,
    stream_pieces,
)

#: GET_VALUES names are short; a larger block is hostile, not a query.
MAX_GET_VALUES_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may make us hold. Each is a CLI option of the gateway.

    No field has a default: the gateway's declared settings are the one place defaults live, so the codec can never
    report or enforce a value the gateway was not configured with.
    """

    max_params_size: int
    max_params: int
    max_body_size: int
    max_requests_per_connection: int
    #: Only reported to the web server (GET_VALUES); the gateway enforces it.
    max_connections: int


class _Phase(Enum):
    """Where one request id stands. Every phase says who owes what, so that no record (an ABORT_REQUEST above
    all) can arrive in a phase that has no answer for it.

    ==========  ====================================  ============================================================
    phase       the web server owes                   ABORT_REQUEST
    ==========  ====================================  ============================================================
    PARAMS      the rest of the params stream         answered END_REQUEST by the codec: the app never heard of it
    BODY        STDIN up to its empty record          RequestAborted; the app owes END_REQUEST
    DRAINING    STDIN, read and dropped (refused)     RequestAborted; the app owes END_REQUEST
    ANSWERING   nothing: the app owes END_REQUEST     RequestAborted; the app owes END_REQUEST
    ABORTED     nothing that counts                   ignored (reported once); the app owes END_REQUEST
    ==========  ====================================  ============================================================

    ``end_request`` removes the id in every phase after PARAMS; after that, records for it are moot and dropped.
    """

    PARAMS = "receiving params"
    BODY = "receiving the body"
    DRAINING = "dropping a refused body"
    ANSWERING = "input complete, awaiting the response"
    ABORTED = "aborted by the web server, awaiting END_REQUEST"


_P_PARAMS: Final = _Phase.PARAMS
_P_BODY: Final = _Phase.BODY
_P_DRAINING: Final = _Phase.DRAINING
_P_ANSWERING: Final = _Phase.ANSWERING
_P_ABORTED: Final = _Phase.ABORTED


class _Request:
    __slots__ = ("beyond", "body_size", "declared", "keep_conn", "params", "phase")

    def __init__(self, keep_conn: bool) -> None:
        self.keep_conn = keep_conn
        self.phase: _Phase = _P_PARAMS
        #: In PARAMS: the params stream so far (counted in ``ServerConnection._held_params``).
        self.params = bytearray()
        #: Body bytes passed on to the application.
        self.body_size = 0
        #: CONTENT_LENGTH, once the params are complete; -1 when the request declared none.
        self.declared = -1
        #: STDIN went past ``declared`` (reported once; the excess is dropped).
        self.beyond = False


class _State(Enum):
    """Where the record parser stands between two reads."""

    #: At a record boundary: the next byte starts a header.
    RECORDS = "between records"
    #: A record cut by a read that is not streamed (a header cut short, or a record other than STDIN): its start is
    #: in ``_buffer`` until the rest arrives.
    PARTIAL = "inside a record"
    #: A STDIN record whose content is passed on as it arrives: ``_stdin_left`` bytes of it, then its padding.
    STDIN_CONTENT = "inside a STDIN record"
    #: The padding of that STDIN record: ``_padding_left`` bytes to skip.
    STDIN_PADDING = "inside a STDIN record's padding"
    #: The web server closed its side at a record boundary; nothing more may arrive.
    CLOSED = "closed"
    #: A RemoteProtocolError was raised: every further call raises.
    ERROR = "failed"


# Module-level finals: mypyc reads them as C globals, where ``_State.X`` would be an attribute lookup per read.
_RECORDS: Final = _State.RECORDS
_PARTIAL: Final = _State.PARTIAL
_STDIN_CONTENT: Final = _State.STDIN_CONTENT
_STDIN_PADDING: Final = _State.STDIN_PADDING
_CLOSED: Final = _State.CLOSED
_ERROR: Final = _State.ERROR

_PARAMS = RecordType.PARAMS
_STDIN = RecordType.STDIN
_BEGIN_REQUEST = RecordType.BEGIN_REQUEST
_ABORT_REQUEST = RecordType.ABORT_REQUEST
_DATA = RecordType.DATA
_GET_VALUES = RecordType.GET_VALUES
_KNOWN_TYPES = frozenset(int(kind) for kind in RecordType)
_HEADER_UNPACK_FROM = HEADER.unpack_from
_STDOUT = int(RecordType.STDOUT)


class ServerConnection:
    """One FastCGI connection as the application sees it.

    Once ``receive_data`` raised a RemoteProtocolError the connection is in ERROR, for good: every later
    ``receive_data`` raises RemoteProtocolError again (saying the connection already failed, and why), and every
    call that produces output (``data_to_send``, ``send_stdout``, ``send_stdout_pieces``, ``end_request``) raises
    LocalProtocolError, because nothing more may be said on a connection whose framing is lost. The queries still
    answer: no request is active any more, and no input is pending.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._state: _State = _RECORDS
        #: In PARTIAL: the start of the record cut by a read. Empty in every other state.
        self._buffer = bytearray()
        #: In STDIN_CONTENT and STDIN_PADDING: the streamed record's request, and its content and padding still due.
        self._stdin_id = 0
        self._stdin_left = 0
        self._padding_left = 0
        #: In ERROR: the message of the error that put us there.
        self._failure = ""
        self._requests: dict[int, _Request] = {}
        #: Bytes of params streams not yet complete, every request's together (see ``buffered``).
        self._held_params = 0
        self._outgoing: list[bytes] = []
        #: A request arrived without FCGI_KEEP_CONN: the web server expects us to close once it is answered.
        self.close_after_response = False

    @property
    def active_requests(self) -> int:
        return len(self._requests)

    def is_active(self, request_id: int) -> bool:
        return request_id in self._requests

    def phase(self, request_id: int) -> str | None:
        """The phase of an active request, as words (for tests and log lines); None when it is not active."""
        request = self._requests.get(request_id)
        return None if request is None else request.phase.value

    @property
    def buffered(self) -> int:
        """Input bytes the codec holds for requests that are not complete: their params streams so far, and the
        start of a record cut by a read. What a client can make the codec hold is this; body bytes are never held
        (they are passed on as views)."""
        return self._held_params + len(self._buffer)

    @property
    def input_pending(self) -> bool:
        """Part of a record, or a request whose params or body have not ended: the web server owes us bytes."""
        state = self._state
        # Identity tests, not a set of states: hashing an Enum member runs Python code, and this runs per read.
        if state is _PARTIAL or state is _STDIN_CONTENT or state is _STDIN_PADDING:
            return True
        for request in self._requests.values():
            phase = request.phase
            if phase is _P_PARAMS or phase is _P_BODY:
                return True
        return False

    @property
    def head_pending(self) -> bool:
        """A request (or a record) has started whose params are not complete yet."""
        for request in self._requests.values():
            if request.phase is _P_PARAMS:
                return True
        return self._state is _PARTIAL and not self._requests

    # -- input -------------------------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[ServerEvent]:
        """Feed bytes from the web server; ``b""`` means it closed its side.

        Body bytes are handed out as views of ``data`` (``BodyData.data``), never copied, so ``data`` must not
        change afterwards (uvloop and asyncio hand ``bytes``). A STDIN record cut by the end of a read is passed on
        piece by piece as its content arrives; only the other records cut by a read (headers, params, management
        records: all bounded and small) are buffered until they are whole.

        Raises RemoteProtocolError when the web server broke the protocol or a limit; the connection is then in
        ERROR and every later call raises (see the class).
        """
        try:
            return self._receive(data)
        except RemoteProtocolError as err:
            self._fail(err)
            raise

    def _receive(self, data: bytes) -> list[ServerEvent]:
        if not data:
            return self._end_of_input()
        events: list[ServerEvent] = []
        view = memoryview(data)
        position = 0
        state = self._state
        # Each state but RECORDS first finishes what the previous read left open; what follows starts at a
        # record boundary again, unless this read ended first (the state then still says where we are).
        if state is not _RECORDS:
            if state is _STDIN_CONTENT or state is _STDIN_PADDING:
                position = self._continue_stdin(view, 0, events)
            elif state is _PARTIAL:
                position = self._complete_buffered(view, events)
            else:
                raise self._refused(len(data))
            if self._state is not _RECORDS:
                return events
        available = len(data)
        requests = self._requests
        while available - position >= HEADER_SIZE:
            version, record_type, request_id, size, padding = _HEADER_UNPACK_FROM(data, position)
            if version != VERSION:
                raise RemoteProtocolError(f"record version {version}, expected {VERSION}")
            start = position + HEADER_SIZE
            end = start + size
            if end + padding > available:
                if record_type == _STDIN and size:
                    self._stdin_id, self._stdin_left, self._padding_left = request_id, size, padding
                    self._state = _STDIN_CONTENT
                    self._continue_stdin(view, start, events)  # takes all the rest: the record goes beyond it
                    return events
                break
            if record_type == _STDIN:
                request = requests.get(request_id)
                if request is not None:  # else ended or aborted: the rest of its input is moot
                    self._stdin(request_id, request, view[start:end], events)
            else:
                self._record(record_type, request_id, data[start:end], events)
            position = end + padding
        if position < available:
            self._buffer += view[position:]
            self._state = _PARTIAL
        return events

    def _fail(self, err: RemoteProtocolError) -> None:
        """Enter ERROR (keeping the first error's message): no request survives a connection whose framing is lost."""
        if self._state is _ERROR:
            return
        self._state, self._failure = _ERROR, str(err)
        self._buffer = bytearray()
        self._requests.clear()
        self._held_params = 0
        self._outgoing.clear()

    def _end_of_input(self) -> list[ServerEvent]:
        """The web server closed its side: clean at a record boundary, an error inside a record."""
        state = self._state
        if state is _RECORDS or state is _CLOSED:
            self._state = _CLOSED
            return []
        if state is _PARTIAL:
            raise RemoteProtocolError(f"connection closed inside a record ({len(self._buffer)} bytes pending)")
        if state is _ERROR:
            raise self._refused(0)
        raise RemoteProtocolError(
            f"connection closed inside a STDIN record of request {self._stdin_id} "
            f"({self._stdin_left + self._padding_left} bytes pending)"
        )

    def _refused(self, size: int) -> RemoteProtocolError:
        """Why input in CLOSED or ERROR is refused."""
        if self._state is _ERROR:
            return RemoteProtocolError(f"the connection already failed ({self._failure}); no input is accepted")
        return RemoteProtocolError(f"data after the end of the connection ({size} bytes)")

    def _continue_stdin(self, view: memoryview, position: int, events: list[ServerEvent]) -> int:
        """Pass on what ``view`` holds of the streamed STDIN record from ``position``; return where it ends.

        Leaves STDIN_CONTENT for STDIN_PADDING once the content is through, and STDIN_PADDING for RECORDS once the
        padding is skipped.
        """
        available = len(view)
        if self._state is _STDIN_CONTENT:
            if position < available:  # an empty piece would read as the end of the body
                end = min(position + self._stdin_left, available)
                self._stdin_left -= end - position
                request = self._requests.get(self._stdin_id)
                if request is not None:
                    self._stdin(self._stdin_id, request, view[position:end], events)
                position = end
            if self._stdin_left:
                return position
            self._state = _STDIN_PADDING
        skipped = min(self._padding_left, available - position)
        self._padding_left -= skipped
        if not self._padding_left:
            self._state = _RECORDS
        return position + skipped

    def _complete_buffered(self, view: memoryview, events: list[ServerEvent]) -> int:
        """Complete the buffered record from the start of ``view``, taking only its own bytes; return how many.

        Stays in PARTIAL while the record is still incomplete; a STDIN record whose header completes streams from
        there (STDIN_CONTENT), any other record is handled once whole (RECORDS).
        """
        buffer = self._buffer
        taken = 0
        if len(buffer) < HEADER_SIZE:
            taken = min(HEADER_SIZE - len(buffer), len(view))
            buffer += view[:taken]
            if len(buffer) < HEADER_SIZE:
                return taken
        version, record_type, request_id, size, padding = _HEADER_UNPACK_FROM(buffer)
        if version != VERSION:
            raise RemoteProtocolError(f"record version {version}, expected {VERSION}")
        if record_type == _STDIN and size:  # only its header was buffered: a STDIN record streams from there
            self._buffer = bytearray()
            self._stdin_id, self._stdin_left, self._padding_left = request_id, size, padding
            self._state = _STDIN_CONTENT
            return self._continue_stdin(view, taken, events)
        missing: int = HEADER_SIZE + size + padding - len(buffer)
        buffer += view[taken : taken + missing]
        if len(buffer) < HEADER_SIZE + size + padding:
            return len(view)
        self._buffer = bytearray()
        self._state = _RECORDS
        self._record(record_type, request_id, bytes(buffer[HEADER_SIZE : HEADER_SIZE + size]), events)
        return taken + missing

    def _record(self, record_type: int, request_id: int, content: bytes, events: list[ServerEvent]) -> None:
        if request_id == 0:
            self._management(record_type, content)
            return
        if record_type == _PARAMS:
            request = self._requests.get(request_id)
            if request is not None:  # else ended or aborted: the web server's remaining input for it is moot
                self._params(request_id, request, content, events)
        elif record_type == _STDIN:
            request = self._requests.get(request_id)
            if request is not None:
                self._stdin(request_id, request, content, events)
        elif record_type == _BEGIN_REQUEST:
            self._begin(request_id, content)
        elif record_type == _ABORT_REQUEST:
            request = self._requests.get(request_id)
            if request is not None:
                self._abort(request_id, request, events)
        elif record_type == _DATA:
            return  # the FILTER role's second stream; we serve RESPONDER only, which has none
        elif record_type == _GET_VALUES:
            raise RemoteProtocolError(f"GET_VALUES with request id {request_id}; management records use id 0")
        elif record_type in _KNOWN_TYPES:
            name = RecordType(record_type).name
            raise RemoteProtocolError(f"{name} record sent to the application (it only flows the other way)")
        else:
            self._outgoing.append(record(RecordType.UNKNOWN_TYPE, 0, UNKNOWN_TYPE_BODY.pack(record_type)))

    def _begin(self, request_id: int, content: bytes) -> None:
        if len(content) != BEGIN_BODY.size:
            raise RemoteProtocolError(f"BEGIN_REQUEST body is {len(content)} bytes, expected {BEGIN_BODY.size}")
        if request_id in self._requests:
            raise RemoteProtocolError(f"BEGIN_REQUEST for request id {request_id}, which is already active")
        role, flags = BEGIN_BODY.unpack(content)
        if not flags & FCGI_KEEP_CONN:
            self.close_after_response = True
        if role != Role.RESPONDER:
            self._outgoing.append(self._end_record(request_id, 0, ProtocolStatus.UNKNOWN_ROLE))
        elif len(self._requests) >= self.limits.max_requests_per_connection:
            self._outgoing.append(self._end_record(request_id, 0, ProtocolStatus.OVERLOADED))
        else:
            self._requests[request_id] = _Request(bool(flags & FCGI_KEEP_CONN))

    def _abort(self, request_id: int, request: _Request, events: list[ServerEvent]) -> None:
        """ABORT_REQUEST, answered in every phase (see ``_Phase``)."""
        phase = request.phase
        if phase is _P_PARAMS:
            # The application never heard of this request: the codec answers it and forgets it.
            self._held_params -= len(request.params)
            del self._requests[request_id]
            self._outgoing.append(self._end_record(request_id, 0, ProtocolStatus.REQUEST_COMPLETE))
        elif phase is not _P_ABORTED:
            request.phase = _P_ABORTED
            events.append(RequestAborted(request_id))

    def _params(self, request_id: int, request: _Request, content: bytes, events: list[ServerEvent]) -> None:
        if request.phase is not _P_PARAMS:
            if request.phase is _P_ABORTED:
                return
            raise RemoteProtocolError(f"PARAMS for request {request_id} after its params stream ended")
        if content:
            request.params += content
            self._held_params += len(content)
            if len(request.params) > self.limits.max_params_size:
                raise RemoteProtocolError(
                    f"params of request {request_id} exceed {self.limits.max_params_size} bytes "
                    "(raise --max-params-size if this is legitimate)"
                )
            return
        self._held_params -= len(request.params)
        request.phase = _P_BODY
        params = merge_params(decode_pairs(request.params, self.limits.max_params))
        request.params = bytearray()
        events.append(RequestHead(request_id, params, request.keep_conn))
        try:
            declared = content_length(params)
        except ValueError as err:
            raise RemoteProtocolError(str(err)) from None
        if declared is not None:
            request.declared = declared
            if declared > self.limits.max_body_size:
                request.phase = _P_DRAINING
                events.append(BodyTooLarge(request_id, self.limits.max_body_size))

    def _stdin(
        self, request_id: int, request: _Request, content: bytes | memoryview, events: list[ServerEvent]
    ) -> None:
        phase = request.phase
        if phase is not _P_BODY:
            if phase is _P_PARAMS:
                raise RemoteProtocolError(f"STDIN for request {request_id} before its params stream ended")
            if phase is _P_DRAINING and not content:
                request.phase = _P_ANSWERING  # the refused body is over; its answer is the application's
            return  # dropped: refused, aborted, or (ANSWERING) past an end the request already had
        if content:
            size = len(content)
            declared = request.declared
            if declared >= 0 and request.body_size + size > declared:
                # CONTENT_LENGTH is the one truth about the body (PEP 3333): what goes beyond it never reaches
                # the application. The excess is reported once and dropped; the body ends with its STDIN stream.
                room = declared - request.body_size
                if room:
                    request.body_size = declared
                    events.append(BodyData(request_id, content[:room]))
                if not request.beyond:
                    request.beyond = True
                    events.append(BodyBeyondLength(request_id, declared))
                return
            request.body_size += size
            if request.body_size > self.limits.max_body_size:
                request.phase = _P_DRAINING
                events.append(BodyTooLarge(request_id, self.limits.max_body_size))
                return
            events.append(BodyData(request_id, content))
        else:
            # Input is complete; the request stays active until the application ends it. A body shorter than its
            # CONTENT_LENGTH is not a complete request: reported, never dispatched.
            request.phase = _P_ANSWERING
            if request.body_size < request.declared:
                events.append(BodyIncomplete(request_id, request.declared, request.body_size))
            else:
                events.append(RequestComplete(request_id))

    def _management(self, record_type: int, content: bytes) -> None:
        if record_type != _GET_VALUES:
            self._outgoing.append(record(RecordType.UNKNOWN_TYPE, 0, UNKNOWN_TYPE_BODY.pack(record_type)))
            return
        if len(content) > MAX_GET_VALUES_SIZE:
            raise RemoteProtocolError(f"GET_VALUES block of {len(content)} bytes (at most {MAX_GET_VALUES_SIZE})")
        known = {
            FCGI_MAX_CONNS: str(self.limits.max_connections),
            FCGI_MAX_REQS: str(self.limits.max_connections * self.limits.max_requests_per_connection),
            FCGI_MPXS_CONNS: "1",
        }
        answer = [(name, known[name]) for name, _ in decode_pairs(content, len(known) * 4) if name in known]
        self._outgoing.append(record(RecordType.GET_VALUES_RESULT, 0, encode_pairs(answer)))

    # -- output ------------------------------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """What the codec answered on its own (management records, refused requests); empty when nothing."""
        if self._state is _ERROR:
            raise self._no_output("its own answers")
        if not self._outgoing:
            return b""
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        return data

    def send_stdout(self, request_id: int, data: bytes) -> bytes:
        """STDOUT records carrying ``data``, split at the 65535-byte record limit."""
        if request_id not in self._requests:
            raise self._inactive("STDOUT", request_id)
        return stream(_STDOUT, request_id, data)

    def send_stdout_pieces(self, request_id: int, data: bytes | memoryview) -> list[bytes | memoryview]:
        """``send_stdout`` as pieces to write in order (headers and views of ``data``), for a large body."""
        if request_id not in self._requests:
            raise self._inactive("STDOUT", request_id)
        return stream_pieces(_STDOUT, request_id, data)

    def end_request(self, request_id: int, app_status: int = 0) -> bytes:
        """Close the STDOUT stream and end the request; nothing may be sent for this id afterwards."""
        request = self._requests.pop(request_id, None)
        if request is None:
            raise self._inactive("END_REQUEST", request_id)
        if request.phase is _P_PARAMS:
            self._held_params -= len(request.params)
        return record(_STDOUT, request_id) + self._end_record(request_id, app_status, ProtocolStatus.REQUEST_COMPLETE)

    def _inactive(self, what: str, request_id: int) -> LocalProtocolError:
        """Output asked for a request that is not active; in ERROR none is, and that is the reason to name."""
        if self._state is _ERROR:
            return self._no_output(f"{what} for request {request_id}")
        return LocalProtocolError(f"{what} for request {request_id}, which is not active")

    def _no_output(self, what: str) -> LocalProtocolError:
        return LocalProtocolError(f"cannot send {what}: the connection already failed ({self._failure})")

    @staticmethod
    def _end_record(request_id: int, app_status: int, protocol_status: ProtocolStatus) -> bytes:
        return record(RecordType.END_REQUEST, request_id, END_BODY.pack(app_status & 0xFFFFFFFF, protocol_status))
