"""holds: points reserved for a redemption captured later (POST /v1/holds)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05 19:30:00.000000

A hold is not a journal entry: it moves no points, it keeps them from being available while it
is open. The partial index serves the one question every claim asks, how many of the member's
points are held now.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OPEN = sa.text("status = 'open'")


def upgrade():
    op.create_table(
        "holds",
        sa.Column("id", Id, nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("hold_id", sa.String(64), nullable=False),
        sa.Column("member_id", Id, sa.ForeignKey("members.id",
                  name=op.f("fk_holds_member_id_members")), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True)),
        sa.Column("claim_id", sa.String(64)),
        sa.Column("captured_points", sa.BigInteger()),
        sa.Column("entry_id", Id, sa.ForeignKey("journal_entries.id",
                  name=op.f("fk_holds_entry_id_journal_entries"))),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.UniqueConstraint("partner_id", "hold_id", name=op.f("uq_holds_partner_id_hold_id")),
        sa.CheckConstraint("points > 0", name=op.f("ck_holds_points_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
    )
    op.create_index("ix_holds_open", "holds", ["member_id", "expires_at"],
                    postgresql_where=OPEN, sqlite_where=OPEN)
    op.create_index("ix_holds_partner_created", "holds", ["partner_id", "created_at"])


def downgrade():
    op.drop_index("ix_holds_partner_created", table_name="holds")
    op.drop_index("ix_holds_open", table_name="holds")
    op.drop_table("holds")
