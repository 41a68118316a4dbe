"""Everything the service holds about one member, as one JSON document: the answer to a data
subject's request for access (GDPR Art. 15), `flask members export ID`.

What is in it: the member row (card number, when and by whom enrolled, the operator's lock,
the PIN's state but never the PIN or its hash, the portal sign-in's state: whether a password
is set or a one-time code pending, failures, a lock-out, but never a hash), the balance as
partners read it, every claim of every partner, the lots and debt lots the claims left, the
holds partners placed on the member's points, the marketing consents with their history, the
balance reads and card lookups partners made (kept briefly for the harvesting
watch), and the audit events about the member. Exporting is itself audited (`member.export`).
"""
from __future__ import annotations

from datetime import datetime
from typing import Callable

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from . import audit, consents, credentials, holds, members, pins
from .clock import iso_utc
from .history import member_history
from .models import AuditEvent, DebtLot, Lot, Member
from .problems import Problem

FORMAT = "coalition.member-export/1"


def export(session: Session, external_id: str, *, now: datetime, tz: str, actor: str,
           more: dict[str, Callable[[Session, Member], list]] | None = None,
           tiers: tuple = ()) -> dict:
    """The member's data. `more`: sections that other packages keep about members (the
    partners package: the lookups), by name, each a function of the session and the member
    giving JSON-able rows (app.extensions["member_data"])."""
    member = members.find(session, external_id)
    if member is None:
        raise Problem("not-found", "No such member.")
    document = {
        "format": FORMAT, "exported_at": iso_utc(now),
        "member": {"member_id": member.external_id, "enrolled_at": iso_utc(member.created_at),
                   "enrolled_by": member.enrolled_by, "locked": member.locked,
                   **pins.pin_state(member),
                   "sign_in": credentials.state(
                       credentials.stored(session, credentials.member_key(member.id)), now)},
        "balance": members.balance(session, external_id, now=now, tz=tz, tiers=tiers),
        "claims": list(reversed(member_history(session, external_id))),  # oldest first
        "lots": [_lot(lot) for lot in session.scalars(
            select(Lot).where(Lot.member_id == member.id).order_by(Lot.id))],
        "debt_lots": [{"creditor": d.creditor_id, "points": d.points, "remaining": d.remaining}
                      for d in session.scalars(select(DebtLot).where(DebtLot.member_id == member.id)
                                               .order_by(DebtLot.id))],
        "holds": holds.of_member(session, member.id, now),
        "consents": consents.history(session, member),
        "audit_events": [_event(e) for e in _events(session, member)],
        **{name: rows(session, member) for name, rows in sorted((more or {}).items())},
    }
    audit.record(session, actor=actor, action="member.export", subject=pins.subject(member),
                 before=None, after={"claims": len(document["claims"])}, now=now)
    return document


def _lot(lot: Lot) -> dict:
    return {"issuer": lot.issuer_id, "points": lot.points, "remaining": lot.remaining,
            "occurred_at": iso_utc(lot.occurred_at),
            "available_at": iso_utc(lot.available_at) if lot.available_at else None,
            "expires_at": iso_utc(lot.expires_at)}


def _events(session: Session, member: Member) -> list[AuditEvent]:
    subjects = [pins.subject(member), audit.enrolment_subject(member.external_id)]
    return list(session.scalars(select(AuditEvent).where(or_(
        *(AuditEvent.subject == s for s in subjects))).order_by(AuditEvent.id)))


def _event(event: AuditEvent) -> dict:
    view = audit.event_view(event)
    return {name: view[name] for name in ("at", "actor", "action", "before", "after")}
