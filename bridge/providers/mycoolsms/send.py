"""My-Cool-SMS: ``sendSms`` and ``getBalance`` — the request from a message, the outcome from
the reply.

The MT half of the adapter: text mode and length (GSM vs "UCS2 notation"), number and sender
forms, schedule time, and the documented reply codes (:data:`SEND_ERRORS`). Pure functions, so
the tests hold them to the document without a server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bridge.core.model import Address, Message, MessageState, Outcome, OutcomeKind
from bridge.providers.http import HttpResponse
from bridge.providers.http_provider import Unsendable
from bridge.providers.mycoolsms.api import (
    TON_ALPHANUMERIC,
    describe,
    json_number,
    reply_error_code,
    reply_object,
    to_ucs2_hex,
)
from bridge.providers.mycoolsms.settings import MAX_GSM_CHARS, MAX_SENDER_CHARS, MAX_UCS2_CHARS
from bridge.smpp.text import gsm7_septet_count, is_gsm7

__all__ = [
    "ERR_BAD_REPLY",
    "ERR_NO_SMSID",
    "SEND_ERRORS",
    "atom_time",
    "balance_fields",
    "format_number",
    "format_sender",
    "needs_unicode",
    "parse_balance_reply",
    "parse_send_reply",
    "send_fields",
]


# Bridge-defined err: values (the API has numeric codes only for refused calls).
ERR_BAD_REPLY = 300  # the reply was not the documented JSON
ERR_NO_SMSID = 304  # success without an smsid: taken, but no report can ever match it

_T = OutcomeKind.TRANSIENT
_P = OutcomeKind.PERMANENT

#: Every error code sendSms can answer (general 1xx and its own 2xx): (kind, meaning).
SEND_ERRORS: dict[int, tuple[OutcomeKind, str]] = {
    101: (_P, "login failed: wrong username or password"),
    102: (_P, "account not activated yet"),
    103: (_P, "a required parameter is missing"),
    104: (_P, "invalid call: no GET, POST or valid JSON input"),
    105: (_P, "unknown function"),
    106: (_P, "access denied"),
    107: (_T, "general API error"),
    108: (_P, "invalid call structure"),
    109: (_T, "insufficient credit"),
    210: (_P, "the number seems invalid"),
    211: (_P, "the message has no text"),
    212: (_P, "the message is too long"),
    213: (_P, "unicode=true but the message is not in UCS2 notation"),
    214: (_P, "unicode=false but the message is in UCS2 notation"),
    215: (_P, "unicode=false but the message has characters outside GSM7"),
    216: (_P, "invalid sender id"),
    217: (_P, "short code sender ids are not allowed"),
    218: (_P, "the callback URL seems invalid"),
    219: (_P, "invalid schedule time"),
}

_ALNUM_SENDER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_MIN_NUMBER_DIGITS = 7  # shorter numeric senders are short codes


def needs_unicode(text: str) -> bool:
    """True when ``text`` needs the Unicode mode (a character outside GSM 03.38)."""
    return not is_gsm7(text)


def format_number(digits: str) -> str:
    """E.164 digits → the document's international form ``+49123456789``."""
    return "+" + digits.lstrip("+")


def format_sender(source: Address) -> str | None:
    """``senderid`` for the message's source: ``+digits`` for a number, the text for an
    alphanumeric sender, None when the ESME gave none. Raises :class:`Unsendable` (err 216,
    the provider's code for it) for an alphanumeric sender the provider would refuse."""
    value = source.digits
    if not value:
        return None
    if source.ton != TON_ALPHANUMERIC and value.lstrip("+").isdigit():
        digits = value.lstrip("+")
        return format_number(digits) if len(digits) >= _MIN_NUMBER_DIGITS else digits
    if len(value) > MAX_SENDER_CHARS:
        raise Unsendable(
            f"alphanumeric sender longer than {MAX_SENDER_CHARS} characters", error_code=216
        )
    if not set(value) <= _ALNUM_SENDER_CHARS:
        raise Unsendable("alphanumeric sender may only hold A-Z, a-z, 0-9 and '-'", error_code=216)
    return value


def atom_time(epoch: float) -> str:
    """``scheduletime``: ATOM (RFC 3339) with the time zone, in UTC, whole seconds."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


# --------------------------------------------------------------------------- requests


def send_fields(
    message: Message,
    *,
    username: str,
    password: str,
    callback_url: str | None,
    now: float,
) -> dict[str, Any]:
    """The ``sendSms`` parameters, in the document's order (raises :class:`Unsendable`).

    ``callback_url`` is given only when the ESME asked for a receipt (the caller decides).
    """
    if message.text is None:
        raise Unsendable("binary content is not supported by the My-Cool-SMS API")
    text = message.text
    unicode = needs_unicode(text)
    if unicode:
        units = len(text.encode("utf-16-be", errors="surrogatepass")) // 2
        if units > MAX_UCS2_CHARS:
            raise Unsendable(f"longer than {MAX_UCS2_CHARS} Unicode characters", 212)
    elif gsm7_septet_count(text) > MAX_GSM_CHARS:
        raise Unsendable(f"longer than {MAX_GSM_CHARS} GSM characters", 212)
    fields: dict[str, Any] = {
        "username": username,
        "password": password,
        "function": "sendSms",
        "number": format_number(message.destination.digits),
        "message": to_ucs2_hex(text) if unicode else text,
        "unicode": unicode,
    }
    sender = format_sender(message.source)
    if sender is not None:
        fields["senderid"] = sender
    if message.schedule_at is not None and message.schedule_at > now:
        fields["scheduletime"] = atom_time(message.schedule_at)
    if callback_url:
        fields["callbackurl"] = callback_url
    return fields


def balance_fields(*, username: str, password: str) -> dict[str, Any]:
    return {"username": username, "password": password, "function": "getBalance"}


def parse_send_reply(response: HttpResponse) -> tuple[Outcome, float | None]:
    """(outcome, remaining balance if the reply says) for a ``sendSms`` answer that is not a
    5xx/408/429 (the base class has classified those already)."""
    reply = reply_object(response)
    if reply is None or not isinstance(reply.get("success"), bool):
        # A 2xx that is not the API's JSON (a maintenance page, a proxy): try again later.
        # Anything else (404, 403, a redirect) is a wrong base_url or a blocked account.
        kind = _T if 200 <= response.status < 300 else _P
        return (
            Outcome(
                kind,
                detail=f"HTTP {response.status}: not a My-Cool-SMS reply",
                error_code=ERR_BAD_REPLY,
            ),
            None,
        )
    balance = json_number(reply.get("balance"))
    if reply["success"]:
        smsid = reply.get("smsid")
        parts = reply.get("smscount")
        parts = parts if isinstance(parts, int) and not isinstance(parts, bool) and parts > 0 else 1
        cost = json_number(reply.get("charge"))
        if not isinstance(smsid, str) or not smsid:
            return (
                Outcome(
                    OutcomeKind.ACCEPTED,
                    detail="accepted without an smsid: no report can follow",
                    error_code=ERR_NO_SMSID,
                    parts=parts,
                    cost=cost,
                    state=MessageState.UNKNOWN,
                ),
                balance,
            )
        return (
            Outcome(OutcomeKind.ACCEPTED, provider_message_id=smsid, parts=parts, cost=cost),
            balance,
        )
    code = reply_error_code(reply)
    if code is None:
        return (
            Outcome(_P, detail="refused without an error code", error_code=ERR_BAD_REPLY),
            balance,
        )
    kind, meaning = SEND_ERRORS.get(code, (_P, "undocumented error code"))
    provider_text = describe(reply)
    detail = f"{code} {meaning}" + (f" ({provider_text})" if provider_text else "")
    return Outcome(kind, detail=detail, error_code=code), balance


def parse_balance_reply(response: HttpResponse) -> tuple[bool, float | None]:
    """``getBalance``: (credentials accepted, balance in EUR)."""
    reply = reply_object(response)
    if reply is None or reply.get("success") is not True:
        return False, None
    return True, json_number(reply.get("balance"))

