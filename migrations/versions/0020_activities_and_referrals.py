"""activities and referrals: what an earn rewards, and who referred a member

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 01:30:00.000000

- journal_entries.activity: purchase (the default, and every entry written before), review,
  signup, newsletter, or referral (the coalition's earn for a referrer). coalition/activities.py.
- members.referred_by: the referrer's members.id, set when a member is enrolled with
  `referred_by`.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.add_column("journal_entries", sa.Column("activity", sa.String(16),
                                               server_default="purchase", nullable=False))
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("referred_by", Id))
        batch.create_foreign_key(op.f("fk_members_referred_by_members"), "members",
                                 ["referred_by"], ["id"])


def downgrade():
    with op.batch_alter_table("members") as batch:
        batch.drop_constraint(op.f("fk_members_referred_by_members"), type_="foreignkey")
        batch.drop_column("referred_by")
    op.drop_column("journal_entries", "activity")
