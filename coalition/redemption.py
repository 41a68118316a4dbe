"""Whether a member may redeem points at a partner now: the member's locks, the member's PIN
where the partner's policy asks for it, and the partner's daily redemption limit.

`authorise` is the one check. `ledger.book_burn` calls it with the member's row locked, after
the claim's idempotent replay and its time window and before it looks at the member's points;
placing a hold (coalition/holds.py) calls it the same way before it reserves anything.

The daily limit sums the points of the partner's burns booked (recorded_at) on the current
calendar day in the coalition's time zone, across all members, and of its open holds placed
that day (a hold's points count as redeemed until it is voided or lapses; once captured, its
burn counts); a burn or hold that would cross it is refused (422 limit-exceeded). Reversals do not give the allowance back. There is no lock per
partner (partner-side accounts keep no hot row, README "The ledger in ten lines", rule 9), so
burns of different members at one partner that are in flight at the same instant each see the
sum without the others: the limit can be overshot by what is in flight at once, at most the
points of the burns that run concurrently (bounded by the number of workers and connections).
The first refused burn of a partner per day is audited (`partner.policy.limit-hit`); later
ones that day are not, to keep the audit log small.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from . import audit, pins
from .models import BURNS, Entry, Hold, Member
from .periods import day_of
from .problems import Problem, Refusal
from .vocabulary import held_now


@dataclass(frozen=True)
class RedeemPolicy:
    """A partner's redemption policy, as plain values (the partners package stores it)."""
    pin_above: int | None = None    # None: no PIN asked; N: a burn of more than N points needs it
    daily_limit: int | None = None  # None: no limit; N: points burned per calendar day

    def needs_pin(self, points: int) -> bool:
        return self.pin_above is not None and points > self.pin_above


NO_POLICY = RedeemPolicy()


@dataclass
class Grant:
    """An authorised redemption. `done()` once it is booked: a correct PIN resets the member's
    failure count (and is hashed again if its cost parameters are out of date)."""
    member: Member
    pin: str | None
    log_n: int

    def done(self) -> None:
        if self.pin is not None:
            pins.confirmed(self.member, self.pin, log_n=self.log_n)


def authorise(session: Session, member: Member, *, partner_id: str, points: int,
              policy: RedeemPolicy, member_pin: str | None, now: datetime, tz: str,
              log_n: int = pins.DEFAULT_LOG_N, redeemed_unwritten: int = 0) -> Grant:
    """Raise the Problem that refuses this redemption, or return its Grant. The member's row
    must be locked (ledger.lock_member). Order: the operator's lock, the PIN lock, the PIN
    (when the policy asks for one at this many points), the daily limit. `redeemed_unwritten`:
    the partner's points redeemed in this transaction and not yet written (a batch's burns)."""
    if member.locked:
        raise Problem("member-locked", "This member is locked: no points can be redeemed.")
    if member.pin_locked_at is not None:
        raise Problem("member-locked", pins.PIN_LOCKED)
    checked = None
    if policy.needs_pin(points):
        pins.check_pin(session, member, member_pin, partner_id=partner_id, now=now)
        checked = member_pin
    if policy.daily_limit is not None:
        check_daily_limit(session, partner_id, points, policy.daily_limit, now=now, tz=tz,
                          redeemed_unwritten=redeemed_unwritten)
    return Grant(member, checked, log_n)


def redeemed_on_day(session: Session, partner_id: str, *, now: datetime, tz: str) -> int:
    """Points of the partner's burns booked, and of its holds placed and still open, on the
    calendar day (in `tz`) of `now`."""
    _, start, end = day_of(now, tz)
    burned = (select(func.coalesce(func.sum(Entry.points), 0))
              # A literal, not a bind parameter: a prepared statement's generic plan can then
              # still use the partial index ix_journal_entries_burns (WHERE kind = 'burn').
              .where(Entry.partner_id == partner_id, text(f"journal_entries.{BURNS}"),
                     Entry.recorded_at >= start, Entry.recorded_at < end).scalar_subquery())
    held = (select(func.coalesce(func.sum(Hold.points), 0))
            .where(Hold.partner_id == partner_id, held_now(Hold, now),
                   Hold.created_at >= start, Hold.created_at < end).scalar_subquery())
    return int(session.scalar(select(burned + held)))


def check_daily_limit(session: Session, partner_id: str, points: int, limit: int, *,
                      now: datetime, tz: str, redeemed_unwritten: int = 0) -> None:
    redeemed = redeemed_on_day(session, partner_id, now=now, tz=tz) + redeemed_unwritten
    if redeemed + points <= limit:
        return
    day, start, _ = day_of(now, tz)
    recorded = audit.record_once(
        session, since=start, actor=audit.SYSTEM, action="partner.policy.limit-hit",
        subject=f"partner:{partner_id}", before=None,
        after={"day": day.isoformat(), "daily_redeem_limit": limit, "redeemed": redeemed,
               "requested": points}, now=now)
    problem = Refusal if recorded is not None else Problem
    raise problem("limit-exceeded",
                  f"The partner's daily redemption limit of {limit} points would be exceeded: "
                  f"{redeemed} points redeemed here today ({day.isoformat()}, {tz}), "
                  f"{points} requested.")
