"""How campaigns, coupons and tier multipliers performed, for the operator console: the bonus
points each gave, what reversals took back of them, what members redeemed of them, what expired,
and what is still held; by funder and month, for pricing as settlement charges it.

Everything is read from the lots the bonuses were booked as (coalition/ledger.py): an earn's
bonus is a lot of its funder with `source` campaign:<id>, coupon:<id> or tier:<name>.
- issued: the lots' points, in the month of the earn that booked them;
- reversed: what reversals of those earns took back of the bonus, by the ledger's own share rule
  (`ledger._share`, cumulative over the earn's reversals), in the month of each reversal, as a
  statement counts a funder's bonus_points_issued (net of reversals) by the month of each
  posting;
- redeemed: what burns took from the lots, net of burn reversals (consumptions burn and
  burn_reversal); debt_filled: what paid off a member's debt (debt_fill); expired: what expired
  unspent (expiry, net of what a reversal gave back to breakage); remaining: what the lots still
  hold.
Read-only, nothing stored.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from .ledger import _share
from .models import Consumption, Entry, Lot
from .vocabulary import ConsumptionKind


@dataclass
class Performance:
    source: str  # campaign:<id>, coupon:<id> or tier:<name>
    earns: int = 0  # lots booked (one per qualifying earn and funder)
    issued: int = 0
    reversed: int = 0
    redeemed: int = 0
    debt_filled: int = 0
    expired: int = 0
    remaining: int = 0
    # (funder, period) -> bonus points net of reversals booked in that month
    by_funder_month: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))

    @property
    def net(self) -> int:
        """Bonus points issued less what reversals took back."""
        return self.issued - self.reversed

    def cost_cents(self, charge) -> int:
        """What the funders pay for these points: `charge(funder, period, points)` is the
        settlement's bonus issuance charge of that many points in that month."""
        return sum(charge(funder, period, points)
                   for (funder, period), points in sorted(self.by_funder_month.items()) if points)


def performance(session: Session, sources: list[str] | None = None) -> dict[str, Performance]:
    """Performance by source: of the given sources (each present, zero if nothing was booked
    under it), or of every source any lot names."""
    found: dict[str, Performance] = {s: Performance(s) for s in sources or ()}

    def of(source: str) -> Performance:
        return found.setdefault(source, Performance(source))

    scope = Lot.source.in_(sources) if sources is not None else Lot.source.is_not(None)
    if sources is not None and not sources:
        return found
    for source, funder, period, count, points, remaining in session.execute(
            select(Lot.source, Lot.issuer_id, Entry.period, func.count(Lot.id),
                   func.sum(Lot.points), func.sum(Lot.remaining))
            .join(Entry, Entry.id == Lot.entry_id).where(scope)
            .group_by(Lot.source, Lot.issuer_id, Entry.period)):
        row = of(source)
        row.earns += int(count)
        row.issued += int(points)
        row.remaining += int(remaining)
        row.by_funder_month[funder, period] += int(points)

    # Reversals: only the lots whose earn was reversed, each reversal's share in its own month.
    earn, reversal = aliased(Entry), aliased(Entry)
    given_back: dict[int, int] = defaultdict(int)  # lot id -> the earn's points reversed so far
    for lot_id, source, funder, bonus, of_points, points, period in session.execute(
            select(Lot.id, Lot.source, Lot.issuer_id, Lot.points, earn.points, reversal.points,
                   reversal.period)
            .join(earn, earn.id == Lot.entry_id)
            .join(reversal, reversal.reverses_id == earn.id).where(scope)
            .order_by(Lot.id, reversal.id)):
        already = given_back[lot_id]
        part = _share(bonus, already + points, of_points) - _share(bonus, already, of_points)
        given_back[lot_id] = already + points
        row = of(source)
        row.reversed += part
        row.by_funder_month[funder, period] -= part

    for source, kind, points in session.execute(
            select(Lot.source, Consumption.kind, func.sum(Consumption.points))
            .join(Lot, Lot.id == Consumption.lot_id).where(scope)
            .group_by(Lot.source, Consumption.kind)):
        row, points = of(source), int(points)
        if kind in (ConsumptionKind.BURN, ConsumptionKind.BURN_REVERSAL):
            row.redeemed += points
        elif kind == ConsumptionKind.DEBT_FILL:
            row.debt_filled += points
        elif kind == ConsumptionKind.EXPIRY:
            row.expired += points
    return found
