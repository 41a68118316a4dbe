"""lots still holding points, by expiry: what `flask points expire` reads

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 12:50:00.000000

A partial index (remaining > 0) on (expires_at, id): the expiry run finds the lots due in one
index range, across every member. Built CONCURRENTLY on PostgreSQL (claims keep booking).
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

OPEN = sa.text("remaining > 0")


def upgrade():
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            op.create_index("ix_lots_expiring", "lots", ["expires_at", "id"],
                            postgresql_where=OPEN, postgresql_concurrently=True)
    else:
        op.create_index("ix_lots_expiring", "lots", ["expires_at", "id"], sqlite_where=OPEN)


def downgrade():
    op.drop_index("ix_lots_expiring", table_name="lots")
