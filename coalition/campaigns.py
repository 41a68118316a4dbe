"""Campaigns: time-boxed bonuses on qualifying earns, each paid for by its funder (a partner, or
the coalition registered as the operator issuer). The operator adds, lists, shows and ends them
(`flask campaigns ...`).

A campaign is a multiplier (factor 2: double points, the bonus is as many points again as the
earn's) or a fixed bonus per qualifying earn; it runs in a window of the coalition's time zone
(from the start of its first day to the end of its last, or to the minute); it targets the
earns of some partners (or all), members of some tiers (or all) and optionally a segment; caps
bound the bonus per member and in all. Its terms are fixed when it is added: it can be ended
early, never rewritten, so every bonus booked under it stays explained by the row. A campaign
cannot reach into a closed month: its window must begin after the last closed month.

Which parties exist is the partners package's knowledge: the caller passes the known issuer
ids (`issuers`), keeping imports one way.
"""
from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy.orm import Session

from . import audit, bonus_terms
from .bonus_terms import FIXED, MULTIPLIER  # noqa: F401 (the kinds, for callers)
from .clock import iso_utc
from .decimals import plain
from .models import Campaign, Segment
from .problems import Problem
from .vocabulary import MAX_POINTS


def add(session: Session, campaign_id: str, *, name: str, kind: str, value: str,
        starts: str, ends: str, funder: str, issuers: set[str], now: datetime, tz: str,
        partners: list[str] | None = None, tiers: list[str] | None = None,
        segment: str | None = None, cap_per_member: int | None = None,
        cap_total: int | None = None, known_tiers: tuple[str, ...] = (),
        actor: str = audit.SYSTEM) -> Campaign:
    """Add a campaign (audited `campaign.add`). `known_tiers`: the names of the configured tiers (COALITION_TIERS), the only ones
    `tiers` may name. `value`: the factor of a multiplier (a decimal
    above 1, at most 100) or the points of a fixed bonus. `starts`/`ends`: a date (the start of
    that day; for `ends` the end of it) or a date-time, in `tz` unless it carries an offset."""
    if session.get(Campaign, campaign_id) is not None:
        raise Problem("validation-error", f"Campaign {campaign_id!r} exists already.")
    name, factor, bonus, starts_at, ends_at = bonus_terms.checked_terms(
        session, "campaign", name=name, kind=kind, value=value, starts=starts, ends=ends, tz=tz)
    if funder not in issuers:
        raise Problem("validation-error", f"The funder {funder!r} is no registered partner nor "
                                          "the operator.")
    if segment is not None and session.get(Segment, segment) is None:
        raise Problem("validation-error", f"No segment {segment!r}: define it first "
                                          "(segments add).")
    strange = sorted(set(tiers or ()) - set(known_tiers))
    if strange:  # a misspelt tier would never apply
        raise Problem("validation-error", f"No such tiers: {', '.join(strange)} (the tiers are: "
                                          f"{', '.join(known_tiers) or 'none configured'}).")
    unknown = sorted(set(partners or ()) - issuers)
    if unknown:
        raise Problem("validation-error", f"No such partners: {', '.join(unknown)}.")
    for cap, option in ((cap_per_member, "--cap-per-member"), (cap_total, "--cap-total")):
        if cap is not None and not 1 <= cap <= MAX_POINTS:
            raise Problem("validation-error", f"{option} must be 1 to {MAX_POINTS} points.")
    campaign = Campaign(
        id=campaign_id, name=name, kind=kind, factor=factor, bonus_points=bonus,
        starts_at=starts_at, ends_at=ends_at,
        partners=json.dumps(sorted(set(partners))) if partners else None,
        tiers=json.dumps(sorted(set(tiers))) if tiers else None, segment=segment,
        funder_id=funder, cap_per_member=cap_per_member, cap_total=cap_total, created_at=now)
    session.add(campaign)
    session.flush()
    audit.record(session, actor=actor, action="campaign.add", subject=f"campaign:{campaign_id}",
                 before=None, after=view(campaign), now=now)
    return campaign


def end(session: Session, campaign_id: str, *, now: datetime,
        actor: str = audit.SYSTEM) -> tuple[Campaign, bool]:
    """End a campaign now (audited `campaign.end`); (campaign, whether this changed anything)."""
    campaign = get(session, campaign_id)
    return campaign, bonus_terms.end(session, campaign, "campaign", view, now=now, actor=actor)


def get(session: Session, campaign_id: str) -> Campaign:
    return bonus_terms.get(session, Campaign, campaign_id, "campaign")


def listed(session: Session, *, active_at: datetime | None = None) -> list[Campaign]:
    """Every campaign, by start; with `active_at`, those whose window holds that instant."""
    return bonus_terms.listed(session, Campaign, active_at)


def view(campaign: Campaign) -> dict:
    return {
        "id": campaign.id, "name": campaign.name, "kind": campaign.kind,
        "factor": plain(campaign.factor) if campaign.factor is not None else None,
        "bonus_points": campaign.bonus_points,
        "starts_at": iso_utc(campaign.starts_at), "ends_at": iso_utc(campaign.ends_at),
        "partners": json.loads(campaign.partners) if campaign.partners else None,
        "tiers": json.loads(campaign.tiers) if campaign.tiers else None,
        "segment": campaign.segment, "funder": campaign.funder_id,
        "cap_per_member": campaign.cap_per_member, "cap_total": campaign.cap_total,
        "created_at": iso_utc(campaign.created_at),
        "ended_at": iso_utc(campaign.ended_at) if campaign.ended_at else None,
    }
