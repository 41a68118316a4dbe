"""ledger partitions: journal entries, postings and consumptions partitioned by month

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-06 14:20:00.000000

PostgreSQL: journal_entries, postings and consumptions become LIST-partitioned by `period`
('YYYY-MM'), one partition per month that holds data plus the next months, and a DEFAULT
partition. postings and consumptions get their entry's `period` (so that a month's rows sit in
one partition of each table and can be detached together). Primary keys become (id, period).
A unique constraint must include the partition key, so (partner_id, claim_id) moves to the
unpartitioned table `claim_keys`, filled by a trigger: its primary key keeps the name of the
old constraint, so a duplicate claim id raises the same IntegrityError as before. Foreign keys
into a partitioned table would have to name (id, period): the ones into journal_entries are
dropped (ledger verify re-derives every link they guarded); those out of it stay.

lots and debt_lots stay unpartitioned: every burn reads and updates a member's open lots by
member and by id, which on a table partitioned by month probes every partition
(docs/scale-out.md, "Partitions").

SQLite stays unpartitioned; it gets the same `period` columns, `claim_keys` (filled by a
trigger after the entry's own unique constraint has accepted it) and `archived_periods`, so
that the models and every query are the same on both databases.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None

PARTITIONED = ("journal_entries", "postings", "consumptions")
MONTHS_AHEAD = 3
# Foreign keys into journal_entries that a partitioned journal cannot keep (downgrade restores).
INTO_ENTRIES = (("postings", "entry_id"), ("consumptions", "entry_id"), ("lots", "entry_id"),
                ("debt_lots", "entry_id"), ("holds", "entry_id"),
                ("coupon_activations", "entry_id"), ("journal_entries", "reverses_id"))
# Foreign keys out of the partitioned tables into plain ones: recreated on the new tables.
OUT_OF = (("journal_entries", "member_id", "members"), ("consumptions", "lot_id", "lots"),
          ("consumptions", "debt_lot_id", "debt_lots"))


def _months_after(period: str, n: int) -> list[str]:
    year, month = int(period[:4]), int(period[5:7])
    months = []
    for _ in range(n + 1):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return months


def _partition_name(table: str, period: str) -> str:
    return f"{table}_{period[:4]}_{period[5:7]}"


def _claim_keys():
    op.create_table(
        "claim_keys",
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("claim_id", sa.String(64), nullable=False),
        sa.Column("entry_id", sa.BigInteger(), nullable=False),
        sa.Column("period", sa.String(7), nullable=False),
        sa.PrimaryKeyConstraint("partner_id", "claim_id",
                                name="uq_journal_entries_partner_id_claim_id"),
    )


def _archived_periods():
    op.create_table(
        "archived_periods",
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("location", sa.String(200), nullable=False),
        sa.Column("entry_count", sa.BigInteger(), nullable=False),
        sa.Column("first_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("last_entry_id", sa.BigInteger(), nullable=True),
        sa.Column("ledger_head", sa.String(64), nullable=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("period", name=op.f("pk_archived_periods")),
    )
    op.create_table(
        "archived_sums",
        sa.Column("period", sa.String(7), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("key", sa.String(80), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("period", "kind", "key", name=op.f("pk_archived_sums")),
    )


def upgrade():
    _archived_periods()
    if op.get_bind().dialect.name == "sqlite":
        _upgrade_sqlite()
    else:
        _upgrade_postgresql()


def _upgrade_sqlite():
    _claim_keys()
    for table in ("postings", "consumptions"):
        op.execute(f"ALTER TABLE {table} ADD COLUMN period VARCHAR(7) NOT NULL DEFAULT ''")
        op.execute(f"UPDATE {table} SET period = (SELECT period FROM journal_entries "
                   f"WHERE journal_entries.id = {table}.entry_id)")
    op.execute("INSERT INTO claim_keys (partner_id, claim_id, entry_id, period) "
               "SELECT partner_id, claim_id, id, period FROM journal_entries "
               "WHERE partner_id IS NOT NULL AND claim_id IS NOT NULL")
    # AFTER: the entry's own UNIQUE (partner_id, claim_id) refuses a duplicate first, with the
    # message coalition/ledger.is_claim_key knows.
    op.execute("""
        CREATE TRIGGER journal_entries_claim_key AFTER INSERT ON journal_entries
        FOR EACH ROW WHEN NEW.partner_id IS NOT NULL AND NEW.claim_id IS NOT NULL
        BEGIN
            INSERT INTO claim_keys (partner_id, claim_id, entry_id, period)
            VALUES (NEW.partner_id, NEW.claim_id, NEW.id, NEW.period);
        END""")


def _index_definitions(bind, table: str) -> list[str]:
    """The table's indexes but its primary key and unique constraints, as CREATE INDEX."""
    return [row[0] for row in bind.execute(sa.text(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() AND tablename = :t "
        "AND indexname NOT IN (SELECT conname FROM pg_constraint "
        "WHERE conrelid = CAST(:t AS regclass) AND contype IN ('p', 'u'))"), {"t": table})]


def _upgrade_postgresql():
    bind = op.get_bind()
    op.execute("SET LOCAL lock_timeout = '10s'")
    current = bind.execute(sa.text(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')")).scalar()
    periods = set(bind.execute(sa.text("SELECT DISTINCT period FROM journal_entries")).scalars())
    periods |= set(_months_after(current, MONTHS_AHEAD))
    indexes = {t: _index_definitions(bind, t) for t in PARTITIONED}
    for table in PARTITIONED:
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_unpartitioned")
        op.execute(f"CREATE TABLE {table} (LIKE {table}_unpartitioned INCLUDING DEFAULTS "
                   f"INCLUDING CONSTRAINTS" + ("" if table == "journal_entries" else
                                               ", period varchar(7) NOT NULL")
                   + ") PARTITION BY LIST (period)")
        for period in sorted(periods):
            op.execute(f"CREATE TABLE {_partition_name(table, period)} PARTITION OF {table} "
                       f"FOR VALUES IN ('{period}')")
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
    op.execute("INSERT INTO journal_entries SELECT * FROM journal_entries_unpartitioned")
    op.execute("INSERT INTO postings (id, entry_id, account, points, period) "
               "SELECT p.id, p.entry_id, p.account, p.points, e.period "
               "FROM postings_unpartitioned p JOIN journal_entries_unpartitioned e "
               "ON e.id = p.entry_id")
    op.execute("INSERT INTO consumptions (id, entry_id, lot_id, debt_lot_id, kind, points, period) "
               "SELECT c.id, c.entry_id, c.lot_id, c.debt_lot_id, c.kind, c.points, e.period "
               "FROM consumptions_unpartitioned c JOIN journal_entries_unpartitioned e "
               "ON e.id = c.entry_id")
    for table in PARTITIONED:
        # The sequence outlives the old table: the new id column owns it from now on.
        op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
        # CASCADE: the foreign keys into the old tables (INTO_ENTRIES) go with them.
        op.execute(f"DROP TABLE {table}_unpartitioned CASCADE")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (id, period)")
        for definition in indexes[table]:
            op.execute(definition)
    # Its primary key takes the name of the unique constraint dropped with the old journal.
    _claim_keys()
    op.execute("INSERT INTO claim_keys (partner_id, claim_id, entry_id, period) "
               "SELECT partner_id, claim_id, id, period FROM journal_entries "
               "WHERE partner_id IS NOT NULL AND claim_id IS NOT NULL")
    # What a lookup of other code by claim id (batches, reconciliation) still reads.
    op.execute("CREATE INDEX ix_journal_entries_partner_id_claim_id "
               "ON journal_entries (partner_id, claim_id)")
    for table, column, target in OUT_OF:
        op.create_foreign_key(f"fk_{table}_{column}_{target}", table, target, [column], ["id"])
    op.execute("""
        CREATE FUNCTION claim_key_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.partner_id IS NOT NULL AND NEW.claim_id IS NOT NULL THEN
                INSERT INTO claim_keys (partner_id, claim_id, entry_id, period)
                VALUES (NEW.partner_id, NEW.claim_id, NEW.id, NEW.period);
            END IF;
            RETURN NEW;
        END $$""")
    op.execute("CREATE TRIGGER journal_entries_claim_key BEFORE INSERT ON journal_entries "
               "FOR EACH ROW EXECUTE FUNCTION claim_key_insert()")
    op.execute("CREATE SCHEMA IF NOT EXISTS archive")


def downgrade():
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER journal_entries_claim_key")
        for table in ("postings", "consumptions"):
            op.execute(f"ALTER TABLE {table} DROP COLUMN period")
        op.drop_table("claim_keys")
    else:
        _downgrade_postgresql()
    op.drop_table("archived_sums")
    op.drop_table("archived_periods")


def _downgrade_postgresql():
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT count(*) FROM archived_periods")).scalar():
        raise RuntimeError("archived months are detached from the journal: attach them "
                           "(flask ledger partitions attach) before downgrading below 0026")
    op.execute("DROP TRIGGER journal_entries_claim_key ON journal_entries")
    op.execute("DROP FUNCTION claim_key_insert()")
    op.execute("DROP INDEX ix_journal_entries_partner_id_claim_id")
    indexes = {t: _index_definitions(bind, t) for t in PARTITIONED}
    for table in PARTITIONED:
        op.execute(f"ALTER TABLE {table} RENAME TO {table}_partitioned")
        op.execute(f"CREATE TABLE {table} (LIKE {table}_partitioned INCLUDING DEFAULTS "
                   f"INCLUDING CONSTRAINTS)")
        if table != "journal_entries":
            op.execute(f"ALTER TABLE {table} DROP COLUMN period")
        columns = ", ".join(c for c in bind.execute(sa.text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = :t "
            "AND table_schema = current_schema() ORDER BY ordinal_position"), {"t": table})
            .scalars())
        op.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {table}_partitioned")
        op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
        op.execute(f"DROP TABLE {table}_partitioned CASCADE")
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY (id)")
        for definition in indexes[table]:
            # A partitioned index's definition names ONLY the parent: a plain table has none.
            op.execute(definition.replace(" ONLY ", " "))
    op.drop_table("claim_keys")  # its primary key's name goes back to the journal
    op.create_unique_constraint("uq_journal_entries_partner_id_claim_id", "journal_entries",
                                ["partner_id", "claim_id"])
    for table, column, target in OUT_OF:
        op.create_foreign_key(f"fk_{table}_{column}_{target}", table, target, [column], ["id"])
    for table, column in INTO_ENTRIES:
        op.create_foreign_key(f"fk_{table}_{column}_journal_entries", table, "journal_entries",
                              [column], ["id"])
    op.execute("DROP SCHEMA IF EXISTS archive")
