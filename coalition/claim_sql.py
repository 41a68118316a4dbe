"""The statements of an earn's or a burn's transaction: lock, read, write (coalition/ledger.py
decides what they book).

On PostgreSQL a claim costs three statements here, besides BEGIN, COMMIT and the token's jti:

1. `lock`: the member's row FOR UPDATE and, once that is held, the books lock (shared);
2. `earn_situation` / `burn_situation`: under both locks, an earlier booking of the claim id,
   the member's spendable points (a burn: its spendable lots, in the order it consumes them)
   and the last closed month;
3. `write`: the entry, its postings, its lot, consumptions, the lots and debt lots it changes
   and the member's balance, in one statement of data-modifying CTEs.

Each step reads what the step before it locked, so they cannot be one statement: a statement
reads from the snapshot it started with, and a wait for a lock inside it does not refresh that
snapshot. SQLite runs the same steps as plain statements (a round trip there is a function
call, and every transaction already holds the one write lock from BEGIN IMMEDIATE).

These are Core statements, not ORM flushes: nothing here goes through the session's unit of
work. Objects of the rows they change that a long-lived session holds (tests, the command
line) are brought up to date with the values written (`_refresh_loaded`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, func, literal_column, select, text, true
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from . import books
from .models import ClosedPeriod, Consumption, DebtLot, Entry, Lot, Member, Posting, UtcDateTime
from .prepared import Prepared
from .vocabulary import spendable


@dataclass(frozen=True)
class Holder:
    """The member's row as the claim locked it (what redemption.authorise reads of it too)."""
    id: int
    external_id: str | None
    balance: int
    debt: int
    locked: bool
    pin_locked_at: datetime | None


@dataclass(frozen=True)
class Situation:
    booked_id: int | None  # an entry booked under this partner's claim id already
    closed_through: str | None  # the last closed month
    spendable: int = 0  # earn: the member's spendable points (before this claim)
    lots: list[tuple[int, int]] = field(default_factory=list)  # burn: (lot id, remaining)


@dataclass
class Writes:
    """Everything one claim books besides its entry and postings."""
    balance: int  # the member's, after the claim
    debt: int
    lot: dict | None = None  # a new lot (an earn's): its columns but member_id and entry_id
    # (kind, lot id or None for the new lot, debt lot id, points), in the order they happened
    consumptions: list[tuple[str, int | None, int | None, int]] = field(default_factory=list)
    lots_left: list[tuple[int, int]] = field(default_factory=list)  # (lot id, remaining)
    debts_left: list[tuple[int, int]] = field(default_factory=list)  # (debt lot id, remaining)


# --- 1. lock, and 2. read under the locks ---------------------------------------------------

_HOLDER = (Member.id, Member.external_id, Member.balance, Member.debt, Member.locked,
           Member.pin_locked_at)
_NOW = bindparam("now", type_=UtcDateTime)
_BOOKED = (select(Entry.id).where(Entry.partner_id == bindparam("partner_id"),
                                  Entry.claim_id == bindparam("claim_id"))
           .scalar_subquery().label("booked_id"))
_CLOSED = select(func.max(ClosedPeriod.period)).scalar_subquery().label("closed_through")
_LOCK = Prepared(select(*_HOLDER).where(Member.external_id == bindparam("card")))  # SQLite


def _spendable_points(member_pk):
    return (select(func.coalesce(func.sum(Lot.remaining), 0))
            .where(Lot.member_id == member_pk, spendable(Lot, _NOW))
            .scalar_subquery().label("spendable"))


def _spendable_lots(member_pk):
    """A member's spendable lots in the order a burn consumes them (ledger.spendable_lots)."""
    return (select(Lot.id, Lot.remaining, Lot.expires_at, Lot.occurred_at)
            .where(Lot.member_id == member_pk, spendable(Lot, _NOW)))


_EARN_SITUATION = Prepared(select(_BOOKED, _CLOSED, _spendable_points(bindparam("member_pk"))))
_KNOWN = select(_BOOKED, _CLOSED).subquery("known")
_LOTS_OF = _spendable_lots(bindparam("member_pk")).subquery("lot")
# One row per spendable lot, each carrying the two facts above; one row of NULL lots when
# there is none.
_BURN_SITUATION = Prepared(
    select(_KNOWN.c.booked_id, _KNOWN.c.closed_through, _LOTS_OF.c.id, _LOTS_OF.c.remaining)
    .select_from(_KNOWN.outerjoin(_LOTS_OF, true()))
    .order_by(_LOTS_OF.c.expires_at, _LOTS_OF.c.occurred_at, _LOTS_OF.c.id))

# PostgreSQL: the member's row locked and what the claim reads under the lock, in one
# statement. A statement reads from the snapshot it started with, and waiting for the row lock
# does not refresh it: if another claim of the member committed while this one waited, the
# lots and the journal it read are from before that claim. Every booking updates the member's
# row (claim_sql.write, and the ORM's reversals: their points always change the balance or
# the debt), so the row's version tells: the locked row (the newest) is the one the snapshot
# sees ("fresh") or the reads are read again, in a statement of their own. The books are held
# open before this statement (books.hold_open: the months closed are read from a snapshot
# taken with them held).
_HOLDER_LOCKED = (select(*_HOLDER, literal_column("members.xmin").label("row_version"))
                  .where(Member.external_id == bindparam("card")).with_for_update()
                  .subquery("holder"))
_SEEN = Member.__table__.alias("seen")
_FRESH = (literal_column("holder.row_version") == select(literal_column("seen.xmin"))
          .select_from(_SEEN).where(_SEEN.c.id == _HOLDER_LOCKED.c.id)
          .scalar_subquery()).label("fresh")
_HOLDER_COLUMNS = [_HOLDER_LOCKED.c[column.key] for column in _HOLDER]
_EARN_LOCKED = Prepared(select(*_HOLDER_COLUMNS, _FRESH, _BOOKED, _CLOSED,
                               _spendable_points(_HOLDER_LOCKED.c.id)))
_LOTS_HELD = _spendable_lots(_HOLDER_LOCKED.c.id).lateral("lot")
_BURN_LOCKED = Prepared(
    select(*_HOLDER_COLUMNS, _FRESH, _BOOKED, _CLOSED, _LOTS_HELD.c.id, _LOTS_HELD.c.remaining)
    .select_from(_HOLDER_LOCKED.outerjoin(_LOTS_HELD, true()))
    .order_by(_LOTS_HELD.c.expires_at, _LOTS_HELD.c.occurred_at, _LOTS_HELD.c.id))


def claimant(session: Session, *, burn: bool, card: str, partner_id: str, claim_id: str,
             now: datetime) -> tuple[Holder | None, Situation]:
    """Lock the member's row (and hold the books open); then read, under both locks, an
    earlier booking of the claim id, the last closed month and what the member can spend
    (a burn: its spendable lots in consumption order, an earn: their sum). No member: None,
    and the reads for the claim id."""
    books.hold_open(session)
    connection = session.connection()
    facts = {"partner_id": partner_id, "claim_id": claim_id, "now": now}
    if connection.dialect.name == "postgresql":
        rows = (_BURN_LOCKED if burn else _EARN_LOCKED).run(connection, {**facts, "card": card}).all()
        holder = Holder(*rows[0][:6]) if rows else None
        if rows and rows[0].fresh:
            return holder, _situation(rows, burn, first=7)
    else:
        row = _LOCK.run(connection, {"card": card}).first()
        holder = None if row is None else Holder(*row)
    rows = (_BURN_SITUATION if burn else _EARN_SITUATION).run(
        connection, {**facts, "member_pk": holder and holder.id}).all()
    return holder, _situation(rows, burn, first=0)


def _situation(rows, burn: bool, first: int) -> Situation:
    """The reads of rows whose columns from `first` on are booked_id, closed_through, then the
    spendable points (an earn) or a lot's id and remaining (a burn, one row per lot)."""
    booked_id, closed_through = rows[0][first], rows[0][first + 1]
    if not burn:
        return Situation(booked_id, closed_through, spendable=int(rows[0][first + 2]))
    return Situation(booked_id, closed_through,
                     lots=[(row[first + 2], row[first + 3]) for row in rows
                           if row[first + 2] is not None])


_OPEN_DEBTS = Prepared(select(DebtLot.id, DebtLot.remaining)
                       .where(DebtLot.member_id == bindparam("member_pk"), DebtLot.remaining > 0)
                       .order_by(DebtLot.id))


def open_debt_lots(session: Session, member_pk: int) -> list[tuple[int, int]]:
    """The member's unpaid debt lots, oldest first: what a (non-pending) earn fills."""
    return [tuple(row) for row in
            _OPEN_DEBTS.run(session.connection(), {"member_pk": member_pk})]


# --- 3. write -------------------------------------------------------------------------------

ENTRY_COLUMNS = ("kind", "partner_id", "claim_id", "member_id", "points", "occurred_at",
                 "recorded_at", "period", "late", "pending_until", "description",
                 "reverses_id", "fingerprint", "status", "balance_after", "entry_hash")

# PostgreSQL: one statement of data-modifying CTEs, made of the parts a claim needs (an earn:
# entry, lot, postings, member; a burn: entry, postings, consumptions, lots, member), each
# combination's text always the same, so that the server prepares it once. The parts see one
# snapshot and none sees another's rows, which nothing here needs: each writes rows of its
# own, and the foreign keys between them are checked at the end of the statement. The claim
# key's unique violation aborts the whole statement, as a flush's would.
_ENTRY = """entry AS (
    INSERT INTO journal_entries (kind, partner_id, claim_id, member_id, points, occurred_at,
        recorded_at, period, late, pending_until, description, reverses_id, fingerprint,
        status, balance_after, entry_hash)
    VALUES (:kind, :partner_id, :claim_id, :member_id, :points, :occurred_at, :recorded_at,
        :period, :late, CAST(:pending_until AS timestamptz), CAST(:description AS varchar),
        CAST(:reverses_id AS bigint), :fingerprint, :status, :balance_after, :entry_hash)
    RETURNING id)"""
_NEW_LOT = """new_lot AS (
    INSERT INTO lots (member_id, entry_id, issuer_id, points, remaining, occurred_at,
        available_at, expires_at)
    SELECT :member_id, entry.id, :lot_issuer_id, :lot_points, :lot_remaining, :occurred_at,
        CAST(:lot_available_at AS timestamptz), :lot_expires_at
    FROM entry
    RETURNING id)"""
_POSTED = """posted AS (
    INSERT INTO postings (entry_id, account, points)
    SELECT entry.id, p.account, p.points FROM entry,
        unnest(CAST(:posting_accounts AS varchar[]), CAST(:posting_points AS bigint[]))
            WITH ORDINALITY AS p(account, points, n)
    ORDER BY p.n)"""
_CONSUMED = """consumed AS (
    INSERT INTO consumptions (entry_id, lot_id, debt_lot_id, kind, points)
    SELECT entry.id, {lot_id}, c.debt_lot_id, c.kind, c.points
    FROM entry,
        unnest(CAST(:consumed_kinds AS varchar[]), CAST(:consumed_lots AS bigint[]),
               CAST(:consumed_debt_lots AS bigint[]), CAST(:consumed_points AS bigint[]))
            WITH ORDINALITY AS c(kind, lot_id, debt_lot_id, points, n)
    ORDER BY c.n)"""
_LOTS_LEFT = """lots_left AS (
    UPDATE lots SET remaining = u.remaining
    FROM unnest(CAST(:lots_left_ids AS bigint[]), CAST(:lots_left AS bigint[])) AS u(id, remaining)
    WHERE lots.id = u.id)"""
_DEBTS_LEFT = """debts_left AS (
    UPDATE debt_lots SET remaining = u.remaining
    FROM unnest(CAST(:debts_left_ids AS bigint[]), CAST(:debts_left AS bigint[])) AS u(id, remaining)
    WHERE debt_lots.id = u.id)"""
_HOLDER_UPDATE = """holder AS (
    UPDATE members SET balance = :new_balance, debt = :new_debt WHERE id = :member_id)"""
_WRITES: dict[tuple[bool, bool, bool, bool], Prepared] = {}


def _write_statement(lot: bool, consumed: bool, lots_left: bool, debts_left: bool) -> Prepared:
    key = (lot, consumed, lots_left, debts_left)
    if key not in _WRITES:
        # A consumption without a lot id is of the new lot (a debt fill).
        of_lot = "coalesce(c.lot_id, (SELECT id FROM new_lot))" if lot else "c.lot_id"
        parts = [_ENTRY, _NEW_LOT if lot else None, _POSTED,
                 _CONSUMED.format(lot_id=of_lot) if consumed else None,
                 _LOTS_LEFT if lots_left else None, _DEBTS_LEFT if debts_left else None,
                 _HOLDER_UPDATE]
        _WRITES[key] = Prepared(text("WITH " + ",\n".join(p for p in parts if p)
                                     + "\nSELECT entry.id FROM entry"))
    return _WRITES[key]


_INSERT_ENTRY = Entry.__table__.insert()
_INSERT_POSTING = Posting.__table__.insert()
_INSERT_LOT = Lot.__table__.insert()
_INSERT_CONSUMPTION = Consumption.__table__.insert()
_LOTS, _DEBT_LOTS, _MEMBERS = Lot.__table__, DebtLot.__table__, Member.__table__
_LOT_LEFT = (_LOTS.update().where(_LOTS.c.id == bindparam("lot_pk"))
             .values(remaining=bindparam("left")))
_DEBT_LEFT = (_DEBT_LOTS.update().where(_DEBT_LOTS.c.id == bindparam("lot_pk"))
              .values(remaining=bindparam("left")))
_HOLDER_AFTER = (_MEMBERS.update().where(_MEMBERS.c.id == bindparam("member_pk"))
                 .values(balance=bindparam("new_balance"), debt=bindparam("new_debt")))


def write(session: Session, entry: dict, postings: dict[str, int], writes: Writes) -> int:
    """Book the entry (its columns in `entry`) with its postings and `writes`; its id."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        entry_id = _write_sqlite(connection, entry, postings, writes)
    else:
        params = {**entry, "posting_accounts": list(postings),
                  "posting_points": list(postings.values()),
                  "new_balance": writes.balance, "new_debt": writes.debt}
        if writes.lot is not None:
            params.update({f"lot_{name}": value for name, value in writes.lot.items()})
        if writes.consumptions:
            kinds, lots, debt_lots, points = zip(*writes.consumptions)
            params.update(consumed_kinds=[str(kind) for kind in kinds], consumed_lots=list(lots),
                          consumed_debt_lots=list(debt_lots), consumed_points=list(points))
        if writes.lots_left:
            params["lots_left_ids"], params["lots_left"] = map(list, zip(*writes.lots_left))
        if writes.debts_left:
            params["debts_left_ids"], params["debts_left"] = map(list, zip(*writes.debts_left))
        statement = _write_statement(writes.lot is not None, bool(writes.consumptions),
                                     bool(writes.lots_left), bool(writes.debts_left))
        entry_id = statement.run(connection, params).scalar_one()
    _refresh_loaded(session, Member, entry["member_id"], balance=writes.balance,
                    debt=writes.debt)
    for lot_id, left in writes.lots_left:
        _refresh_loaded(session, Lot, lot_id, remaining=left)
    for lot_id, left in writes.debts_left:
        _refresh_loaded(session, DebtLot, lot_id, remaining=left)
    return entry_id


def _write_sqlite(connection, entry: dict, postings: dict[str, int], writes: Writes) -> int:
    member_pk = entry["member_id"]
    entry_id = connection.execute(_INSERT_ENTRY, entry).inserted_primary_key[0]
    connection.execute(_INSERT_POSTING, [{"entry_id": entry_id, "account": account,
                                          "points": points}
                                         for account, points in postings.items()])
    lot_id = None
    if writes.lot is not None:
        lot_id = connection.execute(_INSERT_LOT, {**writes.lot, "member_id": member_pk,
                                                  "entry_id": entry_id}).inserted_primary_key[0]
    if writes.consumptions:
        connection.execute(_INSERT_CONSUMPTION, [
            {"entry_id": entry_id, "kind": kind, "lot_id": lot_id if of_lot is None else of_lot,
             "debt_lot_id": debt_lot, "points": points}
            for kind, of_lot, debt_lot, points in writes.consumptions])
    if writes.lots_left:
        connection.execute(_LOT_LEFT, [{"lot_pk": lot, "left": left}
                                       for lot, left in writes.lots_left])
    if writes.debts_left:
        connection.execute(_DEBT_LEFT, [{"lot_pk": lot, "left": left}
                                        for lot, left in writes.debts_left])
    connection.execute(_HOLDER_AFTER, {"member_pk": member_pk, "new_balance": writes.balance,
                                       "new_debt": writes.debt})
    return entry_id


def _refresh_loaded(session: Session, model, pk: int, **values) -> None:
    """Give an object of a row written here, if the session holds one, the values written
    (as loaded, not as changes to flush): a session that lives on reads what is stored."""
    loaded = session.identity_map.get(identity_key(model, pk))
    if loaded is not None:
        for name, value in values.items():
            set_committed_value(loaded, name, value)

