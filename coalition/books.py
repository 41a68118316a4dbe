"""Which months are open for booking, and the lock that makes closing a month atomic.

On PostgreSQL every claim holds a *shared* transaction-level advisory lock on the books while
it reads which months are closed and books its entry; closing a month takes the same lock
*exclusively*. Claims never conflict with each other on it (it is no row and no table write),
but a close waits for claims in flight to commit, and claims arriving during the close wait
for it: every claim lands wholly in the closed month or wholly in the next open one.
On SQLite, where every transaction is BEGIN IMMEDIATE, transactions are serial already.
"""
from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .database import is_sqlite
from .models import ClosedPeriod, Entry
from .periods import add_months, month_start_utc, period_of
from .problems import Problem

BOOKS_LOCK = 0x436F616C  # arbitrary, fixed: the one advisory lock key of this service
PERIOD = re.compile(r"^([0-9]{4})-(0[1-9]|1[0-2])$")  # ASCII digits: \d takes any script's


def parse_period(text: str) -> tuple[int, int]:
    m = PERIOD.fullmatch(text or "")
    if not m:
        raise Problem("validation-error", "A period is a month written YYYY-MM.")
    return int(m.group(1)), int(m.group(2))


def next_period(period: str) -> str:
    year, month = add_months(*parse_period(period), 1)
    return f"{year:04d}-{month:02d}"


def hold_open(session: Session) -> None:
    """Taken by every claim before it reads which months are closed."""
    if not is_sqlite(session):
        session.execute(select(hold_open_clause()))


def hold_open_clause():
    """hold_open as a column of a statement that does more (PostgreSQL): coalition/claim_sql.py
    takes it in the statement that locks the member."""
    return func.pg_advisory_xact_lock_shared(BOOKS_LOCK)


def lock_for_close(session: Session) -> None:
    if not is_sqlite(session):
        session.execute(select(func.pg_advisory_xact_lock(BOOKS_LOCK)))


def closed_through(session: Session) -> str | None:
    return session.scalar(select(func.max(ClosedPeriod.period)))


def booking_period(session: Session, occurred_at: datetime, tz: str) -> tuple[str, bool]:
    """The month a claim belongs to; if that is closed, the earliest open month, flagged late."""
    return period_after(occurred_at, tz, closed_through(session))


def period_after(occurred_at: datetime, tz: str, last_closed: str | None) -> tuple[str, bool]:
    """booking_period, given the last closed month (read under hold_open)."""
    own = period_of(occurred_at, tz)
    if last_closed is None or own > last_closed:
        return own, False
    return next_period(last_closed), True


def is_closed(session: Session, period: str) -> bool:
    """Whether month `period` (YYYY-MM) is closed: it has its statements and takes no more
    claims. A month before the first claim is not closed, nor can it be (nothing is in it)."""
    parse_period(period)
    return session.get(ClosedPeriod, period) is not None


def first_period(session: Session) -> str | None:
    """The month of the earliest claim ever booked: there is nothing before it."""
    return session.scalar(select(func.min(Entry.period)))


def close_books(session: Session, period: str, *, now: datetime, tz: str) -> ClosedPeriod:
    """Close one month, in order, once it has ended. The caller writes its statements in the
    same transaction, which holds the books lock until it commits."""
    year, month = parse_period(period)
    lock_for_close(session)
    if is_closed(session, period):
        raise Problem("period-closed", f"{period} is closed already.")
    first = first_period(session)
    if first is None:
        raise Problem("period-open", "Nothing has been booked yet: there is no month to close.")
    if period < first:  # closed months run without a gap from the first claim's month on
        raise Problem("period-open", f"Nothing was booked before {first}: "
                                     f"{period} has nothing to close.")
    if now < month_start_utc(*add_months(year, month, 1), tz):
        raise Problem("period-open", f"{period} has not ended yet.")
    last_closed = closed_through(session)
    expected = next_period(last_closed) if last_closed else first
    if period != expected:
        raise Problem("period-open", f"Close {expected} first: months close in order.")
    closed = ClosedPeriod(period=period, closed_at=now)
    session.add(closed)
    session.flush()
    return closed
