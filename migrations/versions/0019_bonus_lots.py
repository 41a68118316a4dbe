"""bonus lots: an earn may make several lots (its own points, and one per bonus and funder)

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 00:30:00.000000

- lots.source names what a lot's points are for: NULL for the claim's own points, else the
  bonus (`campaign:<id>`, `coupon:<id>`, `tier:<name>`). One earn, one entry, several lots: the
  unique key on lots.entry_id becomes a plain index.
- A reversal of such an earn can leave a debt to each funder: debt_lots.entry_id is no longer
  unique either.
- campaigns.awarded counts the bonus points a campaign with a total cap has given (its row is
  locked while an earn adds to it).
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

BONUS = sa.text("source IS NOT NULL")


def upgrade():
    # SQLite rebuilds both tables (its unique keys cannot be dropped in place); migrations/env.py
    # turns its foreign key enforcement off meanwhile, as SQLite's own procedure asks.
    with op.batch_alter_table("lots") as batch:
        batch.add_column(sa.Column("source", sa.String(80)))
        batch.drop_constraint("uq_lots_entry_id", type_="unique")
        batch.create_index("ix_lots_entry_id", ["entry_id"])
    op.create_index("ix_lots_member_source", "lots", ["member_id", "source"],
                    postgresql_where=BONUS, sqlite_where=BONUS)
    with op.batch_alter_table("debt_lots") as batch:
        batch.drop_constraint("uq_debt_lots_entry_id", type_="unique")
        batch.create_index("ix_debt_lots_entry_id", ["entry_id"])
    op.add_column("campaigns", sa.Column("awarded", sa.BigInteger(), server_default="0",
                                         nullable=False))


def downgrade():
    op.drop_column("campaigns", "awarded")
    with op.batch_alter_table("debt_lots") as batch:
        batch.drop_index("ix_debt_lots_entry_id")
        batch.create_unique_constraint("uq_debt_lots_entry_id", ["entry_id"])
    op.drop_index("ix_lots_member_source", table_name="lots")
    with op.batch_alter_table("lots") as batch:
        batch.drop_index("ix_lots_entry_id")
        batch.create_unique_constraint("uq_lots_entry_id", ["entry_id"])
        batch.drop_column("source")
