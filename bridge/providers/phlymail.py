"""phlyMail adapter (``type = "phlymail"``): the message gateway's ``http.php``.

The specification is phlyMail's German "SMS-Gateway" page ("Aufruf des Gateways", "Rückgaben
des Gateways", "Parameterangabe"; ``docs/providers/phlymail.md`` has the full mapping). What it
says, and what we made of it where it says nothing:

* **One URL, one ``mode``.** ``https://msggw.phlymail.de/http.php``, "wahlweise per HTTP GET
  oder HTTP POST": ``mode=test`` (connection and login test), ``mode=synchro`` (credit
  balance), ``mode=sms`` (send), ``mode=udh`` (binary, "Details auf Anfrage") and ``mode=utf``
  (Unicode, "Details auf Anfrage"). We POST a form by default (``method``), so the password
  hash and the text stay out of every URL and access log; ``method = "GET"`` sends the page's
  own example form.
* **Replies** are one line, ``<CODE> <readable English text>``. Send: 100 (taken; the text
  starts with the number of effective SMS), 201 (text too long), 202 (a mandatory field
  missing), 203 (credit too low), 402 (wrong login). Every one of them, and the connection
  test's 401 should a send ever get it, has a row in :data:`SEND_CODES`; the code is the
  receipt's ``err:``. 203 is transient (a top-up fixes it; retried until the validity ends,
  or ``[pipeline] failover_after`` moves on sooner); the rest are permanent. An undocumented
  code is permanent with that code; a reply that is not ``<CODE> …`` at all (a proxy's page)
  is transient.
* **Credentials**: ``user`` and either ``encpass`` (MD5 of the password, "always to be
  preferred") or ``pass`` (plain). ``password_field`` chooses; default ``encpass``. The MD5 is
  taken over the password's ISO-8859-1 bytes (the interface's charset; UTF-8 for a password
  ISO-8859-1 cannot hold). The hash logs in as well as the password does: it is a secret too.
* **Charset**: "Das character encoding der Schnittstelle ist ISO-8859-1". Text ISO-8859-1 can
  hold goes as ``mode=sms`` with every parameter percent-encoded in ISO-8859-1 (so ``Grüße``
  sent as UCS2 by the ESME still goes the cheap way). Anything else (``€``, Greek, Cyrillic,
  emoji) goes as ``mode=utf``, whose details the page leaves to a request: we send the same
  parameters, percent-encoded in UTF-8 (what the mode's name says). ``unicode = false`` turns
  that mode off (such text is then refused before any request and fails over).
* **Length**: "maximale Länge einer Nachricht 918 Zeichen (6 x 153 Zeichen)" — a GSM limit
  ("standardbedingt"), so we count it in GSM septets: the extension characters ``^ { } \\ [ ~ ]
  | \\f`` count two. Unicode: the page gives no limit; we derive 402 = 6 × 67 (the same six
  parts, at the 67 UCS2 characters a concatenated part holds), counted in UTF-16 code units.
  Longer text is refused before any request with the gateway's own 201.
* **Numbers**: ``to`` "im Format 004917712345678": ``00`` and the E.164 digits. ``from``: the
  same format, or "alphanumerisch (Zeichen 0-9 und A-Z) mit maximal 11 Zeichen"; we read A-Z
  as letters of either case. A name with other characters (space, ``-``, umlauts), or a
  national/short sender number we cannot make international, is refused before any request
  (``err:001``, the bridge's "cannot be expressed"), so another route may carry it.
* **No delivery reports exist** in this API (no id is returned, nothing is pushed, nothing can
  be polled): a message phlyMail took is finished at once as ``ACCEPTED`` — the honest final
  state (phlyMail has it; whether it reached the handset will never be known). An ESME that
  asked for a receipt gets ``stat:ACCEPTD err:000`` straight away. The gateway gives no message
  id, so the message is recorded under a synthetic ``phly-<our message id>`` (it is taken and
  must not be sent again after a restart). ``capabilities.reports = "none"``.
* **Not in the API**: scheduling (the bridge holds scheduled messages until due), validity
  periods, flash SMS, reference ids, inbound SMS. Binary SMS (``mode=udh``) are "Details auf
  Anfrage": the page names no parameter for the header or the octets, so binary content and
  user data headers are refused rather than guessed at.
* **Health**: ``mode=synchro`` (checks the login too, 402) and its balance — the first number
  of the reply's readable text — feeds ``bridge_provider_balance``; ``health = "test"`` uses
  ``mode=test`` instead (100 / 401, no balance).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator

from bridge.core.model import Address, Message, MessageState, Outcome, OutcomeKind
from bridge.core.provider import Capabilities, Provider, ProviderContext
from bridge.providers.http import HttpRequest, HttpResponse
from bridge.providers.http_provider import ERR_UNSENDABLE, HttpProvider, Unsendable
from bridge.providers.settings import HttpProviderSettings, Secret, resolve_env
from bridge.smpp.text import GSM7_EXTENSION_CHARS

__all__ = [
    "CAPABILITIES",
    "CODE_OK",
    "DEFAULT_BASE_URL",
    "ID_PREFIX",
    "LATIN1",
    "MAX_SENDER_NAME_CHARS",
    "MAX_SMS_SEPTETS",
    "MAX_UTF_UNITS",
    "SEND_CODES",
    "Account",
    "PhlymailProvider",
    "Reply",
    "Settings",
    "build_balance_request",
    "build_send_request",
    "build_test_request",
    "create",
    "expected_parts",
    "format_number",
    "format_sender",
    "md5_password",
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

DEFAULT_BASE_URL = "https://msggw.phlymail.de/http.php"
#: "Das character encoding der Schnittstelle ist ISO-8859-1."
LATIN1 = "iso-8859-1"
#: Charset of ``mode=utf`` requests (the page: "Details auf Anfrage"; see the module docstring).
UTF8 = "utf-8"

#: One SMS; "Nachrichten über 160 Zeichen Länge werden automatisch in Einzel-SMS aufgeteilt".
SINGLE_SMS_SEPTETS = 160
PART_SEPTETS = 153
#: "Standardbedingt beträgt die maximale Länge einer Nachricht 918 Zeichen (6 x 153 Zeichen)."
MAX_PARTS = 6
MAX_SMS_SEPTETS = MAX_PARTS * PART_SEPTETS
#: Unicode: not on the page; derived as the same six parts of 67 UCS2 characters (70 alone).
SINGLE_UTF_UNITS = 70
PART_UTF_UNITS = 67
MAX_UTF_UNITS = MAX_PARTS * PART_UTF_UNITS
#: ``from``: "alphanumerische Zeichenkette ... mit maximal 11 Zeichen Länge".
MAX_SENDER_NAME_CHARS = 11
#: E.164 numbers have at most 15 digits.
MAX_NUMBER_DIGITS = 15

#: The gateway gives no message id: taken messages are recorded as ``phly-<our id>``.
ID_PREFIX = "phly-"

CODE_OK = 100

CAPABILITIES = Capabilities(
    max_gsm7_chars=MAX_SMS_SEPTETS,
    max_ucs2_chars=MAX_UTF_UNITS,
    unicode=True,  # mode=utf (create() follows the unicode setting)
    binary=False,  # mode=udh: "Details auf Anfrage", no parameters documented
    flash=False,
    scheduling=False,  # no such parameter: the bridge holds scheduled messages
    alphanumeric_sender=True,
    max_sender_chars=MAX_SENDER_NAME_CHARS,
    reports="none",  # the API has no delivery reports at all
)

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


# --------------------------------------------------------------------------- sending


@dataclass(frozen=True, slots=True)
class Account:
    """What every request needs beside the message (the password stays a SecretStr until a
    request is built)."""

    url: str
    user: str
    password: SecretStr
    password_field: Literal["encpass", "pass"] = "encpass"
    method: Literal["GET", "POST"] = "POST"
    unicode: bool = True


def md5_password(password: str) -> str:
    """``encpass``: lower-case hex MD5 of the password's ISO-8859-1 bytes (UTF-8 bytes for a
    password ISO-8859-1 cannot hold)."""
    try:
        raw = password.encode(LATIN1)
    except UnicodeEncodeError:
        raw = password.encode(UTF8)
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


def _credentials(account: Account) -> list[tuple[str, str]]:
    password = account.password.get_secret_value()
    if account.password_field == "encpass":
        return [("user", account.user), ("encpass", md5_password(password))]
    return [("user", account.user), ("pass", password)]


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
    params = [*_credentials(account), ("mode", mode), ("from", sender), ("to", to)]
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
    return _request(account, [*_credentials(account), ("mode", "test")], LATIN1)


def build_balance_request(account: Account) -> HttpRequest:
    """``http.php?user=USER&encpass=SECPASS&mode=synchro``."""
    return _request(account, [*_credentials(account), ("mode", "synchro")], LATIN1)


# --------------------------------------------------------------------------- settings


def _latin1_user(value: str) -> str:
    try:
        value.encode(LATIN1)
    except UnicodeEncodeError:
        raise ValueError("must be ISO-8859-1 text (the gateway's charset)") from None
    return value


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "phlymail"`` (every key in config/examples/phlymail.toml).

    The page states no rate or concurrency limit, so the bridge-wide defaults apply.
    """

    type: Literal["phlymail"]
    base_url: str = DEFAULT_BASE_URL
    #: ``user`` (plain, or ``"env:VAR"`` like the password).
    username: Annotated[str, BeforeValidator(resolve_env), Field(min_length=1)]
    password: Secret
    #: ``encpass`` (MD5 of the password, the page's advice) or ``pass`` (plain text).
    password_field: Literal["encpass", "pass"] = "encpass"
    #: The page allows both; POST keeps the credentials and the text out of URLs.
    method: Literal["GET", "POST"] = "POST"
    #: ``mode=utf`` for text outside ISO-8859-1; false: such text is refused (fails over).
    unicode: bool = True
    #: ``synchro``: the balance call (login check + balance gauge); ``test``: the connection test.
    health: Literal["synchro", "test"] = "synchro"

    @field_validator("username")
    @classmethod
    def _username_latin1(cls, value: str) -> str:
        return _latin1_user(value)

    def account(self) -> Account:
        return Account(
            url=self.base_url,
            user=self.username,
            password=self.password,
            password_field=self.password_field,
            method=self.method,
            unicode=self.unicode,
        )


# --------------------------------------------------------------------------- the provider


class PhlymailProvider(HttpProvider):
    """The adapter: the pure functions above over :class:`HttpProvider`. No callbacks, no
    polling (the inherited :meth:`poll` returns nothing): the API has no reports."""

    def __init__(
        self, name: str, settings: Settings, ctx: ProviderContext, capabilities: Capabilities
    ) -> None:
        super().__init__(name, settings, ctx, capabilities)
        self.account = settings.account()
        self.health_mode = settings.health

    def build_send(self, message: Message) -> HttpRequest:
        return build_send_request(message, self.account)

    def parse_send(self, message: Message, response: HttpResponse) -> Outcome:
        if not 200 <= response.status < 300:
            # Not the gateway speaking (a wrong URL, a proxy): retried, so nothing is lost
            # while the config is fixed; /readyz shows the provider down meanwhile.
            return Outcome(OutcomeKind.TRANSIENT, detail=f"HTTP {response.status}")
        return parse_send_reply(response.text(LATIN1), message, expected_parts(message))

    def build_health(self) -> HttpRequest:
        if self.health_mode == "test":
            return build_test_request(self.account)
        return build_balance_request(self.account)

    def parse_health(self, response: HttpResponse) -> tuple[bool, float | None]:
        if response.status != 200:
            return False, None
        body = response.text(LATIN1)
        if self.health_mode == "test":
            return parse_test_reply(body), None
        return parse_balance_reply(body)


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    """The adapter for one ``[providers.NAME]`` table (app.py applies the rate limits)."""
    capabilities = CAPABILITIES
    if not settings.unicode:
        capabilities = dataclasses.replace(CAPABILITIES, unicode=False, max_ucs2_chars=0)
    return PhlymailProvider(name, settings, ctx, capabilities)
