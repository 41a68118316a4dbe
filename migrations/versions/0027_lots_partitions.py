"""lots partitioned: the open lots in one partition, the used-up ones by the month they ran out

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-06 23:30:00.000000

Both databases: lots get `last_period` (the latest month of any entry that changed the lot,
its earn's first) and `spent_period` ('open' while the lot holds points, else its
last_period). Every consumption of a lot is of its last_period or earlier, so settlement finds
a month's lots among the open ones and those used up since (vocabulary.lot_since).

PostgreSQL: lots become LIST-partitioned by spent_period: lots_open, one partition per month
the journal has (and the months ahead it has made), and a DEFAULT partition. Every burn and
balance reads only lots_open; the used-up lots, the bulk of the table as it ages, sit by
month. The primary key becomes (id, spent_period), so the foreign key consumptions.lot_id
goes (ledger verify checks every consumption's lot), and a CHECK holds spent_period to
remaining. Refused while months are archived (their consumptions are needed to compute
last_period): attach them first.

SQLite: the two columns, filled the same way; not partitioned, and no CHECK (it would rebuild
a table that consumptions refer to).
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0027'
down_revision = '0026'
branch_labels = None
depends_on = None

MONTHS_AHEAD = 3

# last_period as the journal says: the lot's earn's month, or its latest consumption's.
LAST_PERIOD_POSTGRESQL = """
    SELECT l.id, GREATEST(e.period, c.period) AS period
    FROM lots_unpartitioned l JOIN journal_entries e ON e.id = l.entry_id
        LEFT JOIN (SELECT lot_id, max(period) AS period FROM consumptions GROUP BY lot_id) c
        ON c.lot_id = l.id"""


def _months_after(period: str, n: int) -> list[str]:
    year, month = int(period[:4]), int(period[5:7])
    months = []
    for _ in range(n + 1):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def upgrade():
    if op.get_bind().dialect.name == "sqlite":
        _upgrade_sqlite()
    else:
        _upgrade_postgresql()


def _upgrade_sqlite():
    for column in ("last_period", "spent_period"):
        op.execute(f"ALTER TABLE lots ADD COLUMN {column} VARCHAR(7) NOT NULL DEFAULT ''")
    op.execute("""
        UPDATE lots SET last_period = max(
            (SELECT period FROM journal_entries WHERE journal_entries.id = lots.entry_id),
            coalesce((SELECT max(period) FROM consumptions WHERE consumptions.lot_id = lots.id),
                     ''))""")
    op.execute("UPDATE lots SET spent_period = CASE WHEN remaining > 0 THEN 'open' "
               "ELSE last_period END")


def _index_definitions(bind, table: str) -> list[str]:
    """The table's indexes but its primary key and unique constraints, as CREATE INDEX."""
    return [row[0] for row in bind.execute(sa.text(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = :t "
        "AND indexname NOT IN (SELECT conname FROM pg_constraint "
        "WHERE conrelid = CAST(:t AS regclass) AND contype IN ('p', 'u'))"), {"t": table})]


def _upgrade_postgresql():
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM archived_periods")).scalar():
        raise RuntimeError("archived months are detached from the journal: attach them "
                           "(flask ledger partitions attach) before upgrading to 0027")
    op.execute("SET LOCAL lock_timeout = '10s'")
    current = bind.execute(sa.text(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')")).scalar()
    periods = set(bind.execute(sa.text("SELECT DISTINCT period FROM journal_entries")).scalars())
    periods |= set(_months_after(current, MONTHS_AHEAD))
    indexes = _index_definitions(bind, "lots")
    op.execute("ALTER TABLE lots RENAME TO lots_unpartitioned")
    op.execute("CREATE TABLE lots (LIKE lots_unpartitioned INCLUDING DEFAULTS "
               "INCLUDING CONSTRAINTS, last_period varchar(7) NOT NULL, "
               "spent_period varchar(7) NOT NULL) PARTITION BY LIST (spent_period)")
    op.execute("CREATE TABLE lots_open PARTITION OF lots FOR VALUES IN ('open')")
    for period in sorted(periods):
        op.execute(f"CREATE TABLE lots_{period[:4]}_{period[5:7]} PARTITION OF lots "
                   f"FOR VALUES IN ('{period}')")
    op.execute("CREATE TABLE lots_default PARTITION OF lots DEFAULT")
    columns = ", ".join(f"l.{c}" for c in bind.execute(sa.text(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'lots_unpartitioned' "
        "AND table_schema = current_schema() ORDER BY ordinal_position")).scalars())
    op.execute(f"INSERT INTO lots SELECT {columns}, t.period, "
               "CASE WHEN l.remaining > 0 THEN 'open' ELSE t.period END "
               f"FROM lots_unpartitioned l JOIN ({LAST_PERIOD_POSTGRESQL}) t ON t.id = l.id")
    op.execute("ALTER SEQUENCE lots_id_seq OWNED BY lots.id")
    # CASCADE: consumptions' foreign key into the old table goes with it.
    op.execute("DROP TABLE lots_unpartitioned CASCADE")
    op.execute("ALTER TABLE lots ADD CONSTRAINT pk_lots PRIMARY KEY (id, spent_period)")
    for definition in indexes:
        op.execute(definition)
    op.create_foreign_key("fk_lots_member_id_members", "lots", "members", ["member_id"], ["id"])
    op.execute("ALTER TABLE lots ADD CONSTRAINT ck_lots_spent_when_empty "
               "CHECK ((remaining > 0) = (spent_period = 'open'))")


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for column in ("spent_period", "last_period"):
            op.execute(f"ALTER TABLE lots DROP COLUMN {column}")
        return
    indexes = _index_definitions(bind, "lots")
    op.execute("ALTER TABLE lots RENAME TO lots_partitioned")
    op.execute("CREATE TABLE lots (LIKE lots_partitioned INCLUDING DEFAULTS "
               "INCLUDING CONSTRAINTS)")
    op.execute("ALTER TABLE lots DROP CONSTRAINT ck_lots_spent_when_empty")
    op.execute("ALTER TABLE lots DROP COLUMN spent_period")
    op.execute("ALTER TABLE lots DROP COLUMN last_period")
    columns = ", ".join(bind.execute(sa.text(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'lots' "
        "AND table_schema = current_schema() ORDER BY ordinal_position")).scalars())
    op.execute(f"INSERT INTO lots ({columns}) SELECT {columns} FROM lots_partitioned")
    op.execute("ALTER SEQUENCE lots_id_seq OWNED BY lots.id")
    op.execute("DROP TABLE lots_partitioned CASCADE")
    op.execute("ALTER TABLE lots ADD CONSTRAINT pk_lots PRIMARY KEY (id)")
    for definition in indexes:
        # A partitioned index's definition names ONLY the parent: a plain table has none.
        op.execute(definition.replace(" ONLY ", " "))
    op.create_foreign_key("fk_lots_member_id_members", "lots", "members", ["member_id"], ["id"])
    op.create_foreign_key("fk_consumptions_lot_id_lots", "consumptions", "lots", ["lot_id"],
                          ["id"])
