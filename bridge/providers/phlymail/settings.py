"""phlyMail: the ``[providers.NAME] type = "phlymail"`` table, the account every request carries,
and the limits of the API.

Its own module because the config reads it without the adapter, and because :class:`Account`
(where, who, which password form, GET or POST) is what every request builder in :mod:`.send`
takes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator

from bridge.core.provider import Capabilities
from bridge.providers.settings import HttpProviderSettings, Secret, resolve_env

__all__ = [
    "CAPABILITIES",
    "CODE_OK",
    "DEFAULT_BASE_URL",
    "ID_PREFIX",
    "LATIN1",
    "MAX_NUMBER_DIGITS",
    "MAX_PARTS",
    "MAX_SENDER_NAME_CHARS",
    "MAX_SMS_SEPTETS",
    "MAX_UTF_UNITS",
    "PART_SEPTETS",
    "PART_UTF_UNITS",
    "SINGLE_SMS_SEPTETS",
    "SINGLE_UTF_UNITS",
    "UTF8",
    "Account",
    "Settings",
    "credentials",
    "md5_password",
]


DEFAULT_BASE_URL = "https://msggw.phlymail.de/http.php"
#: "Das character encoding der Schnittstelle ist ISO-8859-1."
LATIN1 = "iso-8859-1"
#: Charset of ``mode=utf`` requests (the page: "Details auf Anfrage"; see the module docstring).
UTF8 = "utf-8"

#: One SMS; "Nachrichten über 160 Zeichen Länge werden automatisch in Einzel-SMS aufgeteilt".
SINGLE_SMS_SEPTETS = 160
PART_SEPTETS = 153
#: "Standardbedingt beträgt die maximale Länge einer Nachricht 918 Zeichen (6 x 153 Zeichen)."
MAX_PARTS = 6
MAX_SMS_SEPTETS = MAX_PARTS * PART_SEPTETS
#: Unicode: not on the page; derived as the same six parts of 67 UCS2 characters (70 alone).
SINGLE_UTF_UNITS = 70
PART_UTF_UNITS = 67
MAX_UTF_UNITS = MAX_PARTS * PART_UTF_UNITS
#: ``from``: "alphanumerische Zeichenkette ... mit maximal 11 Zeichen Länge".
MAX_SENDER_NAME_CHARS = 11
#: E.164 numbers have at most 15 digits.
MAX_NUMBER_DIGITS = 15

#: The gateway gives no message id: taken messages are recorded as ``phly-<our id>``.
ID_PREFIX = "phly-"

CODE_OK = 100

CAPABILITIES = Capabilities(
    max_gsm7_chars=MAX_SMS_SEPTETS,
    max_ucs2_chars=MAX_UTF_UNITS,
    unicode=True,  # mode=utf (create() follows the unicode setting)
    binary=False,  # mode=udh: "Details auf Anfrage", no parameters documented
    flash=False,
    scheduling=False,  # no such parameter: the bridge holds scheduled messages
    alphanumeric_sender=True,
    max_sender_chars=MAX_SENDER_NAME_CHARS,
    reports="none",  # the API has no delivery reports at all
)


@dataclass(frozen=True, slots=True)
class Account:
    """What every request needs beside the message (the password stays a SecretStr until a
    request is built)."""

    url: str
    user: str
    password: SecretStr
    password_field: Literal["encpass", "pass"] = "encpass"
    method: Literal["GET", "POST"] = "POST"
    unicode: bool = True


def md5_password(password: str) -> str:
    """``encpass``: lower-case hex MD5 of the password's ISO-8859-1 bytes (UTF-8 bytes for a
    password ISO-8859-1 cannot hold)."""
    try:
        raw = password.encode(LATIN1)
    except UnicodeEncodeError:
        raw = password.encode(UTF8)
    return hashlib.md5(raw, usedforsecurity=False).hexdigest()


def credentials(account: Account) -> list[tuple[str, str]]:
    password = account.password.get_secret_value()
    if account.password_field == "encpass":
        return [("user", account.user), ("encpass", md5_password(password))]
    return [("user", account.user), ("pass", password)]


# --------------------------------------------------------------------------- settings


def _latin1_user(value: str) -> str:
    try:
        value.encode(LATIN1)
    except UnicodeEncodeError:
        raise ValueError("must be ISO-8859-1 text (the gateway's charset)") from None
    return value


class Settings(HttpProviderSettings):
    """``[providers.NAME] type = "phlymail"`` (every key in config/examples/phlymail.toml).

    The page states no rate or concurrency limit, so the bridge-wide defaults apply.
    """

    type: Literal["phlymail"]
    base_url: str = DEFAULT_BASE_URL
    #: ``user`` (plain, or ``"env:VAR"`` like the password).
    username: Annotated[str, BeforeValidator(resolve_env), Field(min_length=1)]
    password: Secret
    #: ``encpass`` (MD5 of the password, the page's advice) or ``pass`` (plain text).
    password_field: Literal["encpass", "pass"] = "encpass"
    #: The page allows both; POST keeps the credentials and the text out of URLs.
    method: Literal["GET", "POST"] = "POST"
    #: ``mode=utf`` for text outside ISO-8859-1; false: such text is refused (fails over).
    unicode: bool = True
    #: ``synchro``: the balance call (login check + balance gauge); ``test``: the connection test.
    health: Literal["synchro", "test"] = "synchro"

    @field_validator("username")
    @classmethod
    def _username_latin1(cls, value: str) -> str:
        return _latin1_user(value)

    def account(self) -> Account:
        return Account(
            url=self.base_url,
            user=self.username,
            password=self.password,
            password_field=self.password_field,
            method=self.method,
            unicode=self.unicode,
        )


