"""A partner's use of the coalition month by month, for the operator console: its claims, and
the points it issued and that were redeemed at it, counted from the journal as a month's
statement counts them (settlement/service.month_flows): an entry belongs to the month it was
booked into (`period`, a late claim to the month after the last closed one), points issued
are earns less reversals of earns, points redeemed burns less reversals of burns. A closed
month's figures here equal its statement's claims, points_issued and points_redeemed."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from coalition.models import Entry
from coalition.vocabulary import EntryKind


@dataclass(frozen=True)
class MonthUsage:
    period: str
    claims: int
    late_claims: int
    points_issued: int
    points_redeemed: int


def by_month(session: Session, partner_id: str, *, first: str | None = None,
             last: str | None = None) -> list[MonthUsage]:
    """The partner's months with any claim, oldest first, within [first, last] if given."""
    target = aliased(Entry)
    query = (select(Entry.period, Entry.kind, target.kind, Entry.late, func.count(Entry.id),
                    func.sum(Entry.points))
             .outerjoin(target, target.id == Entry.reverses_id)
             .where(Entry.partner_id == partner_id)
             .group_by(Entry.period, Entry.kind, target.kind, Entry.late))
    if first is not None:
        query = query.where(Entry.period >= first)
    if last is not None:
        query = query.where(Entry.period <= last)
    months: dict[str, dict[str, int]] = {}
    for period, kind, target_kind, late, count, points in session.execute(query):
        month = months.setdefault(period, dict.fromkeys(
            ("claims", "late_claims", "points_issued", "points_redeemed"), 0))
        month["claims"] += count
        month["late_claims"] += count if late else 0
        points = int(points or 0)
        reverses = target_kind if kind == EntryKind.REVERSAL else None
        if kind == EntryKind.EARN or reverses == EntryKind.EARN:
            month["points_issued"] += points if kind == EntryKind.EARN else -points
        elif kind == EntryKind.BURN or reverses == EntryKind.BURN:
            month["points_redeemed"] += points if kind == EntryKind.BURN else -points
    return [MonthUsage(period, **figures) for period, figures in sorted(months.items())]
