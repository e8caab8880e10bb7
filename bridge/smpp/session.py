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
from dataclasses import dataclass
from typing import Any, Final

from bridge.smpp.events import (
    BindRequested,
    BindType,
    ConnectionClosed,
    MessageRequest,
    ProtocolViolation,
    ResponseReceived,
    ResponseTimedOut,
    Unbound,
)
from bridge.smpp.pdu import RESPONSE_BIT, CommandId, FrameReader, Pdu, PduError, Status
from bridge.smpp.ranges import check_ranges
from bridge.smpp.session_core import SessionCore, WindowFull

__all__ = [
    "Event",
    "ServerSession",
    "SessionConfig",
    "SessionState",
]


class SessionState(enum.Enum):
    OPEN = "open"
    BINDING = "binding"  # bind received, answer not yet sent
    BOUND_TX = "bound_tx"
    BOUND_RX = "bound_rx"
    BOUND_TRX = "bound_trx"
    UNBOUND = "unbound"  # unbind sent or received: only responses and close remain
    CLOSED = "closed"


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


Event = (
    BindRequested
    | MessageRequest
    | ResponseReceived
    | ResponseTimedOut
    | Unbound
    | ConnectionClosed
    | ProtocolViolation
)


class ServerSession(SessionCore):
    """One ESME connection seen from the SMSC side; see the module docstring."""

    _FOREIGN = _SMSC_ONLY
    _BOUND_STATES = _BOUND
    _RECEIVE_STATES = _CAN_RECEIVE
    _UNBOUND = SessionState.UNBOUND
    _CLOSED = SessionState.CLOSED
    config: SessionConfig
    state: SessionState

    def __init__(self, config: SessionConfig, now: float) -> None:
        super().__init__(config, now)
        self.state = SessionState.OPEN
        self.bind_type: BindType | None = None
        self.system_id: str | None = None
        self.max_outstanding = config.max_outstanding
        self._opened_at = now
        self._pending_bind_type: BindType | None = None
        self._bind_pdu: Pdu | None = None
        # After a framing error: the generic_nack that goes out once every request handed out
        # before it is answered (README "Framing errors"); input is ignored from then on.
        self._final_nack: Pdu | None = None

    # ------------------------------------------------------------------ properties

    @property
    def window_free(self) -> int:
        return self.config.window - len(self._pending)

    @property
    def in_flight(self) -> int:
        """Requests we sent (enquire_link and unbind included) that await their response."""
        return len(self._pending)

    # ------------------------------------------------------------------ input

    def _framing_error(self, e: PduError, events: list[Event]) -> None:
        """Stop reading; answer what was read before the error, then the generic_nack, then
        close. Requests already handed out may be accepted messages: without their responses
        the ESME would resubmit them (issue 14, finding 6)."""
        nack = Pdu(CommandId.generic_nack, e.sequence_number, e.status)
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

    def _handle_request(self, pdu: Pdu, events: list[Event]) -> bool:
        cid = pdu.command_id
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
            self._foreign(pdu, events, "is not sent to an SMSC")
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
        return self._request(pdu, now, context)

    def unbind(self, now: float) -> None:
        """Start an unbind from our side (shutdown, inactivity). Unbound follows its response."""
        if self.state not in _BOUND:
            return
        self._send_unbind(now)
        self.state = SessionState.UNBOUND

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float:
        """The earliest time at which :meth:`handle_timers` has something to do (inf: none)."""
        state = self.state
        if state is SessionState.CLOSED:
            return math.inf
        cfg = self.config
        deadline = self._pending_deadline()
        if state is SessionState.OPEN:
            if cfg.session_init_timeout:
                deadline = min(deadline, self._opened_at + cfg.session_init_timeout)
        elif state in _BOUND:
            if cfg.inactivity_timeout:
                deadline = min(deadline, self._last_rx + cfg.inactivity_timeout)
            if len(self._pending) < cfg.window:  # a full window holds the keep-alive back
                deadline = min(deadline, self._keepalive_at())
        return deadline

    def handle_timers(self, now: float) -> list[Event]:
        """Run the session timers: at :meth:`next_deadline`, or at least as often as the
        shortest timer."""
        events: list[Event] = []
        cfg = self.config
        state = self.state
        if state is SessionState.CLOSED:
            return events
        if (
            state is SessionState.OPEN
            and cfg.session_init_timeout
            and now >= self._opened_at + cfg.session_init_timeout
        ):
            self._close(events, "no bind within session_init_timeout")
            return events
        if self._pending and self._expire(now, events):
            return events
        if state in _BOUND:
            if cfg.inactivity_timeout and now >= self._last_rx + cfg.inactivity_timeout:
                events.append(
                    ProtocolViolation(0, CommandId.unbind, "inactivity timeout: unbinding")
                )
                self.unbind(now)
                return events
            if now >= self._keepalive_at() and len(self._pending) < cfg.window:
                self._send_enquire_link(now)
        return events
