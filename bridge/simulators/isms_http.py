"""A faithful local iSMS.gr HTTP API: ``send.php``, ``query.php``, ``credits.php``.

Same paths (at the root and under ``/api/http/``), GET parameters, plain-text replies
(``ID:…``, ``Status: …``, ``Credits:…``, ``Error: ….``) and checks as the provider's document;
credits go down by one per SMS part per recipient; a message's recipients are ``Queued`` until
their report time, and the report is pushed to the ``dlr-url`` the send gave.

What the document leaves open, decided here (the adapter relies on no more than this):

* the push is ``GET <dlr-url>?mid=<id>&mobile=<number>&status=<word>`` (``&`` when the URL
  already has a query), with query.php's words; a push that gets no 2xx is not repeated;
* ``schedule`` accepts the document's forms (``2017-07-17``, ``2017-05-11 14:40``,
  ``2017-04-22 17:47:55``, ``11 June 2017 11:00:00``, ``+1 week 2 days 4 hours 2 seconds``,
  ``next Thursday``, ``last Monday``); absolute times are Athens time; anything else is
  ``Error: Invalid scheduling date.``;
* a sender is valid when it is up to 16 digits or up to 11 printable ASCII characters.

Outcomes by the last two digits of a recipient (other numbers: ``Delivered`` after ``delay``):

====  =====================================================================================
01    ``Failed``
02    ``Pending`` at the report time, then nothing (stays Pending)
03    ``Pending`` at the report time, ``Delivered`` one ``delay`` later
04    ``Delivered``, but no push (only ``query.php`` tells)
91    ``Error: No recipients.`` (iSMS does not take this number)
92    ``Error: Invalid sender identity.``
93    ``Error: Insufficient credits.``
94    ``Error: Invalid scheduling date.``
95    ``Error: Authentication error.``
96    HTTP 500 to every send
97    HTTP 500 to the first send of each (number, text), then as usual
98    the send answers only after ``hang`` seconds (a client timeout)
====  =====================================================================================

Options (``smpp-bridge simulate isms-http --option key=value``): ``username`` (default ``test``),
``password`` (``test``), ``credits`` (``1000``), ``delay`` (report delay, seconds, ``0.5``),
``reports`` (``true``; ``false`` sends no pushes), ``hang`` (``30``).

The request path does no sleeping and no I/O: report times are loop timers, and pushes go out
over one pooled aiohttp session (the end-to-end benchmark sends thousands of messages a second
through this simulator).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import random
import re
import string
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bridge.providers.http import HttpError, HttpRequest
from bridge.simulators.common import Outbox, read_options, serve_simulator
from bridge.smpp.text import gsm7_septet_count, is_gsm7

__all__ = ["IsmsHttpSimulator", "SimMessage", "parse_schedule", "serve"]

ATHENS = ZoneInfo("Europe/Athens")
_CONTENT_TYPE = "text/html; charset=UTF-8"  # what a PHP script answers by default

_UNITS = {
    "sec": 1,
    "second": 1,
    "min": 60,
    "minute": 60,
    "hour": 3600,
    "day": 86400,
    "week": 7 * 86400,
    "fortnight": 14 * 86400,
    "month": 30 * 86400,
    "year": 365 * 86400,
}
_RELATIVE = re.compile(r"([+-]?)\s*(\d+)\s*([a-z]+?)s?(?=\s|$)")
_WEEKDAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_ABSOLUTE_FORMATS = (
    "%Y-%m-%d",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d %H:%M:%S",
    "%d %B %Y",
    "%d %B %Y %H:%M",
    "%d %B %Y %H:%M:%S",
)


def parse_schedule(value: str, now: float, tz: ZoneInfo = ATHENS) -> float | None:
    """The epoch time a ``schedule`` value means (the document's strtotime forms), or None."""
    text = " ".join(value.strip().lower().split())
    if not text:
        return None
    for fmt in _ABSOLUTE_FORMATS:
        try:
            parsed = datetime.strptime(" ".join(value.split()), fmt)
        except ValueError:
            continue
        return parsed.replace(tzinfo=tz).timestamp()
    words = text.split(" ")
    if len(words) == 2 and words[0] in ("next", "last") and words[1] in _WEEKDAYS:
        today = datetime.fromtimestamp(now, tz).replace(hour=0, minute=0, second=0, microsecond=0)
        target = _WEEKDAYS.index(words[1])
        if words[0] == "next":
            days = (target - today.weekday() - 1) % 7 + 1
        else:
            days = -((today.weekday() - target - 1) % 7 + 1)
        return (today + timedelta(days=days)).timestamp()
    # "+1 week 2 days 4 hours 2 seconds": signed amounts of units, nothing in between.
    pos, total, sign = 0, 0, 1
    for match in _RELATIVE.finditer(text):
        if text[pos : match.start()].strip():
            return None
        if match.group(1):
            sign = -1 if match.group(1) == "-" else 1
        unit = _UNITS.get(match.group(3))
        if unit is None:
            return None
        total += sign * int(match.group(2)) * unit
        pos = match.end()
    if pos == 0 or text[pos:].strip():
        return None
    return now + total


def _parts(text: str, coding: str) -> int:
    if coding != "UTF-8" and is_gsm7(text):
        units, single, multi = gsm7_septet_count(text), 160, 153
    else:
        units, single, multi = len(text.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def _valid_sender(sender: str) -> bool:
    if sender.isdigit():
        return len(sender) <= 16
    return 0 < len(sender) <= 11 and sender.isascii() and sender.isprintable()


@dataclass(slots=True)
class SimMessage:
    """One accepted send: its parameters and each recipient's status word."""

    mid: str
    sender: str
    text: str
    coding: str
    flash: bool
    dlr_url: str | None
    parts: int
    schedule_at: float | None
    statuses: dict[str, str] = field(default_factory=dict)


class IsmsHttpSimulator:
    """The simulator (see the module docstring). ``app`` is the Starlette app; ``requests``
    holds the last 10 000 requests' parameters (``script`` says which), ``messages`` the
    accepted sends by id, ``pushes`` the reports pushed as ``(params, HTTP status or -1)``.
    Call :meth:`close` to close the push session."""

    def __init__(
        self,
        *,
        username: str = "test",
        password: str = "test",
        credits: float = 1000.0,
        delay: float = 0.5,
        reports: bool = True,
        hang: float = 30.0,
        clock: Callable[[], float] = time.time,
        max_messages: int = 200_000,
    ) -> None:
        self.username = username
        self.password = password
        self.credits = credits
        self.delay = delay
        self.reports = reports
        self.hang = hang
        self.clock = clock
        self.max_messages = max_messages
        self.requests: deque[dict[str, str]] = deque(maxlen=10_000)
        self.messages: dict[str, SimMessage] = {}
        self.pushes: deque[tuple[dict[str, str], int]] = deque(maxlen=10_000)
        self._failed_once: set[tuple[str, str]] = set()
        self._prefix = "".join(random.choices(string.ascii_uppercase, k=3))
        self._counter = itertools.count(1)
        self._outbox = Outbox(timeout=10.0, connect_timeout=10.0, pool_size=64)
        routes: list[Route] = []
        for base in ("", "/api/http"):
            routes += [
                Route(f"{base}/send.php", self.send, methods=["GET"]),
                Route(f"{base}/query.php", self.query, methods=["GET"]),
                Route(f"{base}/credits.php", self.credits_php, methods=["GET"]),
            ]
        self.app = Starlette(routes=routes)

    # ------------------------------------------------------------------ helpers
    def _new_id(self) -> str:
        n = next(self._counter)
        digits = ""
        while n:
            n, rem = divmod(n, 36)
            digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[rem] + digits
        return self._prefix + digits.rjust(7, "0")

    def _call(self, request: Request, script: str) -> dict[str, str]:
        """The call's query parameters (``script`` added), recorded in :attr:`requests`."""
        params = dict(request.query_params)
        params["script"] = script
        self.requests.append(params)
        return params

    def _authorised(self, params: Mapping[str, str]) -> bool:
        return params.get("username") == self.username and params.get("password") == self.password

    @staticmethod
    def _reply(text: str, status: int = 200) -> Response:
        return PlainTextResponse(text, status, media_type=_CONTENT_TYPE)

    # ------------------------------------------------------------------ send.php
    async def send(self, request: Request) -> Response:
        params = self._call(request, "send.php")
        recipients = [r for r in params.get("to", "").split(",") if r]
        suffixes = {r[-2:] for r in recipients}
        if "98" in suffixes:
            await asyncio.sleep(self.hang)
        if "96" in suffixes:
            return self._reply("Internal Server Error", 500)
        if "97" in suffixes:
            key = (params.get("to", ""), params.get("message", ""))
            if key not in self._failed_once:
                self._failed_once.add(key)
                return self._reply("Internal Server Error", 500)
        if not self._authorised(params) or "95" in suffixes:
            return self._reply("Error: Authentication error.")
        valid = [r for r in recipients if r.isdigit() and 8 <= len(r) <= 15 and r[-2:] != "91"]
        if not valid:
            return self._reply("Error: No recipients.")
        sender = params.get("from", "")
        if not _valid_sender(sender) or "92" in suffixes:
            return self._reply("Error: Invalid sender identity.")
        now = self.clock()
        schedule_at: float | None = None
        if "schedule" in params:
            schedule_at = parse_schedule(params["schedule"], now)
            if schedule_at is None:
                return self._reply("Error: Invalid scheduling date.")
        if "94" in suffixes:
            return self._reply("Error: Invalid scheduling date.")
        text = params.get("message", "")
        coding = "UTF-8" if params.get("coding", "GSM").upper() == "UTF-8" else "GSM"
        parts = _parts(text, coding)
        cost = float(parts * len(valid))
        if cost > self.credits or "93" in suffixes:
            return self._reply("Error: Insufficient credits.")
        self.credits -= cost
        mid = self._new_id()
        message = SimMessage(
            mid=mid,
            sender=sender,
            text=text,
            coding=coding,
            flash=params.get("flash") == "1",
            dlr_url=params.get("dlr-url") or None,
            parts=parts,
            schedule_at=schedule_at,
            statuses=dict.fromkeys(valid, "Queued"),
        )
        self._remember(message)
        due = max(0.0, (schedule_at or now) - now) + self.delay
        for mobile in valid:
            self._outbox.call_later(due, functools.partial(self._report_time, mobile, message))
        return self._reply(f"ID:{mid}")

    def _remember(self, message: SimMessage) -> None:
        if len(self.messages) >= self.max_messages:
            del self.messages[next(iter(self.messages))]
        self.messages[message.mid] = message

    def _report_time(self, mobile: str, message: SimMessage) -> None:
        """A recipient's report is due: set its status (and push it)."""
        suffix = mobile[-2:]
        if suffix == "01":
            status = "Failed"
        elif suffix in ("02", "03"):
            status = "Pending"
        else:
            status = "Delivered"
        message.statuses[mobile] = status
        if suffix != "04":
            self._push(message, mobile, status)
        if suffix == "03":

            def deliver() -> None:
                message.statuses[mobile] = "Delivered"
                self._push(message, mobile, "Delivered")

            self._outbox.call_later(self.delay, deliver)

    def _push(self, message: SimMessage, mobile: str, status: str) -> None:
        if not self.reports or message.dlr_url is None:
            return
        params = {"mid": message.mid, "mobile": mobile, "status": status}
        sep = "&" if "?" in message.dlr_url else "?"
        url = f"{message.dlr_url}{sep}{urlencode(params)}"
        self._outbox.spawn(self._deliver(url, params))

    async def _deliver(self, url: str, params: dict[str, str]) -> None:
        try:
            response = await self._outbox.request(HttpRequest("GET", url))
        except HttpError:
            self.pushes.append((params, -1))
        else:
            self.pushes.append((params, response.status))

    # ------------------------------------------------------------------ query.php
    async def query(self, request: Request) -> Response:
        params = self._call(request, "query.php")
        if not self._authorised(params):
            return self._reply("Error: Authentication error.")
        mid = params.get("mid", "")
        if not mid:
            return self._reply("Error: No message ID defined.")
        mobile = params.get("mobile", "")
        if not mobile:
            return self._reply("Error: No mobile defined.")
        message = self.messages.get(mid)
        status = message.statuses.get(mobile) if message is not None else None
        if status is None:
            return self._reply("Error: No such message or recipient.")
        return self._reply(f"Status: {status}")

    # ------------------------------------------------------------------ credits.php
    async def credits_php(self, request: Request) -> Response:
        params = self._call(request, "credits.php")
        if not self._authorised(params):
            return self._reply("Error: Authentication error.")
        return self._reply(f"Credits:{self.credits:.2f}")

    # ------------------------------------------------------------------ lifecycle
    async def close(self) -> None:
        """Cancel pending report timers, let pushes under way finish, close the session."""
        await self._outbox.close(finish_pushes=True)


async def serve(host: str, port: int, options: Mapping[str, str]) -> None:
    """``smpp-bridge simulate isms-http``: run until cancelled (options: the module docstring)."""
    sim = IsmsHttpSimulator(**read_options(options, IsmsHttpSimulator))
    await serve_simulator(sim, host, port, "iSMS HTTP")
