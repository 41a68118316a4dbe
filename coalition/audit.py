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
external id in `subject`; later member events (`member.pin.*`, `member.lock`, ...) name the
member by the internal id only (`member-id:<id>`), as the journal does, though an operator's
free-text reason may quote a card number.

Redaction (member erasure, coalition/member_erasure.py): `redact` rewrites the subject, before
or after of the events about an erased member that hold the card number, and returns for each
rewritten event a voucher, the SHA-256 of the row as it now stands (its unchanged hash and
prev_hash included). The `member.erase` event records the vouchers in its `after`, so they are
chained like any other event. `verify_chain` checks a vouched event against its voucher instead
of its hash (which covered the text now gone): its place in the chain, its hash and every field
are still checked, and any later change to it fails. A rewrite no voucher covers fails as an
edit always did. Events written before redaction existed verify unchanged (there is one hash
version). What stays: a redacted event's hash is a SHA-256 over the card and fields still
visible, so whoever already holds a card number can test it against that hash, as against the
journal's claim fingerprints; it cannot be read back from them.
"""
from __future__ import annotations

import json
import re
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


# --- redaction (member erasure) --------------------------------------------------------------

ERASE = "member.erase"  # the event whose `after` lists the vouchers of the events it redacted
REDACTED = "[erased]"  # what a redacted before or after holds (as JSON)


def redaction_digest(event: AuditEvent) -> str:
    """SHA-256 of the whole row as it stands, hash and prev_hash included: a voucher."""
    return sha256_hex(canonical({
        "id": event.id, "at": as_utc(event.at).isoformat(timespec="microseconds"),
        "actor": event.actor, "action": event.action, "subject": event.subject,
        "before": event.before, "after": event.after, "prev_hash": event.prev_hash,
        "hash": event.hash}))


def redact(session: Session, events: list[AuditEvent], card: str, *, subject: str) -> list[dict]:
    """Remove `card` from these events, in the caller's transaction: a subject naming it becomes
    `subject`, a before or after quoting it becomes REDACTED (the whole value: a free-text reason
    around a card number may say more about its holder). The card is matched as a word (not
    inside a longer run of letters and digits); a short card number can take more with it, which
    errs on the side of erasing. Returns the vouchers of the events it changed, for the
    `member.erase` event's `after`."""
    word = re.compile(rf"(?<![A-Za-z0-9]){re.escape(card)}(?![A-Za-z0-9])")
    vouchers = []
    for event in events:
        fields = []
        if event.subject != subject and word.search(event.subject):
            event.subject = subject
            fields.append("subject")
        for name in ("before", "after"):
            value = getattr(event, name)
            if value is not None and word.search(value):
                setattr(event, name, _json(REDACTED))
                fields.append(name)
        if fields:
            # Only these columns are written: the triggers refuse an UPDATE of any other
            # (migration 0013).
            session.flush()
            vouchers.append({"event": event.id, "fields": fields,
                             "digest": redaction_digest(event)})
    return vouchers


def _vouchers(session: Session) -> dict[int, tuple[int, str]]:
    """Event id -> (the erasure event that vouches for its redaction, the digest it vouches).
    An erasure event that does not parse is left to its own hash check to report."""
    vouched: dict[int, tuple[int, str]] = {}
    for erase_id, after in session.execute(select(AuditEvent.id, AuditEvent.after)
                                           .where(AuditEvent.action == ERASE)):
        try:
            for voucher in json.loads(after)["redacted"]:
                vouched[int(voucher["event"])] = (erase_id, str(voucher["digest"]))
        except (TypeError, ValueError, KeyError):
            continue
    return vouched


def verify_chain(session: Session, fail) -> int:
    """For `ledger verify`: every event follows the one before it and hashes to its hash, or,
    if it was redacted, is the row a later erasure event vouched for."""
    vouched = _vouchers(session)
    expected, count = GENESIS, 0
    for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id)).yield_per(1000):
        count += 1
        if event.prev_hash != expected:
            fail("audit-chain", "event does not follow the event before it (an event was "
                 "removed, inserted or reordered)", audit_event=event.id)
        elif event.id in vouched:
            by, digest = vouched[event.id]
            if by <= event.id or redaction_digest(event) != digest:
                fail("audit-chain", "redacted event differs from what its erasure vouched for",
                     audit_event=event.id)
        elif event_hash(event) != event.hash:
            fail("audit-chain", "event differs from what was hashed", audit_event=event.id)
        expected = event.hash
    return count
