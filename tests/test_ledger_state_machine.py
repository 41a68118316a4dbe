"""Stateful property test of the partner API: random runs of signed earns (some pending), burns,
partial and full reversals, idempotent and conflicting retries, redemption holds (placed,
captured in whole or part, voided, lapsing as the clock moves), member locks, expiry, partner
suspensions and clock steps. A small model, independent of coalition.ledger, predicts every answer (201, 401 while
suspended, 409, 422 and the balance after); after every step `ledger verify` must pass and
every member's balance, lots by issuer and debts by creditor must be the model's.

Requests go through the whole HTTP stack (signed tokens, Flask test client). Only the service's
clock is fixed (partners.views._now), so pending points become available when the test says;
tokens are still signed with the wall clock, which the token check reads. Every example starts
from an empty database.

More examples or longer runs:
    LEDGER_STATE_EXAMPLES=300 LEDGER_STATE_STEPS=40 pytest tests/test_ledger_state_machine.py
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule, run_state_machine_as_test)
from sqlalchemy import func, select

from coalition import expiry, member_locks
from coalition.database import db
from coalition.models import DebtLot, Lot, Member
from coalition.verify import verify
from partners import service as partner_service
from partners import views
from partners.client import PartnerClient, rfc3339
from tests.conftest import ON_POSTGRES, fresh_database, new_key, public_pem, transport_for

UTC = timezone.utc
# Four days before Berlin's DST starts and a week before April: runs that move the clock on
# book into two months and hold lots of two expiry dates.
START = datetime(2026, 3, 25, 9, 0, tzinfo=UTC)
TIMEZONE = "Europe/Berlin"  # COALITION_TIMEZONE's default
DAY = 86400
MAX_AGE = timedelta(days=30)  # MAX_CLAIM_AGE_DAYS' default
MAX_FUTURE = timedelta(minutes=5)
READER = "desk"  # a partner that is never suspended, so balances can always be read
OPERATOR = "ops:state-machine"  # the actor the audit log records, as the CLI records a user
# PostgreSQL pays a round trip per query: fewer runs by default.
EXAMPLES = int(os.environ.get("LEDGER_STATE_EXAMPLES", "15" if ON_POSTGRES else "30"))
STEPS = int(os.environ.get("LEDGER_STATE_STEPS", "25"))

INDEX = st.integers(0, 1000)  # picks from a list that changes as the run goes
# Seconds before now; now and then on the age limit or just past it.
BACK = st.one_of(st.just(0), *[st.integers(1, 3600)] * 3, *[st.integers(3600, 2 * DAY)] * 3,
                 st.sampled_from([30 * DAY, 30 * DAY + 1]))
# Seconds from now; 0 is the boundary: pending_until == now is available at once.
PENDING = st.one_of(st.none(), st.none(), st.just(0), st.integers(1, 20 * DAY))
# Per member: two earns, a burn (0: none, capped at the earns), a pending earn, its days pending.
OPENING = st.tuples(st.integers(1, 500), st.integers(1, 500), st.integers(0, 1000),
                    st.integers(1, 500), st.integers(1, 20))
CLOCK = st.one_of(st.integers(1, 3600), st.integers(3600, 3 * DAY), st.integers(3 * DAY, 12 * DAY))


# --- the model -----------------------------------------------------------------------------

class Rejected(Exception):
    def __init__(self, status: int, slug: str) -> None:
        super().__init__(f"{status} {slug}")
        self.status, self.slug = status, slug


@dataclass
class Claim:
    """A claim as its partner sends it; a retry resends the very same content."""
    cid: str  # claim_id, or reversal_id of a reversal
    partner: str
    kind: str  # earn | burn | reversal
    member: str
    points: int
    occurred: datetime
    pending_until: datetime | None = None
    target: str | None = None  # the claim a reversal reverses
    answer: dict | None = None  # the 201 body once booked: every retry must get it back
    refused_while_suspended: bool = False
    reversed: int = 0
    # A burn's lots (by earn claim id) -> points still taken from each, in consumption order.
    taken: dict[str, int] = field(default_factory=dict)

    def request(self) -> tuple[str, dict]:
        when = rfc3339(self.occurred)
        if self.kind == "reversal":
            return (f"/v1/claims/{self.target}/reversals",
                    {"reversal_id": self.cid, "points": self.points, "occurred_at": when})
        body = {"claim_id": self.cid, "member_id": self.member, "points": self.points,
                "occurred_at": when}
        if self.pending_until is not None:
            body["pending_until"] = rfc3339(self.pending_until)
        return f"/v1/{self.kind}", body


@dataclass
class ModelLot:
    member: str
    issuer: str
    remaining: int
    occurred: datetime
    available_at: datetime | None  # None: spendable from the start
    seq: int
    expired: bool = False  # past its expiry (the clock jumped beyond it)
    expired_points: int = 0  # booked to the expired account, net of what reversals took back

    def spendable(self, now: datetime) -> bool:
        return (self.remaining > 0 and not self.expired
                and (self.available_at is None or self.available_at <= now))

    def burn_order(self) -> tuple:
        # First-expiring first: a lot's expiry grows with its occurred_at (the end of a month
        # POINTS_EXPIRE_MONTHS on), so this is earliest occurred_at, then earliest booked.
        # Nothing expires within a run.
        return (self.occurred, self.seq)


@dataclass
class ModelHold:
    hid: str
    partner: str
    member: str
    points: int
    occurred: datetime
    lifetime: int  # expires_in, seconds
    expires_at: datetime  # placed at + lifetime
    status: str = "open"  # open | captured | voided (lapsed: open past expires_at)
    claim: str | None = None  # the capture's claim id
    answer: dict | None = None  # the 201 body of the placement

    def open_at(self, now: datetime) -> bool:
        return self.status == "open" and now < self.expires_at

    def request(self) -> dict:
        return {"hold_id": self.hid, "member_id": self.member, "points": self.points,
                "occurred_at": rfc3339(self.occurred),
                "expires_in": self.lifetime}


@dataclass
class Debt:
    member: str
    creditor: str  # the partner whose reversed earn the member had spent
    remaining: int
    earn: str  # the claim id of that earn: points given back to its lot pay this debt first


def nonzero_sums(pairs) -> dict:
    sums = defaultdict(int)
    for key, points in pairs:
        sums[key] += points
    return {key: points for key, points in sums.items() if points}


class Model:
    def __init__(self) -> None:
        self.lots: dict[str, ModelLot] = {}  # by the claim id of the earn that made the lot
        self.locked: set[str] = set()  # members the operator locked: no burns, earns book
        self.debts: list[Debt] = []  # oldest first: the order earns pay them off
        self.holds: dict[str, ModelHold] = {}

    def debt(self, member: str) -> int:
        return sum(d.remaining for d in self.debts if d.member == member)

    def reserved(self, member: str, now: datetime) -> int:
        """The points the member's open holds keep from being available."""
        return sum(h.points for h in self.holds.values() if h.member == member and h.open_at(now))

    def available(self, member: str, now: datetime) -> int:
        return (sum(lot.remaining for lot in self.lots.values()
                    if lot.member == member and lot.spendable(now))
                - self.debt(member) - self.reserved(member, now))

    def place(self, hold: ModelHold, now: datetime) -> None:
        """A hold is checked as a burn: its window, the lock, then the points (all of a run's
        lots stay valid for longer than a hold lives)."""
        if not now - MAX_AGE <= hold.occurred <= now + MAX_FUTURE:
            raise Rejected(422, "validation-error")
        if hold.member in self.locked:
            raise Rejected(403, "member-locked")
        if hold.points > self.available(hold.member, now):
            raise Rejected(422, "insufficient-points")
        self.holds[hold.hid] = hold

    def capture(self, hold: ModelHold, claim: Claim, now: datetime) -> int:
        """Capture as the hold's partner: the capture's burn (not authorised again: a lock
        does not stop it), or Rejected leaving the model as it was."""
        if not hold.open_at(now):
            raise Rejected(409, "hold-closed")
        if claim.points > hold.points:
            raise Rejected(422, "validation-error")
        hold.status = "captured"
        try:
            self._burn(claim, now)
        except Rejected:
            hold.status = "open"  # the hold stays open, to be captured for less or voided
            raise
        hold.claim = claim.cid
        return self.available(claim.member, now)

    def pending(self, member: str, now: datetime) -> int:
        return sum(lot.remaining for lot in self.lots.values() if lot.member == member
                   and not lot.expired and lot.available_at is not None and lot.available_at > now)

    def held(self, member: str) -> int:
        """What the balance lists as expiring: the points of lots not yet expired."""
        return sum(lot.remaining for lot in self.lots.values()
                   if lot.member == member and not lot.expired)

    def expire_all(self) -> None:
        """Every lot is past its expiry, and the expiry run books what it holds."""
        for lot in self.lots.values():
            lot.expired = True
            lot.expired_points += lot.remaining
            lot.remaining = 0

    def by_issuer(self) -> dict[tuple[str, str], int]:
        return nonzero_sums(((lot.member, lot.issuer), lot.remaining) for lot in self.lots.values())

    def by_creditor(self) -> dict[tuple[str, str], int]:
        return nonzero_sums(((d.member, d.creditor), d.remaining) for d in self.debts)

    def book(self, claim: Claim, target: Claim | None, now: datetime) -> int:
        """Book a claim the service has not stored; returns the member's available points
        after it, or raises Rejected leaving the model as it was."""
        if not now - MAX_AGE <= claim.occurred <= now + MAX_FUTURE:
            raise Rejected(422, "validation-error")
        if claim.kind == "burn" and claim.member in self.locked:
            raise Rejected(403, "member-locked")
        if claim.kind == "earn":
            self._earn(claim, now)
        elif claim.kind == "burn":
            self._burn(claim, now)
        else:
            self._reverse(claim, target)
        return self.available(claim.member, now)

    def _earn(self, claim: Claim, now: datetime) -> None:
        pending = claim.pending_until is not None and claim.pending_until > now
        lot = ModelLot(claim.member, claim.partner, claim.points, claim.occurred,
                       claim.pending_until if pending else None, len(self.lots))
        if not pending:  # a pending earn can still be cancelled: it pays off no debt
            for debt in self.debts:
                if debt.member == claim.member:
                    pay = min(debt.remaining, lot.remaining)
                    debt.remaining -= pay
                    lot.remaining -= pay
        self.lots[claim.cid] = lot

    def _burn(self, claim: Claim, now: datetime) -> None:
        if claim.points > self.available(claim.member, now):
            raise Rejected(422, "insufficient-points")
        left = claim.points
        for cid, lot in sorted(((c, lot) for c, lot in self.lots.items()
                                if lot.member == claim.member and lot.spendable(now)),
                               key=lambda item: item[1].burn_order()):
            take = min(left, lot.remaining)
            lot.remaining -= take
            claim.taken[cid] = take
            left -= take
            if left == 0:
                break

    def _reverse(self, claim: Claim, target: Claim) -> None:
        if target.reversed + claim.points > target.points:
            raise Rejected(422, "reversal-exceeds-claim")
        target.reversed += claim.points
        if target.kind == "earn":
            lot = self.lots[target.cid]
            take = min(claim.points, lot.remaining)
            lot.remaining -= take
            unexpire = min(claim.points - take, lot.expired_points)  # from breakage, not debt
            lot.expired_points -= unexpire
            take += unexpire
            if claim.points > take:  # spent already: the member owes the rest
                self.debts.append(Debt(target.member, target.partner, claim.points - take,
                                       target.cid))
            return
        left = claim.points
        for cid in reversed(list(target.taken)):  # the lot consumed last gets its points first
            give = min(left, target.taken[cid])
            target.taken[cid] -= give
            left -= give
            for debt in self.debts:  # debt first: the lot's own reversed earn's debts
                if debt.member == target.member and debt.earn == cid:
                    pay = min(debt.remaining, give)
                    debt.remaining -= pay
                    give -= pay
            self.lots[cid].remaining += give


# --- driving the service -------------------------------------------------------------------

class Clock:
    """The service's `now`, moved only by the test."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def points_by(partner, points, member) -> dict[tuple[str, str], int]:
    """Remaining points per (member, partner) as the database holds them."""
    rows = db.session.execute(select(Member.external_id, partner, func.sum(points))
                              .join(Member, Member.id == member)
                              .group_by(Member.external_id, partner)).all()
    return {(m, p): int(total) for m, p, total in rows if total}


def pick(items: list, i: int):
    return items[i % len(items)]


def expect_problem(response, status: int, slug: str) -> None:
    assert response.status == status, (status, slug, response.status, response.body)
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].rsplit("/", 1)[-1] == slug, response.body
    if status == 401:
        assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, app, template: str, clock: Clock, keys: dict) -> None:
        super().__init__()
        with app.app_context():
            fresh_database(app, template)
        # A new history, so new request counts: hundreds of runs in one app would otherwise
        # reach the per-partner rate limit.
        app.extensions["coalition_limits"].limiter.reset()
        clock.now = START
        self.app, self.clock, self.keys = app, clock, keys
        transport = transport_for(app)
        self.clients = {pid: PartnerClient("", pid, key, transport=transport)
                        for pid, key in keys.items()}
        self.model = Model()
        self.claims: dict[str, Claim] = {}  # every claim id sent, booked or not
        self.partners: list[str] = []
        self.members: list[str] = []
        self.suspended: set[str] = set()
        self.expiry_runs = 0
        self.hold_count = 0

    @property
    def now(self) -> datetime:
        return self.clock.now

    def booked(self) -> list[Claim]:
        return [c for c in self.claims.values() if c.answer is not None]

    def reversible(self) -> list[Claim]:
        return [c for c in self.booked() if c.kind != "reversal"]

    def post(self, partner: str, path: str, body: dict):
        return self.clients[partner].request("POST", path, body)

    def set_status(self, partner: str, status: str) -> None:
        with self.app.app_context():
            partner_service.set_status(db.session, partner, status, now=self.now, actor=OPERATOR)
            db.session.commit()

    def new_claim(self, kind: str, partner: str, member: str, points: int, occurred: datetime,
                  **extra) -> Claim:
        claim = Claim(f"c{len(self.claims)}", partner, kind, member, points, occurred, **extra)
        self.claims[claim.cid] = claim
        return claim

    def submit(self, claim: Claim) -> None:
        """Send a claim (first time or retry) and check the answer against the model's."""
        response = self.post(claim.partner, *claim.request())
        if claim.partner in self.suspended:
            expect_problem(response, 401, "partner-suspended")
            claim.refused_while_suspended = claim.answer is None
            return
        if claim.answer is not None:
            assert response.status == 201, response.body
            assert response.headers.get("idempotent-replayed") == "true"
            assert response.json() == claim.answer
            return
        try:
            balance_after = self.model.book(claim, self.claims.get(claim.target), self.now)
        except Rejected as rejected:
            expect_problem(response, rejected.status, rejected.slug)
            return
        assert response.status == 201, response.body
        assert "idempotent-replayed" not in response.headers
        answer = response.json()
        pending = claim.pending_until is not None and claim.pending_until > self.now
        assert (answer["claim_id"], answer["kind"], answer["member_id"], answer["points"]) == (
            claim.cid, claim.kind, claim.member, claim.points)
        assert answer["status"] == ("pending" if pending else "booked")
        assert answer["balance_after"] == balance_after, (answer, balance_after)
        claim.answer = answer

    def check_claim_view(self, claim: Claim) -> None:
        response = self.clients[claim.partner].claim(claim.cid)
        assert response.status == 200, response.body
        view = response.json()
        if claim.kind == "reversal":
            status = "booked"
        elif claim.reversed == claim.points:
            status = "reversed"
        elif claim.pending_until is not None and claim.pending_until > self.now:
            status = "pending"
        else:
            status = "partially_reversed" if claim.reversed else "booked"
        assert (view["reversed_points"], view["status"]) == (claim.reversed, status), view

    # --- setup ------------------------------------------------------------------------------

    @initialize(partners=st.integers(2, 3), members=st.integers(1, 3),
                opening=st.lists(OPENING, min_size=3, max_size=3))
    def register(self, partners: int, members: int, opening: list[tuple]) -> None:
        self.partners = [f"p{i}" for i in range(partners)]
        with self.app.app_context():
            for pid in [*self.partners, READER]:
                partner_service.add_partner(db.session, pid, pid.title(), now=self.now,
                                            actor=OPERATOR)
                partner_service.add_key(db.session, pid, public_pem(self.keys[pid]),
                                        now=self.now, actor=OPERATOR)
            db.session.commit()
        self.members = [f"M{i}" for i in range(members)]
        for i, member in enumerate(self.members):
            assert self.clients[READER].enrol(member).status == 201
            # Each member starts with earns at two partners, a burn across both lots and a
            # pending earn: a run that gets only a few of the rules (hypothesis leaves some
            # out of each run) still has spent lots, a burn to reverse and points to release.
            first, second, burn, pending, days = opening[i]
            for j, points in enumerate((first, second)):
                self.submit(self.new_claim("earn", pick(self.partners, i + j), member, points,
                                           self.now - timedelta(hours=2 - j)))
            if min(burn, first + second):
                self.submit(self.new_claim("burn", pick(self.partners, i + 2), member,
                                           min(burn, first + second), self.now))
            self.submit(self.new_claim("earn", pick(self.partners, i + 1), member, pending,
                                       self.now, pending_until=self.now + timedelta(days=days)))

    # --- claims -----------------------------------------------------------------------------

    @rule(p=INDEX, m=INDEX, points=st.integers(1, 500), back=BACK, pending=PENDING)
    def earn(self, p, m, points, back, pending) -> None:
        pending_until = None if pending is None else self.now + timedelta(seconds=pending)
        self.submit(self.new_claim("earn", pick(self.partners, p), pick(self.members, m), points,
                                   self.now - timedelta(seconds=back), pending_until=pending_until))

    @rule(p=INDEX, m=INDEX, size=st.sampled_from(["some", "all", "all", "over"]),
          points=st.integers(1, 400), back=BACK)
    def burn(self, p, m, size, points, back) -> None:
        # Members with points to spend first: burns of empty accounts are all alike.
        holders = [m for m in self.members if self.model.available(m, self.now) > 0]
        member = pick(holders if holders and size != "over" else self.members, m)
        available = self.model.available(member, self.now)
        points = {"some": points, "all": max(available, 1), "over": max(available, 0) + 1}[size]
        self.submit(self.new_claim("burn", pick(self.partners, p), member, points,
                                   self.now - timedelta(seconds=back)))

    @precondition(lambda self: self.reversible())
    @rule(t=INDEX, of=st.sampled_from(["any", "spent earn", "burn"]),
          size=st.sampled_from(["full", "half", "some", "over"]), points=st.integers(1, 500),
          back=BACK)
    def reverse(self, t, of, size, points, back) -> None:
        # Spent earns (their reversal leaves a debt) and burns are picked on purpose: among
        # all claims they would be rare.
        targets = {"any": self.reversible(),
                   "spent earn": [c for c in self.reversible() if c.kind == "earn"
                                  and self.model.lots[c.cid].remaining < c.points - c.reversed],
                   "burn": [c for c in self.reversible() if c.kind == "burn"]}[of]
        target = pick(targets or self.reversible(), t)
        left = target.points - target.reversed
        points = {"full": max(left, 1), "half": max(left // 2, 1), "some": points,
                  "over": left + 1}[size]
        when = max(self.now - timedelta(seconds=back), target.occurred)  # never before its claim
        self.submit(self.new_claim("reversal", target.partner, target.member, points, when,
                                   target=target.cid))

    @rule(i=INDEX, rejected=st.booleans())
    def retry(self, i, rejected) -> None:
        """The same content again: a booked claim replays, a rejected one is evaluated afresh."""
        claims = [c for c in self.claims.values() if (c.answer is None) == rejected]
        claim = pick(claims or list(self.claims.values()), i)
        active = claim.partner not in self.suspended
        if active and claim.answer is None:  # rejected claims are not stored
            expect_problem(self.clients[claim.partner].claim(claim.cid), 404, "not-found")
        self.submit(claim)
        if active and claim.answer is not None:
            self.check_claim_view(claim)

    @precondition(lambda self: self.booked())
    @rule(i=INDEX, change=st.sampled_from(["points", "occurred_at", "member", "kind"]))
    def conflicting_retry(self, i, change) -> None:
        claim = pick(self.booked(), i)
        path, body = claim.request()
        others = [m for m in self.members if m != claim.member]
        if change == "occurred_at":
            body["occurred_at"] = rfc3339(claim.occurred - timedelta(seconds=1))
        elif change == "member" and claim.kind != "reversal" and others:
            body["member_id"] = others[0]
        elif change == "kind" and claim.kind != "reversal":  # the same id, sent as the other kind
            path = "/v1/burn" if claim.kind == "earn" else "/v1/earn"
            body.pop("pending_until", None)
        else:
            body["points"] += 1
        response = self.post(claim.partner, path, body)
        if claim.partner in self.suspended:
            expect_problem(response, 401, "partner-suspended")
        else:
            expect_problem(response, 409, "claim-id-conflict")

    # --- holds ------------------------------------------------------------------------------

    @rule(p=INDEX, m=INDEX, size=st.sampled_from(["some", "all", "over"]),
          points=st.integers(1, 400), lifetime=st.sampled_from([60, 600, 3600]),
          again=st.booleans())
    def place_hold(self, p, m, size, points, lifetime, again) -> None:
        holders = [m for m in self.members if self.model.available(m, self.now) > 0]
        member = pick(holders if holders and size != "over" else self.members, m)
        available = self.model.available(member, self.now)
        points = {"some": points, "all": max(available, 1), "over": max(available, 0) + 1}[size]
        self.hold_count += 1
        occurred = self.now - timedelta(seconds=1)
        hold = ModelHold(f"h{self.hold_count}", pick(self.partners, p), member, points, occurred,
                         lifetime, self.now + timedelta(seconds=lifetime))
        response = self.post(hold.partner, "/v1/holds", hold.request())
        if hold.partner in self.suspended:
            expect_problem(response, 401, "partner-suspended")
            return
        try:
            self.model.place(hold, self.now)
        except Rejected as rejected:
            expect_problem(response, rejected.status, rejected.slug)
            return
        assert response.status == 201, response.body
        hold.answer = response.json()
        assert (hold.answer["status"], hold.answer["points"], hold.answer["expires_at"]) == (
            "open", points, rfc3339(hold.expires_at))
        if again:  # a retry of the same hold replays it, holding nothing more
            replay = self.post(hold.partner, "/v1/holds", hold.request())
            assert replay.status == 201 and replay.headers.get("idempotent-replayed") == "true"
            assert replay.json() == hold.answer

    @precondition(lambda self: self.model.holds)
    @rule(h=INDEX, size=st.sampled_from(["all", "all", "part", "over"]), stranger=st.booleans(),
          again=st.booleans())
    def capture_hold(self, h, size, stranger, again) -> None:
        hold = pick(list(self.model.holds.values()), h)
        others = [p for p in self.partners if p != hold.partner]
        partner = others[0] if stranger and others and h % 4 == 0 else hold.partner
        points = {"all": None, "part": max(hold.points // 2, 1), "over": hold.points + 1}[size]
        claim = self.new_claim("burn", partner, hold.member,
                               hold.points if points is None else points, hold.occurred)
        body = {"claim_id": claim.cid} | ({} if points is None else {"points": points})
        path = f"/v1/holds/{hold.hid}/capture"
        response = self.post(partner, path, body)
        if partner in self.suspended:
            expect_problem(response, 401, "partner-suspended")
            return
        if partner != hold.partner:
            expect_problem(response, 404, "not-found")  # another partner's hold
            return
        try:
            balance_after = self.model.capture(hold, claim, self.now)
        except Rejected as rejected:
            expect_problem(response, rejected.status, rejected.slug)
            return
        assert response.status == 201, response.body
        answer = response.json()
        assert (answer["status"], answer["captured_points"], answer["claim_id"]) == (
            "captured", claim.points, claim.cid)
        assert answer["claim"]["balance_after"] == balance_after, (answer, balance_after)
        claim.answer = answer["claim"]
        if again:  # the capture resent: it replays, booking nothing more
            replay = self.post(partner, path, body)
            assert replay.status == 201 and replay.headers.get("idempotent-replayed") == "true"
            assert replay.json()["claim"] == claim.answer

    @precondition(lambda self: self.model.holds)
    @rule(h=INDEX)
    def void_hold(self, h) -> None:
        hold = pick(list(self.model.holds.values()), h)
        response = self.clients[hold.partner].void(hold.hid)
        if hold.partner in self.suspended:
            expect_problem(response, 401, "partner-suspended")
            return
        if not hold.open_at(self.now):
            expect_problem(response, 409, "hold-closed")
            status = "lapsed" if hold.status == "open" else hold.status
            assert response.json()["hold_status"] == status
            return
        assert response.status == 200 and response.json()["status"] == "voided", response.body
        hold.status = "voided"

    # --- operators and time -----------------------------------------------------------------

    @rule(p=INDEX)
    def suspend_or_activate(self, p) -> None:
        """One rule for both, so that a run spends few of its steps on operators."""
        partner = pick(self.partners, p)
        if partner in self.suspended:
            self.set_status(partner, "active")
            self.suspended.discard(partner)
            # The partner resends what was refused meanwhile, twice as a client timing out
            # might: nothing was stored, so the first books (or is rejected) afresh and the
            # second replays it.
            for claim in [c for c in self.claims.values()
                          if c.partner == partner and c.refused_while_suspended]:
                claim.refused_while_suspended = False
                self.submit(claim)
                self.submit(claim)
            return
        self.set_status(partner, "suspended")
        self.suspended.add(partner)
        # Reads too: a suspended partner is refused whatever it asks.
        expect_problem(self.clients[partner].balance(self.members[0]), 401, "partner-suspended")

    @rule(m=INDEX)
    def lock_or_unlock(self, m) -> None:
        """The operator locks a member against redemption, or lifts the lock (one rule)."""
        member = pick(self.members, m)
        with self.app.app_context():
            change = member_locks.unlock if member in self.model.locked else member_locks.lock
            change(db.session, member, "state machine", now=self.now, actor=OPERATOR)
            db.session.commit()
        self.model.locked ^= {member}

    @precondition(lambda self: self.expiry_runs < 2)
    @rule()
    def expire_everything(self) -> None:
        """The clock jumps past every lot's expiry (38 months: a lot expires at most 37 months
        after its earn) and the operator's expiry run books them; claims go on from there."""
        self.clock.now += timedelta(days=38 * 31)
        as_of = (self.now - timedelta(hours=1)).astimezone(ZoneInfo(TIMEZONE)).date()
        with self.app.app_context():
            expiry.expire(db.session, as_of=as_of, now=lambda: self.now, tz=TIMEZONE)
        self.model.expire_all()
        self.expiry_runs += 1

    @rule(seconds=st.one_of(CLOCK, st.none()))
    def advance_clock(self, seconds) -> None:
        """By some seconds, or (None) exactly to the next pending_until: the boundary."""
        releases = [lot.available_at for lot in self.model.lots.values()
                    if lot.available_at is not None and lot.available_at > self.now]
        if seconds is None and releases:
            self.clock.now = min(releases)
        else:
            self.clock.now += timedelta(seconds=seconds or 1)

    # --- after every step -------------------------------------------------------------------

    @invariant()
    def ledger_verifies(self) -> None:
        with self.app.app_context():
            report = verify(db.session, self.app.extensions.get("ledger_checks"))
            lots = points_by(Lot.issuer_id, Lot.remaining, Lot.member_id)
            debts = points_by(DebtLot.creditor_id, DebtLot.remaining, DebtLot.member_id)
            db.session.rollback()
        assert report["ok"], report["violations"]
        assert lots == self.model.by_issuer()
        assert debts == self.model.by_creditor()

    @invariant()
    def balances_are_the_models(self) -> None:
        model, now = self.model, self.now
        for member in self.members:
            response = self.clients[READER].balance(member)
            assert response.status == 200, response.body
            got = response.json()
            expected = (model.available(member, now), model.pending(member, now),
                        model.debt(member))
            assert (got["available"], got["pending"], got["debt"]) == expected, (member, got)
            assert got["held"] == model.reserved(member, now), (member, got)
            assert sum(e["points"] for e in got["expiring"]) == model.held(member)


SETTINGS = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                    database=None, suppress_health_check=[HealthCheck.too_slow])


# Hypothesis shrinks a failing run for up to 5 minutes: the suite's 300 s timeout would stop
# it before it reports the shortest run that fails.
@pytest.mark.timeout(max(900, 10 * EXAMPLES))
def test_random_runs_keep_the_ledger_and_the_model_in_step(app, migrated, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(views, "_now", clock)
    # Both algorithms; every run registers these keys afresh in its empty database.
    keys = {pid: new_key("ES256" if i % 2 else "EdDSA")
            for i, pid in enumerate(["p0", "p1", "p2", READER])}
    run_state_machine_as_test(lambda: LedgerMachine(app, migrated, clock, keys), settings=SETTINGS)
