"""My-Cool-SMS: delivery reports, pushed (``pushDeliveryReport``) or polled
(``getDeliveryReports``).

Both carry the same status words; :data:`STATUS_STATES` maps them to states and the receipts'
``err:`` (the API has no numeric delivery error codes, so those are bridge-defined).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bridge.core.model import DeliveryReport, MessageState
from bridge.providers.http import HttpResponse
from bridge.providers.mycoolsms.api import json_object, success_items

__all__ = [
    "ERR_BOUNCED",
    "ERR_ERROR",
    "ERR_EXPIRED",
    "ERR_UNKNOWN_ID",
    "MAX_IDS_PER_POLL",
    "STATUS_STATES",
    "parse_poll_reply",
    "parse_report_push",
    "poll_fields",
    "report_for",
]


#: getDeliveryReports error 241: "The maximum number of delivery reports per request is 100."
MAX_IDS_PER_POLL = 100

# Bridge-defined err: values for the failure words.
ERR_BOUNCED = 301  # SMS_STATUS_BOUNCED
ERR_EXPIRED = 302  # SMS_STATUS_EXPIRED
ERR_ERROR = 303  # SMS_STATUS_ERROR
ERR_UNKNOWN_ID = 223  # the provider's own code for "Unbekannte SMS ID" (status UNKNOWN_ID)

#: Every status word (Status-Referenz and getDeliveryReports) → (state, err).
STATUS_STATES: dict[str, tuple[MessageState, int]] = {
    "SMS_STATUS_QUEUED": (MessageState.ENROUTE, 0),
    "SMS_STATUS_AT_CARRIER": (MessageState.ENROUTE, 0),
    "SMS_STATUS_DELIVERY_DELAYED": (MessageState.ENROUTE, 0),
    "SMS_STATUS_DELIVERED": (MessageState.DELIVERED, 0),
    "SMS_STATUS_BOUNCED": (MessageState.UNDELIVERABLE, ERR_BOUNCED),
    "SMS_STATUS_EXPIRED": (MessageState.EXPIRED, ERR_EXPIRED),
    "SMS_STATUS_ERROR": (MessageState.UNDELIVERABLE, ERR_ERROR),
    "UNKNOWN_ID": (MessageState.UNKNOWN, ERR_UNKNOWN_ID),
}


def poll_fields(ids: Sequence[str], *, username: str, password: str) -> dict[str, Any]:
    """``getDeliveryReports`` for at most :data:`MAX_IDS_PER_POLL` sms ids."""
    if not 0 < len(ids) <= MAX_IDS_PER_POLL:
        raise ValueError(f"getDeliveryReports takes 1 to {MAX_IDS_PER_POLL} ids")
    return {
        "username": username,
        "password": password,
        "function": "getDeliveryReports",
        "ids": list(ids),
    }


def report_for(
    provider: str, smsid: str, status: str, done_at: float | None
) -> DeliveryReport | None:
    """The report a status word means, or None for a word the document does not list."""
    mapped = STATUS_STATES.get(status)
    if mapped is None:
        return None
    state, err = mapped
    return DeliveryReport(provider, smsid, state, err, done_at)


def parse_poll_reply(response: HttpResponse) -> list[tuple[str, str]]:
    """``getDeliveryReports`` → [(smsid, status)]. ValueError (with the code, if any) for an
    error reply or a body that is not the documented one."""
    _, items = success_items(response, "reports")
    out: list[tuple[str, str]] = []
    for item in items:
        if isinstance(item, dict):
            smsid, status = item.get("smsid"), item.get("status")
            if isinstance(smsid, str) and smsid and isinstance(status, str):
                out.append((smsid, status))
    return out


def parse_report_push(body: bytes) -> tuple[str, str]:
    """``pushDeliveryReport`` → (smsid, status word). ValueError when malformed."""
    data = json_object(body)
    smsid, status = data.get("smsid"), data.get("status")
    if not isinstance(smsid, str) or not smsid.strip():
        raise ValueError("no smsid")
    if not isinstance(status, str) or status not in STATUS_STATES:
        raise ValueError("no known status")
    return smsid.strip(), status


