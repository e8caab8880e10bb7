"""1601SMS: delivery reports, pushed to the bridge's report URL or polled from
``gatewayrapport.php``.

Both carry the same status words (:data:`STATUSES`) and the gateway's local time, read in the
account's time zone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from urllib.parse import urlsplit, urlunsplit

from bridge.core.model import MessageState
from bridge.core.provider import CallbackRequest
from bridge.providers.http import HttpRequest

__all__ = [
    "ERR_NONE",
    "ERR_NOT_DELIVERED",
    "ERR_REJECTED",
    "STATUSES",
    "PushedReport",
    "build_status_request",
    "parse_datum",
    "parse_report_callback",
    "parse_status_reply",
    "report_url_for",
    "status_word",
]


#: Receipt ``err:`` values for report words that carry no code of the provider's (bridge-defined;
#: 1 is the bridge-wide "no route could express it").
ERR_NOT_DELIVERED = 2
ERR_REJECTED = 3
ERR_NONE = 4

#: Report words (push ``status``, poll reply) → (state, receipt err:).
STATUSES: dict[str, tuple[MessageState, int]] = {
    "DELIVERED": (MessageState.DELIVERED, 0),
    "NOT DELIVERED": (MessageState.UNDELIVERABLE, ERR_NOT_DELIVERED),
    "BUFFERED": (MessageState.ENROUTE, 0),  # operator retries: temporary
    "SUBMITTED": (MessageState.ENROUTE, 0),  # at the operator, no status yet
    "REJECTED": (MessageState.REJECTED, ERR_REJECTED),
    "NONE": (MessageState.UNKNOWN, ERR_NONE),  # no report available: nothing more will come
}


# --------------------------------------------------------------------------- reports


def status_word(raw: str) -> tuple[MessageState, int] | None:
    """(state, err) for a report word; case, ``_`` and repeated blanks do not matter
    (``not_delivered``, ``NOT  DELIVERED``). None for a word the page does not list."""
    word = " ".join(raw.replace("_", " ").split()).upper()
    return STATUSES.get(word)


def parse_datum(value: str, tz: tzinfo) -> float:
    """A push's ``datum`` (``yyyymmdduummss``; ``yyyymmdduumm`` also taken) → epoch seconds.
    ValueError when it is not one."""
    value = value.strip()
    if not value.isdigit() or len(value) not in (12, 14):
        raise ValueError("datum is not yyyymmdduummss")
    fmt = "%Y%m%d%H%M%S" if len(value) == 14 else "%Y%m%d%H%M"
    return datetime.strptime(value, fmt).replace(tzinfo=tz).timestamp()


_SMSID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class PushedReport:
    """A parsed delivery-notification call."""

    smsid: str
    state: MessageState
    error_code: int
    done_at: float | None
    reference: str | None


def parse_report_callback(request: CallbackRequest, tz: tzinfo) -> PushedReport:
    """The account's delivery-notification GET: ``smsid``, ``datum``, ``status``,
    ``referentie``. ValueError (a message safe to answer) when ``smsid`` or ``status`` is
    missing or not what the page describes, or ``datum`` is given but malformed."""
    smsid = (request.param("smsid") or "").strip()
    if not _SMSID_RE.fullmatch(smsid):
        raise ValueError("missing or malformed smsid")
    raw_status = request.param("status")
    if raw_status is None:
        raise ValueError("missing status")
    mapped = status_word(raw_status)
    if mapped is None:
        raise ValueError("unknown status")
    datum = request.param("datum")
    done_at = parse_datum(datum, tz) if datum else None
    reference = request.param("referentie") or None
    return PushedReport(smsid, mapped[0], mapped[1], done_at, reference)


def report_url_for(base_url: str) -> str:
    """``gatewayrapport.php`` in the folder of ``gateway.php`` (the doc's two URLs:
    ``.../module/gateway.php`` and ``.../module/gatewayrapport.php``)."""
    parts = urlsplit(base_url)
    folder = parts.path.rsplit("/", 1)[0]
    return urlunsplit((parts.scheme, parts.netloc, f"{folder}/gatewayrapport.php", "", ""))


def build_status_request(report_url: str, smsid: str) -> HttpRequest:
    """``gatewayrapport.php?smsid=1234567&datum=ja`` (the date makes the receipt's done date)."""
    return HttpRequest("GET", report_url, params=[("smsid", smsid), ("datum", "ja")])


_STATUS_REPLY_RE = re.compile(
    r"(?P<word>NOT[ _]DELIVERED|DELIVERED|BUFFERED|SUBMITTED|REJECTED|NONE)"
    r"(?:\s+(?P<date>\d{1,2}/\d{1,2}/\d{4}\s+\d{1,2}:\d{2}:\d{2}))?",
    re.IGNORECASE,
)


def parse_status_reply(body: str, tz: tzinfo) -> tuple[MessageState, int, float | None] | None:
    """(state, err, done_at) from ``DELIVERED 01/02/2012 10:23:10`` (date: dd/mm/yyyy, the
    provider's zone; optional); None for anything else (``ERROR 124``, an empty page)."""
    match = _STATUS_REPLY_RE.fullmatch(" ".join(body.split()))
    if match is None:
        return None
    mapped = status_word(match["word"])
    assert mapped is not None  # the pattern lists only known words
    done_at: float | None = None
    if match["date"]:
        try:
            done_at = (
                datetime.strptime(match["date"], "%d/%m/%Y %H:%M:%S").replace(tzinfo=tz).timestamp()
            )
        except ValueError:
            done_at = None  # an impossible date: the state still counts
    return mapped[0], mapped[1], done_at


