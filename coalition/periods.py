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


MONTHLY, YEARLY = "monthly", "yearly"  # POINTS_EXPIRY_POLICY
EXPIRY_POLICIES = (MONTHLY, YEARLY)


def expiry_of(occurred_at: datetime, tz: str, months: int, policy: str = MONTHLY,
              cutoff: tuple[int, int] = (9, 30)) -> tuple[datetime, date]:
    """When a lot earned at `occurred_at` expires, under the policy:

    - monthly: at the end of the month `months` after the month of its earn;
    - yearly: at the end of the first cut-off day (`cutoff`, (month, day), the same every year)
      that is not before the last day the monthly rule would give it. The points are at least
      `months` months old (by the months of the coalition's calendar) when they expire; a lot is
      never held for less time than under the monthly rule, and less than a year longer. With
      36 months and 30 September, a lot earned on 30 September 2026 expires at the end of 30
      September 2029, and everything earned from 1 October 2026 to 30 September 2027 at the
      end of 30 September 2030.

    Months and days are those of the coalition's time zone `tz`; "the end of" a day is the
    next local midnight, whatever daylight saving does in between. Returns the instant the lot
    stops being spendable (UTC) and the last local day it still is.
    """
    if policy not in EXPIRY_POLICIES:
        raise ValueError(f"unknown expiry policy {policy!r}")
    year, month = add_months(*month_of(occurred_at, tz), months + 1)
    ends = month_start_utc(year, month, tz)
    last = (datetime(year, month, 1) - timedelta(days=1)).date()
    if policy == MONTHLY:
        return ends, last
    cut_month, cut_day = cutoff
    cut = date(last.year, cut_month, cut_day)
    if cut < last:
        cut = date(last.year + 1, cut_month, cut_day)
    return day_start_utc(cut + timedelta(days=1), tz), cut


def day_start_utc(day: date, tz: str) -> datetime:
    """The UTC instant the local calendar day `day` begins (its local midnight)."""
    return datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz)).astimezone(timezone.utc)


def parse_cutoff(text: str) -> tuple[int, int]:
    """A day of the year as MM-DD, (month, day). 02-29 is refused: most years have none."""
    try:
        month, day = (int(part) for part in text.split("-"))
        if len(text) != 5 or text[2] != "-":
            raise ValueError(text)
        date(2001, month, day)  # not a leap year
    except ValueError:
        raise ValueError(f"POINTS_EXPIRY_CUTOFF must be a day of the year as MM-DD (e.g. 09-30), "
                         f"not {text!r}; 02-29 is refused (most years have none).") from None
    return month, day


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
