"""Campaigns, coupons and segments over the partner API. The operator's API is this API, called
with a token of the operator-kind partner (partners add ... --kind operator, with a key of its
own).

- Campaigns: the operator adds and ends them; a partner reads those that concern it (it funds
  them, or its earns qualify: its id in `partners`, or `partners` null) and nothing else.
- Coupons: a partner publishes coupons for its own earns, paid by itself, and reads and ends
  its own; the operator publishes for any partner, with any funder, and reads and ends all.
- Segments (the groups of members campaigns may target): the operator's alone, read and
  written; who is in one is the members' business, not a partner's.

Registered on the partner API's blueprint (authenticated, rate limited, errors answered and
transactions rolled back as on every partner route). Every write is audited as its command is,
with the caller as actor: `partner:<id>`. A campaign or coupon the caller may not read is
`not-found`, as another partner's claim is; a write only the operator may make is `forbidden`,
refused before the body is read.
"""
from __future__ import annotations

import json
import re
from functools import wraps

from flask import current_app, g
from marshmallow import RAISE
from sqlalchemy.exc import IntegrityError

from coalition import campaigns, clock, coupons, segments
from coalition.api import problems
from coalition.database import db
from coalition.errors import Problem
from coalition.fields import ID_PATTERN
from coalition.models import Campaign, Coupon, Segment

from . import schemas, service
from .auth import AUTH, COMMON
from .models import OPERATOR
from .views import BODY, blp

_OPERATOR_ONLY = "Only the coalition's operator may do this."
_ID = re.compile(ID_PATTERN)


def _now():  # a module-level name: tests pin the clock here
    return clock.now()


def _actor() -> str:
    return f"partner:{g.caller.partner_id}"


def _is_operator() -> bool:
    return g.caller.kind == OPERATOR


def operator_only(view):
    """403 for any caller but the operator, before the body is parsed: a partner learns
    nothing from its body's validation errors on a route it may not use."""
    @wraps(view)
    def checked(*args, **kwargs):
        if not _is_operator():
            raise Problem("forbidden", _OPERATOR_ONLY)
        return view(*args, **kwargs)
    return checked


def _known(identifier: str) -> str:
    if not _ID.fullmatch(identifier):
        raise Problem("not-found", "No such resource.")
    return identifier


def _added(add, model, row_id: str, noun: str, **terms):
    """`add(session, row_id, **terms)`, where a row of the same id added concurrently (its
    check passed in both requests; the primary key refuses the second insert) is answered as
    one added before would be, never as a 500."""
    try:
        return add(db.session, row_id, **terms)
    except IntegrityError:
        db.session.rollback()
        if db.session.get(model, row_id) is None:
            raise
        raise Problem("validation-error", f"{noun} {row_id!r} exists already.") from None


def _issuers() -> set[str]:
    return set(service.partner_ids(db.session))


def _tz() -> str:
    return current_app.config["COALITION_TIMEZONE"]


def _active_at(query: dict):
    if query.get("active") == "true":
        return _now()
    return query.get("active_at")


# --- campaigns ---------------------------------------------------------------------------------

def _concerns(campaign, partner_id: str) -> bool:
    """A partner reads the campaigns it funds and those its earns qualify for."""
    if campaign.funder_id == partner_id or campaign.partners is None:
        return True
    return partner_id in json.loads(campaign.partners)


def _campaign(campaign_id: str, operator: bool):
    campaign = campaigns.get(db.session, _known(campaign_id))
    if not operator and not _concerns(campaign, g.caller.partner_id):
        raise Problem("not-found", f"No campaign {campaign_id!r}.")
    return campaign


@blp.route("/campaigns", methods=["POST"])
@operator_only
@blp.doc(security=AUTH, summary="Add a campaign (operator only); its terms are fixed from then "
         "on, it can only be ended early",
         description="The window is in the coalition's time zone and may not begin in a closed "
                     "month. The funder, the partners named and the segment must exist.")
@blp.arguments(schemas.CampaignCreateSchema)
@blp.response(201, schemas.CampaignViewSchema, description="Added")
@problems(blp, *COMMON, *BODY, "forbidden")
def add_campaign(body: dict):
    campaign = _added(campaigns.add, Campaign, body.pop("id"), "Campaign", issuers=_issuers(),
                      now=_now(), tz=_tz(), actor=_actor(), known_tiers=tuple(
                          t.name for t in current_app.config["LEDGER_RULES"].tiers), **body)
    view = campaigns.view(campaign)
    db.session.commit()
    return view, 201


@blp.route("/campaigns", methods=["GET"])
@blp.doc(security=AUTH, summary="Campaigns by start: the operator reads all, a partner those "
         "it funds or whose earns qualify")
@blp.arguments(schemas.WindowQuerySchema, location="query", unknown=RAISE)
@blp.response(200, schemas.CampaignListSchema, description="The campaigns (none: an empty "
              "list)")
@problems(blp, *COMMON, "validation-error")
def list_campaigns(query: dict):
    operator, partner_id = _is_operator(), g.caller.partner_id
    listed = [campaigns.view(c) for c in campaigns.listed(db.session, active_at=_active_at(query))
              if operator or _concerns(c, partner_id)]
    db.session.commit()
    return {"campaigns": listed}


@blp.route("/campaigns/<campaign_id>", methods=["GET"])
@blp.doc(security=AUTH, summary="One campaign (a partner: one that concerns it)")
@blp.response(200, schemas.CampaignViewSchema, description="The campaign")
@problems(blp, *COMMON, "not-found")
def campaign(campaign_id: str):
    view = campaigns.view(_campaign(campaign_id, _is_operator()))
    db.session.commit()
    return view


@blp.route("/campaigns/<campaign_id>/end", methods=["POST"])
@operator_only
@blp.doc(security=AUTH, summary="End a campaign now (operator only, no body): earns after "
         "this moment no longer qualify",
         description="Safe to repeat: a campaign that has ended already is answered as it "
                     "stands, with `changed` false. One that never ran ends an instant after "
                     "its start.")
@blp.response(200, schemas.CampaignViewSchema, description="The campaign, ended")
@problems(blp, *COMMON, "payload-too-large", "forbidden", "not-found")
def end_campaign(campaign_id: str):
    campaign, changed = campaigns.end(db.session, _known(campaign_id), now=_now(),
                                      actor=_actor())
    view = {**campaigns.view(campaign), "changed": changed}
    db.session.commit()
    return view


# --- coupons -----------------------------------------------------------------------------------

def _coupon(coupon_id: str, operator: bool):
    coupon = coupons.get(db.session, _known(coupon_id))
    if not operator and coupon.partner_id != g.caller.partner_id \
            and coupon.funder_id != g.caller.partner_id:
        raise Problem("not-found", f"No coupon {coupon_id!r}.")
    return coupon


@blp.route("/coupons", methods=["POST"])
@blp.doc(security=AUTH, summary="Publish a coupon: a partner for its own earns, paid by "
         "itself; the operator for any partner",
         description="Members activate it (POST /v1/members/{member_id}/coupons/{coupon_id}/"
                     "activation), then get its bonus once, on an earn at the coupon's partner "
                     "within the window. Terms are fixed once published; it can be ended early.")
@blp.arguments(schemas.CouponCreateSchema)
@blp.response(201, schemas.CouponViewSchema, description="Published")
@problems(blp, *COMMON, *BODY, "forbidden")
def publish_coupon(body: dict):
    caller = g.caller.partner_id
    if _is_operator():
        if "partner_id" not in body:
            raise Problem("validation-error", "The operator names the coupon's partner.",
                          errors=[{"pointer": "/partner_id", "detail": "Missing data for "
                                                                       "required field."}])
        partner_id, funder = body.pop("partner_id"), body.pop("funder", None)
        published_by = coupons.OPERATOR_CHANNEL
    else:
        partner_id, funder = body.pop("partner_id", caller), body.pop("funder", caller)
        if partner_id != caller or funder != caller:
            raise Problem("forbidden", "A partner publishes coupons for its own earns, paid by "
                                       "itself: partner_id and funder may only name you.")
        published_by = caller
    coupon = _added(coupons.publish, Coupon, body.pop("id"), "Coupon", partner_id=partner_id,
                    funder=funder, published_by=published_by, issuers=_issuers(), now=_now(),
                    tz=_tz(), actor=_actor(), **body)
    view = coupons.view(coupon)
    db.session.commit()
    return view, 201


@blp.route("/coupons", methods=["GET"])
@blp.doc(security=AUTH, summary="Coupons by start: a partner's own (its earns qualify, or it "
         "pays), or all for the operator")
@blp.arguments(schemas.WindowQuerySchema, location="query", unknown=RAISE)
@blp.response(200, schemas.CouponListSchema, description="The coupons (none: an empty list)")
@problems(blp, *COMMON, "validation-error")
def list_coupons(query: dict):
    operator, caller = _is_operator(), g.caller.partner_id
    listed = [coupons.view(c) for c in coupons.listed(db.session, active_at=_active_at(query))
              if operator or caller in (c.partner_id, c.funder_id)]
    db.session.commit()
    return {"coupons": listed}


@blp.route("/coupons/<coupon_id>", methods=["GET"])
@blp.doc(security=AUTH, summary="One of your coupons (the operator: any)")
@blp.response(200, schemas.CouponViewSchema, description="The coupon")
@problems(blp, *COMMON, "not-found")
def coupon(coupon_id: str):
    view = coupons.view(_coupon(coupon_id, _is_operator()))
    db.session.commit()
    return view


@blp.route("/coupons/<coupon_id>/end", methods=["POST"])
@blp.doc(security=AUTH, summary="End a coupon now (no body): no activation and no bonus from "
         "this moment",
         description="The coupon's partner or the operator. Safe to repeat: a coupon that has "
                     "ended already is answered as it stands, with `changed` false.")
@blp.response(200, schemas.CouponViewSchema, description="The coupon, ended")
@problems(blp, *COMMON, "payload-too-large", "forbidden", "not-found")
def end_coupon(coupon_id: str):
    operator = _is_operator()
    found = _coupon(coupon_id, operator)
    if not operator and found.partner_id != g.caller.partner_id:
        raise Problem("forbidden", "Only the coupon's partner or the operator ends a coupon.")
    row, changed = coupons.end(db.session, found.id, now=_now(), actor=_actor())
    view = {**coupons.view(row), "changed": changed}
    db.session.commit()
    return view


# --- segments (operator only: who is in one is the members' data) ----------------------------

@blp.route("/segments", methods=["POST"])
@operator_only
@blp.doc(security=AUTH, summary="Define a segment (operator only): a group of members by one "
         "of the documented rules; fixed from then on")
@blp.arguments(schemas.SegmentCreateSchema)
@blp.response(201, schemas.SegmentViewSchema, description="Defined")
@problems(blp, *COMMON, *BODY, "forbidden")
def add_segment(body: dict):
    segment = _added(segments.add, Segment, body.pop("id"), "Segment", issuers=_issuers(),
                     now=_now(), actor=_actor(), **body)
    view = segments.view(segment)
    db.session.commit()
    return view, 201


@blp.route("/segments", methods=["GET"])
@operator_only
@blp.doc(security=AUTH, summary="Every segment, by id (operator only)")
@blp.response(200, schemas.SegmentListSchema, description="The segments (none: an empty list)")
@problems(blp, *COMMON, "forbidden")
def list_segments():
    listed = [segments.view(s) for s in segments.listed(db.session)]
    db.session.commit()
    return {"segments": listed}


@blp.route("/segments/<segment_id>", methods=["GET"])
@operator_only
@blp.doc(security=AUTH, summary="One segment (operator only)")
@blp.response(200, schemas.SegmentViewSchema, description="The segment")
@problems(blp, *COMMON, "forbidden", "not-found")
def segment(segment_id: str):
    view = segments.view(segments.get(db.session, _known(segment_id)))
    db.session.commit()
    return view
