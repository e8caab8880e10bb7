"""What the sans-IO SMPP sessions tell the asyncio layer above them: one set of event classes.

Both roles — :class:`~bridge.smpp.session.ServerSession` (we are the SMSC) and
:class:`~bridge.smpp.client_session.ClientSession` (we are the ESME toward an upstream) — return
lists of these from ``receive_data`` and ``handle_timers``. The events both roles have
(responses, timeouts, unbind, close, violations) are one class each, defined once here, and so is
the one :class:`BindType` of the SMPP layer (``bridge.core.accounts`` keeps its own: the core may
not import the SMPP layer).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from bridge.smpp.pdu import Pdu

__all__ = [
    "BindFailed",
    "BindRequested",
    "BindType",
    "Bound",
    "ConnectionClosed",
    "DeliverRequested",
    "MessageRequest",
    "ProtocolViolation",
    "ResponseReceived",
    "ResponseTimedOut",
    "Unbound",
]


class BindType(enum.StrEnum):
    TRANSMITTER = "transmitter"
    RECEIVER = "receiver"
    TRANSCEIVER = "transceiver"


# --------------------------------------------------------------------------- both roles


@dataclass(slots=True)
class ResponseReceived:
    """The answer (or a generic_nack) to a request we sent, with the context given at send time.

    ``request`` is the request it answers (not part of equality: the response and the context
    say which one)."""

    pdu: Pdu
    context: Any
    request: Pdu | None = field(default=None, compare=False, repr=False)


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


# --------------------------------------------------------------------------- SMSC role


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


# --------------------------------------------------------------------------- ESME role


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
class DeliverRequested:
    """deliver_sm or data_sm from the SMSC: answer with :meth:`ClientSession.respond`."""

    pdu: Pdu
