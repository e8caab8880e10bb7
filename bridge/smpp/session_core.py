"""What both sans-IO SMPP sessions share, whichever end of the connection they are.

:class:`~bridge.smpp.session.ServerSession` (the SMSC role, facing ESMEs) and
:class:`~bridge.smpp.client_session.ClientSession` (the ESME role, facing an upstream SMSC) differ
in their bind states and in which requests they take; everything else is the same protocol
machinery and lives here, once: the input loop over whole PDUs, sequence numbers, the table of
requests we sent (their deadlines, the window, matching responses and generic_nacks, unknown
sequence numbers), the output buffer, the answers to undecodable and rejected PDUs, framing
errors, the enquire_link keep-alive, the timeouts of our requests, and :meth:`next_deadline`, the
one time the asyncio layer must wake the session up.

A subclass provides ``_handle_request`` (one request of the peer in its bind state) and the few
hooks below.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from bridge.smpp.events import (
    ConnectionClosed,
    ProtocolViolation,
    ResponseReceived,
    ResponseTimedOut,
    Unbound,
)
from bridge.smpp.pdu import (
    RESPONSE_BIT,
    CommandId,
    FrameReader,
    Pdu,
    PduError,
    Status,
    decode,
    encode,
    is_known_command,
)

__all__ = ["SessionCore", "WindowFull"]

_KEEPALIVE: frozenset[int] = frozenset({CommandId.enquire_link, CommandId.unbind})


class WindowFull(Exception):
    """send_request() while the outgoing window is full."""


class _Config(Protocol):
    """What the core reads of either role's config."""

    @property
    def enquire_link_interval(self) -> float: ...
    @property
    def response_timeout(self) -> float: ...
    @property
    def window(self) -> int: ...
    @property
    def max_pdu_size(self) -> int: ...


@dataclass(slots=True)
class _Pending:
    request: Pdu
    deadline: float
    context: Any


class SessionCore(abc.ABC):
    """The protocol machinery of one SMPP connection; see the module docstring.

    ``now`` passed in never goes backwards (a monotonic clock), so requests we sent time out in
    the order they were sent: the oldest pending one has the earliest deadline.
    """

    # Role hooks: the requests the peer may not send (answered generic_nack ESME_RINVCMDID),
    # the session's unbound and closed states, and how a timeout close is worded.
    _FOREIGN: ClassVar[frozenset[int]] = frozenset()
    _BOUND_STATES: ClassVar[frozenset[Any]]
    _RECEIVE_STATES: ClassVar[frozenset[Any]]  # bound as receiver or transceiver
    _UNBOUND: ClassVar[Any]
    _CLOSED: ClassVar[Any]
    _TIMEOUT_SUFFIX: ClassVar[str] = ""

    state: Any
    config: _Config

    def __init__(self, config: _Config, now: float) -> None:
        self.config = config
        self.outstanding = 0  # requests of the peer handed out as events and not yet answered
        self.more_input = False  # receive_data stopped at its limit with input left
        self._reader = FrameReader(config.max_pdu_size)
        self._out: list[bytes] = []
        self._pending: dict[int, _Pending] = {}
        self._in_flight = 0  # requests in _pending other than enquire_link and unbind
        self._next_seq = 1
        self._last_rx = now
        self._last_tx = now
        self._enquire_seq: int | None = None
        self._unbind_seq: int | None = None  # our unbind, while it awaits its unbind_resp
        self._bind_seq: int | None = None  # our bind (ESME role), while it awaits its bind_resp
        self._input_done = False  # closed, or a framing error: input is ignored from then on

    # ------------------------------------------------------------------ properties

    @property
    def is_bound(self) -> bool:
        return self.state in self._BOUND_STATES

    @property
    def can_receive(self) -> bool:
        """Bound as receiver or transceiver: deliver_sm may be sent to (or by) the peer."""
        return self.state in self._RECEIVE_STATES

    # ------------------------------------------------------------------ output

    @property
    def has_output(self) -> bool:
        """Something awaits :meth:`take_output` (cheaper to ask than to join and discard)."""
        return bool(self._out)

    def take_output(self) -> bytes:
        """Everything the session wants written to the peer since the last call."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    def note_sent(self, now: float) -> None:
        """The asyncio layer wrote output at ``now`` (enquire_link is for idle links only)."""
        self._last_tx = now

    def _send(self, pdu: Pdu) -> None:
        self._out.append(encode(pdu))

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes, now: float, limit: int = 0) -> list[Any]:
        """Feed bytes from the peer; returns the events they cause.

        ``limit`` > 0 handles at most that many PDUs; the rest stays buffered and
        :attr:`more_input` says so: call again (with ``b""``) to go on.
        """
        events: list[Any] = []
        self.more_input = False
        if self._input_done:
            return events
        if data:
            self._reader.feed(data)
        n = 0
        try:
            for frame in self._reader.frames():
                self._last_rx = now
                try:
                    pdu = decode(frame)
                except PduError as e:
                    self._answer_decode_error(e, events)
                else:
                    if pdu.command_id & RESPONSE_BIT:
                        self._handle_response(pdu, events)
                    elif self._handle_request(pdu, events):
                        break
                n += 1
                if n == limit:
                    self.more_input = self._reader.buffered >= 4
                    break
        except PduError as e:  # impossible command_length: the stream cannot be resynchronised
            events.append(ProtocolViolation(e.status, e.command_id, str(e)))
            self._framing_error(e, events)
        return events

    @abc.abstractmethod
    def _handle_request(self, pdu: Pdu, events: list[Any]) -> bool:
        """Handle one request of the peer in the role's bind state; True when input must stop."""

    def _framing_error(self, e: PduError, events: list[Any]) -> None:
        """The stream cannot be framed any more: generic_nack with the error's status, close."""
        self._send(Pdu(CommandId.generic_nack, e.sequence_number, e.status))
        self._close(events, f"framing error: {e}")

    def _handle_response(self, pdu: Pdu, events: list[Any]) -> None:
        pending = self._pending.pop(pdu.sequence_number, None)
        if pending is None:
            self._unmatched_response(pdu, events)
            return
        request = pending.request
        rcid = request.command_id
        if pdu.command_id != rcid | RESPONSE_BIT and pdu.command_id != CommandId.generic_nack:
            events.append(
                ProtocolViolation(
                    Status.ESME_RINVCMDID, pdu.command_id, f"{pdu.name} answers {request.name}"
                )
            )
        if rcid == CommandId.enquire_link:
            self._enquire_seq = None
        elif rcid == CommandId.unbind:
            if self._unbind_seq is not None:  # else the peer's own unbind already ended it
                self._unbind_seq = None
                self.state = self._UNBOUND
                events.append(Unbound(initiated_by_peer=False))
        else:
            self._in_flight -= 1
            events.append(ResponseReceived(pdu, pending.context, request))

    def _unmatched_response(self, pdu: Pdu, events: list[Any]) -> None:
        """A response whose sequence number awaits nothing: typically the late answer to a
        request that already timed out."""
        events.append(
            ProtocolViolation(pdu.command_status, pdu.command_id, "response to no request of ours")
        )

    def _answer_decode_error(self, e: PduError, events: list[Any]) -> None:
        cid = e.command_id
        events.append(ProtocolViolation(e.status, cid, str(e)))
        if cid & RESPONSE_BIT:
            # A garbled response: nobody to answer. Its request will time out.
            self._garbled_response(e, events)
        elif cid in self._FOREIGN:
            # Malformed or not, the peer may not send it: the answer is the same as when well
            # formed.
            self._send(Pdu(CommandId.generic_nack, e.sequence_number, Status.ESME_RINVCMDID))
        elif is_known_command(cid):
            self._send(Pdu(cid | RESPONSE_BIT, e.sequence_number, e.status))
        else:
            self._send(Pdu(CommandId.generic_nack, e.sequence_number, e.status))

    def _garbled_response(self, e: PduError, events: list[Any]) -> None:
        """A response that could not be decoded (hook: a role's own responses, e.g. bind_resp).
        By default there is nothing to add to the answer already sent."""
        return None

    def _reject(self, pdu: Pdu, status: int, events: list[Any]) -> None:
        self._send(Pdu(pdu.command_id | RESPONSE_BIT, pdu.sequence_number, status))
        events.append(ProtocolViolation(status, pdu.command_id, f"{pdu.name} rejected"))

    def _foreign(self, pdu: Pdu, events: list[Any], detail: str) -> None:
        """A request only the other role sends: not a valid command id from this peer."""
        self._send(Pdu(CommandId.generic_nack, pdu.sequence_number, Status.ESME_RINVCMDID))
        events.append(
            ProtocolViolation(Status.ESME_RINVCMDID, pdu.command_id, f"{pdu.name} {detail}")
        )

    # ------------------------------------------------------------------ requests we send

    @property
    def in_flight(self) -> int:
        """Requests we sent (other than enquire_link and unbind) that await their response."""
        return self._in_flight

    def _request(self, pdu: Pdu, now: float, context: Any) -> int:
        """Number, queue and track a request of ours; its sequence number. Nothing is queued
        when the codec refuses the PDU (ValueError / TypeError)."""
        seq = self._next_sequence()
        pdu.sequence_number = seq
        self._out.append(encode(pdu))
        self._pending[seq] = _Pending(pdu, self._deadline(now), context)
        if pdu.command_id not in _KEEPALIVE:
            self._in_flight += 1
        return seq

    def _send_unbind(self, now: float) -> None:
        self._unbind_seq = self._request(Pdu(CommandId.unbind), now, None)

    def close(self) -> list[ResponseTimedOut]:
        """The connection is gone: every request still awaiting its response fails."""
        self.state = self._CLOSED
        self._input_done = True
        failed = [
            ResponseTimedOut(p.request, p.context)
            for p in self._pending.values()
            if p.request.command_id not in _KEEPALIVE
        ]
        self._pending.clear()
        self._in_flight = 0
        return failed

    def _close(self, events: list[Any], reason: str) -> None:
        self.state = self._CLOSED
        self._input_done = True
        events.append(ConnectionClosed(reason))

    # ------------------------------------------------------------------ timers

    def _pending_deadline(self) -> float:
        """The earliest deadline of a request of ours: the oldest one's (see the class)."""
        for p in self._pending.values():
            return p.deadline
        return math.inf

    def _keepalive_at(self) -> float:
        """When an idle link gets its enquire_link (only while bound and none is out)."""
        interval = self.config.enquire_link_interval
        if not interval or self._enquire_seq is not None:
            return math.inf
        return max(self._last_rx, self._last_tx) + interval

    def _expire(self, now: float, events: list[Any]) -> bool:
        """Fail the requests of ours past their deadline; True when that closed the session
        (an enquire_link or unbind not answered)."""
        expired = [s for s, p in self._pending.items() if p.deadline <= now]
        for seq in expired:
            p = self._pending.pop(seq)
            cid = p.request.command_id
            if cid == CommandId.enquire_link:
                self._close(events, "enquire_link not answered" + self._TIMEOUT_SUFFIX)
                return True
            if cid == CommandId.unbind:
                self._close(events, "unbind not answered" + self._TIMEOUT_SUFFIX)
                return True
            self._in_flight -= 1
            events.append(ResponseTimedOut(p.request, p.context))
        return False

    def _send_enquire_link(self, now: float) -> None:
        self._enquire_seq = self._request(Pdu(CommandId.enquire_link), now, None)

    # ------------------------------------------------------------------ internals

    def _next_sequence(self) -> int:
        """1..0x7FFFFFFF, wrapping to 1; after a wrap, skips numbers that still await a response."""
        while True:
            seq = self._next_seq
            self._next_seq = 1 if seq >= 0x7FFFFFFF else seq + 1
            if seq not in self._pending and seq != self._bind_seq:
                return seq

    def _deadline(self, now: float) -> float:
        """When a request sent at ``now`` times out; never when response_timeout is 0."""
        timeout = self.config.response_timeout
        return now + timeout if timeout else math.inf
