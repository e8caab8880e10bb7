"""iSMS.gr HTTP: delivery reports, polled (``query.php``) or pushed to the ``dlr-url``.

Both carry the same status words (:data:`STATUS_WORDS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bridge.core.model import MessageState
from bridge.core.provider import CallbackRequest
from bridge.providers.http import HttpRequest
from bridge.providers.isms_http.api import error_key, reply_line, script_url

__all__ = [
    "ERR_FAILED",
    "ERR_NO_SUCH_MESSAGE",
    "PUSH_ID_NAMES",
    "PUSH_MOBILE_NAMES",
    "PUSH_STATUS_NAMES",
    "STATUS_WORDS",
    "QueryResult",
    "ReportPush",
    "build_query_request",
    "parse_query_reply",
    "parse_report_push",
    "status_to_state",
]

#: ``query.php``: ``Error: No such message or recipient.`` (the message is finished UNKNOWN).
ERR_NO_SUCH_MESSAGE = 16
#: ``Status: Failed`` (the receipt says UNDELIV).
ERR_FAILED = 20

#: ``query.php``'s ``Status:`` words (and the same words in a ``dlr-url`` push), lower case.
STATUS_WORDS: Mapping[str, tuple[MessageState, int]] = {
    "queued": (MessageState.ENROUTE, 0),
    "pending": (MessageState.ENROUTE, 0),
    "delivered": (MessageState.DELIVERED, 0),
    "failed": (MessageState.UNDELIVERABLE, ERR_FAILED),
}

def status_to_state(word: str) -> tuple[MessageState, int] | None:
    """``Queued``/``Pending`` → ENROUTE (intermediate), ``Delivered`` → DELIVERED,
    ``Failed`` → UNDELIVERABLE with err :data:`ERR_FAILED`; None for any other word."""
    return STATUS_WORDS.get(word.strip().rstrip(".").strip().lower())


def build_query_request(
    *, base_url: str, username: str, password: str, mid: str, mobile: str
) -> HttpRequest:
    """``GET query.php?username&password&mid&mobile``."""
    return HttpRequest(
        "GET",
        script_url(base_url, "query.php"),
        params=[("username", username), ("password", password), ("mid", mid), ("mobile", mobile)],
    )


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What ``query.php`` said: a state (``Status: …``, or the final UNKNOWN for "no such
    message"), or ``error`` (another ``Error:`` text, or an unreadable reply)."""

    state: MessageState | None = None
    error_code: int = 0
    error: str = ""


def parse_query_reply(body: str) -> QueryResult:
    """``Status: Delivered`` → (DELIVERED, 0); ``Error: No such message or recipient.`` →
    (UNKNOWN, :data:`ERR_NO_SUCH_MESSAGE`), since iSMS will never report on it; the other
    documented errors (authentication, missing mid/mobile) and unknown words → ``error``."""
    line = reply_line(body)
    head, sep, rest = line.partition(":")
    if sep and head.strip().lower() == "status":
        mapped = status_to_state(rest)
        if mapped is not None:
            return QueryResult(mapped[0], mapped[1])
        return QueryResult(error=f"unknown status {rest.strip()[:40]!r}")
    key = error_key(line)
    if key == "no such message or recipient":
        return QueryResult(MessageState.UNKNOWN, ERR_NO_SUCH_MESSAGE)
    if key is not None:
        return QueryResult(error=key[:80])
    return QueryResult(error="unexpected reply")


#: them: ``mid``/``mobile``/``status`` are query.php's own; the rest are common spellings.
PUSH_ID_NAMES = ("mid", "id", "message_id", "messageid", "msgid")
PUSH_MOBILE_NAMES = ("mobile", "to", "msisdn", "recipient", "number")
PUSH_STATUS_NAMES = ("status", "state", "dlr", "stat")


@dataclass(frozen=True, slots=True)
class ReportPush:
    """A ``dlr-url`` push, read: the message id, the number if given, and the state if the
    push carried a status word we know (else None: ask ``query.php``)."""

    mid: str
    mobile: str | None
    state: MessageState | None
    error_code: int = 0


def _first(request: CallbackRequest, names: Sequence[str]) -> str | None:
    for name in names:
        value = request.param(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def parse_report_push(request: CallbackRequest) -> ReportPush:
    """Read a push to the ``dlr-url``; ValueError (→ 400) when it names no usable message, or
    has neither a known status nor a number to ask ``query.php`` with."""
    mid = _first(request, PUSH_ID_NAMES)
    if mid is None:
        raise ValueError("no message id (mid)")
    if len(mid) > 64 or not mid.isprintable():
        raise ValueError("malformed message id")
    mobile = _first(request, PUSH_MOBILE_NAMES)
    if mobile is not None and not (mobile.lstrip("+").isdigit() and len(mobile) <= 16):
        mobile = None
    if mobile is not None:
        mobile = mobile.lstrip("+")
    word = _first(request, PUSH_STATUS_NAMES)
    mapped = status_to_state(word) if word is not None else None
    if mapped is None:
        if mobile is None:
            raise ValueError("no known status and no mobile to query")
        return ReportPush(mid, mobile, None)
    return ReportPush(mid, mobile, mapped[0], mapped[1])


