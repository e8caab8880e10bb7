"""Admission: what a submission must be to get in, before it is routed and stored — the
reasons a submission is refused (the SMPP adapter maps each to a command_status), the per-account
policy accept applies, the :class:`Submission` the adapter hands in, and the rules for numbers
(destinations normalised to E.164 through ``phonenumbers``, cached; senders numeric or
alphanumeric).

Apart from :mod:`bridge.core.pipeline` (which builds, stores and hands on messages) because the
admin API and benchmarks use these rules without a pipeline, and because they are the part an
operator reads to learn why a message was refused.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import phonenumbers

from bridge.core.model import Address
from bridge.core.router import NoRouteReason

__all__ = [
    "AccountPolicy",
    "RejectReason",
    "Rejected",
    "Submission",
    "normalise_destination",
    "normalise_source",
]


class RejectReason(enum.Enum):
    INVALID_SOURCE = "invalid source address"
    INVALID_DESTINATION = "invalid destination address"
    INVALID_TEXT = "undecodable text"
    TOO_LONG = "too long for every route"
    # No rule matches the destination, or the route names no configured provider.
    NO_ROUTE = "no route"
    # A route exists, but none of its providers can carry this message (the metric label and
    # the log say which obstacle, so an operator knows what to change).
    UNICODE_UNSUPPORTED = "no provider on the route takes unicode"
    BINARY_UNSUPPORTED = "no provider on the route takes binary content"
    FLASH_UNSUPPORTED = "no provider on the route takes flash messages"
    ALPHANUMERIC_SENDER_UNSUPPORTED = "no provider on the route takes an alphanumeric sender"
    SENDER_TOO_LONG = "the sender is too long for every provider on the route"
    QUEUE_FULL = "queue full"
    # Less free disk than [storage] min_free_mb where the store lives: refused before the
    # store itself fails, so the messages already accepted keep room for their next records.
    DISK_FULL = "the store's disk is nearly full"
    INVALID_SCHEDULE = "invalid schedule_delivery_time"
    INVALID_EXPIRY = "invalid validity_period"
    UNKNOWN_MESSAGE = "unknown message id"
    NOT_CANCELLABLE = "already dispatched"
    INVALID_CONCAT = "invalid concatenation header"


_NO_ROUTE_REASONS: dict[NoRouteReason, RejectReason] = {
    NoRouteReason.NO_RULE: RejectReason.NO_ROUTE,
    NoRouteReason.NO_PROVIDER: RejectReason.NO_ROUTE,
    NoRouteReason.TOO_LONG: RejectReason.TOO_LONG,
    NoRouteReason.UNICODE: RejectReason.UNICODE_UNSUPPORTED,
    NoRouteReason.BINARY: RejectReason.BINARY_UNSUPPORTED,
    NoRouteReason.FLASH: RejectReason.FLASH_UNSUPPORTED,
    NoRouteReason.ALPHANUMERIC_SENDER: RejectReason.ALPHANUMERIC_SENDER_UNSUPPORTED,
    NoRouteReason.SENDER_TOO_LONG: RejectReason.SENDER_TOO_LONG,
}


class Rejected(Exception):
    """A submission refused at once; the adapter answers with the matching command_status."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AccountPolicy:
    """Per-account behaviour of accept (from the account's config)."""

    system_id: str
    default_region: str | None = None
    message_id_format: str = "hex"  # "hex" | "decimal"
    default_alphabet: str = "gsm7"  # what data_coding 0 means
    alphabet_1: str = "ascii"  # what data_coding 1 means (IA5 by the spec; GSM 03.38 for some)
    strict_numbers: bool = False  # also require phonenumbers.is_valid_number
    default_validity: float = 48 * 3600.0


@dataclass(slots=True)
class Submission:
    """What the SMPP adapter extracted from one submit_sm / data_sm / submit_multi destination."""

    account: AccountPolicy
    source: Address  # ton/npi/digits as sent
    destination: Address
    payload: bytes  # user data without the concatenation IE (encoded)
    data_coding: int
    concat: tuple[int, int, int] | None = None  # (reference, total, seqnum)
    udh: bytes = b""  # other IEs, kept
    flash: bool = False
    registered_delivery: int = 0
    priority: int = 0
    esm_class: int = 0
    protocol_id: int = 0
    service_type: str = ""
    schedule_at: float | None = None
    expire_at: float | None = None


@functools.lru_cache(maxsize=65536)
def _normalise_number(digits: str, ton: int, region: str | None, strict: bool) -> str | None:
    """E.164 digits (no '+') for a destination, or None if it cannot be a number.

    Cached: ESMEs send to the same numbers again and again, and a parse costs ~18 µs.
    """
    if not digits or len(digits) > 20:
        return None
    raw = digits[1:] if digits.startswith("+") else digits
    if not raw.isdigit():
        return None
    if ton == 1 or (ton == 0 and digits.startswith("+")):
        text, region_hint = "+" + raw, None
    elif raw.startswith("00"):
        text, region_hint = "+" + raw[2:], None
    elif region:
        text, region_hint = raw, region
    elif ton == 0:
        text, region_hint = "+" + raw, None  # unknown TON and no region: assume international
    else:
        return None
    try:
        num = phonenumbers.parse(text, region_hint)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(num):
        return None
    if strict and not phonenumbers.is_valid_number(num):
        return None
    return f"{num.country_code}{num.national_number}" if not num.italian_leading_zero else (
        f"{num.country_code}{'0' * (num.number_of_leading_zeros or 1)}{num.national_number}"
    )


def normalise_source(src: Address, policy: AccountPolicy) -> Address:
    """Alphanumeric senders (TON 5) up to 11 characters; numeric ones up to 20 digits."""
    digits = src.digits
    if src.ton == 5:
        if not 1 <= len(digits) <= 11:
            raise Rejected(RejectReason.INVALID_SOURCE, "alphanumeric sender must be 1-11 chars")
        return src
    if not digits:
        raise Rejected(RejectReason.INVALID_SOURCE, "empty source address")
    raw = digits[1:] if digits.startswith("+") else digits
    if raw.isdigit():
        if src.ton == 1 or (src.ton == 0 and digits.startswith("+")):
            return Address(raw, 1, 1)
        return Address(raw, src.ton, src.npi)
    if len(digits) <= 11 and src.ton == 0:
        return Address(digits, 5, 0)  # an alphanumeric sender sent with TON 0
    raise Rejected(RejectReason.INVALID_SOURCE, "not a number")


def normalise_destination(dst: Address, policy: AccountPolicy) -> Address:
    e164 = _normalise_number(dst.digits, dst.ton, policy.default_region, policy.strict_numbers)
    if e164 is None:
        raise Rejected(RejectReason.INVALID_DESTINATION)
    return Address(e164, 1, 1)

