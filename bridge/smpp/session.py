"""Sans-IO state machine of one SMSC-side SMPP 3.4 connection.

The session takes bytes (:meth:`ServerSession.receive_data`) and the current time, and returns
events; what it has to say goes into an output buffer (:meth:`ServerSession.take_output`). It
never reads a clock and never touches a socket, so every rule here (bind states, windows,
sequence numbers, timers) is tested without a network, like h11 does for HTTP.

What the session answers by itself, because no other layer could answer better: enquire_link,
unbind, PDUs in the wrong bind state (ESME_RINVBNDSTS), a second bind (ESME_RALYBND), unknown
commands (generic_nack ESME_RINVCMDID), undecodable PDUs (their response with the decoder's
status), an impossible command_length (generic_nack ESME_RINVCMDLEN, then close), requests beyond
the outstanding limit (ESME_RTHROTTLED). Binds and message operations become events for the
asyncio layer, which answers through :meth:`accept_bind`, :meth:`reject_bind` and
:meth:`respond`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Final

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
from bridge.smpp.ranges import check_ranges

__all__ = [
    "BindRequested",
    "BindType",
    "ConnectionClosed",
    "Event",
    "MessageRequest",
    "ProtocolViolation",
    "ResponseReceived",
    "ResponseTimedOut",
    "ServerSession",
    "SessionConfig",
    "SessionState",
    "Unbound",
]


class SessionState(enum.Enum):
    OPEN = "open"
    BINDING = "binding"  # bind received, answer not yet sent
    BOUND_TX = "bound_tx"
    BOUND_RX = "bound_rx"
    BOUND_TRX = "bound_trx"
    UNBOUND = "unbound"  # unbind sent or received: only responses and close remain
    CLOSED = "closed"


class BindType(enum.StrEnum):
    TRANSMITTER = "transmitter"
    RECEIVER = "receiver"
    TRANSCEIVER = "transceiver"


_BIND_TYPES: Final[dict[int, tuple[BindType, SessionState]]] = {
    CommandId.bind_transmitter: (BindType.TRANSMITTER, SessionState.BOUND_TX),
    CommandId.bind_receiver: (BindType.RECEIVER, SessionState.BOUND_RX),
    CommandId.bind_transceiver: (BindType.TRANSCEIVER, SessionState.BOUND_TRX),
}
_BOUND_STATE: Final = {bt: st for bt, st in _BIND_TYPES.values()}

# Requests an ESME may send once bound, and the states that allow each.
_TX_STATES: Final = frozenset({SessionState.BOUND_TX, SessionState.BOUND_TRX})
_MESSAGE_COMMANDS: Final[dict[int, frozenset[SessionState]]] = {
    CommandId.submit_sm: _TX_STATES,
    CommandId.submit_multi: _TX_STATES,
    CommandId.data_sm: _TX_STATES,
    CommandId.query_sm: _TX_STATES,
    CommandId.cancel_sm: _TX_STATES,
    CommandId.replace_sm: _TX_STATES,
}
# Commands only an SMSC sends: from an ESME they are not a valid command id.
_SMSC_ONLY: Final = frozenset(
    {CommandId.deliver_sm, CommandId.outbind, CommandId.alert_notification}
)
_BOUND: Final = frozenset({SessionState.BOUND_TX, SessionState.BOUND_RX, SessionState.BOUND_TRX})
_CAN_RECEIVE: Final = frozenset({SessionState.BOUND_RX, SessionState.BOUND_TRX})


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Timers (seconds; 0 disables) and limits of one connection."""

    system_id: str = "smppbridge"
    session_init_timeout: float = 30.0
    enquire_link_interval: float = 30.0
    inactivity_timeout: float = 300.0
    response_timeout: float = 30.0
    window: int = 10
    max_pdu_size: int = 70_000
    max_outstanding: int = 100


# --------------------------------------------------------------------------- events


@dataclass(slots=True)
class BindRequested:
    """A bind in the OPEN state: answer with accept_bind() or reject_bind()."""

    pdu: Pdu = field(repr=False)  # holds the password too
    bind_type: BindType
    system_id: str
    password: str = field(repr=False)


@dataclass(slots=True)
class MessageRequest:
    """submit_sm, submit_multi, data_sm, query_sm, cancel_sm or replace_sm: answer by respond()."""

    pdu: Pdu


@dataclass(slots=True)
class ResponseReceived:
    """The answer (or a generic_nack) to a request we sent, with the context given at send time."""

    pdu: Pdu
    request: Pdu
    context: Any


@dataclass(slots=True)
class ResponseTimedOut:
    """No answer within response_timeout to a request we sent (or the connection is gone)."""

    request: Pdu
    context: Any


@dataclass(slots=True)
class Unbound:
    """The session is unbound (by the peer's unbind, or by the answer to ours): close it."""

    initiated_by_peer: bool


@dataclass(slots=True)
class ConnectionClosed:
    """The session must be closed once its output is flushed; reason is for logs and metrics.

    ``drain``: requests already handed out as MessageRequest must still be answered first (a
    framing error: their responses, then the generic_nack, then the close)."""

    reason: str
    drain: bool = False


@dataclass(slots=True)
class ProtocolViolation:
    """Something the peer did wrong that the session answered or ignored by itself; for logs
    and metrics."""

    status: int
    command_id: int
    detail: str


Event = (
    BindRequested
    | MessageRequest
    | ResponseReceived
    | ResponseTimedOut
    | Unbound
    | ConnectionClosed
    | ProtocolViolation
)


@dataclass(slots=True)
class _Pending:
    request: Pdu
    deadline: float
    context: Any


class WindowFull(Exception):
    """send_request() while the outgoing window is full."""


class ServerSession:
    """One ESME connection seen from the SMSC side; see the module docstring."""

    def __init__(self, config: SessionConfig, now: float) -> None:
        self.config = config
        self.state = SessionState.OPEN
        self.bind_type: BindType | None = None
        self.system_id: str | None = None
        self.max_outstanding = config.max_outstanding
        self.outstanding = 0  # requests handed out as events and not yet answered
        self._reader = FrameReader(config.max_pdu_size)
        self._out: list[bytes] = []
        self._pending: dict[int, _Pending] = {}
        self._next_seq = 1
        self._opened_at = now
        self._last_rx = now
        self._last_tx = now
        self._pending_bind_type: BindType | None = None
        self._bind_pdu: Pdu | None = None
        self._enquire_seq: int | None = None
        self._unbind_seq: int | None = None  # our unbind, while it awaits its unbind_resp
        # After a framing error: the generic_nack that goes out once every request handed out
        # before it is answered (README "Framing errors"); input is ignored from then on.
        self._final_nack: Pdu | None = None
        self._input_done = False
        self.more_input = False  # receive_data stopped at its limit with input left

    # ------------------------------------------------------------------ properties

    @property
    def is_bound(self) -> bool:
        return self.state in _BOUND

    @property
    def can_receive(self) -> bool:
        """Bound as receiver or transceiver: deliver_sm may be sent."""
        return self.state in _CAN_RECEIVE

    @property
    def window_free(self) -> int:
        return self.config.window - len(self._pending)

    @property
    def in_flight(self) -> int:
        """Requests we sent that await their response."""
        return len(self._pending)

    def take_output(self) -> bytes:
        """Everything the session wants written to the peer since the last call."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    # ------------------------------------------------------------------ input

    def receive_data(self, data: bytes, now: float, limit: int = 0) -> list[Event]:
        """Feed bytes from the peer; returns the events they cause.

        ``limit`` > 0 handles at most that many PDUs; the rest stays buffered and
        :attr:`more_input` says so: call again (with ``b""``) to go on.
        """
        events: list[Event] = []
        self.more_input = False
        if self.state is SessionState.CLOSED or self._input_done:
            return events
        if data:
            self._reader.feed(data)
        n = 0
        try:
            for frame in self._reader.frames():
                self._last_rx = now
                if self._handle_frame(frame, now, events):
                    break
                n += 1
                if n == limit:
                    self.more_input = self._reader.buffered >= 4
                    break
        except PduError as e:  # impossible command_length: the stream cannot be resynchronised
            events.append(ProtocolViolation(e.status, e.command_id, str(e)))
            self._framing_error(Pdu(CommandId.generic_nack, e.sequence_number, e.status), events)
        return events

    def _framing_error(self, nack: Pdu, events: list[Event]) -> None:
        """Stop reading; answer what was read before the error, then the generic_nack, then
        close. Requests already handed out may be accepted messages: without their responses
        the ESME would resubmit them (issue 14, finding 6)."""
        self._input_done = True
        self._reader = FrameReader(0)  # drop whatever followed the bad header
        if self.state in _BOUND or self.state is SessionState.BINDING:
            self.state = SessionState.UNBOUND  # only responses and the close remain
        if self.outstanding:
            self._final_nack = nack
            events.append(ConnectionClosed(f"framing error: {nack.command_status:#x}", drain=True))
        else:
            self._send(nack)
            self._close(events, "framing error")

    def _handle_frame(self, frame: bytes, now: float, events: list[Event]) -> bool:
        """Handle one whole PDU; True when the session is closed and input must stop."""
        try:
            pdu = decode(frame)
        except PduError as e:
            self._answer_decode_error(e, events)
            return False
        cid = pdu.command_id
        if cid & RESPONSE_BIT:
            self._handle_response(pdu, events)
            return False
        state = self.state
        allowed = _MESSAGE_COMMANDS.get(cid)
        if allowed is not None:
            if state not in allowed:
                self._reject(pdu, Status.ESME_RINVBNDSTS, events)
            elif self.outstanding >= self.max_outstanding:
                self._reject(pdu, Status.ESME_RTHROTTLED, events)
            elif (bad := check_ranges(pdu)) is not None:  # SMPP 3.4 §5.2 (ranges.py)
                status, what = bad
                self._send(Pdu(cid | RESPONSE_BIT, pdu.sequence_number, status))
                events.append(ProtocolViolation(status, cid, f"{pdu.name}: {what} out of range"))
            else:
                self.outstanding += 1
                events.append(MessageRequest(pdu))
        elif cid == CommandId.enquire_link:
            self._send(pdu.response())
        elif cid in _BIND_TYPES:
            self._handle_bind(pdu, events)
        elif cid == CommandId.unbind:
            if state in _BOUND:
                self._send(pdu.response())
                self.state = SessionState.UNBOUND
                events.append(Unbound(initiated_by_peer=True))
            elif state is SessionState.UNBOUND and self._unbind_seq is not None:
                # Both sides unbind at once: agree, and do not wait for the answer to ours.
                self._send(pdu.response())
                self._unbind_seq = None
                events.append(Unbound(initiated_by_peer=True))
            else:
                self._reject(pdu, Status.ESME_RINVBNDSTS, events)
        elif cid in _SMSC_ONLY:
            self._send(Pdu(CommandId.generic_nack, pdu.sequence_number, Status.ESME_RINVCMDID))
            events.append(
                ProtocolViolation(Status.ESME_RINVCMDID, cid, f"{pdu.name} is not sent to an SMSC")
            )
        else:  # pragma: no cover - every known request is handled above
            self._reject(pdu, Status.ESME_RINVCMDID, events)
        return False

    def _handle_bind(self, pdu: Pdu, events: list[Event]) -> None:
        if self.state is not SessionState.OPEN:
            # A second bind, bound or still binding, or a bind after unbind.
            status = (
                Status.ESME_RINVBNDSTS
                if self.state is SessionState.UNBOUND
                else Status.ESME_RALYBND
            )
            self._reject(pdu, status, events)
            return
        bind_type, _ = _BIND_TYPES[pdu.command_id]
        self.state = SessionState.BINDING
        self._pending_bind_type = bind_type
        self._bind_pdu = pdu
        events.append(
            BindRequested(pdu, bind_type, pdu.fields["system_id"], pdu.fields["password"])
        )

    def _handle_response(self, pdu: Pdu, events: list[Event]) -> None:
        pending = self._pending.pop(pdu.sequence_number, None)
        if pending is None:
            events.append(
                ProtocolViolation(
                    pdu.command_status, pdu.command_id, "response to no request of ours"
                )
            )
            return
        request = pending.request
        if (
            pdu.command_id != request.command_id | RESPONSE_BIT
            and pdu.command_id != CommandId.generic_nack
        ):
            events.append(
                ProtocolViolation(
                    Status.ESME_RINVCMDID,
                    pdu.command_id,
                    f"{pdu.name} answers {request.name}",
                )
            )
        if request.command_id == CommandId.enquire_link:
            self._enquire_seq = None
            return
        if request.command_id == CommandId.unbind:
            if self._unbind_seq is not None:  # else the peer's own unbind already ended it
                self._unbind_seq = None
                self.state = SessionState.UNBOUND
                events.append(Unbound(initiated_by_peer=False))
            return
        events.append(ResponseReceived(pdu, request, pending.context))

    def _answer_decode_error(self, e: PduError, events: list[Event]) -> None:
        cid = e.command_id
        events.append(ProtocolViolation(e.status, cid, str(e)))
        if cid & RESPONSE_BIT:
            # A garbled response: nobody to answer. Its request will time out.
            return
        if cid in _SMSC_ONLY:
            # Malformed or not, an ESME may not send it: the answer is the same as when well formed.
            self._send(Pdu(CommandId.generic_nack, e.sequence_number, Status.ESME_RINVCMDID))
        elif is_known_command(cid):
            self._send(Pdu(cid | RESPONSE_BIT, e.sequence_number, e.status))
        else:
            self._send(Pdu(CommandId.generic_nack, e.sequence_number, e.status))

    def _reject(self, pdu: Pdu, status: int, events: list[Event]) -> None:
        self._send(Pdu(pdu.command_id | RESPONSE_BIT, pdu.sequence_number, status))
        events.append(ProtocolViolation(status, pdu.command_id, f"{pdu.name} rejected"))

    # ------------------------------------------------------------------ answers from above

    def accept_bind(self, *, max_outstanding: int | None = None) -> None:
        """Send bind_resp ESME_ROK and enter the bound state."""
        pdu = self._bind_pdu
        if self.state is not SessionState.BINDING or self._pending_bind_type is None or pdu is None:
            return
        bind_type = self._pending_bind_type
        resp = pdu.response(0, system_id=self.config.system_id)
        if pdu.fields.get("interface_version", 0) >= 0x34:
            resp.set_tlv("sc_interface_version", 0x34)
        self._send(resp)
        self.state = _BOUND_STATE[bind_type]
        self.bind_type = bind_type
        self.system_id = pdu.fields["system_id"]
        if max_outstanding is not None:
            self.max_outstanding = max_outstanding
        self._pending_bind_type = None

    def reject_bind(self, status: int) -> None:
        """Send bind_resp with an error status; the session goes back to OPEN.

        A status of 0 (ESME_ROK) would tell the ESME it is bound while we treat it as not bound:
        it is sent as ESME_RBINDFAIL.
        """
        pdu = self._bind_pdu
        if self.state is not SessionState.BINDING or pdu is None:
            return
        status = status or Status.ESME_RBINDFAIL
        # The body may be empty on failure, but some ESME libraries (aiosmpplib) cannot read
        # an empty bind_resp; our system_id costs nothing and every client parses it.
        self._send(
            Pdu(
                pdu.command_id | RESPONSE_BIT,
                pdu.sequence_number,
                status,
                {"system_id": self.config.system_id},
            )
        )
        self.state = SessionState.OPEN
        self._pending_bind_type = None

    def respond(self, request: Pdu, response: Pdu) -> None:
        """Send the answer to a MessageRequest. Dropped when the session is already closed."""
        if self.outstanding:
            self.outstanding -= 1
        if self.state is SessionState.CLOSED:
            return
        response.command_id = request.command_id | RESPONSE_BIT
        response.sequence_number = request.sequence_number
        self._send(response)
        if self._final_nack is not None and not self.outstanding:
            self._send(self._final_nack)
            self._final_nack = None
            self.state = SessionState.CLOSED  # the asyncio layer closes once this is written

    # ------------------------------------------------------------------ requests we send

    def send_request(self, pdu: Pdu, now: float, context: Any = None) -> int:
        """Queue deliver_sm, data_sm, enquire_link or unbind for the peer; returns its sequence.

        Raises WindowFull when the outgoing window is full (the caller waits and retries).
        """
        if len(self._pending) >= self.config.window:
            raise WindowFull
        seq = self._next_sequence()
        pdu.sequence_number = seq
        self._pending[seq] = _Pending(pdu, self._deadline(now), context)
        self._send(pdu)
        return seq

    def unbind(self, now: float) -> None:
        """Start an unbind from our side (shutdown, inactivity). Unbound follows its response."""
        if self.state not in _BOUND:
            return
        seq = self._next_sequence()
        pdu = Pdu(CommandId.unbind, seq)
        self._pending[seq] = _Pending(pdu, self._deadline(now), None)
        self._send(pdu)
        self.state = SessionState.UNBOUND
        self._unbind_seq = seq

    def close(self) -> list[ResponseTimedOut]:
        """The connection is gone: every request still pending fails."""
        self.state = SessionState.CLOSED
        failed = [
            ResponseTimedOut(p.request, p.context)
            for p in self._pending.values()
            if p.request.command_id not in (CommandId.enquire_link, CommandId.unbind)
        ]
        self._pending.clear()
        return failed

    # ------------------------------------------------------------------ timers

    def handle_timers(self, now: float) -> list[Event]:
        """Run the session timers; call at least as often as the shortest timer."""
        events: list[Event] = []
        cfg = self.config
        state = self.state
        if state is SessionState.CLOSED:
            return events
        if (
            state is SessionState.OPEN
            and cfg.session_init_timeout
            and now - self._opened_at >= cfg.session_init_timeout
        ):
            self._close(events, "no bind within session_init_timeout")
            return events
        if self._pending:
            expired = [s for s, p in self._pending.items() if p.deadline <= now]
            for seq in expired:
                p = self._pending.pop(seq)
                cid = p.request.command_id
                if cid == CommandId.enquire_link:
                    self._close(events, "enquire_link not answered")
                    return events
                if cid == CommandId.unbind:
                    self._close(events, "unbind not answered")
                    return events
                events.append(ResponseTimedOut(p.request, p.context))
        if state in _BOUND:
            if cfg.inactivity_timeout and now - self._last_rx >= cfg.inactivity_timeout:
                events.append(
                    ProtocolViolation(0, CommandId.unbind, "inactivity timeout: unbinding")
                )
                self.unbind(now)
                return events
            if (
                cfg.enquire_link_interval
                and self._enquire_seq is None
                and now - max(self._last_rx, self._last_tx) >= cfg.enquire_link_interval
                and len(self._pending) < cfg.window
            ):
                self._enquire_seq = self.send_request(Pdu(CommandId.enquire_link), now)
        return events

    # ------------------------------------------------------------------ internals

    def _next_sequence(self) -> int:
        """1..0x7FFFFFFF, wrapping to 1; after a wrap, skips numbers that still await a response."""
        while True:
            seq = self._next_seq
            self._next_seq = 1 if seq >= 0x7FFFFFFF else seq + 1
            if seq not in self._pending:
                return seq

    def _deadline(self, now: float) -> float:
        """When a request sent at ``now`` times out; never when response_timeout is 0."""
        timeout = self.config.response_timeout
        return now + timeout if timeout else math.inf

    def _send(self, pdu: Pdu) -> None:
        self._out.append(encode(pdu))

    def note_sent(self, now: float) -> None:
        """The asyncio layer wrote output at ``now`` (keeps enquire_link for idle links only)."""
        self._last_tx = now

    def _close(self, events: list[Event], reason: str) -> None:
        self.state = SessionState.CLOSED
        events.append(ConnectionClosed(reason))
