"""credentials and operators: sign-in for the member portal and the operator console

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 02:55:00.000000

- credentials: one row per principal (member-id:<id> or operator:<name>) with its scrypt
  password hash, the hash of its pending one-time code and that code's expiry, and the count of
  wrong passwords with the lock-out it set. coalition/credentials.py.
- operators: the console's users and their role (admin | analyst). coalition/operators.py.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "credentials",
        sa.Column("principal", sa.String(96), nullable=False),
        sa.Column("password_hash", sa.String(160)),
        sa.Column("failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
        sa.Column("code_hash", sa.String(64)),
        sa.Column("code_expires_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("failures >= 0", name=op.f("ck_credentials_failures_nonnegative")),
        sa.CheckConstraint("(code_hash IS NULL) = (code_expires_at IS NULL)",
                           name=op.f("ck_credentials_code_with_expiry")),
        sa.PrimaryKeyConstraint("principal", name=op.f("pk_credentials")),
    )
    op.create_table(
        "operators",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("role IN ('admin', 'analyst')", name=op.f("ck_operators_role_known")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_operators")),
    )


def downgrade():
    op.drop_table("operators")
    op.drop_table("credentials")
