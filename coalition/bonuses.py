"""Bonus points on an earn: which campaigns, coupons and tier multipliers give it points, how
many, and who pays for each. coalition/ledger.py books every bonus in the earn's own entry, as
a lot of its funder (`lots.source` says what it is for), so tracing, funding, debt, expiry and
breakage treat bonus points exactly as the partner's own.

The rules (docs/partner-api.md, "Bonus points"):
- Campaigns qualify by the earn's occurred_at (inside the window), its partner, the member's
  tier and segment as the earn is booked. Of the multiplier campaigns an earn qualifies for,
  only the largest factor applies (ties: the campaign that began first, then its id); one whose
  caps leave nothing gives way to the next. Every fixed campaign adds its bonus.
- The member's tier multiplier adds its bonus on top, funded by the coalition (the operator
  issuer); with no operator registered, tiers give no bonus.
- Each coupon of the earn's partner that the member activated before the purchase (or up to
  5 minutes after it, a till's clock being off), and has not used, adds its bonus once, if the
  purchase lies in its window.
- A multiplier's bonus is the earn's points times (factor - 1), rounded down: no funder pays
  for a fraction of a point.
- Caps count the bonus points a campaign gave (lots.points, whatever reversals took back since):
  per member under the member's lock, which the earn holds; in all on the campaign's row,
  locked while the earn adds to campaigns.awarded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

from sqlalchemy import column, func, select, table, update
from sqlalchemy.orm import Session

from . import segments, tiers
from .clock import as_utc
from .database import is_sqlite
from .models import Campaign, Coupon, CouponActivation, Lot, Segment

CAMPAIGN, COUPON, TIER = "campaign:", "coupon:", "tier:"
MULTIPLIER = "multiplier"
# A coupon counts if activated before the purchase, or in the minutes around it that tills'
# clocks may be off by (as a claim's occurred_at may lie 5 minutes ahead): a member who
# activates it at the checkout, while paying, gets it.
SKEW = timedelta(minutes=5)
# The partners package owns the table; the core only asks which row is the operator issuer.
_PARTNERS = table("partners", column("id"), column("kind"))


@dataclass(frozen=True)
class Bonus:
    source: str  # campaign:<id>, coupon:<id> or tier:<name>
    funder: str  # the issuer of the bonus lot
    points: int


@dataclass
class Award:
    """What an earn gets besides its own points, and what booking it changes."""
    bonuses: list[Bonus] = field(default_factory=list)
    activations: list[int] = field(default_factory=list)  # coupon activations it uses up
    awarded: dict[str, int] = field(default_factory=dict)  # capped campaign id: points given
    not_activated: list[str] = field(default_factory=list)  # coupons it could have used

    @property
    def points(self) -> int:
        return sum(b.points for b in self.bonuses)


def of_multiplier(points: int, factor: Decimal) -> int:
    return int((points * (factor - 1)).to_integral_value(rounding=ROUND_FLOOR))


@dataclass(frozen=True)
class CampaignTerms:
    """A running campaign's terms as an earn needs them (the names of Campaign's columns)."""
    id: str
    kind: str
    factor: Decimal | None
    bonus_points: int | None
    funder_id: str
    partners: str | None  # JSON lists, as stored
    tiers: str | None
    segment: str | None
    cap_per_member: int | None
    cap_total: int | None


CAMPAIGN_TERMS = (Campaign.id, Campaign.kind, Campaign.factor, Campaign.bonus_points,
                  Campaign.funder_id, Campaign.partners, Campaign.tiers, Campaign.segment,
                  Campaign.cap_per_member, Campaign.cap_total)


@dataclass(frozen=True)
class CouponOffer:
    """A running coupon of the earn's partner, with what the member did with it."""
    id: str
    kind: str
    factor: Decimal | None
    bonus_points: int | None
    funder_id: str
    activation_id: int | None  # the member's activation, if any
    in_time: bool  # activated before the purchase (or within SKEW after it)
    used: bool  # the activation gave its bonus to an earlier earn


COUPON_TERMS = (Coupon.id, Coupon.kind, Coupon.factor, Coupon.bonus_points, Coupon.funder_id)


@dataclass(frozen=True)
class Offers:
    """What runs at an earn's occurred_at: the campaigns (by start, then id) and the partner's
    coupons (by id). Read with the earn's lock (claim_sql) so for_earn needs no statement."""
    campaigns: list[CampaignTerms]
    coupons: list[CouponOffer]

    @classmethod
    def parsed(cls, campaigns: list | None, coupons: list | None) -> "Offers":
        """From the JSON arrays claim_sql reads: factors as text, so no float touches them."""
        def factor(text):
            return None if text is None else Decimal(text)
        return cls(
            [CampaignTerms(i, kind, factor(f), bonus, funder, partners, tier_names, segment,
                           per_member, total)
             for i, kind, f, bonus, funder, partners, tier_names, segment, per_member, total
             in campaigns or ()],
            [CouponOffer(i, kind, factor(f), bonus, funder, activation, bool(in_time), bool(used))
             for i, kind, f, bonus, funder, activation, in_time, used in coupons or ()])


def for_earn(session: Session, *, member_pk: int, partner_id: str, points: int,
             occurred_at: datetime, now: datetime, tz: str,
             tier_rules: tuple[tiers.Tier, ...] = (), running: bool = True,
             offers: Offers | None = None) -> Award:
    """The bonuses an earn of `points` at `partner_id` gets, caps applied. The caller holds the
    member's lock; the rows of capped campaigns are locked here. `running` False: the caller
    knows that no campaign, nor coupon of the partner, runs at `occurred_at`
    (claim_sql.Situation.bonus_running): only a tier multiplier can then give a bonus, and an
    earn without any costs no statement here. `offers`: what runs, when the caller read it
    already (claim_sql.Situation.offers); otherwise it is read here."""
    award = Award()
    multiplied = any(t.multiplier > 1 for t in tier_rules)
    if offers is not None:
        running = bool(offers.campaigns or offers.coupons)
    if not running and not multiplied:
        return award
    if not running:
        offers = Offers([], [])
    elif offers is None:
        offers = _offers(session, member_pk, partner_id, occurred_at)
    live = [c for c in offers.campaigns
            if c.partners is None or partner_id in json.loads(c.partners)]
    tier = None
    if tier_rules and (multiplied or any(c.tiers for c in live)):
        status = tiers.of_member(session, tier_rules, member_pk, now=now, tz=tz)
        tier = next(t for t in tier_rules if t.name == status["name"])
    qualifying = [c for c in live if _targets(session, c, member_pk, tier, now)]
    multipliers = sorted((c for c in qualifying if c.kind == MULTIPLIER),
                         key=lambda c: -c.factor)  # stable: earlier start, then id, first
    for campaign in multipliers:
        if _give(session, award, campaign, member_pk, of_multiplier(points, campaign.factor)):
            break
    for campaign in qualifying:
        if campaign.kind != MULTIPLIER:
            _give(session, award, campaign, member_pk, campaign.bonus_points)
    if tier is not None and tier.multiplier > 1:
        operator = session.scalar(select(_PARTNERS.c.id).where(_PARTNERS.c.kind == "operator"))
        bonus = of_multiplier(points, tier.multiplier)
        if operator is not None and bonus > 0:
            award.bonuses.append(Bonus(f"{TIER}{tier.name}", operator, bonus))
    for coupon in offers.coupons:
        if not coupon.in_time:
            award.not_activated.append(coupon.id)
        elif not coupon.used:  # a coupon gives its bonus once
            bonus = (coupon.bonus_points if coupon.kind != MULTIPLIER
                     else of_multiplier(points, coupon.factor))
            if bonus > 0:
                award.bonuses.append(Bonus(f"{COUPON}{coupon.id}", coupon.funder_id, bonus))
                award.activations.append(coupon.activation_id)
    return award


def _offers(session: Session, member_pk: int, partner_id: str, occurred_at: datetime) -> Offers:
    """Offers read here: on SQLite, in batches, and for an earn whose member changed while it
    waited for the lock (claim_sql's lock statement reads the same on PostgreSQL)."""
    campaigns = [CampaignTerms(*row) for row in session.execute(
        select(*CAMPAIGN_TERMS).where(Campaign.starts_at <= occurred_at,
                                      Campaign.ends_at > occurred_at)
        .order_by(Campaign.starts_at, Campaign.id))]
    coupons = [CouponOffer(*terms, activation_id,
                           activation_id is not None
                           and as_utc(activated_at) <= as_utc(occurred_at) + SKEW,
                           used_by is not None)
               for *terms, activation_id, activated_at, used_by in session.execute(
                   select(*COUPON_TERMS, CouponActivation.id, CouponActivation.activated_at,
                          CouponActivation.entry_id)
                   .outerjoin(CouponActivation, (CouponActivation.coupon_id == Coupon.id)
                              & (CouponActivation.member_id == member_pk))
                   .where(Coupon.partner_id == partner_id, Coupon.starts_at <= occurred_at,
                          Coupon.ends_at > occurred_at)
                   .order_by(Coupon.id))]
    return Offers(campaigns, coupons)


def any_running(session: Session, partner_id: str, first: datetime, last: datetime) -> bool:
    """Whether a campaign, or a coupon of the partner, runs at some instant from `first` to
    `last` (a batch's earns)."""
    campaign = select(Campaign.id).where(Campaign.starts_at <= last, Campaign.ends_at > first)
    coupon = select(Coupon.id).where(Coupon.partner_id == partner_id, Coupon.starts_at <= last,
                                     Coupon.ends_at > first)
    return bool(session.scalar(select(campaign.exists() | coupon.exists())))


def _targets(session: Session, campaign: CampaignTerms, member_pk: int, tier, now: datetime) -> bool:
    if campaign.tiers and (tier is None or tier.name not in json.loads(campaign.tiers)):
        return False
    if campaign.segment is None:
        return True
    segment = session.get(Segment, campaign.segment)
    return segment is not None and segments.contains(session, segment, member_pk, now=now)


def _give(session: Session, award: Award, campaign: CampaignTerms, member_pk: int,
          bonus: int) -> bool:
    """Add the campaign's bonus, cut to what its caps leave; whether anything was given."""
    source = f"{CAMPAIGN}{campaign.id}"
    if campaign.cap_per_member is not None:
        given = session.scalar(select(func.coalesce(func.sum(Lot.points), 0))
                               .where(Lot.member_id == member_pk, Lot.source == source))
        bonus = min(bonus, campaign.cap_per_member - int(given))
    if campaign.cap_total is not None and bonus > 0:
        locked = select(Campaign.awarded).where(Campaign.id == campaign.id)
        if not is_sqlite(session):  # SQLite's writer already holds the one write lock
            locked = locked.with_for_update()
        awarded = int(session.scalar(locked))
        bonus = min(bonus, campaign.cap_total - awarded)
        if bonus > 0:
            award.awarded[campaign.id] = bonus
    if bonus <= 0:
        return False
    award.bonuses.append(Bonus(source, campaign.funder_id, bonus))
    return True


def claim(session: Session, award: Award) -> None:
    """Count the award's points on its capped campaigns: once the earn is sure to book."""
    for campaign_id, points in award.awarded.items():
        session.execute(update(Campaign).where(Campaign.id == campaign_id)
                        .values(awarded=Campaign.awarded + points))


def use_coupons(session: Session, award: Award, entry_id: int) -> None:
    """Mark the coupon activations the earn used: each names the earn that used it."""
    if award.activations:
        session.execute(update(CouponActivation).where(CouponActivation.id.in_(award.activations))
                        .values(entry_id=entry_id))


def of_entry(session: Session, entry_id: int) -> list[Bonus]:
    """The bonuses an earn booked, in the order it booked them."""
    return [Bonus(source, funder, points) for source, funder, points in session.execute(
        select(Lot.source, Lot.issuer_id, Lot.points)
        .where(Lot.entry_id == entry_id, Lot.source.is_not(None)).order_by(Lot.id))]


def of_entries(session: Session, entry_ids: list[int]) -> dict[int, list[Bonus]]:
    """of_entry for many earns at once (a page of a listing)."""
    given: dict[int, list[Bonus]] = {}
    if entry_ids:
        for entry_id, source, funder, points in session.execute(
                select(Lot.entry_id, Lot.source, Lot.issuer_id, Lot.points)
                .where(Lot.entry_id.in_(entry_ids), Lot.source.is_not(None)).order_by(Lot.id)):
            given.setdefault(entry_id, []).append(Bonus(source, funder, points))
    return given


def not_activated(session: Session, *, member_pk: int, partner_id: str,
                  occurred_at: datetime) -> list[str]:
    """The coupons of the partner whose window held the purchase that the member had not
    activated before it (what a replayed or read earn reports)."""
    activated = (select(CouponActivation.coupon_id)
                 .where(CouponActivation.member_id == member_pk,
                        CouponActivation.activated_at <= occurred_at + SKEW))
    return list(session.scalars(
        select(Coupon.id).where(Coupon.partner_id == partner_id, Coupon.starts_at <= occurred_at,
                                Coupon.ends_at > occurred_at, Coupon.id.not_in(activated))
        .order_by(Coupon.id)))
