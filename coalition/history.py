"""Histories: a member's across every partner, for the operator (`flask members show`), and
a partner's own claims, page by page (GET /v1/claims).

A history says what was booked, not what the balance is: the balance comes from
`members.balance`, which knows about pending points, expiry and debt.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, literal, select, tuple_
from sqlalchemy.orm import Session, aliased, selectinload

from .clock import as_utc, iso_utc
from .members import find
from .models import Entry, Member
from .problems import Problem
from .vocabulary import EntryKind


def member_history(session: Session, external_id: str, *, limit: int | None = None) -> list[dict]:
    """Every journal entry of the member, newest first (by recorded_at, then id).

    Each entry: claim_id, kind (earn | burn | reversal), partner_id, points (positive; the kind
    says the direction), occurred_at and recorded_at (RFC 3339, UTC), period (the month it was
    booked into), late (booked after its own month closed), status (as first answered:
    booked | pending; a reversal is its own entry, naming the claim it reverses in `reverses`),
    reverses (the reversed claim's claim_id, else None), description.
    `limit` keeps the newest `limit` entries. An unknown member is a not-found Problem.
    """
    member = find(session, external_id)
    if member is None:
        raise Problem("not-found", "No such member.")
    target = aliased(Entry)
    query = (select(Entry, target.claim_id)
             .outerjoin(target, target.id == Entry.reverses_id)
             .where(Entry.member_id == member.id)
             .order_by(Entry.recorded_at.desc(), Entry.id.desc()))
    if limit is not None:
        query = query.limit(limit)
    return [{"claim_id": entry.claim_id, "kind": entry.kind, "partner_id": entry.partner_id,
             "points": entry.points, "occurred_at": iso_utc(entry.occurred_at),
             "recorded_at": iso_utc(entry.recorded_at), "period": entry.period,
             "late": entry.late, "status": entry.status, "reverses": reversed_claim,
             "description": entry.description}
            for entry, reversed_claim in session.execute(query)]


@dataclass(frozen=True)
class Listed:
    entry: Entry
    reversals_total: int
    reversed_points: int


def partner_claims(session: Session, partner_id: str, *, limit: int,
                   after: tuple[datetime, int] | None = None, member_id: str | None = None,
                   period: str | None = None, kind: str | None = None,
                   since: datetime | None = None,
                   until: datetime | None = None) -> tuple[list[Listed], tuple[datetime, int] | None]:
    """One page of the partner's own claims, newest first, and the key to continue after it.

    Ordered by (recorded_at, id) descending, a key no claim ever changes: `after` (the last
    key of the previous page) continues exactly where that page ended, so no claim shows up
    twice or is skipped when claims arrive between pages (those sort before the first page).
    `since` is inclusive, `until` exclusive, both on recorded_at. A member_id that names no
    member matches nothing (it is not an error: the answer says nothing about which cards
    exist). Each claim comes with the count and points of all its reversals. The next key is
    None on the last page.
    """
    query = select(Entry).where(Entry.partner_id == partner_id)
    if member_id is not None:
        query = query.where(Entry.member_id == select(Member.id)
                            .where(Member.external_id == member_id).scalar_subquery())
    if period is not None:
        query = query.where(Entry.period == period)
    if kind is not None:
        query = query.where(Entry.kind == kind)
    if since is not None:
        query = query.where(Entry.recorded_at >= since)
    if until is not None:
        query = query.where(Entry.recorded_at < until)
    if after is not None:
        recorded_at, entry_id = after
        query = query.where(tuple_(Entry.recorded_at, Entry.id)
                            < tuple_(literal(recorded_at, Entry.recorded_at.type),
                                     literal(entry_id, Entry.id.type)))
    entries = list(session.scalars(
        query.options(selectinload(Entry.reverses))
        .order_by(Entry.recorded_at.desc(), Entry.id.desc()).limit(limit + 1)))
    more = len(entries) > limit
    entries = entries[:limit]
    reversals = {target: (int(count), int(points)) for target, count, points in session.execute(
        select(Entry.reverses_id, func.count(), func.sum(Entry.points))
        .where(Entry.reverses_id.in_([e.id for e in entries if e.kind != EntryKind.REVERSAL]))
        .group_by(Entry.reverses_id))} if entries else {}
    page = [Listed(e, *reversals.get(e.id, (0, 0))) for e in entries]
    last = entries[-1] if more else None
    return page, (as_utc(last.recorded_at), last.id) if last is not None else None
