"""The statements of a batch's transaction (coalition/batch.py decides what they book).

A batch reads what its claims need in a few statements for all of them (the members' rows,
locked in one sorted order; earlier bookings of its claim ids; the members' spendable points
or lots) and writes what they book as multi-row statements: on PostgreSQL one INSERT per table for the
whole batch and one UPDATE per kind of row it changes, each with its columns bound as arrays
(SQLite, in process: executemany). Rows written here get their ids from the tables' own sequences (PostgreSQL),
or after the highest id (SQLite, whose transaction holds the one write lock from BEGIN
IMMEDIATE), so a burn can consume the lot of an earn booked earlier in the same batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import bindparam, func, or_, select, text
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from .claim_sql import HOLDER, Holder, lot_left_update, lot_periods, refresh_loaded, refresh_lot
from .clock import as_utc
from .database import is_sqlite
from .models import ClosedPeriod, Consumption, DebtLot, Entry, Hold, Lot, Member, Posting
from .vocabulary import held_now, spendable

# --- reads -----------------------------------------------------------------------------------

def enrol(session: Session, cards: list[str], *, now: datetime,
          partner_id: str) -> dict[str, tuple[bool, datetime]]:
    """Enrol the cards not enrolled yet, with the values members.enrol gives a member:
    {card: (enrolled now, created_at)}."""
    if not cards:
        return {}
    insert = sqlite_insert if is_sqlite(session) else postgresql_insert
    created = set(session.connection().scalars(
        insert(Member).values([{Member.external_id: card, Member.created_at: now,
                                Member.enrolled_by: partner_id, Member.balance: 0,
                                Member.debt: 0, Member.locked: False, Member.pin_failures: 0}
                               for card in cards])
        .on_conflict_do_nothing(index_elements=[Member.external_id])
        .returning(Member.external_id)))
    rows = session.connection().execute(select(Member.external_id, Member.created_at)
                                        .where(Member.external_id.in_(cards)))
    return {card: (card in created, created_at) for card, created_at in rows}


def reversal_targets(session: Session, partner_id: str, claim_ids: list[str]) -> list[int]:
    """The member ids of the partner's claims named: the members their reversals lock."""
    if not claim_ids:
        return []
    return list(session.connection().scalars(
        select(Entry.member_id).where(Entry.partner_id == partner_id,
                                      Entry.claim_id.in_(claim_ids))))


def lock(session: Session, cards: list[str], pks: list[int]) -> list[Holder]:
    """Lock the members' rows in one order, by id: two batches that share members take their
    locks in the same order and never wait for each other in a cycle. `pks` names the referrers
    of referred members whose first purchase the batch may book (coalition/activities.py). (A
    single claim holds one member, or a referrer and then the member, whose id is higher: in
    ascending order too, so it cannot close a cycle either.)"""
    if not cards and not pks:
        return []
    statement = (select(*HOLDER).where(or_(Member.external_id.in_(cards), Member.id.in_(pks)))
                 .order_by(Member.id))
    if not is_sqlite(session):
        statement = statement.with_for_update()
    return [Holder(*row) for row in session.connection().execute(statement)]


def holder(session: Session, pk: int) -> Holder:
    """A member's row once more (locked by the batch already)."""
    return Holder(*session.connection().execute(select(*HOLDER).where(Member.id == pk)).one())


def booked(session: Session, partner_id: str, claim_ids: list[str]) -> dict[str, tuple[int, str]]:
    """Earlier bookings of these claim ids by the partner: {claim id: (entry id, fingerprint)}."""
    if not claim_ids:
        return {}
    rows = session.connection().execute(
        select(Entry.claim_id, Entry.id, Entry.fingerprint)
        .where(Entry.partner_id == partner_id, Entry.claim_id.in_(claim_ids)))
    return {claim_id: (entry_id, fp) for claim_id, entry_id, fp in rows}


def closed_through(session: Session) -> str | None:
    return session.connection().scalar(select(func.max(ClosedPeriod.period)))


def spendable_points(session: Session, pks: list[int], now: datetime) -> dict[int, int]:
    """The members' spendable points (what an earn's balance_after starts from)."""
    if not pks:
        return {}
    rows = session.connection().execute(
        select(Lot.member_id, func.sum(Lot.remaining))
        .where(Lot.member_id.in_(pks), spendable(Lot, now)).group_by(Lot.member_id))
    return {pk: int(points) for pk, points in rows}


def held_points(session: Session, pks: list[int], now: datetime) -> dict[int, int]:
    """The points the members' open holds reserve (what is not available to their burns)."""
    if not pks:
        return {}
    rows = session.connection().execute(
        select(Hold.member_id, func.sum(Hold.points))
        .where(Hold.member_id.in_(pks), held_now(Hold, now)).group_by(Hold.member_id))
    return {pk: int(points) for pk, points in rows}


@dataclass
class OpenLot:
    """A spendable lot as a batch's burns consume it. id < 0: a lot of this batch, unwritten."""
    id: int
    remaining: int
    expires_at: datetime
    occurred_at: datetime
    order: int = 0  # after expiry and occurrence: the lot's id; a new lot after every older one

    def key(self) -> tuple:
        return (as_utc(self.expires_at), as_utc(self.occurred_at), self.order)


def spendable_lots(session: Session, pks: list[int], now: datetime) -> dict[int, list[OpenLot]]:
    """The members' spendable lots in the order a burn consumes them (ledger.spendable_lots)."""
    lots: dict[int, list[OpenLot]] = {pk: [] for pk in pks}
    if not pks:
        return lots
    rows = session.connection().execute(
        select(Lot.member_id, Lot.id, Lot.remaining, Lot.expires_at, Lot.occurred_at)
        .where(Lot.member_id.in_(pks), spendable(Lot, now))
        .order_by(Lot.member_id, Lot.expires_at, Lot.occurred_at, Lot.id))
    for pk, lot_id, remaining, expires_at, occurred_at in rows:
        lots[pk].append(OpenLot(lot_id, remaining, expires_at, occurred_at, lot_id))
    return lots


def entries_with_cards(session: Session, ids: list[int]) -> dict[int, tuple[Entry, str]]:
    """Booked entries (what a replay answers) with their members' cards."""
    if not ids:
        return {}
    rows = session.execute(select(Entry, Member.external_id)
                           .join(Member, Member.id == Entry.member_id).where(Entry.id.in_(ids)))
    return {entry.id: (entry, card) for entry, card in rows}


# --- writes ----------------------------------------------------------------------------------

@dataclass
class Rows:
    """What a batch books and has not written yet. Entries and lots carry ids < 0 until
    written; postings, lots and consumptions refer to them by those."""
    entries: list[dict] = field(default_factory=list)
    postings: list[dict] = field(default_factory=list)
    lots: list[dict] = field(default_factory=list)
    consumptions: list[dict] = field(default_factory=list)
    lots_left: dict[int, int] = field(default_factory=dict)  # lot id: remaining
    # lot id: the latest month of the batch's entries that changed it (models.Lot.last_period)
    lots_period: dict[int, str] = field(default_factory=dict)
    debts_left: dict[int, int] = field(default_factory=dict)  # debt lot id: remaining
    members: dict[int, tuple[int, int]] = field(default_factory=dict)  # id: (balance, debt)

    def __bool__(self) -> bool:
        return bool(self.entries or self.members)


_LOT_LEFT = lot_left_update(Lot.__table__)
_DEBT_LEFT = (DebtLot.__table__.update().where(DebtLot.__table__.c.id == bindparam("lot_pk"))
              .values(remaining=bindparam("left")))
_MEMBER_AFTER = (Member.__table__.update().where(Member.__table__.c.id == bindparam("member_pk"))
                 .values(balance=bindparam("new_balance"), debt=bindparam("new_debt")))


def write(session: Session, rows: Rows) -> tuple[dict[int, int], dict[int, int]]:
    """Write `rows`; the ids the entries and the lots got: {id < 0: id} each."""
    connection = session.connection()
    entry_ids = dict(zip((e["id"] for e in rows.entries), _new_ids(session, Entry, len(rows.entries))))
    lot_ids = dict(zip((lot["id"] for lot in rows.lots), _new_ids(session, Lot, len(rows.lots))))

    def lot(ref: int | None) -> int | None:
        return lot_ids.get(ref, ref) if ref is not None and ref < 0 else ref

    _insert(connection, Entry, [{**e, "id": entry_ids[e["id"]]} for e in rows.entries])
    period = {e["id"]: e["period"] for e in rows.entries}  # postings' and consumptions' too
    _insert(connection, Posting, [{**p, "entry_id": entry_ids[p["entry_id"]],
                                   "period": period[p["entry_id"]]} for p in rows.postings])
    _insert(connection, Lot, [{**x, "id": lot_ids[x["id"]], "entry_id": entry_ids[x["entry_id"]],
                               "remaining": rows.lots_left.get(x["id"], x["remaining"]),
                               **lot_periods(rows.lots_left.get(x["id"], x["remaining"]),
                                             max(period[x["entry_id"]],
                                                 rows.lots_period.get(x["id"], "")))}
                              for x in rows.lots])
    _insert(connection, Consumption, [{**c, "entry_id": entry_ids[c["entry_id"]],
                                       "period": period[c["entry_id"]],
                                       "lot_id": lot(c["lot_id"])} for c in rows.consumptions])
    changed = [(lot_id, left) for lot_id, left in rows.lots_left.items() if lot_id > 0]
    _lots_left(connection, [(lot_id, left, rows.lots_period[lot_id]) for lot_id, left in changed])
    _update(connection, _DEBT_LEFT, "debt_lots", "remaining", list(rows.debts_left.items()))
    if rows.members:
        if connection.dialect.name == "sqlite":
            connection.execute(_MEMBER_AFTER, [{"member_pk": pk, "new_balance": b, "new_debt": d}
                                               for pk, (b, d) in rows.members.items()])
        else:
            connection.execute(_MEMBERS_AFTER, {"ids": list(rows.members),
                                                "balances": [b for b, _ in rows.members.values()],
                                                "debts": [d for _, d in rows.members.values()]})
    # Objects of these rows that the session holds (a PIN check loads the member) learn the
    # values written, as claim_sql.write does for a single claim.
    for pk, (balance, debt) in rows.members.items():
        refresh_loaded(session, Member, pk, balance=balance, debt=debt)
    for lot_id, left in changed:
        refresh_lot(session, lot_id, left, rows.lots_period[lot_id])
    for lot_id, left in rows.debts_left.items():
        refresh_loaded(session, DebtLot, lot_id, remaining=left)
    return entry_ids, lot_ids


def _new_ids(session: Session, model, count: int) -> list[int]:
    if count == 0:
        return []
    table = model.__tablename__
    connection = session.connection()
    if is_sqlite(session):
        highest = connection.scalar(select(func.coalesce(func.max(model.id), 0)))
        return list(range(highest + 1, highest + 1 + count))
    return sorted(connection.scalars(text(
        "SELECT nextval(pg_get_serial_sequence(:table, 'id')) FROM generate_series(1, :count)"),
        {"table": table, "count": count}))


# PostgreSQL: one INSERT ... SELECT FROM unnest(arrays) per table, each column bound as one
# array: a statement of the same short text whatever the number of rows, which the server
# parses once per connection (a multi-row VALUES list would be compiled and parsed anew for
# each size). Rows of one call have the same columns.
_MEMBERS_AFTER = text("""
UPDATE members SET balance = u.balance, debt = u.debt
FROM unnest(CAST(:ids AS bigint[]), CAST(:balances AS bigint[]), CAST(:debts AS bigint[]))
    AS u(id, balance, debt)
WHERE members.id = u.id""")
_STATEMENTS: dict[tuple, text] = {}


def _insert(connection, model, rows: list[dict]) -> None:
    if not rows:
        return
    if connection.dialect.name == "sqlite":
        connection.execute(model.__table__.insert(), rows)  # executemany: no round trips there
        return
    names = tuple(rows[0])
    key = (model.__tablename__, names)
    if key not in _STATEMENTS:
        columns = model.__table__.columns
        arrays = ", ".join(f"CAST(:{name} AS {columns[name].type.compile(connection.dialect)}[])"
                           for name in names)
        _STATEMENTS[key] = text(f"INSERT INTO {model.__tablename__} ({', '.join(names)}) "
                                f"SELECT * FROM unnest({arrays})")
    connection.execute(_STATEMENTS[key], {name: [row[name] for row in rows] for name in names})


# What claim_sql.lot_left_update does for one lot, for many.
_LOTS_LEFT = text("""
UPDATE lots SET remaining = u.remaining, last_period = GREATEST(lots.last_period, u.period),
    spent_period = CASE WHEN u.remaining > 0 THEN 'open'
                        ELSE GREATEST(lots.last_period, u.period) END
FROM unnest(CAST(:ids AS bigint[]), CAST(:lefts AS bigint[]), CAST(:periods AS varchar[]))
    AS u(id, remaining, period)
WHERE lots.spent_period = 'open' AND lots.id = u.id""")


def _lots_left(connection, values: list[tuple[int, int, str]]) -> None:
    """Set open lots' remaining: (lot id, remaining, the month of the entry that left it)."""
    if not values:
        return
    if connection.dialect.name == "sqlite":
        connection.execute(_LOT_LEFT, [{"lot_pk": i, "left": v, "period": p}
                                       for i, v, p in values])
        return
    connection.execute(_LOTS_LEFT, {"ids": [i for i, _, _ in values],
                                    "lefts": [v for _, v, _ in values],
                                    "periods": [p for _, _, p in values]})


def _update(connection, statement, table: str, column: str, values: list[tuple[int, int]]) -> None:
    """Set `column` of the rows of `table` by id: {id: value}."""
    if not values:
        return
    if connection.dialect.name == "sqlite":
        connection.execute(statement, [{"lot_pk": i, "left": v} for i, v in values])
        return
    key = (table, column)
    if key not in _STATEMENTS:
        _STATEMENTS[key] = text(
            f"UPDATE {table} SET {column} = u.value FROM unnest(CAST(:ids AS bigint[]), "
            f"CAST(:values AS bigint[])) AS u(id, value) WHERE {table}.id = u.id")
    connection.execute(_STATEMENTS[key], {"ids": [i for i, _ in values],
                                          "values": [v for _, v in values]})
