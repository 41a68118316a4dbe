"""member erasure: members.erased_at, and audit events whose personal data can be redacted

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 16:45:00.000000

`flask members erase` (coalition/member_erasure.py) marks the member erased and redacts the
card number from the audit events about the member (coalition/audit.py, `redact`). The audit
log stays append-only for everything else: the triggers of 0003 are replaced by ones that still
refuse DELETE and any UPDATE of id, at, actor, action, prev_hash or hash, and let subject, before
and after be rewritten. A rewrite the chain does not vouch for (a later `member.erase` event
naming the event and the digest of its redacted row) still fails `ledger verify`.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

REFUSED = "audit_events is append-only"
FIXED = ("id", "at", "actor", "action", "prev_hash", "hash")

PG_FUNCTION_0003 = f"""
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '{REFUSED}: % refused', TG_OP USING ERRCODE = 'restrict_violation';
END
$$"""
_UNCHANGED = " AND ".join(f"NEW.{c} IS NOT DISTINCT FROM OLD.{c}" for c in FIXED)
PG_FUNCTION = f"""
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND {_UNCHANGED} THEN
        RETURN NEW;  -- a redaction of subject, before or after (member erasure)
    END IF;
    RAISE EXCEPTION '{REFUSED}: % refused', TG_OP USING ERRCODE = 'restrict_violation';
END
$$"""
SQLITE_UPDATE_0003 = f"""
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, '{REFUSED}: UPDATE refused'); END"""
# OF <columns>: fires only for an UPDATE that sets one of them, whatever value it sets.
SQLITE_UPDATE = f"""
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OF {", ".join(FIXED)} ON audit_events
BEGIN SELECT RAISE(ABORT, '{REFUSED}: UPDATE refused'); END"""


def upgrade():
    with op.batch_alter_table("members", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION)
    else:
        op.execute("DROP TRIGGER audit_events_no_update")
        op.execute(SQLITE_UPDATE)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_FUNCTION_0003)
    else:
        op.execute("DROP TRIGGER audit_events_no_update")
        op.execute(SQLITE_UPDATE_0003)
    # recreate="never": SQLite (3.35+) drops the column in place; members is referenced by
    # other tables and cannot be rebuilt.
    with op.batch_alter_table("members", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("erased_at")
