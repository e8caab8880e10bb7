"""My-Cool-SMS simulator: the document's wire format — its error table, reply envelopes,
parameter readers and text measures.

Apart from :mod:`bridge.simulators.mycoolsms` (what the simulated account does) so that module
stays the account's behaviour; written from the API document, not shared with the adapter
(:mod:`bridge.providers.mycoolsms`), so the simulator checks the adapter rather than repeating it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import phonenumbers
from starlette.requests import Request
from starlette.responses import JSONResponse

from bridge.smpp.text import gsm7_encode

__all__ = [
    "ERRORS",
    "HEX_RE",
    "MAX_GSM",
    "MAX_IDS",
    "MAX_UCS2",
    "SENDER_TEXT",
    "SEND_CODES",
    "URL_RE",
    "ApiError",
    "collect",
    "error_reply",
    "gsm_length",
    "looks_ucs2",
    "now_atom",
    "ok",
    "param_bool",
    "param_int",
    "param_text",
    "parse_schedule",
    "phone_digits",
    "read_call",
    "region_of",
    "sms_parts",
    "ucs2",
]

#: The document's general error descriptions (and sendSms's own), as the replies carry them.
ERRORS: dict[int, str] = {
    101: "Login fehlgeschlagen. Falscher Benutzername oder Passwort.",
    102: "Dieser Account wurde noch nicht freigeschaltet.",
    103: "Ein erforderlicher Parameter fehlt",
    104: "Ungültiger Aufruf. Keine GET, POST oder gültige JSON Eingabe gefunden.",
    105: "Unbekannte Funktion",
    106: "Zugriff verweigert",
    107: "Allgemeiner API Fehler",
    108: "Ungültige Aufrufs-Struktur",
    109: "Guthaben reicht nicht aus",
    210: "Die Rufnummer scheint ungültig zu sein",
    211: "Der message Parameter enthält keinen Text",
    212: "Der message Parameter ist zu lang",
    213: "Der unicode Parameter ist true aber der message parameter wurde nicht in "
    "UCS2-Notation übergeben",
    214: "Der unicode Parameter ist false aber die Nachricht wurde in UCS2-Notation übergeben",
    215: "Der unicode Parameter ist false aber die Nachricht enthält Zeichen ausserhalb des "
    "GSM7 Alphabets",
    216: "The input for Sender ID is invalid.",
    217: "Kurzcode Senderkennungen sind nicht erlaubt",
    218: "Die Rückruf-URL scheint ungültig zu sein",
    219: "Die übergebene Sendezeit scheint ungültig zu sein.",
    223: "Unbekannte SMS ID",
    224: "Unbekannter Gruppenschlüssel",
    232: "Die Rufnummer scheint ungültig zu sein",
    233: "The virtual number is either invalid or not registered with this user account.",
    234: "The provided thresholdid is invalid",
    235: "Ungültiger limit Parameter",
    236: "Invalid order parameter",
    240: 'The input for the "ids" parameter seems invalid.',
    241: "The maximum number of delivery reports per request is 100.",
}
SEND_CODES = frozenset(c for c in ERRORS if c < 220)

MAX_GSM = 765
MAX_UCS2 = 335
MAX_IDS = 100

SENDER_TEXT = re.compile(r"[A-Za-z0-9-]{1,11}")
URL_RE = re.compile(r"https?://[^\s/?#]+\S*")
HEX_RE = re.compile(r"(?:[0-9A-Fa-f]{4})+")


class ApiError(Exception):
    def __init__(self, code: int, extra: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.extra = extra


def phone_digits(number: str) -> str | None:
    """``+49…``, ``0049…`` or ``49…`` → the digits, or None when not a phone number."""
    value = re.sub(r"[\s()/-]", "", number)
    if value.startswith("+"):
        value = value[1:]
    elif value.startswith("00"):
        value = value[2:]
    return value if value.isdigit() and 7 <= len(value) <= 15 else None


def region_of(digits: str) -> tuple[str | None, str]:
    """(ISO country code or None, "+<country calling code>") of an E.164 number."""
    try:
        parsed = phonenumbers.parse("+" + digits)
    except phonenumbers.NumberParseException:
        return None, ""
    region = phonenumbers.region_code_for_number(parsed)
    return (region if region and region != "ZZ" else None), f"+{parsed.country_code}"


def ucs2(text: str) -> str:
    return text.encode("utf-16-be", errors="surrogatepass").hex().upper()


def looks_ucs2(message: str) -> bool:
    if not HEX_RE.fullmatch(message):
        return False
    return any(message[i : i + 2] == "00" for i in range(0, len(message), 4))


def gsm_length(text: str) -> tuple[int, int]:
    """(septets, characters escaped) of GSM text."""
    septets = len(gsm7_encode(text))
    return septets, septets - len(text)


def sms_parts(units: int, unicode: bool) -> int:
    single, multi = (70, 67) if unicode else (160, 153)
    return 1 if units <= single else math.ceil(units / multi)


def param_bool(value: Any) -> bool | None:
    """A JSON boolean or a form's true/false/1/0; None when absent; ValueError otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str) and str(value).lower() in ("true", "1", "false", "0"):
        return str(value).lower() in ("true", "1")
    raise ValueError(value)


def param_text(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def now_atom() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


async def read_call(request: Request) -> tuple[str, dict[str, Any]]:
    """(format, parameters) of a call; ApiError 104 when there is none."""
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    if request.method == "POST" and body:
        if "json" in content_type or body.lstrip().startswith(b"{"):
            try:
                data = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise ApiError(104) from None
            if not isinstance(data, dict):
                raise ApiError(104)
            return "json", data
        pairs = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        return "form", collect(pairs)
    if request.query_params:
        return "query", collect(list(request.query_params.multi_items()))
    raise ApiError(104)


def collect(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Form/query pairs → parameters; a PHP-style ``name[]`` collects a list."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key.endswith("[]"):
            out.setdefault(key[:-2], []).append(value)
        else:
            out.setdefault(key, value)
    return out


def param_int(value: Any, default: int, code: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ApiError(code)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isdigit():
        number = int(value)
    else:
        raise ApiError(code)
    if number < 0:
        raise ApiError(code)
    return number


def parse_schedule(value: str | None) -> float | None:
    """``scheduletime`` ("2011-04-17T17:59:36.67+08", "2011-04-17 17:59:36-02") → epoch."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(219) from None
    if when.tzinfo is None:
        raise ApiError(219)
    return when.timestamp()


def ok(**values: Any) -> JSONResponse:
    return JSONResponse({"success": True, **values})


def error_reply(code: int, extra: str = "") -> JSONResponse:
    description = ERRORS.get(code, "Allgemeiner API Fehler")
    if extra:
        description = f"{description}: {extra}"
    return JSONResponse({"success": False, "errorcode": code, "errordescription": description})

