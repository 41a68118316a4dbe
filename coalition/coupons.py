"""Coupons, activate-then-earn (like PAYBACK's eCoupons): a partner's (or the operator's)
published bonus that a member first activates, through a partner or the portal, and then
receives once, on an earn at the coupon's partner within the coupon's window.

Terms are as a campaign's (a multiplier or fixed bonus, a window in the coalition's time zone,
a funder: by default the coupon's partner) and fixed once published. Activation takes the
member's row lock, as every claim does: an earn and an activation of the same member never
overlap, so an earn either finds the activation or it does not. Activating is idempotent (the
second answer is the first activation); a coupon whose window has ended cannot be activated
any more (409 coupon-ended), one not yet begun can, to be used once it has.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from . import audit, bonus_terms
from .clock import as_utc, iso_utc
from .decimals import plain
from .models import Coupon, CouponActivation, Member
from .problems import Problem

OPERATOR_CHANNEL = "operator"


def publish(session: Session, coupon_id: str, *, partner_id: str, name: str, kind: str,
            value: str, starts: str, ends: str, issuers: set[str], now: datetime, tz: str,
            funder: str | None = None, published_by: str = OPERATOR_CHANNEL,
            actor: str = audit.SYSTEM) -> Coupon:
    """Publish a coupon for earns at `partner_id` (audited `coupon.publish`)."""
    if session.get(Coupon, coupon_id) is not None:
        raise Problem("validation-error", f"Coupon {coupon_id!r} exists already.")
    name, factor, bonus, starts_at, ends_at = bonus_terms.checked_terms(
        session, "coupon", name=name, kind=kind, value=value, starts=starts, ends=ends, tz=tz)
    funder = funder or partner_id
    for party, what in ((partner_id, "partner"), (funder, "funder")):
        if party not in issuers:
            raise Problem("validation-error", f"The {what} {party!r} is no registered partner.")
    coupon = Coupon(id=coupon_id, partner_id=partner_id, name=name, kind=kind,
                    factor=factor, bonus_points=bonus, starts_at=starts_at, ends_at=ends_at,
                    funder_id=funder, published_by=published_by, created_at=now)
    session.add(coupon)
    session.flush()
    audit.record(session, actor=actor, action="coupon.publish", subject=f"coupon:{coupon_id}",
                 before=None, after=view(coupon), now=now)
    return coupon


def end(session: Session, coupon_id: str, *, now: datetime,
        actor: str = audit.SYSTEM) -> tuple[Coupon, bool]:
    """End a coupon now: no activation and no bonus from this moment (audited `coupon.end`)."""
    coupon = get(session, coupon_id)
    return coupon, bonus_terms.end(session, coupon, "coupon", view, now=now, actor=actor)


def get(session: Session, coupon_id: str) -> Coupon:
    return bonus_terms.get(session, Coupon, coupon_id, "coupon")


def listed(session: Session, *, active_at: datetime | None = None) -> list[Coupon]:
    return bonus_terms.listed(session, Coupon, active_at)


def activate(session: Session, coupon_id: str, external_id: str, *, channel: str,
             now: datetime) -> tuple[CouponActivation, bool]:
    """Activate the coupon for the member: (activation, whether it is new)."""
    member = session.scalars(select(Member).where(Member.external_id == external_id)
                             .with_for_update()).one_or_none()
    if member is None:
        raise Problem("not-found", "No such member.")
    coupon = session.get(Coupon, coupon_id)
    if coupon is None:
        raise Problem("not-found", "No such coupon.")
    existing = session.scalars(select(CouponActivation).where(
        CouponActivation.coupon_id == coupon_id,
        CouponActivation.member_id == member.id)).one_or_none()
    if existing is not None:
        return existing, False
    if as_utc(coupon.ends_at) <= now:
        raise Problem("coupon-ended", f"The coupon ended at {iso_utc(coupon.ends_at)}: it can no "
                                      "longer be activated.")
    activation = CouponActivation(coupon_id=coupon_id, member_id=member.id, activated_at=now,
                                  channel=channel)
    session.add(activation)
    session.flush()
    # A new version of the member's row: an earn that read its offers before this commit and
    # waited for the member's lock then reads them again (claim_sql, "1 and 2 in one round trip").
    session.execute(update(Member).where(Member.id == member.id).values(balance=Member.balance))
    return activation, True


def activation_view(activation: CouponActivation, card: str, coupon: Coupon) -> dict:
    return {"coupon_id": activation.coupon_id, "member_id": card,
            "activated_at": activation.activated_at, "channel": activation.channel,
            "used": activation.entry_id is not None, "coupon": view(coupon, plain_times=False)}


def view(coupon: Coupon, *, plain_times: bool = True) -> dict:
    when = iso_utc if plain_times else (lambda moment: moment)
    return {
        "id": coupon.id, "partner_id": coupon.partner_id, "name": coupon.name,
        "kind": coupon.kind,
        "factor": plain(coupon.factor) if coupon.factor is not None else None,
        "bonus_points": coupon.bonus_points,
        "starts_at": when(coupon.starts_at), "ends_at": when(coupon.ends_at),
        "funder": coupon.funder_id, "published_by": coupon.published_by,
        **({"created_at": iso_utc(coupon.created_at),
            "ended_at": iso_utc(coupon.ended_at) if coupon.ended_at else None}
           if plain_times else {}),
    }
