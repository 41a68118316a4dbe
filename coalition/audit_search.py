"""Searching the audit log for the operator console: events filtered by actor, action, subject
and a time range, newest first, a page at a time.

The filters mean what `flask audit list` means by them (coalition/audit.py, `events`): an
action matches itself and the actions below it ("partner.key" finds partner.key.add), a
subject is matched exactly. An actor is matched exactly too ("operator:ann", "system",
"partner:acme"). The range is half-open, [since, until), so that consecutive ranges never
count an event twice. Read-only: searching is not itself audited.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from .audit import event_view
from .clock import as_utc
from .models import AuditEvent

MAX_PER_PAGE = 200


@dataclass(frozen=True)
class Found:
    events: list[dict]  # audit.event_view of each, newest first
    total: int  # events matching in all
    page: int  # the page shown (1-based, within 1..pages)
    pages: int


def search(session: Session, *, actor: str | None = None, action: str | None = None,
           subject: str | None = None, since: datetime | None = None,
           until: datetime | None = None, page: int = 1, per_page: int = 50) -> Found:
    """One page of the events matching every filter given (None or "": no filter), newest
    first (by id: the chain's order, which is the order they were written in). A page past the
    last is the last."""
    per_page = max(1, min(per_page, MAX_PER_PAGE))
    conditions = []
    if actor:
        conditions.append(AuditEvent.actor == actor)
    if subject:
        conditions.append(AuditEvent.subject == subject)
    if action:
        conditions.append(or_(AuditEvent.action == action,  # substr: exact on both dialects
                              func.substr(AuditEvent.action, 1, len(action) + 1) == action + "."))
    if since is not None:
        conditions.append(AuditEvent.at >= as_utc(since))
    if until is not None:
        conditions.append(AuditEvent.at < as_utc(until))
    total = int(session.scalar(select(func.count(AuditEvent.id)).where(*conditions)) or 0)
    pages = max(1, -(-total // per_page))
    page = min(max(page, 1), pages)
    rows = session.scalars(select(AuditEvent).where(*conditions)
                           .order_by(AuditEvent.id.desc())
                           .offset((page - 1) * per_page).limit(per_page))
    return Found([event_view(e) for e in rows], total, page, pages)


def actors(session: Session, limit: int = 200) -> list[str]:
    """The actors the log names, for a filter's choices: the most recent first."""
    latest = func.max(AuditEvent.id)
    return list(session.scalars(select(AuditEvent.actor).group_by(AuditEvent.actor)
                                .order_by(latest.desc()).limit(limit)))


def actions(session: Session) -> list[str]:
    """Every action the log holds, sorted."""
    return list(session.scalars(select(AuditEvent.action).distinct().order_by(AuditEvent.action)))
