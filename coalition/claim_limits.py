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
from .models import Entry
from .periods import day_of
from .problems import Refusal
from .vocabulary import EntryKind

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
    """Raise the Refusal of an earn or burn that would cross a limit (audited)."""
    if limits == NO_LIMITS:
        return
    unwritten = unwritten or Unwritten()
    day, start, end = day_of(now, tz)
    if limits.member_claims_per_minute is not None:
        recent = _count(session, Entry.member_id == member_pk, Entry.recorded_at > now - WINDOW,
                        Entry.kind.in_((EntryKind.EARN, EntryKind.BURN)))
        used = recent + unwritten.claims[member_pk]
        if used + 1 > limits.member_claims_per_minute:
            _hit(session, MEMBER_CLAIMS_PER_MINUTE, limits.member_claims_per_minute, used, 1,
                 subject=f"member-id:{member_pk}", now=now, window="60 s",
                 detail=f"The member's limit of {limits.member_claims_per_minute} claims per "
                        f"minute would be exceeded: {used} in the last 60 seconds.")
    if kind == EntryKind.BURN and limits.member_daily_redeem is not None:
        used = _sum(session, Entry.member_id == member_pk, Entry.kind == EntryKind.BURN,
                    Entry.recorded_at >= start, Entry.recorded_at < end)
        used += unwritten.redeemed[member_pk]
        if used + points > limits.member_daily_redeem:
            _hit(session, MEMBER_DAILY_REDEEM, limits.member_daily_redeem, used, points,
                 subject=f"member-id:{member_pk}", now=now, window=day.isoformat(),
                 detail=f"The member's daily redemption limit of {limits.member_daily_redeem} "
                        f"points would be exceeded: {used} redeemed today ({day.isoformat()}, "
                        f"{tz}), {points} requested.")
    if kind == EntryKind.EARN and limits.partner_daily_issue is not None:
        used = _sum(session, Entry.partner_id == partner_id, Entry.kind == EntryKind.EARN,
                    Entry.recorded_at >= start, Entry.recorded_at < end) + unwritten.issued
        if used + points > limits.partner_daily_issue:
            _hit(session, PARTNER_DAILY_ISSUE, limits.partner_daily_issue, used, points,
                 subject=f"partner:{partner_id}", now=now, window=day.isoformat(),
                 detail=f"The partner's daily issuing limit of {limits.partner_daily_issue} "
                        f"points would be exceeded: {used} issued today ({day.isoformat()}, "
                        f"{tz}), {points} requested.")


def _count(session: Session, *where) -> int:
    return int(session.scalar(select(func.count()).select_from(Entry).where(*where)))


def _sum(session: Session, *where) -> int:
    return int(session.scalar(select(func.coalesce(func.sum(Entry.points), 0)).where(*where)))


def _hit(session: Session, limit: str, allowed: int, used: int, requested: int, *, subject: str,
         now: datetime, window: str, detail: str) -> None:
    action = "partner.limit-hit" if subject.startswith("partner:") else "member.limit-hit"
    audit.record(session, actor=audit.SYSTEM, action=action, subject=subject, before=None,
                 after={"limit": limit, "allowed": allowed, "used": used,
                        "requested": requested, "window": window}, now=now)
    raise Refusal("limit-exceeded", f"{detail} (limit: {limit})")
