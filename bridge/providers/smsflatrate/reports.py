"""smsflatrate.net: delivery reports, polled (``status.php``) or pushed to the Push-URL.

Both carry the same status codes (:data:`REPORT_CODES`); the push arrives with the placeholders
the account's Push-URL names filled in (:data:`PUSH_QUERY`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from bridge.core.model import DeliveryReport, MessageState
from bridge.core.provider import CallbackRequest
from bridge.providers.http import HttpRequest
from bridge.providers.smsflatrate.send import CODE_RE
from bridge.providers.smsflatrate.settings import Settings

__all__ = [
    "PUSH_QUERY",
    "REPORT_CODES",
    "BadPush",
    "build_status_request",
    "parse_push",
    "parse_status_reply",
    "push_url",
    "report_state",
    "status_url_for",
]


# --------------------------------------------------------------------------- reports


#: Report codes (push ``[status]`` and ``status.php``) → (state, err).
REPORT_CODES: Final[Mapping[int, tuple[MessageState, int]]] = {
    101: (MessageState.DELIVERED, 0),
    102: (MessageState.ENROUTE, 102),  # not delivered yet (phone off …)
    103: (MessageState.UNDELIVERABLE, 103),  # wrong number, SIM not active
    104: (MessageState.EXPIRED, 104),  # still not delivered after 48 hours
    109: (MessageState.UNKNOWN, 109),  # id expired (> 14 days) or invalid
}


def report_state(code: int) -> tuple[MessageState, int] | None:
    """(state, err) for a report code, None for one the document does not list."""
    return REPORT_CODES.get(code)


def status_url_for(settings: Settings) -> str:
    """``status.php`` next to ``schnittstelle.php`` unless ``status_url`` says otherwise."""
    if settings.status_url:
        return settings.status_url
    base = settings.base_url.split("?", 1)[0]
    head, sep, _last = base.rpartition("/")
    return f"{head}/status.php" if sep else "status.php"


def build_status_request(status_url: str, provider_id: str) -> HttpRequest:
    """``status.php?id=<SMS id>`` (the document's "manuelle Status-Abfrage"; no key)."""
    return HttpRequest("GET", status_url, params=[("id", provider_id)])


def parse_status_reply(
    provider: str, provider_id: str, body: str, received: float
) -> DeliveryReport | None:
    """``101,1234567890[,uid=…]`` → a report (None for an unreadable or unknown code).

    The Unix time after the code is when the handset received it; missing, we use ``received``.
    """
    fields = [f.strip() for f in body.strip().lstrip("\ufeff").split(",")]
    if not CODE_RE.fullmatch(fields[0]):
        return None
    mapped = report_state(int(fields[0]))
    if mapped is None:
        return None
    done_at = received
    if len(fields) > 1 and fields[1].isdigit() and int(fields[1]) > 0:
        done_at = float(fields[1])
    state, err = mapped
    return DeliveryReport(provider, provider_id, state, err, done_at)


#: The query the account's push URL needs after the bridge's report callback URL.
PUSH_QUERY: Final = "id=[message_id]&status=[status]&time=[time]&uid=[uid]"


def push_url(callback_url: str) -> str:
    """What to enter as "Push-URL" in the smsflatrate customer center."""
    sep = "&" if "?" in callback_url else "?"
    return f"{callback_url}{sep}{PUSH_QUERY}"


class BadPush(ValueError):
    """A push we cannot use (4xx, nothing changed)."""


def parse_push(provider: str, request: CallbackRequest, received: float) -> DeliveryReport:
    """A status push (``id``, ``status``, ``time``, ``uid``) → report; raises :class:`BadPush`.

    The SMS id is the 15-digit one the send returned; ``status`` one of the report codes;
    ``time`` (Unix) may be empty when the provider has no reception time yet.
    """
    provider_id = (request.param("id") or "").strip()
    status = (request.param("status") or "").strip()
    if not provider_id.isdigit():
        raise BadPush("id missing or not an SMS id")
    if not CODE_RE.fullmatch(status):
        raise BadPush("status missing or not a return value")
    mapped = report_state(int(status))
    if mapped is None:
        raise BadPush(f"unknown status {status}")
    time_value = (request.param("time") or "").strip()
    done_at = received
    if time_value:
        if not time_value.isdigit():
            raise BadPush("time is not a Unix time")
        if int(time_value) > 0:
            done_at = float(time_value)
    state, err = mapped
    return DeliveryReport(provider, provider_id, state, err, done_at)


