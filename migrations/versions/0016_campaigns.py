"""campaigns: time-boxed bonuses on qualifying earns, each with its funder

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 19:55:00.000000
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("factor", sa.Numeric(9, 4)),
        sa.Column("bonus_points", sa.BigInteger()),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("partners", sa.Text()),
        sa.Column("tiers", sa.Text()),
        sa.Column("segment", sa.String(64)),
        sa.Column("funder_id", sa.String(64), nullable=False),
        sa.Column("cap_per_member", sa.BigInteger()),
        sa.Column("cap_total", sa.BigInteger()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("(kind = 'multiplier' AND factor > 1 AND bonus_points IS NULL) OR "
                           "(kind = 'fixed' AND bonus_points > 0 AND factor IS NULL)",
                           name=op.f("ck_campaigns_kind_and_value")),
        sa.CheckConstraint("ends_at > starts_at", name=op.f("ck_campaigns_window_nonempty")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )


def downgrade():
    op.drop_table("campaigns")
