"""Booking claims into the journal. Domain functions over a Session; they write, never commit.

Every claim takes exactly one lock, its member's row, and holds it until the caller commits.
That serialises a member's claims (no two burns spend the same points) while claims of
different members run in parallel: there is no row or table that every claim updates.
(One exception: a referred member's first purchase also locks its referrer, before the member,
to book the referral: coalition/activities.py says why that cannot deadlock.)

Earns and burns run the fewest statements they can (coalition/claim_sql.py: lock, read, write);
reversals, rarer, go through the ORM.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Callable

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

from . import activities, bonuses, books, claim_limits, claim_sql, pins, redemption, tiers
from .clock import as_utc, iso_utc
from .hashing import canonical, sha256_hex
from .models import ClaimKey, Consumption, DebtLot, Entry, Lot, Member, Posting
from .periods import MONTHLY, expiry_of, parse_cutoff
from .problems import Problem
from .vocabulary import (REVERSIBLE, Account, ConsumptionKind, EntryKind, available,
                         bonus_account, issued_account, lot_since, member_account,
                         redeemed_account, spendable)

MAX_FUTURE = timedelta(minutes=5)
MAX_PENDING = timedelta(days=366)


@dataclass(frozen=True)
class Rules:
    timezone: str = "Europe/Berlin"
    max_claim_age_days: int = 30
    expire_months: int = 36
    pin_log_n: int = pins.DEFAULT_LOG_N  # scrypt cost of member PINs: n = 2**pin_log_n
    expiry_policy: str = MONTHLY  # or YEARLY: periods.expiry_of
    expiry_cutoff: tuple[int, int] = (9, 30)  # the yearly policy's day, (month, day)
    limits: claim_limits.ClaimLimits = claim_limits.NO_LIMITS  # fraud limits on claims
    tiers: tuple[tiers.Tier, ...] = ()  # status tiers (COALITION_TIERS), lowest first
    referral_points: int = 0  # COALITION_REFERRAL_POINTS (coalition/activities.py)

    @classmethod
    def from_config(cls, config) -> Rules:
        return cls(config["COALITION_TIMEZONE"], config["MAX_CLAIM_AGE_DAYS"],
                   config["POINTS_EXPIRE_MONTHS"],
                   config.get("PIN_SCRYPT_LOG_N", pins.DEFAULT_LOG_N),
                   config.get("POINTS_EXPIRY_POLICY", MONTHLY),
                   parse_cutoff(config.get("POINTS_EXPIRY_CUTOFF", "09-30")),
                   claim_limits.ClaimLimits.from_config(config),
                   tiers.parse(config.get("COALITION_TIERS")),
                   config.get("COALITION_REFERRAL_POINTS", 0))

    def expiry_of(self, occurred_at: datetime) -> tuple[datetime, date]:
        """When a lot earned at `occurred_at` expires under these rules: fixed at the earn, so
        a later change of policy leaves the lots already earned as they are."""
        return expiry_of(occurred_at, self.timezone, self.expire_months, self.expiry_policy,
                         self.expiry_cutoff)


@dataclass(frozen=True)
class Booked:
    entry: Entry
    replayed: bool
    # The member's card as the claim named it. None: read it from entry.member (one more
    # statement unless the session holds the member already).
    member_id: str | None = None
    award: bonuses.Award | None = None  # an earn just booked: its bonuses (None: read them)


class ClaimIdRace(Exception):
    """Another transaction booked the same claim id first: see book_raced."""

    def __init__(self, partner_id: str, claim_id: str, fingerprint: str) -> None:
        super().__init__(claim_id)
        self.partner_id, self.claim_id, self.fingerprint = partner_id, claim_id, fingerprint


def fingerprint(kind: str, **content) -> str:
    normal = {k: iso_utc(v) if isinstance(v, datetime) else v for k, v in content.items()}
    return sha256_hex(canonical({"kind": kind, **normal}))


def entry_hash(entry: Entry, postings: dict[str, int]) -> str:
    """SHA-256 over a canonical encoding of the entry and its postings (the sealer chains these)."""
    return hash_of({**{name: getattr(entry, name) for name in HASHED},
                    "activity": entry.activity}, postings)


HASHED = ("kind", "partner_id", "claim_id", "member_id", "points", "occurred_at", "recorded_at",
          "period", "late", "pending_until", "reverses_id", "fingerprint", "balance_after")


def hash_of(entry: dict, postings: dict[str, int]) -> str:
    """entry_hash of an entry given as its columns. Its activity counts only when it is not a
    purchase: the hash of every entry from before activities stays as it was."""
    activity = entry.get("activity")
    return sha256_hex(canonical({
        **({"activity": activity} if activity not in (None, activities.PURCHASE) else {}),
        **{name: entry[name] for name in HASHED},
        "occurred_at": iso_utc(entry["occurred_at"]), "recorded_at": iso_utc(entry["recorded_at"]),
        "pending_until": iso_utc(entry["pending_until"]) if entry["pending_until"] else None,
        "postings": sorted([a, p] for a, p in postings.items()),
    }))


# --- locking and lookups ------------------------------------------------------------------

def lock_member(session: Session, *, external_id: str | None = None,
                pk: int | None = None) -> Member | None:
    where = Member.external_id == external_id if pk is None else Member.id == pk
    # populate_existing: the row may already sit in the session, read before the lock was
    # taken; its balance must be the one read under the lock, or an update would be lost.
    member = session.scalars(select(Member).where(where).with_for_update()
                             .execution_options(populate_existing=True)).one_or_none()
    books.hold_open(session)
    return member


def find_claim(session: Session, partner_id: str, claim_id: str) -> Entry | None:
    # Through the claim key: its period names the one partition of the journal to read.
    return session.scalars(select(Entry).join(ClaimKey, (ClaimKey.entry_id == Entry.id)
                                              & (ClaimKey.period == Entry.period))
                           .where(ClaimKey.partner_id == partner_id,
                                  ClaimKey.claim_id == claim_id)).one_or_none()


def replay(session: Session, partner_id: str, claim_id: str, fp: str) -> Booked | None:
    """Exact-match idempotency: the same content replays, different content conflicts."""
    existing = find_claim(session, partner_id, claim_id)
    if existing is None:
        if session.get(ClaimKey, (partner_id, claim_id)) is not None:
            # Its month was archived (coalition/partitions.py): the key still holds, but the
            # booking can no longer be read back to replay it.
            raise Problem("claim-id-conflict", f"Claim id {claim_id!r} was used in a month "
                          "that is archived; it cannot be booked again.")
        return None
    if existing.fingerprint != fp:
        raise Problem("claim-id-conflict",
                      f"Claim id {claim_id!r} was already used with different content.")
    return Booked(existing, replayed=True)


def spendable_lots(session: Session, member_id: int, now: datetime) -> list[Lot]:
    """A member's spendable lots in the order a burn consumes them."""
    return list(session.scalars(
        select(Lot).where(Lot.member_id == member_id, spendable(Lot, now))
        .order_by(Lot.expires_at, Lot.occurred_at, Lot.id)))


def available_points(session: Session, member: Member, now: datetime) -> int:
    points, held = session.execute(
        select(func.coalesce(func.sum(Lot.remaining), 0), claim_sql.held_points(member.id))
        .where(Lot.member_id == member.id, spendable(Lot, now)), {"now": now}).one()
    return available(int(points), member.debt, int(held))


# --- booking ------------------------------------------------------------------------------

def book_raced(session: Session, book: Callable[..., Booked], *,
               restore: Callable[[], None], **claim) -> Booked:
    """`book(session, **claim)` (book_earn, book_burn or book_reversal), answering a lost race
    for the claim id as a retry would.

    A concurrent booking of the same claim id for another member can only be noticed when the
    journal's unique key refuses this one, and that leaves the transaction unusable: it is
    rolled back, `restore()` records again what the caller's transaction must keep (the
    token's jti), and the winner's booking is replayed (201 if the content is the same, 409 if
    not). If the winner rolled back after all, this claim is booked afresh. Without a race
    this is one call of `book`, not a statement more.
    """
    for _attempt in range(2):
        try:
            return book(session, **claim)
        except ClaimIdRace as race:
            session.rollback()
            restore()
            booked = replay(session, race.partner_id, race.claim_id, race.fingerprint)
            if booked is not None:
                return booked
    raise Problem("claim-id-conflict", "The claim id is being booked concurrently; retry.")


def check_window(occurred_at: datetime, now: datetime, rules: Rules) -> None:
    if occurred_at > now + MAX_FUTURE:
        raise Problem("validation-error", "occurred_at lies too far in the future.", errors=[
            {"pointer": "/occurred_at", "detail": "May lie at most 5 minutes in the future."}])
    if occurred_at < now - timedelta(days=rules.max_claim_age_days):
        raise Problem("validation-error", "occurred_at lies too far in the past.", errors=[
            {"pointer": "/occurred_at",
             "detail": f"May lie at most {rules.max_claim_age_days} days in the past."}])


def _book(session: Session, entry: Entry, postings: dict[str, int], member: Member) -> None:
    postings = {account: points for account, points in postings.items() if points}
    assert sum(postings.values()) == 0, "an entry's postings must sum to zero"
    assert member.balance >= 0 and member.debt >= 0
    entry.entry_hash = entry_hash(entry, postings)
    entry.postings = [Posting(account=a, points=p, period=entry.period)
                      for a, p in postings.items()]
    session.add(entry)
    try:
        session.flush()
    except IntegrityError as exc:
        # The member lock serialises retries for one member, so a clash on the claim key
        # means a concurrent post of the same claim id for another member.
        if is_claim_key(exc):
            raise ClaimIdRace(entry.partner_id, entry.claim_id, entry.fingerprint) from exc
        raise


def is_claim_key(exc: IntegrityError) -> bool:
    message = str(exc.orig)
    return ("uq_journal_entries_partner_id_claim_id" in message  # PostgreSQL names the constraint
            or "journal_entries.partner_id, journal_entries.claim_id" in message)  # SQLite


def _new_entry(session: Session, kind: str, partner_id: str, claim_id: str, member: Member,
               points: int, occurred_at: datetime, now: datetime, rules: Rules, fp: str,
               **extra) -> Entry:
    period, late = books.booking_period(session, occurred_at, rules.timezone)
    return Entry(kind=kind, partner_id=partner_id, claim_id=claim_id, member_id=member.id,
                 member=member, points=points, occurred_at=occurred_at, recorded_at=now,
                 period=period, late=late, fingerprint=fp, **extra)


def earn_fingerprint(*, member_id: str, points: int, occurred_at: datetime,
                     pending_until: datetime | None = None, description: str | None = None,
                     activity: str | None = None) -> str:
    """The activity is in it only when not a purchase: earlier fingerprints stay valid."""
    extra = {} if activity in (None, activities.PURCHASE) else {"activity": activity}
    return fingerprint(EntryKind.EARN, member_id=member_id, points=points, occurred_at=occurred_at,
                       pending_until=pending_until, description=description, **extra)


def burn_fingerprint(*, member_id: str, points: int, occurred_at: datetime,
                     description: str | None = None) -> str:
    return fingerprint(EntryKind.BURN, member_id=member_id, points=points, occurred_at=occurred_at,
                       description=description)


def book_earn(session: Session, *, partner_id: str, claim_id: str, member_id: str, points: int,
              occurred_at: datetime, now: datetime, rules: Rules,
              pending_until: datetime | None = None, description: str | None = None,
              activity: str = activities.PURCHASE) -> Booked:
    fp = earn_fingerprint(member_id=member_id, points=points, occurred_at=occurred_at,
                          pending_until=pending_until, description=description, activity=activity)
    referrer = None
    if (rules.referral_points > 0 and activity == activities.PURCHASE
            and (pending_until is None or pending_until <= now)):
        # The referrer's lock before the member's (ascending ids: coalition/activities.py).
        referrer = activities.referral_prospect(session, card=member_id)
        if referrer is not None:
            activities.lock_referrer(session, referrer)
    # The lock first, then the look for an earlier booking: concurrent retries of one claim
    # queue behind each other and every one after the first replays the booking.
    holder, known = claim_sql.lock_with_situation(session, member_id, burn=False,
                                                  partner_id=partner_id, claim_id=claim_id, now=now,
                                                  occurred_at=occurred_at)
    if (done := _replay_of(session, known, partner_id, claim_id, fp)) is not None:
        return done
    if holder is None:
        raise Problem("not-found", "No such member.")

    check_window(occurred_at, now, rules)
    if activity == activities.PURCHASE:
        award = bonuses.for_earn(session, member_pk=holder.id, partner_id=partner_id,
                                 points=points, occurred_at=occurred_at, now=now,
                                 tz=rules.timezone, tier_rules=rules.tiers,
                                 running=known.bonus_running, offers=known.offers)
    else:  # bonuses and tier multipliers are for purchases only
        award = bonuses.Award()
    referral = referrer and activities.referral_due(session, holder.id, referrer)
    if referral:
        award.bonuses.append(bonuses.Bonus(activities.REFERRAL_SOURCE, referral[0],
                                           rules.referral_points))

    def plan(known: claim_sql.Situation):
        return plan_earn(
            holder, known, lambda: claim_sql.open_debt_lots(session, holder.id), fp=fp,
            partner_id=partner_id, claim_id=claim_id, points=points, occurred_at=occurred_at,
            now=now, rules=rules, pending_until=pending_until, description=description,
            bonus=award.bonuses, activity=activity)
    planned = plan(known)
    claim_limits.check(session, rules.limits, kind=EntryKind.EARN, member_pk=holder.id,
                       partner_id=partner_id, points=points, now=now, tz=rules.timezone)
    activities.check(session, activity=activity, member_pk=holder.id, partner_id=partner_id,
                     now=now, tz=rules.timezone)
    bonuses.claim(session, award)
    booked = _write(session, holder, planned, plan, lambda: claim_sql.earn_situation(
        session, partner_id=partner_id, claim_id=claim_id, member_pk=holder.id, now=now))
    bonuses.use_coupons(session, award, booked.entry.id)
    if referral:
        book_referrer_earn(session, operator=referral[0], card=referral[1],
                           trigger_id=booked.entry.id, occurred_at=occurred_at, now=now,
                           rules=rules)
    return Booked(booked.entry, replayed=False, member_id=booked.member_id, award=award)


def book_referrer_earn(session: Session, *, operator: str, card: str, trigger_id: int,
                       occurred_at: datetime, now: datetime, rules: Rules) -> Booked:
    """The referrer's referral points: an earn by the operator issuer, booked in the
    transaction of the referred member's first purchase (whose caller holds the referrer's lock
    already). It occurred when that purchase did, so both lots expire alike."""
    claim_id = activities.referral_claim_id(trigger_id)
    points = rules.referral_points
    fp = earn_fingerprint(member_id=card, points=points, occurred_at=occurred_at,
                          activity=activities.REFERRAL)
    holder, known = claim_sql.lock_with_situation(session, card, burn=False, partner_id=operator,
                                                  claim_id=claim_id, now=now)

    def plan(known: claim_sql.Situation):
        return plan_earn(holder, known, lambda: claim_sql.open_debt_lots(session, holder.id),
                         fp=fp, partner_id=operator, claim_id=claim_id, points=points,
                         occurred_at=occurred_at, now=now, rules=rules,
                         activity=activities.REFERRAL)
    booked = _write(session, holder, plan(known), plan, lambda: claim_sql.earn_situation(
        session, partner_id=operator, claim_id=claim_id, member_pk=holder.id, now=now))
    return booked


def plan_earn(holder: claim_sql.Holder, known: claim_sql.Situation,
              open_debts: Callable[[], list[tuple[int, int]]], *, fp: str, partner_id: str,
              claim_id: str, points: int, occurred_at: datetime, now: datetime, rules: Rules,
              pending_until: datetime | None = None, description: str | None = None,
              bonus: list[bonuses.Bonus] | tuple = (), activity: str = activities.PURCHASE):
    """What an earn books for a member as it stands (`holder`, `known`), or the Problem that
    refuses it: (entry columns, postings, writes). `open_debts()`: the member's unpaid debt
    lots, oldest first, asked for only when the earn fills debt. `bonus`: its bonuses
    (coalition/bonuses.py), a lot each besides the lot of the claim's own points; the debt is
    filled from those lots in that order. Writes nothing: book_earn and a batch
    (coalition/batch.py) write it."""
    check_window(occurred_at, now, rules)
    if pending_until is not None and not occurred_at <= pending_until <= now + MAX_PENDING:
        raise Problem("validation-error", "pending_until is out of range.", errors=[
            {"pointer": "/pending_until",
             "detail": "Must lie after occurred_at and at most 366 days from now."}])
    pending = pending_until is not None and pending_until > now
    expires_at, _ = rules.expiry_of(occurred_at)
    # A claim sent late can carry points already past their expiry (a short expiry period, a
    # purchase at a month's end): they book, and the next expiry run takes them. Until then
    # they are as good as expired: not available, and they pay no debt.
    spendable_now = not pending and expires_at > now
    parts = [(None, partner_id, points), *((b.source, b.funder, b.points) for b in bonus)]
    remaining = [part_points for _, _, part_points in parts]
    consumptions, debts_left = [], []
    if spendable_now and holder.debt:
        # A pending earn fills no debt: it may still be cancelled, and would reopen the debt.
        i = 0
        for debt_id, owed in open_debts():
            left = owed
            while left and i < len(parts):
                take = min(left, remaining[i])
                remaining[i] -= take
                left -= take
                consumptions.append((ConsumptionKind.DEBT_FILL, claim_sql.NewLot(i), debt_id, take))
                if remaining[i] == 0:
                    i += 1
            if left == owed:
                break
            debts_left.append((debt_id, left))
    kept = sum(remaining)
    filled = points + sum(b.points for b in bonus) - kept
    debt = holder.debt - filled
    balance_after = available(known.spendable, debt, known.held) + (kept if spendable_now else 0)
    entry = _entry(EntryKind.EARN, partner_id, claim_id, holder, points, occurred_at, now, rules,
                   known, fp, pending_until=pending_until, description=description,
                   status="pending" if pending else "booked", balance_after=balance_after)
    entry["activity"] = activity
    lots = [{"issuer_id": issuer, "source": source, "points": part_points, "remaining": left,
             "occurred_at": occurred_at, "available_at": pending_until if pending else None,
             "expires_at": expires_at}
            for (source, issuer, part_points), left in zip(parts, remaining)]
    postings = {member_account(holder.id): kept, issued_account(partner_id): -points,
                Account.DEBT: filled}
    for b in bonus:
        postings[bonus_account(b.funder)] = postings.get(bonus_account(b.funder), 0) - b.points
    return entry, postings, claim_sql.Writes(balance=holder.balance + kept, debt=debt, lots=lots,
                                             consumptions=consumptions, debts_left=debts_left)


def book_burn(session: Session, *, partner_id: str, claim_id: str, member_id: str, points: int,
              occurred_at: datetime, now: datetime, rules: Rules,
              description: str | None = None, member_pin: str | None = None,
              policy: redemption.RedeemPolicy = redemption.NO_POLICY) -> Booked:
    """The PIN is no part of the claim's content: it is not in the fingerprint (a retry replays
    the booked burn with or without it, the PIN was checked when it booked) nor in the entry."""
    fp = burn_fingerprint(member_id=member_id, points=points, occurred_at=occurred_at,
                          description=description)
    holder, known = claim_sql.lock_with_situation(session, member_id, burn=True,
                                                  partner_id=partner_id, claim_id=claim_id, now=now)
    if (done := _replay_of(session, known, partner_id, claim_id, fp)) is not None:
        return done
    if holder is None:
        raise Problem("not-found", "No such member.")
    check_window(occurred_at, now, rules)
    grant = authorise_burn(session, holder, partner_id=partner_id, points=points, policy=policy,
                           member_pin=member_pin, now=now, rules=rules)
    claim_limits.check(session, rules.limits, kind=EntryKind.BURN, member_pk=holder.id,
                       partner_id=partner_id, points=points, now=now, tz=rules.timezone)

    def plan(known: claim_sql.Situation):
        return plan_burn(holder, known, fp=fp, partner_id=partner_id, claim_id=claim_id,
                         points=points, occurred_at=occurred_at, now=now, rules=rules,
                         description=description)
    planned = plan(known)
    grant.done()
    return _write(session, holder, planned, plan, lambda: claim_sql.burn_situation(
        session, partner_id=partner_id, claim_id=claim_id, member_pk=holder.id, now=now))


def book_captured_burn(session: Session, *, partner_id: str, claim_id: str, member_id: str,
                       points: int, occurred_at: datetime, now: datetime, rules: Rules) -> Booked:
    """The burn that captures a hold (coalition/holds.py): authorised, windowed and counted
    against the limits when the hold was placed, so none of that is asked again. The caller
    holds the member's lock and has closed the hold already: the situation read here no longer
    subtracts its points."""
    fp = burn_fingerprint(member_id=member_id, points=points, occurred_at=occurred_at)
    holder, known = claim_sql.lock_with_situation(session, member_id, burn=True,
                                                  partner_id=partner_id, claim_id=claim_id, now=now)
    if holder is None:
        raise Problem("not-found", "No such member.")

    def plan(known: claim_sql.Situation):
        return plan_burn(holder, known, fp=fp, partner_id=partner_id, claim_id=claim_id,
                         points=points, occurred_at=occurred_at, now=now, rules=rules)
    return _write(session, holder, plan(known), plan, lambda: claim_sql.burn_situation(
        session, partner_id=partner_id, claim_id=claim_id, member_pk=holder.id, now=now))


def authorise_burn(session: Session, holder: claim_sql.Holder, *, partner_id: str, points: int,
                   policy: redemption.RedeemPolicy, member_pin: str | None, now: datetime,
                   rules: Rules, redeemed_unwritten: int = 0) -> redemption.Grant:
    """redemption.authorise for a burn of the locked member. A PIN check counts failures on the
    member's row through the ORM: only then is it loaded (under the lock taken, so as it
    stands). `redeemed_unwritten`: the partner's burns booked in this transaction but not yet
    written (a batch's), which count towards its daily limit."""
    member = (session.get(Member, holder.id, populate_existing=True)
              if policy.needs_pin(points) else holder)
    return redemption.authorise(session, member, partner_id=partner_id, points=points,
                                policy=policy, member_pin=member_pin, now=now,
                                tz=rules.timezone, log_n=rules.pin_log_n,
                                redeemed_unwritten=redeemed_unwritten)


def plan_burn(holder: claim_sql.Holder, known: claim_sql.Situation, *, fp: str, partner_id: str,
              claim_id: str, points: int, occurred_at: datetime, now: datetime, rules: Rules,
              description: str | None = None):
    """What an authorised burn books (as plan_earn), or insufficient-points: it consumes the
    spendable lots in `known.lots` in their order."""
    available_now = available(sum(left for _, left in known.lots), holder.debt, known.held)
    if points > available_now:
        raise Problem("insufficient-points",
                      f"The member has {max(available_now, 0)} points available; {points} requested.")
    entry = _entry(EntryKind.BURN, partner_id, claim_id, holder, points, occurred_at, now, rules,
                   known, fp, description=description, status="booked",
                   balance_after=available_now - points)
    consumptions, lots_left, left = [], [], points
    for lot_id, lot_remaining in known.lots:
        take = min(left, lot_remaining)
        lots_left.append((lot_id, lot_remaining - take))
        consumptions.append((ConsumptionKind.BURN, lot_id, None, take))
        left -= take
        if left == 0:
            break
    return entry, {member_account(holder.id): -points, redeemed_account(partner_id): points}, \
        claim_sql.Writes(balance=holder.balance - points, debt=holder.debt,
                         consumptions=consumptions, lots_left=lots_left)


def _replay_of(session: Session, known: claim_sql.Situation, partner_id: str, claim_id: str,
               fp: str) -> Booked | None:
    if known.booked_id is None:
        return None
    return replay(session, partner_id, claim_id, fp)


def _entry(kind: str, partner_id: str, claim_id: str, holder: claim_sql.Holder, points: int,
           occurred_at: datetime, now: datetime, rules: Rules, known: claim_sql.Situation,
           fp: str, *, status: str, balance_after: int, pending_until: datetime | None = None,
           description: str | None = None) -> dict:
    period, late = books.period_after(occurred_at, rules.timezone, known.closed_through)
    return {"kind": kind, "partner_id": partner_id, "claim_id": claim_id,
            "member_id": holder.id, "points": points, "occurred_at": occurred_at,
            "recorded_at": now, "period": period, "late": late, "pending_until": pending_until,
            "description": description, "reverses_id": None, "fingerprint": fp,
            "status": status, "balance_after": balance_after, "activity": activities.PURCHASE}


def _write(session: Session, holder: claim_sql.Holder, planned, plan, reread) -> Booked:
    """Write what was `planned` (entry, postings, writes). If its month closed after the
    situation was read (claim_sql.lock_with_situation), `plan` it again on the situation as
    `reread()` finds it: the books are held by then, so no second close can intervene."""
    entry_id = _write_planned(session, *planned)
    if entry_id is None:
        planned = plan(reread())
        entry_id = _write_planned(session, *planned)
        assert entry_id is not None, "a month closed while this claim held the books"
    entry = planned[0]
    return Booked(_as_loaded(session, Entry(id=entry_id, **entry)), replayed=False,
                  member_id=holder.external_id)


def _write_planned(session: Session, entry: dict, postings: dict[str, int],
                   writes: claim_sql.Writes) -> int | None:
    postings = sealed(entry, postings, writes)
    try:
        return claim_sql.write(session, entry, postings, writes)
    except IntegrityError as exc:
        # The member lock serialises retries for one member, so a clash on the claim key
        # means a concurrent post of the same claim id for another member.
        if is_claim_key(exc):
            raise ClaimIdRace(entry["partner_id"], entry["claim_id"], entry["fingerprint"]) from exc
        raise


def sealed(entry: dict, postings: dict[str, int], writes: claim_sql.Writes) -> dict[str, int]:
    """The entry's postings as written (none of zero points), its hash set in `entry`; the
    invariants of every booking checked."""
    postings = {account: points for account, points in postings.items() if points}
    assert sum(postings.values()) == 0, "an entry's postings must sum to zero"
    assert writes.balance >= 0 and writes.debt >= 0
    entry["entry_hash"] = hash_of(entry, postings)
    return postings


def _as_loaded(session: Session, entry: Entry) -> Entry:
    """The entry just written, in the session as if read back (no statement): its postings,
    member and lot load when first used."""
    make_transient_to_detached(entry)
    session.add(entry)
    return entry


def reversed_points(session: Session, target: Entry) -> int:
    # A reversal occurs after its claim and is booked after it, so never into an earlier
    # month: the period prunes the journal's older partitions on PostgreSQL.
    return int(session.scalar(select(func.coalesce(func.sum(Entry.points), 0))
                              .where(Entry.reverses_id == target.id,
                                     Entry.period >= target.period)))


def book_reversal(session: Session, *, partner_id: str, claim_id: str, reversal_id: str,
                  points: int, occurred_at: datetime, now: datetime, rules: Rules) -> Booked:
    fp = fingerprint(EntryKind.REVERSAL, claim_id=claim_id, points=points, occurred_at=occurred_at)
    target = find_claim(session, partner_id, claim_id)
    if target is None:
        if (key := session.get(ClaimKey, (partner_id, claim_id))) is not None:
            raise Problem("not-found", f"Claim {claim_id!r} was booked in {key.period}, a month "
                          "that is archived: it can no longer be reversed.")
        raise Problem("not-found", "No such claim.")
    member = lock_member(session, pk=target.member_id)
    if (done := replay(session, partner_id, reversal_id, fp)) is not None:
        return done
    if target.kind not in REVERSIBLE:
        raise Problem("validation-error", "Only earns and burns can be reversed.", errors=[
            {"pointer": "/claim_id", "detail": "This claim is a reversal."}])
    check_window(occurred_at, now, rules)
    if occurred_at < as_utc(target.occurred_at):
        raise Problem("validation-error", "A reversal cannot occur before its claim.", errors=[
            {"pointer": "/occurred_at", "detail": "Must not lie before the claim's occurred_at."}])
    already = reversed_points(session, target)
    if already + points > target.points:
        raise Problem("reversal-exceeds-claim",
                      f"{target.points - already} points of this claim are left to reverse; "
                      f"{points} requested.")
    entry = _new_entry(session, EntryKind.REVERSAL, partner_id, reversal_id, member, points, occurred_at,
                       now, rules, fp, reverses_id=target.id, reverses=target, status="booked",
                       balance_after=0)
    if target.kind == EntryKind.EARN:
        consumptions, debts, postings = _reverse_earn(session, target, member, points, already,
                                                      entry.period)
    else:
        consumptions, debts, postings = _reverse_burn(session, target, member, points,
                                                      entry.period)
    entry.balance_after = available_points(session, member, now)
    _book(session, entry, postings, member)
    for c in consumptions:
        c.entry_id, c.period = entry.id, entry.period
        session.add(c)
    for debt in debts:
        debt.entry_id = entry.id
        session.add(debt)
    session.flush()
    return Booked(entry, replayed=False)


def _reverse_earn(session: Session, target: Entry, member: Member, points: int, already: int,
                  period: str):
    """Take the points out of the earn's lots: its own lot gives `points`, each bonus lot its
    share of them. A bonus lot's share is cumulative: after reversals of n of the earn's N
    points in all it has given back round_half_up(bonus * n / N), so reversals in parts add up
    to what one whole reversal takes, and a full reversal takes the whole bonus. From each lot:
    what is left of it, then what of it expired (taken from breakage: the points left the
    member when they expired, so the member owes nothing for them), and only what was spent
    becomes a debt lot, owed to the lot's issuer (a bonus's funder)."""
    lots = session.scalars(select(Lot).where(Lot.entry_id == target.id,
                                             lot_since(Lot, target.period)).order_by(Lot.id)).all()
    expired = _sums_by_lot(session, [lot.id for lot in lots], ConsumptionKind.EXPIRY)
    consumptions, debts = [], []
    postings = {member_account(member.id): 0, Account.DEBT: 0, Account.EXPIRED: 0,
                issued_account(target.partner_id): points}
    for lot in lots:
        part = points if lot.source is None else (
            _share(lot.points, already + points, target.points)
            - _share(lot.points, already, target.points))
        if part <= 0:
            continue
        if lot.source is not None:
            account = bonus_account(lot.issuer_id)
            postings[account] = postings.get(account, 0) + part
        take = min(part, lot.remaining)
        unexpire = min(part - take, expired.get(lot.id, 0))
        shortfall = part - take - unexpire
        lot.set_remaining(lot.remaining - take, period)
        member.balance -= take
        member.debt += shortfall
        if unexpire:  # the expired points given back to the lot, and taken out with the rest
            consumptions.append(Consumption(lot_id=lot.id, kind=ConsumptionKind.EXPIRY,
                                            points=-unexpire))
        if take + unexpire:
            consumptions.append(Consumption(lot_id=lot.id, kind=ConsumptionKind.EARN_REVERSAL,
                                            points=take + unexpire))
        if shortfall:
            debts.append(DebtLot(member_id=member.id, creditor_id=lot.issuer_id,
                                 points=shortfall, remaining=shortfall))
        postings[member_account(member.id)] -= take
        postings[Account.DEBT] -= shortfall
        postings[Account.EXPIRED] -= unexpire
    return consumptions, debts, postings


def _share(bonus: int, reversed_points: int, of_points: int) -> int:
    """round_half_up(bonus * reversed_points / of_points), in integers."""
    return (2 * bonus * reversed_points + of_points) // (2 * of_points)


def _sums_by_lot(session: Session, lot_ids: list[int], kind: str) -> dict[int, int]:
    return {lot_id: int(points) for lot_id, points in session.execute(
        select(Consumption.lot_id, func.sum(Consumption.points))
        .where(Consumption.lot_id.in_(lot_ids), Consumption.kind == kind)
        .group_by(Consumption.lot_id))}


def _reverse_burn(session: Session, target: Entry, member: Member, points: int, period: str):
    """Give the points back to the lots they came from, the lot consumed last first. Points
    that return to a lot whose earn has since been reversed into debt pay that debt first
    (debt first): they are the creditor's own points, which the member had spent before the
    creditor took its earn back, and only what is left of them becomes spendable again."""
    rows = session.execute(
        select(Consumption.lot_id, Consumption.points, Consumption.kind)
        .join(Entry, (Entry.id == Consumption.entry_id) & (Entry.period == Consumption.period))
        # A burn's reversals are booked in its month or later: on PostgreSQL the periods prune
        # the journal's older months (migration 0026).
        .where((Entry.id == target.id) | (Entry.reverses_id == target.id),
               Entry.period >= target.period, Consumption.period >= target.period,
               Consumption.kind.in_((ConsumptionKind.BURN, ConsumptionKind.BURN_REVERSAL)))
        .order_by(Consumption.id)).all()
    net: dict[int, int] = {}
    order: list[int] = []
    for lot_id, taken, kind in rows:
        if kind == ConsumptionKind.BURN:
            order.append(lot_id)
        net[lot_id] = net.get(lot_id, 0) + taken
    consumptions, left, filled = [], points, 0
    for lot_id in reversed(order):
        give = min(left, net[lot_id])
        if give <= 0:
            continue
        net[lot_id] -= give
        lot = session.scalars(select(Lot).where(Lot.id == lot_id,
                                                lot_since(Lot, target.period))).one()
        lot.set_remaining(lot.remaining + give, period)
        consumptions.append(Consumption(lot_id=lot_id, kind=ConsumptionKind.BURN_REVERSAL,
                                        points=-give))
        left -= give
        for debt in _debts_of_reversed_earn(session, lot):
            pay = min(debt.remaining, give)
            if pay == 0:
                break
            debt.remaining -= pay
            lot.set_remaining(lot.remaining - pay, period)
            give -= pay
            filled += pay
            consumptions.append(Consumption(lot_id=lot_id, debt_lot_id=debt.id,
                                            kind=ConsumptionKind.DEBT_FILL, points=pay))
        if left == 0:
            break
    assert left == 0, "a burn's consumptions cover its points"
    member.balance += points - filled
    member.debt -= filled
    return consumptions, [], {member_account(member.id): points - filled, Account.DEBT: filled,
                                redeemed_account(target.partner_id): -points}


def _debts_of_reversed_earn(session: Session, lot: Lot) -> list[DebtLot]:
    """The unpaid debt lots that reversals of `lot`'s earn left to its issuer, oldest first."""
    reversals = select(Entry.id).where(Entry.reverses_id == lot.entry_id)
    return list(session.scalars(select(DebtLot).where(DebtLot.member_id == lot.member_id,
                                                      DebtLot.creditor_id == lot.issuer_id,
                                                      DebtLot.remaining > 0,
                                                      DebtLot.entry_id.in_(reversals))
                                .order_by(DebtLot.id)))
