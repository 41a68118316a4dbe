"""Erasing a member (GDPR Art. 17), `flask members erase ID`: the service forgets who the member
was, and keeps the books it must keep.

What goes, in one transaction: the card number (members.external_id becomes NULL: no card can
ever match the member again, and NULL is no card number a partner could send, unlike any text
tombstone the id pattern allows), the PIN hash with its counters, the portal sign-in (the
credential row: password hash, pending one-time code, failure count; coalition/credentials.py),
the marketing consents with their history, the member's open holds (voided: no partner could
capture them once the card is gone; the holds stay, they hold no personal data), what other
packages keep about the card (the partners' lookups, registered in
app.extensions["member_erasure"]), and the card in the audit log: the events about the member
that name or quote it are redacted (coalition/audit.py, `redact`), vouched for by the
`member.erase` event, so the chain still verifies.

What stays, and why: the member row as the account the journal books to (member-id:<id>, its
balance, debt, lots and debt lots), with `erased_at` set, and every journal entry. Entries,
sealed blocks and closed months' statements are hashed over them and name the member only by
the internal id, so `ledger verify` stays clean and every closed month re-derives to the same
digests. A claim's fingerprint is a SHA-256 over the request, card number included: it is kept
(the entry's hash covers it), so whoever already holds a card number could test it against the
journal, but the card cannot be read back from it.

The erased member's points stay on the books as a liability until they expire (`points
expire` works by lot, not by card); no burn can reach them, as no card matches. A partner can
still reverse a claim of the erased member (reversals name the claim, not the card). The same
card enrolled again is a new, empty member: nothing links it to the erased one.

An erased member cannot be erased again, nor told apart from a card never enrolled: both are
not-found, since the card is no longer held anywhere.
"""
from __future__ import annotations

from datetime import datetime
from typing import Callable

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from . import audit, credentials, ledger, pins
from .clock import iso_utc
from .holds import VOIDED
from .models import AuditEvent, Hold, Member, MemberConsent
from .problems import Problem
from .vocabulary import held_now

# What another package erases about a member: (session, member, card) -> rows deleted.
Eraser = Callable[[Session, Member, str], int]


def erase(session: Session, external_id: str, *, now: datetime, actor: str,
          more: dict[str, Eraser] | None = None) -> dict:
    """Erase the member whose card is `external_id`, in the caller's transaction (no commit).
    `more`: erasers of other packages by name (app.extensions["member_erasure"]). Returns what
    was done, naming the member by the internal id only."""
    # The ledger's order: the member's row lock, then the books held open, as every claim
    # takes them (a claim in flight for the member finishes first; one after finds no card).
    member = ledger.lock_member(session, external_id=external_id)
    if member is None:
        raise Problem("not-found", "No such member: the card number is not enrolled, or its "
                                   "member was erased (an erased card number is not kept).")
    card = member.external_id
    subject = pins.subject(member)
    events = list(session.scalars(select(AuditEvent).where(or_(
        AuditEvent.subject == audit.enrolment_subject(card), AuditEvent.subject == subject))
        .order_by(AuditEvent.id)))
    vouchers = audit.redact(session, events, card, subject=subject)
    consents = session.execute(delete(MemberConsent).where(MemberConsent.member_id == member.id)
                               .execution_options(synchronize_session=False)).rowcount
    # Open holds are released: no partner can capture them once the card is gone.
    holds_voided = session.execute(
        update(Hold).where(Hold.member_id == member.id, held_now(Hold, now))
        .values(status=VOIDED, closed_at=now).execution_options(synchronize_session=False)).rowcount
    credential = credentials.forget_member(session, member.id)
    removed = {name: eraser(session, member, card) for name, eraser in sorted((more or {}).items())}
    member.external_id = None
    member.pin_hash, member.pin_failures, member.pin_locked_at = None, 0, None
    member.erased_at = now
    session.flush()
    done = {"member": member.id, "erased_at": iso_utc(now), "redacted_events": len(vouchers),
            "consents_deleted": consents, "holds_voided": holds_voided,
            "credential_deleted": credential > 0, **{f"{name}_deleted": n for name, n in removed.items()},
            "points": member.balance, "points_owed": member.debt}
    audit.record(session, actor=actor, action=audit.ERASE, subject=subject,
                 before={"erased": False},
                 after={"erased": True, "redacted": vouchers,
                        **{k: v for k, v in done.items() if k not in ("member", "erased_at")}},
                 now=now)
    return done
