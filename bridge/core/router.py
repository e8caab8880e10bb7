"""Routing: which providers, in which failover order, may carry a message.

The router answers at submit time, before the message is stored, so that anything no route can
carry is refused in the submit_sm_resp — an error status as soon as we know (docs/architecture.md)
— instead of surfacing hours later as a failure receipt.

Rules are tried in order; the **first rule whose conditions all match** decides. Its providers are
then filtered by what each can carry (:class:`~bridge.core.provider.Capabilities`). We do not fall
through to later rules when the filter leaves nothing: a rule is policy ("account X goes through
provider Y only"), and silently using another rule's providers would break it.

Pure code: no clock, no I/O. ``phonenumbers`` is used only to name the destination's country.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import phonenumbers

from bridge.core.model import Message
from bridge.core.provider import Capabilities

__all__ = ["DEFAULT_PROVIDER", "NoRoute", "NoRouteReason", "Route", "Router", "country_of"]

DEFAULT_PROVIDER = "sandbox"

#: SMPP type of number for an alphanumeric sender.
_TON_ALPHANUMERIC = 5


class NoRouteReason(enum.StrEnum):
    """Why a message cannot be routed; the SMPP layer maps TOO_LONG to ESME_RINVMSGLEN, NO_RULE
    to ESME_RINVDSTADR and the rest to ESME_RSUBMITFAIL."""

    NO_RULE = "no rule matches"
    NO_PROVIDER = "no configured provider"
    TOO_LONG = "too long for every route"
    UNICODE = "unicode not supported"
    BINARY = "binary not supported"
    FLASH = "flash not supported"
    ALPHANUMERIC_SENDER = "alphanumeric sender not supported"
    SENDER_TOO_LONG = "sender too long"


class NoRoute(Exception):
    """No provider can carry the message; ``reason`` says why (a :class:`NoRouteReason`)."""

    def __init__(self, reason: NoRouteReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


def country_of(digits: str) -> str | None:
    """The ISO 3166 alpha-2 region of an E.164 number (digits, '+' optional), or None.

    The country calling code alone names the region for most codes. Shared codes (+1 NANP, +7,
    +44 with GG/JE/IM …) need the full parse to tell e.g. CA from US; an unparseable number under
    a shared code falls back to the code's main region. Non-geographic codes (+800, +882 …) and
    unknown codes give None, so a ``countries`` condition never matches them.
    """
    digits = digits.lstrip("+")
    if not digits.isdigit():
        return None
    for length in (1, 2, 3):  # calling codes are prefix-free: the first hit is the code
        if len(digits) <= length:
            break
        code = int(digits[:length])
        regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code)
        if not regions:
            continue
        if len(regions) > 1:
            try:
                region = phonenumbers.region_code_for_number(phonenumbers.parse("+" + digits))
            except phonenumbers.NumberParseException:
                region = None
            if region and region != phonenumbers.UNKNOWN_REGION:
                return region
        region = phonenumbers.region_code_for_country_code(code)
        return None if region in ("001", phonenumbers.UNKNOWN_REGION) else region
    return None


@dataclass
class Route:
    """One routing rule: if every given condition matches, use ``providers`` in this order.

    A condition left as None is not checked. ``countries`` are ISO alpha-2 codes of the
    destination, ``prefixes`` are E.164 digit prefixes ('+' ignored), ``regex`` is searched in
    the destination digits (anchor it yourself with ``^`` / ``$``).
    """

    providers: list[str]
    accounts: list[str] | None = None
    countries: list[str] | None = None
    prefixes: list[str] | None = None
    regex: str | None = None
    name: str = ""
    _pattern: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Normalise once here so that route() does no per-message string work; a bad regex
        # raises re.error now, at configuration time, not on the first message.
        if self.countries is not None:
            self.countries = [c.strip().upper() for c in self.countries]
        if self.prefixes is not None:
            self.prefixes = [p.strip().lstrip("+") for p in self.prefixes]
        self._pattern = re.compile(self.regex) if self.regex is not None else None

    def matches(self, message: Message, country: str | None) -> bool:
        """Whether the message meets every condition (``country`` as from :func:`country_of`)."""
        digits = message.destination.digits.lstrip("+")
        if self.accounts is not None and message.account not in self.accounts:
            return False
        if self.countries is not None and country not in self.countries:
            return False
        if self.prefixes is not None and not digits.startswith(tuple(self.prefixes)):
            return False
        return self._pattern is None or self._pattern.search(digits) is not None


def _refusal(
    caps: Capabilities, message: Message, chars: int, unicode: bool
) -> NoRouteReason | None:
    """Why this provider cannot carry the message, or None if it can.

    Feature checks come before the length check so that a message that is both too long and
    unicode on a GSM-only provider is reported as "unicode not supported" (the real obstacle).
    """
    binary = message.text is None
    if binary and not caps.binary:
        return NoRouteReason.BINARY
    if unicode and not binary and not caps.unicode:
        return NoRouteReason.UNICODE
    if message.flash and not caps.flash:
        return NoRouteReason.FLASH
    if message.source.ton == _TON_ALPHANUMERIC:
        if not caps.alphanumeric_sender:
            return NoRouteReason.ALPHANUMERIC_SENDER
        if len(message.source.digits) > caps.max_sender_chars:
            return NoRouteReason.SENDER_TOO_LONG
    if binary:
        # Binary parts carry as many octets as UCS2 parts (2 per character), so the UCS2 limit
        # doubled is the octet budget.
        limit = 2 * caps.max_ucs2_chars
    else:
        limit = caps.max_ucs2_chars if unicode else caps.max_gsm7_chars
    if chars > limit:
        return NoRouteReason.TOO_LONG
    return None


class Router:
    """Maps a message to its ordered provider list (see the module docstring for the rules).

    With no routes configured everything goes to ``["sandbox"]``, so the shipped config runs
    as-is. ``capabilities`` names every configured provider; a route naming a provider that is
    not in it skips that provider (config validation reports it; the router stays total).
    """

    def __init__(self, routes: Sequence[Route], capabilities: Mapping[str, Capabilities]) -> None:
        self.routes: list[Route] = list(routes) or [Route([DEFAULT_PROVIDER], name="default")]
        self.capabilities = capabilities
        # Only parse the destination when some rule asks for a country.
        self._needs_country = any(r.countries is not None for r in self.routes)

    def replace_routes(self, routes: Sequence[Route]) -> None:
        """Swap the rules (config reload); messages already routed keep their provider list."""
        self.routes = list(routes) or [Route([DEFAULT_PROVIDER], name="default")]
        self._needs_country = any(r.countries is not None for r in self.routes)

    def rule_for(self, message: Message) -> Route | None:
        """The first rule that matches, or None."""
        country = country_of(message.destination.digits) if self._needs_country else None
        for rule in self.routes:
            if rule.matches(message, country):
                return rule
        return None

    def explain(
        self, message: Message, *, chars: int, unicode: bool
    ) -> tuple[Route | None, list[tuple[str, NoRouteReason | None]]]:
        """The rule that matches and, for each of its providers in order, why it cannot carry
        the message (None: it can). For the operator's route test (``bridge route``)."""
        rule = self.rule_for(message)
        if rule is None:
            return None, []
        verdicts: list[tuple[str, NoRouteReason | None]] = []
        for name in rule.providers:
            caps = self.capabilities.get(name)
            refusal = (
                NoRouteReason.NO_PROVIDER
                if caps is None
                else _refusal(caps, message, chars, unicode)
            )
            verdicts.append((name, refusal))
        return rule, verdicts

    def route(self, message: Message, *, chars: int, unicode: bool) -> list[str]:
        """The providers to try, in failover order; raises :class:`NoRoute` if there are none.

        ``chars`` is the length in the unit the provider limits use: GSM 7-bit septets (an
        extension-table character counts 2) for GSM text, UTF-16 code units for UCS2 text,
        octets for binary (``message.text is None``). ``unicode`` says the text needs UCS2
        (data_coding 0x08, or characters outside GSM 03.38); the caller knows, having decoded it.
        """
        rule = self.rule_for(message)
        if rule is None:
            raise NoRoute(NoRouteReason.NO_RULE, f"destination {message.destination.digits}")
        chosen: list[str] = []
        refusals: list[NoRouteReason] = []
        for name in rule.providers:
            caps = self.capabilities.get(name)
            if caps is None:
                refusals.append(NoRouteReason.NO_PROVIDER)
                continue
            refusal = _refusal(caps, message, chars, unicode)
            if refusal is None:
                chosen.append(name)
            else:
                refusals.append(refusal)
        if chosen:
            return chosen
        rule_name = rule.name or ",".join(rule.providers)
        # Unconfigured providers say nothing about the message: judge by the configured ones.
        known = [r for r in refusals if r is not NoRouteReason.NO_PROVIDER]
        if not known:
            raise NoRoute(NoRouteReason.NO_PROVIDER, f"route {rule_name}")
        if all(r is NoRouteReason.TOO_LONG for r in known):
            raise NoRoute(NoRouteReason.TOO_LONG, f"{chars} characters, route {rule_name}")
        # The first refusal that is not about length is the real obstacle (a longer limit
        # elsewhere would not have helped).
        reason = next(r for r in known if r is not NoRouteReason.TOO_LONG)
        raise NoRoute(reason, f"route {rule_name}")
