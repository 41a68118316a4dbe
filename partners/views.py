"""The partner API (v1): thin handlers that parse, call one domain function, serialise.

Authentication, and what happens to a request's transaction when it fails, is partners/auth.py.
"""
from __future__ import annotations

import re
from datetime import datetime

from flask import current_app, g
from marshmallow import RAISE

from coalition import batch as batches
from coalition import clock, consents, coupons, credentials, holds, ledger, members, pins
from coalition.api import Blueprint, problems
from coalition.database import db
from coalition.replica import standby_ok
from coalition.errors import Problem
from coalition.expiry_notices import for_member as expiry_notices_of
from coalition.fields import ID_PATTERN
from coalition.offers import for_member as offers_of

from coalition.vocabulary import EntryKind

from . import harvest, schemas
from .auth import AUTH, COMMON, authenticate, crashed, failed, spend_again, watch_for_harvesting
from .models import OPERATOR
from .service import claim_view, current_claim, earn_bonus, hold_view, redeem_policy

blp = Blueprint("partner_api", __name__, url_prefix="/v1",
                description="Signed partner requests: members, earn, burn, reversals, claims.")
blp.before_request(authenticate)
blp.register_error_handler(Problem, failed)
blp.register_error_handler(Exception, crashed)
BODY = ("payload-too-large", "unsupported-media-type", "validation-error")
_ID = re.compile(ID_PATTERN)


def _now() -> datetime:  # a module-level name: tests pin the clock here
    return clock.now()


def _book(book, **claim):
    booked = ledger.book_raced(db.session, book, restore=spend_again,
                               partner_id=g.caller.partner_id, now=_now(),
                               rules=current_app.config["LEDGER_RULES"], **claim)
    db.session.commit()
    headers = {"Idempotent-Replayed": "true"} if booked.replayed else {}
    return claim_view(booked.entry, member_id=booked.member_id,
                      bonus=earn_bonus(db.session, booked.entry, booked.award)), 201, headers


def _known(identifier: str) -> str:
    if not _ID.fullmatch(identifier):
        raise Problem("not-found", "No such resource.")
    return identifier


@blp.route("/members", methods=["POST"])
@blp.doc(security=AUTH, summary="Enrol a member (201 the first time, 200 after)")
@blp.arguments(schemas.ReferredEnrolSchema)
@blp.response(201, schemas.MemberSchema, description="Enrolled now")
@blp.alt_response(200, schema=schemas.MemberSchema, description="Enrolled already (referred_by "
                  "is ignored: the member keeps the referrer it was enrolled with)")
@problems(blp, *COMMON, *BODY)
def enrol(body: dict):
    member, created = members.enrol(db.session, body["member_id"], now=_now(),
                                    enrolled_by=g.caller.partner_id,
                                    referred_by=body.get("referred_by"))
    db.session.commit()
    return {"member_id": member.external_id, "created_at": member.created_at}, 201 if created else 200


@blp.route("/members/<member_id>/balance", methods=["GET"])
@blp.doc(security=AUTH, summary="A member's balance, shared across the coalition")
@blp.response(200, schemas.BalanceSchema, description="The member's balance now")
@problems(blp, *COMMON, "not-found")
@standby_ok
def balance(member_id: str):
    g.card = member_id
    view = members.balance(db.session, _known(member_id), now=_now(),
                           tz=current_app.config["COALITION_TIMEZONE"],
                           tiers=current_app.config["LEDGER_RULES"].tiers)
    harvest.record_read(db.session, g.caller.partner_id, member_id, _now())
    db.session.commit()
    watch_for_harvesting(g.caller.partner_id)
    return view


@blp.route("/members/<member_id>/expiry-notices", methods=["GET"])
@blp.doc(security=AUTH, summary="The member's coming expiries: how many points, when, and "
         "from when to tell the member",
         description="Every expiry of the member's points whose last day lies from today "
                     "through `within_days` days on (coalition time zone), earliest first, as "
                     "the member's lots stand now. `notify_from` is 30 days before "
                     "`expires_on`: tell the member from then on.")
@blp.arguments(schemas.ExpiryNoticesQuerySchema, location="query", unknown=RAISE)
@blp.response(200, schemas.ExpiryNoticesSchema, example=schemas.ExpiryNoticesSchema.EXAMPLE,
              description="The member's expiries in the window (none: an empty list)")
@problems(blp, *COMMON, "validation-error", "not-found")
@standby_ok
def expiry_notices(query: dict, member_id: str):
    g.card = member_id
    view = expiry_notices_of(db.session, _known(member_id), now=_now(),
                             tz=current_app.config["COALITION_TIMEZONE"], **query)
    harvest.record_read(db.session, g.caller.partner_id, member_id, _now())
    db.session.commit()
    watch_for_harvesting(g.caller.partner_id)
    return view


@blp.route("/earn", methods=["POST"])
@blp.doc(security=AUTH, summary="Credit points issued by the calling partner")
@blp.arguments(schemas.EarnSchema)
@blp.response(201, schemas.ClaimSchema, description="Booked (or, with Idempotent-Replayed, booked "
              "before: the same claim sent again)")
@problems(blp, *COMMON, *BODY, "not-found", "claim-id-conflict", "limit-exceeded")
def earn(body: dict):
    g.card = body["member_id"]  # "no such member" counts as asking about an unknown card
    return _book(ledger.book_earn, **body)


@blp.route("/burn", methods=["POST"])
@blp.doc(security=AUTH, summary="Redeem points at the calling partner")
@blp.arguments(schemas.BurnSchema)
@blp.response(201, schemas.ClaimSchema, description="Booked (or, with Idempotent-Replayed, booked "
              "before: the same claim sent again)")
@problems(blp, *COMMON, *BODY, "not-found", "claim-id-conflict", "insufficient-points",
          "limit-exceeded", "member-locked", "member-auth-required", "member-auth-invalid",
          "forbidden")
def burn(body: dict):
    g.card = body["member_id"]
    _redeems_here()
    return _book(ledger.book_burn, policy=redeem_policy(db.session, g.caller.partner_id), **body)


_CLAIM, _MEMBER = schemas.ClaimSchema(), schemas.MemberSchema()
NOTHING_REDEEMED_AT_THE_OPERATOR = (
    "Nothing is redeemed at the coalition itself: its token adds campaigns, coupons and "
    "segments and books the points the coalition gives (earns), not burns or holds.")


def _redeems_here() -> None:
    """The operator's token may earn (points the coalition gives) but never redeem."""
    if g.caller.kind == OPERATOR:
        raise Problem("forbidden", NOTHING_REDEEMED_AT_THE_OPERATOR)


@blp.route("/batches", methods=["POST"])
@blp.doc(security=AUTH, summary=f"Up to {batches.MAX_ITEMS} earns, burns, reversals and "
         "enrolments in one request, each answered as alone")
@blp.arguments(schemas.BatchSchema)
@blp.response(200, schemas.BatchAnswerSchema, description="One result per item, in order. "
              "Per item, not all or nothing: refused items book nothing, the others are booked")
@problems(blp, *COMMON, *BODY)
def batch(body: dict):
    partner_id, now = g.caller.partner_id, _now()
    items = [schemas.batch_item(raw) for raw in body["claims"]]
    if g.caller.kind == OPERATOR:  # per item, as every refusal in a batch
        items = [Problem("forbidden", NOTHING_REDEEMED_AT_THE_OPERATOR)
                 if isinstance(item, batches.Item) and item.kind == EntryKind.BURN else item
                 for item in items]
    outcomes = batches.book_batch(
        db.session, items, partner_id=partner_id,
        now=now, rules=current_app.config["LEDGER_RULES"],
        policy=redeem_policy(db.session, partner_id), restore=spend_again)
    unknown = [o.card for o in outcomes if o.card and o.problem and o.problem.slug == "not-found"]
    for card in unknown:  # each an unknown card asked about, as a single claim records it
        harvest.record(db.session, partner_id, card, None, now)
    db.session.commit()
    if unknown:
        watch_for_harvesting(partner_id)
    return {"results": [_result(o) for o in outcomes], "summary": _summary(outcomes)}


def _summary(outcomes: list[batches.Outcome]) -> dict:
    """How many items were booked, replayed, enrolled, known already and refused."""
    counts = dict.fromkeys(("booked", "replayed", "enrolled", "existing", "refused"), 0)
    for o in outcomes:
        kind = ("refused" if o.problem is not None else
                ("enrolled" if o.status == 201 else "existing") if o.member is not None else
                "replayed" if o.replayed else "booked")
        counts[kind] += 1
    return counts


def _result(outcome: batches.Outcome) -> dict:
    if outcome.problem is not None:
        body = outcome.problem.body()
    elif outcome.member is not None:
        body = _MEMBER.dump({"member_id": outcome.member[0], "created_at": outcome.member[1]})
    else:
        booked = outcome.booked
        body = _CLAIM.dump(claim_view(booked.entry, member_id=booked.member_id,
                                      bonus=earn_bonus(db.session, booked.entry, booked.award)))
    return {"status": outcome.status, "replayed": outcome.replayed, "body": body}


@blp.route("/members/<member_id>/pin", methods=["PUT"])
@blp.doc(security=AUTH, summary="Set a member's PIN (first time: pin alone; to change it: "
         "current_pin too), as entered on the till's PIN pad")
@blp.arguments(schemas.PinSchema)
@blp.response(204, description="The PIN is set")
@problems(blp, *COMMON, *BODY, "not-found", "member-locked", "member-auth-required",
          "member-auth-invalid")
def set_pin(body: dict, member_id: str):
    g.card = member_id  # "no such member" counts as asking about an unknown card
    pins.set_pin(db.session, _known(member_id), body["pin"],
                 current_pin=body.get("current_pin"), now=_now(),
                 log_n=current_app.config["LEDGER_RULES"].pin_log_n,
                 partner_id=g.caller.partner_id)
    db.session.commit()
    return None


@blp.route("/members/<member_id>/consents", methods=["PUT"])
@blp.doc(security=AUTH, summary="Record the member's marketing consent (or its withdrawal) as "
         "given at the calling partner; kept with its history")
@blp.arguments(schemas.ConsentSchema)
@blp.response(200, schemas.ConsentRecordSchema, description="The consent as recorded")
@problems(blp, *COMMON, *BODY, "not-found")
def set_consent(body: dict, member_id: str):
    g.card = member_id  # "no such member" counts as asking about an unknown card
    recorded = consents.record(db.session, _known(member_id), marketing=body["marketing"],
                               channel=body.get("channel"), partner_id=g.caller.partner_id,
                               now=_now())
    db.session.commit()
    return recorded


@blp.route("/holds", methods=["POST"])
@blp.doc(security=AUTH, summary="Hold points for a redemption captured later (two-phase, like "
         "a card authorisation)",
         description="The held points are not available until the hold is captured (redeemed), "
                     "voided or lapses after `expires_in` seconds. Placing a hold is the "
                     "redemption's authorisation: member lock, PIN and limits are checked now.")
@blp.arguments(schemas.HoldSchema)
@blp.response(201, schemas.HoldViewSchema, description="Held (or, with Idempotent-Replayed, "
              "held before: the same hold sent again, answered as it stands now)")
@problems(blp, *COMMON, *BODY, "not-found", "claim-id-conflict", "insufficient-points",
          "limit-exceeded", "member-locked", "member-auth-required", "member-auth-invalid",
          "forbidden")
def place_hold(body: dict):
    g.card = body["member_id"]
    _redeems_here()
    answer = holds.place(db.session, partner_id=g.caller.partner_id, now=_now(),
                         rules=current_app.config["LEDGER_RULES"],
                         policy=redeem_policy(db.session, g.caller.partner_id), **body)
    db.session.commit()
    return _hold_answer(answer, 201)


@blp.route("/holds/<hold_id>", methods=["GET"])
@blp.doc(security=AUTH, summary="One of the caller's holds, as it stands now")
@blp.response(200, schemas.HoldViewSchema, description="The hold")
@problems(blp, *COMMON, "not-found")
def hold(hold_id: str):
    answer = holds.find(db.session, g.caller.partner_id, _known(hold_id))
    db.session.commit()
    return _hold_answer(answer, 200)


@blp.route("/holds/<hold_id>/capture", methods=["POST"])
@blp.doc(security=AUTH, summary="Redeem all or part of an open hold (a burn); the rest is "
         "released")
@blp.arguments(schemas.CaptureSchema)
@blp.response(201, schemas.HoldViewSchema, description="Captured: the hold, with the burn it "
              "booked in `claim` (or, with Idempotent-Replayed, captured before under the same "
              "claim id)")
@problems(blp, *COMMON, *BODY, "not-found", "claim-id-conflict", "hold-closed",
          "insufficient-points")
def capture_hold(body: dict, hold_id: str):
    answer = holds.capture(db.session, partner_id=g.caller.partner_id, hold_id=_known(hold_id),
                           now=_now(), clock=_now, rules=current_app.config["LEDGER_RULES"],
                           **body)
    db.session.commit()
    return _hold_answer(answer, 201)


@blp.route("/holds/<hold_id>/void", methods=["POST"])
@blp.doc(security=AUTH, summary="Release an open hold's points (no body)")
@blp.response(200, schemas.HoldViewSchema, description="Voided")
@problems(blp, *COMMON, "payload-too-large", "not-found", "hold-closed")
def void_hold(hold_id: str):
    answer = holds.void(db.session, partner_id=g.caller.partner_id, hold_id=_known(hold_id),
                        now=_now(), clock=_now)
    db.session.commit()
    return _hold_answer(answer, 200)


def _hold_answer(answer: holds.Answer, status: int):
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
    return hold_view(answer, now=_now()), status, headers


@blp.route("/members/<member_id>/offers", methods=["GET"])
@blp.doc(security=AUTH, summary="The campaigns and coupons the member can use now",
         description="Campaigns running now that qualify the member (tier; a segment-targeted "
                     "one only with the member's marketing consent), and coupons running now with "
                     "whether the member activated and used each.")
@blp.response(200, schemas.OffersSchema, description="The member's offers now")
@problems(blp, *COMMON, "not-found")
@standby_ok
def offers(member_id: str):
    g.card = member_id
    view = offers_of(db.session, _known(member_id), now=_now(),
                     tz=current_app.config["COALITION_TIMEZONE"],
                     tiers=current_app.config["LEDGER_RULES"].tiers)
    harvest.record_read(db.session, g.caller.partner_id, member_id, _now())
    db.session.commit()
    watch_for_harvesting(g.caller.partner_id)
    return view


@blp.route("/members/<member_id>/coupons/<coupon_id>/activation", methods=["POST"])
@blp.doc(security=AUTH, summary="Activate a coupon for the member (no body): 201 the first "
         "time, 200 after",
         description="The coupon's bonus then goes, once, to an earn at the coupon's partner "
                     "within its window. Any partner may activate any coupon for a member.")
@blp.response(201, schemas.CouponActivationSchema, description="Activated now")
@blp.alt_response(200, schema=schemas.CouponActivationSchema, description="Activated already "
                  "(the first activation)")
@problems(blp, *COMMON, "payload-too-large", "not-found", "coupon-ended")
def activate_coupon(member_id: str, coupon_id: str):
    g.card = member_id
    activation, created = coupons.activate(
        db.session, _known(coupon_id), _known(member_id),
        channel=f"partner:{g.caller.partner_id}", now=_now())
    view = coupons.activation_view(activation, member_id, coupons.get(db.session, coupon_id))
    db.session.commit()
    return view, 201 if created else 200


@blp.route("/members/<member_id>/invitation", methods=["POST"])
@blp.doc(security=AUTH, summary="A one-time code for the member portal (no body)",
         description="Hand it to the member (printed at the till, or in your app): with it the "
                     "member sets a password for the coalition's member portal, a first one or a "
                     "new one after a forgotten password. Valid 72 hours, once; a newer code, "
                     "from any partner or the operator, cancels it. The service keeps only a "
                     "hash of it: it is shown in this answer alone.")
@blp.response(201, schemas.InvitationSchema, example=schemas.InvitationSchema.EXAMPLE,
              description="A new code")
@problems(blp, *COMMON, "payload-too-large", "not-found")
def invite_member(member_id: str):
    g.card = member_id
    now = _now()
    code = credentials.issue_code(
        db.session, credentials.principal(credentials.MEMBER, _known(member_id)), now=now,
        actor=f"partner:{g.caller.partner_id}")
    db.session.commit()
    return {"member_id": member_id, "code": code,
            "expires_at": now + credentials.CODE_LIFETIME}, 201


@blp.route("/claims/<claim_id>/reversals", methods=["POST"])
@blp.doc(security=AUTH, summary="Reverse all or part of one of the caller's claims")
@blp.arguments(schemas.ReversalSchema)
@blp.response(201, schemas.ClaimSchema, description="The reversal, booked (or, with "
              "Idempotent-Replayed, booked before: the same reversal sent again)")
@problems(blp, *COMMON, *BODY, "not-found", "claim-id-conflict", "reversal-exceeds-claim")
def reverse(body: dict, claim_id: str):
    return _book(ledger.book_reversal, claim_id=_known(claim_id), **body)


@blp.route("/claims/<claim_id>", methods=["GET"])
@blp.doc(security=AUTH, summary="One of the caller's claims, with its reversals")
@blp.response(200, schemas.ClaimSchema, description="The claim as booked, with its "
              "reversals and what remains of it")
@problems(blp, *COMMON, "not-found")
@standby_ok
def claim(claim_id: str):
    view = current_claim(db.session, g.caller.partner_id, _known(claim_id), now=_now())
    db.session.commit()
    return view
