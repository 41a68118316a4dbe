"""Members: enrolment and the one balance they see across every partner."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import tiers as tiers_
from .clock import as_utc
from .models import Hold, Lot, Member
from .periods import last_day_before
from .problems import Problem
from .vocabulary import available, held_now, spendable, unspent


def find(session: Session, external_id: str) -> Member | None:
    return session.scalars(select(Member).where(Member.external_id == external_id)).one_or_none()


def enrol(session: Session, external_id: str, *, now: datetime,
          enrolled_by: str | None = None, referred_by: str | None = None) -> tuple[Member, bool]:
    """Enrol a member once; enrolling again is a no-op (a member enrolled already keeps the
    referrer it has). Returns (member, created). `referred_by`: the card of an enrolled member
    who referred this one (coalition/activities.py), checked only when it is enrolled now."""
    if (member := find(session, external_id)) is not None:
        return member, False
    referrer = None
    if referred_by is not None:
        referrer = find(session, referred_by) if referred_by != external_id else None
        if referrer is None:
            raise Problem("validation-error", "referred_by names no other enrolled member.",
                          errors=[{"pointer": "/referred_by",
                                   "detail": "Must be an enrolled member other than this one."}])
    try:
        with session.begin_nested():
            member = Member(external_id=external_id, created_at=now, enrolled_by=enrolled_by,
                            balance=0, debt=0, locked=False,
                            referred_by=referrer.id if referrer is not None else None)
            session.add(member)
        return member, True
    except IntegrityError:  # enrolled concurrently by another request
        return find(session, external_id), False


def balance(session: Session, external_id: str, *, now: datetime, tz: str,
            tiers: tuple[tiers_.Tier, ...] = ()) -> dict:
    """The member's balance as partners read it; with `tiers` (COALITION_TIERS), the tier."""
    member = find(session, external_id)
    if member is None:
        raise Problem("not-found", "No such member.")
    lots = session.execute(
        select(Lot.remaining, spendable(Lot, now), Lot.expires_at)
        .where(Lot.member_id == member.id, unspent(Lot, now))).all()
    spendable_points = pending = 0
    expiring: dict[datetime, int] = {}
    for remaining, can_spend, expires_at in lots:
        if can_spend:
            spendable_points += remaining
        else:
            pending += remaining
        expiring[as_utc(expires_at)] = expiring.get(as_utc(expires_at), 0) + remaining
    held = session.scalar(select(func.coalesce(func.sum(Hold.points), 0))
                          .where(Hold.member_id == member.id, held_now(Hold, now)))
    return {
        "member_id": external_id,
        "available": available(spendable_points, member.debt, int(held)),
        "pending": pending,
        "held": int(held),
        "tier": tiers_.of_member(session, tiers, member.id, now=now, tz=tz),
        "debt": member.debt,
        "expiring": [{"points": points, "expires_on": last_day_before(at, tz)}
                     for at, points in sorted(expiring.items())],
    }
