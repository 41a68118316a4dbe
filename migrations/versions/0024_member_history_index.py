"""a member's journal entries by id: the history's pages (member portal, console)

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06 04:00:00.000000

journal_entries (member_id, id): a page of a member's history, newest first, is one index range
from the cursor on, however many entries the member has and wherever they lie in the journal.
With member_id alone PostgreSQL either reads all of the member's entries and sorts them, or
walks the primary key backwards until it has found a page of them: through every later entry
of every other member when the member's own are old. On PostgreSQL it is built CONCURRENTLY,
so claims keep booking while it builds (outside the migration's transaction: if the build
fails, drop the INVALID index and upgrade again).
"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None

NAME, COLUMNS = 'ix_journal_entries_member_id_id', ['member_id', 'id']


def upgrade():
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            op.create_index(NAME, 'journal_entries', COLUMNS, postgresql_concurrently=True)
    else:
        op.create_index(NAME, 'journal_entries', COLUMNS)


def downgrade():
    op.drop_index(NAME, table_name='journal_entries')
