"""Every table of the core: the ledger of record (members, the double-entry journal, lots, debt
lots and consumptions), closed months, and the tamper evidence (sealed blocks, the audit log).

Journal entries and postings are immutable. Lots and debt lots carry a `remaining` that the
journal fully determines (`ledger verify` re-derives it), kept as a column so that a burn can
pick its lots without replaying history.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (BigInteger, Boolean, CheckConstraint, DateTime, ForeignKey, Index,
                        Integer, Numeric, PrimaryKeyConstraint, String, Text, UniqueConstraint,
                        text)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .database import db
from .vocabulary import HOLD_OPEN, LOT_OPEN, EntryKind

# BIGINT ids on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is the autoincrementing rowid.
Id = BigInteger().with_variant(Integer(), "sqlite")
# Every instant of every table, partners' and settlement's too: stored in UTC, TIMESTAMP WITH TIME
# ZONE on PostgreSQL. SQLite hands values back naive; clock.as_utc reads them as UTC.
UtcDateTime = DateTime(timezone=True)


class Member(db.Model):
    """The one hot row: every claim of a member locks it, and nothing else."""
    __tablename__ = "members"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    # The card number partners send. Personal data lives only in this table (GDPR erasure).
    external_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Balance of account member:<id> (= sum of its lots' remaining) and the points it owes.
    balance: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    debt: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    locked: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    enrolled_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # The member's PIN (coalition/pins.py): "scrypt$ln=..,r=..,p=..$salt$key", never the PIN.
    pin_hash: Mapped[str | None] = mapped_column(String(128))
    # Wrong PINs in a row; the fifth sets pin_locked_at: no redemption until an operator
    # unlocks it (apart from `locked`, the operator's own lock).
    pin_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    pin_locked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # When the member was erased (coalition/member_erasure.py): external_id is NULL from then
    # on, and the row is only the account the journal books to.
    erased_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Who referred the member (coalition/activities.py): the referrer's id, set at enrolment only.
    referred_by: Mapped[int | None] = mapped_column(ForeignKey("members.id"))

    __table_args__ = (CheckConstraint("balance >= 0", name="balance_nonnegative"),
                      CheckConstraint("debt >= 0", name="debt_nonnegative"),
                      # PostgreSQL only: on SQLite adding it would rebuild a referenced table.
                      CheckConstraint("pin_failures >= 0", name="pin_failures_nonnegative")
                      .ddl_if(dialect="postgresql"))


BURNS = f"kind = '{EntryKind.BURN}'"  # the partial index of a partner's burns


class Entry(db.Model):
    """One accepted claim (or a system booking such as an expiry): immutable once written."""
    __tablename__ = "journal_entries"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # vocabulary.EntryKind
    partner_id: Mapped[str | None] = mapped_column(String(64))
    claim_id: Mapped[str | None] = mapped_column(String(64))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    points: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)
    period: Mapped[str] = mapped_column(String(7), index=True)
    late: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    pending_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    description: Mapped[str | None] = mapped_column(String(500))
    reverses_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"), index=True)
    # SHA-256 of the normalised request: equal content replays, different content conflicts.
    fingerprint: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))  # as first answered: booked | pending
    balance_after: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[str] = mapped_column(String(64))
    # What an earn rewards (coalition/activities.py); every other entry, and every earn from
    # before activities, is a purchase.
    activity: Mapped[str] = mapped_column(String(16), default="purchase",
                                          server_default="purchase")

    member: Mapped[Member] = relationship(lazy="joined")
    reverses: Mapped[Entry | None] = relationship(remote_side=[id])
    postings: Mapped[list[Posting]] = relationship(back_populates="entry", order_by="Posting.id")

    __table_args__ = (
        UniqueConstraint("partner_id", "claim_id"),
        CheckConstraint("points > 0", name="points_positive"),
        # A partner's burns by booking time: the daily redemption limit sums one day of them.
        Index("ix_journal_entries_burns", "partner_id", "recorded_at",
              postgresql_where=text(BURNS), sqlite_where=text(BURNS)),
        # A partner's claims newest first (GET /v1/claims), and one month of them (statement lines).
        Index("ix_journal_entries_partner_recorded", "partner_id", "recorded_at", "id"),
        # A member's history page by page (coalition/history.page_of; migration 0024): one range
        # of the index from the cursor on, where member_id alone reads and sorts all of it.
        Index("ix_journal_entries_member_id_id", "member_id", "id"),
        Index("ix_journal_entries_partner_period", "partner_id", "period", "id"),
    )


class Posting(db.Model):
    __tablename__ = "postings"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id"), index=True)
    # vocabulary.Account: member:<id> | issued:<partner> | redeemed:<partner> | expired | debt
    account: Mapped[str] = mapped_column(String(80), index=True)
    points: Mapped[int] = mapped_column(BigInteger)
    # The entry's period: on PostgreSQL the partition key (a month's postings sit with its entries).
    period: Mapped[str] = mapped_column(String(7))

    entry: Mapped[Entry] = relationship(back_populates="postings")

    __table_args__ = (CheckConstraint("points <> 0", name="points_nonzero"),)


class Lot(db.Model):
    """Points one earn put into a member's account, traceable to the partner that issued them."""
    __tablename__ = "lots"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    # An earn makes one lot of its own points and one per bonus it got (a lot per funder).
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id"), index=True)
    issuer_id: Mapped[str] = mapped_column(String(64), index=True)  # a bonus's: its funder
    points: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)
    available_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # set while pending
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # NULL: the claim's own points; a bonus: campaign:<id>, coupon:<id> or tier:<name>
    source: Mapped[str | None] = mapped_column(String(80))
    # The latest month of any entry that changed the lot (its earn's first): every
    # consumption of the lot is of this month or an earlier one.
    last_period: Mapped[str] = mapped_column(String(7))
    # LOT_OPEN while the lot holds points, else the month it was used up in (its last_period
    # then). On PostgreSQL lots are LIST-partitioned by it (migration 0027): the open lots,
    # which every burn and balance reads, sit in one partition, and the used-up ones in one
    # per month, with the journal's months.
    spent_period: Mapped[str] = mapped_column(String(7))

    entry: Mapped[Entry] = relationship()

    __mapper_args__ = {
        # The partition key in every UPDATE's WHERE (as its old value), so that on PostgreSQL
        # an update of one lot reads one partition, not every month's. The code sets it
        # (set_remaining); SQLAlchemy only checks that the row it updates still has it.
        "version_id_col": spent_period,
        "version_id_generator": False,
    }

    __table_args__ = (
        CheckConstraint("remaining >= 0 AND remaining <= points", name="remaining_in_range"),
        # PostgreSQL only, as members' pin check: on SQLite adding it would rebuild a table
        # that consumptions refer to (ledger verify checks the same on both).
        CheckConstraint(f"(remaining > 0) = (spent_period = '{LOT_OPEN}')",
                        name="spent_when_empty").ddl_if(dialect="postgresql"),
        # Burns and balances only ever look at a member's lots that still hold points.
        Index("ix_lots_open", "member_id", "expires_at",
              postgresql_where=text("remaining > 0"), sqlite_where=text("remaining > 0")),
        # The expiry run: every member's lots that still hold points, soonest expiry first.
        Index("ix_lots_expiring", "expires_at", "id",
              postgresql_where=text("remaining > 0"), sqlite_where=text("remaining > 0")),
        # A campaign's cap per member: the bonus lots it already gave the member.
        Index("ix_lots_member_source", "member_id", "source",
              postgresql_where=text("source IS NOT NULL"), sqlite_where=text("source IS NOT NULL")),
    )

    def set_remaining(self, remaining: int, period: str) -> None:
        """What an entry of month `period` leaves of the lot (the ORM's way; coalition/
        claim_sql.py and batch_sql.py write the same columns in SQL)."""
        self.last_period = max(self.last_period, period)
        self.remaining = remaining
        self.spent_period = LOT_OPEN if remaining > 0 else self.last_period


class DebtLot(db.Model):
    """Points a member owes a partner after that partner reversed an earn already spent."""
    __tablename__ = "debt_lots"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    creditor_id: Mapped[str] = mapped_column(String(64), index=True)
    # The reversal that made it: one per lot it left short (the earn's own, a bonus's funder).
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id"), index=True)
    points: Mapped[int] = mapped_column(BigInteger)
    remaining: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint("remaining >= 0 AND remaining <= points", name="remaining_in_range"),
    )


class Consumption(db.Model):
    """What an entry took from (points > 0) or gave back to (points < 0) a lot.

    kind: vocabulary.ConsumptionKind. A debt fill takes points from the
    new earn's lot to pay off `debt_lot_id`: the filling issuer's points are redeemed by it.
    """
    __tablename__ = "consumptions"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("journal_entries.id"), index=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("lots.id"), index=True)
    debt_lot_id: Mapped[int | None] = mapped_column(ForeignKey("debt_lots.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    points: Mapped[int] = mapped_column(BigInteger)
    period: Mapped[str] = mapped_column(String(7))  # the entry's, as Posting.period

    lot: Mapped[Lot] = relationship()

    __table_args__ = (CheckConstraint("points <> 0", name="points_nonzero"),)


class ClaimKey(db.Model):
    """A partner's claim id, once: the idempotency key. On PostgreSQL the journal is partitioned
    by month and a unique constraint cannot span its partitions, so this unpartitioned table
    holds the key (migration 0026), filled by a trigger on journal_entries; its primary key
    carries the journal's old constraint name, which ledger.is_claim_key recognises. `period`
    leads a replay to the one partition that holds the entry. SQLite keeps the journal's own
    unique constraint too, and fills this table the same way."""
    __tablename__ = "claim_keys"

    partner_id: Mapped[str] = mapped_column(String(64))
    claim_id: Mapped[str] = mapped_column(String(64))
    entry_id: Mapped[int] = mapped_column(BigInteger)
    period: Mapped[str] = mapped_column(String(7))

    __table_args__ = (PrimaryKeyConstraint("partner_id", "claim_id",
                                           name="uq_journal_entries_partner_id_claim_id"),)


class ArchivedPeriod(db.Model):
    """A closed month whose partitions were detached from the journal (coalition/partitions.py):
    where they went, and what `ledger verify` carries across the month without its rows."""
    __tablename__ = "archived_periods"

    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    archived_at: Mapped[datetime] = mapped_column(UtcDateTime)
    location: Mapped[str] = mapped_column(String(200))  # the schema the tables were moved to
    entry_count: Mapped[int] = mapped_column(BigInteger)
    first_entry_id: Mapped[int | None] = mapped_column(BigInteger)
    last_entry_id: Mapped[int | None] = mapped_column(BigInteger)
    ledger_head: Mapped[str | None] = mapped_column(String(64))  # closed_periods' at close
    # hashing.entries_digest over the month's entry hashes in id order, taken from the entries
    # when they were detached; verify recomputes it from their seal records.
    digest: Mapped[str] = mapped_column(String(64))


class ArchivedSum(db.Model):
    """A sum over an archived month's rows that `ledger verify` adds to what the journal still
    holds (coalition/partitions.py, ARCHIVED_SUMS): per account its postings, per lot and debt
    lot its consumptions, per claim the reversals of it, the points of the month's claims that
    later months reverse, and the runs of entry ids the month held ("ids": first -> last)."""
    __tablename__ = "archived_sums"

    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    points: Mapped[int] = mapped_column(BigInteger)


class ClosedPeriod(db.Model):
    """A month whose books are closed: claims of that month are booked into the next open one."""
    __tablename__ = "closed_periods"

    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    closed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # The sealed chain's head block hash when the month closed: the statements' anchor.
    ledger_head: Mapped[str | None] = mapped_column(String(64))


# --- tamper evidence: the sealer's chain of blocks (coalition/sealer.py) and the audit log

class LedgerBlock(db.Model):
    """A run of journal entries the sealer chained: their hashes, and the block before it."""
    __tablename__ = "ledger_blocks"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    first_entry_id: Mapped[int] = mapped_column(BigInteger)
    last_entry_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    entry_count: Mapped[int] = mapped_column(BigInteger)
    entries_hash: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)  # the chain cannot fork
    block_hash: Mapped[str] = mapped_column(String(64))
    sealed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class LedgerSeal(db.Model):
    """One row per sealed entry: the block that sealed it and the hash the entry had then. The
    block's entries_hash covers these rows, so they cannot be changed unseen either, and they
    let `verify` name the first entry that changed, vanished or appeared after sealing.
    No foreign keys: a tampered journal must still be reported on, not refuse the tampering."""
    __tablename__ = "ledger_seals"

    entry_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    block_id: Mapped[int] = mapped_column(BigInteger, index=True)
    entry_hash: Mapped[str] = mapped_column(String(64))


class AuditEvent(db.Model):
    """An operator action or security event, chained to the event before it (coalition/audit.py)."""
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))  # partner.add, partner.key.revoke, period.close, ...
    subject: Mapped[str] = mapped_column(String(200), index=True)  # partner:acme, period:2026-05, ...
    before: Mapped[str | None] = mapped_column(Text)  # canonical JSON, null if nothing existed
    after: Mapped[str | None] = mapped_column(Text)
    # Unique: two events can never follow the same one, so the chain cannot fork.
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64))


class MemberConsent(db.Model):
    """A member's marketing consent as given at a partner (PUT /v1/members/{id}/consents): one
    row per time it was given or withdrawn, never changed, so the history says who recorded
    what and when. The consent in force for a channel is its latest row (coalition/consents.py)."""
    __tablename__ = "member_consents"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    # The marketing channel the consent is about (email, sms, post, ...); "" : every channel.
    channel: Mapped[str] = mapped_column(String(64))
    marketing: Mapped[bool] = mapped_column(Boolean)
    partner_id: Mapped[str] = mapped_column(String(64))  # the partner that recorded it
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_member_consents_member_channel", "member_id", "channel", "id"),)


OPEN_HOLDS = f"status = '{HOLD_OPEN}'"  # the partial index of holds that may still reserve points


class Hold(db.Model):
    """Points a partner reserved for a redemption it captures later (coalition/holds.py), like
    a card authorisation. Not in the journal: a hold moves no points, it only keeps them from
    being available while it is open. Open means status 'open' and `expires_at` not reached: a
    hold lapses by time alone, so no sweeper has to run for its points to come free."""
    __tablename__ = "holds"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(64))
    hold_id: Mapped[str] = mapped_column(String(64))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    points: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16))  # open | captured | voided
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The capture: the burn it booked under the partner's claim id, and how many points.
    claim_id: Mapped[str | None] = mapped_column(String(64))
    captured_points: Mapped[int | None] = mapped_column(BigInteger)
    entry_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"))
    # SHA-256 of the normalised request: equal content replays, different content conflicts.
    fingerprint: Mapped[str] = mapped_column(String(64))

    member: Mapped[Member] = relationship()

    __table_args__ = (
        UniqueConstraint("partner_id", "hold_id"),
        CheckConstraint("points > 0", name="points_positive"),
        # What a member has held now: every claim's situation sums it.
        Index("ix_holds_open", "member_id", "expires_at",
              postgresql_where=text(OPEN_HOLDS), sqlite_where=text(OPEN_HOLDS)),
        # A partner's holds placed on one day (its daily redemption limit counts them).
        Index("ix_holds_partner_created", "partner_id", "created_at"),
    )


class Campaign(db.Model):
    """A time-boxed bonus on qualifying earns, and who pays for it (coalition/campaigns.py).
    Terms are fixed once added: a campaign can only be ended early, never rewritten, so that
    every bonus booked under it stays explained by what is stored here."""
    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # multiplier | fixed
    # multiplier: the earn's points times `factor` in all (2: double points, the bonus is the
    # other half); fixed: `bonus_points` on each qualifying earn.
    factor: Mapped[Decimal | None] = mapped_column(Numeric(9, 4))
    bonus_points: Mapped[int | None] = mapped_column(BigInteger)
    starts_at: Mapped[datetime] = mapped_column(UtcDateTime)  # the window: [starts_at, ends_at)
    ends_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # Targeting: JSON lists of partner ids and tier names; null: every partner, every tier.
    partners: Mapped[str | None] = mapped_column(Text)
    tiers: Mapped[str | None] = mapped_column(Text)
    segment: Mapped[str | None] = mapped_column(String(64))  # a segment's id; null: everyone
    funder_id: Mapped[str] = mapped_column(String(64))  # the issuer of the bonus lots
    cap_per_member: Mapped[int | None] = mapped_column(BigInteger)  # bonus points per member
    cap_total: Mapped[int | None] = mapped_column(BigInteger)  # bonus points in all
    awarded: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # with cap_total
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)  # ended early by the operator

    __table_args__ = (
        CheckConstraint("(kind = 'multiplier' AND factor > 1 AND bonus_points IS NULL) OR "
                        "(kind = 'fixed' AND bonus_points > 0 AND factor IS NULL)",
                        name="kind_and_value"),
        CheckConstraint("ends_at > starts_at", name="window_nonempty"),
    )


class Coupon(db.Model):
    """A bonus a member activates first, then earns once at the coupon's partner within its
    window (coalition/coupons.py), like an eCoupon. Its terms are fixed once published."""
    __tablename__ = "coupons"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(64))  # earns here qualify
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # multiplier | fixed, as a campaign's
    factor: Mapped[Decimal | None] = mapped_column(Numeric(9, 4))
    bonus_points: Mapped[int | None] = mapped_column(BigInteger)
    starts_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ends_at: Mapped[datetime] = mapped_column(UtcDateTime)
    funder_id: Mapped[str] = mapped_column(String(64))
    published_by: Mapped[str] = mapped_column(String(64))  # the partner, or "operator"
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint("(kind = 'multiplier' AND factor > 1 AND bonus_points IS NULL) OR "
                        "(kind = 'fixed' AND bonus_points > 0 AND factor IS NULL)",
                        name="kind_and_value"),
        CheckConstraint("ends_at > starts_at", name="window_nonempty"),
    )


class CouponActivation(db.Model):
    """A member's activation of a coupon: once per member and coupon. `entry_id`: the earn that
    received the coupon's bonus (a coupon gives it once)."""
    __tablename__ = "coupon_activations"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    coupon_id: Mapped[str] = mapped_column(ForeignKey("coupons.id"))
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"), index=True)
    activated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    channel: Mapped[str] = mapped_column(String(80))  # partner:<id> | portal | operator
    entry_id: Mapped[int | None] = mapped_column(ForeignKey("journal_entries.id"))

    __table_args__ = (UniqueConstraint("coupon_id", "member_id"),)


class Segment(db.Model):
    """A group of members the operator defines by a rule (coalition/segments.py), never by SQL:
    campaigns target it, and offers for it go only to members with marketing consent."""
    __tablename__ = "segments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    rule: Mapped[str] = mapped_column(String(32))  # segments.RULES
    partner_id: Mapped[str | None] = mapped_column(String(64))  # the rule's partner, if any
    days: Mapped[int] = mapped_column(Integer)  # the rule's look-back window
    points: Mapped[int | None] = mapped_column(BigInteger)  # the rule's threshold, if any
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


# --- sign-in for the member portal and the operator console (coalition/credentials.py)

class Credential(db.Model):
    """One principal's sign-in: its password hash, the one-time code that sets it, and the
    count of wrong passwords that locks it out for a while. Keyed by the principal as stored:
    member-id:<members.id> (never the card number, which stays in `members`; erasure deletes
    the row) or operator:<operators.name>. Neither secret is ever stored in clear."""
    __tablename__ = "credentials"

    principal: Mapped[str] = mapped_column(String(96), primary_key=True)
    # "scrypt$ln=..,r=..,p=..$salt$key"; NULL until the principal sets a password with a code.
    password_hash: Mapped[str | None] = mapped_column(String(160))
    # Wrong passwords in a row; from the fifth on each one locks sign-in until locked_until.
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # HMAC-SHA256 (hex) of the pending one-time code, and when it stops working.
    code_hash: Mapped[str | None] = mapped_column(String(64))
    code_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        CheckConstraint("failures >= 0", name="failures_nonnegative"),
        CheckConstraint("(code_hash IS NULL) = (code_expires_at IS NULL)", name="code_with_expiry"),
    )


class Operator(db.Model):
    """A person who runs the coalition through the operator console (coalition/operators.py)."""
    __tablename__ = "operators"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # operators.ROLES
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (CheckConstraint("role IN ('admin', 'analyst')", name="role_known"),)


class LeaderLease(db.Model):
    """Who runs a job that must run once across every process and host (coalition/leases.py):
    the sealer beside each app instance seals only while it holds the lease "sealer". A row in
    a table, not a session advisory lock: pgbouncer in transaction mode hands each transaction
    another server connection, and the row is replicated, so a promoted standby knows it too."""
    __tablename__ = "leader_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
