"""operator issuer: partners.kind, partner or operator (the coalition itself, at most one)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05 19:40:00.000000

The coalition is registered like a partner (`partners add coalition --kind operator`) so that
points it funds have an issuer with terms, a statement and a place in the issuer x redeemer
matrix. It signs no requests: it has no keys.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

OPERATOR = sa.text("kind = 'operator'")


def upgrade():
    op.add_column("partners", sa.Column("kind", sa.String(16), server_default="partner",
                                        nullable=False))
    if op.get_bind().dialect.name == "postgresql":  # SQLite would rebuild a referenced table
        op.create_check_constraint(op.f("ck_partners_kind_known"), "partners",
                                   "kind IN ('partner', 'operator')")
    op.create_index("uq_partners_operator", "partners", ["kind"], unique=True,
                    postgresql_where=OPERATOR, sqlite_where=OPERATOR)


def downgrade():
    op.drop_index("uq_partners_operator", table_name="partners")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(op.f("ck_partners_kind_known"), "partners", type_="check")
    # SQLite (3.35+) drops the column in place; a batch rebuild would drop a referenced table
    op.drop_column("partners", "kind")
