"""A batch: up to MAX_ITEMS claims and enrolments of one partner, booked in one transaction,
each answered as it would be answered alone, in order.

Per claim, not all or nothing: a claim that is refused (validation, insufficient points, an
unknown member, a conflicting claim id, ...) is answered with its problem and books nothing;
the others are booked. Each claim keeps its own idempotency: a claim id booked before (by an
earlier batch, a single request, or earlier in this batch) replays its booking if the content
is the same and conflicts if not, so a batch resent after a timeout books nothing twice.
What the batch books is committed together, by the caller, with the token's jti.

Bulk work, not a loop of single claims:

1. enrolments are one INSERT ... ON CONFLICT DO NOTHING;
2. every member the batch touches is locked in one statement, in order of id, before anything
   else is read: concurrent batches over the same members queue instead of deadlocking;
3. earlier bookings of the batch's claim ids, the last closed month and the members' spendable
   points (lots, for members with burns) are read once for the batch;
4. earns and burns are decided in memory by the same functions as single claims
   (ledger.plan_earn, ledger.plan_burn), each against the member as the claims before it left
   it, and written as multi-row INSERTs (coalition/batch_sql.py).

Reversals are rare and reach into the claim they reverse: each is booked by ledger.book_reversal
after what the batch decided before it is written, and the member it changed is read afresh.
A burn that asks for the member's PIN loads the member for the check, as a single burn does.
A referred member's first purchase, which may bring the referral (coalition/activities.py), is
booked by ledger.book_earn the same way; the referrers such earns may credit are locked with the
batch's members, in the one order by id.

A lost race for a claim id (another transaction booked it for another member meanwhile) or a
deadlock or serialization failure rolls the batch back; `restore()` records again what the
caller's transaction must keep (the token's jti) and the batch runs again, reading what the
other transaction committed.
"""
from __future__ import annotations

from bisect import insort
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from datetime import datetime
from typing import Callable

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from . import activities, batch_sql, bonuses, books, claim_limits, claim_sql, ledger, redemption
from .claim_sql import Holder, Situation
from .models import Member
from .problems import Problem
from .vocabulary import ENROLMENT, EntryKind

MAX_ITEMS = 1000
ATTEMPTS = 3
RETRYABLE = {"40P01", "40001"}  # deadlock detected, serialization failure (PostgreSQL)


@dataclass(frozen=True)
class Item:
    """One validated item: its kind (vocabulary.BATCH_KINDS) and the fields its single
    endpoint takes (a reversal's also the claim_id it reverses)."""
    kind: str
    fields: dict


@dataclass
class Outcome:
    """What one item is answered: a booked (or replayed) claim, an enrolment, or a problem."""
    status: int
    booked: ledger.Booked | None = None
    member: tuple[str, datetime] | None = None  # an enrolment: the card and when it was enrolled
    problem: Problem | None = None
    card: str | None = None  # the member card the item named (harvesting watch)

    @property
    def replayed(self) -> bool:
        return self.booked is not None and self.booked.replayed


def book_batch(session: Session, items: list[Item | Problem], *, partner_id: str, now: datetime,
               rules: ledger.Rules, policy: redemption.RedeemPolicy,
               restore: Callable[[], None]) -> list[Outcome]:
    """Book the batch's items; one Outcome per item, in order. A Problem given as an item (it
    failed validation) is its answer. Writes, never commits."""
    for _ in range(ATTEMPTS):
        try:
            return _Batch(session, partner_id, now, rules, policy).run(items)
        except (_Retry, DBAPIError) as exc:
            if isinstance(exc, DBAPIError) and _sqlstate(exc) not in RETRYABLE:
                raise
            session.rollback()
            restore()
    raise Problem("unavailable", "The batch met concurrent bookings of its claims repeatedly; "
                                 "nothing of it was booked. Send it again.")


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


class _Retry(Exception):
    """Another transaction booked one of the batch's claim ids meanwhile, for another member
    (the write, or a reversal, hit the claim key): the batch runs again and replays it."""


def _may_refer(f: dict, now: datetime) -> bool:
    """Whether an earn item is one that can bring a referral: a purchase, booked available."""
    return ((f.get("activity") or activities.PURCHASE) == activities.PURCHASE
            and (f.get("pending_until") is None or f["pending_until"] <= now))


def _fingerprint(item: Item) -> str:
    f = item.fields
    content = {name: f.get(name) for name in ("member_id", "points", "occurred_at",
                                              "description")}
    if item.kind == EntryKind.EARN:
        return ledger.earn_fingerprint(pending_until=f.get("pending_until"),
                                       activity=f.get("activity"), **content)
    return ledger.burn_fingerprint(**content)


@dataclass
class _Member:
    """A locked member as the batch's claims so far left it."""
    holder: Holder
    spendable: int
    lots: list[batch_sql.OpenLot] | None  # loaded for members with burns
    debts: list[tuple[int, int]] | None = None  # open debt lots, once an earn needs them


@dataclass
class _Booking:
    """An earn or burn booked by this batch: its entry's columns (id: a reference < 0 until
    written), and the outcomes that answer it (itself, and replays of it later in the batch)."""
    entry: dict
    card: str
    outcomes: list[Outcome] = field(default_factory=list)
    award: bonuses.Award | None = None  # an earn's bonuses


@dataclass
class _Batch:
    session: Session
    partner_id: str
    now: datetime
    rules: ledger.Rules
    policy: redemption.RedeemPolicy
    rows: batch_sql.Rows = field(default_factory=batch_sql.Rows)
    booked_here: dict[str, _Booking] = field(default_factory=dict)  # by claim id
    unwritten: list[_Booking] = field(default_factory=list)
    redeemed_unwritten: int = 0
    limited: claim_limits.Unwritten = field(default_factory=claim_limits.Unwritten)
    next_ref: int = -1
    awarded_unwritten: bool = False  # an unwritten earn has bonuses

    def run(self, items: list[Item | Problem]) -> list[Outcome]:
        claims = [(i, item) for i, item in enumerate(items) if isinstance(item, Item)]
        outcomes: list[Outcome | None] = [
            None if isinstance(item, Item) else Outcome(item.status, problem=item)
            for item in items]
        # Before the members are locked: what needs no lock is not done while holding them.
        self.fingerprints = {i: _fingerprint(item) for i, item in claims
                             if item.kind in (EntryKind.EARN, EntryKind.BURN)}
        self._prepare(claims)
        self.replays: dict[int, int] = {}  # item index: entry id booked before the batch
        for i, item in claims:
            try:
                outcome = self._one(i, item)
            except Problem as problem:
                outcome = Outcome(problem.status, problem=problem)
            outcome.card = item.fields.get("member_id")
            outcomes[i] = outcome
        self._write()
        for booking in self.booked_here.values():  # the booking, then any replays of it
            # Its columns as attributes: what answering it reads (an ORM object costs ~50 us
            # to make, a twentieth of what booking it costs in a batch).
            entry = SimpleNamespace(**booking.entry)
            for n, outcome in enumerate(booking.outcomes):
                outcome.booked = ledger.Booked(entry, replayed=n > 0, member_id=booking.card,
                                               award=booking.award)
        known = batch_sql.entries_with_cards(self.session, sorted(set(self.replays.values())))
        for i, entry_id in self.replays.items():
            entry, card = known[entry_id]
            outcomes[i].booked = ledger.Booked(entry, replayed=True, member_id=card)
        return outcomes

    # --- reading, once for the batch ---------------------------------------------------------

    def _prepare(self, claims: list[tuple[int, Item]]) -> None:
        session = self.session
        of_kind = {kind: [(i, item.fields) for i, item in claims if item.kind == kind]
                   for kind in (ENROLMENT, EntryKind.EARN, EntryKind.BURN, EntryKind.REVERSAL)}
        earned_at = [f["occurred_at"] for _, f in of_kind[EntryKind.EARN]]
        # One look for the batch: without a campaign or coupon in its earns' span, no earn of
        # it looks for bonuses (as a single earn's situation tells it: claim_sql).
        self.bonus_running = bool(earned_at) and bonuses.any_running(
            session, self.partner_id, min(earned_at), max(earned_at))
        enrolling = list(dict.fromkeys(f["member_id"] for _, f in of_kind[ENROLMENT]))
        self.enrolled = batch_sql.enrol(session, enrolling, now=self.now,
                                        partner_id=self.partner_id)
        # A card this batch enrolled is unknown to the items before its first enrolment.
        self.enrolled_from: dict[str, int] = {}
        for i, f in of_kind[ENROLMENT]:
            if self.enrolled[f["member_id"]][0]:
                self.enrolled_from.setdefault(f["member_id"], i)
        targets = batch_sql.reversal_targets(session, self.partner_id,
                                             [f["claim_id"] for _, f in of_kind[EntryKind.REVERSAL]])
        cards = sorted({item.fields["member_id"] for _, item in claims
                        if "member_id" in item.fields})
        # Referrers whose referred member may book its first purchase here are locked with the
        # batch's members, in the same order (coalition/activities.py).
        self.referrers: dict[str, int] = {}
        if self.rules.referral_points > 0:
            for _, f in of_kind[EntryKind.EARN]:
                card = f["member_id"]
                if card not in self.referrers and _may_refer(f, self.now):
                    referrer = activities.referral_prospect(session, card=card)
                    if referrer is not None:
                        self.referrers[card] = referrer
        holders = batch_sql.lock(session, cards, [*targets, *self.referrers.values()])
        books.hold_open(session)  # after the members, as a single claim takes them
        self.pk_of = {h.external_id: h.id for h in holders}
        self.closed_through = batch_sql.closed_through(session)
        claim_ids = [f["claim_id"] for kind in (EntryKind.EARN, EntryKind.BURN)
                     for _, f in of_kind[kind]]
        self.booked_before = batch_sql.booked(session, self.partner_id, claim_ids)
        burning = {self.pk_of[f["member_id"]] for _, f in of_kind[EntryKind.BURN]
                   if f["member_id"] in self.pk_of}
        earning = [h.id for h in holders if h.id not in burning]
        points = batch_sql.spendable_points(session, earning, self.now)
        # A batch holds no holds: what they reserve stays as read here for all its claims.
        self.held = batch_sql.held_points(session, [h.id for h in holders], self.now)
        lots = batch_sql.spendable_lots(session, sorted(burning), self.now)
        self.members = {h.id: _Member(h, points.get(h.id, 0), None) for h in holders
                        if h.id not in burning}
        self.members.update({h.id: _Member(h, sum(x.remaining for x in lots[h.id]), lots[h.id])
                             for h in holders if h.id in burning})

    def _member(self, index: int, card: str, *, with_lots: bool = False) -> _Member:
        pk = self.pk_of.get(card)
        if pk is None or index < self.enrolled_from.get(card, -1):
            raise Problem("not-found", "No such member.")
        member = self.members.get(pk)
        if member is None or (with_lots and member.lots is None):
            # Read afresh: a reversal changed it, or a burn needs its lots after all.
            lots = batch_sql.spendable_lots(self.session, [pk], self.now)[pk]
            member = _Member(batch_sql.holder(self.session, pk), sum(x.remaining for x in lots), lots)
            self.members[pk] = member
        return member

    # --- one item ------------------------------------------------------------------------------

    def _one(self, index: int, item: Item) -> Outcome:
        f = item.fields
        if item.kind == ENROLMENT:
            created, created_at = self.enrolled[f["member_id"]]
            first = created and self.enrolled_from[f["member_id"]] == index
            return Outcome(201 if first else 200, member=(f["member_id"], created_at))
        if item.kind == EntryKind.REVERSAL:
            return self._reversal(f)
        fp = self.fingerprints[index]
        if (replayed := self._replay(index, f["claim_id"], fp)) is not None:
            return replayed
        if item.kind == EntryKind.EARN:
            return self._earn(index, f, fp)
        return self._burn(index, f, fp)

    def _replay(self, index: int, claim_id: str, fp: str) -> Outcome | None:
        """The answer to a claim id booked already (before the batch or in it): a replay if
        the content is the same (its booking is filled in once written), else a conflict."""
        here = self.booked_here.get(claim_id)
        before = self.booked_before.get(claim_id)
        if here is None and before is None:
            return None
        if (here.entry["fingerprint"] if here else before[1]) != fp:
            raise Problem("claim-id-conflict",
                          f"Claim id {claim_id!r} was already used with different content.")
        outcome = Outcome(201)
        if here is not None:
            here.outcomes.append(outcome)
        else:
            self.replays[index] = before[0]
        return outcome

    def _earn(self, index: int, f: dict, fp: str) -> Outcome:
        member = self._member(index, f["member_id"])
        holder = member.holder
        ledger.check_window(f["occurred_at"], self.now, self.rules)
        activity = f.get("activity") or activities.PURCHASE
        if f["member_id"] in self.referrers and _may_refer(f, self.now):
            return self._first_purchase(f, fp)
        if self.awarded_unwritten or activity != activities.PURCHASE:
            # Caps, coupons and activity rules count what is written: earlier earns first.
            self._write()
        if activity == activities.PURCHASE:
            award = bonuses.for_earn(self.session, member_pk=holder.id,
                                     partner_id=self.partner_id, points=f["points"],
                                     occurred_at=f["occurred_at"], now=self.now,
                                     tz=self.rules.timezone, tier_rules=self.rules.tiers,
                                     running=self.bonus_running)
        else:
            award = bonuses.Award()
        entry, postings, writes = ledger.plan_earn(
            holder, Situation(None, self.closed_through, spendable=member.spendable,
                              held=self.held.get(holder.id, 0)),
            lambda: self._debts(member), fp=fp, partner_id=self.partner_id,
            claim_id=f["claim_id"], points=f["points"], occurred_at=f["occurred_at"],
            now=self.now, rules=self.rules, pending_until=f.get("pending_until"),
            description=f.get("description"), bonus=award.bonuses, activity=activity)
        activities.check(self.session, activity=activity, member_pk=holder.id,
                         partner_id=self.partner_id, now=self.now, tz=self.rules.timezone)
        self._within_limits(holder.id, EntryKind.EARN, f["points"])
        bonuses.claim(self.session, award)
        outcome = self._book(member, f["member_id"], entry, postings, writes)
        booking = self.booked_here[f["claim_id"]]
        booking.award = award
        self.awarded_unwritten = self.awarded_unwritten or bool(award.bonuses)
        return outcome

    def _first_purchase(self, f: dict, fp: str) -> Outcome:
        """A referred member's first purchase may bring the referral: booked as a single earn
        (after what the batch decided before it is written), as reversals are."""
        card = f["member_id"]
        self._write()
        try:
            booked = ledger.book_earn(
                self.session, partner_id=self.partner_id, claim_id=f["claim_id"],
                member_id=card, points=f["points"], occurred_at=f["occurred_at"], now=self.now,
                rules=self.rules, pending_until=f.get("pending_until"),
                description=f.get("description"))
        except ledger.ClaimIdRace as race:
            raise _Retry() from race
        referrer = self.referrers.pop(card)
        # Both members changed outside this batch's view of them: read afresh when next needed.
        self.members.pop(booked.entry.member_id, None)
        self.members.pop(referrer, None)
        self.booked_before[f["claim_id"]] = (booked.entry.id, fp)
        return Outcome(201, booked=booked)

    def _within_limits(self, member_pk: int, kind: str, points: int) -> None:
        """claim_limits.check, counting the batch's claims planned before this one."""
        claim_limits.check(self.session, self.rules.limits, kind=kind, member_pk=member_pk,
                           partner_id=self.partner_id, points=points, now=self.now,
                           tz=self.rules.timezone, unwritten=self.limited)
        self.limited.add(member_pk, kind, points)

    def _burn(self, index: int, f: dict, fp: str) -> Outcome:
        member = self._member(index, f["member_id"], with_lots=True)
        ledger.check_window(f["occurred_at"], self.now, self.rules)
        try:
            grant = ledger.authorise_burn(
                self.session, member.holder, partner_id=self.partner_id, points=f["points"],
                policy=self.policy, member_pin=f.get("member_pin"), now=self.now,
                rules=self.rules, redeemed_unwritten=self.redeemed_unwritten)
        finally:
            if self.policy.needs_pin(f["points"]):
                # The check loaded the member: a wrong PIN may have locked it for what follows.
                loaded = self.session.get(Member, member.holder.id)
                member.holder = replace(member.holder, pin_locked_at=loaded.pin_locked_at)
        entry, postings, writes = ledger.plan_burn(
            member.holder, Situation(None, self.closed_through,
                                     lots=[(x.id, x.remaining) for x in member.lots],
                                     held=self.held.get(member.holder.id, 0)),
            fp=fp, partner_id=self.partner_id, claim_id=f["claim_id"], points=f["points"],
            occurred_at=f["occurred_at"], now=self.now, rules=self.rules,
            description=f.get("description"))
        self._within_limits(member.holder.id, EntryKind.BURN, f["points"])
        grant.done()
        self.redeemed_unwritten += f["points"]
        return self._book(member, f["member_id"], entry, postings, writes)

    def _debts(self, member: _Member) -> list[tuple[int, int]]:
        if member.debts is None:
            member.debts = claim_sql.open_debt_lots(self.session, member.holder.id)
        return member.debts

    def _book(self, member: _Member, card: str, entry: dict, postings: dict[str, int],
              writes: claim_sql.Writes) -> Outcome:
        """Add what one earn or burn books to the rows to write, and apply it to the member."""
        postings = ledger.sealed(entry, postings, writes)
        pk, ref = member.holder.id, self._ref()
        self.rows.entries.append({**entry, "id": ref})
        self.rows.postings.extend({"entry_id": ref, "account": account, "points": points}
                                  for account, points in postings.items())
        new_lots = []
        for lot in writes.lots:
            new_lot = self._ref()
            new_lots.append(new_lot)
            self.rows.lots.append({**lot, "id": new_lot, "member_id": pk, "entry_id": ref})
            if lot["available_at"] is None and lot["remaining"] > 0 and lot["expires_at"] > self.now:
                member.spendable += lot["remaining"]
                if member.lots is not None:
                    insort(member.lots, batch_sql.OpenLot(
                        new_lot, lot["remaining"], lot["expires_at"], lot["occurred_at"],
                        (1 << 62) - new_lot), key=batch_sql.OpenLot.key)
        self.rows.consumptions.extend(
            {"entry_id": ref, "kind": str(kind), "debt_lot_id": debt_lot, "points": points,
             "lot_id": new_lots[lot_id] if isinstance(lot_id, claim_sql.NewLot) else lot_id}
            for kind, lot_id, debt_lot, points in writes.consumptions)
        if writes.lots_left:
            left = dict(writes.lots_left)
            self.rows.lots_left.update(left)
            for lot_id in left:
                self.rows.lots_period[lot_id] = max(self.rows.lots_period.get(lot_id, ""),
                                                    entry["period"])
            for lot in member.lots:
                lot.remaining = left.get(lot.id, lot.remaining)
            member.lots = [lot for lot in member.lots if lot.remaining > 0]
            member.spendable = sum(lot.remaining for lot in member.lots)
        if writes.debts_left:
            self.rows.debts_left.update(writes.debts_left)
            left = dict(writes.debts_left)
            member.debts = [(i, left.get(i, owed)) for i, owed in member.debts
                            if left.get(i, owed) > 0]
        member.holder = replace(member.holder, balance=writes.balance, debt=writes.debt)
        self.rows.members[pk] = (writes.balance, writes.debt)
        booking = _Booking({**entry, "id": ref}, card, [Outcome(201)])
        self.booked_here[entry["claim_id"]] = booking
        self.unwritten.append(booking)
        return booking.outcomes[0]

    def _ref(self) -> int:
        self.next_ref -= 1
        return self.next_ref + 1

    def _reversal(self, f: dict) -> Outcome:
        self._write()  # the reversal reads the journal: what the batch booked must be in it
        try:
            booked = ledger.book_reversal(
                self.session, partner_id=self.partner_id, claim_id=f["claim_id"],
                reversal_id=f["reversal_id"], points=f["points"], occurred_at=f["occurred_at"],
                now=self.now, rules=self.rules)
        except IntegrityError as exc:
            if ledger.is_claim_key(exc):
                raise _Retry() from exc
            raise
        # Its member changed outside this batch's view of it: read it afresh when next needed.
        self.members.pop(booked.entry.member_id, None)
        return Outcome(201, booked=booked)

    # --- writing -------------------------------------------------------------------------------

    def _write(self) -> None:
        if not self.rows:
            return
        try:
            ids, lot_ids = batch_sql.write(self.session, self.rows)
        except IntegrityError as exc:
            if ledger.is_claim_key(exc):
                raise _Retry() from exc
            raise
        for booking in self.unwritten:
            booking.entry = {**booking.entry, "id": ids[booking.entry["id"]]}
            if booking.award is not None:
                bonuses.use_coupons(self.session, booking.award, booking.entry["id"])
        for member in self.members.values():  # lots of this batch, consumed later, by their ids
            for lot in member.lots or ():
                lot.id = lot_ids.get(lot.id, lot.id)
        self.unwritten = []
        self.awarded_unwritten = False
        self.rows = batch_sql.Rows()
        self.redeemed_unwritten = 0
        self.limited = claim_limits.Unwritten()
