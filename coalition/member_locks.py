"""The operator's lock on a member (fraud controls): a locked member's points cannot be
redeemed (burns answer 403 member-locked, coalition/redemption.py), while earns still book, so
that nothing owed to the member is lost while the case is looked into.

Lock and unlock take the member's row lock, as every claim does: a burn in flight when the
lock is set completes first, every burn after it is refused. Both are audited with the
operator's reason (`member.lock`, `member.unlock`, subject member-id:<id>, as PIN events: the
card number never enters the append-only log). Locking a locked member, or unlocking an
unlocked one, changes nothing and records nothing.

This lock is apart from the PIN lock (coalition/pins.py) that five wrong PINs set: either one
refuses redemption, and each is lifted on its own.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit, pins
from .models import AuditEvent, Member
from .problems import Problem

MAX_REASON = 500
LOCK, UNLOCK = "member.lock", "member.unlock"


def _reason(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason or len(reason) > MAX_REASON or "\x00" in reason:
        raise Problem("validation-error", f"A reason is required: 1 to {MAX_REASON} characters, "
                                          "saying why (a case number, what was seen).")
    return reason


def _set(session: Session, external_id: str, locked: bool, reason: str, *, now: datetime,
         actor: str) -> tuple[Member, bool]:
    reason = _reason(reason)
    member = session.scalars(select(Member).where(Member.external_id == external_id)
                             .with_for_update().execution_options(populate_existing=True)
                             ).one_or_none()
    if member is None:
        raise Problem("not-found", "No such member.")
    if member.locked == locked:
        return member, False
    member.locked = locked
    audit.record(session, actor=actor, action=LOCK if locked else UNLOCK,
                 subject=pins.subject(member), before={"locked": not locked},
                 after={"locked": locked, "reason": reason}, now=now)
    return member, True


def lock(session: Session, external_id: str, reason: str, *, now: datetime,
         actor: str) -> tuple[Member, bool]:
    """Lock the member against redemption; (member, whether this changed anything)."""
    return _set(session, external_id, True, reason, now=now, actor=actor)


def unlock(session: Session, external_id: str, reason: str, *, now: datetime,
           actor: str) -> tuple[Member, bool]:
    return _set(session, external_id, False, reason, now=now, actor=actor)


def last_change(session: Session, member: Member) -> dict | None:
    """The latest lock or unlock of the member: when, by whom, why."""
    event = session.scalars(select(AuditEvent)
                            .where(AuditEvent.subject == pins.subject(member),
                                   AuditEvent.action.in_((LOCK, UNLOCK)))
                            .order_by(AuditEvent.id.desc()).limit(1)).one_or_none()
    if event is None:
        return None
    view = audit.event_view(event)
    return {"action": view["action"], "at": view["at"], "by": view["actor"],
            "reason": (view["after"] or {}).get("reason")}
