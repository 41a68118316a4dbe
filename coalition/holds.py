"""Redemption holds: a partner reserves a member's points now and captures them as a burn later,
or voids them, like a card authorisation (pending, then post or void).

A hold is no journal entry: it moves no points and settlement never sees it. While it is open
its points are not available: every claim's situation subtracts what the member's open holds
reserve (claim_sql.held_points), balances show it as `held`. A hold lapses by time alone (its
`expires_at`), so nothing has to sweep lapsed holds for their points to come free.

Everything that changes a hold takes the member's row lock first, as every claim does, and
updates the member's row (a new row version): a claim that read its situation before waiting
for the lock then reads it again (claim_sql.lock_with_situation), so a burn and a hold placed at
the same instant never both count the same points. Whether a hold has lapsed is decided by the
clock read once the lock is held: a capture that had to wait for a burn which found the hold
lapsed finds it lapsed too. Each hold resolves one way: captured, voided, or lapsed.

Placing a hold is the redemption's authorisation: the operator's lock, the PIN, the partner's
daily redemption limit and the member's fraud limits are checked then, and held points count
towards the daily limits as if redeemed. Capturing books the burn without asking again (a card
capture honours its authorisation): the points were set aside for it. A hold reserves only
points that are still valid when it lapses (a lot expiring sooner is not counted), so its
capture finds them unless the member's points shrank otherwise meanwhile (an earn reversed into
debt); then the capture is refused with insufficient-points and the hold stays open, to be
captured for less or voided.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from . import claim_limits, ledger, redemption
from .clock import as_utc, iso_utc
from .models import Hold, Lot, Member
from .problems import Problem
from .vocabulary import HOLD_OPEN, EntryKind, available, held_now, spendable

DEFAULT_LIFETIME_S = 15 * 60
MAX_LIFETIME_S = 7 * 24 * 3600
CAPTURED, VOIDED, LAPSED = "captured", "voided", "lapsed"


@dataclass(frozen=True)
class Answer:
    hold: Hold
    card: str | None  # the member's card as the request named it (or as it stands)
    replayed: bool = False
    booked: ledger.Booked | None = None  # a capture's burn


def status_of(hold: Hold, now: datetime) -> str:
    """open, captured, voided, or lapsed (open but past its lifetime)."""
    if hold.status == HOLD_OPEN and as_utc(hold.expires_at) <= now:
        return LAPSED
    return hold.status


def hold_fingerprint(*, member_id: str, points: int, occurred_at: datetime,
                     expires_in: int) -> str:
    return ledger.fingerprint("hold", member_id=member_id, points=points,
                              occurred_at=occurred_at, expires_in=expires_in)


def place(session: Session, *, partner_id: str, hold_id: str, member_id: str, points: int,
          occurred_at: datetime, now: datetime, rules: ledger.Rules,
          expires_in: int = DEFAULT_LIFETIME_S, member_pin: str | None = None,
          policy: redemption.RedeemPolicy = redemption.NO_POLICY) -> Answer:
    """Reserve `points` of the member's available points for `expires_in` seconds. Idempotent
    by (partner, hold_id): the same content answers the hold as it stands now, different content
    is claim-id-conflict. The PIN is no part of the content, as for a burn."""
    fp = hold_fingerprint(member_id=member_id, points=points, occurred_at=occurred_at,
                          expires_in=expires_in)
    member = _lock(session, Member.external_id == member_id)  # then look: retries queue
    existing = _find(session, partner_id, hold_id)
    if existing is not None:
        if existing.fingerprint != fp:
            raise Problem("claim-id-conflict",
                          f"Hold id {hold_id!r} was already used with different content.")
        return Answer(existing, member_id, replayed=True)
    if member is None:
        raise Problem("not-found", "No such member.")
    ledger.check_window(occurred_at, now, rules)
    grant = redemption.authorise(session, member, partner_id=partner_id, points=points,
                                 policy=policy, member_pin=member_pin, now=now,
                                 tz=rules.timezone, log_n=rules.pin_log_n)
    claim_limits.check(session, rules.limits, kind=EntryKind.BURN, member_pk=member.id,
                       partner_id=partner_id, points=points, now=now, tz=rules.timezone)
    expires_at = now + timedelta(seconds=expires_in)
    reservable = _reservable(session, member, now=now, until=expires_at)
    if points > reservable:
        raise Problem("insufficient-points",
                      f"The member has {max(reservable, 0)} points available to hold until the "
                      f"hold lapses; {points} requested.")
    hold = Hold(partner_id=partner_id, hold_id=hold_id, member_id=member.id, points=points,
                occurred_at=occurred_at, created_at=now, expires_at=expires_at,
                status=HOLD_OPEN, fingerprint=fp)
    session.add(hold)
    _touch(session, member.id)
    session.flush()
    grant.done()
    return Answer(hold, member_id)


def capture(session: Session, *, partner_id: str, hold_id: str, claim_id: str,
            now: datetime, rules: ledger.Rules, points: int | None = None,
            clock: Callable[[], datetime] | None = None) -> Answer:
    """Book all or part (`points`) of an open hold as a burn under `claim_id`; the rest of it
    is released. The burn occurred when the hold did. A retry with the same claim id and points
    replays the capture; any other capture or void of a closed hold is hold-closed."""
    hold, member, now = _lock_hold(session, partner_id, hold_id, now, clock)
    wanted = hold.points if points is None else points
    if hold.status == CAPTURED and hold.claim_id == claim_id:
        if wanted != hold.captured_points:
            raise Problem("claim-id-conflict",
                          f"Claim id {claim_id!r} captured {hold.captured_points} points of "
                          f"this hold, not {wanted}.")
        entry = ledger.find_claim(session, partner_id, claim_id)
        return Answer(hold, member.external_id, replayed=True,
                      booked=ledger.Booked(entry, replayed=True, member_id=member.external_id))
    _refuse_closed(hold, now)
    if wanted > hold.points:
        raise Problem("validation-error", "A capture cannot take more than the hold.", errors=[
            {"pointer": "/points", "detail": f"May be at most the hold's {hold.points} points."}])
    if ledger.find_claim(session, partner_id, claim_id) is not None:
        raise Problem("claim-id-conflict",
                      f"Claim id {claim_id!r} was already used by another claim.")
    # Closed first, so that the burn's situation no longer subtracts this hold's points.
    hold.status, hold.closed_at = CAPTURED, now
    hold.claim_id, hold.captured_points = claim_id, wanted
    session.flush()
    booked = ledger.book_captured_burn(session, partner_id=partner_id, claim_id=claim_id,
                                       member_id=member.external_id, points=wanted,
                                       occurred_at=as_utc(hold.occurred_at), now=now,
                                       rules=rules)
    hold.entry_id = booked.entry.id
    session.flush()
    return Answer(hold, member.external_id, booked=booked)


def void(session: Session, *, partner_id: str, hold_id: str, now: datetime,
         clock: Callable[[], datetime] | None = None) -> Answer:
    """Release an open hold's points."""
    hold, member, now = _lock_hold(session, partner_id, hold_id, now, clock)
    _refuse_closed(hold, now)
    hold.status, hold.closed_at = VOIDED, now
    _touch(session, member.id)
    session.flush()
    return Answer(hold, member.external_id)


def find(session: Session, partner_id: str, hold_id: str) -> Answer:
    """One of the partner's holds (another partner's is not found)."""
    hold = _find(session, partner_id, hold_id)
    if hold is None:
        raise Problem("not-found", "No such hold.")
    return Answer(hold, hold.member.external_id)


def of_member(session: Session, member_pk: int, now: datetime) -> list[dict]:
    """Every hold placed on the member's points, oldest first (the member's data export)."""
    return [{"partner": h.partner_id, "hold_id": h.hold_id, "points": h.points,
             "occurred_at": iso_utc(h.occurred_at), "expires_at": iso_utc(h.expires_at),
             "status": status_of(h, now),
             "closed_at": iso_utc(h.closed_at) if h.closed_at else None,
             "captured_points": h.captured_points, "claim_id": h.claim_id}
            for h in session.scalars(select(Hold).where(Hold.member_id == member_pk)
                                     .order_by(Hold.id))]


def held_by(session: Session, member_pk: int, now: datetime) -> int:
    """The points the member's open holds reserve at `now`."""
    return int(session.scalar(select(func.coalesce(func.sum(Hold.points), 0))
                              .where(Hold.member_id == member_pk, held_now(Hold, now))))


# --- under the member's lock -----------------------------------------------------------------

def _lock(session: Session, where) -> Member | None:
    return session.scalars(select(Member).where(where).with_for_update()
                           .execution_options(populate_existing=True)).one_or_none()


def _find(session: Session, partner_id: str, hold_id: str) -> Hold | None:
    return session.scalars(select(Hold).where(Hold.partner_id == partner_id,
                                              Hold.hold_id == hold_id)
                           .execution_options(populate_existing=True)).one_or_none()


def _lock_hold(session: Session, partner_id: str, hold_id: str, now: datetime,
               clock: Callable[[], datetime] | None) -> tuple[Hold, Member, datetime]:
    """The hold as it stands under its member's lock, and the time read once the lock is held
    (whether the hold lapsed is decided then)."""
    hold = _find(session, partner_id, hold_id)
    if hold is None:
        raise Problem("not-found", "No such hold.")
    member = _lock(session, Member.id == hold.member_id)
    hold = _find(session, partner_id, hold_id)  # as the last change under the lock left it
    return hold, member, (clock() if clock is not None else now)


def _refuse_closed(hold: Hold, now: datetime) -> None:
    status = status_of(hold, now)
    if status == HOLD_OPEN:
        return
    when = as_utc(hold.closed_at if status != LAPSED else hold.expires_at)
    raise Problem("hold-closed", f"The hold was {status} at {when.isoformat()}.",
                  extensions={"hold_status": status})


def _reservable(session: Session, member: Member, *, now: datetime, until: datetime) -> int:
    """What a new hold may reserve: the points spendable now that are still valid at `until`,
    net of debt and of what open holds reserve already."""
    valid = int(session.scalar(select(func.coalesce(func.sum(Lot.remaining), 0))
                               .where(Lot.member_id == member.id, spendable(Lot, now),
                                      Lot.expires_at > until)))
    return available(valid, member.debt, held_by(session, member.id, now))


def _touch(session: Session, member_pk: int) -> None:
    """A new version of the member's row: claims that read the member's situation before this
    transaction committed read it again (claim_sql.lock_with_situation)."""
    session.execute(update(Member).where(Member.id == member_pk).values(locked=Member.locked)
                    .execution_options(synchronize_session=False))
