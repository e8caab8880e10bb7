"""SMPP 3.4 §7.1.1 time strings."""

import calendar

import pytest

from bridge.smpp.timefmt import format_smpp_time, parse_smpp_time

NOW = calendar.timegm((2026, 11, 22, 10, 0, 0, 0, 0, 0))


def test_empty_time_means_immediate_or_default() -> None:
    assert parse_smpp_time("", NOW) is None


def test_absolute_time_in_utc() -> None:
    assert parse_smpp_time("261122120000000+", NOW) == NOW + 2 * 3600


def test_absolute_time_ahead_of_utc_is_shifted_back() -> None:
    # 12:00 local at UTC+1 (4 quarter hours) is 11:00 UTC.
    assert parse_smpp_time("261122120000004+", NOW) == NOW + 3600


def test_absolute_time_behind_utc_is_shifted_forward() -> None:
    assert parse_smpp_time("261122120000008-", NOW) == NOW + 4 * 3600


def test_relative_time_counts_from_now() -> None:
    assert parse_smpp_time("000001000000000R", NOW) == NOW + 86400
    assert parse_smpp_time("000000013000000R", NOW) == NOW + 3600 + 30 * 60


@pytest.mark.parametrize(
    "bad",
    ["2611221200", "261322120000000+", "261131120000000+", "261122250000000+",
     "261122120000049+", "261122120000000X", "000001000000100R", "26112212000000+"],
)
def test_malformed_times_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_smpp_time(bad, NOW)


def test_format_round_trips_through_parse() -> None:
    text = format_smpp_time(NOW + 0.3)
    assert text == "261122100000300+"
    assert parse_smpp_time(text, NOW) == pytest.approx(NOW + 0.3)
