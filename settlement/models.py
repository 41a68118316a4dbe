"""Closed months' statements: stored as the exact canonical JSON that was signed. And the
reconciliations partners (or operators for them) uploaded against those months."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from coalition.database import db
from coalition.models import Id, UtcDateTime


class Statement(db.Model):
    """One partner's final statement for one closed month. Never updated."""
    __tablename__ = "statements"

    period: Mapped[str] = mapped_column(ForeignKey("closed_periods.period"), primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    document: Mapped[str] = mapped_column(Text)  # canonical JSON, the signed bytes
    digest: Mapped[str] = mapped_column(String(64))  # SHA-256 hex of document
    signature: Mapped[str] = mapped_column(String(128))  # base64url Ed25519 over document
    kid: Mapped[str] = mapped_column(String(64))
    net_cents: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class CoalitionReport(db.Model):
    """The coalition view of a closed month: all statements, the issuer x redeemer matrix,
    the operator margin and what netting saved."""
    __tablename__ = "coalition_reports"

    period: Mapped[str] = mapped_column(ForeignKey("closed_periods.period"), primary_key=True)
    document: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    kid: Mapped[str] = mapped_column(String(64))


class SigningKey(db.Model):
    """A public key the coalition signs statements with, or once did. The private half is never
    stored here: only the current key has one, in COALITION_SIGNING_KEY_FILE (settlement/signing.py).
    Rows are kept after rotation so that statements signed before it still verify."""
    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)  # RFC 7638 thumbprint
    public_key_pem: Mapped[str] = mapped_column(Text)
    registered_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Set when the operator withdraws the key (a compromise): it leaves the JWKS, and what it
    # signed no longer verifies. Never cleared.
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Reconciliation(db.Model):
    """One reconciliation of a closed month (settlement/reconciliation.py): what was uploaded
    (its SHA-256 and size, not its bytes), the complete counts, and the answer itself as JSON.
    Never updated, but for member erasure taking card numbers out of `result`."""
    __tablename__ = "reconciliations"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"))
    period: Mapped[str] = mapped_column(ForeignKey("closed_periods.period"))
    uploaded_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # partner:<id> through the partner API, operator:<name> through the console.
    uploaded_by: Mapped[str] = mapped_column(String(96))
    format: Mapped[str] = mapped_column(String(8))
    input_sha256: Mapped[str] = mapped_column(String(64))
    input_bytes: Mapped[int] = mapped_column(BigInteger)
    coalition_claims: Mapped[int] = mapped_column(BigInteger)
    partner_claims: Mapped[int] = mapped_column(BigInteger)
    matched: Mapped[int] = mapped_column(BigInteger)
    mismatched: Mapped[int] = mapped_column(BigInteger)
    missing_at_partner: Mapped[int] = mapped_column(BigInteger)
    missing_at_coalition: Mapped[int] = mapped_column(BigInteger)
    truncated: Mapped[bool] = mapped_column(Boolean)
    # The answer as JSON: bounded, since each list names at most MAX_LISTED claims.
    result: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("format IN ('json', 'csv')", name="format_known"),
        Index("ix_reconciliations_period", "period", "id"),
        Index("ix_reconciliations_partner_period", "partner_id", "period", "id"),
    )


class ReconciliationCard(db.Model):
    """A card number a stored reconciliation names, by its SHA-256: how member erasure finds
    the results to take the card out of without reading every one."""
    __tablename__ = "reconciliation_cards"

    card_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    reconciliation_id: Mapped[int] = mapped_column(
        ForeignKey("reconciliations.id", ondelete="CASCADE"), primary_key=True)
