"""member consents: marketing consent per member and channel, with its history

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 12:30:00.000000

One row per consent given or withdrawn at a partner (PUT /v1/members/{id}/consents); the one in
force for a channel is its latest row (the index reads it in one step).
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "member_consents",
        sa.Column("id", Id, primary_key=True),
        sa.Column("member_id", Id, sa.ForeignKey("members.id",
                  name="fk_member_consents_member_id_members"), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("marketing", sa.Boolean(), nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_member_consents_member_channel", "member_consents",
                    ["member_id", "channel", "id"])


def downgrade():
    op.drop_index("ix_member_consents_member_channel", table_name="member_consents")
    op.drop_table("member_consents")
