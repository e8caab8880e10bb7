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

# The events both sides of a connection have are the same classes (one definition).
from bridge.smpp.session import ConnectionClosed, ProtocolViolation, ResponseTimedOut, Unbound

__all__ = [
    "AUTH_FAILURES",
    "SUBMIT_COMMANDS",
    "BindFailed",
    "BindType",
    "Bound",
    "ClientSession",
    "ClientSessionConfig",
    "ClientState",
    "ConnectionClosed",
    "DeliverRequested",
    "Event",
    "NotReady",
    "ProtocolViolation",
    "ResponseReceived",
    "ResponseTimedOut",
    "Unbound",
    "WindowFull",
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


class BindType(enum.StrEnum):
    TRANSMITTER = "transmitter"
    RECEIVER = "receiver"
    TRANSCEIVER = "transceiver"


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


# --------------------------------------------------------------------------- events


@dataclass(slots=True)
class Bound:
    """bind_resp ESME_ROK: the session is bound; ``system_id`` is the SMSC's own."""

    bind_type: BindType
    system_id: str


@dataclass(slots=True)
class BindFailed:
    """bind_resp (or generic_nack) with an error status: the SMSC refused the bind."""

    status: int


@dataclass(slots=True)
class ResponseReceived:
    """The answer (or a generic_nack) to a request we sent, with the context given at send time."""

    pdu: Pdu
    context: Any


@dataclass(slots=True)
class DeliverRequested:
    """deliver_sm or data_sm from the SMSC: answer with :meth:`ClientSession.respond`."""

    pdu: Pdu


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


class WindowFull(Exception):
    """send_request() while the outgoing window is full."""


class NotReady(Exception):
    """send_request() in a state that may not send it (not bound as a transmitter, unbinding)."""


@dataclass(slots=True)
class _Pending:
    request: Pdu
    deadline: float
    context: Any


class ClientSession:
    """One connection to an SMSC seen from the ESME side; see the module docstring."""

    def __init__(self, config: ClientSessionConfig, now: float) -> None:
        self.config = config
        self.state = ClientState.OPEN
        self.smsc_system_id: str | None = None
        self.outstanding = 0  # DeliverRequested handed out and not yet answered
        self._reader = FrameReader(config.max_pdu_size)
        self._out: list[bytes] = []
        self._pending: dict[int, _Pending] = {}
        self._in_flight = 0  # requests in _pending that count against the window
        self._next_seq = 1
        self._last_rx = now
        self._last_tx = now
        self._bind_seq: int | None = None
        self._bind_deadline = math.inf
        self._enquire_seq: int | None = None
        self._unbind_seq: int | None = None

    # ------------------------------------------------------------------ properties

    @property
    def is_bound(self) -> bool:
        return self.state in _BOUND

    @property
    def can_submit(self) -> bool:
        """Bound as transmitter or transceiver, and not unbinding: submit_sm may be sent."""
        return self.state in _CAN_SUBMIT

    @property
    def can_receive(self) -> bool:
        return self.state in _CAN_RECEIVE

    @property
    def in_flight(self) -> int:
        """Requests we sent (submit_sm and the like) that await their response."""
        return self._in_flight

    @property
    def window_free(self) -> int:
        return self.config.window - self._in_flight

    @property
    def has_output(self) -> bool:
        """Something awaits :meth:`take_output` (cheaper to ask than to join and discard)."""
        return bool(self._out)

    def take_output(self) -> bytes:
        """Everything the session wants written to the SMSC since the last call."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

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
        seq = self._next_sequence()
        pdu.sequence_number = seq
        self._out.append(encode(pdu))
        self._pending[seq] = _Pending(pdu, self._deadline(now), context)
        self._in_flight += 1
        return seq

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
            seq = self._next_sequence()
            pdu = Pdu(CommandId.unbind, seq)
            self._pending[seq] = _Pending(pdu, self._deadline(now), None)
            self._out.append(encode(pdu))
            self.state = ClientState.UNBINDING
            self._unbind_seq = seq
        elif self.state in (ClientState.OPEN, ClientState.BINDING):
            self.state = ClientState.UNBOUND

    def close(self) -> list[ResponseTimedOut]:
        """The connection is gone: every request still awaiting its response fails."""
        self.state = ClientState.CLOSED
        failed = [
            ResponseTimedOut(p.request, p.context)
            for p in self._pending.values()
            if p.request.command_id in SUBMIT_COMMANDS
        ]
        self._pending.clear()
        self._in_flight = 0
        return failed

    def note_sent(self, now: float) -> None:
        """The asyncio layer wrote output at ``now`` (enquire_link is for idle links only)."""
        self._last_tx = now

    # ------------------------------------------------------------------ what we receive

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes from the SMSC; returns the events they cause."""
        events: list[Event] = []
        if self.state is ClientState.CLOSED:
            return events
        self._reader.feed(data)
        self._last_rx = now
        try:
            for frame in self._reader.frames():
                self._handle_frame(frame, events)
        except PduError as e:  # impossible command_length: the stream cannot be resynchronised
            self._out.append(encode(Pdu(CommandId.generic_nack, e.sequence_number, e.status)))
            events.append(ProtocolViolation(e.status, e.command_id, str(e)))
            self._close(events, f"framing error: {e}")
        return events

    def _handle_frame(self, frame: bytes, events: list[Event]) -> None:
        try:
            pdu = decode(frame)
        except PduError as e:
            self._answer_decode_error(e, events)
            return
        cid = pdu.command_id
        if cid & RESPONSE_BIT:
            self._handle_response(pdu, events)
        elif cid in _DELIVER_COMMANDS:
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
            self._out.append(encode(pdu.response()))
        elif cid == CommandId.unbind:
            self._out.append(encode(pdu.response()))
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
        elif cid in _ESME_ONLY or not is_known_command(cid):
            self._out.append(
                encode(Pdu(CommandId.generic_nack, pdu.sequence_number, Status.ESME_RINVCMDID))
            )
            events.append(
                ProtocolViolation(Status.ESME_RINVCMDID, cid, f"{pdu.name} is not sent to an ESME")
            )

    def _handle_response(self, pdu: Pdu, events: list[Event]) -> None:
        seq = pdu.sequence_number
        if seq == self._bind_seq:
            self._handle_bind_resp(pdu, events)
            return
        pending = self._pending.pop(seq, None)
        if pending is None:
            # Typically the late answer to a request that already timed out.
            events.append(
                ProtocolViolation(pdu.command_status, pdu.command_id, "response to no request")
            )
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
            self._unbind_seq = None
            self.state = ClientState.UNBOUND
            events.append(Unbound(initiated_by_peer=False))
        else:
            self._in_flight -= 1
            events.append(ResponseReceived(pdu, pending.context))

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

    def _answer_decode_error(self, e: PduError, events: list[Event]) -> None:
        cid = e.command_id
        events.append(ProtocolViolation(e.status, cid, str(e)))
        if cid & RESPONSE_BIT:
            # A garbled response: nobody to answer. Its request times out (or the bind fails).
            if e.sequence_number == self._bind_seq and self.state is ClientState.BINDING:
                self._bind_seq = None
                self._bind_deadline = math.inf
                self.state = ClientState.OPEN
                events.append(BindFailed(e.status))
            return
        if cid in _ESME_ONLY or not is_known_command(cid):
            self._out.append(
                encode(Pdu(CommandId.generic_nack, e.sequence_number, Status.ESME_RINVCMDID))
            )
        else:
            self._out.append(encode(Pdu(cid | RESPONSE_BIT, e.sequence_number, e.status)))

    def _reject(self, pdu: Pdu, status: int, events: list[Event]) -> None:
        self._out.append(encode(Pdu(pdu.command_id | RESPONSE_BIT, pdu.sequence_number, status)))
        events.append(ProtocolViolation(status, pdu.command_id, f"{pdu.name} rejected"))

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float:
        """The earliest time at which :meth:`handle_timers` has something to do (inf: none).

        Request deadlines are not scanned here (that is O(window)); the asyncio layer ticks at
        a fraction of response_timeout instead.
        """
        cfg = self.config
        deadline = self._bind_deadline
        if cfg.enquire_link_interval and self.state in _BOUND and self._enquire_seq is None:
            deadline = min(deadline, max(self._last_rx, self._last_tx) + cfg.enquire_link_interval)
        return deadline

    def handle_timers(self, now: float) -> list[Event]:
        """Run the timers: bind and response timeouts, enquire_link on an idle link.

        Call at least as often as a fraction of the shortest timer.
        """
        events: list[Event] = []
        state = self.state
        if state is ClientState.CLOSED:
            return events
        if state is ClientState.BINDING and now >= self._bind_deadline:
            self._close(events, "bind not answered within response_timeout")
            return events
        if self._pending:
            expired = [s for s, p in self._pending.items() if p.deadline <= now]
            for seq in expired:
                p = self._pending.pop(seq)
                cid = p.request.command_id
                if cid == CommandId.enquire_link:
                    self._close(events, "enquire_link not answered within response_timeout")
                    return events
                if cid == CommandId.unbind:
                    self._close(events, "unbind not answered within response_timeout")
                    return events
                self._in_flight -= 1
                events.append(ResponseTimedOut(p.request, p.context))
        cfg = self.config
        if (
            state in _BOUND
            and cfg.enquire_link_interval
            and self._enquire_seq is None
            and now - max(self._last_rx, self._last_tx) >= cfg.enquire_link_interval
        ):
            # Outside the window: a full window must not stop the keep-alive (and a full window
            # on an idle link means the SMSC stopped answering, which this probe finds out).
            seq = self._next_sequence()
            pdu = Pdu(CommandId.enquire_link, seq)
            self._pending[seq] = _Pending(pdu, self._deadline(now), None)
            self._out.append(encode(pdu))
            self._enquire_seq = seq
        return events

    # ------------------------------------------------------------------ internals

    def _next_sequence(self) -> int:
        """1..0x7FFFFFFF, wrapping to 1; after a wrap, skips numbers that still await a response."""
        while True:
            seq = self._next_seq
            self._next_seq = 1 if seq >= 0x7FFFFFFF else seq + 1
            if seq not in self._pending and seq != self._bind_seq:
                return seq

    def _deadline(self, now: float) -> float:
        timeout = self.config.response_timeout
        return now + timeout if timeout else math.inf

    def _close(self, events: list[Event], reason: str) -> None:
        self.state = ClientState.CLOSED
        events.append(ConnectionClosed(reason))
