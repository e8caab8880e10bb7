"""iSMS.gr HTTP: sending through ``send.php`` (single and bulk) and the ``credits.php``
balance.

The MT half of the adapter as pure functions: coding and parts, sender and number forms,
schedule value, the request, the bulk ids, and the outcome of an answer (:data:`SEND_ERRORS`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from bridge.core.model import Address, Message, MessageState, Outcome, OutcomeKind
from bridge.providers.http import HttpRequest
from bridge.providers.http_provider import Unsendable
from bridge.providers.isms_http.api import ERR_UNRECOGNISED, error_key, reply_line, script_url
from bridge.providers.isms_http.settings import CAPABILITIES, MAX_NUMERIC_SENDER
from bridge.smpp.text import gsm7_septet_count, is_gsm7

__all__ = [
    "PER_DESTINATION",
    "PER_NUMBER_ERRORS",
    "SEND_ERRORS",
    "SendError",
    "build_credits_request",
    "build_send_request",
    "bulk_id",
    "choose_coding",
    "count_parts",
    "format_destination",
    "format_sender",
    "parse_credits_reply",
    "parse_send_reply",
    "schedule_value",
    "split_bulk_id",
]


@dataclass(frozen=True, slots=True)
class SendError:
    """How one documented ``send.php`` error text ends a send."""

    kind: OutcomeKind
    error_code: int
    detail: str


#: ``send.php``'s documented errors, keyed by their text in lower case without the final stop.
SEND_ERRORS: Mapping[str, SendError] = {
    "authentication error": SendError(OutcomeKind.PERMANENT, 11, "authentication error"),
    "no recipients": SendError(OutcomeKind.PERMANENT, 12, "no recipients (invalid number)"),
    "invalid sender identity": SendError(OutcomeKind.PERMANENT, 13, "invalid sender identity"),
    "insufficient credits": SendError(OutcomeKind.TRANSIENT, 14, "insufficient credits"),
    "invalid scheduling date": SendError(OutcomeKind.PERMANENT, 15, "invalid scheduling date"),
}


def choose_coding(text: str) -> Literal["GSM", "UTF-8"]:
    """``GSM`` when the handset can get the text in the GSM 7-bit alphabet, else ``UTF-8``."""
    return "GSM" if is_gsm7(text) else "UTF-8"


def count_parts(text: str, coding: Literal["GSM", "UTF-8"]) -> int:
    """SMS parts the text takes: 160/153 septets (GSM), 70/67 UTF-16 units (UCS2)."""
    if coding == "GSM":
        units, single, multi = gsm7_septet_count(text), 160, 153
    else:
        units, single, multi = len(text.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def format_sender(source: Address, default: str | None = None) -> str:
    """``from``: a number (digits, at most 16) or an alphanumeric name (printable ASCII, at
    most 11 characters). Raises :class:`Unsendable` (err 13, iSMS's "invalid sender identity")
    for what iSMS would refuse anyway, so the message fails over without a request."""
    sender = source.digits.strip() or (default or "").strip()
    if not sender:
        raise Unsendable("no sender: the ESME sent none and no sender is configured", 13)
    if sender.isdigit() and source.ton != 5:
        if len(sender) > MAX_NUMERIC_SENDER:
            raise Unsendable(f"numeric sender longer than {MAX_NUMERIC_SENDER} digits", 13)
        return sender
    if not (sender.isascii() and sender.isprintable()):
        raise Unsendable("alphanumeric sender with characters other than printable ASCII", 13)
    if len(sender) > CAPABILITIES.max_sender_chars:
        raise Unsendable(
            f"alphanumeric sender longer than {CAPABILITIES.max_sender_chars} characters", 13
        )
    return sender


def format_destination(destination: Address) -> str:
    """``to``: international digits without ``+`` or ``00`` (``306912345678``), as the
    document's examples write them; the bridge has already normalised them to E.164."""
    digits = destination.digits.lstrip("+")
    if not digits.isdigit() or not 3 <= len(digits) <= 15:
        raise Unsendable("destination is not an international number", 12)
    return digits


def schedule_value(schedule_at: float | None, now: float) -> str | None:
    """``schedule``: ``+N seconds`` (a documented strtotime form, time-zone free), or None
    when the message is due now (or its time has passed)."""
    if schedule_at is None:
        return None
    seconds = math.ceil(schedule_at - now)
    return f"+{seconds} seconds" if seconds > 0 else None


def build_send_request(
    message: Message,
    *,
    base_url: str,
    username: str,
    password: str,
    default_sender: str | None = None,
    dlr_url: str | None = None,
    now: float = 0.0,
    native_schedule: bool = True,
) -> HttpRequest:
    """``GET send.php?username&password&from&to&message&coding[&flash][&schedule][&dlr-url]``.

    Raises :class:`Unsendable` for a message iSMS cannot carry (binary, UDH, sender, number).
    """
    if message.text is None:
        raise Unsendable("binary messages cannot be sent through iSMS HTTP")
    if message.udh:
        raise Unsendable("user data headers (ports …) cannot be sent through iSMS HTTP")
    params: list[tuple[str, str]] = [
        ("username", username),
        ("password", password),
        ("from", format_sender(message.source, default_sender)),
        ("to", format_destination(message.destination)),
        ("message", message.text),
        ("coding", choose_coding(message.text)),
    ]
    if message.flash:
        params.append(("flash", "1"))
    if native_schedule:
        schedule = schedule_value(message.schedule_at, now)
        if schedule is not None:
            params.append(("schedule", schedule))
    if dlr_url:
        params.append(("dlr-url", dlr_url))
    return HttpRequest("GET", script_url(base_url, "send.php"), params=params)


#: send.php parameters a bulk request does not share between its messages.
PER_DESTINATION = frozenset({"to", "username", "password"})
#: "Error: No recipients." names no number: in a bulk request each number goes again alone.
PER_NUMBER_ERRORS: frozenset[int] = frozenset({12})


def bulk_id(mid: str, number: str) -> str:
    """A destination's provider id while bulk is on: the request's ``ID`` and the number, the
    pair ``query.php`` and a push name."""
    return f"{mid}/{number.lstrip('+')}"


def split_bulk_id(provider_id: str, number: str) -> tuple[str, str]:
    """(mid, mobile) for ``query.php`` from a stored provider id (bare mid or ``mid/number``)."""
    mid, sep, mobile = provider_id.partition("/")
    return (mid, mobile) if sep and mobile else (provider_id, number)


def parse_send_reply(status: int, body: str, *, wants_report: bool, parts: int = 1) -> Outcome:
    """The outcome of a ``send.php`` answer (HTTP status and body text).

    ``ID:…`` is ACCEPTED with that id; when no report will come (``wants_report`` False) the
    outcome also carries the final state ACCEPTED. ``Error: …`` is looked up in
    :data:`SEND_ERRORS`; an error text not listed there, and any other 4xx, is PERMANENT
    (err :data:`ERR_UNRECOGNISED`). A 2xx body that is neither is TRANSIENT: it is not an
    answer iSMS gives (a proxy's page, a truncated reply), and the send is tried again.
    """
    line = reply_line(body)
    if 200 <= status < 300 and line[:3].upper() == "ID:":
        provider_id = line[3:].strip()
        if provider_id and len(provider_id) <= 64 and provider_id.isprintable():
            return Outcome(
                OutcomeKind.ACCEPTED,
                provider_message_id=provider_id,
                parts=parts,
                state=None if wants_report else MessageState.ACCEPTED,
            )
        # Taken, but with an id we cannot use: nothing can be correlated to it.
        return Outcome(
            OutcomeKind.ACCEPTED,
            detail="iSMS accepted the message without a usable id",
            parts=parts,
            state=MessageState.ACCEPTED,
        )
    key = error_key(line)
    if key is not None:
        known = SEND_ERRORS.get(key)
        if known is not None:
            return Outcome(known.kind, detail=f"iSMS: {known.detail}", error_code=known.error_code)
        return Outcome(
            OutcomeKind.PERMANENT,
            detail=f"iSMS error: {key[:80]}",
            error_code=ERR_UNRECOGNISED,
        )
    if 400 <= status < 500:
        return Outcome(OutcomeKind.PERMANENT, detail=f"HTTP {status}", error_code=ERR_UNRECOGNISED)
    return Outcome(OutcomeKind.TRANSIENT, detail=f"unexpected reply (HTTP {status})")


def build_credits_request(*, base_url: str, username: str, password: str) -> HttpRequest:
    """``GET credits.php?username&password``."""
    return HttpRequest(
        "GET",
        script_url(base_url, "credits.php"),
        params=[("username", username), ("password", password)],
    )


_CREDITS = re.compile(r"^credits\s*:\s*([-+]?\d+(?:\.\d+)?)$", re.IGNORECASE)


def parse_credits_reply(body: str) -> tuple[bool, float | None]:
    """``Credits:3948.47`` → (True, 3948.47); ``Error: Authentication error.`` or anything
    else → (False, None)."""
    match = _CREDITS.match(reply_line(body))
    if match is None:
        return False, None
    return True, float(match.group(1))


#: Parameter names read from a ``dlr-url`` push, first found wins. The document does not name

