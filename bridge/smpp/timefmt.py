"""SMPP 3.4 time strings (§7.1.1): ``YYMMDDhhmmsstnnp``, absolute or relative.

Used for schedule_delivery_time, validity_period and final_date. Sans-IO: the current time is
passed in, so relative times are testable.
"""

from __future__ import annotations

import calendar
import re
import time

__all__ = ["format_smpp_time", "parse_smpp_time"]

_FORMAT = re.compile(r"^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d)(\d{2})([-+R])$")


def parse_smpp_time(value: str, now: float) -> float | None:
    """The moment a time string designates, as Unix seconds; None for the empty string.

    Absolute: ``nn`` quarter hours from UTC, ``+`` ahead of UTC (local = UTC + offset), ``-``
    behind. Relative (``R``): years, months (30 days), days, hours, minutes, seconds from ``now``,
    as most SMSCs compute it. Raises ValueError for anything else (the caller answers
    ESME_RINVSCHED or ESME_RINVEXPIRY).
    """
    if not value:
        return None
    m = _FORMAT.match(value)
    if m is None:
        raise ValueError(f"not an SMPP time: {value!r}")
    yy, mo, dd, hh, mi, ss, tenths, nn = (int(g) for g in m.groups()[:8])
    sign = m.group(9)
    if sign == "R":
        if tenths or nn:
            raise ValueError("relative time with tenths or offset")
        days = yy * 365 + mo * 30 + dd
        return now + days * 86400 + hh * 3600 + mi * 60 + ss
    if not (1 <= mo <= 12 and 1 <= dd <= 31 and hh <= 23 and mi <= 59 and ss <= 59 and nn <= 48):
        raise ValueError(f"SMPP time out of range: {value!r}")
    year = 2000 + yy
    if dd > calendar.monthrange(year, mo)[1]:
        raise ValueError(f"no such day: {value!r}")
    local = calendar.timegm((year, mo, dd, hh, mi, ss, 0, 0, 0)) + tenths / 10
    offset = nn * 900
    return local - offset if sign == "+" else local + offset


def format_smpp_time(at: float) -> str:
    """An absolute SMPP time in UTC (``…00+``), e.g. for query_sm_resp final_date."""
    t = time.gmtime(at)
    tenths = min(9, int(round((at - int(at)) * 10, 6)))
    return time.strftime("%y%m%d%H%M%S", t) + f"{tenths}00+"
