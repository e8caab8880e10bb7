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

This package is the adapter, one module per seam: :mod:`.settings` (the config table and
capabilities), :mod:`.api` (what every script's call and answer share), :mod:`.send`
(``send.php``, single and bulk, and ``credits.php``), :mod:`.reports` (``query.php`` polls and
``dlr-url`` pushes). This file holds the adapter class that ties them to the Provider protocol,
and the account of the API they follow. ``Settings`` and ``create`` are what the provider
registry and the config read from the package.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Hashable, Sequence

import structlog

from bridge.core.model import DeliveryReport, Message, MessageState, Outcome, OutcomeKind
from bridge.core.provider import (
    CallbackKind,
    CallbackReply,
    CallbackRequest,
    Provider,
    ProviderContext,
)
from bridge.providers.bulk import AloneIds, must_go_alone, split_outcome
from bridge.providers.http import HttpError, HttpRequest, HttpResponse
from bridge.providers.http_provider import HttpProvider, Unsendable, classify_http_status
from bridge.providers.isms_http.reports import (
    QueryResult,
    build_query_request,
    parse_query_reply,
    parse_report_push,
)
from bridge.providers.isms_http.send import (
    PER_DESTINATION,
    PER_NUMBER_ERRORS,
    build_credits_request,
    build_send_request,
    bulk_id,
    choose_coding,
    count_parts,
    format_destination,
    parse_credits_reply,
    parse_send_reply,
    split_bulk_id,
)
from bridge.providers.isms_http.settings import CAPABILITIES, Settings

__all__ = ["IsmsHttpProvider", "Settings", "create"]

log = structlog.get_logger("bridge.providers.isms_http")

# --------------------------------------------------------------------------- the provider


class IsmsHttpProvider(HttpProvider):
    """The iSMS HTTP adapter (see the module docstring)."""

    callback_kinds: tuple[CallbackKind, ...] = ("report",)
    settings: Settings

    def __init__(self, name: str, settings: Settings, ctx: ProviderContext) -> None:
        capabilities = dataclasses.replace(
            CAPABILITIES,
            scheduling=settings.native_schedule,
            reports=settings.reports,
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
        return tuple((n, v) for n, v in request.params if n not in PER_DESTINATION)

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

