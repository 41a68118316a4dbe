"""The ledger's words, each defined once: entry kinds, consumption kinds, account names, and
what "spendable" and "available" mean.

The rows store exactly these strings (journal_entries.kind, consumptions.kind,
postings.account), so a value here never changes: a different spelling would be a different
kind to every month already booked, to `ledger verify` and to the signed statements. The
enums are StrEnums: a member is equal to, hashes like, formats and JSON-encodes as its value.
tests/test_structure.py refuses these strings written out anywhere else in the packages.
"""
from __future__ import annotations

from enum import StrEnum

from sqlalchemy import literal_column


class EntryKind(StrEnum):
    """journal_entries.kind: what a partner's claim did, or what the coalition booked."""
    EARN = "earn"
    BURN = "burn"
    REVERSAL = "reversal"
    EXPIRY = "expiry"  # a lot's points that expired unspent (coalition/expiry.py; no partner)


# The kinds a partner claims and reconciles, in the order answers list them.
CLAIM_KINDS = (EntryKind.EARN, EntryKind.BURN, EntryKind.REVERSAL)
# What a reversal may undo: a reversal is never reversed.
REVERSIBLE = (EntryKind.EARN, EntryKind.BURN)
# A batch (POST /v1/batches) carries claims and enrolments: an item's `kind` is one of these.
ENROLMENT = "enrolment"
BATCH_KINDS = (*CLAIM_KINDS, ENROLMENT)


class ConsumptionKind(StrEnum):
    """consumptions.kind: what an entry took from (points > 0) or gave back to (< 0) a lot."""
    BURN = "burn"  # a burn spent the lot's points
    BURN_REVERSAL = "burn_reversal"  # a burn's reversal gave them back
    EARN_REVERSAL = "earn_reversal"  # an earn's reversal took back what was left of its lot
    DEBT_FILL = "debt_fill"  # a new earn's points paid off a debt lot
    EXPIRY = "expiry"  # points that expired unspent (an expiry entry took them: coalition/expiry.py)


# What funds a redemption: the uses of an issuer's points that its statement charges it for.
FUNDING = (ConsumptionKind.BURN, ConsumptionKind.BURN_REVERSAL, ConsumptionKind.DEBT_FILL)


class Account(StrEnum):
    """postings.account. Four accounts exist once per member or partner: their names are a
    prefix and the id (member_account, issued_account, bonus_account, redeemed_account)."""
    MEMBER = "member:"  # + members.id: the member's points (= its lots' remaining)
    ISSUED = "issued:"  # + partner id: points the partner issued (negative), less reversals
    # + funder id: bonus points (campaigns, coupons, tiers) the funder issued on earns
    # (negative), less what reversals took back; the partner's own points stay on issued:
    BONUS = "bonus:"
    REDEEMED = "redeemed:"  # + partner id: points redeemed at the partner
    DEBT = "debt"  # points members owe after an earn was reversed once spent
    EXPIRED = "expired"  # points that expired unspent


def member_account(member_pk: int) -> str:
    return f"{Account.MEMBER}{member_pk}"


def issued_account(partner_id: str) -> str:
    return f"{Account.ISSUED}{partner_id}"


def bonus_account(funder_id: str) -> str:
    return f"{Account.BONUS}{funder_id}"


def redeemed_account(partner_id: str) -> str:
    return f"{Account.REDEEMED}{partner_id}"


# --- spendable and available ----------------------------------------------------------------

def unspent(lot, now):
    """The SQL condition on `lot` (the Lot model, or an alias of it) for a lot that still
    holds points at `now`: not used up and not expired. Unspent points are spendable or
    pending."""
    # 0 written into the statement, not bound: a prepared statement's generic plan can then
    # use the partial index on lots that still hold points (migration 0012).
    # The open lots' partition by name, written into the statement for the same reason: on
    # PostgreSQL the plan then reads that one partition of lots (migration 0027).
    return (lot.remaining > literal_column("0")) & (lot.expires_at > now) & holding(lot)


def holding(lot):
    """The SQL condition on `lot` for a lot that still holds points, expired or not: on
    PostgreSQL it names the one partition of lots that holds them (migration 0027)."""
    return lot.spent_period == literal_column(f"'{LOT_OPEN}'")


def lot_since(lot, period):
    """The SQL condition on `lot` for a lot that an entry of month `period` (or a later one)
    changed, or made: open, or used up in that month or later, since a lot's spent_period is
    the latest month of the entries that changed it. On PostgreSQL it spares a lookup by entry
    or lot id the partitions of the months before (migration 0027)."""
    return holding(lot) | (lot.spent_period >= period)


def spendable(lot, now):
    """The SQL condition for a lot whose points a member can spend at `now`: unspent, and no
    longer pending (an earn with pending_until holds its points back until then)."""
    return unspent(lot, now) & (lot.available_at.is_(None) | (lot.available_at <= now))


def held_now(hold, now):
    """The SQL condition on `hold` (the Hold model) for a hold whose points are reserved at
    `now`: neither captured nor voided, and not lapsed (a hold lapses by time alone)."""
    # A literal, not a bind parameter: the partial index ix_holds_open stays usable.
    return (hold.status == literal_column(f"'{HOLD_OPEN}'")) & (hold.expires_at > now)


HOLD_OPEN = "open"  # holds.status of a hold not yet captured or voided
LOT_OPEN = "open"  # lots.spent_period of a lot that still holds points


def available(spendable_points: int, debt: int, held: int = 0) -> int:
    """What a member has available: spendable points net of debt and of the points open holds
    reserve (negative while a debt is unpaid). A burn may take at most this; balances answer
    it as `available`."""
    return spendable_points - debt - held


# --- bounds of the partner contract ---------------------------------------------------------

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"  # claim, member and partner ids
MAX_POINTS = 10**9  # points of one claim
