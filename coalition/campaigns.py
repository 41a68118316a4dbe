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
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import audit
from .clock import as_utc, iso_utc
from .decimals import plain
from .models import Campaign, ClosedPeriod, Segment
from .periods import add_months
from .problems import Problem
from .vocabulary import MAX_POINTS

MULTIPLIER, FIXED = "multiplier", "fixed"
MAX_FACTOR = Decimal(100)


def add(session: Session, campaign_id: str, *, name: str, kind: str, value: str,
        starts: str, ends: str, funder: str, issuers: set[str], now: datetime, tz: str,
        partners: list[str] | None = None, tiers: list[str] | None = None,
        segment: str | None = None, cap_per_member: int | None = None,
        cap_total: int | None = None, actor: str = audit.SYSTEM) -> Campaign:
    """Add a campaign (audited `campaign.add`). `value`: the factor of a multiplier (a decimal
    above 1, at most 100) or the points of a fixed bonus. `starts`/`ends`: a date (the start of
    that day; for `ends` the end of it) or a date-time, in `tz` unless it carries an offset."""
    if session.get(Campaign, campaign_id) is not None:
        raise Problem("validation-error", f"Campaign {campaign_id!r} exists already.")
    if not name.strip() or len(name.strip()) > 200:
        raise Problem("validation-error", "A campaign needs a name of 1 to 200 characters.")
    factor, bonus = parse_value(kind, value)
    starts_at = parse_instant(starts, tz, "--from")
    ends_at = parse_instant(ends, tz, "--until", end=True)
    if ends_at <= starts_at:
        raise Problem("validation-error", "The campaign's window is empty: --until must lie "
                                          "after --from.")
    refuse_closed_months(session, starts_at, tz)
    if funder not in issuers:
        raise Problem("validation-error", f"The funder {funder!r} is no registered partner nor "
                                          "the operator.")
    if segment is not None and session.get(Segment, segment) is None:
        raise Problem("validation-error", f"No segment {segment!r}: define it first "
                                          "(segments add).")
    unknown = sorted(set(partners or ()) - issuers)
    if unknown:
        raise Problem("validation-error", f"No such partners: {', '.join(unknown)}.")
    for cap, option in ((cap_per_member, "--cap-per-member"), (cap_total, "--cap-total")):
        if cap is not None and not 1 <= cap <= MAX_POINTS:
            raise Problem("validation-error", f"{option} must be 1 to {MAX_POINTS} points.")
    campaign = Campaign(
        id=campaign_id, name=name.strip(), kind=kind, factor=factor, bonus_points=bonus,
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
    """End a campaign now (audited `campaign.end`); (campaign, whether this changed anything).
    One that has ended already, or has not begun, keeps its window: a campaign that never ran
    ends at its start."""
    campaign = get(session, campaign_id)
    if as_utc(campaign.ends_at) <= now:
        return campaign, False
    before = view(campaign)
    campaign.ends_at = max(now, as_utc(campaign.starts_at) + timedelta(microseconds=1))
    campaign.ended_at = now
    audit.record(session, actor=actor, action="campaign.end", subject=f"campaign:{campaign_id}",
                 before=before, after=view(campaign), now=now)
    return campaign, True


def get(session: Session, campaign_id: str) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise Problem("not-found", f"No campaign {campaign_id!r}.")
    return campaign


def listed(session: Session, *, active_at: datetime | None = None) -> list[Campaign]:
    """Every campaign, by start; with `active_at`, those whose window holds that instant."""
    query = select(Campaign).order_by(Campaign.starts_at, Campaign.id)
    if active_at is not None:
        query = query.where(Campaign.starts_at <= active_at, Campaign.ends_at > active_at)
    return list(session.scalars(query))


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


# --- parsing --------------------------------------------------------------------------------

def parse_value(kind: str, value: str) -> tuple[Decimal | None, int | None]:
    if kind == MULTIPLIER:
        try:
            factor = Decimal(value)
        except InvalidOperation:
            factor = None
        if factor is None or not factor.is_finite() or not 1 < factor <= MAX_FACTOR \
                or factor != factor.quantize(Decimal("0.0001")):
            raise Problem("validation-error", "A multiplier's --value is a decimal above 1 and at "
                                              f"most {MAX_FACTOR}, with at most 4 places (e.g. 2).")
        return factor, None
    if kind == FIXED:
        if not value.isdigit() or not 1 <= int(value) <= MAX_POINTS:
            raise Problem("validation-error", f"A fixed bonus's --value is 1 to {MAX_POINTS} "
                                              "points.")
        return None, int(value)
    raise Problem("validation-error", f"A campaign's kind is {MULTIPLIER} or {FIXED}.")


def parse_instant(text: str, tz: str, option: str, *, end: bool = False) -> datetime:
    """A date (its start; with `end`, the start of the next day) or a date-time, in `tz` unless
    it says otherwise: the local day is the coalition's, across a DST change too."""
    try:
        if len(text) == 10:
            day = datetime.fromisoformat(text).date()
            local = datetime(day.year, day.month, day.day, tzinfo=ZoneInfo(tz))
            if end:
                following = day + timedelta(days=1)
                local = datetime(following.year, following.month, following.day,
                                 tzinfo=ZoneInfo(tz))
            return as_utc(local)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise Problem("validation-error", f"{option} must be a date (YYYY-MM-DD) or a date-time "
                                          "(YYYY-MM-DDTHH:MM, coalition time unless an offset "
                                          "is given).") from None
    return as_utc(moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(tz)))


def refuse_closed_months(session: Session, starts_at: datetime, tz: str) -> None:
    closed = session.scalar(select(func.max(ClosedPeriod.period)))
    if closed is None:
        return
    year, month = add_months(int(closed[:4]), int(closed[5:]), 1)
    first_open = as_utc(datetime(year, month, 1, tzinfo=ZoneInfo(tz)))
    if starts_at < first_open:
        raise Problem("validation-error", f"{closed} is closed: a campaign cannot change a closed "
                                          f"month, so it may begin on {year:04d}-{month:02d}-01 "
                                          "at the earliest.")

