"""phlyMail: the calls to ``http.php`` — send, connection test, balance — and their replies.

The MT side of the adapter as pure functions: number and sender forms, the text mode (``sms``
or ``utf``) and parts, the request, and the three-digit reply codes (:data:`SEND_CODES`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from bridge.core.model import Address, Message, MessageState, Outcome, OutcomeKind
from bridge.providers.http import HttpRequest
from bridge.providers.http_provider import ERR_UNSENDABLE, Unsendable
from bridge.providers.phlymail.settings import (
    CODE_OK,
    ID_PREFIX,
    LATIN1,
    MAX_NUMBER_DIGITS,
    MAX_SMS_SEPTETS,
    MAX_UTF_UNITS,
    PART_SEPTETS,
    PART_UTF_UNITS,
    SINGLE_SMS_SEPTETS,
    SINGLE_UTF_UNITS,
    UTF8,
    Account,
    credentials,
)
from bridge.smpp.text import GSM7_EXTENSION_CHARS

__all__ = [
    "SEND_CODES",
    "Reply",
    "build_balance_request",
    "build_send_request",
    "build_test_request",
    "expected_parts",
    "format_number",
    "format_sender",
    "parse_balance_reply",
    "parse_reply",
    "parse_send_reply",
    "parse_test_reply",
    "sms_parts",
    "sms_septets",
    "synthetic_id",
    "text_mode",
    "utf_parts",
    "utf_units",
]


# --------------------------------------------------------------------------- reply codes

_P = OutcomeKind.PERMANENT
_T = OutcomeKind.TRANSIENT

#: Every error reply of the send call (``mode=sms``) → (outcome kind, meaning); 100 is success.
#: 203 (credit too low) is transient: a top-up fixes it without a change on our side, so the
#: message waits (backoff) until then or until its validity ends. 401 is documented for
#: ``mode=test`` only; should a send get it, it means the same as 402.
SEND_CODES: dict[int, tuple[OutcomeKind, str]] = {
    201: (_P, "message text longer than the gateway allows (918 characters)"),
    202: (_P, "a mandatory parameter is missing"),
    203: (_T, "credit too low to send the message"),
    401: (_P, "user name or password wrong"),
    402: (_P, "user name or password wrong"),
}

_GSM_EXTENSION = GSM7_EXTENSION_CHARS  # two septets each (escape + code)


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Reply:
    """One gateway answer, ``<CODE> <Lesbarer englischer Text>\\n``."""

    code: int
    text: str


_REPLY_RE = re.compile(r"(?P<code>\d{3})(?!\d)(?:[ \t]+(?P<text>[^\r\n]*))?\s*", re.DOTALL)


def parse_reply(body: str) -> Reply | None:
    """``100 1 SMS sent`` → Reply(100, "1 SMS sent"); None for anything not of that form (an
    HTML error page, an empty body). Only the first line counts."""
    match = _REPLY_RE.fullmatch(body.strip().split("\n", 1)[0])
    if match is None:
        return None
    return Reply(int(match["code"]), (match["text"] or "").strip())


def synthetic_id(message_id: str) -> str:
    """The id a taken message is recorded under (the gateway returns none)."""
    return f"{ID_PREFIX}{message_id}"


_LEADING_COUNT_RE = re.compile(r"(\d{1,3})(?!\d|[.,]\d)")


def parse_send_reply(body: str, message: Message, parts: int = 1) -> Outcome:
    """The outcome of a send from the gateway's answer.

    ``100 <n> …`` → ACCEPTED and final at once (state ACCEPTED: phlyMail has no delivery
    reports), under :func:`synthetic_id`, ``parts`` = the effective SMS count the text starts
    with (else our own count). A code of :data:`SEND_CODES` → its kind, err = the code; any
    other code → permanent with that code (a refusal in the gateway's own form: failing over
    cannot duplicate a message, retrying a refusal could). Anything that is not a reply →
    transient (most likely not the gateway speaking; a retry is safer than losing it).
    """
    reply = parse_reply(body)
    if reply is None:
        return Outcome(OutcomeKind.TRANSIENT, detail="unexpected reply from phlyMail")
    if reply.code == CODE_OK:
        count = _LEADING_COUNT_RE.match(reply.text)
        if count is not None and int(count[1]) >= 1:
            parts = int(count[1])
        return Outcome(
            OutcomeKind.ACCEPTED,
            provider_message_id=synthetic_id(message.id),
            detail="accepted by phlyMail (it has no delivery reports)",
            parts=parts,
            state=MessageState.ACCEPTED,
        )
    kind, meaning = SEND_CODES.get(reply.code, (OutcomeKind.PERMANENT, "undocumented reply code"))
    return Outcome(kind, detail=f"phlyMail {reply.code}: {meaning}", error_code=reply.code)


def parse_test_reply(body: str) -> bool:
    """``mode=test``: 100 → the gateway works and the login is right; 401 (or anything) → no."""
    reply = parse_reply(body)
    return reply is not None and reply.code == CODE_OK


_NUMBER_RE = re.compile(r"-?\d+(?:[.,]\d+)?")


def parse_balance_reply(body: str) -> tuple[bool, float | None]:
    """``mode=synchro``: (login right, balance). "100 — die zurückgegebene lesbare Nachricht
    enthält Ihr aktuelles Guthaben": the balance is the first number of the text (a decimal
    comma is read as a point); 100 without a number is healthy without a balance; 402 or
    anything else is unhealthy."""
    reply = parse_reply(body)
    if reply is None or reply.code != CODE_OK:
        return False, None
    number = _NUMBER_RE.search(reply.text)
    if number is None:
        return True, None
    return True, float(number[0].replace(",", "."))


def _request(account: Account, params: list[tuple[str, str]], charset: str) -> HttpRequest:
    if account.method == "POST":
        return HttpRequest("POST", account.url, form=params, charset=charset)
    return HttpRequest("GET", account.url, params=params, charset=charset)


def format_number(digits: str) -> str:
    """``to``: "im Format 004917712345678" — ``00`` and the international digits."""
    raw = digits[1:] if digits.startswith("+") else digits
    if raw.startswith("00"):
        raw = raw[2:]
    if not raw.isdigit() or not 1 <= len(raw) <= MAX_NUMBER_DIGITS or raw.startswith("0"):
        raise Unsendable("destination is not an international number", ERR_UNSENDABLE)
    return "00" + raw


_NAME_RE = re.compile(r"[A-Za-z0-9]{1,11}")


def format_sender(source: Address) -> str:
    """``from``: a name (TON 5) of 1–11 letters and digits as is; a number (TON 1, or 0 taken
    as international as the pipeline does for destinations) as ``00`` and its digits.
    National, network-specific and short sender numbers cannot be made international without
    a region: refused (:class:`Unsendable`, err 1), like names with other characters."""
    value = source.digits
    if source.ton == 5:
        if not _NAME_RE.fullmatch(value):
            raise Unsendable(
                "phlyMail sender names are 1-11 characters of 0-9 and A-Z", ERR_UNSENDABLE
            )
        return value
    if source.ton not in (0, 1):
        raise Unsendable("phlyMail takes sender numbers in international form only")
    try:
        return format_number(value)
    except Unsendable:
        raise Unsendable("sender is not an international number") from None


def sms_septets(text: str) -> int:
    """Length in GSM septets, the unit of "6 x 153": extension characters count two, every
    other ISO-8859-1 character one (the gateway converts them)."""
    return sum(2 if char in _GSM_EXTENSION else 1 for char in text)


def utf_units(text: str) -> int:
    """Length of a Unicode text in UTF-16 code units (a character outside the BMP counts 2)."""
    return len(text.encode("utf-16-be")) // 2


def sms_parts(septets: int) -> int:
    return 1 if septets <= SINGLE_SMS_SEPTETS else math.ceil(septets / PART_SEPTETS)


def utf_parts(units: int) -> int:
    return 1 if units <= SINGLE_UTF_UNITS else math.ceil(units / PART_UTF_UNITS)


def text_mode(text: str) -> Literal["sms", "utf"]:
    """``sms`` when ISO-8859-1 holds every character, else ``utf``."""
    try:
        text.encode(LATIN1)
    except UnicodeEncodeError:
        return "utf"
    return "sms"


def _check(message: Message, account: Account) -> tuple[Literal["sms", "utf"], int]:
    """(mode, SMS parts) for the message's text; :class:`Unsendable` for what the gateway
    cannot carry."""
    if message.text is None:
        raise Unsendable("phlyMail binary SMS (mode=udh) are not documented")
    if message.udh:
        raise Unsendable("phlyMail cannot carry a user data header (ports and the like)")
    if message.flash:
        raise Unsendable("phlyMail has no flash SMS")
    if not message.text:
        raise Unsendable("phlyMail refuses an empty text", 202)
    mode = text_mode(message.text)
    if mode == "sms":
        septets = sms_septets(message.text)
        if septets > MAX_SMS_SEPTETS:
            raise Unsendable(f"longer than {MAX_SMS_SEPTETS} characters (6 x 153)", 201)
        return mode, sms_parts(septets)
    if not account.unicode:
        raise Unsendable("text has characters outside ISO-8859-1 and unicode is off")
    units = utf_units(message.text)
    if units > MAX_UTF_UNITS:
        raise Unsendable(f"longer than {MAX_UTF_UNITS} Unicode characters (6 x 67)", 201)
    return mode, utf_parts(units)


def build_send_request(message: Message, account: Account) -> HttpRequest:
    """The ``http.php`` call that sends ``message`` (raises :class:`Unsendable`).

    The page's example: ``http.php?user=USER&encpass=SECPASS&mode=sms&from=TEL&to=TEL&text=
    TEXT``; ``mode=utf`` (UTF-8) for text ISO-8859-1 cannot hold.
    """
    mode, _ = _check(message, account)
    sender = format_sender(message.source)
    to = format_number(message.destination.digits)
    assert message.text is not None  # _check
    params = [*credentials(account), ("mode", mode), ("from", sender), ("to", to)]
    params.append(("text", message.text))
    return _request(account, params, LATIN1 if mode == "sms" else UTF8)


def expected_parts(message: Message) -> int:
    """Our own count of the SMS a text makes (used when the reply does not say)."""
    text = message.text or ""
    if text_mode(text) == "sms":
        return sms_parts(sms_septets(text))
    return utf_parts(utf_units(text))


def build_test_request(account: Account) -> HttpRequest:
    """``http.php?user=USER&encpass=SECPASS&mode=test``."""
    return _request(account, [*credentials(account), ("mode", "test")], LATIN1)


def build_balance_request(account: Account) -> HttpRequest:
    """``http.php?user=USER&encpass=SECPASS&mode=synchro``."""
    return _request(account, [*credentials(account), ("mode", "synchro")], LATIN1)


