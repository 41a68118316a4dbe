"""Status tiers: a member's tier comes from the points the member earned (not the balance) in
the trailing 12 months, against the operator's thresholds (COALITION_TIERS, e.g.
`Blue:0,Silver:2000,Gold:5000`). Unset: no tiers, and balances show none.

The rule, in the coalition's time zone:
- an earn counts once its points are no longer pending, with its points less what has been
  reversed of it, from the day it occurred through the day before the same day 12 months later
  (earned 15 March 2026: counts through 14 March 2027; earned 29 February: through 28 February);
- the tier is the highest whose threshold the counted points reach. A reversal lowers the count
  at once, so it can lower the tier (at the threshold: 2000 counted is Silver, 1999 Blue);
- the tier lasts until the last day on which the earns that count now still reach its
  threshold, if the member earned nothing more: the day before the older earns, falling out
  one by one, take the count below it. The lowest tier (threshold 0) lasts for ever.

Bonus points (campaigns, coupons, the tier's own multiplier) do not count, nor do the referral
points the coalition gives a referrer: a tier measures what the member earned at partners, and a
gift counting towards the tier that pays it would feed itself. Activity earns (a review, a
sign-up) are earned at a partner and count.

Nothing is stored: the tier is worked out from the journal whenever it is asked for, so a
reversal, a pending earn becoming available or an earn ageing out changes it with no job to run.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session, aliased

from .activities import REFERRAL
from .clock import as_utc
from .models import Entry
from .periods import add_months, day_start_utc
from .vocabulary import EntryKind, MAX_POINTS

WINDOW_MONTHS = 12
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9 _-]{0,31}$")


@dataclass(frozen=True)
class Tier:
    name: str
    threshold: int  # points earned in the window that reach it
    multiplier: Decimal = Decimal(1)  # earns of a member in this tier: points times this


def parse(text: str | None) -> tuple[Tier, ...]:
    """`Name:threshold[:multiplier],...`, lowest first, the first at 0; "" or None: no tiers.
    ValueError saying what is wrong otherwise."""
    if not text or not text.strip():
        return ()
    tiers = []
    for part in text.split(","):
        fields = [f.strip() for f in part.split(":")]
        if len(fields) not in (2, 3) or not _NAME.fullmatch(fields[0]) \
                or not fields[1].isdigit() or int(fields[1]) > MAX_POINTS:
            raise ValueError(f"COALITION_TIERS: {part.strip()!r} is not Name:threshold[:multiplier] "
                             "(a name of letters, digits, space, _ or -; a whole number of points).")
        multiplier = Decimal(1)
        if len(fields) == 3:
            try:
                multiplier = Decimal(fields[2])
            except InvalidOperation:
                multiplier = Decimal(0)
            if not multiplier.is_finite() or not 1 <= multiplier <= 10:
                raise ValueError(f"COALITION_TIERS: the multiplier of {fields[0]} must be a "
                                 "decimal from 1 to 10.")
        tiers.append(Tier(fields[0], int(fields[1]), multiplier))
    if tiers[0].threshold != 0:
        raise ValueError("COALITION_TIERS: the first tier starts at 0 points.")
    if any(b.threshold <= a.threshold for a, b in zip(tiers, tiers[1:])):
        raise ValueError("COALITION_TIERS: thresholds must rise from tier to tier.")
    if len({t.name.lower() for t in tiers}) != len(tiers):
        raise ValueError("COALITION_TIERS: tier names must differ.")
    return tuple(tiers)


def counts_until(occurred_at: datetime, tz: str) -> datetime:
    """The instant an earn stops counting: the start of the same local day 12 months later (of
    1 March when that day would be 29 February of a common year)."""
    day = as_utc(occurred_at).astimezone(ZoneInfo(tz)).date()
    year, month = add_months(day.year, day.month, WINDOW_MONTHS)
    try:
        anniversary = date(year, month, day.day)
    except ValueError:  # 29 February, a year on
        anniversary = date(year, month, 28) + timedelta(days=1)
    return day_start_utc(anniversary, tz)


def counted_from(at: datetime, tz: str) -> datetime:
    """The start of the earliest local day whose earns still count at `at`
    (counts_until(day) > at): about 12 months back, found with counts_until itself, so the
    two never disagree (29 February, daylight saving changes)."""
    local = as_utc(at).astimezone(ZoneInfo(tz)).date()
    day = local.replace(year=local.year - 1, day=1) - timedelta(days=1)  # before the answer
    while counts_until(day_start_utc(day, tz), tz) <= at:
        day += timedelta(days=1)
    return day_start_utc(day, tz)


def _counting(at: datetime, tz: str) -> tuple:
    """The earns that count towards a tier at `at`: the rule's selection, for one member
    (`earned`) and for all at once (`points_counted`)."""
    at = as_utc(at)
    return (Entry.kind == EntryKind.EARN, Entry.activity != REFERRAL,
            Entry.occurred_at >= counted_from(at, tz), Entry.occurred_at <= at,
            (Entry.pending_until.is_(None)) | (Entry.pending_until <= at))


def earned(session: Session, member_pk: int, *, now: datetime, tz: str) -> list[tuple[datetime, int]]:
    """The member's earns that count at `now`: (when each stops counting, its points net of
    reversals), soonest first."""
    reversal = aliased(Entry)
    reversed_points = (select(func.coalesce(func.sum(reversal.points), 0))
                       .where(reversal.reverses_id == Entry.id).scalar_subquery())
    rows = session.execute(
        select(Entry.occurred_at, Entry.points - reversed_points)
        .where(Entry.member_id == member_pk, *_counting(now, tz)))
    counted = [(counts_until(at, tz), int(points)) for at, points in rows]
    return sorted((until, points) for until, points in counted if until > now and points > 0)


def points_counted(session: Session, *, at: datetime, tz: str, members=None) -> dict[int, int]:
    """{member pk: points counted towards a tier at `at`} for every member with more than 0:
    the sum of what `earned` gives each, summed in the database in one query for all members
    rather than one per member. `members`: a select of Member.id to restrict it to.

    The counted earns' points, and minus the points of every reversal of them: a reversal
    never takes more than its earn, so the sum per member is the sum of each earn's points
    net of its reversals (as in `earned`, every reversal of a counted earn counts, also one
    booked after a past `at`)."""
    counting = _counting(at, tz)
    if members is not None:
        counting = (*counting, Entry.member_id.in_(members))
    reversal = aliased(Entry)
    points = union_all(
        select(Entry.member_id.label("member"), Entry.points.label("points")).where(*counting),
        select(Entry.member_id, -reversal.points).select_from(reversal)
        .join(Entry, Entry.id == reversal.reverses_id).where(*counting)).subquery()
    counted = func.sum(points.c.points)
    return {member: int(total) for member, total in session.execute(
        select(points.c.member, counted).group_by(points.c.member).having(counted > 0))}


def status(tiers: tuple[Tier, ...], counted: list[tuple[datetime, int]], tz: str) -> dict | None:
    """The member's tier as balances show it: name, points counted, the next tier and what it
    still needs, and the last day the tier lasts (None: for ever). None without tiers."""
    if not tiers:
        return None
    points = sum(p for _, p in counted)
    current = max((t for t in tiers if t.threshold <= points), key=lambda t: t.threshold)
    above = [t for t in tiers if t.threshold > points]
    lasts_until = None
    if current.threshold > 0:
        left = points
        for until, earn_points in counted:  # soonest to stop counting first
            left -= earn_points
            if left < current.threshold:
                lasts_until = as_utc(until).astimezone(ZoneInfo(tz)).date() - timedelta(days=1)
                break
    return {"name": current.name, "points": points, "until": lasts_until,
            "next": {"name": above[0].name, "points": above[0].threshold,
                     "missing": above[0].threshold - points} if above else None}


def of_member(session: Session, tiers: tuple[Tier, ...], member_pk: int, *, now: datetime,
              tz: str) -> dict | None:
    if not tiers:
        return None
    return status(tiers, earned(session, member_pk, now=now, tz=tz), tz)
