"""claim_reject_counts: problem answers of the partner API per partner, local day and slug

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 03:05:00.000000

A refused claim leaves no row in the journal; the operator console charts claims per day with
the refusals beside them. One counter per partner, day and slug (partners/models.py,
ClaimRejectCount), counted up by partners/auth.py.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "claim_reject_counts",
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("count", sa.BigInteger(), server_default="0", nullable=False),
        sa.CheckConstraint("count >= 0", name=op.f("ck_claim_reject_counts_count_nonnegative")),
        sa.PrimaryKeyConstraint("partner_id", "day", "slug", name=op.f("pk_claim_reject_counts")),
    )
    op.create_index("ix_claim_reject_counts_day", "claim_reject_counts", ["day"])


def downgrade():
    op.drop_index("ix_claim_reject_counts_day", table_name="claim_reject_counts")
    op.drop_table("claim_reject_counts")
