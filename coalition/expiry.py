"""Booking expiries: the points of lots past their expiry leave the member's account for the
`expired` account (breakage), lot by lot (`flask points expire --as-of DATE`).

A lot stops being spendable at its `expires_at` (claims never spend an expired lot, whether or
not its expiry is booked yet); booking the expiry makes that visible in the journal, in the
member's balance and history, and in the issuer's statement (`points_expired` of the month the
expiry is booked into). Each lot that still holds points at its expiry gets one entry of kind
`expiry`: postings member -n, expired +n, a consumption of kind `expiry` on the lot, its
`remaining` set to 0. The entry occurs at the lot's expiry instant and is booked into that
instant's month, or into the first open month if that one is closed already (late), as any
claim is. Debt lots never expire.

Safe while claims flow, idempotent, resumable: lots are taken in chunks, each chunk one
transaction that locks its members (in order of id, as a batch does, then the books, as every
claim) and books only what the locked rows still show as unexpired and unbooked. A run that is
killed keeps the chunks it committed; the next run books the rest; a second run books nothing.
A lot that gets points back after its expiry was booked (a burn reversal returning points to
it) is expired again by the next run.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Callable
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import batch_sql, books, ledger
from .clock import as_utc, iso_utc
from .models import Consumption, Entry, Lot, Member, Posting
from .problems import Problem
from .vocabulary import (Account, ConsumptionKind, EntryKind, available, holding,
                         member_account)

CHUNK = 500  # lots per transaction


@dataclass
class Run:
    as_of: str
    cutoff: str
    lots: int = 0
    points: int = 0
    members: int = 0
    chunks: int = 0

    def view(self) -> dict:
        return {"as_of": self.as_of, "cutoff": self.cutoff, "lots_expired": self.lots,
                "points_expired": self.points, "members": self.members, "chunks": self.chunks}


def cutoff_of(as_of: date, tz: str, now: datetime) -> datetime:
    """The instant `as_of` begins in the coalition's time zone: lots that expire by then are
    due. A day after today is refused: expiring points before their time would take what is
    still spendable."""
    start = datetime(as_of.year, as_of.month, as_of.day, tzinfo=ZoneInfo(tz)).astimezone(timezone.utc)
    if start > as_utc(now) + timedelta(days=1):
        raise Problem("validation-error", "--as-of lies in the future: points expire no sooner "
                                          "than their day.")
    return min(start, as_utc(now))


def expire(session: Session, *, as_of: date, now: Callable[[], datetime], tz: str,
           chunk: int = CHUNK, on_chunk: Callable[[dict], None] | None = None) -> dict:
    """Book every due expiry, committing chunk by chunk; what was booked, in all."""
    cutoff = cutoff_of(as_of, tz, now())
    run = Run(as_of.isoformat(), iso_utc(cutoff))
    while True:
        due = session.execute(
            select(Lot.id, Lot.member_id)
            .where(Lot.remaining > 0, holding(Lot), Lot.expires_at <= cutoff)
            .order_by(Lot.expires_at, Lot.id).limit(chunk)).all()
        session.rollback()  # the look ends its transaction: the chunk locks afresh
        if not due:
            return run.view()
        booked = _chunk(session, sorted({member for _, member in due}), cutoff, now(), tz)
        session.commit()
        run.chunks += 1
        run.lots += booked["lots"]
        run.points += booked["points"]
        run.members += booked["members"]
        if on_chunk is not None:
            on_chunk({"chunk": run.chunks, **booked})


def _chunk(session: Session, members: list[int], cutoff: datetime, now: datetime,
           tz: str) -> dict:
    holders = {h.id: h for h in batch_sql.lock(session, [], members)}
    books.hold_open(session)
    closed = books.closed_through(session)
    lots = session.scalars(select(Lot).where(Lot.member_id.in_(members), Lot.remaining > 0,
                                             holding(Lot),
                                             Lot.expires_at <= cutoff)
                           .order_by(Lot.member_id, Lot.expires_at, Lot.id)).all()
    spendable_now = batch_sql.spendable_points(session, members, now)
    balances = {pk: (h.balance, h.debt) for pk, h in holders.items()}
    total = 0
    for lot in lots:
        points = lot.remaining
        balance, debt = balances[lot.member_id]
        balances[lot.member_id] = (balance - points, debt)
        occurred_at = as_utc(lot.expires_at)
        period, late = books.period_after(occurred_at, tz, closed)
        entry = {"kind": EntryKind.EXPIRY, "partner_id": None, "claim_id": None,
                 "member_id": lot.member_id, "points": points, "occurred_at": occurred_at,
                 "recorded_at": now, "period": period, "late": late, "pending_until": None,
                 "description": None, "reverses_id": None,
                 "fingerprint": ledger.fingerprint(EntryKind.EXPIRY, lot=lot.id, points=points),
                 "status": "booked",
                 # The lot was spendable no longer: what is available does not change.
                 "balance_after": available(spendable_now.get(lot.member_id, 0), debt)}
        postings = {member_account(lot.member_id): -points, Account.EXPIRED: points}
        entry["entry_hash"] = ledger.hash_of(entry, postings)
        row = Entry(**entry)
        session.add(row)
        session.flush()
        session.add_all([Posting(entry_id=row.id, account=a, points=p, period=period)
                         for a, p in postings.items()])
        session.add(Consumption(entry_id=row.id, lot_id=lot.id, kind=ConsumptionKind.EXPIRY,
                                points=points, period=period))
        lot.set_remaining(0, period)
        total += points
    for pk, (balance, _) in balances.items():
        if balance != holders[pk].balance:
            session.execute(Member.__table__.update().where(Member.__table__.c.id == pk)
                            .values(balance=balance))
    session.flush()
    return {"lots": len(lots), "points": total,
            "members": sum(1 for pk in balances if balances[pk][0] != holders[pk].balance)}
