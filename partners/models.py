"""Partner registry: partners, their public keys, their terms, and the tokens already used."""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, CheckConstraint, Date, ForeignKey, Index, Numeric, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from coalition.database import db
from coalition.models import Id, UtcDateTime

Price = Numeric(18, 6)
PARTNER, OPERATOR = "partner", "operator"  # partners.kind


class Partner(db.Model):
    __tablename__ = "partners"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | suspended
    # partner: a merchant that signs API requests; operator: the coalition itself, registered
    # once so that points it funds (bonuses) have an issuer with terms like any other.
    kind: Mapped[str] = mapped_column(String(16), default=PARTNER, server_default=PARTNER)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Redemption policy (`partners set-policy`): with redeem_auth "pin" a burn of more than
    # pin_above points needs the member's PIN; at most daily_redeem_limit points burned here per
    # calendar day (COALITION_TIMEZONE), across all members. NULL: no limit.
    redeem_auth: Mapped[str] = mapped_column(String(8), default="none", server_default="none")
    pin_above: Mapped[int | None] = mapped_column(BigInteger)
    daily_redeem_limit: Mapped[int | None] = mapped_column(BigInteger)

    keys: Mapped[list[PartnerKey]] = relationship(back_populates="partner",
                                                  order_by="PartnerKey.created_at")
    terms: Mapped[list[PartnerTerms]] = relationship(order_by="PartnerTerms.starts")

    __table_args__ = (
        CheckConstraint("status IN ('active', 'suspended')", name="status_known"),
        CheckConstraint(f"kind IN ('{PARTNER}', '{OPERATOR}')",
                        name="kind_known").ddl_if(dialect="postgresql"),
        # One operator: the coalition.
        Index("uq_partners_operator", "kind", unique=True,
              postgresql_where=text(f"kind = '{OPERATOR}'"),
              sqlite_where=text(f"kind = '{OPERATOR}'")),
        # PostgreSQL only: on SQLite adding them would rebuild a referenced table; there
        # partners.service.set_policy is the only writer and checks the same.
        CheckConstraint("(redeem_auth = 'none' AND pin_above IS NULL) OR "
                        "(redeem_auth = 'pin' AND pin_above >= 0)",
                        name="redeem_auth_known").ddl_if(dialect="postgresql"),
        CheckConstraint("daily_redeem_limit IS NULL OR daily_redeem_limit >= 0",
                        name="daily_redeem_limit_nonnegative").ddl_if(dialect="postgresql"),
    )


class PartnerKey(db.Model):
    """A partner's public key. The kid is its RFC 7638 thumbprint, so it names the key itself."""
    __tablename__ = "partner_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), index=True)
    alg: Mapped[str] = mapped_column(String(8))  # ES256 | EdDSA, the only one this key verifies
    public_key_pem: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | revoked
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    partner: Mapped[Partner] = relationship(back_populates="keys")

    __table_args__ = (CheckConstraint("alg IN ('ES256', 'EdDSA')", name="alg_known"),
                      CheckConstraint("status IN ('active', 'revoked')", name="status_known"))


class PartnerTerms(db.Model):
    """Prices in EUR, versioned by the month (YYYY-MM) from which they apply."""
    __tablename__ = "partner_terms"

    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.id"), primary_key=True)
    starts: Mapped[str] = mapped_column(String(7), primary_key=True)
    issue_price: Mapped[Decimal] = mapped_column(Price)
    redemption_rate: Mapped[Decimal] = mapped_column(Price)
    issuance_share: Mapped[Decimal] = mapped_column(Numeric(7, 6))
    claim_fee: Mapped[Decimal] = mapped_column(Price)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint("issue_price >= 0 AND redemption_rate >= 0 AND claim_fee >= 0",
                        name="prices_nonnegative"),
        CheckConstraint("issuance_share >= 0 AND issuance_share <= 1", name="share_in_range"),
    )


class UsedToken(db.Model):
    """A jti seen once. The primary key makes a replay fail in any process; pruned after expiry."""
    __tablename__ = "used_tokens"

    partner_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class MemberLookup(db.Model):
    """A partner asked about a card: read its balance, or got "no such member" (member_id
    None). Kept for two harvesting windows (partners/harvest.py), the card only as a hash."""
    __tablename__ = "member_lookups"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(64))
    card_hash: Mapped[str] = mapped_column(String(64))  # SHA-256 hex of the card number
    member_id: Mapped[int | None] = mapped_column(Id)  # members.id; no key: pruned, not kept
    at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_member_lookups_partner_at", "partner_id", "at"),)


UNAUTHENTICATED = ""  # claim_reject_counts.partner_id of a request no verified token named


class ClaimRejectCount(db.Model):
    """How many problem answers (4xx and 429) the partner API gave a partner on one local day
    (COALITION_TIMEZONE), by slug: what the operator console charts next to the claims the
    journal accepted. A refused claim leaves nothing else behind. One row per partner, day and
    slug, counted up in the transaction that spends the request's jti (partners/auth.py), so a
    flood of refusals grows a counter, never the table. Requests whose token did not verify
    count under partner_id "" (UNAUTHENTICATED): an unverified token's issuer is only a claim."""
    __tablename__ = "claim_reject_counts"

    partner_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = (CheckConstraint("count >= 0", name="count_nonnegative"),
                      # The console reads days across partners.
                      Index("ix_claim_reject_counts_day", "day"))
