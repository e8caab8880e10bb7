"""1601SMS: the ``[providers.NAME] type = "sms1601"`` table, the account every request carries,
and the limits of the API.

Its own module because the config reads it without the adapter, and because :class:`Account`
(where, who, charset, time zone) is what every request builder in :mod:`.send` and
:mod:`.reports` takes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import BeforeValidator, Field, SecretStr

from bridge.core.provider import Capabilities
from bridge.providers.settings import HttpProviderSettings, Secret, TimeZoneName, resolve_env

__all__ = [
    "CAPABILITIES",
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEZONE",
    "LONG_MAX_SEPTETS",
    "LONG_PART_SEPTETS",
    "MAX_NAME_CHARS",
    "MAX_NUMBER_DIGITS",
    "MAX_REFERENCE_CHARS",
    "SINGLE_MAX_SEPTETS",
    "Account",
    "Settings",
    "credentials",
    "password_param",
]


DEFAULT_BASE_URL = "http://217.19.227.48/module/gateway.php"
DEFAULT_TIMEZONE = "Europe/Amsterdam"

#: One SMS; above it ``type=long`` (error 105 otherwise).
SINGLE_MAX_SEPTETS = 160
#: "you can only use 153 characters per text message when using long SMS".
LONG_PART_SEPTETS = 153
#: "a max. of 459 characters (seperated to a maximum of 3 messages)" (error 118).
LONG_MAX_SEPTETS = 3 * LONG_PART_SEPTETS
#: Error 111: "This can be up to 12 characters."
MAX_NAME_CHARS = 12
#: E.164: a sender number has at most 15 digits after the ``+``.
MAX_NUMBER_DIGITS = 15
#: ``referentie``: "with a max of 75 characters".
MAX_REFERENCE_CHARS = 75

CAPABILITIES = Capabilities(
    max_gsm7_chars=LONG_MAX_SEPTETS,
    max_ucs2_chars=0,  # no Unicode in the API
    unicode=False,
    binary=False,
    flash=False,
    scheduling=True,  # datum=yyyymmddhhii (create() follows native_scheduling)
    alphanumeric_sender=True,
    max_sender_chars=MAX_NAME_CHARS,
    reports="push",  # create() follows the reports setting
)


# --------------------------------------------------------------------------- the account


@dataclass(frozen=True, slots=True)
class Account:
    """What every request needs beside the message: where, who, and the account's options.

    ``password`` is the configured password; :func:`password_param` makes the ``klantpwd``
    value from it (SHA-1 hex when ``password_sha1``).
    """

    url: str
    username: str
    password: SecretStr
    password_sha1: bool = False
    charset: str = "utf-8"
    test: bool = False
    logging: bool | None = None
    native_scheduling: bool = True
    timezone: tzinfo = field(default_factory=lambda: ZoneInfo(DEFAULT_TIMEZONE))


def password_param(password: str, sha1: bool) -> str:
    """``klantpwd``: the password, or its lower-case hex SHA-1 digest ("you can encode this
    password with SHA-1 for extra security")."""
    if sha1:
        return hashlib.sha1(password.encode("utf-8")).hexdigest()
    return password


def credentials(account: Account) -> list[tuple[str, str]]:
    return [
        ("klantuser", account.username),
        ("klantpwd", password_param(account.password.get_secret_value(), account.password_sha1)),
    ]


# --------------------------------------------------------------------------- settings


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "sms1601"`` (every key in config/examples/sms1601.toml).

    The page states no rate or concurrency limit, so the bridge-wide defaults apply.
    """

    type: Literal["sms1601"]
    base_url: str = DEFAULT_BASE_URL
    #: Status polling endpoint; default: ``gatewayrapport.php`` next to ``base_url``.
    report_url: str | None = None
    #: ``klantuser`` (plain, or ``"env:VAR"`` like the password).
    username: Annotated[str, BeforeValidator(resolve_env), Field(min_length=1)]
    password: Secret
    #: Send SHA-1(password) as ``klantpwd`` instead of the password.
    password_sha1: bool = False
    #: ``test=ja``: the gateway checks everything but sends nothing and charges nothing.
    test: bool = False
    #: "push": the account's delivery notification URL is set to this bridge (polled once at
    #: start-up only); "poll": ``gatewayrapport.php`` every ``[pipeline] poll_interval``.
    reports: Literal["push", "poll"] = "push"
    #: ``datum=`` for scheduled messages; false: the bridge holds them until due.
    native_scheduling: bool = True
    #: The zone of ``datum`` values, sent and received.
    timezone: TimeZoneName = DEFAULT_TIMEZONE
    #: Percent-encoding of the parameters (the page does not say).
    charset: Literal["utf-8", "iso-8859-1"] = "utf-8"
    #: ``logging=ja|nee`` (keep sendings in the web module's history); unset: the account default.
    logging: bool | None = None
    #: Several numbers per request (``naar=a,b``) for messages queued together with the same
    #: text and sender: "off"; "unreported": only messages whose ESME asked for no receipt;
    #: "all": also those (their receipt is then ACCEPTD: no report names its number).
    bulk: Literal["off", "unreported", "all"] = "off"
    #: Numbers per bulk request (the page states no limit; a GET URL should stay short).
    bulk_max: Annotated[int, Field(ge=2, le=500)] = 50

    def account(self) -> Account:
        return Account(
            url=self.base_url,
            username=self.username,
            password=self.password,
            password_sha1=self.password_sha1,
            charset=self.charset,
            test=self.test,
            logging=self.logging,
            native_scheduling=self.native_scheduling,
            timezone=ZoneInfo(self.timezone),
        )


