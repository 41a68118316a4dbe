"""leader_leases: one holder at a time of a job that runs beside every app instance

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-06 06:20:00.000000

Several app instances each run a sealer; the one holding the lease "sealer" seals, the others
wait to take over when it stops renewing (coalition/leases.py).
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0025'
down_revision = '0024'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "leader_leases",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leader_leases")),
    )


def downgrade():
    op.drop_table("leader_leases")
