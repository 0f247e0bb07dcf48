"""Tests for app.jobs.timeexpr (time expressions -> epoch milliseconds, UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from app import clock
from app.jobs.timeexpr import TimeExpressionError, parse_time


def ms(year: int, month: int = 1, day: int = 1, hour: int = 0, minute: int = 0, second: int = 0, milli: int = 0) -> int:
    """Epoch ms of a UTC wall-clock time, computed independently of the module."""
    dt = datetime(year, month, day, hour, minute, second, milli * 1000, tzinfo=UTC)
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


WED = ms(2026, 11, 18, 13, 45, 30, 250)  # a Wednesday, mid-month
MONTH_END = ms(2026, 1, 31, 22, 10, 5, 7)  # a Saturday, last day of January
LEAP_DAY = ms(2024, 2, 29, 12, 0, 0, 999)  # a Thursday, leap day

SEC, MIN, HOUR, DAY, WEEK = 1_000, 60_000, 3_600_000, 86_400_000, 604_800_000


# --- every unit spelling --------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "size"),
    [("ms", 1)]
    + [(u, SEC) for u in ("s", "sec", "second", "seconds")]
    + [(u, MIN) for u in ("m", "min", "minute", "minutes")]
    + [(u, HOUR) for u in ("h", "hr", "hour", "hours")]
    + [(u, DAY) for u in ("d", "day", "days")]
    + [(u, WEEK) for u in ("w", "week", "weeks")],
)
def test_fixed_units(unit: str, size: int) -> None:
    assert parse_time(f"now+3{unit}", WED) == WED + 3 * size
    assert parse_time(f"now-3{unit}", WED) == WED - 3 * size


@pytest.mark.parametrize("unit", ["month", "months"])
def test_month_spellings(unit: str) -> None:
    assert parse_time(f"now-2{unit}", WED) == ms(2026, 9, 18, 13, 45, 30, 250)
    assert parse_time(f"now+2{unit}", WED) == ms(2027, 1, 18, 13, 45, 30, 250)


@pytest.mark.parametrize("unit", ["y", "yr", "year", "years"])
def test_year_spellings(unit: str) -> None:
    assert parse_time(f"now-3{unit}", WED) == ms(2023, 11, 18, 13, 45, 30, 250)
    assert parse_time(f"now+3{unit}", WED) == ms(2029, 11, 18, 13, 45, 30, 250)


# --- initial functions ----------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "now", "expected"),
    [
        ("now", WED, WED),
        ("startOfDay", WED, ms(2026, 11, 18)),
        ("startOfWeek", WED, ms(2026, 11, 16)),
        ("startOfMonth", WED, ms(2026, 11, 1)),
        ("startOfYear", WED, ms(2026, 1, 1)),
        ("now", MONTH_END, MONTH_END),
        ("startOfDay", MONTH_END, ms(2026, 1, 31)),
        ("startOfWeek", MONTH_END, ms(2026, 1, 26)),
        ("startOfMonth", MONTH_END, ms(2026, 1, 1)),
        ("startOfYear", MONTH_END, ms(2026, 1, 1)),
        ("startOfDay", LEAP_DAY, ms(2024, 2, 29)),
        ("startOfWeek", LEAP_DAY, ms(2024, 2, 26)),
        ("startOfMonth", LEAP_DAY, ms(2024, 2, 1)),
        ("startOfYear", LEAP_DAY, ms(2024, 1, 1)),
        # A Monday is its own start of week; midnight is its own start of day.
        ("startOfWeek", ms(2026, 11, 16, 0, 0, 0, 1), ms(2026, 11, 16)),
        ("startOfDay", ms(2026, 11, 16), ms(2026, 11, 16)),
        # Week start crossing a year boundary (2027-01-01 is a Friday).
        ("startOfWeek", ms(2027, 1, 1, 9), ms(2026, 12, 28)),
        # Before the epoch: negative ms must floor to the right day.
        ("startOfDay", ms(1969, 12, 31, 23, 59, 59, 999), ms(1969, 12, 31)),
    ],
)
def test_initial_functions(expr: str, now: int, expected: int) -> None:
    assert parse_time(expr, now) == expected


# --- calendar arithmetic ----------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "now", "expected"),
    [
        # Day of month clamps to the end of the shorter month; the time of day is kept.
        ("now+1month", MONTH_END, ms(2026, 2, 28, 22, 10, 5, 7)),
        ("now+1month", ms(2024, 1, 31, 8), ms(2024, 2, 29, 8)),
        ("now-1month", ms(2026, 3, 31, 6, 30), ms(2026, 2, 28, 6, 30)),
        ("now-1month", ms(2024, 3, 31, 6, 30), ms(2024, 2, 29, 6, 30)),
        ("now-12months", WED, ms(2025, 11, 18, 13, 45, 30, 250)),
        ("now+14months", WED, ms(2028, 1, 18, 13, 45, 30, 250)),
        # Years across the leap day.
        ("now+1y", LEAP_DAY, ms(2025, 2, 28, 12, 0, 0, 999)),
        ("now-1y", LEAP_DAY, ms(2023, 2, 28, 12, 0, 0, 999)),
        ("now+4y", LEAP_DAY, ms(2028, 2, 29, 12, 0, 0, 999)),
        ("now+1month", LEAP_DAY, ms(2024, 3, 29, 12, 0, 0, 999)),
        # Terms apply left to right, so calendar steps do not commute.
        ("now+1month-1month", MONTH_END, ms(2026, 1, 28, 22, 10, 5, 7)),
        ("startOfMonth+1month-1ms", MONTH_END, ms(2026, 1, 31, 23, 59, 59, 999)),
        ("startOfYear-1y", LEAP_DAY, ms(2023, 1, 1)),
        # Before the epoch the ms remainder survives the datetime round trip.
        ("now-1month", ms(1969, 3, 31, 1, 2, 3, 456), ms(1969, 2, 28, 1, 2, 3, 456)),
    ],
)
def test_calendar_arithmetic(expr: str, now: int, expected: int) -> None:
    assert parse_time(expr, now) == expected


# --- terms, defaults, spacing, case -----------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("now-2d+3h", WED - 2 * DAY + 3 * HOUR),
        ("now - 1 week", WED - WEEK),
        ("-1month", ms(2026, 10, 18, 13, 45, 30, 250)),
        ("-1h", WED - HOUR),
        ("+0s", WED),
        ("-1d-1h-1m-1s-1ms", WED - DAY - HOUR - MIN - SEC - 1),
        ("startOfDay - hour", ms(2026, 11, 17, 23)),
        ("startOfDay+d", ms(2026, 11, 19)),
        ("-week", WED - WEEK),
        ("now+001h", WED + HOUR),
        ("STARTOFMONTH+1d", ms(2026, 11, 2)),
        ("StartOfWeek + 2 DAYS", ms(2026, 11, 18)),
        ("NOW-1H", WED - HOUR),
        ("  now  -  2  d  +  3  h  ", WED - 2 * DAY + 3 * HOUR),
        ("now\t-\n1h", WED - HOUR),
        ("startofyear+1Y-1MS", ms(2026, 12, 31, 23, 59, 59, 999)),
    ],
)
def test_relative_syntax(expr: str, expected: int) -> None:
    assert parse_time(expr, WED) == expected


# --- absolute forms -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (0, 0),
        (1_764_324_000_123, 1_764_324_000_123),
        (-86_400_000, -86_400_000),
        ("1764324000123", 1_764_324_000_123),
        ("-86400000", -86_400_000),
        ("0", 0),
        (" 42 ", 42),
        ("-1", -1),  # an integer, not "now minus one <unit>"
        ("2026-11-28T10:00:00Z", ms(2026, 11, 28, 10)),
        ("2026-11-28T10:00:00.123Z", ms(2026, 11, 28, 10, 0, 0, 123)),
        ("2026-11-28T10:00:00.1Z", ms(2026, 11, 28, 10, 0, 0, 100)),
        ("2026-11-28T10:00:00.123999Z", ms(2026, 11, 28, 10, 0, 0, 123)),  # truncated
        ("2026-11-28T10:00Z", ms(2026, 11, 28, 10)),
        ("2026-11-28T10:00:00z", ms(2026, 11, 28, 10)),
        ("1969-12-31T23:59:59.999Z", -1),
        ("0001-01-01T00:00:00Z", ms(1)),
        ("9999-12-31T23:59:59.999Z", ms(9999, 12, 31, 23, 59, 59, 999)),
    ],
)
def test_absolute_forms(expr: int | str, expected: int) -> None:
    # now_ms must not matter for absolute forms.
    assert parse_time(expr, WED) == expected
    assert parse_time(expr) == expected


# --- errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("2026-11-28T10:00:00+01:00", "'Z'"),
        ("2026-11-28T10:00:00", "'Z'"),
        ("2026-11-28T10:00:00+01:00Z", "only zone"),
        ("2026-11-28T10:00:00ZZ", "only zone"),
        ("2026-13-28T10:00:00Z", "not a valid ISO-8601"),
        ("2026-11-28Tgarbage Z", "not a valid ISO-8601"),
        ("now now", "'now'"),
        ("now-3q", "unknown unit 'q'"),
        ("now-", "missing unit after '-'"),
        ("now-3", "missing unit after '3'"),
        ("++1h", "unit after '+', got '+'"),
        ("now+-1h", "unit after '+', got '-'"),
        ("1h", "'+' or '-' before '1'"),
        ("now 1h", "'+' or '-' before '1'"),
        ("now-1h 2d", "'+' or '-' before '2'"),
        ("now-1h2d", "'+' or '-' before '2'"),
        ("now-1 2h", "unit after '1', got '2'"),
        ("yesterday", "unknown function 'yesterday'"),
        ("hour", "unknown function 'hour'"),
        ("now-1.5h", "unexpected character '.'"),
        ("now*2", "unexpected character '*'"),
        ("now-\u0661h", "unexpected character"),  # non-ASCII digit
        ("now-1\u212aday", "unexpected character"),  # Kelvin sign is not a 'k'
        ("now-1hour-now", "unknown unit 'now'"),
        ("+1", "missing unit after '1'"),
        ("now+1e3s", "unknown unit 'e'"),
        ("-", "missing unit after '-'"),
    ],
)
def test_invalid_expressions(expr: str, message: str) -> None:
    with pytest.raises(TimeExpressionError) as info:
        parse_time(expr, WED)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "expr",
    [
        "now+8000y",
        "now-2026y",
        "now+99999999999999999999y",
        "now-99999999999999999999months",
        "now+100000000d",
        "now-100000000w",
        "now+" + "9" * 5000 + "ms",  # beyond Python's int-from-str digit limit
        "startOfYear+8000y-8000y",  # intermediate results must stay in range too
        "99999999999999999999",
        "-99999999999999999999",
        "9" * 5000,
        253_402_300_800_000,  # 10000-01-01T00:00:00Z
        -62_135_596_800_001,  # 1 ms before 0001-01-01T00:00:00Z
    ],
)
def test_out_of_range(expr: int | str) -> None:
    with pytest.raises(TimeExpressionError, match="outside years 1..9999|too large"):
        parse_time(expr, WED)


@pytest.mark.parametrize("expr", [True, False, None, 1.5, b"now", ["now"]])
def test_wrong_types(expr: object) -> None:
    with pytest.raises(TimeExpressionError, match="integer or a string"):
        parse_time(expr, WED)  # type: ignore[arg-type]


def test_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_time("garbage", WED)


def test_range_edges_are_inclusive() -> None:
    assert parse_time("startOfYear-2025y", WED) == ms(1)
    assert parse_time("now+1ms", ms(9999, 12, 31, 23, 59, 59, 998)) == ms(9999, 12, 31, 23, 59, 59, 999)


def test_exact_ms_for_huge_fixed_amounts() -> None:
    # Large but in-range amounts: float arithmetic would lose the last digits.
    assert parse_time("now-1764324000123ms+1764324000123ms", WED) == WED
    assert parse_time("now+7000000000001ms", 3) == 7_000_000_000_004


def test_default_now_is_current_time() -> None:
    # The service's now (app.clock: the database's clock where an app follows one), not this host's own.
    before = clock.now_ms()
    result = parse_time("now")
    after = clock.now_ms()
    # A new measurement of the offset between two readings may move them by its error, a few milliseconds.
    assert before - 50 <= result <= after + 50
    assert parse_time("now-1d") <= after - DAY


@pytest.mark.parametrize("now", [True, 1.0, "0"])
def test_now_ms_must_be_int(now: object) -> None:
    with pytest.raises(TypeError):
        parse_time("now", now)  # type: ignore[arg-type]


def test_now_ms_out_of_range() -> None:
    with pytest.raises(ValueError):
        parse_time("now", 10**20)
