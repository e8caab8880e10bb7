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

This package is the adapter, one module per seam: :mod:`.settings` (the config table, the
account every request carries, the limits), :mod:`.send` (``gateway.php``: single and bulk
sends, the error codes, the credit balance), :mod:`.reports` (pushed and polled
``gatewayrapport.php`` reports). This file holds the adapter class that ties them to the
Provider protocol, and the account of the API they follow. ``Settings`` and ``create`` are what
the provider registry and the config read from the package.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Hashable, Sequence
from typing import Literal

import structlog

from bridge.core.model import DeliveryReport, Message, Outcome, OutcomeKind
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
from bridge.providers.http_provider import HttpProvider
from bridge.providers.sms1601.reports import (
    build_status_request,
    parse_report_callback,
    parse_status_reply,
    report_url_for,
)
from bridge.providers.sms1601.send import (
    PER_NUMBER_ERRORS,
    build_bulk_request,
    build_credits_request,
    build_send_request,
    bulk_key,
    gsm_septets,
    parse_credits_reply,
    parse_send_reply,
    text_parts,
)
from bridge.providers.sms1601.settings import CAPABILITIES, Settings

__all__ = ["Settings", "Sms1601Provider", "create"]

log = structlog.get_logger("bridge.providers.sms1601")

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

