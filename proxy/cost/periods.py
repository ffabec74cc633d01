"""Budget periods in UTC: where the current one started, and when its counter may expire."""

from __future__ import annotations

import datetime as dt
import functools

DAY = 86400


def period_start(period: str, now: float) -> float:
    if period == "total":
        return 0.0
    return _start_of_day(period, int(now // DAY))


@functools.lru_cache(maxsize=64)
def _start_of_day(period: str, day_number: int) -> float:
    """Per UTC day the answer is fixed: memoised, so the hot path does no datetime work."""
    t = dt.datetime.fromtimestamp(day_number * DAY, dt.UTC)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day.timestamp()
    if period == "weekly":                        # weeks start on Monday 00:00 UTC
        return (day - dt.timedelta(days=day.weekday())).timestamp()
    if period == "monthly":
        return day.replace(day=1).timestamp()
    return 0.0                                    # total: one period forever


def period_end(period: str, start: float) -> float | None:
    if period == "daily":
        return start + DAY
    if period == "weekly":
        return start + 7 * DAY
    if period == "monthly":
        t = dt.datetime.fromtimestamp(start, dt.UTC)
        nxt = t.replace(year=t.year + 1, month=1) if t.month == 12 else t.replace(month=t.month + 1)
        return nxt.timestamp()
    return None


def counter_ttl(period: str, start: float, now: float) -> int | None:
    """Seconds a shared counter must live: to the period's end plus a day of slack (None: forever)."""
    end = _end(period, start)
    return None if end is None else int(end - now) + DAY


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


_end = functools.lru_cache(maxsize=64)(period_end)


def utc_day(ts: float) -> str:
    return _day_text(int(ts // DAY))


@functools.lru_cache(maxsize=16)
def _day_text(day_number: int) -> str:
    return dt.datetime.fromtimestamp(day_number * DAY, dt.UTC).strftime("%Y-%m-%d")
