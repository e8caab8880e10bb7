"""smsflatrate.net: the gateway types and the ``[providers.NAME] type = "smsflatrate"`` table.

The gateway type (``type=``) decides countries, lengths, sender rules and flash per send; the
settings choose it per account, and :func:`capabilities_for` derives what the router may hand this
provider from every gateway the settings can use. Its own module because the config reads it
without the adapter, and the send builders check against the same table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import BeforeValidator, Field, field_validator

from bridge.core.provider import Capabilities
from bridge.providers.settings import HttpProviderSettings, NonNegFloat, Secret, TimeZoneName

__all__ = [
    "ALNUM_SENDER",
    "AUTO_TYPES",
    "DOCUMENTED_REPLY_NUMBER",
    "FLASH_MAX_GSM",
    "FLASH_MAX_UCS2",
    "GATEWAYS",
    "MAX_BULK",
    "Gateway",
    "GatewayInfo",
    "GatewaySetting",
    "Settings",
    "capabilities_for",
    "effective_gateway",
    "international_digits",
]


#: The number smsflatrate.net gives for inbound variant 2 (reply=2 on gateways 10/11).
DOCUMENTED_REPLY_NUMBER: Final = "491624675000"

# --------------------------------------------------------------------------- gateways

Gateway = Literal[
    "1", "2", "3", "4", "10", "11", "20", "21",
    "auto1or2", "auto3or4", "auto10or11", "auto20or21",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """What the document's gateway overview says about one fixed gateway type."""

    germany_only: bool
    sender: bool  # "from=" possible (gateways 1, 2, 10, 11; 20/21 assumed like 1/2)
    max_chars: int  # "Zeichenzahl maximal" (GSM characters)
    flash: bool  # "flash=1" possible (3 and 10)
    status: bool  # "status=1" possible (1, 2, 3, 4, 10, 11, 20 — not 21)
    reply: int  # reply variant the gateway takes (1 on 3/4, 2 on 10/11, 0 none)

    @property
    def max_ucs2_chars(self) -> int:
        """No Unicode limit is documented: as many 67-character parts as 153-septet ones."""
        return math.ceil(self.max_chars / 153) * 67


GATEWAYS: Final[Mapping[str, GatewayInfo]] = {
    "1": GatewayInfo(True, True, 1071, False, True, 0),
    "2": GatewayInfo(False, True, 1071, False, True, 0),
    "3": GatewayInfo(True, False, 735, True, True, 1),
    "4": GatewayInfo(False, False, 735, False, True, 1),
    "10": GatewayInfo(True, True, 1071, True, True, 2),
    "11": GatewayInfo(False, True, 1071, False, True, 2),
    # 20/21 are in the type lists but not in this document's overview table: assumed like 1/2.
    "20": GatewayInfo(True, True, 1071, False, True, 0),
    "21": GatewayInfo(False, True, 1071, False, False, 0),
}

#: autoXorY → (German gateway, worldwide gateway).
AUTO_TYPES: Final[Mapping[str, tuple[str, str]]] = {
    "auto1or2": ("1", "2"),
    "auto3or4": ("3", "4"),
    "auto10or11": ("10", "11"),
    "auto20or21": ("20", "21"),
}

#: Flash SMS are limited to one SMS: 160 GSM characters (the document), 70 UCS2 (one part).
FLASH_MAX_GSM: Final = 160
FLASH_MAX_UCS2: Final = 70


def effective_gateway(gateway: str, destination: str) -> str:
    """The fixed gateway a message goes through: the setting, or for an auto type the one the
    provider picks (German mobile numbers, ``49…``, on the German gateway)."""
    pair = AUTO_TYPES.get(gateway)
    if pair is None:
        return gateway
    return pair[0] if destination.startswith("49") else pair[1]


def _possible_gateways(gateway: str) -> list[GatewayInfo]:
    pair = AUTO_TYPES.get(gateway)
    return [GATEWAYS[g] for g in (pair or (gateway,))]


# --------------------------------------------------------------------------- settings


def _gateway_value(value: Any) -> Any:
    """``gateway = 10`` and ``gateway = "10"`` both work (TOML users write either)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


GatewaySetting = Annotated[Gateway, BeforeValidator(_gateway_value)]


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "smsflatrate"``.

    ``key`` is the "Schnittstellen-Key" from the customer center. ``gateway`` is the ``type=``
    used for every message, ``account_gateways`` overrides it per SMPP account (system_id).
    ``push_reports``: the account's push URL points at this bridge (see docs/providers/
    smsflatrate.md); false → reports are polled from ``status_url`` (default: ``status.php``
    next to ``base_url``).
    """

    type: Literal["smsflatrate"]
    base_url: str = "https://www.smsflatrate.net/schnittstelle.php"
    status_url: str | None = None
    key: Secret
    gateway: GatewaySetting = "auto1or2"
    account_gateways: dict[str, GatewaySetting] = Field(default_factory=dict)
    push_reports: bool = True
    native_scheduling: bool = True
    timezone: TimeZoneName = "Europe/Berlin"
    unsupported_flash: Literal["send_normal", "refuse"] = "send_normal"
    reply: Literal[0, 1, 2] = 0
    reply_number: str = DOCUMENTED_REPLY_NUMBER
    inbound_number: str = DOCUMENTED_REPLY_NUMBER
    requests_per_second: NonNegFloat = 10.0  # "max. 10 request per second"
    concurrency: Annotated[int, Field(ge=1)] = 10
    # bulk=1 for messages queued together with the same text and sender (up to 50 numbers a
    # request): "off"; "unreported": only messages that get no status report anyway; "all".
    bulk: Literal["off", "unreported", "all"] = "off"


    @field_validator("reply_number", "inbound_number")
    @classmethod
    def _digits(cls, value: str) -> str:
        digits = international_digits(value)
        if digits is None:
            raise ValueError("must be an international number (+49…, 0049… or 49…)")
        return digits

    def gateway_for(self, account: str) -> str:
        return self.account_gateways.get(account, self.gateway)

    def all_gateways(self) -> list[str]:
        return [self.gateway, *self.account_gateways.values()]


def capabilities_for(settings: Settings) -> Capabilities:
    """The limits every configured gateway (default and per-account) can meet."""
    infos = [info for g in settings.all_gateways() for info in _possible_gateways(g)]
    flash = settings.unsupported_flash == "send_normal" or any(i.flash for i in infos)
    return Capabilities(
        max_gsm7_chars=min(i.max_chars for i in infos),
        max_ucs2_chars=min(i.max_ucs2_chars for i in infos),
        unicode=True,
        binary=False,
        flash=flash,
        scheduling=settings.native_scheduling,
        # 3/4 send without sender; an alphanumeric one is simply not shown there.
        alphanumeric_sender=True,
        max_sender_chars=11,
        reports="push" if settings.push_reports else "poll",
        requests_per_second=settings.requests_per_second,
        concurrency=settings.concurrency,
        max_batch=1 if settings.bulk == "off" else MAX_BULK,
    )


# -------------------------------------------- numbers, senders, bulk (the settings check them too)

ALNUM_SENDER = re.compile(r"[A-Za-z0-9]{1,11}")


def international_digits(number: str) -> str | None:
    """``+49…``/``0049…``/``49…`` → ``49…`` (None when it is not a number)."""
    value = number.strip()
    if value.startswith("+"):
        value = value[1:]
    elif value.startswith("00"):
        value = value[2:]
    return value if value.isdigit() and 6 <= len(value) <= 15 else None


#: "Maximale Anzahl der Handynummern: 50" per bulk request.
MAX_BULK: Final = 50

