"""indexes for a partner's claims: by booking time (GET /v1/claims) and by month (statement lines)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 21:00:00.000000

journal_entries (partner_id, recorded_at, id): a page of a partner's claims, newest first, is
one index range from the cursor on. journal_entries (partner_id, period, id): a partner's claims
of one month (the period filter, a statement's claim lines) without reading every partner's.
On PostgreSQL both are built CONCURRENTLY, so claims keep booking while they build (outside the
migration's transaction: if a build fails, drop the INVALID index and upgrade again).
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

INDEXES = {"ix_journal_entries_partner_recorded": ["partner_id", "recorded_at", "id"],
           "ix_journal_entries_partner_period": ["partner_id", "period", "id"]}


def _postgres() -> bool:
    return op.get_bind().dialect.name == 'postgresql'


def upgrade():
    if _postgres():
        with op.get_context().autocommit_block():
            for name, columns in INDEXES.items():
                op.create_index(name, 'journal_entries', columns, postgresql_concurrently=True)
    else:
        for name, columns in INDEXES.items():
            op.create_index(name, 'journal_entries', columns)


def downgrade():
    for name in INDEXES:
        op.drop_index(name, table_name='journal_entries')
