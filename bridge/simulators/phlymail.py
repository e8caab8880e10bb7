"""phlyMail simulator: the message gateway's ``http.php`` as phlyMail's "SMS-Gateway" page
describes it, for tests, demos and trying a config without an account.

``smpp-bridge simulate phlymail --port 8602`` then point ``base_url`` at
``http://127.0.0.1:8602/http.php``.

What it does, as the page says:

* ``/http.php``, GET or POST (a form; POST values win over the query string, as PHP's
  ``$_REQUEST`` does). Parameters are read as ISO-8859-1 ("Das character encoding der
  Schnittstelle ist ISO-8859-1"); in ``mode=utf`` as UTF-8 (the page: "Details auf Anfrage";
  invalid UTF-8 there answers 202). Every answer is one line ``<CODE> <English text>\\n``,
  ``text/plain; charset=iso-8859-1``.
* Credentials: ``user`` and ``pass`` (plain) or ``encpass`` (hex MD5 of the password's
  ISO-8859-1 bytes, either case). Missing or wrong: 401 for ``mode=test``, 402 for every other
  mode (the page's codes). A missing or unknown ``mode`` answers 202.
* ``mode=test`` → ``100 Connection OK``. ``mode=synchro`` → ``100 Current credit: <credit>``.
* ``mode=sms`` / ``mode=utf``: ``from`` (``00`` + 1–15 digits, or 1–11 characters of 0-9,
  A-Z, a-z), ``to`` (``00`` + 1–15 digits), ``text``. 202 when one is missing or not in the
  page's format (the page has no other code for a malformed field); then the destination
  rules below; 201 when the text is longer than 918 characters (``mode=utf``: 402 UTF-16 code
  units, 6 × 67, our derivation — the page gives no Unicode limit); 203 when the credit is
  below the message's SMS count (one per 160 characters or per 153 of a longer text; ``utf``:
  70 / 67); else the credit goes down by that count and the answer is ``100 <n> SMS sent``.
  ``.messages`` keeps every message taken. There are no reports and no inbound SMS (the API
  has none). ``mode=udh`` ("Details auf Anfrage") is not simulated: 202.

Outcomes by the destination number's last digits (first match):

=============  ==============================================================
``99`` + code  that reply for a send code 201, 202, 203, 401, 402 (...99203)
``95``         HTTP 500, always
``97``         HTTP 500 the first time (per number and text), then normal
``96``         ``203`` (credit too low) the first time, then normal
``98``         the answer comes after ``slow`` seconds (client timeouts)
anything else  ``100`` (taken)
=============  ==============================================================

Options (``--option key=value``): ``username`` (default ``demophly``), ``password``
(``secretphly``), ``credit`` (1000), ``slow`` (5 s).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bridge.simulators.common import read_options, serve_simulator

__all__ = [
    "DEFAULT_PASSWORD",
    "DEFAULT_USERNAME",
    "FORCEABLE_CODES",
    "PhlymailSimulator",
    "SimMessage",
    "serve",
]

DEFAULT_USERNAME = "demophly"
DEFAULT_PASSWORD = "secretphly"

#: The send's documented refusals, plus the test mode's 401 (the ``99`` + code rule).
FORCEABLE_CODES = frozenset({201, 202, 203, 401, 402})

#: The readable texts (the page shows none; these are ours, in English as it says).
TEXTS = {
    100: "OK",
    201: "Message text too long",
    202: "Mandatory parameter missing",
    203: "Insufficient credit",
    401: "Authentication failed",
    402: "Authentication failed",
}

MAX_SMS_CHARS = 918
MAX_UTF_UNITS = 402

_NUMBER_RE = re.compile(r"00[1-9][0-9]{0,14}")
_NAME_RE = re.compile(r"[0-9A-Za-z]{1,11}")
_LATIN1 = "iso-8859-1"


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One message the simulated gateway took."""

    mode: str
    sender: str
    to: str
    text: str
    parts: int
    at: float


def _line(code: int, text: str | None = None) -> str:
    return f"{code} {text or TEXTS[code]}\n"


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.2f}"


def _parse(raw: bytes, charset: str) -> list[tuple[str, str]]:
    """Pairs of an urlencoded string, values decoded in ``charset`` (strict)."""
    return parse_qsl(
        raw.decode("ascii", errors="replace"),
        keep_blank_values=True,
        encoding=charset,
        errors="strict",
    )


class PhlymailSimulator:
    """The simulated gateway (see the module docstring). ``app`` is the Starlette app; the state
    (``requests``, ``messages``, ``credit``) is for tests to inspect."""

    def __init__(
        self,
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        credit: float = 1000.0,
        slow: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.username = username
        self.password = password
        self.credit = credit
        self.slow = slow
        self.clock = clock
        #: Every call, as decoded (``_method`` added: GET or POST).
        self.requests: list[dict[str, str]] = []
        self.messages: list[SimMessage] = []
        self._seen_once: set[tuple[str, str, str]] = set()
        self.app = Starlette(routes=[Route("/http.php", self._http, methods=["GET", "POST"])])

    async def close(self) -> None:
        """Nothing is pending (no reports exist); kept for symmetry with the other simulators."""

    # ------------------------------------------------------------------ http.php
    @staticmethod
    async def _raw(request: Request) -> list[bytes]:
        raw = [request.scope.get("query_string", b"")]
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and content_type.startswith(
            "application/x-www-form-urlencoded"
        ):
            raw.append(await request.body())
        return raw

    @staticmethod
    def decode(raw: list[bytes]) -> dict[str, str] | None:
        """The call's parameters (later sources win); None for ``mode=utf`` values that are
        not UTF-8."""
        params: dict[str, str] = {}
        for chunk in raw:
            params.update(_parse(chunk, _LATIN1))
        if params.get("mode") == "utf":
            params = {}
            try:
                for chunk in raw:
                    params.update(_parse(chunk, "utf-8"))
            except UnicodeDecodeError:
                return None
        return params

    async def _http(self, request: Request) -> Response:
        params = self.decode(await self._raw(request))
        if params is None:
            self.requests.append({"_method": request.method, "mode": "utf"})
            return self._reply(_line(202, "Invalid UTF-8 in parameters"))
        self.requests.append({**params, "_method": request.method})
        to = params.get("to", "")
        key = (to, params.get("text", ""), params.get("mode", ""))
        if params.get("mode") in ("sms", "utf"):
            if to.endswith("95"):
                return PlainTextResponse("Internal Server Error", status_code=500)
            if to.endswith("97") and key not in self._seen_once:
                self._seen_once.add(key)
                return PlainTextResponse("Internal Server Error", status_code=500)
            if to.endswith("98"):
                await asyncio.sleep(self.slow)
        return self._reply(self.handle(params, key))

    @staticmethod
    def _reply(body: str) -> Response:
        return Response(body.encode(_LATIN1), media_type="text/plain; charset=iso-8859-1")

    def authenticated(self, params: Mapping[str, str]) -> bool:
        """``user`` and ``pass`` or ``encpass`` (hex MD5, either case) match the account."""
        user = params.get("user", "")
        if not user or not hmac.compare_digest(user.encode(), self.username.encode()):
            return False
        if "encpass" in params:
            try:
                raw = self.password.encode(_LATIN1)
            except UnicodeEncodeError:
                raw = self.password.encode("utf-8")
            digest = hashlib.md5(raw, usedforsecurity=False).hexdigest()
            return hmac.compare_digest(params["encpass"].lower().encode(), digest.encode())
        if "pass" in params:
            return hmac.compare_digest(params["pass"].encode(), self.password.encode())
        return False

    def handle(self, params: Mapping[str, str], key: tuple[str, str, str] = ("", "", "")) -> str:
        """The reply line to one call (the checks in the module docstring)."""
        mode = params.get("mode", "")
        if mode not in ("test", "synchro", "sms", "utf", "udh"):
            return _line(202, "Unknown or missing mode")
        if not self.authenticated(params):
            return _line(401 if mode == "test" else 402)
        if mode == "test":
            return _line(100, "Connection OK")
        if mode == "synchro":
            return _line(100, f"Current credit: {_number(self.credit)}")
        if mode == "udh":
            return _line(202, "Binary SMS: details on request")
        return self._send(mode, params, key)

    def _send(self, mode: str, params: Mapping[str, str], key: tuple[str, str, str]) -> str:
        sender, to, text = params.get("from", ""), params.get("to", ""), params.get("text", "")
        if not sender or not to or not text:
            return _line(202)
        if not (_NUMBER_RE.fullmatch(sender) or _NAME_RE.fullmatch(sender)):
            return _line(202, "Invalid sender")
        if not _NUMBER_RE.fullmatch(to):
            return _line(202, "Invalid recipient")
        forced = _forced_code(to)
        if forced is not None:
            return _line(forced)
        if to.endswith("96") and key not in self._seen_once:
            self._seen_once.add(key)
            return _line(203)
        if mode == "sms":
            length, single, part, limit = len(text), 160, 153, MAX_SMS_CHARS
        else:
            length, single, part, limit = len(text.encode("utf-16-be")) // 2, 70, 67, MAX_UTF_UNITS
        if length > limit:
            return _line(201)
        parts = 1 if length <= single else math.ceil(length / part)
        if self.credit < parts:
            return _line(203)
        self.credit -= parts
        self.messages.append(SimMessage(mode, sender, to, text, parts, self.clock()))
        return _line(100, f"{parts} SMS sent")


def _forced_code(number: str) -> int | None:
    """The ``99`` + code rule: ``...99203`` → 203."""
    if len(number) >= 5 and number[-5:-3] == "99":
        code = int(number[-3:])
        if code in FORCEABLE_CODES:
            return code
    return None


async def serve(host: str, port: int, options: Mapping[str, str]) -> None:
    """``smpp-bridge simulate phlymail``: options in the module docstring."""
    sim = PhlymailSimulator(**read_options(options, PhlymailSimulator))
    await serve_simulator(sim, host, port, "phlymail")
