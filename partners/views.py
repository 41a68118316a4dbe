"""The partner API (v1): thin handlers that parse, authorise, call one domain function, serialise.

Transactions: the token's jti is recorded in the same transaction as the claim, so a booked
claim costs one commit. When a request fails after authentication, its work is rolled back and
the jti alone is committed, so the token still cannot be replayed.
"""
from __future__ import annotations

import logging
import re
import time
from datetime import datetime, timezone

from flask import current_app, g, request
from werkzeug.exceptions import HTTPException

from coalition import ledger, limits, members, pins
from coalition.api import Blueprint, problems
from coalition.database import db
from coalition.errors import Problem, Refusal, database_unavailable, http_problem, \
    problem_response, unavailable_response
from coalition.fields import ID_PATTERN

from . import harvest, schemas, tokens
from .service import claim_view, current_claim, redeem_policy

log = logging.getLogger("partners.views")
blp = Blueprint("partner_api", __name__, url_prefix="/v1",
                description="Signed partner requests: members, earn, burn, reversals, claims.")
KEYS = tokens.KeyCache()
HARVEST_CHECKS = harvest.Throttle()
AUTH = [{"partnerToken": []}]
COMMON = ("malformed-request", "invalid-token", "rate-limited", "unavailable")
BODY = ("payload-too-large", "unsupported-media-type", "validation-error")
_ID = re.compile(ID_PATTERN)
PRUNE_EVERY_S = 300.0
_last_prune = [0.0]


def _now() -> datetime:
    return datetime.now(timezone.utc)


@blp.before_request
@limits.authenticates  # a 401 counts against the address: 429 past RATELIMIT_ANONYMOUS
def authenticate() -> None:
    _maybe_prune()  # before this request's transaction: SQLite has one writer at a time
    caller = tokens.authenticate(
        db.session, KEYS, authorization=request.headers.get("Authorization", ""),
        method=request.method, path=request.path,
        query=request.query_string.decode("latin-1"), body=request.get_data(cache=True),
        audience=current_app.config["COALITION_AUDIENCE"])
    # The jti first: a replayed token is refused (401) before it can use up its partner's
    # quota. Spent only in this transaction so far: a 429 rolls it back, the token stays usable.
    tokens.spend(db.session, caller)
    g.partner_id = caller.partner_id
    limits.authenticated(caller.partner_id)  # 429 past RATELIMIT_PARTNER (or the route's own)
    g.caller = caller


def _maybe_prune() -> None:
    """Dead jti rows are deleted now and then, off the claim's own transaction."""
    if time.monotonic() - _last_prune[0] < PRUNE_EVERY_S:
        return
    _last_prune[0] = time.monotonic()
    with db.engine.begin() as connection:
        tokens.prune(connection, _now())
        harvest.prune(connection, _now(), harvest.Thresholds.from_config(current_app.config).window)


def _spend_alone(problem: Problem | None = None) -> None:
    """After a failure the request's work is rolled back; its jti alone is committed, with
    the lookup of an unknown card (harvesting watch) if that is why it failed."""
    db.session.rollback()
    caller = g.pop("caller", None)
    if caller is not None:
        try:
            tokens.spend(db.session, caller)
            card = g.get("card")
            if card is not None and problem is not None and problem.slug == "not-found":
                harvest.record(db.session, caller.partner_id, card, None, _now())
            db.session.commit()
        except Problem:  # the jti was used meanwhile: it is spent either way
            pass
        else:
            if g.get("card") is not None:
                _watch_for_harvesting(caller.partner_id)


def _watch_for_harvesting(partner_id: str) -> None:
    """After the request's commit: flag the partner if it crossed a harvesting rule. Never
    fails the request; runs at most every HARVEST_CHECK_EVERY_S per partner and process."""
    thresholds = harvest.Thresholds.from_config(current_app.config)
    if not HARVEST_CHECKS.due(partner_id, thresholds.check_every_s):
        return
    try:
        flagged = harvest.evaluate(db.session, partner_id, _now(), thresholds)
        db.session.commit()
    except Exception:
        db.session.rollback()
        log.exception("harvesting check failed")
        return
    if flagged:
        log.warning("partner flagged as suspicious", extra={"partner_id": partner_id,
                                                            "rules": flagged})


@blp.errorhandler(Problem)
def failed(problem: Problem):
    if isinstance(problem, Refusal):
        # What the refusal recorded (a wrong PIN counted under the member's lock, a lock, a
        # limit hit) is all the transaction holds besides the jti: commit it, locks and all.
        try:
            db.session.commit()
        except Exception as exc:  # answered like any failure: 503 unavailable or 500
            return crashed(exc)
        g.pop("caller", None)
        return problem_response(problem)
    _spend_alone(problem)
    return problem_response(problem)


@blp.errorhandler(Exception)
def crashed(exc: Exception):
    if isinstance(exc, HTTPException):  # 413 and friends: not a crash
        return http_problem(exc)
    if database_unavailable(exc):
        # Nothing was booked (or the commit landed and a retry replays it). The jti cannot be
        # spent without the database; its token only ever replays this same request.
        log.warning("database unavailable: %s", type(getattr(exc, "orig", None) or exc).__name__)
        try:
            _spend_alone()
        except Exception:  # still away
            db.session.rollback()
        return unavailable_response()
    log.exception("unhandled error in the partner API")
    _spend_alone()
    return problem_response(Problem("internal-error", "The request could not be processed."))


def _answer(booked: ledger.Booked):
    db.session.commit()
    headers = {"Idempotent-Replayed": "true"} if booked.replayed else {}
    return claim_view(booked.entry), 201, headers


def _book(book, idempotency_key: str, **kwargs):
    partner_id = g.caller.partner_id
    for _attempt in range(2):
        try:
            return _answer(book(db.session, partner_id=partner_id, now=_now(),
                                rules=current_app.config["LEDGER_RULES"], **kwargs))
        except ledger.ClaimIdRace as race:
            # Same claim id booked concurrently for another member: answer as a retry would.
            db.session.rollback()
            tokens.spend(db.session, g.caller)
            booked = ledger.replay(db.session, partner_id, idempotency_key, race.fingerprint)
            if booked is not None:
                return _answer(booked)
            # The other booking rolled back after all: this one may proceed.
    raise Problem("claim-id-conflict", "The claim id is being booked concurrently; retry.")


def _known(identifier: str) -> str:
    if not _ID.fullmatch(identifier):
        raise Problem("not-found", "No such resource.")
    return identifier


@blp.route("/members", methods=["POST"])
@blp.doc(security=AUTH, summary="Enrol a member (201 the first time, 200 after)")
@blp.arguments(schemas.EnrolSchema)
@blp.response(201, schemas.MemberSchema)
@blp.alt_response(200, schema=schemas.MemberSchema, description="Enrolled already")
@problems(blp, *COMMON, *BODY)
def enrol(body: dict):
    member, created = members.enrol(db.session, body["member_id"], now=_now(),
                                    enrolled_by=g.caller.partner_id)
    db.session.commit()
    return {"member_id": member.external_id, "created_at": member.created_at}, 201 if created else 200


@blp.route("/members/<member_id>/balance", methods=["GET"])
@blp.doc(security=AUTH, summary="A member's balance, shared across the coalition")
@blp.response(200, schemas.BalanceSchema)
@problems(blp, *COMMON, "not-found")
def balance(member_id: str):
    g.card = member_id
    view = members.balance(db.session, _known(member_id), now=_now(),
                           tz=current_app.config["COALITION_TIMEZONE"])
    harvest.record_read(db.session, g.caller.partner_id, member_id, _now())
    db.session.commit()
    _watch_for_harvesting(g.caller.partner_id)
    return view


@blp.route("/earn", methods=["POST"])
@blp.doc(security=AUTH, summary="Credit points issued by the calling partner")
@blp.arguments(schemas.EarnSchema)
@blp.response(201, schemas.ClaimSchema)
@problems(blp, *COMMON, *BODY, "not-found", "claim-id-conflict")
def earn(body: dict):
    g.card = body["member_id"]  # "no such member" counts as asking about an unknown card
    return _book(ledger.book_earn, body["claim_id"], **body)


@blp.route("/burn", methods=["POST"])
@blp.doc(security=AUTH, summary="Redeem points at the calling partner")
@blp.arguments(schemas.BurnSchema)
@blp.response(201, schemas.ClaimSchema)
@problems(blp, *COMMON, *BODY, "not-found", "claim-id-conflict", "insufficient-points",
          "limit-exceeded", "member-locked", "member-auth-required", "member-auth-invalid")
def burn(body: dict):
    g.card = body["member_id"]
    return _book(ledger.book_burn, body["claim_id"],
                 policy=redeem_policy(db.session, g.caller.partner_id), **body)


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


@blp.route("/claims/<claim_id>/reversals", methods=["POST"])
@blp.doc(security=AUTH, summary="Reverse all or part of one of the caller's claims")
@blp.arguments(schemas.ReversalSchema)
@blp.response(201, schemas.ClaimSchema)
@problems(blp, *COMMON, *BODY, "not-found", "claim-id-conflict", "reversal-exceeds-claim")
def reverse(body: dict, claim_id: str):
    return _book(ledger.book_reversal, body["reversal_id"], claim_id=_known(claim_id), **body)


@blp.route("/claims/<claim_id>", methods=["GET"])
@blp.doc(security=AUTH, summary="One of the caller's claims, with its reversals")
@blp.response(200, schemas.ClaimSchema)
@problems(blp, *COMMON, "not-found")
def claim(claim_id: str):
    view = current_claim(db.session, g.caller.partner_id, _known(claim_id), now=_now())
    db.session.commit()
    return view
