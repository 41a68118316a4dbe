"""Members' marketing consent, as partners record it when the member gives or withdraws it
(PUT /v1/members/{member_id}/consents).

A consent is about one marketing channel (`email`, `sms`, `post`, ... as the partner names it)
or, without a channel, about marketing in general. Every time one is recorded it is kept as a
row of its own, never changed: the history says which partner recorded what and when, which is
what a data-protection request or a complaint asks for. The consent in force for a channel is
its latest row; recording the same again is kept too (a renewed consent is evidence as well).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import Member, MemberConsent
from .problems import Problem

GENERAL = ""  # the channel column of a consent about marketing in general


def record(session: Session, external_id: str, *, marketing: bool, channel: str | None,
           partner_id: str, now: datetime) -> dict:
    """Record the member's consent (or its withdrawal); the consent as recorded."""
    member_id = session.scalar(select(Member.id).where(Member.external_id == external_id))
    if member_id is None:
        raise Problem("not-found", "No such member.")
    row = MemberConsent(member_id=member_id, channel=channel or GENERAL, marketing=marketing,
                        partner_id=partner_id, recorded_at=now)
    session.add(row)
    session.flush()
    return view(row, external_id)


def view(row: MemberConsent, card: str | None) -> dict:
    return {"member_id": card, "marketing": row.marketing, "channel": row.channel or None,
            "partner_id": row.partner_id, "recorded_at": row.recorded_at}


def in_force(session: Session, member: Member) -> list[dict]:
    """The consent in force per channel (general first), each its latest row."""
    latest = (select(func.max(MemberConsent.id)).where(MemberConsent.member_id == member.id)
              .group_by(MemberConsent.channel))
    rows = session.scalars(select(MemberConsent).where(MemberConsent.id.in_(latest))
                           .order_by(MemberConsent.channel))
    return [view(row, member.external_id) for row in rows]


def history(session: Session, member: Member) -> list[dict]:
    """Every consent recorded for the member, oldest first."""
    rows = session.scalars(select(MemberConsent).where(MemberConsent.member_id == member.id)
                           .order_by(MemberConsent.id))
    return [view(row, member.external_id) for row in rows]
