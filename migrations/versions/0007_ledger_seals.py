"""ledger seals: one row per sealed entry, so verify names the first broken entry

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 16:05:00.000000

Entries sealed before this revision get their rows from the journal as it stands at the
upgrade: run `flask ledger verify` before upgrading, since whatever the journal holds then is
what later checks compare against (the blocks themselves still prove it was not changed).
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('ledger_seals',
    sa.Column('entry_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('block_id', sa.BigInteger(), nullable=False),
    sa.Column('entry_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('entry_id', name=op.f('pk_ledger_seals'))
    )
    with op.batch_alter_table('ledger_seals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ledger_seals_block_id'), ['block_id'], unique=False)
    op.execute(
        "INSERT INTO ledger_seals (entry_id, block_id, entry_hash) "
        "SELECT e.id, b.id, e.entry_hash FROM journal_entries e "
        "JOIN ledger_blocks b ON e.id BETWEEN b.first_entry_id AND b.last_entry_id")


def downgrade():
    with op.batch_alter_table('ledger_seals', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ledger_seals_block_id'))
    op.drop_table('ledger_seals')
