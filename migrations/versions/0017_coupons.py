"""coupons: bonuses a member activates first, then earns once at the coupon's partner

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 20:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    op.create_table(
        "coupons",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("factor", sa.Numeric(9, 4)),
        sa.Column("bonus_points", sa.BigInteger()),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("funder_id", sa.String(64), nullable=False),
        sa.Column("published_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("(kind = 'multiplier' AND factor > 1 AND bonus_points IS NULL) OR "
                           "(kind = 'fixed' AND bonus_points > 0 AND factor IS NULL)",
                           name=op.f("ck_coupons_kind_and_value")),
        sa.CheckConstraint("ends_at > starts_at", name=op.f("ck_coupons_window_nonempty")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupons")),
    )
    op.create_table(
        "coupon_activations",
        sa.Column("id", Id, nullable=False),
        sa.Column("coupon_id", sa.String(64), sa.ForeignKey(
            "coupons.id", name=op.f("fk_coupon_activations_coupon_id_coupons")), nullable=False),
        sa.Column("member_id", Id, sa.ForeignKey(
            "members.id", name=op.f("fk_coupon_activations_member_id_members")), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("channel", sa.String(80), nullable=False),
        sa.Column("entry_id", Id, sa.ForeignKey(
            "journal_entries.id", name=op.f("fk_coupon_activations_entry_id_journal_entries"))),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_coupon_activations")),
        sa.UniqueConstraint("coupon_id", "member_id",
                            name=op.f("uq_coupon_activations_coupon_id_member_id")),
    )
    op.create_index("ix_coupon_activations_member_id", "coupon_activations", ["member_id"])


def downgrade():
    op.drop_index("ix_coupon_activations_member_id", table_name="coupon_activations")
    op.drop_table("coupon_activations")
    op.drop_table("coupons")
