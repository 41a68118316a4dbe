"""reconciliations: every reconciliation of a closed month that was uploaded, with its result

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 03:40:00.000000

- reconciliations: who uploaded what (SHA-256 and size of the upload, not its bytes) against
  which closed month, the complete counts, and the answer as JSON (settlement/models.py,
  settlement/reconciliation.py).
- reconciliation_cards: the SHA-256 of each card number a stored answer names, so that member
  erasure finds the answers to take the card out of.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "reconciliations",
        sa.Column("id", Id, nullable=False),
        sa.Column("partner_id", sa.String(64), sa.ForeignKey(
            "partners.id", name=op.f("fk_reconciliations_partner_id_partners")), nullable=False),
        sa.Column("period", sa.String(7), sa.ForeignKey(
            "closed_periods.period", name=op.f("fk_reconciliations_period_closed_periods")),
            nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uploaded_by", sa.String(96), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("input_sha256", sa.String(64), nullable=False),
        sa.Column("input_bytes", sa.BigInteger(), nullable=False),
        sa.Column("coalition_claims", sa.BigInteger(), nullable=False),
        sa.Column("partner_claims", sa.BigInteger(), nullable=False),
        sa.Column("matched", sa.BigInteger(), nullable=False),
        sa.Column("mismatched", sa.BigInteger(), nullable=False),
        sa.Column("missing_at_partner", sa.BigInteger(), nullable=False),
        sa.Column("missing_at_coalition", sa.BigInteger(), nullable=False),
        sa.Column("truncated", sa.Boolean(), nullable=False),
        sa.Column("result", sa.Text(), nullable=False),
        sa.CheckConstraint("format IN ('json', 'csv')", name=op.f("ck_reconciliations_format_known")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliations")),
    )
    op.create_index("ix_reconciliations_period", "reconciliations", ["period", "id"])
    op.create_index("ix_reconciliations_partner_period", "reconciliations",
                    ["partner_id", "period", "id"])
    op.create_table(
        "reconciliation_cards",
        sa.Column("card_hash", sa.String(64), nullable=False),
        sa.Column("reconciliation_id", Id, sa.ForeignKey(
            "reconciliations.id", name=op.f("fk_reconciliation_cards_reconciliation_id_reconciliations"),
            ondelete="CASCADE"), nullable=False),
        sa.PrimaryKeyConstraint("card_hash", "reconciliation_id", name=op.f("pk_reconciliation_cards")),
    )


def downgrade():
    op.drop_table("reconciliation_cards")
    op.drop_index("ix_reconciliations_partner_period", table_name="reconciliations")
    op.drop_index("ix_reconciliations_period", table_name="reconciliations")
    op.drop_table("reconciliations")
