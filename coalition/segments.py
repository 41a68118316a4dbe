"""Segments: groups of members the operator defines by one of a few documented rules, never by
free SQL, so that what a segment means can be read off its row and checked for one member
quickly (offers ask it member by member):

- `active-at` PARTNER, DAYS: the member has an earn or burn at PARTNER that occurred in the last
  DAYS days;
- `earned-at-least` POINTS, DAYS: the member earned at least POINTS points (any partner, net of
  nothing: the earns' points) that occurred in the last DAYS days;
- `inactive` DAYS: the member has no earn or burn at all that occurred in the last DAYS days.

Offers targeted by a segment go only to members with marketing consent (coalition/offers.py).
"""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from . import audit
from .clock import iso_utc
from .models import Entry, Segment
from .problems import Problem
from .vocabulary import MAX_POINTS, EntryKind

ACTIVE_AT, EARNED_AT_LEAST, INACTIVE = "active-at", "earned-at-least", "inactive"
RULES = (ACTIVE_AT, EARNED_AT_LEAST, INACTIVE)
MAX_DAYS = 3660


def add(session: Session, segment_id: str, *, name: str, rule: str, days: int,
        issuers: set[str], now: datetime, partner_id: str | None = None,
        points: int | None = None, actor: str = audit.SYSTEM) -> Segment:
    """Define a segment (audited `segment.add`); its rule is fixed from then on."""
    if session.get(Segment, segment_id) is not None:
        raise Problem("validation-error", f"Segment {segment_id!r} exists already.")
    if not name.strip() or len(name.strip()) > 200:
        raise Problem("validation-error", "A segment needs a name of 1 to 200 characters.")
    if rule not in RULES:
        raise Problem("validation-error", f"A segment's rule is one of {', '.join(RULES)}.")
    if not 1 <= days <= MAX_DAYS:
        raise Problem("validation-error", f"--days must be 1 to {MAX_DAYS}.")
    if (partner_id is not None) != (rule == ACTIVE_AT):
        raise Problem("validation-error", f"--partner goes with the {ACTIVE_AT} rule, and only "
                                          "with it.")
    if partner_id is not None and partner_id not in issuers:
        raise Problem("validation-error", f"No such partner: {partner_id}.")
    if (points is not None) != (rule == EARNED_AT_LEAST) or \
            (points is not None and not 1 <= points <= MAX_POINTS):
        raise Problem("validation-error", f"--points (1 to {MAX_POINTS}) goes with the "
                                          f"{EARNED_AT_LEAST} rule, and only with it.")
    segment = Segment(id=segment_id, name=name.strip(), rule=rule, partner_id=partner_id,
                      days=days, points=points, created_at=now)
    session.add(segment)
    session.flush()
    audit.record(session, actor=actor, action="segment.add", subject=f"segment:{segment_id}",
                 before=None, after=view(segment), now=now)
    return segment


def get(session: Session, segment_id: str) -> Segment:
    segment = session.get(Segment, segment_id)
    if segment is None:
        raise Problem("not-found", f"No segment {segment_id!r}.")
    return segment


def listed(session: Session) -> list[Segment]:
    return list(session.scalars(select(Segment).order_by(Segment.id)))


def contains(session: Session, segment: Segment, member_pk: int, *, now: datetime) -> bool:
    """Whether the member is in the segment at `now`."""
    since = now - timedelta(days=segment.days)
    recent = (Entry.member_id == member_pk, Entry.occurred_at > since, Entry.occurred_at <= now)
    claims = Entry.kind.in_((EntryKind.EARN, EntryKind.BURN))
    if segment.rule == ACTIVE_AT:
        return bool(session.scalar(select(exists().where(
            *recent, claims, Entry.partner_id == segment.partner_id))))
    if segment.rule == INACTIVE:
        return not session.scalar(select(exists().where(*recent, claims)))
    earned = session.scalar(select(func.coalesce(func.sum(Entry.points), 0))
                            .where(*recent, Entry.kind == EntryKind.EARN))
    return int(earned) >= segment.points


def view(segment: Segment) -> dict:
    return {"id": segment.id, "name": segment.name, "rule": segment.rule,
            "partner_id": segment.partner_id, "days": segment.days, "points": segment.points,
            "created_at": iso_utc(segment.created_at)}
