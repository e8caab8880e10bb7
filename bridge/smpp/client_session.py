"""Sans-IO state machine of one ESME-side SMPP 3.4 connection (the bridge toward an upstream SMSC).

The mirror image of :mod:`bridge.smpp.session`: bytes in (:meth:`ClientSession.receive_data`),
events out, bytes to write collected in an output buffer (:meth:`ClientSession.take_output`), the
current time passed in by the caller. No clock reads, no sockets, so bind states, windows,
sequence numbers, response timeouts and enquire_link are tested without a network.

What the session answers by itself, because no other layer could answer better: the SMSC's
enquire_link, the SMSC's unbind, requests in the wrong bind state (ESME_RINVBNDSTS), unknown or
undecodable requests (generic_nack / their response with the decoder's status), an impossible
command_length (generic_nack, then close). deliver_sm and data_sm from the SMSC become
:class:`DeliverRequested` events, answered through :meth:`ClientSession.respond` once whoever
handles them has stored them.

Requests we send carry an opaque ``context`` (the asyncio layer's future) that comes back in
:class:`ResponseReceived` / :class:`ResponseTimedOut` and from :meth:`ClientSession.close`, so the
layer above keeps no second table of its own.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, Final

from bridge.smpp.events import (
    BindFailed,
    BindType,
    Bound,
    ConnectionClosed,
    DeliverRequested,
    ProtocolViolation,
    ResponseReceived,
    ResponseTimedOut,
    Unbound,
)
from bridge.smpp.pdu import RESPONSE_BIT, CommandId, Pdu, PduError, Status, encode
from bridge.smpp.session_core import SessionCore, WindowFull

__all__ = [
    "AUTH_FAILURES",
    "SUBMIT_COMMANDS",
    "ClientSession",
    "ClientSessionConfig",
    "ClientState",
    "Event",
    "NotReady",
    "backoff_delay",
]


class ClientState(enum.Enum):
    OPEN = "open"  # connected, no bind sent yet
    BINDING = "binding"  # bind sent, bind_resp awaited
    BOUND_TX = "bound_tx"
    BOUND_RX = "bound_rx"
    BOUND_TRX = "bound_trx"
    UNBINDING = "unbinding"  # our unbind sent, unbind_resp awaited: responses still accepted
    UNBOUND = "unbound"  # unbind done (either side): only responses and close remain
    CLOSED = "closed"


_BIND_COMMAND: Final = {
    BindType.TRANSMITTER: CommandId.bind_transmitter,
    BindType.RECEIVER: CommandId.bind_receiver,
    BindType.TRANSCEIVER: CommandId.bind_transceiver,
}
_BOUND_STATE: Final = {
    BindType.TRANSMITTER: ClientState.BOUND_TX,
    BindType.RECEIVER: ClientState.BOUND_RX,
    BindType.TRANSCEIVER: ClientState.BOUND_TRX,
}
_BOUND: Final = frozenset({ClientState.BOUND_TX, ClientState.BOUND_RX, ClientState.BOUND_TRX})
_CAN_SUBMIT: Final = frozenset({ClientState.BOUND_TX, ClientState.BOUND_TRX})
_CAN_RECEIVE: Final = frozenset({ClientState.BOUND_RX, ClientState.BOUND_TRX})
# Responses keep coming after an unbind: requests in flight still get their answers.
_ACCEPTS_RESPONSES: Final = frozenset(
    {*_BOUND, ClientState.BINDING, ClientState.UNBINDING, ClientState.UNBOUND}
)
# What an ESME sends once bound as a transmitter (submit() takes these).
SUBMIT_COMMANDS: Final = frozenset(
    {
        CommandId.submit_sm,
        CommandId.submit_multi,
        CommandId.data_sm,
        CommandId.query_sm,
        CommandId.cancel_sm,
        CommandId.replace_sm,
    }
)
# What an SMSC sends that an ESME answers with a response of its own.
_DELIVER_COMMANDS: Final = frozenset({CommandId.deliver_sm, CommandId.data_sm})
# Requests only an ESME sends: from the SMSC they are not a valid command id.
_ESME_ONLY: Final = frozenset(
    {
        CommandId.bind_transmitter,
        CommandId.bind_receiver,
        CommandId.bind_transceiver,
        CommandId.submit_sm,
        CommandId.submit_multi,
        CommandId.query_sm,
        CommandId.cancel_sm,
        CommandId.replace_sm,
    }
)
# bind_resp statuses that mean "these credentials will not work": retrying quickly only fills
# the upstream's logs (and may lock the account), so the asyncio layer waits reconnect_max.
AUTH_FAILURES: Final = frozenset(
    {Status.ESME_RINVPASWD, Status.ESME_RINVSYSID, Status.ESME_RINVSYSTYP}
)


@dataclass(frozen=True, slots=True)
class ClientSessionConfig:
    """What one ESME connection binds with, and its timers (seconds; 0 disables)."""

    system_id: str
    password: str = field(repr=False)
    bind_type: BindType = BindType.TRANSCEIVER
    system_type: str = ""
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""
    enquire_link_interval: float = 30.0
    response_timeout: float = 10.0
    window: int = 10
    max_pdu_size: int = 70_000
    # deliver_sm / data_sm handed out as events and not yet answered, beyond which the SMSC
    # gets ESME_RTHROTTLED (it resends later) instead of growing our memory
    max_outstanding: int = 100


def backoff_delay(attempt: int, minimum: float, maximum: float, jitter: float) -> float:
    """Reconnect delay before attempt ``attempt`` (0-based): exponential, capped, jittered.

    ``minimum * 2**attempt`` capped at ``maximum``, then scaled by a factor in [0.5, 1.0] taken
    from ``jitter`` (a random number in [0, 1)), so that many binds dropped together (an upstream
    restart) do not come back in lockstep. The jitter never takes the delay below half of
    ``minimum``.
    """
    base = maximum if attempt >= 63 else min(maximum, minimum * (1 << attempt))
    base = max(base, 0.0)
    return base * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


Event = (
    Bound
    | BindFailed
    | ResponseReceived
    | ResponseTimedOut
    | DeliverRequested
    | Unbound
    | ConnectionClosed
    | ProtocolViolation
)


class NotReady(Exception):
    """send_request() in a state that may not send it (not bound as a transmitter, unbinding)."""


class ClientSession(SessionCore):
    """One connection to an SMSC seen from the ESME side; see the module docstring."""

    _FOREIGN = _ESME_ONLY
    _BOUND_STATES = _BOUND
    _RECEIVE_STATES = _CAN_RECEIVE
    _UNBOUND = ClientState.UNBOUND
    _CLOSED = ClientState.CLOSED
    _TIMEOUT_SUFFIX = " within response_timeout"
    config: ClientSessionConfig
    state: ClientState

    def __init__(self, config: ClientSessionConfig, now: float) -> None:
        super().__init__(config, now)
        self.state = ClientState.OPEN
        self.smsc_system_id: str | None = None
        self._bind_deadline = math.inf

    # ------------------------------------------------------------------ properties

    @property
    def can_submit(self) -> bool:
        """Bound as transmitter or transceiver, and not unbinding: submit_sm may be sent."""
        return self.state in _CAN_SUBMIT

    @property
    def window_free(self) -> int:
        return self.config.window - self._in_flight

    # ------------------------------------------------------------------ what we send

    def bind(self, now: float) -> None:
        """Send the bind of the configured type; :class:`Bound` or :class:`BindFailed` follows."""
        if self.state is not ClientState.OPEN:
            raise NotReady(f"bind in state {self.state.value}")
        cfg = self.config
        seq = self._next_sequence()
        pdu = Pdu(
            _BIND_COMMAND[cfg.bind_type],
            seq,
            fields={
                "system_id": cfg.system_id,
                "password": cfg.password,
                "system_type": cfg.system_type,
                "interface_version": 0x34,
                "addr_ton": cfg.addr_ton,
                "addr_npi": cfg.addr_npi,
                "address_range": cfg.address_range,
            },
        )
        self._out.append(encode(pdu))  # ValueError for credentials the wire cannot carry
        self.state = ClientState.BINDING
        self._bind_seq = seq
        self._bind_deadline = self._deadline(now)

    def send_request(self, pdu: Pdu, now: float, context: Any = None) -> int:
        """Queue a submit_sm (data_sm, submit_multi, query_sm, ...) for the SMSC; its sequence.

        The sequence number is assigned here (the PDU is changed in place). Raises
        :class:`NotReady` unless bound as a transmitter, :class:`WindowFull` when ``window``
        requests already await their responses, and ValueError / TypeError (from the codec)
        for a PDU the wire cannot carry — in every case nothing was queued.
        """
        if self.state not in _CAN_SUBMIT:
            raise NotReady(f"{pdu.name} in state {self.state.value}")
        if self._in_flight >= self.config.window:
            raise WindowFull
        if pdu.command_id not in SUBMIT_COMMANDS:
            raise ValueError(f"{pdu.name} is not a request an ESME sends to an SMSC")
        return self._request(pdu, now, context)

    def respond(self, request: Pdu, status: int) -> None:
        """Answer a :class:`DeliverRequested` (deliver_sm_resp / data_sm_resp with ``status``).

        Dropped when the connection is already closed: the SMSC resends what it did not see
        acknowledged.
        """
        if self.outstanding:
            self.outstanding -= 1
        if self.state is ClientState.CLOSED:
            return
        # message_id is unused in deliver_sm_resp and empty here in data_sm_resp; sent as an
        # empty C-Octet String even on errors, as some SMSCs cannot read a header-only resp.
        self._out.append(
            encode(
                Pdu(
                    request.command_id | RESPONSE_BIT,
                    request.sequence_number,
                    status,
                    {"message_id": ""},
                )
            )
        )

    def unbind(self, now: float) -> None:
        """Start an unbind from our side (shutdown). :class:`Unbound` follows its response.

        No new request may be sent from here on; requests in flight still get their responses.
        Before the bind completed there is nothing to unbind: the session just closes.
        """
        if self.state in _BOUND:
            self._send_unbind(now)
            self.state = ClientState.UNBINDING
        elif self.state in (ClientState.OPEN, ClientState.BINDING):
            self.state = ClientState.UNBOUND

    # ------------------------------------------------------------------ what we receive

    def _handle_request(self, pdu: Pdu, events: list[Event]) -> bool:
        cid = pdu.command_id
        if cid in _DELIVER_COMMANDS:
            if self.state not in _CAN_RECEIVE and not (
                # an SMSC may deliver while we unbind: it sent before it saw our unbind
                self.state is ClientState.UNBINDING
                and self.config.bind_type is not BindType.TRANSMITTER
            ):
                self._reject(pdu, Status.ESME_RINVBNDSTS, events)
            elif self.outstanding >= self.config.max_outstanding:
                self._reject(pdu, Status.ESME_RTHROTTLED, events)
            else:
                self.outstanding += 1
                events.append(DeliverRequested(pdu))
        elif cid == CommandId.enquire_link:
            self._send(pdu.response())
        elif cid == CommandId.unbind:
            self._send(pdu.response())
            if self.state in _BOUND or self.state is ClientState.UNBINDING:
                # Both sides unbinding at once: agree, and do not wait for the answer to ours.
                if self._unbind_seq is not None:
                    self._pending.pop(self._unbind_seq, None)
                    self._unbind_seq = None
                self.state = ClientState.UNBOUND
                events.append(Unbound(initiated_by_peer=True))
        elif cid == CommandId.alert_notification:
            pass  # no response exists; SMPP leaves acting on it to the ESME, and we do not
        elif cid == CommandId.outbind:
            # Outbind asks an ESME to bind on a connection the SMSC opened; ours we opened.
            events.append(ProtocolViolation(0, cid, "outbind on a connection we opened: ignored"))
        else:  # the requests only an ESME sends
            self._foreign(pdu, events, "is not sent to an ESME")
        return False

    def _unmatched_response(self, pdu: Pdu, events: list[Event]) -> None:
        if pdu.sequence_number == self._bind_seq:
            self._handle_bind_resp(pdu, events)
        else:
            super()._unmatched_response(pdu, events)

    def _handle_bind_resp(self, pdu: Pdu, events: list[Event]) -> None:
        self._bind_seq = None
        self._bind_deadline = math.inf
        if self.state is not ClientState.BINDING:
            return  # we gave up on it (unbind/stop while binding)
        bind_type = self.config.bind_type
        if pdu.command_status == 0 and pdu.command_id == _BIND_COMMAND[bind_type] | RESPONSE_BIT:
            self.state = _BOUND_STATE[bind_type]
            self.smsc_system_id = pdu.fields.get("system_id", "")
            events.append(Bound(bind_type, self.smsc_system_id or ""))
            return
        # A generic_nack or a bind_resp of another bind type with status 0 is a refusal too.
        status = pdu.command_status or Status.ESME_RBINDFAIL
        self.state = ClientState.OPEN
        events.append(BindFailed(status))

    def _garbled_response(self, e: PduError, events: list[Event]) -> None:
        # An undecodable bind_resp fails the bind (other requests time out).
        if e.sequence_number == self._bind_seq and self.state is ClientState.BINDING:
            self._bind_seq = None
            self._bind_deadline = math.inf
            self.state = ClientState.OPEN
            events.append(BindFailed(e.status))

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float:
        """The earliest time at which :meth:`handle_timers` has something to do (inf: none)."""
        state = self.state
        if state is ClientState.CLOSED:
            return math.inf
        deadline = self._pending_deadline()
        if state is ClientState.BINDING:
            deadline = min(deadline, self._bind_deadline)
        elif state in _BOUND:
            deadline = min(deadline, self._keepalive_at())
        return deadline

    def handle_timers(self, now: float) -> list[Event]:
        """Run the timers: bind and response timeouts, enquire_link on an idle link.

        Call at :meth:`next_deadline`, or at least as often as a fraction of the shortest timer.
        """
        events: list[Event] = []
        state = self.state
        if state is ClientState.CLOSED:
            return events
        if state is ClientState.BINDING and now >= self._bind_deadline:
            self._close(events, "bind not answered within response_timeout")
            return events
        if self._pending and self._expire(now, events):
            return events
        if state in _BOUND and now >= self._keepalive_at():
            # Outside the window: a full window must not stop the keep-alive (and a full window
            # on an idle link means the SMSC stopped answering, which this probe finds out).
            self._send_enquire_link(now)
        return events
