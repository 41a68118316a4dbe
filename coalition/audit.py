"""The audit log: who changed what, when, with the values before and after. Append-only.

Every operator action that changes state writes one `AuditEvent` in the same transaction as
the change, so a command that fails writes none. Events form a hash chain: each stores the
hash of the event before it and its own SHA-256 over a canonical encoding of its fields and
that previous hash, so editing or deleting a row breaks the chain (`ledger verify`, check
`audit-chain`). The database refuses UPDATE and DELETE on the table (triggers, migration 0003).

Unlike the journal (no per-write chain head on the claim path: coalition/sealer.py), the
audit log does take one lock per write: operator actions are rare, and claims write here only
on rare security events, never on success: the wrong PIN that locks a member's redemption
(`member.pin.lock`, coalition/pins.py) and a partner's first refused burn of the day over its
daily redemption limit (`partner.policy.limit-hit`, coalition/redemption.py). Both are written
by the request that is refused, in the transaction that records the refusal (problems.Refusal).

Limits, stated plainly: the chain detects edits and deletions inside it, not the removal of its
newest events (a tail cut leaves a shorter valid chain) nor a chain rewritten wholesale by
someone who can also drop the triggers; anchoring the head hash (`audit list --limit 1`)
somewhere outside the database catches both. Personal data: `member.add` names the member's
external id in `subject`; erasing a member would need a redaction scheme that keeps the chain
verifiable (future work, not done here). Later member events (`member.pin.*`) name the member
by the internal id only (`member-id:<id>`), as the journal does: once the member row is
erased they no longer point to a person.
"""
from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from .clock import as_utc, iso_utc
from .database import is_sqlite
from .hashing import canonical, sha256_hex
from .models import AuditEvent

GENESIS = "0" * 64  # prev_hash of the first event
AUDIT_LOCK = 0x41756469  # PostgreSQL advisory lock key of the chain head (BOOKS_LOCK differs)
SYSTEM = "system"  # actor of changes made by code rather than by an operator's command


def enrolment_subject(card: str | None) -> str:
    """The subject of `member.add`, the one event that names a member by card number."""
    return f"member:{card}"


def _json(value) -> str | None:
    return None if value is None else canonical(value).decode()


def event_hash(event: AuditEvent) -> str:
    return sha256_hex(canonical({
        "v": 1, "prev_hash": event.prev_hash,
        # Not iso_utc: the chain's hashes were taken over this text, microseconds always.
        "at": as_utc(event.at).isoformat(timespec="microseconds"),
        "actor": event.actor, "action": event.action, "subject": event.subject,
        "before": event.before, "after": event.after,
    }))


def record(session: Session, *, actor: str, action: str, subject: str, before, after,
           now: datetime) -> AuditEvent:
    """Append one event to the chain, in the caller's transaction. `before` and `after` are
    JSON-able views (None: did not exist / does not exist any more)."""
    assert actor and action and subject
    if not is_sqlite(session):  # on SQLite every transaction is BEGIN IMMEDIATE: serial already
        session.execute(select(func.pg_advisory_xact_lock(AUDIT_LOCK)))  # held until commit
    head = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
    event = AuditEvent(at=as_utc(now), actor=actor, action=action, subject=subject,
                       before=_json(before), after=_json(after), prev_hash=head or GENESIS)
    event.hash = event_hash(event)
    session.add(event)
    session.flush()
    return event


def record_once(session: Session, *, since: datetime, actor: str, action: str, subject: str,
                before, after, now: datetime) -> AuditEvent | None:
    """record(), unless an event of this action and subject exists at or after `since` (then
    None). Exact under concurrency: the second look runs under the chain's lock (PostgreSQL;
    SQLite has one writer), which a concurrent writer holds until it commits."""
    def exists() -> bool:
        return session.scalar(select(AuditEvent.id).where(
            AuditEvent.action == action, AuditEvent.subject == subject,
            AuditEvent.at >= as_utc(since)).limit(1)) is not None
    if exists():
        return None
    if not is_sqlite(session):
        session.execute(select(func.pg_advisory_xact_lock(AUDIT_LOCK)))
        if exists():
            return None
    return record(session, actor=actor, action=action, subject=subject, before=before,
                  after=after, now=now)


def events(session: Session, *, since: datetime | None = None, subject: str | None = None,
           action: str | None = None, limit: int = 100) -> list[AuditEvent]:
    """The newest `limit` events matching, oldest first. `action` matches itself and the
    actions below it: "partner.key" finds partner.key.add and partner.key.revoke."""
    query = select(AuditEvent)
    if since is not None:
        query = query.where(AuditEvent.at >= as_utc(since))
    if subject is not None:
        query = query.where(AuditEvent.subject == subject)
    if action is not None:
        query = query.where(or_(AuditEvent.action == action,  # substr: exact on both dialects
                                func.substr(AuditEvent.action, 1, len(action) + 1) == action + "."))
    rows = session.scalars(query.order_by(AuditEvent.id.desc()).limit(limit)).all()
    return list(reversed(rows))


def event_view(event: AuditEvent) -> dict:
    return {"id": event.id, "at": iso_utc(event.at),
            "actor": event.actor, "action": event.action, "subject": event.subject,
            "before": None if event.before is None else json.loads(event.before),
            "after": None if event.after is None else json.loads(event.after),
            "prev_hash": event.prev_hash, "hash": event.hash}


def verify_chain(session: Session, fail) -> int:
    """For `ledger verify`: every event follows the one before it and hashes to its hash."""
    expected, count = GENESIS, 0
    for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id)).yield_per(1000):
        count += 1
        if event.prev_hash != expected:
            fail("audit-chain", "event does not follow the event before it (an event was "
                 "removed, inserted or reordered)", audit_event=event.id)
        elif event_hash(event) != event.hash:
            fail("audit-chain", "event differs from what was hashed", audit_event=event.id)
        expected = event.hash
    return count
