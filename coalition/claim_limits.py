"""Fraud limits on claims: per member, points redeemed per day and claims per minute; per
partner, points issued per day. Each is off unless configured (coalition/config.py); a claim
that would cross one is refused with 422 limit-exceeded naming the limit, and every hit is an
audit event (`member.limit-hit`, `partner.limit-hit`).

They are checked under the member's row lock, after everything else about the claim (its
replay, the member, its window, the PIN and the partner's redemption policy), so a refused
claim is refused for its limit alone. Only earns and burns count and can be refused:
reversals are corrections of what was booked, and refusing one would leave points wrong.

Counting reads the journal (no hot counter row): the member's entries, under the member's lock,
are exact; the partner's issued points are the sum over its earns of the day, read without a
partner lock, so earns of different members in flight at the same instant can overshoot the
limit by what is in flight (as the partner's redemption limit, coalition/redemption.py). That
sum reads every earn of the partner's day: a cap for small partners or a fraud brake, not a
setting for a partner with millions of earns a day.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import audit
from .models import Entry, Hold
from .periods import day_of
from .problems import Refusal
from .vocabulary import EntryKind, held_now

WINDOW = timedelta(minutes=1)
MEMBER_DAILY_REDEEM = "member-daily-redeem"
MEMBER_CLAIMS_PER_MINUTE = "member-claims-per-minute"
PARTNER_DAILY_ISSUE = "partner-daily-issue"


@dataclass(frozen=True)
class ClaimLimits:
    member_daily_redeem: int | None = None  # points a member may redeem per calendar day
    member_claims_per_minute: int | None = None  # earns and burns of a member per 60 s
    partner_daily_issue: int | None = None  # points a partner may issue per calendar day

    @classmethod
    def from_config(cls, config) -> ClaimLimits:
        return cls(config.get("MEMBER_DAILY_REDEEM_LIMIT"), config.get("MEMBER_CLAIMS_PER_MINUTE"),
                   config.get("PARTNER_DAILY_ISSUE_LIMIT"))


NO_LIMITS = ClaimLimits()


@dataclass
class Unwritten:
    """A batch's earns and burns planned but not yet written, which count as booked."""
    claims: Counter = field(default_factory=Counter)  # by member pk
    redeemed: Counter = field(default_factory=Counter)  # by member pk
    issued: int = 0  # the batch's partner's

    def add(self, member_pk: int, kind: str, points: int) -> None:
        self.claims[member_pk] += 1
        if kind == EntryKind.BURN:
            self.redeemed[member_pk] += points
        else:
            self.issued += points


def check(session: Session, limits: ClaimLimits, *, kind: str, member_pk: int, partner_id: str,
          points: int, now: datetime, tz: str, unwritten: Unwritten | None = None) -> None:
    """Raise the Refusal of an earn or burn that would cross a limit (audited). A hold
    (coalition/holds.py) is checked as a burn: the member's holds placed in the window count as
    claims, and those still open, placed today, as redeemed."""
    if limits == NO_LIMITS:
        return
    unwritten = unwritten or Unwritten()
    day, start, end = day_of(now, tz)
    if limits.member_claims_per_minute is not None:
        since = now - WINDOW
        recent = _count(Entry, Entry.member_id == member_pk, Entry.recorded_at > since,
                        Entry.kind.in_((EntryKind.EARN, EntryKind.BURN)))
        held = _count(Hold, Hold.member_id == member_pk, Hold.created_at > since)
        used = int(session.scalar(select(recent + held))) + unwritten.claims[member_pk]
        _within(session, MEMBER_CLAIMS_PER_MINUTE, limits.member_claims_per_minute, used, 1,
                subject=f"member-id:{member_pk}", now=now, window="60 s",
                detail=f"The member's limit of {limits.member_claims_per_minute} claims per "
                       f"minute would be exceeded: {used} in the last 60 seconds.")
    if kind == EntryKind.BURN and limits.member_daily_redeem is not None:
        burned = _sum(Entry, Entry.member_id == member_pk, Entry.kind == EntryKind.BURN,
                      Entry.recorded_at >= start, Entry.recorded_at < end)
        held = _sum(Hold, Hold.member_id == member_pk, held_now(Hold, now),
                    Hold.created_at >= start, Hold.created_at < end)
        used = int(session.scalar(select(burned + held))) + unwritten.redeemed[member_pk]
        _daily(session, MEMBER_DAILY_REDEEM, limits.member_daily_redeem, used, points,
               subject=f"member-id:{member_pk}", now=now, day=day.isoformat(), tz=tz,
               what="member's daily redemption", done="redeemed")
    if kind == EntryKind.EARN and limits.partner_daily_issue is not None:
        used = int(session.scalar(select(_sum(
            Entry, Entry.partner_id == partner_id, Entry.kind == EntryKind.EARN,
            Entry.recorded_at >= start, Entry.recorded_at < end)))) + unwritten.issued
        _daily(session, PARTNER_DAILY_ISSUE, limits.partner_daily_issue, used, points,
               subject=f"partner:{partner_id}", now=now, day=day.isoformat(), tz=tz,
               what="partner's daily issuing", done="issued")


def _daily(session: Session, limit: str, allowed: int, used: int, points: int, *,
           subject: str, now: datetime, day: str, tz: str, what: str, done: str) -> None:
    _within(session, limit, allowed, used, points, subject=subject, now=now, window=day,
            detail=f"The {what} limit of {allowed} points would be exceeded: {used} {done} "
                   f"today ({day}, {tz}), {points} requested.")


def _within(session: Session, limit: str, allowed: int, used: int, requested: int, *,
            subject: str, now: datetime, window: str, detail: str) -> None:
    if used + requested > allowed:
        _hit(session, limit, allowed, used, requested, subject=subject, now=now, window=window,
             detail=detail)


def _count(model, *where):
    return select(func.count()).select_from(model).where(*where).scalar_subquery()


def _sum(model, *where):
    return select(func.coalesce(func.sum(model.points), 0)).where(*where).scalar_subquery()


def _hit(session: Session, limit: str, allowed: int, used: int, requested: int, *, subject: str,
         now: datetime, window: str, detail: str) -> None:
    action = "partner.limit-hit" if subject.startswith("partner:") else "member.limit-hit"
    audit.record(session, actor=audit.SYSTEM, action=action, subject=subject, before=None,
                 after={"limit": limit, "allowed": allowed, "used": used,
                        "requested": requested, "window": window}, now=now)
    raise Refusal("limit-exceeded", f"{detail} (limit: {limit})")
