"""segments: groups of members defined by the operator's rules (never free SQL)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 20:10:00.000000
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "segments",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("rule", sa.String(32), nullable=False),
        sa.Column("partner_id", sa.String(64)),
        sa.Column("days", sa.Integer(), nullable=False),
        sa.Column("points", sa.BigInteger()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
    )


def downgrade():
    op.drop_table("segments")
