"""1601SMS adapter (``type = "sms1601"``): ``gateway.php`` with Dutch parameter names.

The specification is 1601SMS's "SMS Gateway API" page (a short, Dutch-flavoured English
document; ``docs/providers/sms1601.md`` has the full mapping). What it says, and what we made of
it where it says nothing:

* **Send** is one GET of ``gateway.php`` with ``klantuser``, ``klantpwd``, ``bericht`` (text),
  ``naar`` (number with country code, no ``+``: "eg 32478123456") and ``afzender`` (sender). The
  answer is ``OK``, ``OK <smsID>`` when ``delivery=ja`` was given, or "an error + nr." — we read
  ``ERROR 104`` (the form the page shows for the outbox calls) and accept ``ERR``/``:``
  variants. Every documented code 100–150 has a row in :data:`ERRORS`.
* **Password**: "you can encode this password with SHA-1 for extra security" — ``password_sha1``
  sends the hex SHA-1 digest of the configured password instead of the password (we compute it;
  the config holds the real one). The digest is as good as the password for this API, so it is
  handled as a secret too.
* **Receipts** are requested (``delivery=ja``) only when the ESME asked for one
  (registered_delivery); without it the gateway answers a bare ``OK`` and never reports, so such
  a message is finished at once as ACCEPTED (no receipt goes out: none was asked for). An ``OK``
  without an id when we did ask, and every send in ``test`` mode (``test=ja``: checked, not
  sent, no report), end the same way, so nothing waits for a report that cannot come.
* **Reports** come two ways. Push: the account's "delivery notification URL", entered in the
  1601SMS web module (account-level, not per message), is called with GET ``smsid``, ``datum``
  (``yyyymmdduummss``, "uu" = hour), ``status`` and ``referentie``. Poll:
  ``gatewayrapport.php?smsid=N`` (next to ``gateway.php``; the page's example carries no
  credentials, so we send none) with ``datum=ja`` answers ``STATUS dd/mm/yyyy uu:mm:ss``.
  BUFFERED and SUBMITTED are intermediate (ENROUTE); NONE ("no delivery report available and
  therefore no known status") is final UNKNOWN. The page has no numeric codes for these words,
  so the receipts' ``err:`` values for them are ours (:data:`STATUSES`).
* **Charset**: the page only says to urlencode ``bericht``; it never mentions Unicode, and its
  limits (160 characters, 153 per part of a long message) are GSM 03.38 limits. So text must be
  GSM 03.38; anything else is :class:`Unsendable` (the route's next provider may carry it).
  The parameters are percent-encoded in UTF-8 unless ``charset = "iso-8859-1"`` (then the Greek
  capitals and € of the GSM alphabet are unsendable too).
* **Length** is counted in GSM septets (an extension character such as € counts 2), the unit the
  160/153 limits are really in: above 160, ``type=long`` (at most 459 = 3 × 153, error 118).
* **Sender**: at most 12 characters (error 111); a number must start with ``+`` (error 110), so a
  numeric sender is sent as ``+`` and its international digits; "special characters not allowed
  on all networks" (error 113) — we allow letters, digits and spaces in a name. Refusals we can
  see before sending carry the code the gateway would have answered, so the ESME sees the same
  ``err:`` either way.
* **Scheduling**: ``datum=yyyymmddhhii`` ("ii" = minutes, PHP style), in the provider's local
  time (the page names no zone; 1601SMS is Dutch: ``timezone``, default Europe/Amsterdam),
  rounded up to the next minute (SMPP schedule_delivery_time means "not before"), always with
  ``emailen=nee`` (else the gateway mails a confirmation per scheduled message). Error 121 (date
  in the past) is transient: the retry, once the time has passed, sends without ``datum``.
  ``native_scheduling = false`` leaves scheduled messages to the bridge instead.
* **Several numbers per request** ("You can also use multiple numbers by separating them with a
  comma"): with ``bulk = "unreported"`` or ``"all"`` messages queued together with the same text,
  sender and options go in one request of up to ``bulk_max`` numbers
  (:meth:`Sms1601Provider.send_batch`). The page does not say what ``OK + a smsID`` looks like
  for several numbers, and a push carries ``smsid`` and ``referentie`` but no number, so a report
  could not be attributed to a destination: bulk requests never ask ``delivery=ja`` nor pass a
  ``referentie``, and every destination taken is finished ``ACCEPTD`` ("unreported": only
  messages whose ESME asked for no receipt go in bulk; "all": also the others, whose receipt then
  is ``ACCEPTD``). Errors about a number (106, 107, 112, 114, 119) send each number again on its
  own; any other error is every destination's.
* **Our message id** goes in ``referentie`` (≤ 75 characters; ours are ≤ 64), which the gateway
  echoes in pushes.
* Not in the API, so not supported: Unicode, binary/UDH content, flash, validity periods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import math
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
from pydantic import BeforeValidator, Field, SecretStr, field_validator

from bridge.core.model import (
    Address,
    DeliveryReport,
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
from bridge.providers.http_provider import HttpProvider, Unsendable
from bridge.providers.settings import HttpProviderSettings, Secret, resolve_env
from bridge.smpp.text import TextError, gsm7_septet_count

__all__ = [
    "CAPABILITIES",
    "DEFAULT_TIMEZONE",
    "ERRORS",
    "ERR_NONE",
    "ERR_NOT_DELIVERED",
    "ERR_REJECTED",
    "LONG_MAX_SEPTETS",
    "LONG_PART_SEPTETS",
    "MAX_NAME_CHARS",
    "PER_NUMBER_ERRORS",
    "SINGLE_MAX_SEPTETS",
    "STATUSES",
    "Account",
    "PushedReport",
    "Settings",
    "Sms1601Provider",
    "build_bulk_request",
    "build_credits_request",
    "build_send_request",
    "build_status_request",
    "bulk_key",
    "create",
    "format_datum",
    "format_sender",
    "gsm_septets",
    "parse_credits_reply",
    "parse_datum",
    "parse_report_callback",
    "parse_send_reply",
    "parse_status_reply",
    "password_param",
    "report_url_for",
    "status_word",
    "text_parts",
]

log = structlog.get_logger("bridge.providers.sms1601")

DEFAULT_BASE_URL = "http://217.19.227.48/module/gateway.php"
DEFAULT_TIMEZONE = "Europe/Amsterdam"

#: One SMS; above it ``type=long`` (error 105 otherwise).
SINGLE_MAX_SEPTETS = 160
#: "you can only use 153 characters per text message when using long SMS".
LONG_PART_SEPTETS = 153
#: "a max. of 459 characters (seperated to a maximum of 3 messages)" (error 118).
LONG_MAX_SEPTETS = 3 * LONG_PART_SEPTETS
#: Error 111: "This can be up to 12 characters."
MAX_NAME_CHARS = 12
#: E.164: a sender number has at most 15 digits after the ``+``.
MAX_NUMBER_DIGITS = 15
#: ``referentie``: "with a max of 75 characters".
MAX_REFERENCE_CHARS = 75

#: Receipt ``err:`` values for report words that carry no code of the provider's (bridge-defined;
#: 1 is the bridge-wide "no route could express it").
ERR_NOT_DELIVERED = 2
ERR_REJECTED = 3
ERR_NONE = 4

CAPABILITIES = Capabilities(
    max_gsm7_chars=LONG_MAX_SEPTETS,
    max_ucs2_chars=0,  # no Unicode in the API
    unicode=False,
    binary=False,
    flash=False,
    scheduling=True,  # datum=yyyymmddhhii (create() follows native_scheduling)
    alphanumeric_sender=True,
    max_sender_chars=MAX_NAME_CHARS,
    reports="push",  # create() follows the reports setting
)

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

#: Report words (push ``status``, poll reply) → (state, receipt err:).
STATUSES: dict[str, tuple[MessageState, int]] = {
    "DELIVERED": (MessageState.DELIVERED, 0),
    "NOT DELIVERED": (MessageState.UNDELIVERABLE, ERR_NOT_DELIVERED),
    "BUFFERED": (MessageState.ENROUTE, 0),  # operator retries: temporary
    "SUBMITTED": (MessageState.ENROUTE, 0),  # at the operator, no status yet
    "REJECTED": (MessageState.REJECTED, ERR_REJECTED),
    "NONE": (MessageState.UNKNOWN, ERR_NONE),  # no report available: nothing more will come
}

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


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True, slots=True)
class Account:
    """What every request needs beside the message: where, who, and the account's options.

    ``password`` is the configured password; :func:`password_param` makes the ``klantpwd``
    value from it (SHA-1 hex when ``password_sha1``).
    """

    url: str
    username: str
    password: SecretStr
    password_sha1: bool = False
    charset: str = "utf-8"
    test: bool = False
    logging: bool | None = None
    native_scheduling: bool = True
    timezone: tzinfo = field(default_factory=lambda: ZoneInfo(DEFAULT_TIMEZONE))


def password_param(password: str, sha1: bool) -> str:
    """``klantpwd``: the password, or its lower-case hex SHA-1 digest ("you can encode this
    password with SHA-1 for extra security")."""
    if sha1:
        return hashlib.sha1(password.encode("utf-8")).hexdigest()
    return password


def _credentials(account: Account) -> list[tuple[str, str]]:
    return [
        ("klantuser", account.username),
        ("klantpwd", password_param(account.password.get_secret_value(), account.password_sha1)),
    ]


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
    params = _credentials(account)
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


# --------------------------------------------------------------------------- reports


def status_word(raw: str) -> tuple[MessageState, int] | None:
    """(state, err) for a report word; case, ``_`` and repeated blanks do not matter
    (``not_delivered``, ``NOT  DELIVERED``). None for a word the page does not list."""
    word = " ".join(raw.replace("_", " ").split()).upper()
    return STATUSES.get(word)


def parse_datum(value: str, tz: tzinfo) -> float:
    """A push's ``datum`` (``yyyymmdduummss``; ``yyyymmdduumm`` also taken) → epoch seconds.
    ValueError when it is not one."""
    value = value.strip()
    if not value.isdigit() or len(value) not in (12, 14):
        raise ValueError("datum is not yyyymmdduummss")
    fmt = "%Y%m%d%H%M%S" if len(value) == 14 else "%Y%m%d%H%M"
    return datetime.strptime(value, fmt).replace(tzinfo=tz).timestamp()


_SMSID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class PushedReport:
    """A parsed delivery-notification call."""

    smsid: str
    state: MessageState
    error_code: int
    done_at: float | None
    reference: str | None


def parse_report_callback(request: CallbackRequest, tz: tzinfo) -> PushedReport:
    """The account's delivery-notification GET: ``smsid``, ``datum``, ``status``,
    ``referentie``. ValueError (a message safe to answer) when ``smsid`` or ``status`` is
    missing or not what the page describes, or ``datum`` is given but malformed."""
    smsid = (request.param("smsid") or "").strip()
    if not _SMSID_RE.fullmatch(smsid):
        raise ValueError("missing or malformed smsid")
    raw_status = request.param("status")
    if raw_status is None:
        raise ValueError("missing status")
    mapped = status_word(raw_status)
    if mapped is None:
        raise ValueError("unknown status")
    datum = request.param("datum")
    done_at = parse_datum(datum, tz) if datum else None
    reference = request.param("referentie") or None
    return PushedReport(smsid, mapped[0], mapped[1], done_at, reference)


def report_url_for(base_url: str) -> str:
    """``gatewayrapport.php`` in the folder of ``gateway.php`` (the doc's two URLs:
    ``.../module/gateway.php`` and ``.../module/gatewayrapport.php``)."""
    parts = urlsplit(base_url)
    folder = parts.path.rsplit("/", 1)[0]
    return urlunsplit((parts.scheme, parts.netloc, f"{folder}/gatewayrapport.php", "", ""))


def build_status_request(report_url: str, smsid: str) -> HttpRequest:
    """``gatewayrapport.php?smsid=1234567&datum=ja`` (the date makes the receipt's done date)."""
    return HttpRequest("GET", report_url, params=[("smsid", smsid), ("datum", "ja")])


_STATUS_REPLY_RE = re.compile(
    r"(?P<word>NOT[ _]DELIVERED|DELIVERED|BUFFERED|SUBMITTED|REJECTED|NONE)"
    r"(?:\s+(?P<date>\d{1,2}/\d{1,2}/\d{4}\s+\d{1,2}:\d{2}:\d{2}))?",
    re.IGNORECASE,
)


def parse_status_reply(body: str, tz: tzinfo) -> tuple[MessageState, int, float | None] | None:
    """(state, err, done_at) from ``DELIVERED 01/02/2012 10:23:10`` (date: dd/mm/yyyy, the
    provider's zone; optional); None for anything else (``ERROR 124``, an empty page)."""
    match = _STATUS_REPLY_RE.fullmatch(" ".join(body.split()))
    if match is None:
        return None
    mapped = status_word(match["word"])
    assert mapped is not None  # the pattern lists only known words
    done_at: float | None = None
    if match["date"]:
        try:
            done_at = (
                datetime.strptime(match["date"], "%d/%m/%Y %H:%M:%S").replace(tzinfo=tz).timestamp()
            )
        except ValueError:
            done_at = None  # an impossible date: the state still counts
    return mapped[0], mapped[1], done_at


# --------------------------------------------------------------------------- credits


def build_credits_request(account: Account) -> HttpRequest:
    """``gateway.php?klantuser=USERNAME&klantpwd=PASSWORD&action=credits``."""
    params = [*_credentials(account), ("action", "credits")]
    return HttpRequest("GET", account.url, params=params, charset=account.charset)


_NUMBER_RE = re.compile(r"-?\d+(?:[.,]\d+)?")


def parse_credits_reply(body: str) -> float | None:
    """The credits call's answer ("This will return a certain number : example 476") → 476.0;
    None for anything else (an ``ERROR 104``)."""
    text = body.strip()
    if not _NUMBER_RE.fullmatch(text):
        return None
    return float(text.replace(",", "."))


# --------------------------------------------------------------------------- settings


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "sms1601"`` (every key in config/examples/sms1601.toml).

    The page states no rate or concurrency limit, so the bridge-wide defaults apply.
    """

    type: Literal["sms1601"]
    base_url: str = DEFAULT_BASE_URL
    #: Status polling endpoint; default: ``gatewayrapport.php`` next to ``base_url``.
    report_url: str | None = None
    #: ``klantuser`` (plain, or ``"env:VAR"`` like the password).
    username: Annotated[str, BeforeValidator(resolve_env), Field(min_length=1)]
    password: Secret
    #: Send SHA-1(password) as ``klantpwd`` instead of the password.
    password_sha1: bool = False
    #: ``test=ja``: the gateway checks everything but sends nothing and charges nothing.
    test: bool = False
    #: "push": the account's delivery notification URL is set to this bridge (polled once at
    #: start-up only); "poll": ``gatewayrapport.php`` every ``[pipeline] poll_interval``.
    reports: Literal["push", "poll"] = "push"
    #: ``datum=`` for scheduled messages; false: the bridge holds them until due.
    native_scheduling: bool = True
    #: The zone of ``datum`` values, sent and received.
    timezone: str = DEFAULT_TIMEZONE
    #: Percent-encoding of the parameters (the page does not say).
    charset: Literal["utf-8", "iso-8859-1"] = "utf-8"
    #: ``logging=ja|nee`` (keep sendings in the web module's history); unset: the account default.
    logging: bool | None = None
    #: Several numbers per request (``naar=a,b``) for messages queued together with the same
    #: text and sender: "off"; "unreported": only messages whose ESME asked for no receipt;
    #: "all": also those (their receipt is then ACCEPTD: no report names its number).
    bulk: Literal["off", "unreported", "all"] = "off"
    #: Numbers per bulk request (the page states no limit; a GET URL should stay short).
    bulk_max: Annotated[int, Field(ge=2, le=500)] = 50

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name like Europe/Amsterdam)"
            ) from None
        return value

    def account(self) -> Account:
        return Account(
            url=self.base_url,
            username=self.username,
            password=self.password,
            password_sha1=self.password_sha1,
            charset=self.charset,
            test=self.test,
            logging=self.logging,
            native_scheduling=self.native_scheduling,
            timezone=ZoneInfo(self.timezone),
        )


# --------------------------------------------------------------------------- the provider

#: Status requests in flight at once during a poll sweep (sends keep the rest of the pool).
POLL_CONCURRENCY = 4


class Sms1601Provider(HttpProvider):
    """The adapter: the pure functions above over :class:`HttpProvider`."""

    callback_kinds: tuple[CallbackKind, ...] = ("report",)

    def __init__(
        self, name: str, settings: Settings, ctx: ProviderContext, capabilities: Capabilities
    ) -> None:
        super().__init__(name, settings, ctx, capabilities)
        self.account = settings.account()
        self.report_url = settings.report_url or report_url_for(settings.base_url)
        self.bulk: Literal["off", "unreported", "all"] = settings.bulk
        self._alone = AloneIds()  # messages a bulk refusal sent back to go one by one

    # ------------------------------------------------------------------ sending
    def build_send(self, message: Message) -> HttpRequest:
        return build_send_request(message, self.account, self.ctx.clock())

    def parse_send(self, message: Message, response: HttpResponse) -> Outcome:
        if not 200 <= response.status < 300:
            # Not the gateway speaking (a wrong URL, a proxy): retried, so nothing is lost
            # while the config is fixed; /readyz shows the provider down meanwhile.
            return Outcome(OutcomeKind.TRANSIENT, detail=f"HTTP {response.status}")
        septets = gsm_septets(message.text or "") or 0
        return parse_send_reply(response.text(), parts=text_parts(septets), test=self.account.test)

    # ------------------------------------------------------------------ bulk
    def batch_key(self, message: Message) -> Hashable | None:
        if message.id in self._alone:
            return None
        return bulk_key(message, self.account, self.ctx.clock(), self.bulk)

    async def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """One ``naar=a,b,…`` request per ``capabilities.max_batch`` numbers (the dispatcher
        hands at most that many); each destination's outcome from the one reply."""
        return await self.send_chunks(
            messages,
            self.capabilities.max_batch,
            lambda chunk: build_bulk_request(chunk, self.account, self.ctx.clock()),
            self._split_bulk,
        )

    def _split_bulk(self, chunk: Sequence[Message], outcome: Outcome) -> list[Outcome]:
        split = split_outcome(
            outcome,
            len(chunk),
            per_number_codes=PER_NUMBER_ERRORS,
            taken=f"taken in a request for {len(chunk)} numbers; no report can name it",
        )
        if must_go_alone(split, PER_NUMBER_ERRORS):
            self._alone.add([m.id for m in chunk])
        return split

    # ------------------------------------------------------------------ reports
    async def handle_callback(self, kind: CallbackKind, request: CallbackRequest) -> CallbackReply:
        if kind != "report":
            return CallbackReply(404, "1601SMS pushes reports only")
        try:
            pushed = parse_report_callback(request, self.account.timezone)
        except ValueError as exc:
            log.warning("sms1601_push_malformed", provider=self.name, reason=str(exc))
            return CallbackReply(400, f"malformed report: {exc}")
        if self.reports is None:
            return CallbackReply(503, "not ready")
        await self.reports(
            DeliveryReport(
                provider=self.name,
                provider_message_id=pushed.smsid,
                state=pushed.state,
                error_code=pushed.error_code,
                done_at=pushed.done_at,
            )
        )
        return CallbackReply(200, "OK")

    async def poll(self, messages: Sequence[Message]) -> list[DeliveryReport]:
        """One ``gatewayrapport.php`` call per message (the API has no batch status call with
        a documented reply); a call that fails or gets no status word gives no report."""
        gate = asyncio.Semaphore(POLL_CONCURRENCY)

        async def one(smsid: str) -> DeliveryReport | None:
            async with gate:
                try:
                    response = await self.paced_call(build_status_request(self.report_url, smsid))
                except HttpError as exc:
                    log.debug("sms1601_poll_failed", provider=self.name, reason=exc.reason)
                    return None
            if response.status != 200:
                return None
            parsed = parse_status_reply(response.text(), self.account.timezone)
            if parsed is None:
                return None
            state, error_code, done_at = parsed
            return DeliveryReport(self.name, smsid, state, error_code, done_at)

        ids = [m.provider_message_id for m in messages if m.provider_message_id]
        results = await asyncio.gather(*(one(i) for i in ids))
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ health
    def build_health(self) -> HttpRequest:
        return build_credits_request(self.account)

    def parse_health(self, response: HttpResponse) -> tuple[bool, float | None]:
        if response.status != 200:
            return False, None
        balance = parse_credits_reply(response.text())
        return balance is not None, balance


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    """The adapter for one ``[providers.NAME]`` table (app.py applies the rate limits)."""
    capabilities = dataclasses.replace(
        CAPABILITIES,
        scheduling=settings.native_scheduling,
        reports=settings.reports,
        max_batch=1 if settings.bulk == "off" else settings.bulk_max,
    )
    return Sms1601Provider(name, settings, ctx, capabilities)
