"""smsflatrate.net: incoming SMS, forwarded by the provider to the bridge's inbound URL.

Its own module because the forwarded request has its own parameter names (several spellings per
field, :data:`INBOUND_PARAMS`) and numbering rules, apart from reports and sends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from bridge.core.model import Address, InboundMessage
from bridge.core.provider import CallbackRequest
from bridge.providers.smsflatrate.reports import BadPush
from bridge.providers.smsflatrate.settings import ALNUM_SENDER, international_digits

__all__ = ["INBOUND_PARAMS", "parse_inbound"]


# --------------------------------------------------------------------------- inbound

#: Parameter names tried for an inbound push, first one first. The document (section "SMS
#: Eingang") names none; the simulator sends the first of each.
INBOUND_PARAMS: Final[Mapping[str, tuple[str, ...]]] = {
    "sender": ("from", "sender", "absender", "number"),
    "receiver": ("to", "receiver", "empfaenger", "recipient"),
    "text": ("text", "message", "nachricht", "msg"),
    "time": ("time", "timestamp"),
}


def _first_param(request: CallbackRequest, names: Sequence[str]) -> str | None:
    for name in names:
        value = request.param(name)
        if value is not None:
            return value
    return None


def parse_inbound(
    provider: str, request: CallbackRequest, received: float, inbound_number: str
) -> InboundMessage:
    """An inbound push → :class:`InboundMessage` (account left to the bridge); raises
    :class:`BadPush`. Without a receiving number it is ``inbound_number`` (the account's
    reply number, all replies of variant 2 arrive there)."""
    sender_raw = _first_param(request, INBOUND_PARAMS["sender"])
    text = _first_param(request, INBOUND_PARAMS["text"])
    if not sender_raw or not sender_raw.strip():
        raise BadPush("sender missing")
    if text is None:
        raise BadPush("text missing")
    sender_digits = international_digits(sender_raw)
    if sender_digits is not None:
        source = Address(sender_digits, 1, 1)
    elif ALNUM_SENDER.fullmatch(sender_raw.strip()):
        source = Address(sender_raw.strip(), 5, 0)
    else:
        raise BadPush("sender is not a number")
    receiver_raw = _first_param(request, INBOUND_PARAMS["receiver"])
    receiver = inbound_number
    if receiver_raw:
        digits = international_digits(receiver_raw)
        if digits is None:
            raise BadPush("receiver is not a number")
        receiver = digits
    time_value = (_first_param(request, INBOUND_PARAMS["time"]) or "").strip()
    received_at = received
    if time_value:
        if not time_value.isdigit():
            raise BadPush("time is not a Unix time")
        received_at = float(time_value)
    return InboundMessage(
        account="",
        source=source,
        destination=Address(receiver, 1, 1),
        text=text,
        received_at=received_at,
        provider=provider,
    )


