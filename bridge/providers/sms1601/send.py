"""1601SMS: sending through ``gateway.php`` — single and bulk requests, the error codes, and
the credit balance.

The MT half of the adapter as pure functions: sender, text and schedule checks, the request, the
bulk grouping, and the reply (``OK`` with ids, or an error code of :data:`ERRORS`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime, tzinfo
from typing import Literal

from bridge.core.model import Address, Message, MessageState, Outcome, OutcomeKind
from bridge.providers.http import HttpRequest
from bridge.providers.http_provider import Unsendable
from bridge.providers.sms1601.settings import (
    LONG_MAX_SEPTETS,
    LONG_PART_SEPTETS,
    MAX_NAME_CHARS,
    MAX_NUMBER_DIGITS,
    MAX_REFERENCE_CHARS,
    SINGLE_MAX_SEPTETS,
    Account,
    credentials,
)
from bridge.smpp.text import TextError, gsm7_septet_count

__all__ = [
    "ERRORS",
    "PER_NUMBER_ERRORS",
    "build_bulk_request",
    "build_credits_request",
    "build_send_request",
    "bulk_key",
    "format_datum",
    "format_sender",
    "gsm_septets",
    "parse_credits_reply",
    "parse_send_reply",
    "text_parts",
]


# --------------------------------------------------------------------------- error codes

_P = OutcomeKind.PERMANENT
_T = OutcomeKind.TRANSIENT

#: Every error code of the page → (outcome kind, meaning). Transient: what goes away without a
#: change on our side — the gateway's own trouble (120, 150), credits and payment (108, 115:
#: retried with backoff until topped up or the validity ends; ``[pipeline] failover_after``
#: moves on sooner) and a schedule that became past in flight (121, see the module docstring).
#: Everything else is about the message, the account's permissions or our config and will not
#: change by retrying: permanent (the next provider of the route, else REJECTD with err = code).
#: 122–126 answer calls we never make (outbox, reports, groups); should one come back from a
#: send anyway it is permanent like any refusal.
ERRORS: dict[int, tuple[OutcomeKind, str]] = {
    100: (_P, "username is empty"),
    101: (_P, "password is empty"),
    102: (_P, "message has no content"),
    103: (_P, "mobile number has no content"),
    104: (_P, "no valid username/password combination"),
    105: (_P, "message longer than 160 characters"),
    106: (_P, "no valid mobile number"),
    107: (_P, "country not enabled for this account"),
    108: (_T, "not enough credits left"),
    109: (_P, "sender name is empty"),
    110: (_P, "a sender number must start with +"),
    111: (_P, "sender name longer than 12 characters"),
    112: (_P, "no valid country code"),
    113: (_P, "sender contains characters not allowed on all networks"),
    114: (_P, "country not permitted"),
    115: (_T, "account blocked until payment is received"),
    116: (_P, "account blocked"),
    117: (_P, "sender name not allowed"),
    118: (_P, "long message longer than 459 characters"),
    119: (_P, "no long messages to this country"),
    120: (_T, "problem with the gateway"),
    121: (_T, "scheduled date is in the past or not correct"),
    122: (_P, "no matching message in the outbox"),
    123: (_P, "report request without a number"),
    124: (_P, "report request without a valid number"),
    125: (_P, "group not found"),
    126: (_P, "group is empty"),
    150: (_T, "system down for maintenance"),
}

#: Errors that concern one number of a request: in a bulk request each number is then sent
#: again on its own (invalid number, country not enabled / no valid country code / not
#: permitted, no long messages to this country).
PER_NUMBER_ERRORS: frozenset[int] = frozenset({106, 107, 112, 114, 119})


# --------------------------------------------------------------------------- GSM 03.38


def gsm_septets(text: str) -> int | None:
    """Septets ``text`` takes in GSM 03.38, or None when a character is not in the alphabet
    (the tree's one GSM 03.38 table, :mod:`bridge.smpp.text`)."""
    try:
        return gsm7_septet_count(text)
    except TextError:
        return None


def text_parts(septets: int) -> int:
    """SMS the gateway makes of a text of ``septets`` (1, else 153 a part)."""
    if septets <= SINGLE_MAX_SEPTETS:
        return 1
    return math.ceil(septets / LONG_PART_SEPTETS)


_NAME_RE = re.compile(r"[A-Za-z0-9 ]+")


def format_sender(source: Address) -> str:
    """``afzender`` for an SMPP source address (raises :class:`Unsendable` with the code the
    gateway would answer).

    A name (TON 5) is sent as is: 1–12 letters, digits and spaces, not digits only (the gateway
    would take it for a number without ``+``: error 110). A number is sent as ``+`` and its
    international digits; TON 1 is international, TON 0 (unknown) is taken to be (as the
    pipeline does for destinations); national, network-specific and short numbers cannot be
    made international here (we have no region), so they are refused with 110.
    """
    value = source.digits
    if source.ton == 5:
        if not value.strip():
            raise Unsendable("1601SMS needs a sender name", 109)
        if len(value) > MAX_NAME_CHARS:
            raise Unsendable(f"sender name longer than {MAX_NAME_CHARS} characters", 111)
        if not _NAME_RE.fullmatch(value):
            raise Unsendable(
                "sender name has characters 1601SMS refuses (not A-Z, 0-9, space)", 113
            )
        if value.replace(" ", "").isdigit():
            raise Unsendable("a sender of digits only must be an international number", 110)
        return value
    digits = value[1:] if value.startswith("+") else value
    if not digits:
        raise Unsendable("1601SMS needs a sender", 109)
    if not digits.isdigit() or len(digits) > MAX_NUMBER_DIGITS:
        raise Unsendable("sender is not a valid international number", 110)
    if source.ton not in (0, 1):
        raise Unsendable("1601SMS takes sender numbers in international form only", 110)
    return "+" + digits


def format_datum(at: float, tz: tzinfo) -> str:
    """``datum=yyyymmddhhii`` in the provider's zone, rounded *up* to a whole minute (SMPP's
    schedule_delivery_time is "not before")."""
    minute = math.ceil(at / 60.0) * 60
    return datetime.fromtimestamp(minute, tz).strftime("%Y%m%d%H%M")


def _check_text(message: Message, charset: str) -> int:
    """Septets of the message's text; :class:`Unsendable` for what the gateway cannot carry."""
    if message.text is None:
        raise Unsendable("1601SMS sends text only, not binary content")
    if message.udh:
        raise Unsendable("1601SMS cannot carry a user data header (ports and the like)")
    if message.flash:
        raise Unsendable("1601SMS has no flash SMS")
    if not message.text:
        raise Unsendable("1601SMS refuses an empty message", 102)
    septets = gsm_septets(message.text)
    if septets is None:
        raise Unsendable("text has characters outside GSM 03.38; 1601SMS has no Unicode")
    if charset.lower().replace("_", "-") != "utf-8":
        try:
            message.text.encode(charset)
        except UnicodeEncodeError:
            raise Unsendable(f"text has characters {charset} cannot encode") from None
    if septets > LONG_MAX_SEPTETS:
        raise Unsendable(f"longer than {LONG_MAX_SEPTETS} GSM characters (3 parts)", 118)
    return septets


def _asks_report(message: Message) -> bool:
    """The ESME asked for any receipt (final, failure-only, or intermediate notifications)."""
    return message.wants_failure_receipt or message.wants_intermediate


def build_send_request(message: Message, account: Account, now: float) -> HttpRequest:
    """The ``gateway.php`` GET that sends ``message`` (raises :class:`Unsendable`).

    The doc's example: ``gateway.php?klantuser=USERNAME&klantpwd=PASSWORD&bericht=this%20is%20a
    %20test&naar=32478123456&afzender=...``, options after the required five.
    """
    septets = _check_text(message, account.charset)
    sender = format_sender(message.source)
    destination = message.destination.digits.lstrip("+")
    if not destination.isdigit():
        raise Unsendable("destination is not an international number", 106)
    assert message.text is not None  # _check_text
    params = credentials(account)
    params += [("bericht", message.text), ("naar", destination), ("afzender", sender)]
    if _asks_report(message):
        params.append(("delivery", "ja"))
    if septets > SINGLE_MAX_SEPTETS:
        params.append(("type", "long"))
    if account.native_scheduling and message.schedule_at is not None and message.schedule_at > now:
        params += [
            ("datum", format_datum(message.schedule_at, account.timezone)),
            ("emailen", "nee"),
        ]
    params.append(("referentie", message.id[:MAX_REFERENCE_CHARS]))
    if account.test:
        params.append(("test", "ja"))
    if account.logging is not None:
        params.append(("logging", "ja" if account.logging else "nee"))
    return HttpRequest("GET", account.url, params=params, charset=account.charset)


#: Parameters a bulk request does not share between its messages (or leaves out).
_PER_MESSAGE = frozenset({"naar", "referentie", "delivery"})
_CREDENTIALS = frozenset({"klantuser", "klantpwd"})


def bulk_key(
    message: Message, account: Account, now: float, mode: Literal["off", "unreported", "all"]
) -> tuple[tuple[str, str], ...] | None:
    """What messages must share to go in one request with several numbers (None: alone): the
    text, sender, ``type``, ``datum`` and the account options. A message the adapter cannot
    send goes alone (and is refused on its own); with ``"unreported"`` so does one whose ESME
    asked for a receipt."""
    if mode == "off" or (mode == "unreported" and _asks_report(message)):
        return None
    try:
        request = build_send_request(message, account, now)
    except Unsendable:
        return None
    return tuple((n, v) for n, v in request.params if n not in _PER_MESSAGE | _CREDENTIALS)


def build_bulk_request(messages: Sequence[Message], account: Account, now: float) -> HttpRequest:
    """One ``gateway.php`` GET for messages with the same :func:`bulk_key`: the first one's
    parameters with ``naar`` = every number, comma-separated (the page's
    ``&to=32478123456,31600123456``), without ``delivery`` and ``referentie`` (no report could
    name its number)."""
    first = build_send_request(messages[0], account, now)
    naar = ",".join(m.destination.digits.lstrip("+") for m in messages)
    left_out = ("delivery", "referentie")
    params = [(n, naar if n == "naar" else v) for n, v in first.params if n not in left_out]
    return HttpRequest("GET", account.url, params=params, charset=account.charset)


# "OK", "OK 1234567"; an id has a digit (the page's are numbers), so "OK - sent" has none.
_OK_RE = re.compile(
    r"OK(?![A-Za-z0-9])(?:[\s:]+(?P<id>[A-Za-z0-9._-]{0,63}[0-9][A-Za-z0-9._-]{0,63})(?!\S))?.*",
    re.IGNORECASE | re.DOTALL,
)
_ERROR_RE = re.compile(
    r"ERR(?:OR)?\s*[:#-]?\s*(?P<code>\d{1,3})(?!\d).*", re.IGNORECASE | re.DOTALL
)


def parse_send_reply(body: str, *, parts: int = 1, test: bool = False) -> Outcome:
    """The outcome of a send from the gateway's answer.

    ``OK 1234567`` → ACCEPTED with that id (a report will follow); ``OK`` alone (no
    ``delivery=ja``) or any OK in test mode → ACCEPTED and final at once (state ACCEPTED: no
    report can come); an answer that starts with the word OK is a success whatever follows
    (re-sending a message the gateway took would duplicate it). ``ERROR n`` → the kind
    :data:`ERRORS` gives, err = n (an undocumented code: permanent). Anything else →
    transient (the message was most likely not taken: a proxy's page, a truncated reply — a
    retry is safer than losing it).
    """
    text = body.strip()
    ok = _OK_RE.fullmatch(text)
    if ok is not None:
        provider_id = ok["id"] if ok["id"] and len(ok["id"]) <= 64 else None
        if test:
            return Outcome(
                OutcomeKind.ACCEPTED,
                provider_message_id=provider_id,
                detail="1601SMS test mode: checked, not sent",
                parts=parts,
                state=MessageState.ACCEPTED,
            )
        if provider_id is None:
            return Outcome(
                OutcomeKind.ACCEPTED,
                detail="accepted by 1601SMS without an id: no report will follow",
                parts=parts,
                state=MessageState.ACCEPTED,
            )
        return Outcome(OutcomeKind.ACCEPTED, provider_message_id=provider_id, parts=parts)
    error = _ERROR_RE.fullmatch(text)
    if error is not None:
        code = int(error["code"])
        kind, meaning = ERRORS.get(code, (OutcomeKind.PERMANENT, "undocumented error"))
        return Outcome(kind, detail=f"1601SMS error {code}: {meaning}", error_code=code)
    return Outcome(OutcomeKind.TRANSIENT, detail="unexpected reply from 1601SMS")


# --------------------------------------------------------------------------- credits


def build_credits_request(account: Account) -> HttpRequest:
    """``gateway.php?klantuser=USERNAME&klantpwd=PASSWORD&action=credits``."""
    params = [*credentials(account), ("action", "credits")]
    return HttpRequest("GET", account.url, params=params, charset=account.charset)


_NUMBER_RE = re.compile(r"-?\d+(?:[.,]\d+)?")


def parse_credits_reply(body: str) -> float | None:
    """The credits call's answer ("This will return a certain number : example 476") → 476.0;
    None for anything else (an ``ERROR 104``)."""
    text = body.strip()
    if not _NUMBER_RE.fullmatch(text):
        return None
    return float(text.replace(",", "."))


