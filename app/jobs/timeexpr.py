"""Parse user-supplied time expressions into milliseconds since the epoch (UTC).

A time expression is one of:

* an integer of milliseconds since the epoch: a Python ``int`` (not ``bool``) or a
  string of ASCII digits with an optional leading ``-`` (so ``"-1"`` is the instant
  1 ms before the epoch, while ``"-1h"`` is relative);
* an ISO-8601 UTC date-time ending in ``Z``, e.g. ``2026-11-28T10:00:00.123Z``;
  whatever :meth:`datetime.fromisoformat` accepts once the ``Z`` is removed, but no
  other zone and no missing zone;
* a relative expression ``[initial] {(+|-) [amount] unit}``, case-insensitive, with
  optional spaces between tokens, e.g. ``now - 1 week``, ``-1month``,
  ``startOfDay - hour``, ``now-2d+3h``.  ``initial`` is ``now`` (the default),
  ``startOfDay``, ``startOfWeek`` (Monday 00:00), ``startOfMonth`` or
  ``startOfYear``, all in UTC.  ``amount`` is a non-negative integer defaulting to 1.
  Terms are applied left to right.

Every result (and every intermediate result of a relative expression) must lie in
years 1..9999, the range :class:`datetime.datetime` can represent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from dateutil.relativedelta import relativedelta

from app import clock

__all__ = ["TimeExpressionError", "parse_time"]


class TimeExpressionError(ValueError):
    """The expression is not a valid time expression; str(err) is a clear message for the user naming what is wrong."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
# Floor division keeps 9999-12-31T23:59:59.999999 inside the range as ...59.999.
_MIN_MS = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _ONE_MS
_MAX_MS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _ONE_MS

# re.ASCII everywhere: without it \d accepts e.g. Arabic-Indic digits and
# IGNORECASE lets [a-z] match the Kelvin sign, neither of which users mean.
_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
# Anything starting like a calendar date (extended or basic format) is meant as
# ISO-8601, so it gets ISO-specific error messages instead of relative ones.
_ISO_START = re.compile(r"[0-9]{4}-|[0-9]{8}T", re.ASCII | re.IGNORECASE)
# The single tokenizer for relative expressions; every non-space character
# matches some group, so nothing is skipped silently.
_TOKEN = re.compile(
    r"\s*(?:(?P<sign>[+-])|(?P<num>[0-9]+)|(?P<word>[a-z]+)|(?P<bad>\S))",
    re.ASCII | re.IGNORECASE,
)

# Fixed-length units, in integer ms so arithmetic stays exact.
_FIXED_MS: dict[str, int] = {
    "ms": 1,
    **dict.fromkeys(("s", "sec", "second", "seconds"), 1_000),
    **dict.fromkeys(("m", "min", "minute", "minutes"), 60_000),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3_600_000),
    **dict.fromkeys(("d", "day", "days"), 86_400_000),
    **dict.fromkeys(("w", "week", "weeks"), 604_800_000),
}
# Calendar units vary in length, so they go through relativedelta (which clamps
# the day of month, e.g. Mar 31 - 1 month = Feb 28/29).  Note "m" is minutes.
_CALENDAR: dict[str, str] = {
    **dict.fromkeys(("month", "months"), "months"),
    **dict.fromkeys(("y", "yr", "year", "years"), "years"),
}


def _midnight(dt: datetime) -> datetime:
    return dt.replace(hour=0, minute=0, second=0, microsecond=0)


# No underflow is possible: 0001-01-01 is a Monday, the start of everything.
_INITIALS: dict[str, Callable[[datetime], datetime]] = {
    "now": lambda dt: dt,
    "startofday": _midnight,
    "startofweek": lambda dt: _midnight(dt) - timedelta(days=dt.weekday()),
    "startofmonth": lambda dt: _midnight(dt).replace(day=1),
    "startofyear": lambda dt: _midnight(dt).replace(month=1, day=1),
}
_INITIAL_NAMES = "now, startOfDay, startOfWeek, startOfMonth, startOfYear"
_UNIT_NAMES = ", ".join([*_FIXED_MS, *_CALENDAR])


def parse_time(expr: int | str, now_ms: int | None = None) -> int:
    """Return milliseconds since the epoch (UTC). now_ms fixes 'now' (so that both bounds of one search use
    the same instant); default is the service clock's now."""
    # bool is a subclass of int, but True/False as a time is always a mistake.
    if isinstance(expr, bool) or not isinstance(expr, (int, str)):
        raise TimeExpressionError(f"a time expression must be an integer or a string, not {type(expr).__name__}")
    if isinstance(expr, int):
        return _check_range(expr, str(expr))
    text = expr.strip()
    if not text:
        raise TimeExpressionError("empty time expression")
    if _INTEGER.fullmatch(text):
        return _check_range(_to_int(text, text), text)
    if _ISO_START.match(text):
        return _parse_iso(text)
    if now_ms is None:
        now_ms = clock.now_ms()
    elif isinstance(now_ms, bool) or not isinstance(now_ms, int):
        raise TypeError(f"now_ms must be an int, not {type(now_ms).__name__}")
    elif not _MIN_MS <= now_ms <= _MAX_MS:
        raise ValueError(f"now_ms {now_ms} is outside years 1..9999")
    return _parse_relative(text, now_ms)


def _error(text: str, detail: str) -> TimeExpressionError:
    return TimeExpressionError(f"invalid time expression {text!r}: {detail}")


def _to_int(digits: str, text: str) -> int:
    try:
        return int(digits)
    except ValueError:  # more digits than sys.get_int_max_str_digits() allows
        raise _error(text, "number is too large") from None


def _check_range(ms: int, text: str) -> int:
    if not _MIN_MS <= ms <= _MAX_MS:
        raise _error(text, "time is outside years 1..9999")
    return ms


def _to_datetime(ms: int) -> datetime:
    # timedelta keeps integer milliseconds exact (no float involved).
    return _EPOCH + timedelta(milliseconds=ms)


def _to_ms(dt: datetime) -> int:
    # Floor: sub-millisecond fractions are truncated towards the past.
    return (dt - _EPOCH) // _ONE_MS


def _parse_iso(text: str) -> int:
    if text[-1] not in "Zz":
        raise _error(text, "ISO-8601 times must be in UTC and end in 'Z' (no other zone, no missing zone)")
    try:
        dt = datetime.fromisoformat(text[:-1])
    except ValueError:
        raise _error(text, "not a valid ISO-8601 date-time") from None
    if dt.tzinfo is not None:  # e.g. "...+01:00Z" or "...ZZ"
        raise _error(text, "ISO-8601 times must have 'Z' as their only zone")
    return _to_ms(dt.replace(tzinfo=UTC))


def _parse_relative(text: str, now_ms: int) -> int:
    """Evaluate ``[initial] {(+|-) [amount] unit}`` left to right, starting from now_ms."""
    tokens = [(m.lastgroup or "", m.group(m.lastgroup or 0)) for m in _TOKEN.finditer(text)]
    for kind, tok in tokens:
        if kind == "bad":
            raise _error(text, f"unexpected character {tok!r}")

    value = now_ms
    pos = 0
    if tokens[0][0] == "word":
        name = tokens[0][1]
        initial = _INITIALS.get(name.lower())
        if initial is None:
            raise _error(
                text, f"unknown function {name!r}; expected one of {_INITIAL_NAMES}, or a term starting with '+' or '-'"
            )
        value = _to_ms(initial(_to_datetime(now_ms)))
        pos = 1

    while pos < len(tokens):
        kind, tok = tokens[pos]
        if kind != "sign":
            raise _error(text, f"expected '+' or '-' before {tok!r}")
        sign = 1 if tok == "+" else -1
        pos += 1
        amount, last = 1, tok
        if pos < len(tokens) and tokens[pos][0] == "num":
            amount, last = _to_int(tokens[pos][1], text), tokens[pos][1]
            pos += 1
        if pos >= len(tokens):
            raise _error(text, f"missing unit after {last!r} at the end")
        kind, unit = tokens[pos]
        if kind != "word":
            raise _error(text, f"expected a unit after {last!r}, got {unit!r}")
        pos += 1
        value = _add(value, sign * amount, unit, text)
    return value


def _add(value: int, amount: int, unit: str, text: str) -> int:
    """Add amount units to value (ms), checking the result stays in years 1..9999."""
    key = unit.lower()
    if key in _FIXED_MS:
        return _check_range(value + amount * _FIXED_MS[key], text)
    if key in _CALENDAR:
        try:
            # Whole ms survive the datetime round trip, so no remainder is lost.
            return _to_ms(_to_datetime(value) + relativedelta(**{_CALENDAR[key]: amount}))
        except (OverflowError, ValueError):  # year out of range / too big for C int
            raise _error(text, "time is outside years 1..9999") from None
    raise _error(text, f"unknown unit {unit!r}; expected {_UNIT_NAMES}")
