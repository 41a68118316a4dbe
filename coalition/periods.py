"""Calendar months in the coalition's time zone: settlement periods and point expiry."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from .clock import as_utc


def month_of(moment: datetime, tz: str) -> tuple[int, int]:
    local = as_utc(moment).astimezone(ZoneInfo(tz))
    return local.year, local.month


def period_of(moment: datetime, tz: str) -> str:
    year, month = month_of(moment, tz)
    return f"{year:04d}-{month:02d}"


def add_months(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def month_start_utc(year: int, month: int, tz: str) -> datetime:
    return datetime(year, month, 1, tzinfo=ZoneInfo(tz)).astimezone(timezone.utc)


def expiry_of(occurred_at: datetime, tz: str, months: int) -> tuple[datetime, date]:
    """A lot expires at the end of the month `months` after the month of its earn.

    Returns the instant it stops being spendable (UTC) and the last local day it still is.
    """
    year, month = add_months(*month_of(occurred_at, tz), months + 1)
    ends = month_start_utc(year, month, tz)
    return ends, (datetime(year, month, 1) - timedelta(days=1)).date()


def last_day_before(instant: datetime, tz: str) -> date:
    """The local calendar day that ends at `instant` (a local midnight)."""
    return (as_utc(instant).astimezone(ZoneInfo(tz)) - timedelta(seconds=1)).date()


def day_of(moment: datetime, tz: str) -> tuple[date, datetime, datetime]:
    """The local calendar day `moment` falls on, with the UTC instants it starts and ends at."""
    zone = ZoneInfo(tz)
    day = as_utc(moment).astimezone(zone).date()
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    following = day + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=zone)
    return day, start.astimezone(timezone.utc), end.astimezone(timezone.utc)
