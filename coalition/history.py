"""A member's history across every partner, for the operator (`flask members show`).

Partners see only their own claims (GET /v1/claims); the operator sees all of a member's.
The history says what was booked, not what the balance is: the balance comes from
`members.balance`, which knows about pending points, expiry and debt.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from .errors import Problem
from .fields import iso_utc
from .members import find
from .models import Entry


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
