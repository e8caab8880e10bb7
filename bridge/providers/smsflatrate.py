"""smsflatrate.net adapter (``schnittstelle.php``, interface document version 4.1, April 2016).

What the document says, and how it shapes this module:

* **One GET per message**: ``schnittstelle.php?key=…&from=…&to=…&text=…&type=…``. The answer is a
  bare return value: ``100`` (taken), optionally followed by ``,<15-digit SMS id>`` (only when
  ``status=1`` asked for a status report) and ``,<cost in euro>`` (when ``cost=1``). Every other
  value is a refusal (110–180, 231, 404). We always send ``cost=1`` so the outcome carries the
  price, and ``status=1`` only when the ESME asked for a receipt: without it there is no SMS id,
  so nothing to correlate and the message is finished ``ACCEPTD`` at once.
* **Gateway types** (``type=``) decide almost everything: which countries (1, 3, 10, 20 are
  Germany-only, 2, 4, 11, 21 worldwide, ``autoXorY`` lets the provider choose by the number),
  whether a sender is allowed (not on 3/4), the maximum length (1071, or 735 on 3/4), flash
  (3 and 10 only, 160 characters), status reports (not on 21) and replies (3/4 variant 1,
  10/11 variant 2). The gateway is a provider setting with a per-account override; for the auto
  types this module predicts the provider's choice (German = destination starting with ``49``,
  the document's own rule) to know which of those limits apply.
* **Text** is UTF-8 (the document allows ISO-8859-15 or UTF-8; UTF-8 carries everything).
  The document gives no Unicode limit; we allow as many UCS2 parts (67 characters each) as the
  GSM limit allows 153-septet parts (1071 = 7 × 153 → 469; 735 → 5 parts → 335).
* **Scheduling** (``time=TT.MM.JJJJ-SS:MM``, provider time = Europe/Berlin, minute resolution):
  mapped natively by default, rounded *up* to the next minute (SMPP schedule_delivery_time means
  "not before"). The provider gives no status report for scheduled SMS, so a scheduled message
  is finished ``ACCEPTD`` once the provider has taken it. ``native_scheduling = false`` makes the
  bridge hold scheduled messages instead; they then get real receipts.
* **Reports** arrive by the account's push URL (set in the smsflatrate customer center, not per
  message) with the placeholders ``[message_id] [status] [time] [uid]``, or by polling
  ``status.php?id=`` (up to 14 days; ``109`` after that). Codes 101 delivered, 102 not yet,
  103 probably undeliverable, 104 not delivered within 48 h, 109 unknown/expired id.
* **Inbound SMS** are pushed to a URL set in the inbound customer center. The document names no
  parameters for that push, so :func:`parse_inbound` accepts the obvious names (``from``/``to``/
  ``text``/``time`` and a few aliases) and the simulator uses the first of each.
* **Bulk** (``bulk=1``: up to 50 numbers separated by ``;``, one request, all gateways) is used
  only with ``bulk = "unreported"`` or ``"all"`` (default ``"off"``): messages queued together
  with the same text, sender and options go in one request (:meth:`SmsflatrateProvider.
  send_batch`). The document rules out status reports, auto types and replies for bulk SMS, so
  the effective gateway (1/2 …) is sent instead of ``autoXorY``, a message with ``reply`` never
  goes in bulk, and every bulk destination is finished ``ACCEPTD`` once taken ("unreported":
  only messages that would get no report anyway — no receipt asked for, or scheduled — go in
  bulk; "all": also those that asked, whose receipt then is ``ACCEPTD``). The reply is one return
  value for the request: a refusal is every destination's outcome (it names no number).
* **Rate limit**: 10 requests per second (the Settings default). The document names no reply
  for an exceeded limit; HTTP 429 is transient in the base class, which is what a limit means.

Error codes: a refusal's ``err:`` is the provider's own return value. Bridge-defined values:
1 = the adapter cannot express the message (see :class:`Unsendable`), 2 = a reply we cannot
read, 3 = an HTTP refusal (4xx) without a return value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from pydantic import BeforeValidator, Field, field_validator

from bridge.core.model import (
    Address,
    DeliveryReport,
    InboundMessage,
    Message,
    MessageState,
    Outcome,
    OutcomeKind,
)
from bridge.core.provider import (
    CallbackKind,
    CallbackReply,
    CallbackRequest,
    Capabilities,
    Provider,
    ProviderContext,
)
from bridge.providers.bulk import AloneIds, must_go_alone, split_outcome
from bridge.providers.http import HttpError, HttpRequest, HttpResponse
from bridge.providers.http_provider import (
    ERR_UNSENDABLE,
    HttpProvider,
    Unsendable,
    classify_http_status,
)
from bridge.providers.settings import HttpProviderSettings, NonNegFloat, Secret
from bridge.smpp.text import gsm7_septet_count, is_gsm7

__all__ = [
    "ERR_HTTP_REFUSAL",
    "ERR_UNEXPECTED_REPLY",
    "GATEWAYS",
    "INBOUND_PARAMS",
    "MAX_BULK",
    "PUSH_QUERY",
    "REPORT_CODES",
    "SEND_CODES",
    "GatewayInfo",
    "Settings",
    "SmsflatrateProvider",
    "build_health_request",
    "build_send_request",
    "build_status_request",
    "bulk_key",
    "bulk_params",
    "capabilities_for",
    "create",
    "effective_gateway",
    "format_time",
    "parse_balance",
    "parse_inbound",
    "parse_push",
    "parse_send_reply",
    "parse_status_reply",
    "push_url",
    "report_state",
    "send_params",
    "split_bulk_outcome",
    "status_url_for",
]

log = structlog.get_logger("bridge.providers.smsflatrate")

#: Bridge-defined ``err:`` values (the provider's own codes are 100–404).
ERR_UNEXPECTED_REPLY: Final = 2
ERR_HTTP_REFUSAL: Final = 3

#: The number smsflatrate.net gives for inbound variant 2 (reply=2 on gateways 10/11).
DOCUMENTED_REPLY_NUMBER: Final = "491624675000"

# --------------------------------------------------------------------------- gateways

Gateway = Literal[
    "1", "2", "3", "4", "10", "11", "20", "21",
    "auto1or2", "auto3or4", "auto10or11", "auto20or21",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """What the document's gateway overview says about one fixed gateway type."""

    germany_only: bool
    sender: bool  # "from=" possible (gateways 1, 2, 10, 11; 20/21 assumed like 1/2)
    max_chars: int  # "Zeichenzahl maximal" (GSM characters)
    flash: bool  # "flash=1" possible (3 and 10)
    status: bool  # "status=1" possible (1, 2, 3, 4, 10, 11, 20 — not 21)
    reply: int  # reply variant the gateway takes (1 on 3/4, 2 on 10/11, 0 none)

    @property
    def max_ucs2_chars(self) -> int:
        """No Unicode limit is documented: as many 67-character parts as 153-septet ones."""
        return math.ceil(self.max_chars / 153) * 67


GATEWAYS: Final[Mapping[str, GatewayInfo]] = {
    "1": GatewayInfo(True, True, 1071, False, True, 0),
    "2": GatewayInfo(False, True, 1071, False, True, 0),
    "3": GatewayInfo(True, False, 735, True, True, 1),
    "4": GatewayInfo(False, False, 735, False, True, 1),
    "10": GatewayInfo(True, True, 1071, True, True, 2),
    "11": GatewayInfo(False, True, 1071, False, True, 2),
    # 20/21 are in the type lists but not in this document's overview table: assumed like 1/2.
    "20": GatewayInfo(True, True, 1071, False, True, 0),
    "21": GatewayInfo(False, True, 1071, False, False, 0),
}

#: autoXorY → (German gateway, worldwide gateway).
AUTO_TYPES: Final[Mapping[str, tuple[str, str]]] = {
    "auto1or2": ("1", "2"),
    "auto3or4": ("3", "4"),
    "auto10or11": ("10", "11"),
    "auto20or21": ("20", "21"),
}

#: Flash SMS are limited to one SMS: 160 GSM characters (the document), 70 UCS2 (one part).
FLASH_MAX_GSM: Final = 160
FLASH_MAX_UCS2: Final = 70


def effective_gateway(gateway: str, destination: str) -> str:
    """The fixed gateway a message goes through: the setting, or for an auto type the one the
    provider picks (German mobile numbers, ``49…``, on the German gateway)."""
    pair = AUTO_TYPES.get(gateway)
    if pair is None:
        return gateway
    return pair[0] if destination.startswith("49") else pair[1]


def _possible_gateways(gateway: str) -> list[GatewayInfo]:
    pair = AUTO_TYPES.get(gateway)
    return [GATEWAYS[g] for g in (pair or (gateway,))]


# --------------------------------------------------------------------------- settings


def _gateway_value(value: Any) -> Any:
    """``gateway = 10`` and ``gateway = "10"`` both work (TOML users write either)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


GatewaySetting = Annotated[Gateway, BeforeValidator(_gateway_value)]


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "smsflatrate"``.

    ``key`` is the "Schnittstellen-Key" from the customer center. ``gateway`` is the ``type=``
    used for every message, ``account_gateways`` overrides it per SMPP account (system_id).
    ``push_reports``: the account's push URL points at this bridge (see docs/providers/
    smsflatrate.md); false → reports are polled from ``status_url`` (default: ``status.php``
    next to ``base_url``).
    """

    type: Literal["smsflatrate"]
    base_url: str = "https://www.smsflatrate.net/schnittstelle.php"
    status_url: str | None = None
    key: Secret
    gateway: GatewaySetting = "auto1or2"
    account_gateways: dict[str, GatewaySetting] = Field(default_factory=dict)
    push_reports: bool = True
    native_scheduling: bool = True
    timezone: str = "Europe/Berlin"
    unsupported_flash: Literal["send_normal", "refuse"] = "send_normal"
    reply: Literal[0, 1, 2] = 0
    reply_number: str = DOCUMENTED_REPLY_NUMBER
    inbound_number: str = DOCUMENTED_REPLY_NUMBER
    requests_per_second: NonNegFloat = 10.0  # "max. 10 request per second"
    concurrency: Annotated[int, Field(ge=1)] = 10
    # bulk=1 for messages queued together with the same text and sender (up to 50 numbers a
    # request): "off"; "unreported": only messages that get no status report anyway; "all".
    bulk: Literal["off", "unreported", "all"] = "off"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("reply_number", "inbound_number")
    @classmethod
    def _digits(cls, value: str) -> str:
        digits = _international_digits(value)
        if digits is None:
            raise ValueError("must be an international number (+49…, 0049… or 49…)")
        return digits

    def gateway_for(self, account: str) -> str:
        return self.account_gateways.get(account, self.gateway)

    def all_gateways(self) -> list[str]:
        return [self.gateway, *self.account_gateways.values()]


def capabilities_for(settings: Settings) -> Capabilities:
    """The limits every configured gateway (default and per-account) can meet."""
    infos = [info for g in settings.all_gateways() for info in _possible_gateways(g)]
    flash = settings.unsupported_flash == "send_normal" or any(i.flash for i in infos)
    return Capabilities(
        max_gsm7_chars=min(i.max_chars for i in infos),
        max_ucs2_chars=min(i.max_ucs2_chars for i in infos),
        unicode=True,
        binary=False,
        flash=flash,
        scheduling=settings.native_scheduling,
        # 3/4 send without sender; an alphanumeric one is simply not shown there.
        alphanumeric_sender=True,
        max_sender_chars=11,
        reports="push" if settings.push_reports else "poll",
        requests_per_second=settings.requests_per_second,
        concurrency=settings.concurrency,
        max_batch=1 if settings.bulk == "off" else MAX_BULK,
    )


# --------------------------------------------------------------------------- sending

_ALNUM = re.compile(r"[A-Za-z0-9]{1,11}")


def _international_digits(number: str) -> str | None:
    """``+49…``/``0049…``/``49…`` → ``49…`` (None when it is not a number)."""
    value = number.strip()
    if value.startswith("+"):
        value = value[1:]
    elif value.startswith("00"):
        value = value[2:]
    return value if value.isdigit() and 6 <= len(value) <= 15 else None


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
    return text if _ALNUM.fullmatch(text) else None


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


#: "Maximale Anzahl der Handynummern: 50" per bulk request.
MAX_BULK: Final = 50
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

_CODE = re.compile(r"\d{3}")


def parse_send_reply(body: str) -> Outcome:
    """The outcome of a send's reply body.

    ``100`` / ``100,<id>`` / ``100,<cost>`` / ``100,<id>,<cost>``: taken. The 15-digit SMS id
    (present only with ``status=1``) is told from the cost by its form (digits only, no point).
    Without an id no report can ever be matched, so the outcome is final ``ACCEPTED`` at once.
    """
    fields = [f.strip() for f in body.strip().lstrip("\ufeff").split(",")]
    head = fields[0]
    if not _CODE.fullmatch(head):
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


# --------------------------------------------------------------------------- reports


#: Report codes (push ``[status]`` and ``status.php``) → (state, err).
REPORT_CODES: Final[Mapping[int, tuple[MessageState, int]]] = {
    101: (MessageState.DELIVERED, 0),
    102: (MessageState.ENROUTE, 102),  # not delivered yet (phone off …)
    103: (MessageState.UNDELIVERABLE, 103),  # wrong number, SIM not active
    104: (MessageState.EXPIRED, 104),  # still not delivered after 48 hours
    109: (MessageState.UNKNOWN, 109),  # id expired (> 14 days) or invalid
}


def report_state(code: int) -> tuple[MessageState, int] | None:
    """(state, err) for a report code, None for one the document does not list."""
    return REPORT_CODES.get(code)


def status_url_for(settings: Settings) -> str:
    """``status.php`` next to ``schnittstelle.php`` unless ``status_url`` says otherwise."""
    if settings.status_url:
        return settings.status_url
    base = settings.base_url.split("?", 1)[0]
    head, sep, _last = base.rpartition("/")
    return f"{head}/status.php" if sep else "status.php"


def build_status_request(status_url: str, provider_id: str) -> HttpRequest:
    """``status.php?id=<SMS id>`` (the document's "manuelle Status-Abfrage"; no key)."""
    return HttpRequest("GET", status_url, params=[("id", provider_id)])


def parse_status_reply(
    provider: str, provider_id: str, body: str, received: float
) -> DeliveryReport | None:
    """``101,1234567890[,uid=…]`` → a report (None for an unreadable or unknown code).

    The Unix time after the code is when the handset received it; missing, we use ``received``.
    """
    fields = [f.strip() for f in body.strip().lstrip("\ufeff").split(",")]
    if not _CODE.fullmatch(fields[0]):
        return None
    mapped = report_state(int(fields[0]))
    if mapped is None:
        return None
    done_at = received
    if len(fields) > 1 and fields[1].isdigit() and int(fields[1]) > 0:
        done_at = float(fields[1])
    state, err = mapped
    return DeliveryReport(provider, provider_id, state, err, done_at)


#: The query the account's push URL needs after the bridge's report callback URL.
PUSH_QUERY: Final = "id=[message_id]&status=[status]&time=[time]&uid=[uid]"


def push_url(callback_url: str) -> str:
    """What to enter as "Push-URL" in the smsflatrate customer center."""
    sep = "&" if "?" in callback_url else "?"
    return f"{callback_url}{sep}{PUSH_QUERY}"


class BadPush(ValueError):
    """A push we cannot use (4xx, nothing changed)."""


def parse_push(provider: str, request: CallbackRequest, received: float) -> DeliveryReport:
    """A status push (``id``, ``status``, ``time``, ``uid``) → report; raises :class:`BadPush`.

    The SMS id is the 15-digit one the send returned; ``status`` one of the report codes;
    ``time`` (Unix) may be empty when the provider has no reception time yet.
    """
    provider_id = (request.param("id") or "").strip()
    status = (request.param("status") or "").strip()
    if not provider_id.isdigit():
        raise BadPush("id missing or not an SMS id")
    if not _CODE.fullmatch(status):
        raise BadPush("status missing or not a return value")
    mapped = report_state(int(status))
    if mapped is None:
        raise BadPush(f"unknown status {status}")
    time_value = (request.param("time") or "").strip()
    done_at = received
    if time_value:
        if not time_value.isdigit():
            raise BadPush("time is not a Unix time")
        if int(time_value) > 0:
            done_at = float(time_value)
    state, err = mapped
    return DeliveryReport(provider, provider_id, state, err, done_at)


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
    sender_digits = _international_digits(sender_raw)
    if sender_digits is not None:
        source = Address(sender_digits, 1, 1)
    elif _ALNUM.fullmatch(sender_raw.strip()):
        source = Address(sender_raw.strip(), 5, 0)
    else:
        raise BadPush("sender is not a number")
    receiver_raw = _first_param(request, INBOUND_PARAMS["receiver"])
    receiver = inbound_number
    if receiver_raw:
        digits = _international_digits(receiver_raw)
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


# --------------------------------------------------------------------------- health


def build_health_request(settings: Settings, key: str) -> HttpRequest:
    """``request=credits``: the balance in euro (and a check of the key)."""
    return HttpRequest("GET", settings.base_url, params=[("key", key), ("request", "credits")])


def parse_balance(body: str) -> tuple[bool, float | None]:
    """``145.1500`` → (True, 145.15); a return value such as ``110`` → (False, None)."""
    text = body.strip().lstrip("\ufeff")
    if _CODE.fullmatch(text) and int(text) in SEND_CODES:
        return False, None
    try:
        value = float(text)
    except ValueError:
        return False, None
    if not math.isfinite(value):
        return False, None
    return True, value


# --------------------------------------------------------------------------- the provider


class SmsflatrateProvider(HttpProvider):
    """smsflatrate.net over ``schnittstelle.php`` (see the module docstring)."""

    callback_kinds: tuple[CallbackKind, ...] = ("report", "inbound")
    #: What the Push-URL entered in the customer center must end in: smsflatrate fills in these
    #: placeholders (the interface document, "Status Übermittlung per Push-URL"); a push to the
    #: bare URL carries no id or status.
    callback_url_suffixes: ClassVar[dict[str, str]] = {"report": f"?{PUSH_QUERY}"}

    def __init__(self, name: str, settings: Settings, ctx: ProviderContext) -> None:
        super().__init__(name, settings, ctx, capabilities_for(settings))
        self.config = settings
        self.status_url = status_url_for(settings)
        #: Message ids that must not go in bulk again (a bulk refusal named none of them).
        self._alone = AloneIds()

    def _key(self) -> str:
        return self.config.key.get_secret_value()

    # ------------------------------------------------------------------ sending
    def build_send(self, message: Message) -> HttpRequest:
        return build_send_request(message, self.config, self._key(), self.ctx.clock())

    def parse_send(self, message: Message, response: HttpResponse) -> Outcome:
        if not 200 <= response.status < 300:
            return Outcome(
                OutcomeKind.PERMANENT,
                detail=f"HTTP {response.status}",
                error_code=ERR_HTTP_REFUSAL,
            )
        return parse_send_reply(response.text())

    # ------------------------------------------------------------------ bulk
    def batch_key(self, message: Message) -> Hashable | None:
        if message.id in self._alone:
            return None
        return bulk_key(message, self.config, self._key(), self.ctx.clock())

    async def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """``bulk=1`` requests of at most 50 numbers for messages sharing a :meth:`batch_key`
        (the dispatcher hands at most ``max_batch``, so one request)."""
        return await self.send_chunks(messages, MAX_BULK, self._bulk_request, self._split_bulk)

    def _bulk_request(self, chunk: Sequence[Message]) -> HttpRequest:
        params = bulk_params(chunk, self.config, self._key(), self.ctx.clock())
        return HttpRequest("GET", self.config.base_url, params=params, charset="utf-8")

    def _split_bulk(self, chunk: Sequence[Message], outcome: Outcome) -> list[Outcome]:
        split = split_bulk_outcome(outcome, len(chunk))
        if must_go_alone(split, PER_NUMBER_CODES):
            self._alone.add([m.id for m in chunk])  # their retries go one by one
        return split

    # ------------------------------------------------------------------ health
    def build_health(self) -> HttpRequest | None:
        return build_health_request(self.config, self._key())

    def parse_health(self, response: HttpResponse) -> tuple[bool, float | None]:
        if not 200 <= response.status < 300:
            return False, None
        return parse_balance(response.text())

    # ------------------------------------------------------------------ reports
    def push_url(self) -> str | None:
        """The account's "Push-URL" for this bridge (None without an HTTP server)."""
        url = self.ctx.callback_url("report")
        return push_url(url) if url is not None else None

    async def poll(self, messages: Sequence[Message]) -> list[DeliveryReport]:
        """One ``status.php`` call per message with an SMS id; stops at the first call that
        gets no usable answer (the provider is down or throttling: the next sweep retries)."""
        reports: list[DeliveryReport] = []
        for message in messages:
            provider_id = message.provider_message_id
            if not provider_id or not provider_id.isdigit():
                continue
            try:
                # Polls share the documented limit with sends (self.limiter, bridge.ratelimit).
                response = await self.paced_call(build_status_request(self.status_url, provider_id))
            except HttpError as exc:
                log.debug("smsflatrate_poll_failed", provider=self.name, reason=exc.reason)
                break
            if classify_http_status(response.status) is not None:
                log.debug("smsflatrate_poll_failed", provider=self.name, status=response.status)
                break
            if not 200 <= response.status < 300:
                continue
            report = parse_status_reply(self.name, provider_id, response.text(), self.ctx.clock())
            # 102 ("not yet") changes nothing: the dispatcher polls again later.
            if report is not None and report.state.is_final:
                reports.append(report)
        return reports

    async def handle_callback(self, kind: CallbackKind, request: CallbackRequest) -> CallbackReply:
        now = self.ctx.clock()
        try:
            if kind == "report":
                report = parse_push(self.name, request, now)
                if self.reports is None:
                    return CallbackReply(503, "not started")
                await self.reports(report)
                return CallbackReply()
            inbound = parse_inbound(self.name, request, now, self.config.inbound_number)
        except BadPush as exc:
            # Names only, never values (texts, numbers): enough to see an unexpected format.
            names = sorted({*request.query, *request.form})
            log.warning("smsflatrate_push_refused", kind=kind, reason=str(exc), params=names)
            return CallbackReply(400, f"bad request: {exc}")
        if self.inbound is None:
            return CallbackReply(503, "not started")
        await self.inbound(inbound)
        return CallbackReply()


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    return SmsflatrateProvider(name, settings, ctx)
