"""The statements of an earn's or a burn's transaction: lock, read, write (coalition/ledger.py
decides what they book).

On PostgreSQL a claim costs two statements here, besides BEGIN, COMMIT and the token's jti:

1. `lock_with_situation`: the member's row FOR UPDATE, then the books lock (shared), and the
   situation: an earlier booking of the claim id, the member's spendable points (a burn: its
   spendable lots, in the order it consumes them), the last closed month and, for an earn,
   the campaigns and the partner's coupons running at its occurred_at (bonuses.Offers: a
   bonus costs no statement of its own unless a cap, tier or segment is to be looked at).
   The situation is
   read in the statement's snapshot, taken before the locks; when the member's row changed
   while the claim waited for it, the situation is read again by a second statement
   (`earn_situation` / `burn_situation`), now under the lock.
2. `write`: the entry, its postings, its lots, consumptions, the lots and debt lots it changes
   and the member's balance, in one statement of data-modifying CTEs, which books nothing if
   the entry's month was closed after the situation was read (the claim then reads it again
   and plans anew).

SQLite runs the same steps as plain statements (a round trip there is a function call, and
every transaction already holds the one write lock from BEGIN IMMEDIATE, so nothing it reads
goes stale).

These are Core statements, not ORM flushes: nothing here goes through the session's unit of
work. Objects of the rows they change that a long-lived session holds (tests, the command
line) are brought up to date with the values written (`refresh_loaded`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sqlalchemy import String, Text, bindparam, case, cast, func, literal_column, select, text, true
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from . import bonuses, books
from .database import is_sqlite
from .models import (Campaign, ClaimKey, ClosedPeriod, Consumption, Coupon, CouponActivation, DebtLot,
                     Entry, Hold, Lot, Member, Posting, UtcDateTime)
from .vocabulary import LOT_OPEN, held_now, holding, spendable


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
    held: int = 0  # the member's points that open holds reserve (coalition/holds.py)
    # earn: whether a campaign, or a coupon of the partner, runs at the earn's occurred_at
    # (coalition/bonuses.py looks for bonuses only then: an earn without pays no statement)
    bonus_running: bool = True
    # earn, on PostgreSQL when read with the lock: what runs then (bonus_running says whether
    # anything does); None: bonuses.for_earn reads it
    offers: "bonuses.Offers | None" = None


class NewLot(int):
    """A consumption's lot that the claim itself makes: its index in Writes.lots."""


@dataclass
class Writes:
    """Everything one claim books besides its entry and postings."""
    balance: int  # the member's, after the claim
    debt: int
    # An earn's new lots, its own points first, then a lot per bonus: their columns but
    # member_id and entry_id.
    lots: list[dict] = field(default_factory=list)
    # (kind, lot id or a NewLot, debt lot id, points), in the order they happened
    consumptions: list[tuple[str, int, int | None, int]] = field(default_factory=list)
    lots_left: list[tuple[int, int]] = field(default_factory=list)  # (lot id, remaining)
    debts_left: list[tuple[int, int]] = field(default_factory=list)  # (debt lot id, remaining)


# --- 1. lock ------------------------------------------------------------------------------

HOLDER = (Member.id, Member.external_id, Member.balance, Member.debt, Member.locked,
           Member.pin_locked_at)


def _lock_statement(where, postgresql: bool):
    if not postgresql:
        return select(*HOLDER).where(where)
    # The row lock inside, the books lock outside: the outer column is computed once the
    # inner query has returned its locked row, so the order is the one book_reversal and the
    # documentation use (member, then books; books.py). No member, no row, no books lock:
    # such a claim books nothing.
    row = select(*HOLDER).where(where).with_for_update().subquery("holder")
    return select(*row.c, books.hold_open_clause())


_LOCK_BY_CARD = {pg: _lock_statement(Member.external_id == bindparam("card"), pg)
                 for pg in (False, True)}


def lock(session: Session, external_id: str) -> Holder | None:
    """Lock the member's row (and hold the books open); None if there is no such member."""
    statement = _LOCK_BY_CARD[not is_sqlite(session)]
    row = session.connection().execute(statement, {"card": external_id}).first()
    return None if row is None else Holder(*row[:6])


# --- 2. read under the locks ----------------------------------------------------------------

_NOW = bindparam("now", type_=UtcDateTime)
# The claim key, not the journal: on PostgreSQL the journal is partitioned by month and
# only claim_keys holds (partner_id, claim_id) in one index (models.ClaimKey).
_BOOKED = (select(ClaimKey.entry_id).where(ClaimKey.partner_id == bindparam("partner_id"),
                                           ClaimKey.claim_id == bindparam("claim_id"))
           .scalar_subquery().label("booked_id"))
_CLOSED = select(func.max(ClosedPeriod.period)).scalar_subquery().label("closed_through")
_SPENDABLE = (select(func.coalesce(func.sum(Lot.remaining), 0))
              .where(Lot.member_id == bindparam("member_pk"), spendable(Lot, _NOW))
              .scalar_subquery().label("spendable"))


def held_points(member_pk):
    """The points the open holds of member `member_pk` (a column or a bind parameter) reserve
    at :now, as a scalar subquery labelled `held`."""
    return (select(func.coalesce(func.sum(Hold.points), 0))
            .where(Hold.member_id == member_pk, held_now(Hold, _NOW))
            .scalar_subquery().label("held"))


_HELD = held_points(bindparam("member_pk"))
_OCCURRED = bindparam("occurred_at", type_=UtcDateTime)
_BONUS_RUNNING = (
    select(Campaign.id).where(Campaign.starts_at <= _OCCURRED, Campaign.ends_at > _OCCURRED)
    .exists()
    | select(Coupon.id).where(Coupon.partner_id == bindparam("partner_id"),
                              Coupon.starts_at <= _OCCURRED, Coupon.ends_at > _OCCURRED)
    .exists()).label("bonus_running")
_EARN_SITUATION = select(_BOOKED, _CLOSED, _SPENDABLE, _HELD, _BONUS_RUNNING)
_KNOWN = select(_BOOKED, _CLOSED, _HELD).subquery("known")
# One row per spendable lot, in the order a burn consumes them (ledger.spendable_lots), each
# carrying the two facts above; one row of NULL lots when there is none.
_BURN_SITUATION = (
    select(_KNOWN.c.booked_id, _KNOWN.c.closed_through, _KNOWN.c.held, Lot.id, Lot.remaining)
    .select_from(_KNOWN.outerjoin(Lot, (Lot.member_id == bindparam("member_pk"))
                                  & spendable(Lot, _NOW)))
    .order_by(Lot.expires_at, Lot.occurred_at, Lot.id))


def earn_situation(session: Session, *, partner_id: str, claim_id: str, member_pk: int | None,
                   now: datetime, occurred_at: datetime | None = None) -> Situation:
    booked_id, closed_through, points, held, running = session.connection().execute(
        _EARN_SITUATION, {"partner_id": partner_id, "claim_id": claim_id, "member_pk": member_pk,
                          "now": now, "occurred_at": occurred_at or now}).one()
    return Situation(booked_id, closed_through, spendable=int(points), held=int(held),
                     bonus_running=bool(running))


def burn_situation(session: Session, *, partner_id: str, claim_id: str, member_pk: int | None,
                   now: datetime) -> Situation:
    rows = session.connection().execute(_BURN_SITUATION, {
        "partner_id": partner_id, "claim_id": claim_id, "member_pk": member_pk,
        "now": now}).all()
    booked_id, closed_through, held = rows[0][0], rows[0][1], rows[0][2]
    return Situation(booked_id, closed_through, held=int(held),
                     lots=[(lot_id, remaining) for _, _, _, lot_id, remaining in rows
                           if lot_id is not None])


_OPEN_DEBTS = (select(DebtLot.id, DebtLot.remaining)
               .where(DebtLot.member_id == bindparam("member_pk"), DebtLot.remaining > 0)
               .order_by(DebtLot.id))


def open_debt_lots(session: Session, member_pk: int) -> list[tuple[int, int]]:
    """The member's unpaid debt lots, oldest first: what a (non-pending) earn fills."""
    return [tuple(row) for row in
            session.connection().execute(_OPEN_DEBTS, {"member_pk": member_pk})]


# --- 1 and 2 in one round trip (PostgreSQL) ---------------------------------------------------

# The lock statement reads the situation too, in its own snapshot: taken before the locks, so
# it is current only if no claim of the member committed while this one waited for the row.
# Every write to a member's lots, debt lots, holds or coupon activations updates the member's
# row in the same transaction (a new row version, a new xmin), so the version the lock returns (the newest)
# equals the version the snapshot sees exactly when the snapshot's lots are the newest too;
# otherwise the situation is read again, now under the lock. A month closed meanwhile (the
# close held the books while this claim waited for them) is caught by the write (see
# _WRITE_POSTGRESQL), and the claim reads its situation again.
_SEEN = Member.__table__.alias("seen")


def _lock_and_read(situation_columns, lots=None):
    locked = (select(*HOLDER, literal_column("xmin").label("version"))
              .where(Member.external_id == bindparam("card")).with_for_update()
              .subquery("holder"))
    current = (locked.c.version == select(literal_column("seen.xmin"))
               .where(_SEEN.c.id == locked.c.id).scalar_subquery()).label("current")
    columns = [*locked.c[:6], books.hold_open_clause(), current, _BOOKED, _CLOSED,
               held_points(locked.c.id)]
    statement = select(*columns, *situation_columns(locked))
    return statement if lots is None else statement.select_from(locked.join(lots(locked), true()))


def _as_json_text(column):
    """Numbers that are no integers go into JSON as text: psycopg would read them as floats."""
    return cast(column, Text) if column.type.python_type is Decimal else column


def _offers_of(held):
    """The campaigns running at :occurred_at and the partner's coupons running then, with the
    member's activations of them, as JSON arrays (bonuses.Offers.parsed reads them): what
    bonuses.for_earn would otherwise read in two statements more."""
    campaigns = (select(func.json_agg(aggregate_order_by(
        func.json_build_array(*map(_as_json_text, bonuses.CAMPAIGN_TERMS)),
        Campaign.starts_at, Campaign.id)))
        .where(Campaign.starts_at <= _OCCURRED, Campaign.ends_at > _OCCURRED)
        .scalar_subquery().label("campaigns"))
    coupons = (select(func.json_agg(aggregate_order_by(
        func.json_build_array(*map(_as_json_text, bonuses.COUPON_TERMS), CouponActivation.id,
                              CouponActivation.activated_at <= bindparam("activated_by",
                                                                         type_=UtcDateTime),
                              CouponActivation.entry_id.is_not(None)),
        Coupon.id)))
        .select_from(Coupon)
        .outerjoin(CouponActivation, (CouponActivation.coupon_id == Coupon.id)
                   & (CouponActivation.member_id == held.c.id))
        .where(Coupon.partner_id == bindparam("partner_id"), Coupon.starts_at <= _OCCURRED,
               Coupon.ends_at > _OCCURRED)
        .scalar_subquery().label("coupons"))
    return [campaigns, coupons]


def _spendable_of(held):
    return [select(func.coalesce(func.sum(Lot.remaining), 0))
            .where(Lot.member_id == held.c.id, spendable(Lot, _NOW))
            .scalar_subquery().label("spendable"), *_offers_of(held)]


_BURN_ORDER = (Lot.expires_at, Lot.occurred_at, Lot.id)


def _lots_of(held):
    return (select(func.array_agg(aggregate_order_by(Lot.id, *_BURN_ORDER)).label("lot_ids"),
                   func.array_agg(aggregate_order_by(Lot.remaining, *_BURN_ORDER)).label("lefts"))
            .where(Lot.member_id == held.c.id, spendable(Lot, _NOW)).lateral("spendable_lots"))


_LOCK_AND_READ_EARN = _lock_and_read(_spendable_of)
_LOCK_AND_READ_BURN = _lock_and_read(lambda held: [], _lots_of)
_LOCK_AND_READ_BURN = _LOCK_AND_READ_BURN.add_columns(
    literal_column("spendable_lots.lot_ids"), literal_column("spendable_lots.lefts"))


def lock_with_situation(session: Session, external_id: str, *, burn: bool, partner_id: str,
                        claim_id: str, now: datetime,
                        occurred_at: datetime | None = None) -> tuple[Holder | None, Situation]:
    """lock, then earn_situation (or burn_situation): on PostgreSQL in one round trip, or two
    when the member's row changed while this claim waited for it. `occurred_at`: an earn's,
    for Situation.bonus_running."""
    params = {"card": external_id, "partner_id": partner_id, "claim_id": claim_id, "now": now}
    if burn:
        situation = burn_situation
    else:
        params["occurred_at"] = occurred_at or now
        params["activated_by"] = params["occurred_at"] + bonuses.SKEW

        def situation(session, **kw):
            return earn_situation(session, occurred_at=occurred_at, **kw)
    if is_sqlite(session):
        holder = lock(session, external_id)
        return holder, situation(session, partner_id=partner_id, claim_id=claim_id,
                                 member_pk=holder and holder.id, now=now)
    statement = _LOCK_AND_READ_BURN if burn else _LOCK_AND_READ_EARN
    row = session.connection().execute(statement, params).first()
    holder = None if row is None else Holder(*row[:6])
    if row is None or not row.current:
        return holder, situation(session, partner_id=partner_id, claim_id=claim_id,
                                 member_pk=holder and holder.id, now=now)
    if burn:
        ids, lefts = row[-2] or [], row[-1] or []
        return holder, Situation(row.booked_id, row.closed_through, held=int(row.held),
                                 lots=list(zip(ids, lefts)))
    offers = bonuses.Offers.parsed(row.campaigns, row.coupons)
    return holder, Situation(row.booked_id, row.closed_through, spendable=int(row.spendable),
                             held=int(row.held), bonus_running=bool(offers.campaigns
                                                                    or offers.coupons),
                             offers=offers)


# --- 3. write -------------------------------------------------------------------------------

ENTRY_COLUMNS = ("kind", "partner_id", "claim_id", "member_id", "points", "occurred_at",
                 "recorded_at", "period", "late", "pending_until", "description",
                 "reverses_id", "fingerprint", "status", "balance_after", "entry_hash", "activity")

# PostgreSQL: one statement. Its parts see one snapshot and none sees another's rows, which
# nothing here needs: each writes rows of its own, and the foreign keys between them are
# checked at the end of the statement. It books nothing, and returns no row, if the entry's
# month is closed by now: its snapshot, taken with the books held, is the first this claim
# is sure to see every close in (see lock_with_situation). A part with nothing to do (no lot, no consumption)
# inserts or updates no row; the text stays the same, so the server prepares it once.
# The claim key's unique violation aborts the whole statement, as a flush's would.
_WRITE_POSTGRESQL = text("""
WITH entry AS (
    INSERT INTO journal_entries (kind, partner_id, claim_id, member_id, points, occurred_at,
        recorded_at, period, late, pending_until, description, reverses_id, fingerprint,
        status, balance_after, entry_hash, activity)
    SELECT CAST(:kind AS varchar), CAST(:partner_id AS varchar), CAST(:claim_id AS varchar),
        CAST(:member_id AS bigint), CAST(:points AS bigint), CAST(:occurred_at AS timestamptz),
        CAST(:recorded_at AS timestamptz), CAST(:period AS varchar), CAST(:late AS boolean),
        CAST(:pending_until AS timestamptz), CAST(:description AS varchar),
        CAST(:reverses_id AS bigint), CAST(:fingerprint AS varchar), CAST(:status AS varchar),
        CAST(:balance_after AS bigint), CAST(:entry_hash AS varchar),
        coalesce(CAST(:activity AS varchar), 'purchase')
    WHERE NOT EXISTS (SELECT 1 FROM closed_periods WHERE period >= CAST(:period AS varchar))
    RETURNING id),
new_ids AS (
    SELECT n, nextval(pg_get_serial_sequence('lots', 'id')) AS id
    FROM generate_series(1, cardinality(CAST(:lot_points AS bigint[]))) AS n),
new_lots AS (
    INSERT INTO lots (id, member_id, entry_id, issuer_id, source, points, remaining,
        occurred_at, available_at, expires_at, last_period, spent_period)
    SELECT new_ids.id, :member_id, entry.id, l.issuer_id, l.source, l.points, l.remaining,
        :occurred_at, CAST(:lot_available_at AS timestamptz), CAST(:lot_expires_at AS timestamptz),
        CAST(:period AS varchar),
        CASE WHEN l.remaining > 0 THEN 'open' ELSE CAST(:period AS varchar) END
    FROM entry CROSS JOIN unnest(CAST(:lot_issuers AS varchar[]), CAST(:lot_sources AS varchar[]),
            CAST(:lot_points AS bigint[]), CAST(:lot_remaining AS bigint[]))
            WITH ORDINALITY AS l(issuer_id, source, points, remaining, n)
        JOIN new_ids ON new_ids.n = l.n
    ORDER BY l.n),
posted AS (
    INSERT INTO postings (entry_id, account, points, period)
    SELECT entry.id, p.account, p.points, CAST(:period AS varchar) FROM entry,
        unnest(CAST(:posting_accounts AS varchar[]), CAST(:posting_points AS bigint[]))
            WITH ORDINALITY AS p(account, points, n)
    ORDER BY p.n),
consumed AS (
    INSERT INTO consumptions (entry_id, lot_id, debt_lot_id, kind, points, period)
    SELECT entry.id, coalesce(c.lot_id, (SELECT id FROM new_ids WHERE new_ids.n = c.new_lot)),
        c.debt_lot_id, c.kind, c.points, CAST(:period AS varchar)
    FROM entry,
        unnest(CAST(:consumed_kinds AS varchar[]), CAST(:consumed_lots AS bigint[]),
               CAST(:consumed_new AS bigint[]), CAST(:consumed_debt_lots AS bigint[]),
               CAST(:consumed_points AS bigint[]))
            WITH ORDINALITY AS c(kind, lot_id, new_lot, debt_lot_id, points, n)
    ORDER BY c.n),
lots_left AS (
    UPDATE lots SET remaining = u.remaining,
        last_period = GREATEST(lots.last_period, CAST(:period AS varchar)),
        spent_period = CASE WHEN u.remaining > 0 THEN 'open'
                            ELSE GREATEST(lots.last_period, CAST(:period AS varchar)) END
    FROM unnest(CAST(:lots_left_ids AS bigint[]), CAST(:lots_left AS bigint[])) AS u(id, remaining)
    WHERE lots.spent_period = 'open' AND lots.id = u.id AND EXISTS (SELECT 1 FROM entry)),
debts_left AS (
    UPDATE debt_lots SET remaining = u.remaining
    FROM unnest(CAST(:debts_left_ids AS bigint[]), CAST(:debts_left AS bigint[])) AS u(id, remaining)
    WHERE debt_lots.id = u.id AND EXISTS (SELECT 1 FROM entry)),
holder AS (
    UPDATE members SET balance = :new_balance, debt = :new_debt
    WHERE id = :member_id AND EXISTS (SELECT 1 FROM entry))
SELECT entry.id FROM entry
""")


def lot_periods(remaining: int, period: str) -> dict:
    """A new lot's last_period and spent_period (models.Lot), made by an entry of `period`."""
    return {"last_period": period, "spent_period": LOT_OPEN if remaining > 0 else period}


def lot_left_update(lots):
    """UPDATE of an open lot (:lot_pk) to :left points by an entry of month :period, with its
    last_period and spent_period as models.Lot.set_remaining keeps them."""
    period = bindparam("period", type_=String)
    last = case((lots.c.last_period > period, lots.c.last_period), else_=period)
    return (lots.update().where(lots.c.id == bindparam("lot_pk"), holding(lots.c))
            .values(remaining=bindparam("left"), last_period=last,
                    spent_period=case((bindparam("left") > 0, LOT_OPEN), else_=last)))


def refresh_lot(session: Session, lot_id: int, left: int, period: str) -> None:
    """refresh_loaded for a lot that an entry of `period` left `left` points of."""
    loaded = session.identity_map.get(identity_key(Lot, lot_id))
    if loaded is not None:
        last = max(loaded.last_period, period)
        refresh_loaded(session, Lot, lot_id, remaining=left, last_period=last,
                       spent_period=LOT_OPEN if left > 0 else last)


_INSERT_ENTRY = Entry.__table__.insert()
_INSERT_POSTING = Posting.__table__.insert()
_INSERT_LOT = Lot.__table__.insert()
_INSERT_CONSUMPTION = Consumption.__table__.insert()
_LOTS, _DEBT_LOTS, _MEMBERS = Lot.__table__, DebtLot.__table__, Member.__table__
_LOT_LEFT = lot_left_update(_LOTS)
_DEBT_LEFT = (_DEBT_LOTS.update().where(_DEBT_LOTS.c.id == bindparam("lot_pk"))
              .values(remaining=bindparam("left")))
_HOLDER_AFTER = (_MEMBERS.update().where(_MEMBERS.c.id == bindparam("member_pk"))
                 .values(balance=bindparam("new_balance"), debt=bindparam("new_debt")))


def write(session: Session, entry: dict, postings: dict[str, int], writes: Writes) -> int | None:
    """Book the entry (its columns in `entry`) with its postings and `writes`; its id. None,
    booking nothing, if the entry's month was closed after the situation was read."""
    connection = session.connection()
    if is_sqlite(session):
        entry_id = _write_sqlite(connection, entry, postings, writes)
    else:
        lots = writes.lots
        first = lots[0] if lots else {}
        consumptions = writes.consumptions
        row = connection.execute(_WRITE_POSTGRESQL, {
            **entry,
            "lot_issuers": [x["issuer_id"] for x in lots],
            "lot_sources": [x["source"] for x in lots],
            "lot_points": [x["points"] for x in lots],
            "lot_remaining": [x["remaining"] for x in lots],
            "lot_available_at": first.get("available_at"),
            "lot_expires_at": first.get("expires_at"),
            "posting_accounts": list(postings), "posting_points": list(postings.values()),
            "consumed_kinds": [str(c[0]) for c in consumptions],
            "consumed_lots": [None if isinstance(c[1], NewLot) else c[1] for c in consumptions],
            "consumed_new": [c[1] + 1 if isinstance(c[1], NewLot) else None
                             for c in consumptions],
            "consumed_debt_lots": [c[2] for c in consumptions],
            "consumed_points": [c[3] for c in consumptions],
            "lots_left_ids": [lot_id for lot_id, _ in writes.lots_left],
            "lots_left": [left for _, left in writes.lots_left],
            "debts_left_ids": [lot_id for lot_id, _ in writes.debts_left],
            "debts_left": [left for _, left in writes.debts_left],
            "new_balance": writes.balance, "new_debt": writes.debt}).first()
        if row is None:
            return None
        entry_id = row[0]
    refresh_loaded(session, Member, entry["member_id"], balance=writes.balance,
                    debt=writes.debt)
    for lot_id, left in writes.lots_left:
        refresh_lot(session, lot_id, left, entry["period"])
    for lot_id, left in writes.debts_left:
        refresh_loaded(session, DebtLot, lot_id, remaining=left)
    return entry_id


def _write_sqlite(connection, entry: dict, postings: dict[str, int], writes: Writes) -> int:
    member_pk = entry["member_id"]
    entry_id = connection.execute(_INSERT_ENTRY, entry).inserted_primary_key[0]
    connection.execute(_INSERT_POSTING, [{"entry_id": entry_id, "account": account,
                                          "points": points, "period": entry["period"]}
                                         for account, points in postings.items()])
    lot_ids = [connection.execute(_INSERT_LOT, {**lot, "member_id": member_pk,
                                                "entry_id": entry_id,
                                                **lot_periods(lot["remaining"], entry["period"])}
                                  ).inserted_primary_key[0]
               for lot in writes.lots]
    if writes.consumptions:
        connection.execute(_INSERT_CONSUMPTION, [
            {"entry_id": entry_id, "kind": kind, "debt_lot_id": debt_lot, "points": points,
             "period": entry["period"],
             "lot_id": lot_ids[of_lot] if isinstance(of_lot, NewLot) else of_lot}
            for kind, of_lot, debt_lot, points in writes.consumptions])
    if writes.lots_left:
        connection.execute(_LOT_LEFT, [{"lot_pk": lot, "left": left, "period": entry["period"]}
                                       for lot, left in writes.lots_left])
    if writes.debts_left:
        connection.execute(_DEBT_LEFT, [{"lot_pk": lot, "left": left}
                                        for lot, left in writes.debts_left])
    connection.execute(_HOLDER_AFTER, {"member_pk": member_pk, "new_balance": writes.balance,
                                       "new_debt": writes.debt})
    return entry_id


def refresh_loaded(session: Session, model, pk: int, **values) -> None:
    """Give an object of a row written here, if the session holds one, the values written
    (as loaded, not as changes to flush): a session that lives on reads what is stored."""
    loaded = session.identity_map.get(identity_key(model, pk))
    if loaded is not None:
        for name, value in values.items():
            set_committed_value(loaded, name, value)


