"""My-Cool-SMS adapter: the JSON "SMS API" (``function=sendSms`` and friends on one endpoint).

Everything here follows the provider's own API document (German edition, 2014); the comments
say where the document was silent and what we chose.

**One endpoint, one ``function`` parameter.** Every call is a POST to ``base_url`` whose body
names the ``function`` and carries ``username``/``password`` (never the URL: the credentials
stay out of every URL, log and proxy line). The document allows GET, POST forms and JSON; JSON
is the default here (``request_format = "form"`` switches ``sendSms``/``getBalance`` to an
urlencoded body). ``getDeliveryReports`` is always JSON: the document shows it only as JSON (its
``ids`` are an array, which a form has no documented notation for). The endpoint URL itself is
not in the document; the default is ``https://www.my-cool-sms.com/api-socket.php``.

**Text and charset.** The API counts in characters: up to 765 GSM characters (extension
characters count two, ``escapenumchars``) or 335 Unicode characters, in up to five
concatenated parts; one ``sendSms`` call carries the whole text, the provider splits it. We
always send ``unicode`` explicitly, decided exactly as the bridge's router counts the length
(``bridge.smsc.text_units``): text that fits GSM 03.38 goes as GSM (``unicode=false``, plain
text), anything else as Unicode, and then, as the document demands, the ``message`` is in
"UCS2 notation": the UTF-16BE code units as upper-case hex (``"繁体中文"`` →
``"7E414F534E2D6587"``, the document's own toUCS2 example). An ESME's data_coding 0x08 for a
text that GSM can hold therefore goes as GSM: the same characters, fewer parts, and the length
the router accepted. Binary content and flash SMS do not exist in this API.

**Numbers.** ``number`` is sent as ``+`` and the E.164 digits (the document's example form).
A numeric sender goes the same way; shorter than 7 digits it is passed as-is (a short code,
which the provider refuses with 217). An alphanumeric sender may have up to 11 characters of
``A-Z a-z 0-9 -`` (reply code 216's text); anything else is refused before any request
(:class:`~bridge.providers.http_provider.Unsendable` with err 216, so another route may
carry it). An empty sender is left out (the account's default applies).

**Scheduling** is native: ``schedule_delivery_time`` becomes ``scheduletime`` in ATOM format
with time zone, in UTC (``2024-05-01T12:00:00+00:00``). A time already past is left out.
There is no validity parameter: the bridge's own validity still bounds retries.

**Reports.** ``callbackurl`` is the bridge's report callback, given only when the ESME asked
for a receipt (registered_delivery final, failure or intermediate): the provider then POSTs
``{"smsid": …, "status": "SMS_STATUS_…"}`` (``pushDeliveryReport``). Every message without
a final report is also polled with ``getDeliveryReports`` (at most 100 ids per call, the
documented limit), so messages sent without a callback, and pushes that never arrived, still
end; the dispatcher polls ``[pipeline] poll_interval`` after the send, so a message whose push
came first is never polled. ``poll_reports = false`` leaves polling to the start-up sweep only;
``push_reports = false`` never sends a callback URL. The status words map to states by
:data:`STATUS_STATES`; the API has no numeric delivery error codes, so the receipts' ``err:``
is a small bridge-defined number per failure word (:data:`ERR_BOUNCED` …), and ``UNKNOWN_ID``
is the provider's own 223 ("Unbekannte SMS ID").

**Reply codes.** Every error reply is ``{"success": false, "errorcode": NNN, …}``; the code is
the receipt's ``err:``. 107 (general API error) and 109 (insufficient credit: a top-up fixes
it, so messages wait rather than die) are transient; every other documented code says the
request itself is wrong and is permanent (next route, else REJECTD). :data:`SEND_ERRORS`
lists them.

**Inbound SMS** (``pushIncomingSms``) are POSTed as JSON to the URL set in the web interface's
inbox settings: that is the bridge's ``inbound`` callback URL (see docs/providers/mycoolsms.md).
With ``poll_inbound = true`` they are also fetched with ``getIncomingSms`` every
``inbound_poll_interval`` (:class:`InboundPoller`): ``thresholdid`` = the highest id already
queued, ``order=ASC``, 100 per call, kept in a small file in the data directory so a restart
neither loses nor repeats MOs. An MO counts as done (the threshold moves past its id) only once
the bridge has queued it for its account. The push carries no id, so an MO that arrives both
ways is recognised by its content (sender, virtual number, text): each push cancels one polled
MO with the same content and vice versa, within :data:`DEDUPE_WINDOW`.

**Health** is ``getBalance``; the balance (in EUR) also comes back with every ``sendSms`` and
feeds the ``bridge_provider_balance`` gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from pydantic import BeforeValidator, Field, model_validator

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
    InboundSink,
    Provider,
    ProviderContext,
    ReportSink,
)
from bridge.providers.http import HttpError, HttpRequest, HttpResponse
from bridge.providers.http_provider import HttpProvider, Unsendable, classify_http_status
from bridge.providers.settings import HttpProviderSettings, Secret, resolve_env
from bridge.smpp.text import TextError, gsm7_decode, gsm7_septet_count, is_gsm7

__all__ = [
    "CAPABILITIES",
    "DEDUPE_WINDOW",
    "DEFAULT_URL",
    "ERR_BAD_REPLY",
    "ERR_BOUNCED",
    "ERR_ERROR",
    "ERR_EXPIRED",
    "ERR_NO_SMSID",
    "ERR_UNKNOWN_ID",
    "MAX_GSM_CHARS",
    "MAX_IDS_PER_POLL",
    "MAX_INBOUND_PER_POLL",
    "MAX_SENDER_CHARS",
    "MAX_UCS2_CHARS",
    "SEND_ERRORS",
    "STATUS_STATES",
    "InboundPoller",
    "MyCoolSmsProvider",
    "PolledSms",
    "Settings",
    "atom_time",
    "balance_fields",
    "capabilities_for",
    "create",
    "encode_request",
    "fingerprint",
    "format_number",
    "format_sender",
    "from_ucs2_hex",
    "incoming_fields",
    "needs_unicode",
    "parse_balance_reply",
    "parse_inbound_poll",
    "parse_inbound_push",
    "parse_poll_reply",
    "parse_report_push",
    "parse_send_reply",
    "poll_fields",
    "report_for",
    "send_fields",
    "to_ucs2_hex",
]

log = structlog.get_logger("bridge.providers.mycoolsms")

DEFAULT_URL = "https://www.my-cool-sms.com/api-socket.php"

#: "bis zu fünf Nachrichten oder 765 Zeichen für GSM bzw. 335 Zeichen für Unicode SMS".
MAX_GSM_CHARS = 765
MAX_UCS2_CHARS = 335
#: "eine alphanumerische Zeichenkette mit bis zu 11 Zeichen".
MAX_SENDER_CHARS = 11
#: getDeliveryReports error 241: "The maximum number of delivery reports per request is 100."
MAX_IDS_PER_POLL = 100
#: getIncomingSms ``limit`` per call (the default is 25; 0 would mean "no limit", unbounded).
MAX_INBOUND_PER_POLL = 100
#: How long a pushed (or polled) MO's content is remembered to recognise the same MO arriving
#: the other way. A push comes within seconds; a poll within ``inbound_poll_interval``.
DEDUPE_WINDOW = 86400.0
#: At most this many remembered contents per direction (oldest dropped first).
MAX_REMEMBERED = 10000

# Bridge-defined err: values (the API has numeric codes only for refused calls).
ERR_BAD_REPLY = 300  # the reply was not the documented JSON
ERR_BOUNCED = 301  # SMS_STATUS_BOUNCED
ERR_EXPIRED = 302  # SMS_STATUS_EXPIRED
ERR_ERROR = 303  # SMS_STATUS_ERROR
ERR_NO_SMSID = 304  # success without an smsid: taken, but no report can ever match it
ERR_UNKNOWN_ID = 223  # the provider's own code for "Unbekannte SMS ID" (status UNKNOWN_ID)

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

#: Every status word (Status-Referenz and getDeliveryReports) → (state, err).
STATUS_STATES: dict[str, tuple[MessageState, int]] = {
    "SMS_STATUS_QUEUED": (MessageState.ENROUTE, 0),
    "SMS_STATUS_AT_CARRIER": (MessageState.ENROUTE, 0),
    "SMS_STATUS_DELIVERY_DELAYED": (MessageState.ENROUTE, 0),
    "SMS_STATUS_DELIVERED": (MessageState.DELIVERED, 0),
    "SMS_STATUS_BOUNCED": (MessageState.UNDELIVERABLE, ERR_BOUNCED),
    "SMS_STATUS_EXPIRED": (MessageState.EXPIRED, ERR_EXPIRED),
    "SMS_STATUS_ERROR": (MessageState.UNDELIVERABLE, ERR_ERROR),
    "UNKNOWN_ID": (MessageState.UNKNOWN, ERR_UNKNOWN_ID),
}

#: What this API can carry. ``reports`` is adjusted per instance by :func:`capabilities_for`.
CAPABILITIES = Capabilities(
    max_gsm7_chars=MAX_GSM_CHARS,
    max_ucs2_chars=MAX_UCS2_CHARS,
    unicode=True,
    binary=False,  # no binary or UDH parameter in the API
    flash=False,  # no flash parameter
    scheduling=True,  # scheduletime
    alphanumeric_sender=True,
    max_sender_chars=MAX_SENDER_CHARS,
    reports="poll",
)

_ALNUM_SENDER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_HEX = frozenset("0123456789abcdefABCDEF")
_TON_ALPHANUMERIC = 5
_MIN_NUMBER_DIGITS = 7  # shorter numeric senders are short codes


# --------------------------------------------------------------------------- settings


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "mycoolsms"``.

    The document states no request rate limit, so ``requests_per_second`` stays 0 (unlimited)
    and ``concurrency`` at the common 16.
    """

    type: Literal["mycoolsms"]
    base_url: str = DEFAULT_URL
    username: Annotated[str, BeforeValidator(resolve_env), Field(min_length=1)]  # or env:VAR
    password: Secret
    # "json": application/json bodies (the document's main form); "form": urlencoded POST.
    request_format: Literal["json", "form"] = "json"
    # Send callbackurl (the bridge's report URL) with messages whose ESME asked for a receipt.
    push_reports: bool = True
    # Poll getDeliveryReports for messages still without a final report (every
    # [pipeline] poll_interval, doubling). False: pushes only, plus the start-up sweep.
    poll_reports: bool = True
    # Fetch inbound SMS with getIncomingSms every inbound_poll_interval seconds, besides (or
    # instead of) the inbox push. An MO arriving both ways is delivered once.
    poll_inbound: bool = False
    inbound_poll_interval: Annotated[float, Field(ge=1.0, le=3600.0)] = 30.0
    # getIncomingSms virtualnumber: only this virtual number's SMS; unset: all of the account's.
    virtual_number: str | None = None

    @model_validator(mode="after")
    def _some_reports(self) -> Settings:
        if not (self.push_reports or self.poll_reports):
            raise ValueError(
                "push_reports and poll_reports are both false: no message could ever get a "
                "delivery report"
            )
        return self


def capabilities_for(settings: Settings) -> Capabilities:
    """:data:`CAPABILITIES` with the report mode the settings choose."""
    reports: Literal["push", "poll"] = "poll" if settings.poll_reports else "push"
    return Capabilities(
        max_gsm7_chars=CAPABILITIES.max_gsm7_chars,
        max_ucs2_chars=CAPABILITIES.max_ucs2_chars,
        unicode=CAPABILITIES.unicode,
        binary=CAPABILITIES.binary,
        flash=CAPABILITIES.flash,
        scheduling=CAPABILITIES.scheduling,
        alphanumeric_sender=CAPABILITIES.alphanumeric_sender,
        max_sender_chars=CAPABILITIES.max_sender_chars,
        reports=reports,
        requests_per_second=settings.requests_per_second,
        concurrency=settings.concurrency,
    )


# --------------------------------------------------------------------------- text and numbers


def needs_unicode(text: str) -> bool:
    """True when ``text`` needs the Unicode mode (a character outside GSM 03.38)."""
    return not is_gsm7(text)


def to_ucs2_hex(text: str) -> str:
    """The document's "UCS2 notation": UTF-16BE code units as upper-case hex, four digits
    each. Characters beyond the BMP become surrogate pairs (two units, as the router counts)."""
    return text.encode("utf-16-be", errors="surrogatepass").hex().upper()


def from_ucs2_hex(value: str) -> str:
    """Inverse of :func:`to_ucs2_hex` (either case). ValueError for anything else."""
    if len(value) % 4 or not set(value) <= _HEX:
        raise ValueError("not UCS2 notation (hex, four digits per character)")
    return bytes.fromhex(value).decode("utf-16-be", errors="strict")


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
    if source.ton != _TON_ALPHANUMERIC and value.lstrip("+").isdigit():
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


def poll_fields(ids: Sequence[str], *, username: str, password: str) -> dict[str, Any]:
    """``getDeliveryReports`` for at most :data:`MAX_IDS_PER_POLL` sms ids."""
    if not 0 < len(ids) <= MAX_IDS_PER_POLL:
        raise ValueError(f"getDeliveryReports takes 1 to {MAX_IDS_PER_POLL} ids")
    return {
        "username": username,
        "password": password,
        "function": "getDeliveryReports",
        "ids": list(ids),
    }


def balance_fields(*, username: str, password: str) -> dict[str, Any]:
    return {"username": username, "password": password, "function": "getBalance"}


def encode_request(
    url: str, fields: Mapping[str, Any], fmt: Literal["json", "form"]
) -> HttpRequest:
    """A POST with ``fields`` as a JSON object or an urlencoded UTF-8 form (booleans as
    ``true``/``false``, as the document writes them). Arrays exist only in JSON."""
    if fmt == "json":
        return HttpRequest("POST", url, json=dict(fields))
    pairs: list[tuple[str, str]] = []
    for key, value in fields.items():
        if isinstance(value, bool):
            pairs.append((key, "true" if value else "false"))
        elif isinstance(value, str | int | float):
            pairs.append((key, str(value)))
        else:
            raise ValueError(f"{key}: only JSON requests carry arrays")
    return HttpRequest("POST", url, form=pairs, charset="utf-8")


# --------------------------------------------------------------------------- replies


def _reply_object(response: HttpResponse) -> dict[str, Any] | None:
    """The reply's JSON object, or None when the body is not one."""
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _error_code(reply: Mapping[str, Any]) -> int | None:
    """``errorcode`` as an int: the document types it string(3) but its example is a number."""
    code = reply.get("errorcode")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code if 0 <= code <= 999 else None
    if isinstance(code, str) and code.strip().isdigit():
        value = int(code.strip())
        return value if value <= 999 else None
    return None


def _number(value: Any) -> float | None:
    """A JSON number or numeric string (``"cost":"0.010"`` in the document) as float."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _describe(reply: Mapping[str, Any]) -> str:
    description = reply.get("errordescription")
    return str(description)[:120] if isinstance(description, str) and description else ""


def parse_send_reply(response: HttpResponse) -> tuple[Outcome, float | None]:
    """(outcome, remaining balance if the reply says) for a ``sendSms`` answer that is not a
    5xx/408/429 (the base class has classified those already)."""
    reply = _reply_object(response)
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
    balance = _number(reply.get("balance"))
    if reply["success"]:
        smsid = reply.get("smsid")
        parts = reply.get("smscount")
        parts = parts if isinstance(parts, int) and not isinstance(parts, bool) and parts > 0 else 1
        cost = _number(reply.get("charge"))
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
    code = _error_code(reply)
    if code is None:
        return (
            Outcome(_P, detail="refused without an error code", error_code=ERR_BAD_REPLY),
            balance,
        )
    kind, meaning = SEND_ERRORS.get(code, (_P, "undocumented error code"))
    provider_text = _describe(reply)
    detail = f"{code} {meaning}" + (f" ({provider_text})" if provider_text else "")
    return Outcome(kind, detail=detail, error_code=code), balance


def parse_balance_reply(response: HttpResponse) -> tuple[bool, float | None]:
    """``getBalance``: (credentials accepted, balance in EUR)."""
    reply = _reply_object(response)
    if reply is None or reply.get("success") is not True:
        return False, None
    return True, _number(reply.get("balance"))


def report_for(
    provider: str, smsid: str, status: str, done_at: float | None
) -> DeliveryReport | None:
    """The report a status word means, or None for a word the document does not list."""
    mapped = STATUS_STATES.get(status)
    if mapped is None:
        return None
    state, err = mapped
    return DeliveryReport(provider, smsid, state, err, done_at)


def parse_poll_reply(response: HttpResponse) -> list[tuple[str, str]]:
    """``getDeliveryReports`` → [(smsid, status)]. ValueError (with the code, if any) for an
    error reply or a body that is not the documented one."""
    reply = _reply_object(response)
    if reply is None or not isinstance(reply.get("success"), bool):
        raise ValueError(f"HTTP {response.status}: not a My-Cool-SMS reply")
    if not reply["success"]:
        raise ValueError(f"error {_error_code(reply)}: {_describe(reply)}".rstrip(": "))
    items = reply.get("reports")
    if not isinstance(items, list):
        raise ValueError("no reports array in the reply")
    out: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, dict):
            smsid, status = item.get("smsid"), item.get("status")
            if isinstance(smsid, str) and smsid and isinstance(status, str):
                out.append((smsid, status))
    return out


def _json_object(body: bytes) -> dict[str, Any]:
    """A push's raw body as a JSON object ("immer als JSON Objekt in der HTTP Raw-Data")."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    return data


def parse_report_push(body: bytes) -> tuple[str, str]:
    """``pushDeliveryReport`` → (smsid, status word). ValueError when malformed."""
    data = _json_object(body)
    smsid, status = data.get("smsid"), data.get("status")
    if not isinstance(smsid, str) or not smsid.strip():
        raise ValueError("no smsid")
    if not isinstance(status, str) or status not in STATUS_STATES:
        raise ValueError("no known status")
    return smsid.strip(), status


def _inbound_address(value: str, *, allow_text: bool) -> Address:
    digits = value.strip()
    if digits.startswith("00"):
        digits = digits[2:]
    digits = digits.lstrip("+")
    if digits.isdigit() and len(digits) <= 15:
        return Address(digits, 1, 1)
    if allow_text and 0 < len(value.strip()) <= MAX_SENDER_CHARS:
        return Address(value.strip(), _TON_ALPHANUMERIC, 0)
    raise ValueError("not a phone number")


def _inbound_text(data: Mapping[str, Any]) -> str:
    """``body`` (the text as a Unicode string) first; else ``bodyucs2``; else ``bodygsm7``
    (GSM septets as hex, one per octet)."""
    body = data.get("body")
    if isinstance(body, str):
        return body
    ucs2 = data.get("bodyucs2")
    if isinstance(ucs2, str) and ucs2:
        return from_ucs2_hex(ucs2)
    gsm = data.get("bodygsm7")
    if isinstance(gsm, str) and gsm:
        try:
            return gsm7_decode(bytes.fromhex(gsm))
        except (ValueError, TextError):
            raise ValueError("bodygsm7 is not GSM7 notation") from None
    raise ValueError("no text (body, bodyucs2 or bodygsm7)")


def parse_inbound_push(body: bytes, *, provider: str, received_at: float) -> InboundMessage:
    """``pushIncomingSms`` → an :class:`InboundMessage` (account left to the bridge's
    ``inbound_numbers``). ValueError when malformed."""
    data = _json_object(body)
    sender, to = data.get("from"), data.get("to")
    if not isinstance(sender, str) or not sender.strip():
        raise ValueError("no from")
    if not isinstance(to, str) or not to.strip():
        raise ValueError("no to")
    try:
        source = _inbound_address(sender, allow_text=True)
        destination = _inbound_address(to, allow_text=False)
    except ValueError as exc:
        raise ValueError(f"from/to: {exc}") from None
    return InboundMessage(
        account="",
        source=source,
        destination=destination,
        text=_inbound_text(data),
        received_at=received_at,
        provider=provider,
    )


def incoming_fields(
    *,
    username: str,
    password: str,
    threshold: int,
    limit: int,
    order: Literal["ASC", "DESC"] = "ASC",
    virtual_number: str | None = None,
) -> dict[str, Any]:
    """``getIncomingSms``: the SMS with an id above ``threshold``, oldest first."""
    fields: dict[str, Any] = {
        "username": username,
        "password": password,
        "function": "getIncomingSms",
        "thresholdid": threshold,
        "thresholdoperator": "gt",
        "limit": limit,
        "order": order,
    }
    if virtual_number:
        fields["virtualnumber"] = virtual_number
    return fields


@dataclass(frozen=True, slots=True)
class PolledSms:
    """One entry of ``getIncomingSms``'s ``messages``: its id and the MO (None when the entry
    is unusable: it is skipped, but its id still moves the threshold)."""

    id: int
    message: InboundMessage | None
    error: str = ""


def _int_id(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_inbound_poll(
    response: HttpResponse, *, provider: str, received_at: float
) -> tuple[list[PolledSms], int | None]:
    """``getIncomingSms`` → (entries sorted by id, ``maxid``). ValueError for an error reply
    or a body that is not the documented one. Entries without a usable id are dropped (no
    threshold can pass them); entries with an id but no sender/number/text are returned with
    ``message=None`` so the caller logs them and moves on."""
    reply = _reply_object(response)
    if reply is None or not isinstance(reply.get("success"), bool):
        raise ValueError(f"HTTP {response.status}: not a My-Cool-SMS reply")
    if not reply["success"]:
        raise ValueError(f"error {_error_code(reply)}: {_describe(reply)}".rstrip(": "))
    items = reply.get("messages")
    if not isinstance(items, list):
        raise ValueError("no messages array in the reply")
    out: list[PolledSms] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        sms_id = _int_id(item.get("id"))
        if sms_id is None:
            continue
        sender, to = item.get("senderid"), item.get("virtualnumber")
        try:
            if not isinstance(sender, str) or not sender.strip():
                raise ValueError("no senderid")
            if not isinstance(to, str) or not to.strip():
                raise ValueError("no virtualnumber")
            message = InboundMessage(
                account="",
                source=_inbound_address(sender, allow_text=True),
                destination=_inbound_address(to, allow_text=False),
                text=_inbound_text(item),
                received_at=received_at,
                provider=provider,
            )
        except ValueError as exc:
            out.append(PolledSms(sms_id, None, str(exc)))
            continue
        out.append(PolledSms(sms_id, message))
    out.sort(key=lambda p: p.id)
    return out, _int_id(reply.get("maxid"))


def fingerprint(message: InboundMessage) -> str:
    """What an MO pushed and the same MO polled have in common (the push has no id): sender,
    receiving number and text, hashed (the state file holds no numbers or texts)."""
    key = f"{message.source.digits}\0{message.destination.digits}\0{message.text or ''}"
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).hexdigest()[:32]


class _Seen:
    """A multiset of fingerprints with expiry (oldest first), bounded."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.items: deque[tuple[str, float]] = deque()
        self.counts: dict[str, int] = {}

    def add(self, fp: str, now: float) -> None:
        self.items.append((fp, now + self.window))
        self.counts[fp] = self.counts.get(fp, 0) + 1
        while len(self.items) > MAX_REMEMBERED:
            self._drop_left()

    def _drop_left(self) -> None:
        fp, _ = self.items.popleft()
        n = self.counts.get(fp, 0) - 1
        if n > 0:
            self.counts[fp] = n
        else:
            self.counts.pop(fp, None)

    def expire(self, now: float) -> None:
        while self.items and self.items[0][1] <= now:
            self._drop_left()

    def take(self, fp: str) -> bool:
        """Remove one occurrence of ``fp``; True if there was one."""
        n = self.counts.get(fp, 0)
        if n <= 0:
            return False
        for i, (item, _) in enumerate(self.items):
            if item == fp:
                del self.items[i]
                break
        if n > 1:
            self.counts[fp] = n - 1
        else:
            del self.counts[fp]
        return True

    def dump(self) -> list[list[Any]]:
        return [[fp, expires] for fp, expires in self.items]

    def load(self, items: Any, now: float) -> None:
        if not isinstance(items, list):
            return
        for item in items:
            if (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], str)
                and isinstance(item[1], int | float)
                and item[1] > now
            ):
                self.items.append((item[0], float(item[1])))
                self.counts[item[0]] = self.counts.get(item[0], 0) + 1


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class InboundPoller:
    """``getIncomingSms`` polling with its durable threshold and the push/poll dedupe.

    State (``<data_dir>/providers/<name>.inbound.json``): ``thresholdid`` (the highest id
    already queued or skipped), and the fingerprints of MOs taken by push and not yet seen by
    poll (``pushed``) and vice versa (``polled``). Written (fsync, rename) after every MO
    queued and every push taken: a crash can at worst deliver one MO twice, never lose one.
    Without a state file (first start) the threshold starts at the provider's current
    ``maxid``: SMS received before polling was enabled are not fetched again.
    """

    def __init__(self, provider: MyCoolSmsProvider, path: Path | None) -> None:
        self.provider = provider
        self.path = path
        self.threshold: int | None = None
        self.pushed = _Seen(DEDUPE_WINDOW)
        self.polled = _Seen(DEDUPE_WINDOW)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._stopping = False
        self._taking = False  # inside _take: queuing an MO and writing its threshold
        self.wake = asyncio.Event()

    # ------------------------------------------------------------------ state
    def load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            log.warning(
                "mycoolsms_inbound_state_unreadable", provider=self.provider.name, error=str(exc)
            )
            return
        if not isinstance(data, dict):
            return
        threshold = _int_id(data.get("thresholdid"))
        self.threshold = threshold
        now = time.time()
        self.pushed.load(data.get("pushed"), now)
        self.polled.load(data.get("polled"), now)

    async def save(self) -> None:
        if self.path is None:
            return
        now = time.time()
        self.pushed.expire(now)
        self.polled.expire(now)
        data = json.dumps(
            {
                "thresholdid": self.threshold,
                "pushed": self.pushed.dump(),
                "polled": self.polled.dump(),
            },
            separators=(",", ":"),
        ).encode()
        await asyncio.to_thread(_write_atomically, self.path, data)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.load()
        self._stopping = False
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.provider.name}-mo-poll")

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop polling. An MO being queued (and its threshold written) is finished first, so a
        restart does not deliver it again; a fetch or the wait between polls is cancelled."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        if self._taking:
            await asyncio.wait({task}, timeout=timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        interval = self.provider.config.inbound_poll_interval
        while not self._stopping:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # supervised: a bug or a store error must not end polling
                self._failed("error", error=repr(exc)[:200])
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), interval)

    def _failed(self, reason: str, **fields: Any) -> None:
        self.provider.ctx.count_event("inbound_poll_failed")
        if not self._failing:  # one line per outage, not one per interval
            self._failing = True
            log.warning(
                "mycoolsms_inbound_poll_failed",
                provider=self.provider.name,
                reason=reason,
                **fields,
            )

    # ------------------------------------------------------------------ one poll
    async def _fetch(
        self, threshold: int, limit: int, order: Literal["ASC", "DESC"]
    ) -> tuple[list[PolledSms], int | None] | None:
        p = self.provider
        username, password = p._credentials()
        request = encode_request(
            p.config.base_url,
            incoming_fields(
                username=username,
                password=password,
                threshold=threshold,
                limit=limit,
                order=order,
                virtual_number=p.config.virtual_number,
            ),
            p.config.request_format,
        )
        try:
            response = await p.call(request)
        except HttpError as exc:
            self._failed("no_answer", detail=exc.reason)
            return None
        if classify_http_status(response.status) is not None:
            self._failed("http_status", status=response.status)
            return None
        try:
            return parse_inbound_poll(response, provider=p.name, received_at=p.ctx.clock())
        except ValueError as exc:
            self._failed("bad_reply", error=str(exc))
            return None

    async def poll_once(self) -> int:
        """Fetch and queue every MO above the threshold; the number queued."""
        p = self.provider
        if p.inbound is None:
            return 0
        if self.threshold is None:
            # First start: begin after what the account already holds.
            got = await self._fetch(0, 1, "DESC")
            if got is None:
                return 0
            entries, maxid = got
            self.threshold = max([maxid or 0, *(e.id for e in entries)])
            async with self._lock:
                await self.save()
            log.info("mycoolsms_inbound_poll_started", provider=p.name, thresholdid=self.threshold)
        queued = 0
        while True:
            got = await self._fetch(self.threshold, MAX_INBOUND_PER_POLL, "ASC")
            if got is None:
                return queued
            entries, _ = got
            if self._failing:
                self._failing = False
                log.info("mycoolsms_inbound_poll_recovered", provider=p.name)
            fresh = [e for e in entries if e.id > self.threshold]
            for entry in fresh:
                if self._stopping:
                    return queued
                self._taking = True
                try:
                    queued += await self._take(entry)
                finally:
                    self._taking = False
            if len(entries) < MAX_INBOUND_PER_POLL or not fresh or self._stopping:
                return queued

    async def _take(self, entry: PolledSms) -> int:
        """Queue one polled MO unless a push brought it already; then move the threshold."""
        p = self.provider
        assert p.inbound is not None and self.threshold is not None
        async with self._lock:
            if entry.message is None:
                log.warning(
                    "mycoolsms_inbound_unusable", provider=p.name, id=entry.id, error=entry.error
                )
                self.threshold = max(self.threshold, entry.id)
                await self.save()
                return 0
            fp = fingerprint(entry.message)
            if self.pushed.take(fp):
                p.ctx.count_event("inbound_duplicate")
                self.threshold = max(self.threshold, entry.id)
                await self.save()
                return 0
            # Queued before it counts as done: a store error raises here, the threshold stays
            # and the next poll fetches it again.
            await p.inbound(entry.message)
            self.polled.add(fp, time.time())
            self.threshold = max(self.threshold, entry.id)
            await self.save()
            return 1

    async def take_push(self, message: InboundMessage) -> bool:
        """A pushed MO: False when polling queued it already (answer 200, queue nothing);
        else queue it and remember it for the poll."""
        p = self.provider
        assert p.inbound is not None
        async with self._lock:
            fp = fingerprint(message)
            if self.polled.take(fp):
                p.ctx.count_event("inbound_duplicate")
                await self.save()
                return False
            await p.inbound(message)
            self.pushed.add(fp, time.time())
            await self.save()
            return True


# --------------------------------------------------------------------------- the provider


def _wants_report(message: Message) -> bool:
    """registered_delivery asks for a final, failure-only or intermediate notification."""
    return message.wants_failure_receipt or message.wants_intermediate


class MyCoolSmsProvider(HttpProvider):
    """The My-Cool-SMS adapter (see the module docstring)."""

    callback_kinds: tuple[CallbackKind, ...] = ("report", "inbound")

    def __init__(self, name: str, settings: Settings, ctx: ProviderContext) -> None:
        super().__init__(name, settings, ctx, capabilities_for(settings))
        self.config = settings
        self.inbound_poller: InboundPoller | None = None
        if settings.poll_inbound:
            path = None if ctx.state_dir is None else ctx.state_dir / f"{name}.inbound.json"
            self.inbound_poller = InboundPoller(self, path)

    async def start(self, reports: ReportSink, inbound: InboundSink) -> None:
        await super().start(reports, inbound)
        if self.inbound_poller is not None:
            self.inbound_poller.start()

    async def stop(self) -> None:
        if self.inbound_poller is not None:
            await self.inbound_poller.stop()
        await super().stop()

    def _credentials(self) -> tuple[str, str]:
        return self.config.username, self.config.password.get_secret_value()

    # ------------------------------------------------------------------ sending
    def build_send(self, message: Message) -> HttpRequest:
        callback = None
        if self.config.push_reports and _wants_report(message):
            callback = self.ctx.callback_url("report")
        username, password = self._credentials()
        fields = send_fields(
            message,
            username=username,
            password=password,
            callback_url=callback,
            now=self.ctx.clock(),
        )
        return encode_request(self.config.base_url, fields, self.config.request_format)

    def parse_send(self, message: Message, response: HttpResponse) -> Outcome:
        outcome, balance = parse_send_reply(response)
        if balance is not None:
            self.ctx.set_balance(balance)
        return outcome

    # ------------------------------------------------------------------ health
    def build_health(self) -> HttpRequest:
        username, password = self._credentials()
        return encode_request(
            self.config.base_url,
            balance_fields(username=username, password=password),
            self.config.request_format,
        )

    def parse_health(self, response: HttpResponse) -> tuple[bool, float | None]:
        return parse_balance_reply(response)

    # ------------------------------------------------------------------ polling
    async def poll(self, messages: Sequence[Message]) -> list[DeliveryReport]:
        """``getDeliveryReports`` in calls of at most 100 ids. A failed call is logged (no
        URL, no credentials) and its messages are simply asked again at the next poll."""
        ids = list(dict.fromkeys(m.provider_message_id for m in messages if m.provider_message_id))
        reports: list[DeliveryReport] = []
        username, password = self._credentials()
        for start in range(0, len(ids), MAX_IDS_PER_POLL):
            chunk = ids[start : start + MAX_IDS_PER_POLL]
            request = encode_request(
                self.config.base_url,
                poll_fields(chunk, username=username, password=password),
                "json",
            )
            try:
                response = await self.paced_call(request)
            except HttpError as exc:
                log.warning("mycoolsms_poll_failed", provider=self.name, reason=exc.reason)
                break
            if classify_http_status(response.status) is not None:
                log.warning("mycoolsms_poll_failed", provider=self.name, status=response.status)
                break
            try:
                pairs = parse_poll_reply(response)
            except ValueError as exc:
                log.warning("mycoolsms_poll_failed", provider=self.name, error=str(exc))
                continue
            now = self.ctx.clock()
            wanted = set(chunk)
            for smsid, status in pairs:
                report = report_for(self.name, smsid, status, now)
                if report is None or smsid not in wanted:
                    log.debug("mycoolsms_poll_ignored", provider=self.name, status=status)
                    continue
                reports.append(report)
        return reports

    # ------------------------------------------------------------------ pushes
    async def handle_callback(self, kind: CallbackKind, request: CallbackRequest) -> CallbackReply:
        if request.method != "POST":
            return CallbackReply(405, "POST only")
        if kind == "report":
            return await self._report_push(request.body)
        if kind == "inbound":
            return await self._inbound_push(request.body)
        return CallbackReply(404, "Not Found")

    async def _report_push(self, body: bytes) -> CallbackReply:
        try:
            smsid, status = parse_report_push(body)
        except ValueError as exc:
            log.warning("mycoolsms_report_malformed", provider=self.name, error=str(exc))
            return CallbackReply(400, f"malformed delivery report: {exc}")
        report = report_for(self.name, smsid, status, self.ctx.clock())
        if report is None or self.reports is None:  # not started: nothing can take it
            return CallbackReply(503, "not ready")
        await self.reports(report)  # unknown ids are logged and counted by the receiver
        return CallbackReply()

    async def _inbound_push(self, body: bytes) -> CallbackReply:
        try:
            message = parse_inbound_push(body, provider=self.name, received_at=self.ctx.clock())
        except ValueError as exc:
            log.warning("mycoolsms_inbound_malformed", provider=self.name, error=str(exc))
            return CallbackReply(400, f"malformed incoming SMS: {exc}")
        if self.inbound is None:
            return CallbackReply(503, "not ready")
        if self.inbound_poller is not None:
            await self.inbound_poller.take_push(message)  # once, whichever way came first
            return CallbackReply()
        await self.inbound(message)  # an unowned number is logged and counted by the receiver
        return CallbackReply()


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    return MyCoolSmsProvider(name, settings, ctx)
