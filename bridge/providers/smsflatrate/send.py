"""smsflatrate.net: sending through ``schnittstelle.php`` — single and bulk requests, the
return values, and the balance call on the same script.

The MT half of the adapter as pure functions: the request from a message (numbers, sender, text
mode and length per gateway, schedule time), the ``bulk=1`` grouping and the split of one bulk
answer into each number's outcome, and :data:`SEND_CODES` for every documented return value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo

from bridge.core.model import Address, Message, MessageState, Outcome, OutcomeKind
from bridge.providers.bulk import split_outcome
from bridge.providers.http import HttpRequest
from bridge.providers.http_provider import ERR_UNSENDABLE, Unsendable
from bridge.providers.smsflatrate.settings import (
    ALNUM_SENDER,
    FLASH_MAX_GSM,
    FLASH_MAX_UCS2,
    GATEWAYS,
    Settings,
    effective_gateway,
)
from bridge.smpp.text import gsm7_septet_count, is_gsm7

__all__ = [
    "CODE_RE",
    "ERR_HTTP_REFUSAL",
    "ERR_UNEXPECTED_REPLY",
    "PER_NUMBER_CODES",
    "SEND_CODES",
    "SendCode",
    "build_health_request",
    "build_send_request",
    "bulk_key",
    "bulk_params",
    "format_time",
    "parse_balance",
    "parse_send_reply",
    "send_params",
    "split_bulk_outcome",
]


#: Bridge-defined ``err:`` values (the provider's own codes are 100–404).
ERR_UNEXPECTED_REPLY: Final = 2
ERR_HTTP_REFUSAL: Final = 3

# --------------------------------------------------------------------------- sending


def _sender_value(source: Address) -> str | None:
    """``from=`` for a sender, or None when the document's rules refuse it: "maximal 16
    Ziffern" (international numbers as ``0049…``, others as the ESME sent them), or "maximal 11
    Buchstaben" / letters with digits, without spaces, umlauts or other special characters."""
    text = source.digits
    if source.ton != 5 and text.isdigit():
        if source.ton == 1:
            numeric = "00" + text
            return numeric if len(numeric) <= 16 else f"+{text}"  # E.164: at most 15 digits
        return text if len(text) <= 16 else None
    return text if ALNUM_SENDER.fullmatch(text) else None


def format_time(when: float, zone: ZoneInfo) -> str:
    """``TT.MM.JJJJ-SS:MM`` in the provider's time zone, rounded up to the next whole minute
    (schedule_delivery_time means "not before"; the format has no seconds)."""
    minute = math.ceil(when / 60) * 60
    return datetime.fromtimestamp(minute, zone).strftime("%d.%m.%Y-%H:%M")


def _length(text: str, unicode: bool) -> int:
    return len(text.encode("utf-16-le")) // 2 if unicode else gsm7_septet_count(text)


def send_params(
    message: Message, settings: Settings, key: str, now: float
) -> list[tuple[str, str]]:
    """The ``schnittstelle.php`` parameters for ``message`` (raises :class:`Unsendable`).

    Pure: everything comes from the message, the settings, the key and ``now``.
    """
    if message.text is None:
        raise Unsendable("smsflatrate.net sends text only, not binary")
    text = message.text
    gateway_setting = settings.gateway_for(message.account)
    gateway = effective_gateway(gateway_setting, message.destination.digits)
    info = GATEWAYS[gateway]
    unicode = message.data_coding == 0x08 or not is_gsm7(text)
    length = _length(text, unicode)
    limit = info.max_ucs2_chars if unicode else info.max_chars
    if length > limit:
        raise Unsendable(f"{length} characters, gateway {gateway} takes at most {limit}")
    if not text:
        raise Unsendable("empty text (return value 133)", 133)

    to = "00" + message.destination.digits
    if not message.destination.digits.isdigit() or len(to) < 8:
        raise Unsendable("destination must have at least 8 digits (return value 131)", 131)

    scheduled = (
        settings.native_scheduling and message.schedule_at is not None and message.schedule_at > now
    )
    # Replies: only on the gateways of the chosen variant, and "nicht möglich mit ...
    # terminierten SMS".
    reply = settings.reply if info.reply == settings.reply and not scheduled else 0

    params: list[tuple[str, str]] = [("key", key)]
    if info.sender:
        # reply=2: "Parameter from muss eine Nummer aus unserem Nummernpool sein".
        sender = "00" + settings.reply_number if reply == 2 else _sender_value(message.source)
        if sender is None:
            raise Unsendable(
                "sender must be up to 11 letters/digits or up to 16 digits (return value 132)",
                132,
            )
        params.append(("from", sender))
    params += [("to", to), ("text", text), ("type", gateway_setting)]

    if message.flash:
        flash_limit = FLASH_MAX_UCS2 if unicode else FLASH_MAX_GSM
        if info.flash and length <= flash_limit:
            params.append(("flash", "1"))
        elif settings.unsupported_flash == "refuse":
            why = f"gateway {gateway} has no flash" if not info.flash else "flash > 1 SMS"
            raise Unsendable(f"flash SMS not possible: {why}", ERR_UNSENDABLE)

    if scheduled:
        assert message.schedule_at is not None
        params.append(("time", format_time(message.schedule_at, ZoneInfo(settings.timezone))))
    # Status reports are "nicht möglich mit ... terminierten SMS" and not on gateway 21.
    wants_report = message.wants_failure_receipt or message.wants_intermediate
    status = wants_report and info.status and not scheduled
    if status:
        params.append(("status", "1"))
    if reply:
        params.append(("reply", str(reply)))
    params += [("uid", message.id), ("cost", "1")]
    return params


#: Refusals of a bulk request that concern one of its numbers, which the reply does not name:
#: each destination is then retried on its own (131 receiver not correct; 150 a foreign number
#: on a Germany-only gateway), so only the bad numbers fail.
PER_NUMBER_CODES: Final = frozenset({131, 150})
#: Parameters that differ between the destinations of one bulk request (or are dropped in it).
_PER_DESTINATION = frozenset({"to", "uid", "status", "type"})


def bulk_key(
    message: Message, settings: Settings, key: str, now: float
) -> tuple[tuple[str, str], ...] | None:
    """What messages must share to go in one ``bulk=1`` request (None: this one goes alone).

    Everything but the number: sender, text, flash, time, and the *effective* gateway ("Die
    Auto-Type-Funktion funktioniert nur für Einzel-SMS"). A message the adapter cannot send,
    one with ``reply`` ("nicht möglich mit … Massen-SMS"), and with ``bulk = "unreported"`` one
    that would get a status report, go alone.
    """
    if settings.bulk == "off":
        return None
    try:
        params = send_params(message, settings, key, now)
    except Unsendable:
        return None
    names = {name for name, _ in params}
    if "reply" in names or ("status" in names and settings.bulk != "all"):
        return None
    gateway = effective_gateway(settings.gateway_for(message.account), message.destination.digits)
    kept = tuple((n, v) for n, v in params if n not in _PER_DESTINATION and n != "key")
    return (*kept, ("type", gateway))


def bulk_params(
    messages: Sequence[Message], settings: Settings, key: str, now: float
) -> list[tuple[str, str]]:
    """One ``bulk=1`` request for messages with the same :func:`bulk_key`: the first one's
    parameters, ``to`` = every number joined by ``;``, the effective gateway, no ``status``
    and no ``uid`` (bulk SMS get no status report), ``bulk=1``."""
    first = messages[0]
    params = send_params(first, settings, key, now)
    gateway = effective_gateway(settings.gateway_for(first.account), first.destination.digits)
    to = ";".join("00" + m.destination.digits for m in messages)
    out: list[tuple[str, str]] = []
    for name, value in params:
        if name in ("status", "uid"):
            continue
        if name == "to":
            value = to
        elif name == "type":
            value = gateway
        out.append((name, value))
        if name == "type":
            out.append(("bulk", "1"))
    return out


def split_bulk_outcome(outcome: Outcome, count: int) -> list[Outcome]:
    """Each destination's outcome from the one reply to a bulk request (bridge.providers.bulk):
    taken → final ``ACCEPTD`` (bulk SMS get no status report) with an equal share of the cost;
    131/150 (:data:`PER_NUMBER_CODES`) → each number again on its own; any other answer is
    every destination's outcome."""
    return split_outcome(
        outcome,
        count,
        per_number_codes=PER_NUMBER_CODES,
        taken=f"taken in a bulk request for {count} numbers; no report will follow",
    )


def build_send_request(message: Message, settings: Settings, key: str, now: float) -> HttpRequest:
    """The GET that sends ``message`` (see :func:`send_params`)."""
    params = send_params(message, settings, key, now)
    return HttpRequest("GET", settings.base_url, params=params, charset="utf-8")


@dataclass(frozen=True, slots=True)
class SendCode:
    """How one return value of the send call ends the attempt."""

    kind: OutcomeKind
    meaning: str


#: Every documented return value of ``schnittstelle.php`` except 100 (taken). 101–109 are
#: report codes and never answer a send; any value not listed here (those included) is a
#: permanent refusal with the value as ``err:``.
SEND_CODES: Final[Mapping[int, SendCode]] = {
    110: SendCode(OutcomeKind.PERMANENT, "wrong gateway key or account locked"),
    # Topping up fixes it: retried until the message's validity ends (or failover_after).
    120: SendCode(OutcomeKind.TRANSIENT, "not enough credits"),
    130: SendCode(OutcomeKind.PERMANENT, "incorrect data (e.g. sender missing)"),
    131: SendCode(OutcomeKind.PERMANENT, "receiver number not correct"),
    132: SendCode(OutcomeKind.PERMANENT, "sender id not correct"),
    133: SendCode(OutcomeKind.PERMANENT, "text not correct"),
    140: SendCode(OutcomeKind.PERMANENT, "wrong AppKey or account locked"),
    150: SendCode(OutcomeKind.PERMANENT, "international number on a Germany-only gateway"),
    170: SendCode(OutcomeKind.PERMANENT, "time= not correct"),
    171: SendCode(OutcomeKind.PERMANENT, "time= more than 360 days ahead"),
    180: SendCode(OutcomeKind.PERMANENT, "account not fully activated / volume limit"),
    231: SendCode(OutcomeKind.PERMANENT, "smsflatrate.net group not available"),
    # "Unknown error, contact support": the provider's fault, like an HTTP 5xx.
    404: SendCode(OutcomeKind.TRANSIENT, "unknown error at smsflatrate.net"),
}

CODE_RE = re.compile(r"\d{3}")


def parse_send_reply(body: str) -> Outcome:
    """The outcome of a send's reply body.

    ``100`` / ``100,<id>`` / ``100,<cost>`` / ``100,<id>,<cost>``: taken. The 15-digit SMS id
    (present only with ``status=1``) is told from the cost by its form (digits only, no point).
    Without an id no report can ever be matched, so the outcome is final ``ACCEPTED`` at once.
    """
    fields = [f.strip() for f in body.strip().lstrip("\ufeff").split(",")]
    head = fields[0]
    if not CODE_RE.fullmatch(head):
        return Outcome(
            OutcomeKind.TRANSIENT,
            detail="unexpected reply (no return value)",
            error_code=ERR_UNEXPECTED_REPLY,
        )
    code = int(head)
    if code == 100:
        provider_id: str | None = None
        cost: float | None = None
        for field in fields[1:]:
            if field.isdigit() and len(field) >= 6 and provider_id is None:
                provider_id = field
            else:
                try:
                    cost = float(field)
                except ValueError:
                    continue  # an unreadable cost does not undo a taken message
        if provider_id is None:
            return Outcome(
                OutcomeKind.ACCEPTED,
                detail="taken; no report will follow",
                cost=cost,
                state=MessageState.ACCEPTED,
            )
        return Outcome(OutcomeKind.ACCEPTED, provider_message_id=provider_id, cost=cost)
    known = SEND_CODES.get(code)
    if known is None:
        return Outcome(OutcomeKind.PERMANENT, detail=f"return value {code}", error_code=code)
    return Outcome(known.kind, detail=f"{code} {known.meaning}", error_code=code)


# --------------------------------------------------------------------------- health


def build_health_request(settings: Settings, key: str) -> HttpRequest:
    """``request=credits``: the balance in euro (and a check of the key)."""
    return HttpRequest("GET", settings.base_url, params=[("key", key), ("request", "credits")])


def parse_balance(body: str) -> tuple[bool, float | None]:
    """``145.1500`` → (True, 145.15); a return value such as ``110`` → (False, None)."""
    text = body.strip().lstrip("\ufeff")
    if CODE_RE.fullmatch(text) and int(text) in SEND_CODES:
        return False, None
    try:
        value = float(text)
    except ValueError:
        return False, None
    if not math.isfinite(value):
        return False, None
    return True, value


