"""iSMS.gr over HTTP: ``send.php``, ``query.php`` and ``credits.php`` (one GET each).

The provider's document (Greek, ``shared/seeds/isms-http-soap-smpp``) is the specification; the
module-level functions are the translation it describes, the :class:`IsmsHttpProvider` class only
wires them to the shared HTTP base. Why things are as they are:

* **One message, one request** by default. ``send.php`` takes ``to`` as a comma list, but its
  reply is one ``ID:…`` for all of them and ``query.php`` then needs ``mid`` *and* ``mobile``.
  With ``bulk = true`` messages queued together with the same text, sender and options go in
  one request of up to ``bulk_max`` numbers (:meth:`IsmsHttpProvider.send_batch`); every
  message's provider id is then ``<mid>/<number>`` (single sends too), which is what a push
  (``mid`` + ``mobile``) and ``query.php`` name, so each destination keeps its own receipt.
  "No recipients" names no number: each destination is then sent again on its own.
* **Text.** Every value is percent-encoded in UTF-8 (the document's example:
  ``message=text+at+utf8+format``); ``coding`` tells iSMS how to send it to the handset:
  ``GSM`` when every character is in GSM 03.38 (default table or extension table), else
  ``UTF-8`` (which iSMS sends as UCS2). Long text is sent whole: iSMS concatenates. Binary
  messages and UDH other than concatenation cannot be expressed (no parameter for them).
* **Replies** are text lines: ``ID:I7I5R4HTAA`` or ``Error: <reason>.``. The document lists five
  reasons and gives them no numbers, so each gets a bridge-defined ``err:`` code
  (:data:`SEND_ERRORS`): insufficient credits is TRANSIENT (topping up the account fixes it and
  no message is lost meanwhile; ``failover_after`` moves on to another provider), the other four
  are PERMANENT (a retry cannot succeed; the dispatcher fails over to the next provider).
* **Receipts.** A message whose ESME asked for a receipt (``registered_delivery`` final or
  failure-only) is sent with ``dlr-url`` = this provider's callback URL. The document does not
  say what iSMS adds to that URL; the adapter reads ``mid``, ``mobile`` and ``status`` (the
  names and the ``Queued/Pending/Delivered/Failed`` words of ``query.php``, with a few common
  aliases), and when a push names a message but carries no status word it knows, it asks
  ``query.php`` for it. A message without a receipt request is sent without ``dlr-url`` and
  finishes at once as ``ACCEPTD`` (iSMS would never tell us more about it, and nobody asked;
  leaving it ENROUTE would only end as UNKNOWN after the correlation TTL). With
  ``reports = "poll"`` (a bridge that iSMS cannot reach) no ``dlr-url`` is sent and the
  dispatcher polls ``query.php`` instead.
* **Scheduling** is native (``schedule``): the document accepts any PHP ``strtotime`` phrase
  (``2017-05-11 14:40``, ``+1 week 2 days``, …) but names no time zone, so the adapter sends the
  relative form ``+N seconds``, which means the same in every zone. ``native_schedule = false``
  makes the bridge hold the message instead (then cancel_sm/replace_sm still work until it is
  due).
* **Credentials** are ``username`` and ``password`` query parameters (``password`` is a
  :class:`~bridge.providers.settings.Secret`, read only where a request is built; the shared
  transport never logs a URL). ``credits.php`` is the health check and feeds the balance gauge.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import structlog
from pydantic import BeforeValidator, Field, field_validator

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
from bridge.providers.http_provider import HttpProvider, Unsendable, classify_http_status
from bridge.providers.settings import HttpProviderSettings, Secret, resolve_env
from bridge.smpp.text import gsm7_septet_count, is_gsm7

__all__ = [
    "CAPABILITIES",
    "DEFAULT_BASE_URL",
    "ERR_FAILED",
    "ERR_NO_SUCH_MESSAGE",
    "ERR_UNRECOGNISED",
    "PER_NUMBER_ERRORS",
    "SEND_ERRORS",
    "STATUS_WORDS",
    "IsmsHttpProvider",
    "QueryResult",
    "ReportPush",
    "SendError",
    "Settings",
    "build_credits_request",
    "build_query_request",
    "build_send_request",
    "bulk_id",
    "choose_coding",
    "count_parts",
    "create",
    "format_destination",
    "format_sender",
    "parse_credits_reply",
    "parse_query_reply",
    "parse_report_push",
    "parse_send_reply",
    "schedule_value",
    "script_url",
    "split_bulk_id",
    "status_to_state",
]

log = structlog.get_logger("bridge.providers.isms_http")

#: The directory the three scripts live in (``send.php``, ``query.php``, ``credits.php``).
DEFAULT_BASE_URL = "http://cp.isms.gr/api/http/"

#: What the document promises: text, UTF-8 (all languages), flash, long (concatenated) SMS,
#: sender identity, reports. It names no length limit and no request rate for HTTP (700/s is
#: the SMPP account's figure), so the bridge's defaults stand: 10 parts (1530 GSM septets,
#: 670 UCS2 units), unlimited rate, 16 requests in flight. Senders: 11 characters is the GSM
#: limit for an alphanumeric originator.
CAPABILITIES = Capabilities(
    max_gsm7_chars=1530,
    max_ucs2_chars=670,
    unicode=True,
    binary=False,
    flash=True,
    scheduling=True,
    alphanumeric_sender=True,
    max_sender_chars=11,
    reports="push",
)

#: Longest numeric sender (an E.164 number is at most 15 digits; iSMS's limit is not stated).
MAX_NUMERIC_SENDER = 16

# --------------------------------------------------------------------------- error codes
# iSMS gives its errors as text only; these are the bridge's numbers for them (receipt err:).

#: An ``Error:`` text the document does not list, or an HTTP 4xx answer.
ERR_UNRECOGNISED = 10
#: ``query.php``: ``Error: No such message or recipient.`` (the message is finished UNKNOWN).
ERR_NO_SUCH_MESSAGE = 16
#: ``Status: Failed`` (the receipt says UNDELIV).
ERR_FAILED = 20


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

#: ``query.php``'s ``Status:`` words (and the same words in a ``dlr-url`` push), lower case.
STATUS_WORDS: Mapping[str, tuple[MessageState, int]] = {
    "queued": (MessageState.ENROUTE, 0),
    "pending": (MessageState.ENROUTE, 0),
    "delivered": (MessageState.DELIVERED, 0),
    "failed": (MessageState.UNDELIVERABLE, ERR_FAILED),
}

# --------------------------------------------------------------------------- settings


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "isms_http"``.

    ``base_url`` is the directory of the scripts; a URL of one of them (``…/send.php``) is
    taken as its directory. ``sender`` is used when the ESME sends an empty source address.
    """

    type: Literal["isms_http"]
    base_url: str = DEFAULT_BASE_URL
    username: Annotated[str, BeforeValidator(resolve_env)]  # plain or "env:VAR"
    password: Secret
    sender: str | None = None
    reports: Literal["push", "poll"] = "push"
    native_schedule: bool = True
    # Several numbers per send.php request (to=a,b) for messages queued together with the same
    # text and sender; provider ids become "<mid>/<number>" (see docs/providers/isms_http.md).
    bulk: bool = False
    bulk_max: Annotated[int, Field(ge=2, le=500)] = 50

    @field_validator("base_url")
    @classmethod
    def _directory(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        if value.rsplit("/", 1)[-1].endswith(".php"):
            value = value.rsplit("/", 1)[0]
        return value if value.endswith("/") else value + "/"

    @field_validator("username")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value


# --------------------------------------------------------------------------- pure functions


def script_url(base_url: str, script: str) -> str:
    """``base_url`` (a directory) joined with ``send.php`` / ``query.php`` / ``credits.php``."""
    return (base_url if base_url.endswith("/") else base_url + "/") + script


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
_PER_DESTINATION = frozenset({"to", "username", "password"})
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


def _reply_line(text: str) -> str:
    return text.strip().lstrip("\ufeff").strip()


def _error_key(line: str) -> str | None:
    """``Error: Authentication error.`` → ``authentication error``; None if no ``Error:``."""
    head, sep, rest = line.partition(":")
    if not sep or head.strip().lower() != "error":
        return None
    return rest.strip().rstrip(".").strip().lower()


def parse_send_reply(status: int, body: str, *, wants_report: bool, parts: int = 1) -> Outcome:
    """The outcome of a ``send.php`` answer (HTTP status and body text).

    ``ID:…`` is ACCEPTED with that id; when no report will come (``wants_report`` False) the
    outcome also carries the final state ACCEPTED. ``Error: …`` is looked up in
    :data:`SEND_ERRORS`; an error text not listed there, and any other 4xx, is PERMANENT
    (err :data:`ERR_UNRECOGNISED`). A 2xx body that is neither is TRANSIENT: it is not an
    answer iSMS gives (a proxy's page, a truncated reply), and the send is tried again.
    """
    line = _reply_line(body)
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
    key = _error_key(line)
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


def status_to_state(word: str) -> tuple[MessageState, int] | None:
    """``Queued``/``Pending`` → ENROUTE (intermediate), ``Delivered`` → DELIVERED,
    ``Failed`` → UNDELIVERABLE with err :data:`ERR_FAILED`; None for any other word."""
    return STATUS_WORDS.get(word.strip().rstrip(".").strip().lower())


def build_query_request(
    *, base_url: str, username: str, password: str, mid: str, mobile: str
) -> HttpRequest:
    """``GET query.php?username&password&mid&mobile``."""
    return HttpRequest(
        "GET",
        script_url(base_url, "query.php"),
        params=[("username", username), ("password", password), ("mid", mid), ("mobile", mobile)],
    )


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What ``query.php`` said: a state (``Status: …``, or the final UNKNOWN for "no such
    message"), or ``error`` (another ``Error:`` text, or an unreadable reply)."""

    state: MessageState | None = None
    error_code: int = 0
    error: str = ""


def parse_query_reply(body: str) -> QueryResult:
    """``Status: Delivered`` → (DELIVERED, 0); ``Error: No such message or recipient.`` →
    (UNKNOWN, :data:`ERR_NO_SUCH_MESSAGE`), since iSMS will never report on it; the other
    documented errors (authentication, missing mid/mobile) and unknown words → ``error``."""
    line = _reply_line(body)
    head, sep, rest = line.partition(":")
    if sep and head.strip().lower() == "status":
        mapped = status_to_state(rest)
        if mapped is not None:
            return QueryResult(mapped[0], mapped[1])
        return QueryResult(error=f"unknown status {rest.strip()[:40]!r}")
    key = _error_key(line)
    if key == "no such message or recipient":
        return QueryResult(MessageState.UNKNOWN, ERR_NO_SUCH_MESSAGE)
    if key is not None:
        return QueryResult(error=key[:80])
    return QueryResult(error="unexpected reply")


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
    match = _CREDITS.match(_reply_line(body))
    if match is None:
        return False, None
    return True, float(match.group(1))


#: Parameter names read from a ``dlr-url`` push, first found wins. The document does not name
#: them: ``mid``/``mobile``/``status`` are query.php's own; the rest are common spellings.
PUSH_ID_NAMES = ("mid", "id", "message_id", "messageid", "msgid")
PUSH_MOBILE_NAMES = ("mobile", "to", "msisdn", "recipient", "number")
PUSH_STATUS_NAMES = ("status", "state", "dlr", "stat")


@dataclass(frozen=True, slots=True)
class ReportPush:
    """A ``dlr-url`` push, read: the message id, the number if given, and the state if the
    push carried a status word we know (else None: ask ``query.php``)."""

    mid: str
    mobile: str | None
    state: MessageState | None
    error_code: int = 0


def _first(request: CallbackRequest, names: Sequence[str]) -> str | None:
    for name in names:
        value = request.param(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def parse_report_push(request: CallbackRequest) -> ReportPush:
    """Read a push to the ``dlr-url``; ValueError (→ 400) when it names no usable message, or
    has neither a known status nor a number to ask ``query.php`` with."""
    mid = _first(request, PUSH_ID_NAMES)
    if mid is None:
        raise ValueError("no message id (mid)")
    if len(mid) > 64 or not mid.isprintable():
        raise ValueError("malformed message id")
    mobile = _first(request, PUSH_MOBILE_NAMES)
    if mobile is not None and not (mobile.lstrip("+").isdigit() and len(mobile) <= 16):
        mobile = None
    if mobile is not None:
        mobile = mobile.lstrip("+")
    word = _first(request, PUSH_STATUS_NAMES)
    mapped = status_to_state(word) if word is not None else None
    if mapped is None:
        if mobile is None:
            raise ValueError("no known status and no mobile to query")
        return ReportPush(mid, mobile, None)
    return ReportPush(mid, mobile, mapped[0], mapped[1])


# --------------------------------------------------------------------------- the provider


class IsmsHttpProvider(HttpProvider):
    """The iSMS HTTP adapter (see the module docstring)."""

    callback_kinds: tuple[CallbackKind, ...] = ("report",)
    settings: Settings

    def __init__(self, name: str, settings: Settings, ctx: ProviderContext) -> None:
        capabilities = Capabilities(
            max_gsm7_chars=CAPABILITIES.max_gsm7_chars,
            max_ucs2_chars=CAPABILITIES.max_ucs2_chars,
            unicode=CAPABILITIES.unicode,
            binary=CAPABILITIES.binary,
            flash=CAPABILITIES.flash,
            scheduling=settings.native_schedule,
            alphanumeric_sender=CAPABILITIES.alphanumeric_sender,
            max_sender_chars=CAPABILITIES.max_sender_chars,
            reports=settings.reports,
            requests_per_second=settings.requests_per_second,
            concurrency=settings.concurrency,
            max_batch=settings.bulk_max if settings.bulk else 1,
        )
        super().__init__(name, settings, ctx, capabilities)
        self._warned_no_callback = False
        self._alone = AloneIds()  # messages a bulk refusal sent back to go one by one

    # ------------------------------------------------------------------ sending
    def _wants_report(self, message: Message) -> bool:
        return message.wants_failure_receipt

    def build_send(self, message: Message) -> HttpRequest:
        s = self.settings
        dlr_url: str | None = None
        if s.reports == "push" and self._wants_report(message):
            dlr_url = self.ctx.callback_url("report")
            if dlr_url is None and not self._warned_no_callback:
                self._warned_no_callback = True
                log.warning("isms_no_callback_url", provider=self.name)
        return build_send_request(
            message,
            base_url=s.base_url,
            username=s.username,
            password=s.password.get_secret_value(),
            default_sender=s.sender,
            dlr_url=dlr_url,
            now=self.ctx.clock(),
            native_schedule=s.native_schedule,
        )

    def parse_send(self, message: Message, response: HttpResponse) -> Outcome:
        text = message.text or ""
        outcome = parse_send_reply(
            response.status,
            response.text(),
            wants_report=self._wants_report(message),
            parts=count_parts(text, choose_coding(text)),
        )
        if self.settings.bulk and outcome.provider_message_id:
            # One id form for every message while bulk is on: pushes name mid and mobile.
            pid = bulk_id(outcome.provider_message_id, message.destination.digits)
            outcome = dataclasses.replace(outcome, provider_message_id=pid)
        return outcome

    # ------------------------------------------------------------------ bulk
    def batch_key(self, message: Message) -> Hashable | None:
        if not self.settings.bulk or message.id in self._alone:
            return None
        try:
            request = self.build_send(message)
        except Unsendable:
            return None
        return tuple((n, v) for n, v in request.params if n not in _PER_DESTINATION)

    async def send_batch(self, messages: Sequence[Message]) -> list[Outcome]:
        """One ``send.php`` request with ``to`` = every number (comma-separated) per
        ``bulk_max``; each destination accepted under ``<mid>/<number>``."""
        return await self.send_chunks(
            messages,
            self.capabilities.max_batch,
            self._bulk_request,
            self._split_bulk,
            self._parse_bulk,
        )

    def _bulk_request(self, chunk: Sequence[Message]) -> HttpRequest:
        first = self.build_send(chunk[0])
        to = ",".join(format_destination(m.destination) for m in chunk)
        params = [(n, to if n == "to" else v) for n, v in first.params]
        return dataclasses.replace(first, params=params)

    def _parse_bulk(self, chunk: Sequence[Message], response: HttpResponse) -> Outcome:
        text = chunk[0].text or ""
        return parse_send_reply(
            response.status,
            response.text(),
            wants_report=self._wants_report(chunk[0]),
            parts=count_parts(text, choose_coding(text)),
        )

    def _split_bulk(self, chunk: Sequence[Message], outcome: Outcome) -> list[Outcome]:
        if outcome.kind is OutcomeKind.ACCEPTED and outcome.provider_message_id:
            mid = outcome.provider_message_id
            return [
                dataclasses.replace(
                    outcome, provider_message_id=bulk_id(mid, m.destination.digits)
                )
                for m in chunk
            ]
        split = split_outcome(
            outcome,
            len(chunk),
            per_number_codes=PER_NUMBER_ERRORS,
            taken=f"taken in a request for {len(chunk)} numbers without a usable id",
        )
        if must_go_alone(split, PER_NUMBER_ERRORS):
            self._alone.add([m.id for m in chunk])
        return split

    # ------------------------------------------------------------------ reports
    def _query_request(self, mid: str, mobile: str) -> HttpRequest:
        s = self.settings
        return build_query_request(
            base_url=s.base_url,
            username=s.username,
            password=s.password.get_secret_value(),
            mid=mid,
            mobile=mobile,
        )

    async def query(self, mid: str, mobile: str) -> QueryResult:
        """Ask ``query.php`` about one message (``error`` set when there is no usable answer)."""
        try:
            response = await self.paced_call(self._query_request(mid, mobile))
        except HttpError as exc:
            return QueryResult(error=f"no answer ({exc.reason})")
        if classify_http_status(response.status) is not None or response.status >= 400:
            return QueryResult(error=f"HTTP {response.status}")
        return parse_query_reply(response.text())

    def _report(
        self, mid: str, state: MessageState, error_code: int, mobile: str | None = None
    ) -> DeliveryReport:
        return DeliveryReport(
            self.name, mid, state, error_code, done_at=self.ctx.clock(), destination=mobile
        )

    async def poll(self, messages: Sequence[Message]) -> list[DeliveryReport]:
        """``query.php`` for each message (a few at a time); messages without an answer are
        left out (the dispatcher asks again later)."""
        limit = asyncio.Semaphore(max(1, min(self.settings.concurrency, 8)))
        errors: list[str] = []

        async def one(message: Message) -> DeliveryReport | None:
            pid = message.provider_message_id
            if not pid:
                return None
            mid, mobile = split_bulk_id(pid, message.destination.digits)
            async with limit:
                result = await self.query(mid, mobile)
            if result.state is None:
                errors.append(result.error)
                return None
            return self._report(pid, result.state, result.error_code)

        found = await asyncio.gather(*(one(m) for m in messages))
        if errors:
            # One line per poll, not per message.
            log.warning(
                "isms_query_failed", provider=self.name, failed=len(errors), first=errors[0]
            )
        return [report for report in found if report is not None]

    async def handle_callback(self, kind: CallbackKind, request: CallbackRequest) -> CallbackReply:
        """A ``dlr-url`` push: 400 when it cannot be read (nothing changes), else 200 once the
        report is applied (also for an id we do not know: a resend would not help)."""
        if kind != "report":
            return CallbackReply(404, "not found")
        sink = self.reports
        if sink is None:
            return CallbackReply(503, "not ready")
        try:
            push = parse_report_push(request)
        except ValueError as exc:
            return CallbackReply(400, str(exc))
        state, error_code = push.state, push.error_code
        if state is None:
            assert push.mobile is not None
            result = await self.query(push.mid, push.mobile)
            if result.state is None:
                # The push named a message but we could not learn its state: let iSMS resend.
                return CallbackReply(503, "status unknown, query failed")
            state, error_code = result.state, result.error_code
        # The push's number, when it names one, must be the message's (receipts checks it).
        # Ids are "<mid>/<number>" while bulk is on; a message sent before it was switched on
        # still has the bare mid.
        if (
            self.settings.bulk
            and push.mobile
            and await sink(
                self._report(bulk_id(push.mid, push.mobile), state, error_code, push.mobile)
            )
        ):
            return CallbackReply(200, "OK")
        await sink(self._report(push.mid, state, error_code, push.mobile))
        return CallbackReply(200, "OK")

    # ------------------------------------------------------------------ health
    def build_health(self) -> HttpRequest | None:
        s = self.settings
        return build_credits_request(
            base_url=s.base_url, username=s.username, password=s.password.get_secret_value()
        )

    def parse_health(self, response: HttpResponse) -> tuple[bool, float | None]:
        if response.status >= 400:
            return False, None
        return parse_credits_reply(response.text())


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    """The adapter for one ``[providers.NAME]`` table of type ``isms_http``."""
    return IsmsHttpProvider(name, settings, ctx)
