"""signing keys: every public key the coalition signed statements with (rotation)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 10:02:11.000000

Only public keys: the private half of the current key stays in COALITION_SIGNING_KEY_FILE.
A deployment upgrading from 0005 has no row yet; its existing key file is registered by the
next `settlement close` or `settlement rotate-signing-key` and is published from the file
until then (settlement/signing.py). Downgrading forgets every key but the one in the file, so
statements signed before the last rotation then fail `ledger verify` (unknown kid).
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('signing_keys',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('public_key_pem', sa.Text(), nullable=False),
    sa.Column('registered_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('kid', name=op.f('pk_signing_keys'))
    )


def downgrade():
    op.drop_table('signing_keys')
