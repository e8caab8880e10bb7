"""iSMS.gr HTTP: the ``[providers.NAME] type = "isms_http"`` table and what the API can carry.

Its own module because the config reads it without the adapter.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator

from bridge.core.provider import Capabilities
from bridge.providers.settings import HttpProviderSettings, Secret, resolve_env

__all__ = ["CAPABILITIES", "DEFAULT_BASE_URL", "MAX_NUMERIC_SENDER", "Settings"]


#: The directory the three scripts live in (``send.php``, ``query.php``, ``credits.php``).
DEFAULT_BASE_URL = "http://cp.isms.gr/api/http/"

#: What the document promises: text, UTF-8 (all languages), flash, long (concatenated) SMS,
#: sender identity, reports. It names no length limit and no request rate for HTTP (700/s is
#: the SMPP account's figure), so the bridge's defaults stand: 10 parts (1530 GSM septets,
#: 670 UCS2 units), unlimited rate, 16 requests in flight. Senders: 11 characters is the GSM
#: limit for an alphanumeric originator.
CAPABILITIES = Capabilities(
    max_gsm7_chars=1530,
    max_ucs2_chars=670,
    unicode=True,
    binary=False,
    flash=True,
    scheduling=True,
    alphanumeric_sender=True,
    max_sender_chars=11,
    reports="push",
)

#: Longest numeric sender (an E.164 number is at most 15 digits; iSMS's limit is not stated).
MAX_NUMERIC_SENDER = 16

# --------------------------------------------------------------------------- settings


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "isms_http"``.

    ``base_url`` is the directory of the scripts; a URL of one of them (``…/send.php``) is
    taken as its directory. ``sender`` is used when the ESME sends an empty source address.
    """

    type: Literal["isms_http"]
    base_url: str = DEFAULT_BASE_URL
    username: Annotated[str, BeforeValidator(resolve_env)]  # plain or "env:VAR"
    password: Secret
    sender: str | None = None
    reports: Literal["push", "poll"] = "push"
    native_schedule: bool = True
    # Several numbers per send.php request (to=a,b) for messages queued together with the same
    # text and sender; provider ids become "<mid>/<number>" (see docs/providers/isms_http.md).
    bulk: bool = False
    bulk_max: Annotated[int, Field(ge=2, le=500)] = 50

    @field_validator("base_url")
    @classmethod
    def _directory(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        if value.rsplit("/", 1)[-1].endswith(".php"):
            value = value.rsplit("/", 1)[0]
        return value if value.endswith("/") else value + "/"

    @field_validator("username")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value


