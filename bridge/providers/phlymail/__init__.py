"""phlyMail adapter (``type = "phlymail"``): the message gateway's ``http.php``.

The specification is phlyMail's German "SMS-Gateway" page ("Aufruf des Gateways", "Rückgaben
des Gateways", "Parameterangabe"; ``docs/providers/phlymail.md`` has the full mapping). What it
says, and what we made of it where it says nothing:

* **One URL, one ``mode``.** ``https://msggw.phlymail.de/http.php``, "wahlweise per HTTP GET
  oder HTTP POST": ``mode=test`` (connection and login test), ``mode=synchro`` (credit
  balance), ``mode=sms`` (send), ``mode=udh`` (binary, "Details auf Anfrage") and ``mode=utf``
  (Unicode, "Details auf Anfrage"). We POST a form by default (``method``), so the password
  hash and the text stay out of every URL and access log; ``method = "GET"`` sends the page's
  own example form.
* **Replies** are one line, ``<CODE> <readable English text>``. Send: 100 (taken; the text
  starts with the number of effective SMS), 201 (text too long), 202 (a mandatory field
  missing), 203 (credit too low), 402 (wrong login). Every one of them, and the connection
  test's 401 should a send ever get it, has a row in :data:`SEND_CODES`; the code is the
  receipt's ``err:``. 203 is transient (a top-up fixes it; retried until the validity ends,
  or ``[pipeline] failover_after`` moves on sooner); the rest are permanent. An undocumented
  code is permanent with that code; a reply that is not ``<CODE> …`` at all (a proxy's page)
  is transient.
* **Credentials**: ``user`` and either ``encpass`` (MD5 of the password, "always to be
  preferred") or ``pass`` (plain). ``password_field`` chooses; default ``encpass``. The MD5 is
  taken over the password's ISO-8859-1 bytes (the interface's charset; UTF-8 for a password
  ISO-8859-1 cannot hold). The hash logs in as well as the password does: it is a secret too.
* **Charset**: "Das character encoding der Schnittstelle ist ISO-8859-1". Text ISO-8859-1 can
  hold goes as ``mode=sms`` with every parameter percent-encoded in ISO-8859-1 (so ``Grüße``
  sent as UCS2 by the ESME still goes the cheap way). Anything else (``€``, Greek, Cyrillic,
  emoji) goes as ``mode=utf``, whose details the page leaves to a request: we send the same
  parameters, percent-encoded in UTF-8 (what the mode's name says). ``unicode = false`` turns
  that mode off (such text is then refused before any request and fails over).
* **Length**: "maximale Länge einer Nachricht 918 Zeichen (6 x 153 Zeichen)" — a GSM limit
  ("standardbedingt"), so we count it in GSM septets: the extension characters ``^ { } \\ [ ~ ]
  | \\f`` count two. Unicode: the page gives no limit; we derive 402 = 6 × 67 (the same six
  parts, at the 67 UCS2 characters a concatenated part holds), counted in UTF-16 code units.
  Longer text is refused before any request with the gateway's own 201.
* **Numbers**: ``to`` "im Format 004917712345678": ``00`` and the E.164 digits. ``from``: the
  same format, or "alphanumerisch (Zeichen 0-9 und A-Z) mit maximal 11 Zeichen"; we read A-Z
  as letters of either case. A name with other characters (space, ``-``, umlauts), or a
  national/short sender number we cannot make international, is refused before any request
  (``err:001``, the bridge's "cannot be expressed"), so another route may carry it.
* **No delivery reports exist** in this API (no id is returned, nothing is pushed, nothing can
  be polled): a message phlyMail took is finished at once as ``ACCEPTED`` — the honest final
  state (phlyMail has it; whether it reached the handset will never be known). An ESME that
  asked for a receipt gets ``stat:ACCEPTD err:000`` straight away. The gateway gives no message
  id, so the message is recorded under a synthetic ``phly-<our message id>`` (it is taken and
  must not be sent again after a restart). ``capabilities.reports = "none"``.
* **Not in the API**: scheduling (the bridge holds scheduled messages until due), validity
  periods, flash SMS, reference ids, inbound SMS. Binary SMS (``mode=udh``) are "Details auf
  Anfrage": the page names no parameter for the header or the octets, so binary content and
  user data headers are refused rather than guessed at.
* **Health**: ``mode=synchro`` (checks the login too, 402) and its balance — the first number
  of the reply's readable text — feeds ``bridge_provider_balance``; ``health = "test"`` uses
  ``mode=test`` instead (100 / 401, no balance).

This package is the adapter, one module per seam, as for every HTTP provider: :mod:`.settings`
(the config table, the account every request carries, the limits), :mod:`.send` (``http.php``:
the send, connection-test and balance calls and their reply codes). The API has no delivery
reports and no inbound SMS, so there is no reports or inbound module. This file holds the
adapter class that ties them to the Provider protocol, and the account of the API they follow.
``Settings`` and ``create`` are what the provider registry and the config read from the package.
"""

from __future__ import annotations

import dataclasses

from bridge.core.model import Message, Outcome, OutcomeKind
from bridge.core.provider import Capabilities, Provider, ProviderContext
from bridge.providers.http import HttpRequest, HttpResponse
from bridge.providers.http_provider import HttpProvider
from bridge.providers.phlymail.send import (
    build_balance_request,
    build_send_request,
    build_test_request,
    expected_parts,
    parse_balance_reply,
    parse_send_reply,
    parse_test_reply,
)
from bridge.providers.phlymail.settings import CAPABILITIES, LATIN1, Settings

__all__ = ["PhlymailProvider", "Settings", "create"]


# --------------------------------------------------------------------------- the provider


class PhlymailProvider(HttpProvider):
    """The adapter: the pure functions above over :class:`HttpProvider`. No callbacks, no
    polling (the inherited :meth:`poll` returns nothing): the API has no reports."""

    def __init__(
        self, name: str, settings: Settings, ctx: ProviderContext, capabilities: Capabilities
    ) -> None:
        super().__init__(name, settings, ctx, capabilities)
        self.account = settings.account()
        self.health_mode = settings.health

    def build_send(self, message: Message) -> HttpRequest:
        return build_send_request(message, self.account)

    def parse_send(self, message: Message, response: HttpResponse) -> Outcome:
        if not 200 <= response.status < 300:
            # Not the gateway speaking (a wrong URL, a proxy): retried, so nothing is lost
            # while the config is fixed; /readyz shows the provider down meanwhile.
            return Outcome(OutcomeKind.TRANSIENT, detail=f"HTTP {response.status}")
        return parse_send_reply(response.text(LATIN1), message, expected_parts(message))

    def build_health(self) -> HttpRequest:
        if self.health_mode == "test":
            return build_test_request(self.account)
        return build_balance_request(self.account)

    def parse_health(self, response: HttpResponse) -> tuple[bool, float | None]:
        if response.status != 200:
            return False, None
        body = response.text(LATIN1)
        if self.health_mode == "test":
            return parse_test_reply(body), None
        return parse_balance_reply(body)


def create(name: str, settings: Settings, ctx: ProviderContext) -> Provider:
    """The adapter for one ``[providers.NAME]`` table (app.py applies the rate limits)."""
    capabilities = CAPABILITIES
    if not settings.unicode:
        capabilities = dataclasses.replace(CAPABILITIES, unicode=False, max_ucs2_chars=0)
    return PhlymailProvider(name, settings, ctx, capabilities)

