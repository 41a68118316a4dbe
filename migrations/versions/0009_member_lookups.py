"""member lookups: balance reads and unknown-card answers per partner, for the harvesting watch

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 17:40:00.000000

Rows live for two harvesting windows (HARVEST_WINDOW_MINUTES) and are pruned with the jti
records; the card is stored only as its SHA-256.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "member_lookups",
        sa.Column("id", Id, primary_key=True),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("card_hash", sa.String(64), nullable=False),
        sa.Column("member_id", Id, nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_member_lookups_partner_at", "member_lookups", ["partner_id", "at"])


def downgrade():
    op.drop_index("ix_member_lookups_partner_at", table_name="member_lookups")
    op.drop_table("member_lookups")
