"""My-Cool-SMS adapter: the JSON "SMS API" (``function=sendSms`` and friends on one endpoint).

This package is the adapter, one module per seam: :mod:`.settings` (its config table and
capabilities), :mod:`.api` (the request and reply envelope every call shares), :mod:`.send`
(sendSms/getBalance), :mod:`.reports` (delivery reports, pushed and polled), :mod:`.inbound` (MO
push and polling with its durable threshold and dedupe). This file holds the adapter class that
ties them to the Provider protocol, and the account of the API they follow. ``Settings`` and
``create`` are what the provider registry and the config read from the package.

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

from collections.abc import Sequence

import structlog

from bridge.core.model import DeliveryReport, Message, Outcome
from bridge.core.provider import (
    CallbackKind,
    CallbackReply,
    CallbackRequest,
    InboundSink,
    Provider,
    ProviderContext,
    ReportSink,
)
from bridge.providers.http import HttpError, HttpRequest, HttpResponse
from bridge.providers.http_provider import HttpProvider, classify_http_status
from bridge.providers.mycoolsms.api import encode_request
from bridge.providers.mycoolsms.inbound import InboundPoller, parse_inbound_push
from bridge.providers.mycoolsms.reports import (
    MAX_IDS_PER_POLL,
    parse_poll_reply,
    parse_report_push,
    poll_fields,
    report_for,
)
from bridge.providers.mycoolsms.send import (
    balance_fields,
    parse_balance_reply,
    parse_send_reply,
    send_fields,
)
from bridge.providers.mycoolsms.settings import Settings, capabilities_for

__all__ = ["MyCoolSmsProvider", "Settings", "create"]

log = structlog.get_logger("bridge.providers.mycoolsms")


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
