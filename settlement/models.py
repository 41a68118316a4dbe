"""Closed months' statements: stored as the exact canonical JSON that was signed."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from coalition.database import db
from coalition.models import UtcDateTime


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
