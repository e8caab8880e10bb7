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

This package is the adapter, one module per seam: :mod:`.settings` (the gateway types, the
config table and the capabilities they give), :mod:`.send` (``schnittstelle.php``: single and
bulk sends, the return values, the balance call), :mod:`.reports` (``status.php`` polls and the
Push-URL), :mod:`.inbound` (incoming SMS forwarded to the bridge). This file holds the adapter
class that ties them to the Provider protocol, and the account of the API they follow.
``Settings`` and ``create`` are what the provider registry and the config read from the package.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import ClassVar

import structlog

from bridge.core.model import DeliveryReport, Message, Outcome, OutcomeKind
from bridge.core.provider import (
    CallbackKind,
    CallbackReply,
    CallbackRequest,
    Provider,
    ProviderContext,
)
from bridge.providers.bulk import AloneIds, must_go_alone
from bridge.providers.http import HttpError, HttpRequest, HttpResponse
from bridge.providers.http_provider import HttpProvider, classify_http_status
from bridge.providers.smsflatrate.inbound import parse_inbound
from bridge.providers.smsflatrate.reports import (
    PUSH_QUERY,
    BadPush,
    build_status_request,
    parse_push,
    parse_status_reply,
    push_url,
    status_url_for,
)
from bridge.providers.smsflatrate.send import (
    ERR_HTTP_REFUSAL,
    PER_NUMBER_CODES,
    build_health_request,
    build_send_request,
    bulk_key,
    bulk_params,
    parse_balance,
    parse_send_reply,
    split_bulk_outcome,
)
from bridge.providers.smsflatrate.settings import MAX_BULK, Settings, capabilities_for

__all__ = ["Settings", "SmsflatrateProvider", "create"]

log = structlog.get_logger("bridge.providers.smsflatrate")

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

