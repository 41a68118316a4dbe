"""What campaigns and coupons share (coalition/campaigns.py, coalition/coupons.py): terms fixed
once added (a multiplier or a fixed bonus, a window in the coalition's time zone that may not
reach into a closed month), read by id, listed by window, ended early but never rewritten.
"""
from __future__ import annotations

import re

from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Callable
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import audit
from .clock import as_utc
from .models import ClosedPeriod
from .periods import add_months
from .problems import Problem
from .vocabulary import MAX_POINTS

MULTIPLIER, FIXED = "multiplier", "fixed"
MAX_FACTOR = Decimal(100)
_DIGITS = re.compile(r"[0-9]{1,19}")
_DECIMAL = re.compile(r"[0-9]{1,19}(\.[0-9]{1,19})?")


def checked_terms(session: Session, noun: str, *, name: str, kind: str, value: str, starts: str,
                  ends: str, tz: str) -> tuple[str, Decimal | None, int | None, datetime, datetime]:
    """A new campaign's or coupon's name, value and window, checked: (name, factor, fixed bonus
    points, starts_at, ends_at)."""
    if not name.strip() or len(name.strip()) > 200:
        raise Problem("validation-error", f"A {noun} needs a name of 1 to 200 characters.")
    factor, bonus = parse_value(kind, value)
    starts_at = parse_instant(starts, tz, "--from")
    ends_at = parse_instant(ends, tz, "--until", end=True)
    if ends_at <= starts_at:
        raise Problem("validation-error", f"The {noun}'s window is empty: --until must lie "
                                          "after --from.")
    refuse_closed_months(session, starts_at, tz)
    return name.strip(), factor, bonus, starts_at, ends_at


def get(session: Session, model, row_id: str, noun: str):
    row = session.get(model, row_id)
    if row is None:
        raise Problem("not-found", f"No {noun} {row_id!r}.")
    return row


def listed(session: Session, model, active_at: datetime | None = None) -> list:
    """Every row, by start; with `active_at`, those whose window holds that instant."""
    query = select(model).order_by(model.starts_at, model.id)
    if active_at is not None:
        query = query.where(model.starts_at <= active_at, model.ends_at > active_at)
    return list(session.scalars(query))


def end(session: Session, row, noun: str, view: Callable, *, now: datetime,
        actor: str) -> bool:
    """End a campaign or coupon now (audited `<noun>.end`); whether this changed anything. One
    that has ended already keeps its window; one that never ran ends an instant after its start,
    so its window stays non-empty."""
    if as_utc(row.ends_at) <= now:
        return False
    before = view(row)
    row.ends_at = max(now, as_utc(row.starts_at) + timedelta(microseconds=1))
    row.ended_at = now
    audit.record(session, actor=actor, action=f"{noun}.end", subject=f"{noun}:{row.id}",
                 before=before, after=view(row), now=now)
    return True


def parse_value(kind: str, value: str) -> tuple[Decimal | None, int | None]:
    # ASCII digits only: str.isdigit and Decimal take other scripts' digits, and "²" too
    if kind == MULTIPLIER:
        try:
            factor = Decimal(value) if _DECIMAL.fullmatch(value) else None
        except InvalidOperation:
            factor = None
        if factor is None or not factor.is_finite() or not 1 < factor <= MAX_FACTOR \
                or factor != factor.quantize(Decimal("0.0001")):
            raise Problem("validation-error", "A multiplier's --value is a decimal above 1 and at "
                                              f"most {MAX_FACTOR}, with at most 4 places (e.g. 2).")
        return factor, None
    if kind == FIXED:
        if not _DIGITS.fullmatch(value) or not 1 <= int(value) <= MAX_POINTS:
            raise Problem("validation-error", f"A fixed bonus's --value is 1 to {MAX_POINTS} "
                                              "points.")
        return None, int(value)
    raise Problem("validation-error", f"A campaign's kind is {MULTIPLIER} or {FIXED}.")


def parse_instant(text: str, tz: str, option: str, *, end: bool = False) -> datetime:
    """A date (its start; with `end`, the start of the next day) or a date-time, in `tz` unless
    it says otherwise: the local day is the coalition's, across a DST change too."""
    try:
        if len(text) == 10:
            day = datetime.fromisoformat(text).date()
            local = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz))
            if end:
                following = day + timedelta(days=1)
                local = datetime(following.year, following.month, following.day,
                                 tzinfo=ZoneInfo(tz))
            return as_utc(local)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Problem("validation-error", f"{option} must be a date (YYYY-MM-DD) or a date-time "
                                          "(YYYY-MM-DDTHH:MM, coalition time unless an offset "
                                          "is given).") from None
    return as_utc(moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(tz)))


def refuse_closed_months(session: Session, starts_at: datetime, tz: str) -> None:
    closed = session.scalar(select(func.max(ClosedPeriod.period)))
    if closed is None:
        return
    year, month = add_months(int(closed[:4]), int(closed[5:]), 1)
    first_open = as_utc(datetime(year, month, 1, tzinfo=ZoneInfo(tz)))
    if starts_at < first_open:
        raise Problem("validation-error", f"{closed} is closed: a campaign cannot change a closed "
                                          f"month, so it may begin on {year:04d}-{month:02d}-01 "
                                          "at the earliest.")

