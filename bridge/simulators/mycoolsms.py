"""A local My-Cool-SMS: the JSON "SMS API" as its document describes it, for tests and demos.

One endpoint, ``/api-socket.php`` (the path the adapter's default URL uses), taking the
parameters as a JSON object (POST body), an urlencoded POST form, or a GET query, with
``function`` choosing the call. Simulated functions: ``sendSms``, ``getBalance``,
``getDeliveryReport``, ``getDeliveryReports``, ``getIncomingSms``; any other function name
(mailings, HLR lookups …) answers 105 "Unbekannte Funktion". Replies are the document's JSON:
``{"success": true, …}`` or ``{"success": false, "errorcode": NNN, "errordescription": …}``
(HTTP 200 either way).

Checks, in order: a readable call (104), ``username``/``password`` present (103) and right
(101), ``function`` present (103) and known (105), then the function's own parameters:

* ``sendSms``: number and message present (103); number of 7–15 digits after ``+``/``00``
  (210); non-empty text (211); ``unicode`` a boolean (108); with ``unicode=true`` the message
  in UCS2 notation (213); with ``unicode=false`` not in UCS2 notation (214: every 4-hex-digit
  group, one at least starting ``00``) and GSM7 only (215); absent, the coding is detected;
  at most 765 GSM characters (extension characters count two) or 335 UCS2 ones (212); sender a
  number (``+`` or ``00`` and digits; fewer than 7 digits is a short code: 217) or 1–11 of
  ``A-Z a-z 0-9 -`` (216); ``callbackurl`` http(s) (218); ``scheduletime`` ISO/ATOM with a time
  zone (219); credit for ``price`` × parts (109). The balance goes down by the charge.
* ``getDeliveryReports``: ``ids`` a non-empty array of strings (240; in a form ``ids[]``
  repeated), at most 100 (241); ids it does not know report ``UNKNOWN_ID``.
* ``getDeliveryReport``: unknown id 223, ``groupkey=true`` 224 (no mailings here).

Outcomes by the destination number's last digits (first matching row wins):

==========  ===================================================================================
``9ccc``    ``ccc`` a sendSms error code (101–109, 210–219): that error reply (``…9109``: 109)
``97``      the reply comes after ``slow`` seconds (client timeouts), then as "otherwise"
``98``      HTTP 500
``99``      HTTP 200 with a body that is not JSON
``07``      the first sendSms for a number and text answers 107 (general API error), the next
            is accepted and delivered
``01``      accepted; ``SMS_STATUS_BOUNCED`` after ``delay``
``02``      accepted; ``SMS_STATUS_EXPIRED`` after ``delay``
``03``      accepted; ``SMS_STATUS_ERROR`` after ``delay``
``04``      accepted; ``SMS_STATUS_AT_CARRIER`` pushed after ``delay``, never a final status
``05``      accepted; ``SMS_STATUS_DELIVERY_DELAYED`` after ``delay``, ``DELIVERED`` after 2×
``06``      accepted; ``SMS_STATUS_DELIVERED`` after ``delay`` but never pushed (poll only)
otherwise   accepted; ``SMS_STATUS_DELIVERED`` after ``delay``
==========  ===================================================================================

Until its first timed status a message is ``SMS_STATUS_QUEUED``, or ``SMS_STATUS_AT_CARRIER``
once its scheduletime (if any) has passed. Every timed status is POSTed to the message's
``callbackurl`` (if it gave one) as ``{"smsid": …, "status": …}``, like ``pushDeliveryReport``.

Inbound SMS: :meth:`MyCoolSmsSimulator.push_inbound`, or ``POST /_sim/inbound`` with a JSON
object ``{"text": …, "from": …, "to": …, "url": …, "push": true}`` (all but text optional),
stores the message for ``getIncomingSms`` (ids 1, 2, …; ``thresholdid``, ``thresholdoperator``,
``limit``, ``order`` and ``virtualnumber`` as documented) and POSTs it, in the
``pushIncomingSms`` format, to ``url`` or the ``inbound_url`` setting (the real service's inbox
setting) unless ``push`` is false (a push that got lost: only polling finds it); the reply says
the push's HTTP status.

``smpp-bridge simulate mycoolsms --option KEY=VALUE``: ``username`` (default ``bridge``),
``password`` (``secret``), ``balance`` (EUR, 100), ``price`` (EUR per part, 0.05), ``delay``
(seconds before a report, 1), ``slow`` (seconds, 30), ``inbound_url`` (none),
``virtual_number`` (``+4915790000000``, the default ``to`` of inbound SMS).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bridge.providers.http import HttpError, HttpRequest
from bridge.simulators.common import Outbox, read_options, serve_simulator
from bridge.simulators.mycoolsms_format import (
    HEX_RE,
    MAX_GSM,
    MAX_IDS,
    MAX_UCS2,
    SEND_CODES,
    SENDER_TEXT,
    URL_RE,
    ApiError,
    error_reply,
    gsm_length,
    looks_ucs2,
    now_atom,
    ok,
    param_bool,
    param_int,
    param_text,
    parse_schedule,
    phone_digits,
    read_call,
    region_of,
    sms_parts,
    ucs2,
)
from bridge.smpp.text import gsm7_encode, is_gsm7

__all__ = [
    "API_PATH",
    "InboundSms",
    "MyCoolSmsSimulator",
    "Push",
    "SimSms",
    "serve",
]

API_PATH = "/api-socket.php"


@dataclass(slots=True)
class SimSms:
    """One accepted sendSms, with its status history."""

    smsid: str
    number: str
    senderid: str | None
    body: str
    unicode: bool
    smscount: int
    charge: float
    callbackurl: str | None
    scheduled: float | None
    status: str = "SMS_STATUS_QUEUED"
    history: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Push:
    """One callback POST the simulator made: where, what, and the answer's HTTP status
    (None when there was no answer)."""

    url: str
    payload: dict[str, Any]
    status: int | None


@dataclass(frozen=True, slots=True)
class InboundSms:
    id: int
    virtualnumber: str
    senderid: str
    body: str
    unicode: bool
    received: float


class MyCoolSmsSimulator:
    """The simulated account (see the module docstring). ``app`` is the Starlette app;
    ``requests`` the API calls received (parsed parameters, ``format`` json/form/query),
    ``messages`` the accepted SMS by smsid, ``pushes`` the callbacks made, ``inbox`` the
    inbound SMS, ``balance`` the credit left."""

    def __init__(
        self,
        *,
        username: str = "bridge",
        password: str = "secret",
        balance: float = 100.0,
        price: float = 0.05,
        delay: float = 1.0,
        slow: float = 30.0,
        inbound_url: str | None = None,
        virtual_number: str = "+4915790000000",
    ) -> None:
        self.username = username
        self.password = password
        self.balance = balance
        self.price = price
        self.delay = delay
        self.slow = slow
        self.inbound_url = inbound_url
        self.virtual_number = virtual_number
        self.requests: list[dict[str, Any]] = []
        self.messages: dict[str, SimSms] = {}
        self.pushes: list[Push] = []
        self.inbox: list[InboundSms] = []
        self._failed_once: set[tuple[str, str]] = set()
        self._outbox = Outbox()
        self.app = Starlette(
            routes=[
                Route(API_PATH, self._api, methods=["GET", "POST"]),
                Route("/_sim/inbound", self._control_inbound, methods=["POST"]),
            ]
        )

    async def close(self) -> None:
        """Cancel the report timelines still running."""
        await self._outbox.close()

    # ------------------------------------------------------------------ the API endpoint

    async def _api(self, request: Request) -> Response:
        try:
            fmt, params = await read_call(request)
        except ApiError as exc:
            self.requests.append({"format": "none", "params": {}})
            return error_reply(exc.code)
        self.requests.append({"format": fmt, "params": params})
        try:
            return await self._dispatch(params)
        except ApiError as exc:
            return error_reply(exc.code, exc.extra)

    async def _dispatch(self, params: Mapping[str, Any]) -> Response:
        username, password = param_text(params, "username"), param_text(params, "password")
        if not username:
            raise ApiError(103, "username")
        if not password:
            raise ApiError(103, "password")
        if username != self.username or password != self.password:
            raise ApiError(101)
        function = param_text(params, "function")
        if not function:
            raise ApiError(103, "function")
        handlers = {
            "sendSms": self._send_sms,
            "getBalance": self._get_balance,
            "getDeliveryReport": self._get_delivery_report,
            "getDeliveryReports": self._get_delivery_reports,
            "getIncomingSms": self._get_incoming_sms,
        }
        handler = handlers.get(function)
        if handler is None:
            raise ApiError(105)
        return await handler(params)

    # ------------------------------------------------------------------ sendSms

    async def _send_sms(self, params: Mapping[str, Any]) -> Response:
        number, message = param_text(params, "number"), param_text(params, "message")
        if number is None:
            raise ApiError(103, "number")
        if message is None:
            raise ApiError(103, "message")
        digits = phone_digits(number)
        if digits is None:
            raise ApiError(210)
        try:
            unicode = param_bool(params.get("unicode"))
        except ValueError:
            raise ApiError(108, "unicode") from None
        text = self._message_text(message, unicode)
        if unicode is None:
            unicode = not is_gsm7(text)
        if unicode:
            units, escaped = len(text.encode("utf-16-be", errors="surrogatepass")) // 2, 0
            if units > MAX_UCS2:
                raise ApiError(212)
        else:
            units, escaped = gsm_length(text)
            if units > MAX_GSM:
                raise ApiError(212)
        sender = self._sender(param_text(params, "senderid"))
        callbackurl = param_text(params, "callbackurl") or None
        if callbackurl is not None and not URL_RE.fullmatch(callbackurl):
            raise ApiError(218)
        scheduled = parse_schedule(param_text(params, "scheduletime"))

        outcome = self._rule(digits, text)
        if outcome is not None:
            return outcome
        if digits.endswith("97"):
            await asyncio.sleep(self.slow)
        smscount = sms_parts(units, unicode)
        charge = round(self.price * smscount, 3)
        if self.balance < charge:
            raise ApiError(109)
        self.balance = round(self.balance - charge, 3)
        sms = SimSms(
            smsid=uuid.uuid4().hex,
            number="+" + digits,
            senderid=sender,
            body=text,
            unicode=unicode,
            smscount=smscount,
            charge=charge,
            callbackurl=callbackurl,
            scheduled=scheduled,
        )
        self.messages[sms.smsid] = sms
        self._outbox.spawn(self._timeline(sms, digits))
        country, prefix = region_of(digits)
        return ok(
            smsid=sms.smsid,
            body=text,
            bodyucs2=ucs2(text),
            bodygsm7=None if unicode else gsm7_encode(text).hex().upper(),
            number=sms.number,
            senderid=sender,
            senderidenabled=True,
            unicode=unicode,
            numchars=units,
            escapenumchars=escaped,
            smscount=smscount,
            charge=charge,
            balance=self.balance,
            countrycode=country,
            prefix=prefix,
            timestamp=now_atom(),
            callbackurl=callbackurl,
        )

    @staticmethod
    def _message_text(message: str, unicode: bool | None) -> str:
        if unicode is True:
            if not HEX_RE.fullmatch(message):
                raise ApiError(213)
            try:
                text = bytes.fromhex(message).decode("utf-16-be")
            except UnicodeDecodeError:
                raise ApiError(213) from None
        else:
            text = message
            if unicode is False:
                if looks_ucs2(message):
                    raise ApiError(214)
                if not is_gsm7(message):
                    raise ApiError(215)
        if not text:
            raise ApiError(211)
        return text

    @staticmethod
    def _sender(senderid: str | None) -> str | None:
        if not senderid:
            return None
        digits = re.sub(r"[\s()/-]", "", senderid)
        digits = digits[1:] if digits.startswith("+") else digits
        digits = digits[2:] if digits.startswith("00") else digits
        if digits.isdigit():
            if len(digits) < 7:
                raise ApiError(217)
            if len(digits) > 15:
                raise ApiError(216)
            return "+" + digits
        if not SENDER_TEXT.fullmatch(senderid):
            raise ApiError(216)
        return senderid

    def _rule(self, digits: str, text: str) -> Response | None:
        """The reply a destination's suffix forces (module docstring), or None."""
        if len(digits) >= 4 and digits[-4] == "9" and int(digits[-3:]) in SEND_CODES:
            raise ApiError(int(digits[-3:]))
        suffix = digits[-2:]
        if suffix == "98":
            return PlainTextResponse("Internal Server Error", status_code=500)
        if suffix == "99":
            return Response("<html><body>Wartungsarbeiten</body></html>", media_type="text/html")
        if suffix == "07" and (digits, text) not in self._failed_once:
            self._failed_once.add((digits, text))
            raise ApiError(107)
        return None

    # ------------------------------------------------------------------ report timelines

    def _steps(self, digits: str) -> list[tuple[float, str, bool]]:
        """(seconds after the send time, status, pushed) for a destination."""
        d = self.delay
        final = {
            "01": "SMS_STATUS_BOUNCED",
            "02": "SMS_STATUS_EXPIRED",
            "03": "SMS_STATUS_ERROR",
        }
        suffix = digits[-2:]
        if suffix in final:
            return [(d, final[suffix], True)]
        if suffix == "04":
            return [(d, "SMS_STATUS_AT_CARRIER", True)]
        if suffix == "05":
            return [(d, "SMS_STATUS_DELIVERY_DELAYED", True), (2 * d, "SMS_STATUS_DELIVERED", True)]
        if suffix == "06":
            return [(d, "SMS_STATUS_DELIVERED", False)]
        return [(d, "SMS_STATUS_DELIVERED", True)]

    async def _timeline(self, sms: SimSms, digits: str) -> None:
        start = time.time()
        if sms.scheduled is not None and sms.scheduled > start:
            await asyncio.sleep(sms.scheduled - start)
        sms.status = "SMS_STATUS_AT_CARRIER"
        sms.history.append(sms.status)
        elapsed = 0.0
        for at, status, pushed in self._steps(digits):
            await asyncio.sleep(max(0.0, at - elapsed))
            elapsed = at
            sms.status = status
            sms.history.append(status)
            if pushed and sms.callbackurl:
                payload = {"smsid": sms.smsid, "status": status}
                await self._post(sms.callbackurl, payload, "My-Cool-SMS Delivery Report")

    async def _post(self, url: str, payload: dict[str, Any], agent: str) -> int | None:
        headers = {"User-Agent": agent, "Cache-Control": "no-cache", "Connection": "close"}
        request = HttpRequest("POST", url, json=payload, headers=headers)
        try:
            status: int | None = (await self._outbox.request(request)).status
        except HttpError:
            status = None
        self.pushes.append(Push(url, payload, status))
        return status

    # ------------------------------------------------------------------ reports

    async def _get_balance(self, params: Mapping[str, Any]) -> Response:
        return ok(balance=self.balance)

    async def _get_delivery_report(self, params: Mapping[str, Any]) -> Response:
        smsid = param_text(params, "id")
        if not smsid:
            raise ApiError(103, "id")
        try:
            groupkey = param_bool(params.get("groupkey"))
        except ValueError:
            raise ApiError(108, "groupkey") from None
        if groupkey:
            raise ApiError(224)
        sms = self.messages.get(smsid)
        if sms is None:
            raise ApiError(223)
        return ok(smsid=smsid, status=sms.status)

    async def _get_delivery_reports(self, params: Mapping[str, Any]) -> Response:
        ids = params.get("ids", params.get("ids[]"))
        if ids is None:
            raise ApiError(103, "ids")
        if isinstance(ids, str):
            ids = [ids]
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
            raise ApiError(240)
        if len(ids) > MAX_IDS:
            raise ApiError(241)
        reports = []
        for smsid in ids:
            sms = self.messages.get(smsid)
            reports.append({"smsid": smsid, "status": sms.status if sms else "UNKNOWN_ID"})
        return ok(reports=reports)

    # ------------------------------------------------------------------ inbound

    async def push_inbound(
        self,
        text: str,
        *,
        sender: str = "+491701234567",
        to: str | None = None,
        url: str | None = None,
        push: bool = True,
    ) -> int | None:
        """An SMS arrives on the virtual number ``to``: stored for getIncomingSms and pushed
        (pushIncomingSms) to ``url`` or ``inbound_url`` unless ``push`` is false (a push that
        never arrived). Returns the push's HTTP status (None: not pushed or no answer)."""
        to = to or self.virtual_number
        unicode = not is_gsm7(text)
        sms = InboundSms(len(self.inbox) + 1, to, sender, text, unicode, time.time())
        self.inbox.append(sms)
        target = url or self.inbound_url
        if not target or not push:
            return None
        return await self._push_incoming(sms, target)

    async def repush(self, sms_id: int, url: str | None = None) -> int | None:
        """Push inbound SMS ``sms_id`` (again): the provider retrying a push, or a push that
        arrives after the SMS was already fetched with getIncomingSms."""
        sms = next(m for m in self.inbox if m.id == sms_id)
        target = url or self.inbound_url
        return None if not target else await self._push_incoming(sms, target)

    async def _push_incoming(self, sms: InboundSms, target: str) -> int | None:
        text, sender, to, unicode = sms.body, sms.senderid, sms.virtualnumber, sms.unicode
        if unicode:
            units, escaped = len(text.encode("utf-16-be", errors="surrogatepass")) // 2, 0
        else:
            units, escaped = gsm_length(text)
        sender_digits = phone_digits(sender)
        payload = {
            "from": sender,
            "fromcountrycode": region_of(sender_digits)[0] if sender_digits else None,
            "to": to,
            "unicode": unicode,
            "smscount": sms_parts(units, unicode),
            "body": text,
            "bodyucs2": ucs2(text),
            "bodygsm7": None if unicode else gsm7_encode(text).hex().upper(),
            "numchars": units,
            "escapenumchars": escaped,
            "cost": "0.010",
        }
        return await self._post(target, payload, "My-Cool-SMS Incoming SMS Callback")

    async def _control_inbound(self, request: Request) -> Response:
        try:
            data = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "a JSON object is expected"}, status_code=400)
        if not isinstance(data, dict) or not isinstance(data.get("text"), str):
            return JSONResponse({"error": "text is required"}, status_code=400)
        status = await self.push_inbound(
            data["text"],
            sender=str(data.get("from") or "+491701234567"),
            to=str(data["to"]) if data.get("to") else None,
            url=str(data["url"]) if data.get("url") else None,
            push=data.get("push", True) is not False,
        )
        return JSONResponse({"id": len(self.inbox), "status": status})

    async def _get_incoming_sms(self, params: Mapping[str, Any]) -> Response:
        virtual = param_text(params, "virtualnumber")
        inbox = self.inbox
        if virtual:
            digits = phone_digits(virtual)
            if digits is None:
                raise ApiError(232)
            if digits != phone_digits(self.virtual_number):
                raise ApiError(233)
            # "The virtual number for which sms text messages should be fetched."
            inbox = [m for m in self.inbox if phone_digits(m.virtualnumber) == digits]
        threshold = param_int(params.get("thresholdid"), 0, 234)
        limit = param_int(params.get("limit"), 25, 235)
        order = (param_text(params, "order") or "DESC").upper()
        if order not in ("ASC", "DESC"):
            raise ApiError(236)
        greater = (param_text(params, "thresholdoperator") or "gt") != "lt"
        chosen = [m for m in inbox if (m.id > threshold if greater else m.id < threshold)]
        chosen.sort(key=lambda m: m.id, reverse=order == "DESC")
        if limit:
            chosen = chosen[:limit]
        ids = [m.id for m in inbox]
        return ok(
            total=str(len(inbox)),
            fetched=len(chosen),
            maxid=max(ids, default=0),
            minid=min(ids, default=0),
            messages=[_incoming_json(m) for m in chosen],
        )


def _incoming_json(m: InboundSms) -> dict[str, Any]:
    sender_digits = phone_digits(m.senderid)
    units = len(m.body.encode("utf-16-be")) // 2 if m.unicode else gsm_length(m.body)[0]
    return {
        "id": m.id,
        "virtualnumber": m.virtualnumber,
        "senderid": m.senderid,
        "body": m.body,
        "bodyucs2": ucs2(m.body),
        "bodygsm7": "" if m.unicode else gsm7_encode(m.body).hex().upper(),
        "unicode": m.unicode,
        "timestamp": datetime.fromtimestamp(m.received, UTC).isoformat(timespec="milliseconds"),
        "unixtimestamp": f"{m.received:.1f}",
        "numchars": units,
        "escapechars": 0 if m.unicode else gsm_length(m.body)[1],
        "smscount": sms_parts(units, m.unicode),
        "charge": "0.010",
        "senderidcountrycode": region_of(sender_digits)[0] if sender_digits else None,
        "virtualnumbercountrycode": region_of(phone_digits(m.virtualnumber) or "")[0],
    }


async def serve(host: str, port: int, options: Mapping[str, str]) -> None:
    """``smpp-bridge simulate mycoolsms`` (options: see the module docstring)."""
    sim = MyCoolSmsSimulator(**read_options(options, MyCoolSmsSimulator))
    await serve_simulator(sim, host, port, "My-Cool-SMS")

