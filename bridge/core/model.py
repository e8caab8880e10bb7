"""The domain's nouns: messages, their states, delivery reports, inbound messages.

Nothing here knows SMPP bytes or HTTP. Times are float seconds since the Unix epoch (wall clock,
because they are stored and shown); durations are float seconds. Message ids are our own strings
(≤ 64 characters, the SMPP limit), the same in submit_sm_resp, the receipt's ``id:`` and the
receipted_message_id TLV.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Address",
    "DeliveryReport",
    "InboundMessage",
    "Message",
    "MessageState",
    "Outcome",
    "OutcomeKind",
    "Receipt",
]


class MessageState(enum.IntEnum):
    """Lifecycle of a message. Values 1–8 equal SMPP 3.4 message_state, so they map 1:1."""

    ENROUTE = 1  # accepted, queued or handed to a provider, no final report yet
    DELIVERED = 2
    EXPIRED = 3
    DELETED = 4  # cancelled by the ESME (cancel_sm) before dispatch
    UNDELIVERABLE = 5
    ACCEPTED = 6
    UNKNOWN = 7
    REJECTED = 8

    @property
    def is_final(self) -> bool:
        return self is not MessageState.ENROUTE

    @property
    def stat_word(self) -> str:
        """The 7-letter Appendix B ``stat:`` word."""
        return _STAT_WORDS[self]


_STAT_WORDS = {
    MessageState.ENROUTE: "ENROUTE",
    MessageState.DELIVERED: "DELIVRD",
    MessageState.EXPIRED: "EXPIRED",
    MessageState.DELETED: "DELETED",
    MessageState.UNDELIVERABLE: "UNDELIV",
    MessageState.ACCEPTED: "ACCEPTD",
    MessageState.UNKNOWN: "UNKNOWN",
    MessageState.REJECTED: "REJECTD",
}


@dataclass(frozen=True, slots=True)
class Address:
    """A number or alphanumeric sender as the ESME gave it, normalised.

    ``digits`` is E.164 without '+' for numbers (international form after normalisation), or the
    alphanumeric text for TON 5 senders.
    """

    digits: str
    ton: int = 1
    npi: int = 1


@dataclass(slots=True)
class Message:
    """One message to a handset, as accepted from an ESME (after reassembly: the whole text).

    ``part_ids`` lists the message_id given to each submit_sm part of a concatenated message, in
    part order; receipts are sent for each of them. For a single-part message it is ``[id]``.
    ``text`` is the decoded text, or None for binary content (``binary`` then holds the octets).
    """

    id: str
    account: str
    source: Address
    destination: Address
    text: str | None
    data_coding: int = 0  # as the ESME sent it; 0x08 when the text needs UCS2
    binary: bytes = b""
    udh: bytes = b""  # non-concatenation IEs the ESME sent (ports …), for providers that take them
    flash: bool = False
    registered_delivery: int = 0
    priority: int = 0
    esm_class: int = 0
    protocol_id: int = 0
    service_type: str = ""
    part_ids: list[str] = field(default_factory=list)
    created_at: float = 0.0
    schedule_at: float | None = None  # None = now
    expire_at: float | None = None  # None = the account's default validity
    state: MessageState = MessageState.ENROUTE
    attempts: int = 0
    next_attempt_at: float = 0.0
    route: list[str] = field(default_factory=list)  # provider names, in failover order
    provider: str | None = None  # the provider that took it
    provider_message_id: str | None = None
    error_code: int = 0  # the receipt's err: value
    done_at: float | None = None

    @property
    def wants_failure_receipt(self) -> bool:
        return self.registered_delivery & 0x03 in (1, 2)

    @property
    def wants_intermediate(self) -> bool:
        return bool(self.registered_delivery & 0x10)


class OutcomeKind(enum.Enum):
    ACCEPTED = "accepted"  # the provider took it; a report may follow
    PERMANENT = "permanent"  # will never work: fail over or reject
    TRANSIENT = "transient"  # try again later (5xx, timeout, throttled)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a provider said to one send."""

    kind: OutcomeKind
    provider_message_id: str | None = None
    detail: str = ""
    error_code: int = 0  # for the receipt's err: field when this ends the message
    parts: int = 1
    cost: float | None = None
    state: MessageState | None = None  # a provider that reports a final state at once
    # The provider's ids of the message's other parts, for a provider that takes the parts of a
    # long message separately (an SMPP upstream): they are correlated durably with the message
    # too, so a report under any of them finds it (also after a restart).
    other_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """A provider's (or upstream's) report on a message it took."""

    provider: str
    provider_message_id: str
    state: MessageState
    error_code: int = 0
    done_at: float | None = None
    network_error: tuple[int, int] | None = None  # (type, code) for the network_error_code TLV
    #: The number the provider says the report is for, where its report carries one (iSMS's
    #: dlr-url push): a report whose number is not the message's is not applied (a forged push).
    destination: str | None = None


def same_number(a: str, b: str) -> bool:
    """Two spellings of one international number ("+49…", "0049…", "49…")."""
    return _international(a) == _international(b)


def _international(number: str) -> str:
    digits = number.strip().lstrip("+")
    return digits[2:] if digits.startswith("00") else digits


@dataclass(frozen=True, slots=True)
class Receipt:
    """A receipt to send to an ESME for one of its message ids (one per part)."""

    account: str
    message_id: str
    source: Address  # the original destination (receipts travel back)
    destination: Address  # the original source
    state: MessageState
    error_code: int
    submitted_at: float
    done_at: float
    text_head: str  # first 20 characters of the original text
    intermediate: bool = False
    network_error: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message from a handset (MO) for the account that owns the receiving number."""

    account: str
    source: Address
    destination: Address
    text: str | None
    binary: bytes = b""
    received_at: float = 0.0
    provider: str = ""
