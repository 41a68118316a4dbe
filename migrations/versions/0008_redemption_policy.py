"""redemption policy per partner, member PINs, the partner's burns by day

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:00:00.000000

partners: redeem_auth ('none' for every existing partner: nothing changes until an operator
runs `partners set-policy`), pin_above, daily_redeem_limit. members: pin_hash, pin_failures,
pin_locked_at (no member has a PIN yet). journal_entries: a partial index of burns by partner
and booking time, for the daily limit's sum; on PostgreSQL it is built CONCURRENTLY, so claims
keep booking while it builds (outside the migration's transaction: if that build fails, drop
the INVALID index and upgrade again).

The CHECK constraints on the new columns exist on PostgreSQL only: SQLite cannot add one to an
existing table without rebuilding it, and members and partners are referenced by other tables.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

BURNS = "kind = 'burn'"


def _postgres() -> bool:
    return op.get_bind().dialect.name == 'postgresql'


def upgrade():
    with op.batch_alter_table('partners', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('redeem_auth', sa.String(length=8), server_default='none',
                                      nullable=False))
        batch_op.add_column(sa.Column('pin_above', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('daily_redeem_limit', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('members', schema=None, recreate='never') as batch_op:
        batch_op.add_column(sa.Column('pin_hash', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('pin_failures', sa.Integer(), server_default='0',
                                      nullable=False))
        batch_op.add_column(sa.Column('pin_locked_at', sa.DateTime(timezone=True), nullable=True))
    if _postgres():
        op.create_check_constraint(
            op.f('ck_partners_redeem_auth_known'), 'partners',
            "(redeem_auth = 'none' AND pin_above IS NULL) OR (redeem_auth = 'pin' AND pin_above >= 0)")
        op.create_check_constraint(
            op.f('ck_partners_daily_redeem_limit_nonnegative'), 'partners',
            'daily_redeem_limit IS NULL OR daily_redeem_limit >= 0')
        op.create_check_constraint(op.f('ck_members_pin_failures_nonnegative'), 'members',
                                   'pin_failures >= 0')
        with op.get_context().autocommit_block():
            op.create_index('ix_journal_entries_burns', 'journal_entries',
                            ['partner_id', 'recorded_at'], unique=False,
                            postgresql_where=sa.text(BURNS), postgresql_concurrently=True)
    else:
        op.create_index('ix_journal_entries_burns', 'journal_entries',
                        ['partner_id', 'recorded_at'], unique=False, sqlite_where=sa.text(BURNS))


def downgrade():
    if _postgres():
        with op.get_context().autocommit_block():
            op.drop_index('ix_journal_entries_burns', table_name='journal_entries',
                          postgresql_concurrently=True)
        op.drop_constraint(op.f('ck_members_pin_failures_nonnegative'), 'members', type_='check')
        op.drop_constraint(op.f('ck_partners_daily_redeem_limit_nonnegative'), 'partners',
                           type_='check')
        op.drop_constraint(op.f('ck_partners_redeem_auth_known'), 'partners', type_='check')
    else:
        op.drop_index('ix_journal_entries_burns', table_name='journal_entries')
    # recreate="never": SQLite (3.35+) drops a column in place; rebuilding members or partners
    # would fail on the tables that reference them.
    with op.batch_alter_table('members', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('pin_locked_at')
        batch_op.drop_column('pin_failures')
        batch_op.drop_column('pin_hash')
    with op.batch_alter_table('partners', schema=None, recreate='never') as batch_op:
        batch_op.drop_column('daily_redeem_limit')
        batch_op.drop_column('pin_above')
        batch_op.drop_column('redeem_auth')
