"""My-Cool-SMS: the envelope every ``function`` shares, both ways.

Every call is one POST to the one endpoint (a JSON object or an urlencoded form) and every
answer a JSON object with ``success``, and on failure ``errorcode``/``errordescription``; the
pushes are JSON objects in the raw body; texts may come in the document's "UCS2 notation". The
send, report and inbound modules read and write those through this one module instead of each
keeping its own copy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from bridge.providers.http import HttpRequest, HttpResponse

__all__ = [
    "TON_ALPHANUMERIC",
    "describe",
    "encode_request",
    "from_ucs2_hex",
    "json_number",
    "json_object",
    "reply_error_code",
    "reply_object",
    "success_items",
    "to_ucs2_hex",
]


#: type of number of an alphanumeric address (SMPP TON 5).
TON_ALPHANUMERIC = 5
_HEX = frozenset("0123456789abcdefABCDEF")


def to_ucs2_hex(text: str) -> str:
    """The document's "UCS2 notation": UTF-16BE code units as upper-case hex, four digits
    each. Characters beyond the BMP become surrogate pairs (two units, as the router counts)."""
    return text.encode("utf-16-be", errors="surrogatepass").hex().upper()


def from_ucs2_hex(value: str) -> str:
    """Inverse of :func:`to_ucs2_hex` (either case). ValueError for anything else."""
    if len(value) % 4 or not set(value) <= _HEX:
        raise ValueError("not UCS2 notation (hex, four digits per character)")
    return bytes.fromhex(value).decode("utf-16-be", errors="strict")


def encode_request(
    url: str, fields: Mapping[str, Any], fmt: Literal["json", "form"]
) -> HttpRequest:
    """A POST with ``fields`` as a JSON object or an urlencoded UTF-8 form (booleans as
    ``true``/``false``, as the document writes them). Arrays exist only in JSON."""
    if fmt == "json":
        return HttpRequest("POST", url, json=dict(fields))
    pairs: list[tuple[str, str]] = []
    for key, value in fields.items():
        if isinstance(value, bool):
            pairs.append((key, "true" if value else "false"))
        elif isinstance(value, str | int | float):
            pairs.append((key, str(value)))
        else:
            raise ValueError(f"{key}: only JSON requests carry arrays")
    return HttpRequest("POST", url, form=pairs, charset="utf-8")


def reply_object(response: HttpResponse) -> dict[str, Any] | None:
    """The reply's JSON object, or None when the body is not one."""
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def reply_error_code(reply: Mapping[str, Any]) -> int | None:
    """``errorcode`` as an int: the document types it string(3) but its example is a number."""
    code = reply.get("errorcode")
    if isinstance(code, bool):
        return None
    if isinstance(code, int):
        return code if 0 <= code <= 999 else None
    if isinstance(code, str) and code.strip().isdigit():
        value = int(code.strip())
        return value if value <= 999 else None
    return None


def json_number(value: Any) -> float | None:
    """A JSON number or numeric string (``"cost":"0.010"`` in the document) as float."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def describe(reply: Mapping[str, Any]) -> str:
    description = reply.get("errordescription")
    return str(description)[:120] if isinstance(description, str) and description else ""


def success_items(response: HttpResponse, key: str) -> tuple[dict[str, Any], list[Any]]:
    """The reply object and its ``key`` array for a listing call (``getDeliveryReports``,
    ``getIncomingSms``). ValueError (with the error code, if any) for an error reply or a body
    that is not the documented one."""
    reply = reply_object(response)
    if reply is None or not isinstance(reply.get("success"), bool):
        raise ValueError(f"HTTP {response.status}: not a My-Cool-SMS reply")
    if not reply["success"]:
        raise ValueError(f"error {reply_error_code(reply)}: {describe(reply)}".rstrip(": "))
    items = reply.get(key)
    if not isinstance(items, list):
        raise ValueError(f"no {key} array in the reply")
    return reply, items


def json_object(body: bytes) -> dict[str, Any]:
    """A push's raw body as a JSON object ("immer als JSON Objekt in der HTTP Raw-Data")."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the body is not JSON") from None
    if not isinstance(data, dict):
        raise ValueError("the body is not a JSON object")
    return data

