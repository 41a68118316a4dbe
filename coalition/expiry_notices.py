"""Expiry notices: the points a member is about to lose, so that they can be told in time.

A notice is one expiry of the member's points: how many points (of every lot still holding
points that expires at that instant, pending ones included, as the balance's `expiring` counts
them) and the last local day they can be spent (`expires_on`). `notify_from` is the first day
the member should hear of it: NOTICE_DAYS before `expires_on`, so that a member is told at
least that long ahead. The window is a number of days from a day (today, for partners): every
expiry whose `expires_on` lies from that day through the window's last day is listed, earliest
first, whatever the policy the lot was earned under (its expiry is fixed at the earn).

Debt lots never expire; lots past their expiry (booked by `points expire` or not yet) are no
longer the member's and are not listed. Partners read a member's notices
(GET /v1/members/{member_id}/expiry-notices); the operator lists every member with points
expiring in a window for a mailing job (`flask points notices`). Erased members have no card
and are left out. Points are counted as the lots stand when asked: a burn before the expiry
lowers what will expire.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Iterator

from sqlalchemy import literal_column, select
from sqlalchemy.orm import Session

from .clock import as_utc
from .members import find
from .models import Lot, Member
from .periods import day_of, day_start_utc, last_day_before
from .problems import Problem

NOTICE_DAYS = 30  # a member hears of an expiry at least this many days ahead
MAX_WINDOW_DAYS = 366


def window(first_day: date, within_days: int, tz: str, now: datetime) -> tuple[datetime, datetime]:
    """(after, until): the expiry instants of a window of `within_days` days from `first_day`
    (both included). Never before `now`: what has expired already is gone."""
    if not 0 <= within_days <= MAX_WINDOW_DAYS:
        raise Problem("validation-error", f"within_days must lie from 0 to {MAX_WINDOW_DAYS}.")
    after = max(day_start_utc(first_day, tz), as_utc(now))
    return after, day_start_utc(first_day + timedelta(days=within_days + 1), tz)


def _notice(at: datetime, points: int, tz: str) -> dict:
    expires_on = last_day_before(at, tz)
    return {"points": points, "expires_on": expires_on,
            "notify_from": expires_on - timedelta(days=NOTICE_DAYS)}


def for_member(session: Session, external_id: str, *, now: datetime, tz: str,
               within_days: int = NOTICE_DAYS) -> dict:
    """The member's expiries from today through `within_days` days on."""
    member = find(session, external_id)
    if member is None:
        raise Problem("not-found", "No such member.")
    after, until = window(day_of(now, tz)[0], within_days, tz, now)
    rows = session.execute(
        select(Lot.expires_at, Lot.remaining)
        .where(Lot.member_id == member.id, Lot.remaining > 0, Lot.expires_at > after,
               Lot.expires_at <= until)
        .order_by(Lot.expires_at)).all()
    return {"member_id": external_id, "within_days": within_days,
            "notices": _grouped(rows, tz)}


def _grouped(rows, tz: str) -> list[dict]:
    totals: dict[datetime, int] = {}
    for at, points in rows:
        totals[as_utc(at)] = totals.get(as_utc(at), 0) + points
    return [_notice(at, points, tz) for at, points in sorted(totals.items())]


def members_expiring(session: Session, *, first_day: date, within_days: int, now: datetime,
                     tz: str, batch: int = 1000) -> Iterator[dict]:
    """Every member (with a card) whose points expire in the window, in order of member, each
    with its notices. One query over the lots due in the window, streamed `batch` rows at a
    time (a server-side cursor on PostgreSQL): the lots are read once, and only one member's
    are held here at a time, however many members the window holds."""
    after, until = window(first_day, within_days, tz, now)
    rows = session.execute(
        select(Lot.member_id, Member.external_id, Lot.expires_at, Lot.remaining)
        .join(Member, Member.id == Lot.member_id)
        .where(Lot.remaining > literal_column("0"), Lot.expires_at > after,
               Lot.expires_at <= until, Member.external_id.is_not(None))
        .order_by(Lot.member_id, Lot.expires_at)
        .execution_options(yield_per=batch))
    member, card, lots = None, None, []
    for pk, external_id, at, points in rows:
        if pk != member:
            if lots:
                yield {"member_id": card, "notices": _grouped(lots, tz)}
            member, card, lots = pk, external_id, []
        lots.append((at, points))
    if lots:
        yield {"member_id": card, "notices": _grouped(lots, tz)}
