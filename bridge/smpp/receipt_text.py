"""The receipt text of SMPP 3.4 Appendix B — ``id:… sub:… dlvrd:… submit date:… done date:…
stat:… err:… text:…`` — written for our ESMEs and read from upstream SMSCs, in every variant
they send (any field order, 10- or 12-digit dates, ids in hex or decimal).

It lives in ``smpp`` because it is part of the protocol as SMSCs speak it; which receipts an
ESME asked for is the domain's rule (:func:`bridge.core.receipts.receipts_for`).
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime

from bridge.core.model import MessageState, Receipt
from bridge.core.receipts import TEXT_HEAD_LENGTH

__all__ = [
    "ERR_MAX",
    "ParsedReceipt",
    "format_receipt_text",
    "parse_receipt_text",
    "receipt_id_variants",
    "stat_to_state",
]

ERR_MAX = 999
"""Largest ``err:`` value we write. The field is 3 characters by convention and strict ESME
parsers read exactly three digits, so larger codes are clamped to 999 ("see the
network_error_code TLV / our logs") rather than widening the field."""


# --------------------------------------------------------------------------- receipt text

# Characters whose code is the same in ASCII/IA5 and in the GSM 03.38 default alphabet (unpacked):
# the receipt is sent with data_coding 0, which ESMEs read as either, so only these survive as
# themselves. '@', '$', '_' and the GSM extension characters differ between the two and are
# replaced, as is everything outside ASCII.
_SAFE_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 !\"#%&'()*+,-./:;<=>?"
)
_REPLACEMENT = "?"


def _safe_char(ch: str) -> str:
    if ch in _SAFE_CHARS:
        return ch
    if ch.isspace():  # a newline inside a receipt breaks line-oriented parsers and logs
        return " "
    base = unicodedata.normalize("NFKD", ch)[:1]  # é -> e, Å -> A: keeps the head readable
    return base if base in _SAFE_CHARS else _REPLACEMENT


def _safe_text(text: str) -> str:
    """One output character per input character, so the head stays exactly 20 long."""
    return "".join(_safe_char(ch) for ch in text[:TEXT_HEAD_LENGTH])


def _receipt_date(t: float) -> str:
    """YYMMDDhhmm in UTC (Appendix B gives no zone; UTC is the only unambiguous choice)."""
    return time.strftime("%y%m%d%H%M", time.gmtime(t))


def format_receipt_text(r: Receipt) -> str:
    """The Appendix B receipt text for ``r``.

    ``sub`` is always 001: each receipt concerns one submit_sm (one part id). ``dlvrd`` is 001
    only for DELIVERED. ``err`` is 3 digits, clamped to 0–999 (see :data:`ERR_MAX`). The text head
    is made ASCII/GSM-safe character by character (accents dropped, anything else → ``?``).
    """
    dlvrd = "001" if r.state is MessageState.DELIVERED else "000"
    err = min(max(r.error_code, 0), ERR_MAX)
    return (
        f"id:{r.message_id} sub:001 dlvrd:{dlvrd}"
        f" submit date:{_receipt_date(r.submitted_at)} done date:{_receipt_date(r.done_at)}"
        f" stat:{r.state.stat_word} err:{err:03d} text:{_safe_text(r.text_head)}"
    )


_STAT_MAP: dict[str, MessageState] = {
    # SMPP 3.4 words (§6) and their long forms
    "ENROUTE": MessageState.ENROUTE,
    "DELIVRD": MessageState.DELIVERED,
    "DELIVERED": MessageState.DELIVERED,
    "EXPIRED": MessageState.EXPIRED,
    "DELETED": MessageState.DELETED,
    "UNDELIV": MessageState.UNDELIVERABLE,
    "UNDELIVERABLE": MessageState.UNDELIVERABLE,
    "ACCEPTD": MessageState.ACCEPTED,
    "ACCEPTED": MessageState.ACCEPTED,
    "UNKNOWN": MessageState.UNKNOWN,
    "REJECTD": MessageState.REJECTED,
    "REJECTED": MessageState.REJECTED,
    # vendor words: Kannel treats ACKED/BUFFRED as intermediate, so do we
    "ACKED": MessageState.ENROUTE,
    "BUFFRED": MessageState.ENROUTE,
    "BUFFERD": MessageState.ENROUTE,
    "BUFFERED": MessageState.ENROUTE,
    "FAILED": MessageState.UNDELIVERABLE,
    # SMPP 5.0 states some SMSCs already send
    "SCHEDULED": MessageState.ENROUTE,
    "SKIPPED": MessageState.UNDELIVERABLE,
}


def stat_to_state(word: str) -> MessageState | None:
    """The message state for a receipt ``stat:`` word (case-insensitive), None if unknown.

    Intermediate vendor words (ACKED, BUFFRED/BUFFERD) map to ENROUTE, which is not final; FAILED
    maps to UNDELIVERABLE.
    """
    return _STAT_MAP.get(word.strip().upper())


@dataclass(frozen=True, slots=True)
class ParsedReceipt:
    """What :func:`parse_receipt_text` could read; every field is None when absent or unreadable.

    ``stat`` is the raw word (upper case), ``state`` its mapping (None for an unknown word).
    Dates are Unix times, read as UTC. ``err`` is decimal when all digits, else hex; ``err_raw``
    keeps the original for logs.
    """

    id: str | None = None
    sub: int | None = None
    dlvrd: int | None = None
    submit_date: float | None = None
    done_date: float | None = None
    stat: str | None = None
    state: MessageState | None = None
    err: int | None = None
    err_raw: str | None = None
    text: str | None = None

    @property
    def intermediate(self) -> bool:
        """A progress report (ENROUTE, ACKED, BUFFRED …) rather than a final outcome."""
        return self.state is not None and not self.state.is_final


# A field name at the start or after whitespace, then ':' (spaces tolerated, '_' for ' ').
_FIELD_RE = re.compile(
    r"(?<!\S)(id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat|err|text)\s*:", re.IGNORECASE
)


def _field_name(m: re.Match[str]) -> str:
    return re.sub(r"[ _]", "", m.group(1).lower())


def _parse_int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _parse_date(value: str | None) -> float | None:
    """YYMMDDhhmm or YYMMDDhhmmss (years 2000–2099), UTC."""
    if value is None or not value.isdigit() or len(value) not in (10, 12):
        return None
    try:
        dt = datetime(
            2000 + int(value[0:2]),
            int(value[2:4]),
            int(value[4:6]),
            int(value[6:8]),
            int(value[8:10]),
            int(value[10:12]) if len(value) == 12 else 0,
            tzinfo=UTC,
        )
    except ValueError:
        return None
    return dt.timestamp()


def _parse_err(value: str | None) -> int | None:
    if not value:
        return None
    if value.isdigit():
        return int(value)
    digits = value[2:] if value[:2].lower() == "0x" else value
    try:
        return int(digits, 16)
    except ValueError:
        return None


def parse_receipt_text(text: str) -> ParsedReceipt | None:
    """Read an upstream SMSC's receipt text, tolerantly; None when it is not a receipt at all
    (neither ``id:`` nor ``stat:``).

    Fields may come in any order and any may be missing; names are case-insensitive (``Text:``),
    ``submit_date`` works like ``submit date``. Dates may have 10 or 12 digits. The text field
    runs to the end, except that it stops at a field name not seen before it (so a vendor that
    puts ``text:`` in the middle still gives us its later fields, while a message text that
    happens to contain ``stat:`` does not override the real one).
    """
    matches = list(_FIELD_RE.finditer(text))
    values: dict[str, str] = {}
    i = 0
    while i < len(matches):
        m = matches[i]
        name = _field_name(m)
        if name == "text":
            seen = set(values)
            j = i + 1
            while j < len(matches) and _field_name(matches[j]) in seen | {"text"}:
                j += 1
            if j < len(matches):
                values.setdefault("text", text[m.end() : matches[j].start()].rstrip())
            else:
                values.setdefault("text", text[m.end() :].rstrip("\x00"))
            i = j
            continue
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        words = text[m.end() : end].split()
        values.setdefault(name, words[0] if words else "")
        i += 1
    if not values.get("id") and not values.get("stat"):
        return None
    stat = values.get("stat")
    stat = stat.upper() if stat else None
    return ParsedReceipt(
        id=values.get("id") or None,
        sub=_parse_int(values.get("sub")),
        dlvrd=_parse_int(values.get("dlvrd")),
        submit_date=_parse_date(values.get("submitdate")),
        done_date=_parse_date(values.get("donedate")),
        stat=stat,
        state=stat_to_state(stat) if stat else None,
        err=_parse_err(values.get("err")),
        err_raw=values.get("err") or None,
        text=values.get("text"),
    )


def receipt_id_variants(receipt_id: str) -> list[str]:
    """Forms under which an upstream SMSC's receipt id may match the id from its submit_sm_resp.

    Some carriers answer submit_sm with a hex id and put the decimal form in the receipt (or the
    reverse), or drop leading zeros. Try these in order for the correlation lookup; the first is
    always the id as given.
    """
    out = [receipt_id]

    def add(v: str) -> None:
        if v and v not in out:
            out.append(v)

    stripped = receipt_id.lstrip("0") or "0"
    add(stripped)
    if receipt_id.isdigit():
        n = int(receipt_id)
        add(format(n, "x"))
        add(format(n, "X"))
    try:
        n = int(receipt_id, 16)
    except ValueError:
        return out
    add(str(n))
    return out
