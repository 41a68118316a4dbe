"""Authentication of partner requests and the partner API's error handlers.

Every blueprint whose routes partners call with a signed token registers these:

    blp.before_request(authenticate)
    blp.register_error_handler(Problem, failed)
    blp.register_error_handler(Exception, crashed)

Transactions: the token's jti is recorded in the same transaction as the request's work, so a
booked claim costs one commit. When a request fails after authentication, its work is rolled
back and the jti alone is committed, so the token still cannot be replayed.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime

from flask import current_app, g, request
from werkzeug.exceptions import HTTPException

from coalition import clock, limits
from coalition.database import db
from coalition.errors import Problem, Refusal, database_unavailable, http_problem, \
    problem_response, unavailable_response
from coalition.periods import day_of

from . import harvest, rejects, tokens

log = logging.getLogger("partners.auth")

KEYS = tokens.KeyCache()
HARVEST_CHECKS = harvest.Throttle()
REJECTS = rejects.Tally()  # refusals that spend no jti, written now and then
AUTH = [{"partnerToken": []}]
# The problems every authenticated route can answer (documented on each operation).
COMMON = ("malformed-request", *tokens.SLUGS, "rate-limited", "unavailable")
PRUNE_EVERY_S = 300.0
_last_prune = [0.0]


def _now() -> datetime:  # a module-level name: tests pin the clock here
    return clock.now()


@limits.authenticates  # a 401 counts against the address: 429 past RATELIMIT_ANONYMOUS
def authenticate() -> None:
    _maybe_prune()  # before this request's transaction: SQLite has one writer at a time
    _write_rejects()
    caller = tokens.authenticate(
        db.session, KEYS, authorization=request.headers.get("Authorization"),
        method=request.method, path=request.path,
        query=request.query_string.decode("latin-1"), body=request.get_data(cache=True),
        audience=current_app.config["COALITION_AUDIENCE"])
    # The jti is spent by then (tokens.py): a replayed token is refused (401) before it can use
    # up its partner's quota. Spent only in this transaction so far: a 429 rolls it back, and
    # the token stays usable.
    g.partner_id = caller.partner_id
    limits.authenticated(caller.partner_id)  # 429 past RATELIMIT_PARTNER (or the route's own)
    g.caller = caller


def spend_again() -> None:
    """Record the caller's jti once more, after its transaction was rolled back."""
    tokens.spend(db.session, g.caller)


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
            if problem is not None:
                count_reject(problem)
            db.session.commit()
        except Problem:  # the jti was used meanwhile: it is spent either way
            db.session.rollback()
            _count_alone(problem)
        else:
            if g.get("card") is not None:
                watch_for_harvesting(caller.partner_id)
    else:
        _count_alone(problem)  # no jti spent (a 401, a 429): the count is all there is


def _count_alone(problem: Problem | None) -> None:
    """A refusal with no jti to commit: tallied in the process, written when due."""
    if problem is None:
        return
    try:
        REJECTS.add(_reject_key(problem))
    except Exception:
        log.warning("reject not counted", exc_info=True)
        return
    _write_rejects()


def _write_rejects() -> None:
    """The tallied refusals, if due, in a transaction of their own. Never raises: counts that
    cannot be written are dropped (logged), the request goes on."""
    counts = REJECTS.due()
    if not counts:
        return
    try:
        with db.engine.begin() as connection:
            rejects.add(connection, counts)
    except Exception:
        log.warning("%d rejects not counted", sum(counts.values()), exc_info=True)


def _reject_key(problem: Problem) -> rejects.Key:
    partner_id = g.get("partner_id") or rejects.UNAUTHENTICATED  # set once the token verified
    return partner_id, day_of(_now(), current_app.config["COALITION_TIMEZONE"])[0], problem.slug


def watch_for_harvesting(partner_id: str) -> None:
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


def failed(problem: Problem):
    if isinstance(problem, Refusal):
        # What the refusal recorded (a wrong PIN counted under the member's lock, a lock, a
        # limit hit) is all the transaction holds besides the jti: commit it, locks and all.
        count_reject(problem)
        try:
            db.session.commit()
        except Exception as exc:  # answered like any failure: 503 unavailable or 500
            return crashed(exc)
        g.pop("caller", None)
        return problem_response(problem)
    _spend_alone(problem)
    return problem_response(problem)


def count_reject(problem: Problem) -> None:
    """Count the problem answer in the current transaction, as its last statement: the
    partner's counter row for the day stays locked only until the commit that follows, and
    concurrent refusals of one partner queue on that one row instead of adding rows. Inside a
    savepoint, so that a failing count (say, the table not migrated yet) is dropped and the
    answer, and the jti committed with it, stand. Never raises."""
    try:
        partner_id, day, slug = _reject_key(problem)
        with db.session.begin_nested():
            rejects.count(db.session, partner_id, day, slug)
    except Exception:
        log.warning("reject not counted", exc_info=True)


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
