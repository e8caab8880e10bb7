"""My-Cool-SMS: the ``[providers.NAME] type = "mycoolsms"`` table and what the API can carry.

Its own module because the config (through the provider registry) reads the settings without the
adapter, and the limits here (765 GSM / 335 Unicode characters, 11-character senders) are what
the request builders in :mod:`.send` check against.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from bridge.core.provider import Capabilities
from bridge.providers.settings import HttpProviderSettings, Secret, resolve_env

__all__ = [
    "CAPABILITIES",
    "DEFAULT_URL",
    "MAX_GSM_CHARS",
    "MAX_SENDER_CHARS",
    "MAX_UCS2_CHARS",
    "Settings",
    "capabilities_for",
]


DEFAULT_URL = "https://www.my-cool-sms.com/api-socket.php"

#: "bis zu fünf Nachrichten oder 765 Zeichen für GSM bzw. 335 Zeichen für Unicode SMS".
MAX_GSM_CHARS = 765
MAX_UCS2_CHARS = 335
#: "eine alphanumerische Zeichenkette mit bis zu 11 Zeichen".
MAX_SENDER_CHARS = 11

#: What this API can carry. ``reports`` is adjusted per instance by :func:`capabilities_for`.
CAPABILITIES = Capabilities(
    max_gsm7_chars=MAX_GSM_CHARS,
    max_ucs2_chars=MAX_UCS2_CHARS,
    unicode=True,
    binary=False,  # no binary or UDH parameter in the API
    flash=False,  # no flash parameter
    scheduling=True,  # scheduletime
    alphanumeric_sender=True,
    max_sender_chars=MAX_SENDER_CHARS,
    reports="poll",
)


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "mycoolsms"``.

    The document states no request rate limit, so ``requests_per_second`` stays 0 (unlimited)
    and ``concurrency`` at the common 16.
    """

    type: Literal["mycoolsms"]
    base_url: str = DEFAULT_URL
    username: Annotated[str, BeforeValidator(resolve_env), Field(min_length=1)]  # or env:VAR
    password: Secret
    # "json": application/json bodies (the document's main form); "form": urlencoded POST.
    request_format: Literal["json", "form"] = "json"
    # Send callbackurl (the bridge's report URL) with messages whose ESME asked for a receipt.
    push_reports: bool = True
    # Poll getDeliveryReports for messages still without a final report (every
    # [pipeline] poll_interval, doubling). False: pushes only, plus the start-up sweep.
    poll_reports: bool = True
    # Fetch inbound SMS with getIncomingSms every inbound_poll_interval seconds, besides (or
    # instead of) the inbox push. An MO arriving both ways is delivered once.
    poll_inbound: bool = False
    inbound_poll_interval: Annotated[float, Field(ge=1.0, le=3600.0)] = 30.0
    # getIncomingSms virtualnumber: only this virtual number's SMS; unset: all of the account's.
    virtual_number: str | None = None

    @model_validator(mode="after")
    def _some_reports(self) -> Settings:
        if not (self.push_reports or self.poll_reports):
            raise ValueError(
                "push_reports and poll_reports are both false: no message could ever get a "
                "delivery report"
            )
        return self


def capabilities_for(settings: Settings) -> Capabilities:
    """:data:`CAPABILITIES` with the report mode and the limits the settings choose."""
    return dataclasses.replace(
        CAPABILITIES,
        reports="poll" if settings.poll_reports else "push",
        requests_per_second=settings.requests_per_second,
        concurrency=settings.concurrency,
    )

