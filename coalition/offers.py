"""What a member can use now (GET /v1/members/{id}/offers): the campaigns running now that
would give the member a bonus somewhere, and the coupons running now, each with whether the
member has activated it and used it.

A campaign qualifies the member by tier (its tiers, if it names any, include the member's tier
now) and by segment. An offer targeted by a segment goes only to a member with marketing
consent: the general consent in force, or, without a general one recorded, a consent in force
for any channel. Offers for everyone need no consent: they are the programme's rules, not
marketing.
"""
from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import campaigns, consents, coupons, members, segments, tiers as tiers_
from .models import Campaign, CouponActivation, Segment
from .problems import Problem


def for_member(session: Session, external_id: str, *, now: datetime, tz: str,
               tiers: tuple[tiers_.Tier, ...] = ()) -> dict:
    member = members.find(session, external_id)
    if member is None:
        raise Problem("not-found", "No such member.")
    status = tiers_.of_member(session, tiers, member.id, now=now, tz=tz)
    tier = status["name"] if status else None
    consented = marketing_consent(session, member)
    offered = [c for c in campaigns.listed(session, active_at=now)
               if _qualifies(session, c, member.id, tier, consented, now)]
    activations = {a.coupon_id: a for a in session.scalars(
        select(CouponActivation).where(CouponActivation.member_id == member.id))}
    running = coupons.listed(session, active_at=now)
    return {
        "member_id": external_id, "tier": tier,
        "campaigns": [_campaign(c) for c in offered],
        "coupons": [{**coupons.view(c, plain_times=False),
                     "activated": c.id in activations,
                     "used": c.id in activations and activations[c.id].entry_id is not None}
                    for c in running],
    }


def marketing_consent(session: Session, member) -> bool:
    in_force = consents.in_force(session, member)
    general = [c for c in in_force if c["channel"] is None]
    if general:
        return general[0]["marketing"]
    return any(c["marketing"] for c in in_force)


def _qualifies(session: Session, campaign: Campaign, member_pk: int, tier: str | None,
               consented: bool, now: datetime) -> bool:
    if campaign.tiers and tier not in json.loads(campaign.tiers):
        return False
    if campaign.segment is None:
        return True
    segment = session.get(Segment, campaign.segment)
    return consented and segment is not None and segments.contains(session, segment, member_pk,
                                                                   now=now)


def _campaign(campaign: Campaign) -> dict:
    view = campaigns.view(campaign)
    return {name: view[name] for name in ("id", "name", "kind", "factor", "bonus_points",
                                          "partners", "segment")} | {
        "starts_at": campaign.starts_at, "ends_at": campaign.ends_at}
