"""The ledger's monthly partitions on PostgreSQL (migrations 0026 and 0027): creating the coming
months ahead of time, listing them, and detaching a closed month to the `archive` schema.

journal_entries, postings and consumptions are LIST-partitioned by `period` ('YYYY-MM'), one
partition per month and a DEFAULT partition that should stay empty: a month's partition
cannot be created while DEFAULT holds rows of that month, so `ensure_partitions` creates the
coming months ahead (the sealer's loop calls it), and moves any rows DEFAULT does hold into
their month's new partition in the same transaction.

lots are LIST-partitioned by `spent_period` (migration 0027): one partition, lots_open, for
the lots that still hold points, and one per month for those used up in it, made with the
journal's months. Archiving a month detaches the journal's three partitions only: the lots
used up in it stay, since a lot's earn and its consumptions can lie in months not archived.

SQLite is not partitioned: every function here answers that, and changes nothing.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from . import audit
from .database import is_sqlite
from .problems import Problem
from .hashing import entries_digest
from .models import ArchivedPeriod, ArchivedSum, ClosedPeriod, LedgerBlock

JOURNAL = ("journal_entries", "postings", "consumptions")  # what archiving a month detaches
PARTITIONED = (*JOURNAL, "lots")
KEY = {"lots": "spent_period"}  # each table's partition key, where it is not `period`
ARCHIVE_SCHEMA = "archive"
MONTHS_AHEAD = 3
NOT_PARTITIONED = "SQLite is not partitioned (PostgreSQL only); nothing to do"
_PERIOD = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_PARTITION = re.compile(r"^(journal_entries|postings|consumptions|lots)_(\d{4}_\d{2}|default)$"
                        r"|^lots_open$")

# What the partitioned journal cannot keep of the models on PostgreSQL (migration 0026): the
# foreign keys into journal_entries (a foreign key into a partitioned table must name its
# whole primary key, (id, period)) and its unique constraint (claim_keys holds it), which an
# index on (partner_id, claim_id) replaces for the lookups by claim id that remain.
DROPPED_FOREIGN_KEYS = {("postings", "entry_id"), ("consumptions", "entry_id"),
                        ("lots", "entry_id"), ("debt_lots", "entry_id"), ("holds", "entry_id"),
                        ("coupon_activations", "entry_id"), ("journal_entries", "reverses_id"),
                        # and into lots, partitioned by spent_period (migration 0027)
                        ("consumptions", "lot_id")}
CLAIM_KEY_INDEX = "ix_journal_entries_partner_id_claim_id"


def is_partition(table_name: str) -> bool:
    """One month's (or the DEFAULT) partition of a partitioned table, not a table of the models."""
    return bool(_PARTITION.match(table_name))


def expected_schema_difference(diff) -> bool:
    """Whether an item of alembic's compare_metadata is one of the PostgreSQL differences the
    partitioning makes on purpose (tests/test_structure.py holds the rest to the models)."""
    kind = diff[0] if isinstance(diff, tuple) else None
    if kind in ("add_fk", "remove_fk"):
        fk = diff[1]
        return (fk.parent.name, fk.column_keys[0] if hasattr(fk, "column_keys")
                else fk.elements[0].parent.name) in DROPPED_FOREIGN_KEYS
    if kind == "add_constraint":
        return diff[1].name == "uq_journal_entries_partner_id_claim_id"
    if kind == "remove_index":
        return diff[1].name == CLAIM_KEY_INDEX
    return False


def check_period(period: str) -> str:
    if not _PERIOD.match(period or ""):
        raise ValueError(f"not a month (YYYY-MM): {period!r}")
    return period


def months_from(period: str, count: int) -> list[str]:
    """`period` and the `count` months after it."""
    year, month = int(period[:4]), int(period[5:7])
    months = []
    for _ in range(count + 1):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def partition_name(table: str, period: str) -> str:
    return f"{table}_{period[:4]}_{period[5:7]}"


def is_partitioned(session: Session) -> bool:
    if is_sqlite(session):
        return False
    return bool(session.execute(text(
        "SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass('journal_entries')"))
        .scalar())


@dataclass(frozen=True)
class Partition:
    table: str
    name: str
    period: str | None  # None: the DEFAULT partition; lots_open: 'open'
    rows: int  # the planner's estimate (reltuples), -1 never analysed; exact for DEFAULT


def _attached(session: Session) -> list[Partition]:
    """Every attached partition from the catalog alone (rows: the planner's estimate)."""
    rows = session.execute(text("""
        SELECT parent.relname, child.relname, pg_get_expr(child.relpartbound, child.oid),
               child.reltuples::bigint
        FROM pg_inherits JOIN pg_class parent ON parent.oid = inhparent
            JOIN pg_class child ON child.oid = inhrelid
        WHERE parent.relname IN ('journal_entries', 'postings', 'consumptions', 'lots')
            AND parent.relnamespace = to_regnamespace(current_schema())""")).all()
    attached = []
    for table, name, bound, estimate in rows:
        found = re.search(r"'([^']*)'", bound)  # DEFAULT has none
        attached.append(Partition(table, name, found.group(1) if found else None, int(estimate)))
    return attached


def list_partitions(session: Session) -> list[Partition]:
    """Every attached partition of the partitioned tables, lots_open first, months in order, DEFAULT last."""
    partitions = []
    for p in _attached(session):
        if p.period is None:  # DEFAULT should be empty: say exactly what it holds
            count = session.execute(text(f'SELECT count(*) FROM "{p.name}"')).scalar()
            p = Partition(p.table, p.name, None, int(count))
        partitions.append(p)
    # lots_open first, then the months, DEFAULT last
    return sorted(partitions, key=lambda p: (PARTITIONED.index(p.table), p.period != "open",
                                             p.period or "9999-99"))


def _current_month(session: Session, now: datetime | None) -> str:
    if now is not None:
        return f"{now.year:04d}-{now.month:02d}"
    return session.execute(text("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')")).scalar()


def ensure_partitions(session: Session, *, months_ahead: int = MONTHS_AHEAD,
                      now: datetime | None = None, also: list[str] = ()) -> dict:
    """Create the partitions of this month and the `months_ahead` after it (and of `also`)
    that do not exist yet; the caller commits. Rows of such a month that sit in DEFAULT are
    moved into its new partition within the same transaction, so creating it never fails."""
    if not is_partitioned(session):
        return {"partitioned": False, "detail": NOT_PARTITIONED, "created": []}
    wanted = sorted(set(months_from(_current_month(session, now), months_ahead)) | set(also))
    for period in wanted:
        check_period(period)
    have = {(p.table, p.period) for p in list_partitions(session)}
    archived = set(session.execute(text("SELECT period FROM archived_periods")).scalars())
    created, moved = [], {}
    # A short lock_timeout: attaching takes a lock on the parent that claims also need; better
    # to fail and be retried by the next round than to queue claims behind it.
    session.execute(text("SET LOCAL lock_timeout = '5s'"))
    for period in wanted:
        if period in archived:
            continue
        for table in PARTITIONED:
            if (table, period) in have:
                continue
            name = partition_name(table, period)
            key = KEY.get(table, "period")
            stray = session.execute(text(f"SELECT count(*) FROM {table}_default "
                                         f"WHERE {key} = :p"), {"p": period}).scalar()
            if stray:
                # DEFAULT holds rows of this month: take them out, create, put them back.
                session.execute(text(f"CREATE TEMPORARY TABLE partition_move ON COMMIT DROP AS "
                                     f"SELECT * FROM {table}_default WHERE {key} = :p"),
                                {"p": period})
                session.execute(text(f"DELETE FROM {table}_default WHERE {key} = :p"),
                                {"p": period})
            session.execute(text(f"CREATE TABLE {name} PARTITION OF {table} "
                                 f"FOR VALUES IN ('{period}')"))
            if stray:
                if table == "journal_entries":  # the trigger writes their claim keys anew
                    session.execute(text(
                        "DELETE FROM claim_keys k USING partition_move m WHERE "
                        "k.partner_id = m.partner_id AND k.claim_id = m.claim_id"))
                session.execute(text(f"INSERT INTO {table} SELECT * FROM partition_move"))
                session.execute(text("DROP TABLE partition_move"))
                moved[name] = stray
            created.append(name)
    return {"partitioned": True, "months": wanted, "created": created,
            "moved_from_default": moved}


@dataclass(frozen=True)
class Health:
    default_rows: int  # rows in the DEFAULT partitions, at most DEFAULT_ROWS_CAP: should be 0
    months_ahead: int  # months after the current one whose partitions all exist (-1: not even it)


DEFAULT_ROWS_CAP = 100_000  # an alarm needs no exact count, and counting must stay cheap


def health(session: Session, *, now: datetime | None = None) -> Health | None:
    """For monitoring (coalition/metrics.py): what DEFAULT holds, and how far ahead the coming
    months' partitions reach; None when the journal is not partitioned. Catalog lookups and a
    capped count of DEFAULT, which is empty when all is well."""
    if not is_partitioned(session):
        return None
    present = {(p.table, p.period) for p in _attached(session)}
    ahead = -1
    for period in months_from(_current_month(session, now), 36):
        if not all((table, period) in present for table in PARTITIONED):
            break
        ahead += 1
    rows = sum(session.execute(text(f"SELECT count(*) FROM (SELECT 1 FROM {table}_default "
                                    f"LIMIT {DEFAULT_ROWS_CAP}) AS capped")).scalar()
               for table in PARTITIONED)
    return Health(default_rows=min(rows, DEFAULT_ROWS_CAP), months_ahead=ahead)


# --- archiving a closed month ------------------------------------------------------------------

# What detach_period keeps of a month for `ledger verify` (models.ArchivedSum), each one
# INSERT ... SELECT over the month's partitions (:p the month; {e}, {p}, {c} its partitions).
ARCHIVED_SUMS = {
    "account": "SELECT account, sum(points) FROM {p} GROUP BY account",
    "lot": "SELECT CAST(lot_id AS varchar), sum(points) FROM {c} GROUP BY lot_id",
    "debt_lot": "SELECT CAST(debt_lot_id AS varchar), sum(points) FROM {c} "
                "WHERE debt_lot_id IS NOT NULL GROUP BY debt_lot_id",
    "reversed": "SELECT CAST(reverses_id AS varchar), sum(points) FROM {e} "
                "WHERE reverses_id IS NOT NULL GROUP BY reverses_id",
    # The month's claims that reversals of other months reverse: their points, by kind.
    "target": "SELECT kind || ':' || CAST(id AS varchar), points FROM {e} t WHERE EXISTS ("
              "SELECT 1 FROM journal_entries r WHERE r.reverses_id = t.id AND r.period <> :p)",
    # Gaps and islands: the month's entry ids as runs first -> last.
    "ids": "SELECT CAST(min(id) AS varchar), max(id) FROM (SELECT id, id - row_number() "
           "OVER (ORDER BY id) AS run FROM {e}) AS ids GROUP BY run",
}


def _partition_exists(session: Session, name: str, schema: str | None = None) -> bool:
    qualified = f"{schema}.{name}" if schema else name
    return session.execute(text("SELECT to_regclass(:n)"), {"n": qualified}).scalar() is not None


def detach_period(session: Session, period: str, *, now: datetime, actor: str,
                  lock_timeout: str = "5s") -> dict:
    """Detach a closed month's partitions into the `archive` schema, keeping what `ledger
    verify` needs to carry its checks across the month (archived_periods, archived_sums);
    the caller commits. Only a closed month whose entries are all sealed, unchanged since."""
    check_period(period)
    if not is_partitioned(session):
        raise Problem("validation-error", NOT_PARTITIONED)
    closed = session.get(ClosedPeriod, period)
    if closed is None:
        raise Problem("validation-error", f"{period} is not closed: only a closed month can "
                      "be archived.")
    if session.get(ArchivedPeriod, period) is not None:
        raise Problem("validation-error", f"{period} is archived already.")
    names = {t: partition_name(t, period) for t in JOURNAL}
    missing = [n for n in names.values() if not _partition_exists(session, n)]
    if missing:
        raise Problem("validation-error", f"{period} has no partition of its own ({', '.join(missing)}): "
                      f"run `flask ledger partitions ensure --month {period}` first (it moves "
                      "the month's rows out of DEFAULT).")
    e, p, c = names["journal_entries"], names["postings"], names["consumptions"]
    # A month is archived as sealed: every entry's hash is its seal record's, so the digest
    # kept here is what the chain holds, and verify can recompute it from the seals alone.
    unsealed = session.execute(text(
        f"SELECT count(*) FROM {e} x LEFT JOIN ledger_seals s ON s.entry_id = x.id "
        "WHERE s.entry_hash IS DISTINCT FROM x.entry_hash")).scalar()
    if unsealed:
        raise Problem("validation-error", f"{unsealed} entries of {period} are not sealed as "
                      "they are now: run `flask ledger seal` and `flask ledger verify` first.")
    head = session.scalar(select(LedgerBlock).where(LedgerBlock.block_hash == closed.ledger_head)) \
        if closed.ledger_head else None
    count, first, last = session.execute(text(f"SELECT count(*), min(id), max(id) FROM {e}")).one()
    digest = entries_digest(session.execute(text(f"SELECT entry_hash FROM {e} ORDER BY id"))
                            .scalars())
    session.execute(text(f"SET LOCAL lock_timeout = '{lock_timeout}'"))
    for kind, query in ARCHIVED_SUMS.items():
        session.execute(text(f"INSERT INTO archived_sums (period, kind, key, points) "
                             f"SELECT :p, :kind, k, v FROM ({query.format(e=e, p=p, c=c)}) "
                             "AS sums(k, v)"), {"p": period, "kind": kind})
    session.add(ArchivedPeriod(period=period, archived_at=now, location=ARCHIVE_SCHEMA,
                               entry_count=count, first_entry_id=first, last_entry_id=last,
                               ledger_head=closed.ledger_head, digest=digest))
    session.execute(text(f"CREATE SCHEMA IF NOT EXISTS {ARCHIVE_SCHEMA}"))
    for table, name in names.items():
        session.execute(text(f"ALTER TABLE {table} DETACH PARTITION {name}"))
        session.execute(text(f"ALTER TABLE {name} SET SCHEMA {ARCHIVE_SCHEMA}"))
    after = {"entries": count, "first_entry_id": first, "last_entry_id": last, "digest": digest,
             "ledger_head": closed.ledger_head,
             "tables": [f"{ARCHIVE_SCHEMA}.{n}" for n in names.values()]}
    audit.record(session, actor=actor, action="period.archive", subject=f"period:{period}",
                 before=None, after=after, now=now)
    database = session.get_bind().url.database
    tables = " ".join(f"-t {ARCHIVE_SCHEMA}.{n}" for n in names.values())
    return {"period": period, "archived": True, **after,
            "anchored_in_chain": head is not None,
            "dump": f"pg_dump -Fc {tables} -f coalition-{period}.dump {database}",
            "then": "keep the dump with the backups; after checking it (pg_restore -l), "
                    + "; ".join(f"DROP TABLE {ARCHIVE_SCHEMA}.{n}" for n in names.values())}


def attach_period(session: Session, period: str, *, now: datetime, actor: str) -> dict:
    """Put an archived month back into the journal (its tables restored into the `archive`
    schema from the dump first, if they were dropped); the caller commits."""
    check_period(period)
    archived = session.get(ArchivedPeriod, period)
    if archived is None:
        raise Problem("validation-error", f"{period} is not archived.")
    names = {t: partition_name(t, period) for t in JOURNAL}
    missing = [n for n in names.values() if not _partition_exists(session, n, ARCHIVE_SCHEMA)]
    if missing:
        raise Problem("validation-error", "restore the month's tables into the archive schema "
                      f"first (pg_restore of its dump): missing {', '.join(missing)}.")
    session.execute(text("SET LOCAL lock_timeout = '5s'"))
    for table, name in names.items():
        session.execute(text(f"ALTER TABLE {ARCHIVE_SCHEMA}.{name} SET SCHEMA public"))
        session.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {name} "
                             f"FOR VALUES IN ('{period}')"))
    session.execute(delete(ArchivedSum).where(ArchivedSum.period == period))
    session.delete(archived)
    audit.record(session, actor=actor, action="period.unarchive", subject=f"period:{period}",
                 before={"entries": archived.entry_count}, after=None, now=now)
    return {"period": period, "attached": True, "entries": archived.entry_count}


@dataclass
class Archived:
    """What `ledger verify` adds for the archived months (nothing when none is archived)."""
    periods: list[ArchivedPeriod] = field(default_factory=list)
    sums: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    runs: list[tuple[int, int, str]] = field(default_factory=list)  # (first, last, period)

    def sum(self, kind: str, key) -> int:
        return self.sums[kind].get(str(key), 0)

    def period_of(self, entry_id: int) -> str | None:
        """The archived month that held entry `entry_id`, if one did."""
        i = bisect_right(self.runs, (entry_id, float("inf"), "")) - 1
        if i >= 0 and self.runs[i][0] <= entry_id <= self.runs[i][1]:
            return self.runs[i][2]
        return None

    def target(self, entry_id: int) -> tuple[str, int] | None:
        """(kind, points) of an archived claim that a later month reverses."""
        return self.sums["target"].get(str(entry_id))


def archived(session: Session) -> Archived:
    state = Archived(periods=list(session.scalars(select(ArchivedPeriod)
                                                  .order_by(ArchivedPeriod.period))))
    if not state.periods:
        return state
    for period, kind, key, points in session.execute(
            select(ArchivedSum.period, ArchivedSum.kind, ArchivedSum.key, ArchivedSum.points)):
        if kind == "ids":
            state.runs.append((int(key), int(points), period))
        elif kind == "target":
            target_kind, entry_id = key.split(":")
            state.sums["target"][entry_id] = (target_kind, int(points))
        else:
            state.sums[kind][key] = state.sums[kind].get(key, 0) + int(points)
    state.runs.sort()
    return state
