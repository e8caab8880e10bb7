"""1601SMS simulator: ``gateway.php`` and ``gatewayrapport.php`` as 1601SMS's API page describes
them, for tests, demos and trying a config without an account.

``smpp-bridge simulate sms1601 --port 8601 --option push_url=http://127.0.0.1:8080/callbacks/...``
then point ``base_url`` at ``http://127.0.0.1:8601/module/gateway.php``.

What it does, as the page says:

* ``/module/gateway.php`` (GET, and POST form for good measure): ``klantuser``, ``klantpwd``
  (the password or its hex SHA-1), ``bericht``, ``naar`` (comma-separated numbers allowed),
  ``afzender``; options ``delivery=ja`` (answer ``OK <smsID>``), ``type=long``,
  ``datum=yyyymmddhhii`` (held in the outbox until then; ``outboxid=ja`` also answers an id),
  ``emailen``, ``referentie``, ``logging``, ``test=ja`` (all checks, nothing sent, nothing
  charged); ``action=credits`` (the balance), ``action=verwijderoutbox`` and
  ``action=verwijderbericht&id=|naar=`` (``OK`` or ``ERROR 122``), ``action=rapport&aantal=N``
  (errors 123/124 as documented; the page shows no reply format, so ours is one ``smsid status``
  line per message, newest first). Errors are answered ``ERROR <code>``, checked in this order:
  100/101 empty credentials, 104 wrong ones, 102 no text, 103 no number, 109 no sender,
  110 digits without ``+``, 111 name over 12 characters, 113 characters other than letters,
  digits and spaces, 117 a name in ``blocked_senders``, 125 ``naar=groep`` (no address book
  here), 106 a number that is not 8–15 digits or starts with 0, 105 over 160 characters without
  ``type=long``, 118 over 459 with it, 121 a ``datum`` that is malformed or before the current
  minute, the destination rules below, 108 too few credits. Credits: one per 160 characters, or
  per 153 of a long message, per number.
* Reports: a sent message is SUBMITTED; ``delay`` seconds later it reaches its final status.
  Messages sent with ``delivery=ja`` are pushed (GET ``smsid``, ``datum`` yyyymmdduummss,
  ``status``, ``referentie``) to ``push_url``, the account-level "delivery notification URL"
  (an option, or set the attribute at run time); ``.pushes`` records each push and its answer.
  ``/module/gatewayrapport.php?smsid=N[&datum=ja]`` answers the status word (and
  ``dd/mm/yyyy uu:mm:ss``); NONE for a message sent without ``delivery=ja`` or in test mode;
  ``ERROR 123`` without smsid, ``ERROR 124`` for an id it does not know.

Outcomes by the destination number's last digits (first match):

=============  ==============================================================
``99`` + code  ``ERROR <code>`` for a documented code 100–150 (e.g. ...99108)
``95``         HTTP 500, always
``97``         HTTP 500 the first time (per number and referentie), then normal
``96``         ``ERROR 150`` (maintenance) the first time, then normal
``98``         the answer comes after ``slow`` seconds (client timeouts)
``81``         report NOT DELIVERED
``82``         report REJECTED
``83``         report NONE
``84``         BUFFERED pushed after ``delay``/2, DELIVERED after ``delay``
``85``         stays SUBMITTED (no final report)
anything else  DELIVERED
=============  ==============================================================

Options (``--option key=value``): ``username`` (default ``demo1601``), ``password``
(``secret1601``), ``credits`` (1000), ``delay`` (0.5 s), ``slow`` (5 s), ``push_url`` (none),
``timezone`` (Europe/Amsterdam).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import itertools
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bridge.providers.http import HttpError, HttpRequest
from bridge.simulators.common import (
    Outbox,
    read_options,
    request_params,
    serve_simulator,
)

__all__ = ["DEFAULT_PASSWORD", "DEFAULT_USERNAME", "SimMessage", "Sms1601Simulator", "serve"]

DEFAULT_USERNAME = "demo1601"
DEFAULT_PASSWORD = "secret1601"

#: Every code the page lists (the ``99`` + code rule answers only these).
DOCUMENTED_ERRORS = frozenset([*range(100, 127), 150])

_SENDER_NAME_RE = re.compile(r"[A-Za-z0-9 ]+")
_FINAL_BY_SUFFIX = {"81": "NOT DELIVERED", "82": "REJECTED", "83": "NONE"}


@dataclass(slots=True)
class SimMessage:
    """One message to one number, as the simulated gateway keeps it."""

    smsid: str
    naar: str
    afzender: str
    bericht: str
    parts: int
    delivery: bool
    referentie: str
    test: bool
    status: str = "SUBMITTED"
    updated_at: float = 0.0
    due_at: float | None = None  # scheduled: in the outbox until then

    @property
    def in_outbox(self) -> bool:
        return self.due_at is not None


class Sms1601Simulator:
    """The simulated gateway (see the module docstring). ``app`` is the Starlette app; the
    state (``requests``, ``messages``, ``pushes``, ``credits``) is for tests to inspect."""

    def __init__(
        self,
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        credits: float = 1000.0,
        delay: float = 0.5,
        slow: float = 5.0,
        push_url: str | None = None,
        timezone: str = "Europe/Amsterdam",
        blocked_senders: tuple[str, ...] = ("Blocked",),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.username = username
        self.password = password
        self.credits = credits
        self.delay = delay
        self.slow = slow
        self.push_url = push_url
        self.tz = ZoneInfo(timezone)
        self.blocked_senders = {s.lower() for s in blocked_senders}
        self.clock = clock
        self.requests: list[dict[str, str]] = []
        self.status_requests: list[dict[str, str]] = []
        self.messages: dict[str, SimMessage] = {}
        self.pushes: list[tuple[dict[str, str], int | str]] = []
        self._ids = itertools.count(1234567)
        self._seen_once: set[tuple[str, str, str]] = set()
        self._outbox = Outbox()
        self.app = Starlette(
            routes=[
                Route("/module/gateway.php", self._gateway, methods=["GET", "POST"]),
                Route("/module/gatewayrapport.php", self._rapport, methods=["GET", "POST"]),
            ]
        )

    # ------------------------------------------------------------------ plumbing
    async def close(self) -> None:
        """Cancel pending report timers and pushes (for tests and shutdown)."""
        await self._outbox.close()

    # ------------------------------------------------------------------ gateway.php
    async def _gateway(self, request: Request) -> Response:
        params = await request_params(request)
        self.requests.append(params)
        naar = params.get("naar", "")
        key = (naar, params.get("referentie", ""), params.get("bericht", ""))
        if naar.endswith("95"):
            return PlainTextResponse("Internal Server Error", status_code=500)
        if naar.endswith("97") and key not in self._seen_once:
            self._seen_once.add(key)
            return PlainTextResponse("Internal Server Error", status_code=500)
        if naar.endswith("98"):
            await asyncio.sleep(self.slow)
        return PlainTextResponse(self.handle(params, key))

    def _authenticated(self, user: str, pwd: str) -> bool:
        sha1 = hashlib.sha1(self.password.encode("utf-8")).hexdigest()
        return hmac.compare_digest(user, self.username) and (
            hmac.compare_digest(pwd, self.password) or hmac.compare_digest(pwd.lower(), sha1)
        )

    def handle(self, params: Mapping[str, str], key: tuple[str, str, str] = ("", "", "")) -> str:
        """The reply body to one gateway.php call (the checks in the module docstring)."""
        user, pwd = params.get("klantuser", ""), params.get("klantpwd", "")
        if not user:
            return "ERROR 100"
        if not pwd:
            return "ERROR 101"
        if not self._authenticated(user, pwd):
            return "ERROR 104"
        action = params.get("action")
        if action is not None:
            return self._action(action, params)
        return self._send(params, key)

    def _action(self, action: str, params: Mapping[str, str]) -> str:
        if action == "credits":
            return _number(self.credits)
        if action == "verwijderoutbox":
            outbox = [m for m in self.messages.values() if m.in_outbox]
            for message in outbox:
                del self.messages[message.smsid]
            return "OK" if outbox else "ERROR 122"
        if action == "verwijderbericht":
            wanted_id, wanted_naar = params.get("id"), params.get("naar")
            matched = [
                m
                for m in self.messages.values()
                if m.in_outbox and (m.smsid == wanted_id or (wanted_naar and m.naar == wanted_naar))
            ]
            for message in matched:
                del self.messages[message.smsid]
            return "OK" if matched else "ERROR 122"
        if action == "rapport":
            aantal = params.get("aantal")
            if not aantal:
                return "ERROR 123"
            if not aantal.isdigit() or int(aantal) < 1:
                return "ERROR 124"
            newest = list(self.messages.values())[::-1][: int(aantal)]
            return "\n".join(f"{m.smsid} {m.status}" for m in newest)
        return "ERROR 120"

    def _send(self, params: Mapping[str, str], key: tuple[str, str, str]) -> str:
        bericht = params.get("bericht", "")
        naar = params.get("naar", "")
        afzender = params.get("afzender", "")
        if not bericht:
            return "ERROR 102"
        if not naar:
            return "ERROR 103"
        sender_error = self._sender_error(afzender)
        if sender_error:
            return f"ERROR {sender_error}"
        if naar == "groep":
            return "ERROR 125"  # no address book in the simulator
        numbers = naar.split(",")
        if any(not n.isdigit() or not 8 <= len(n) <= 15 or n.startswith("0") for n in numbers):
            return "ERROR 106"
        long = params.get("type") == "long"
        if len(bericht) > 160 and not long:
            return "ERROR 105"
        if len(bericht) > 459:
            return "ERROR 118"
        due_at: float | None = None
        datum = params.get("datum")
        if datum is not None:
            due_at = self._datum(datum)
            if due_at is None:
                return "ERROR 121"
        for number in numbers:
            forced = _forced_error(number)
            if forced is not None:
                return f"ERROR {forced}"
            if number.endswith("96") and key not in self._seen_once:
                self._seen_once.add(key)
                return "ERROR 150"
        parts = 1 if len(bericht) <= 160 else math.ceil(len(bericht) / 153)
        test = params.get("test") == "ja"
        if not test:
            cost = parts * len(numbers)
            if self.credits < cost:
                return "ERROR 108"
            self.credits -= cost
        delivery = params.get("delivery") == "ja"
        ids: list[str] = []
        now = self.clock()
        for number in numbers:
            message = SimMessage(
                smsid=str(next(self._ids)),
                naar=number,
                afzender=afzender,
                bericht=bericht,
                parts=parts,
                delivery=delivery,
                referentie=params.get("referentie", ""),
                test=test,
                status="NONE" if test or not delivery else "SUBMITTED",
                updated_at=now,
                due_at=due_at if due_at is not None and due_at > now else None,
            )
            self.messages[message.smsid] = message
            ids.append(message.smsid)
            if not test:
                self._outbox.call_later(
                    (message.due_at or now) - now, functools.partial(self._dispatch, message)
                )
        if delivery or (due_at is not None and params.get("outboxid") == "ja"):
            return "OK " + ",".join(ids)
        return "OK"

    def _sender_error(self, afzender: str) -> int | None:
        if not afzender:
            return 109
        if afzender.startswith("+"):
            digits = afzender[1:]
            return None if digits.isdigit() and 1 <= len(digits) <= 15 else 113
        if afzender.replace(" ", "").isdigit():
            return 110
        if len(afzender) > 12:
            return 111
        if not _SENDER_NAME_RE.fullmatch(afzender):
            return 113
        if afzender.lower() in self.blocked_senders:
            return 117
        return None

    def _datum(self, datum: str) -> float | None:
        """``yyyymmddhhii`` → epoch, None if malformed or before the current minute."""
        if len(datum) != 12 or not datum.isdigit():
            return None
        try:
            at = datetime.strptime(datum, "%Y%m%d%H%M").replace(tzinfo=self.tz).timestamp()
        except ValueError:
            return None
        if at < math.floor(self.clock() / 60) * 60:
            return None
        return at

    # ------------------------------------------------------------------ reports
    def _dispatch(self, message: SimMessage) -> None:
        """The message leaves the outbox (or is sent at once): its report story begins."""
        if self.messages.get(message.smsid) is not message:
            return  # removed from the outbox meanwhile
        message.due_at = None
        if not message.delivery:
            return  # no report for it: its status stays NONE
        self._set_status(message, "SUBMITTED", push=False)
        if message.naar.endswith("85"):
            return
        if message.naar.endswith("84"):
            self._outbox.call_later(self.delay / 2, lambda: self._set_status(message, "BUFFERED"))
            self._outbox.call_later(self.delay, lambda: self._set_status(message, "DELIVERED"))
            return
        final = next(
            (word for suffix, word in _FINAL_BY_SUFFIX.items() if message.naar.endswith(suffix)),
            "DELIVERED",
        )
        self._outbox.call_later(self.delay, lambda: self._set_status(message, final))

    def _set_status(self, message: SimMessage, status: str, *, push: bool = True) -> None:
        message.status = status
        message.updated_at = self.clock()
        if push and message.delivery and self.push_url:
            params = {
                "smsid": message.smsid,
                "datum": datetime.fromtimestamp(message.updated_at, self.tz).strftime(
                    "%Y%m%d%H%M%S"
                ),
                "status": status,
                "referentie": message.referentie,
            }
            self._outbox.spawn(self._push(self.push_url, params))

    async def _push(self, url: str, params: dict[str, str]) -> None:
        try:
            response = await self._outbox.request(
                HttpRequest("GET", url, params=list(params.items()))
            )
        except HttpError as exc:
            self.pushes.append((params, exc.detail))
        else:
            self.pushes.append((params, response.status))

    # ------------------------------------------------------------------ gatewayrapport.php
    async def _rapport(self, request: Request) -> Response:
        params = await request_params(request)
        self.status_requests.append(params)
        return PlainTextResponse(self.status_reply(params))

    def status_reply(self, params: Mapping[str, str]) -> str:
        smsid = params.get("smsid", "")
        if not smsid:
            return "ERROR 123"
        message = self.messages.get(smsid)
        if message is None:
            return "ERROR 124"
        if params.get("datum") == "ja":
            when = datetime.fromtimestamp(message.updated_at, self.tz)
            return f"{message.status} {when:%d/%m/%Y %H:%M:%S}"
        return message.status


def _forced_error(number: str) -> int | None:
    """The ``99`` + code rule: ``...99108`` → 108."""
    if len(number) >= 5 and number[-5:-3] == "99":
        code = int(number[-3:])
        if code in DOCUMENTED_ERRORS:
            return code
    return None


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.2f}"


async def serve(host: str, port: int, options: Mapping[str, str]) -> None:
    """``smpp-bridge simulate sms1601``: options in the module docstring."""
    sim = Sms1601Simulator(**read_options(options, Sms1601Simulator))
    await serve_simulator(sim, host, port, "sms1601")
