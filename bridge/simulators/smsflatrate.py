"""A local smsflatrate.net: ``schnittstelle.php`` and ``status.php`` as the interface document
(version 4.1) describes them, plus the account's status push and the inbound push.

What it checks, in this order, and what it answers (plain text, like the real interface):

* more than ``rate_limit`` requests (default 10) in the last second → HTTP 429 (the document
  states the limit but no reply for exceeding it);
* ``key`` not one of ``keys`` → ``110``;
* ``request=credits`` → the balance (``145.1500`` style), ``request=price`` → the price of one
  SMS; ``togroup=`` → ``231`` (the simulated account has no groups);
* ``type`` not a documented gateway type → ``130``; ``to`` not international (``0049…``/``+49…``)
  or under 8 digits → ``131`` (``bulk=1``: up to 50 numbers separated by ``;``);
* on gateways with a sender (1, 2, 10, 11, 20, 21): ``from`` missing → ``130``, not up to 16
  digits or up to 11 letters/digits → ``132`` (longer letter senders are cut, as documented);
  ``reply=2`` wants the pool number ``00491624675000`` as ``from`` (else ``132``);
* ``text`` empty or longer than the gateway's maximum (1071; 735 on 3/4) → ``133``;
* ``flash=1`` on a gateway other than 3/10 → ``130``, over 160 characters → ``133``;
  ``reply=1`` off 3/4 or ``reply=2`` off 10/11 → ``130``;
* ``time`` not ``TT.MM.JJJJ-SS:MM`` (Europe/Berlin) → ``170``, more than 360 days ahead → ``171``;
* a foreign number on a Germany-only gateway (1, 3, 10, 20) → ``150``;
* then the outcome table below; then the balance: too little → ``120``;
* taken: ``100``, plus ``,<15-digit id>`` with ``status=1`` (not for bulk, scheduled or gateway
  21 messages, which get no status), plus ``,<cost>`` with ``cost=1``. The cost (``price`` per
  SMS part: 160/153 GSM, 70/67 Unicode characters) comes off the balance.

Outcomes by the last three digits of the (first) destination number:

====================  ===========================================================
``…110`` ``…120``     the send is answered with that return value (every documented
``…130`` … ``…404``   one: 110 120 130 131 132 133 140 150 170 171 180 231 404)
``…405``              the first send to this number gets ``404``, later ones are taken
``…500``              HTTP 500
``…408``              no answer for ``hang`` seconds (a timeout)
``…102``              report 102 after ``delay``, then 101 after another ``delay``
``…103`` / ``…104``   report 103 (probably undeliverable) / 104 (not within 48 h)
``…109``              no push; ``status.php`` answers 109
anything else         report 101 (delivered) after ``delay``
====================  ===========================================================

Reports: ``status.php?id=`` answers ``<code>,<unix time>`` (``,uid=<uid>`` when ``uid`` is in the
query); ``102`` until the report is due; ``109`` for unknown ids and after 14 days. With a
``push_url`` (the account's "Push-URL", placeholders ``[message_id] [status] [time] [uid]``)
every report of a ``status=1`` message is also pushed there by GET.

Inbound: ``POST /_sim/inbound?from=…&text=…[&to=…]`` (or :meth:`SmsflatrateSimulator.push_inbound`)
pushes an SMS to ``inbound_push_url`` as ``from``, ``to``, ``text``, ``time`` (the document
names no parameters for this push; these are the adapter's first choices).

``smpp-bridge simulate smsflatrate --port 8000 --option delay=1 --option key=testkey
--option push_url='http://127.0.0.1:8080/callbacks/…/report?id=[message_id]&status=[status]&time=[time]&uid=[uid]'``
Options: ``key`` (accepted key, default ``testkey``), ``balance`` (100.0), ``price`` (0.07),
``delay`` (1.0 s), ``rate_limit`` (10/s, 0 = off), ``hang`` (30 s), ``push_url``,
``inbound_push_url``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote
from zoneinfo import ZoneInfo

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bridge.providers.http import HttpError, HttpRequest
from bridge.simulators.common import Outbox, read_options, request_params, serve_simulator
from bridge.smpp.text import is_gsm7

__all__ = ["DEFAULT_KEY", "SimMessage", "SmsflatrateSimulator", "serve"]

log = structlog.get_logger("bridge.simulators.smsflatrate")

DEFAULT_KEY = "testkey"
POOL_NUMBER = "00491624675000"
BERLIN = ZoneInfo("Europe/Berlin")

_GERMAN_ONLY = {"1", "3", "10", "20"}
_WORLDWIDE = {"2", "4", "11", "21"}
_WITH_SENDER = {"1", "2", "10", "11", "20", "21"}
_AUTO = {
    "auto1or2": ("1", "2"),
    "auto3or4": ("3", "4"),
    "auto10or11": ("10", "11"),
    "auto20or21": ("20", "21"),
}
_FORCED_CODES = {110, 120, 130, 131, 132, 133, 140, 150, 170, 171, 180, 231, 404}
_REPLY_GATEWAYS = {("1", "3"), ("1", "4"), ("2", "10"), ("2", "11")}
_REPORT_SUFFIX = {"103": 103, "104": 104, "109": 109}
_ALNUM = re.compile(r"[A-Za-z0-9]+")
_TIME = re.compile(r"\d{2}\.\d{2}\.\d{4}-\d{2}:\d{2}")
_STATUS_DAYS = 14
_MAX_SCHEDULE_DAYS = 360


@dataclass(slots=True)
class SimMessage:
    """One message the simulated gateway took."""

    id: str
    uid: str
    to: str
    sender: str | None
    text: str
    gateway: str
    flash: bool
    status: bool  # a status report was requested and is possible
    sent_at: float  # or the scheduled time
    final_code: int  # the report it ends with
    cost: float
    reply: int = 0
    pushes: list[int] = field(default_factory=list)  # report codes pushed so far


@dataclass(frozen=True, slots=True)
class Pushed:
    """One push the simulator made: the URL and the HTTP status it got (0: no answer)."""

    url: str
    status: int


def _international(number: str) -> str | None:
    """``0049…``/``+49…`` → ``49…``; None when not international (the document insists)."""
    if number.startswith("+"):
        digits = number[1:]
    elif number.startswith("00"):
        digits = number[2:]
    else:
        return None
    return digits if digits.isdigit() else None


def _parts(text: str) -> int:
    if is_gsm7(text):
        return 1 if len(text) <= 160 else math.ceil(len(text) / 153)
    units = len(text.encode("utf-16-le")) // 2
    return 1 if units <= 70 else math.ceil(units / 67)


def _money(value: float) -> str:
    return f"{value:.4f}"


def _cost(value: float) -> str:
    """``0.07`` as in the document's example (4 decimals only when needed)."""
    short = f"{value:.2f}"
    return short if abs(float(short) - value) < 1e-9 else f"{value:.4f}"


class SmsflatrateSimulator:
    """The simulated account (see the module docstring). ``requests`` holds every query the
    interface got (as dicts), ``messages`` every message taken, ``pushes`` every push made."""

    def __init__(
        self,
        *,
        keys: Iterable[str] = (DEFAULT_KEY,),
        balance: float = 100.0,
        price: float = 0.07,
        delay: float = 1.0,
        rate_limit: float = 10.0,
        hang: float = 30.0,
        push_url: str | None = None,
        inbound_push_url: str | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = set(keys)
        self.balance = balance
        self.price = price
        self.delay = delay
        self.rate_limit = rate_limit
        self.hang = hang
        self.push_url = push_url
        self.inbound_push_url = inbound_push_url
        self.clock = clock
        self.monotonic = monotonic  # the rate limit's window
        self.requests: list[dict[str, str]] = []
        #: ``monotonic()`` at the arrival of every call (schnittstelle.php and status.php,
        #: throttled ones included): what the documented 10 calls a second is counted on.
        self.request_times: list[float] = []
        self.messages: dict[str, SimMessage] = {}
        self.pushes: list[Pushed] = []
        self.throttled = 0
        self._recent: deque[float] = deque()
        self._attempts: dict[str, int] = {}
        self._ids = itertools.count(random.randrange(10**14, 9 * 10**14))
        self._outbox = Outbox(pool_size=8)
        self.app = Starlette(
            routes=[
                Route("/schnittstelle.php", self._interface, methods=["GET", "POST"]),
                Route("/status.php", self._status, methods=["GET"]),
                Route("/_sim/inbound", self._inbound, methods=["POST"]),
            ]
        )

    # ------------------------------------------------------------------ plumbing
    def _throttled(self) -> bool:
        if self.rate_limit <= 0:
            return False
        now = self.monotonic()
        while self._recent and now - self._recent[0] >= 1.0:
            self._recent.popleft()
        if len(self._recent) >= self.rate_limit:
            self.throttled += 1
            return True
        self._recent.append(now)
        return False

    async def close(self) -> None:
        """Cancel pending pushes and close the push client (call it from the loop that served
        the app: the HTTP server runs without lifespan events)."""
        await self._outbox.close()

    async def _get(self, url: str) -> int:
        try:
            response = await self._outbox.request(HttpRequest("GET", url))
        except HttpError:
            status = 0
        else:
            status = response.status
        self.pushes.append(Pushed(url, status))
        return status

    # ------------------------------------------------------------------ schnittstelle.php
    async def _interface(self, request: Request) -> Response:
        self.request_times.append(self.monotonic())
        if self._throttled():
            return PlainTextResponse("Too Many Requests", status_code=429)
        params = await request_params(request)
        self.requests.append(params)
        answer = await self.handle(params)
        if isinstance(answer, Response):
            return answer
        return PlainTextResponse(answer)

    async def handle(self, p: Mapping[str, str]) -> str | Response:
        """The interface's answer to one set of parameters (see the module docstring)."""
        if p.get("key") not in self.keys:
            return "110"
        if p.get("request") == "credits":
            return _money(self.balance)
        if p.get("request") == "price":
            return _money(self.price)
        if "togroup" in p:
            return "231"
        type_ = p.get("type", "")
        if type_ not in _AUTO and type_ not in _GERMAN_ONLY | _WORLDWIDE:
            return "130"
        bulk = p.get("bulk") == "1"
        numbers = p.get("to", "").split(";") if bulk else [p.get("to", "")]
        digits_list = [_international(n.strip()) for n in numbers]
        if not numbers or len(numbers) > 50 or any(d is None for d in digits_list):
            return "131"
        dests = [d for d in digits_list if d is not None]
        if any(len(d) + 2 < 8 for d in dests):
            return "131"
        first = dests[0]
        gateway = type_
        if type_ in _AUTO:
            if bulk:
                return "130"  # "Auto-Type funktioniert nur für Einzel-SMS"
            german, world = _AUTO[type_]
            gateway = german if first.startswith("49") else world
        sender: str | None = None
        reply = p.get("reply", "")
        if gateway in _WITH_SENDER:
            raw = p.get("from", "")
            if not raw:
                return "130"
            if raw.startswith(("+", "00")):
                num = _international(raw)
                if num is None or len(raw.lstrip("+")) > 16:
                    return "132"
                sender = raw
            elif raw.isdigit():
                if len(raw) > 16:
                    return "132"
                sender = raw
            elif _ALNUM.fullmatch(raw):
                sender = raw[:11]
            else:
                return "132"
            if reply == "2" and raw != POOL_NUMBER:
                return "132"
        text = p.get("text", "")
        max_chars = 735 if gateway in ("3", "4") else 1071
        if not text or len(text) > max_chars:
            return "133"
        flash = p.get("flash") == "1"
        if flash:
            if gateway not in ("3", "10"):
                return "130"
            if len(text) > 160:
                return "133"
        if reply and (reply, gateway) not in _REPLY_GATEWAYS:
            return "130"
        now = self.clock()
        sent_at = now
        scheduled = False
        if "time" in p:
            when = _parse_time(p["time"])
            if when is None:
                return "170"
            if when > now + _MAX_SCHEDULE_DAYS * 86400:
                return "171"
            if when > now:  # "in die Vergangenheit terminierte SMS werden sofort versendet"
                sent_at, scheduled = when, True
        if gateway in _GERMAN_ONLY and any(not d.startswith("49") for d in dests):
            return "150"

        suffix = first[-3:]
        forced = int(suffix) if suffix.isdigit() else 0
        if forced in _FORCED_CODES:
            return str(forced)
        if suffix == "405":
            self._attempts[first] = self._attempts.get(first, 0) + 1
            if self._attempts[first] == 1:
                return "404"
        if suffix == "500":
            return PlainTextResponse("Internal Server Error", status_code=500)
        if suffix == "408":
            await asyncio.sleep(self.hang)

        cost = self.price * _parts(text) * len(dests)
        if cost > self.balance + 1e-9:
            return "120"
        self.balance -= cost
        status = p.get("status") == "1" and not bulk and not scheduled and gateway != "21"
        ids: list[str] = []
        for dest in dests:
            message = SimMessage(
                id=f"{next(self._ids):015d}",
                uid=p.get("uid", ""),
                to=dest,
                sender=sender,
                text=text,
                gateway=gateway,
                flash=flash,
                status=status,
                sent_at=sent_at,
                final_code=_REPORT_SUFFIX.get(dest[-3:], 101),
                cost=cost / len(dests),
                reply=int(reply) if reply.isdigit() else 0,
            )
            self.messages[message.id] = message
            ids.append(message.id)
            if status and self.push_url:
                self._outbox.spawn(self._push_reports(message))
        answer = "100"
        if status:
            answer += f",{ids[0]}"
        if p.get("cost") == "1":
            answer += f",{_cost(cost)}"
        return answer

    # ------------------------------------------------------------------ reports
    def _timeline(self, message: SimMessage) -> list[tuple[float, int]]:
        """(due time, code) of each report the message gets."""
        if message.to.endswith("102"):
            return [(message.sent_at + self.delay, 102), (message.sent_at + 2 * self.delay, 101)]
        return [(message.sent_at + self.delay, message.final_code)]

    def status_of(self, message_id: str) -> tuple[int, float | None]:
        """(code, time) ``status.php`` answers for an id right now."""
        message = self.messages.get(message_id)
        now = self.clock()
        if message is None or now > message.sent_at + _STATUS_DAYS * 86400:
            return 109, None
        if message.final_code == 109:
            return 109, None
        code, at = 102, None
        for due, due_code in self._timeline(message):
            if now >= due:
                code, at = due_code, due
        return code, at

    async def _push_reports(self, message: SimMessage) -> None:
        for due, code in self._timeline(message):
            if code == 109:
                return  # expired ids are only told to manual queries
            await asyncio.sleep(max(0.0, due - self.clock()))
            if self.push_url is None:
                return
            message.pushes.append(code)
            await self._get(_fill(self.push_url, message, code, int(due)))

    async def _status(self, request: Request) -> Response:
        self.request_times.append(self.monotonic())
        if self._throttled():
            return PlainTextResponse("Too Many Requests", status_code=429)
        params = dict(request.query_params)
        self.requests.append(params)
        message_id = params.get("id", "")
        code, at = self.status_of(message_id)
        if at is None:
            return PlainTextResponse(str(code))
        body = f"{code},{int(at)}"
        message = self.messages[message_id]
        if "uid" in params:
            body += f",uid={message.uid}"
        return PlainTextResponse(body)

    # ------------------------------------------------------------------ inbound
    async def push_inbound(self, sender: str, text: str, receiver: str = POOL_NUMBER) -> int:
        """Push one inbound SMS to ``inbound_push_url``; the HTTP status it got (0: none)."""
        if self.inbound_push_url is None:
            raise RuntimeError("no inbound_push_url configured")
        query = "&".join(
            f"{name}={quote(value, safe='')}"
            for name, value in (
                ("from", sender),
                ("to", receiver),
                ("text", text),
                ("time", str(int(self.clock()))),
            )
        )
        sep = "&" if "?" in self.inbound_push_url else "?"
        return await self._get(f"{self.inbound_push_url}{sep}{query}")

    async def _inbound(self, request: Request) -> Response:
        params = await request_params(request)
        sender, text = params.get("from"), params.get("text")
        if not sender or text is None:
            return PlainTextResponse("from and text are required", status_code=400)
        if self.inbound_push_url is None:
            return PlainTextResponse("no inbound_push_url configured", status_code=409)
        status = await self.push_inbound(sender, text, params.get("to") or POOL_NUMBER)
        return PlainTextResponse(str(status))


def _parse_time(value: str) -> float | None:
    if not _TIME.fullmatch(value):
        return None
    try:
        local = datetime.strptime(value, "%d.%m.%Y-%H:%M").replace(tzinfo=BERLIN)
    except ValueError:
        return None
    return local.timestamp()


def _fill(template: str, message: SimMessage, code: int, at: int) -> str:
    """The account's push URL with its placeholders replaced (URL-encoded values)."""
    values = {
        "[message_id]": message.id,
        "[status]": str(code),
        "[time]": str(at),
        "[uid]": message.uid,
    }
    url = template
    for placeholder, value in values.items():
        url = url.replace(placeholder, quote(value, safe=""))
    return url


async def serve(host: str, port: int, options: Mapping[str, str]) -> None:
    """``smpp-bridge simulate smsflatrate`` (options: see the module docstring)."""
    values = read_options(
        options, SmsflatrateSimulator, extra={"key": DEFAULT_KEY}, strict=True
    )
    sim = SmsflatrateSimulator(keys=(values.pop("key"),), **values)
    await serve_simulator(sim, host, port, "smsflatrate")
