"""`ledger verify`: re-derive everything from the journal and report every disagreement.

The journal (entries and postings) is the record; member balances, lots, debt lots and
consumptions are derived state. Each check re-derives one of them and names what differs.
"""
from __future__ import annotations

from collections import defaultdict
from itertools import groupby

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import partitions
from .holds import CAPTURED
from .ledger import entry_hash
from .models import Consumption, DebtLot, Entry, Hold, Lot, Member, Posting
from .vocabulary import (LOT_OPEN, Account, ConsumptionKind, EntryKind, bonus_account,
                         issued_account, member_account, redeemed_account)

MAX_REPORTED = 50


class Report:
    def __init__(self) -> None:
        self.violations: list[dict] = []
        self.counts: dict[str, int] = defaultdict(int)

    def fail(self, check: str, detail: str, **ids) -> None:
        self.counts[check] += 1
        if self.counts[check] <= MAX_REPORTED:
            self.violations.append({"check": check, "detail": detail, **ids})

    def as_dict(self, checked: dict) -> dict:
        return {"ok": not self.violations, "checked": checked,
                "violations_by_check": dict(self.counts), "violations": self.violations}


def verify(session: Session, extra_checks: dict | None = None) -> dict:
    """`extra_checks`: name -> fn(session, fail) returning how many items it checked; this is
    how settlement adds its statements without the core importing it."""
    session.expire_all()  # verify what the database holds, not what this session remembers
    report = Report()
    # Months detached from the journal (coalition/partitions.py): their sums stand in for
    # their rows, their entries for the chain by their seal records (sealer.verify_chain).
    archived = partitions.archived(session)
    entries = _verify_entries(session, report, archived)
    _verify_members(session, report, archived)
    lots = _verify_lots(session, report, archived)
    checked = {"entries": entries, "lots": lots,
               "holds": _verify_holds(session, report, archived),
               "members": session.scalar(select(func.count(Member.id)))}
    if archived.periods:
        checked["archived_periods"] = len(archived.periods)
    for name, check in (extra_checks or {}).items():
        checked[name] = check(session, report.fail)
    return report.as_dict(checked)


def _sums(session: Session, key, value, *where) -> dict:
    return {k: int(v) for k, v in session.execute(
        select(key, func.sum(value)).where(*where).group_by(key)).all()}


def _verify_entries(session: Session, report: Report, archived: partitions.Archived) -> int:
    consumed = defaultdict(int)  # (entry_id, kind) -> points
    for entry_id, kind, points in session.execute(
            select(Consumption.entry_id, Consumption.kind, func.sum(Consumption.points))
            .group_by(Consumption.entry_id, Consumption.kind)):
        consumed[entry_id, kind] = int(points)
    debts = _sums(session, DebtLot.entry_id, DebtLot.points)
    reversed_total = _sums(session, Entry.reverses_id, Entry.points, Entry.reverses_id.is_not(None))
    kinds = dict(session.execute(select(Entry.id, Entry.kind)).all())
    for target, (kind, _points) in archived.sums["target"].items():
        kinds.setdefault(int(target), kind)

    rows = session.execute(select(Entry, Posting.account, Posting.points)
                           .outerjoin(Posting, Posting.entry_id == Entry.id)
                           .order_by(Entry.id)).yield_per(2000)
    count = 0
    for entry, group in groupby(rows, key=lambda r: r[0]):
        count += 1
        postings = {account: points for _, account, points in group if account is not None}
        ref = {"entry_id": entry.id, "claim_id": entry.claim_id, "partner_id": entry.partner_id}
        if not postings or sum(postings.values()) != 0:
            report.fail("entry-balanced", f"postings sum to {sum(postings.values())}", **ref)
        if entry_hash(entry, postings) != entry.entry_hash:
            report.fail("entry-hash", "entry or postings differ from what was hashed", **ref)
        member = postings.get(member_account(entry.member_id), 0)
        bonus = sum(p for a, p in postings.items() if a.startswith(Account.BONUS))
        issued, redeemed = issued_account(entry.partner_id), redeemed_account(entry.partner_id)
        e = entry.id
        target_kind = kinds.get(entry.reverses_id)
        filled = consumed[e, ConsumptionKind.DEBT_FILL]
        expected = {
            EntryKind.EARN: (postings.get(issued) == -entry.points and bonus <= 0
                             and postings.get(Account.DEBT, 0) == filled
                             and member == entry.points - bonus - filled),
            EntryKind.BURN: (postings.get(redeemed) == entry.points and member == -entry.points
                             and consumed[e, ConsumptionKind.BURN] == entry.points),
            EntryKind.EXPIRY: (postings.get(Account.EXPIRED) == entry.points
                               and member == -entry.points and len(postings) == 2
                               and consumed[e, ConsumptionKind.EXPIRY] == entry.points),
        }.get(entry.kind)
        if entry.kind == EntryKind.REVERSAL and target_kind == EntryKind.EARN:
            # Expired points of the lot come back from breakage (expiry consumption < 0).
            taken, owed = consumed[e, ConsumptionKind.EARN_REVERSAL], debts.get(e, 0)
            unexpired = -consumed[e, ConsumptionKind.EXPIRY]
            # The bonus lots give back their share too (posted back to their funders).
            expected = (postings.get(issued) == entry.points and bonus >= 0
                        and taken + owed == entry.points + bonus
                        and unexpired >= 0 and member == -(taken - unexpired)
                        and postings.get(Account.DEBT, 0) == -owed
                        and postings.get(Account.EXPIRED, 0) == -unexpired)
        elif entry.kind == EntryKind.REVERSAL and target_kind == EntryKind.BURN:
            # Points back to a lot whose earn was reversed into debt pay that debt first.
            expected = (postings.get(redeemed) == -entry.points
                        and member == entry.points - filled
                        and postings.get(Account.DEBT, 0) == filled
                        and consumed[e, ConsumptionKind.BURN_REVERSAL] == -entry.points)
        if not expected:
            report.fail("entry-shape", f"{entry.kind} postings or consumptions do not match its points", **ref)
    for target, total in reversed_total.items():
        total += archived.sum("reversed", target)
        entry = session.get(Entry, target)
        if entry is None and archived.target(target) is None:
            report.fail("reversal-total", "reverses a claim the journal does not hold",
                        entry_id=target)
            continue
        points = entry.points if entry is not None else archived.target(target)[1]
        if total > points:
            report.fail("reversal-total", f"reversals total {total} of a {points}-point claim",
                        entry_id=target)
    return count


def _verify_members(session: Session, report: Report, archived: partitions.Archived) -> None:
    accounts = _sums(session, Posting.account, Posting.points,
                     Posting.account.like(f"{Account.MEMBER}%"))
    for account, points in archived.sums["account"].items():
        if account.startswith(Account.MEMBER):
            accounts[account] = accounts.get(account, 0) + points
    lots = _sums(session, Lot.member_id, Lot.remaining)
    debts = _sums(session, DebtLot.member_id, DebtLot.remaining)
    total_debt = 0
    for member_id, balance, debt in session.execute(select(Member.id, Member.balance, Member.debt)):
        total_debt += debt
        posted = accounts.pop(member_account(member_id), 0)
        if not balance == posted == lots.get(member_id, 0):
            report.fail("member-balance", f"stored {balance}, postings {posted}, "
                        f"lots {lots.get(member_id, 0)}", member=member_id)
        if debt != debts.get(member_id, 0):
            report.fail("member-debt", f"stored {debt}, debt lots {debts.get(member_id, 0)}",
                        member=member_id)
        if balance < 0 or debt < 0:
            report.fail("member-negative", f"balance {balance}, debt {debt}", member=member_id)
    for account in accounts:
        report.fail("member-balance", f"postings to {account}, which has no member row")
    debt_account = session.scalar(select(func.coalesce(func.sum(Posting.points), 0))
                                  .where(Posting.account == Account.DEBT))
    debt_account = int(debt_account) + archived.sum("account", Account.DEBT)
    if debt_account != -total_debt:
        report.fail("debt-account", f"account debt is {debt_account}, members owe {total_debt}")


def _verify_lots(session: Session, report: Report, archived: partitions.Archived) -> int:
    used = _sums(session, Consumption.lot_id, Consumption.points)
    filled = _sums(session, Consumption.debt_lot_id, Consumption.points,
                   Consumption.debt_lot_id.is_not(None))
    for kind, sums in (("lot", used), ("debt_lot", filled)):
        for key, points in archived.sums[kind].items():
            sums[int(key)] = sums.get(int(key), 0) + points
    # An earn's bonus lots, per funder, hold what it posted to the funder's bonus account.
    posted = {(e, account): -int(p) for e, account, p in session.execute(
        select(Posting.entry_id, Posting.account, Posting.points).join(Entry, Entry.id == Posting.entry_id)
        .where(Entry.kind == EntryKind.EARN, Posting.account.like(f"{Account.BONUS}%")))}
    bonus_lots = defaultdict(int)
    # The latest month each lot was consumed in, which its last_period must reach: settlement
    # finds a month's lots by it on PostgreSQL (vocabulary.lot_since).
    touched = dict(session.execute(select(Consumption.lot_id, func.max(Consumption.period))
                                   .group_by(Consumption.lot_id)).all())
    count = 0
    for lot, kind, points, partner, member, period in session.execute(
            select(Lot, Entry.kind, Entry.points, Entry.partner_id, Entry.member_id, Entry.period)
            .outerjoin(Entry, Entry.id == Lot.entry_id)):
        count += 1
        latest = max(period or "", touched.get(lot.id, ""))
        if lot.last_period < latest or lot.spent_period != (
                LOT_OPEN if lot.remaining > 0 else lot.last_period):
            report.fail("lot-period", f"last_period {lot.last_period}, spent_period "
                        f"{lot.spent_period}, remaining {lot.remaining}, latest entry of the "
                        f"lot in {latest}", lot=lot.id)
        if kind is None:  # the earn is gone: allowed only with its archived month
            if archived.period_of(lot.entry_id) is None:
                report.fail("lot-origin", "the lot's earn is not in the journal", lot=lot.id)
        elif lot.source is not None:
            bonus_lots[lot.entry_id, bonus_account(lot.issuer_id)] += lot.points
            if (kind, member) != (EntryKind.EARN, lot.member_id) or lot.points <= 0:
                report.fail("lot-origin", "bonus lot does not match the earn that made it",
                            lot=lot.id)
        elif (kind, points, partner, member) != (EntryKind.EARN, lot.points, lot.issuer_id,
                                                 lot.member_id):
            report.fail("lot-origin", "lot does not match the earn that made it", lot=lot.id)
        if not 0 <= lot.remaining == lot.points - used.get(lot.id, 0):
            report.fail("lot-remaining", f"remaining {lot.remaining}, points {lot.points} "
                        f"less consumed {used.get(lot.id, 0)}", lot=lot.id)
    for (entry_id, account) in sorted(set(posted) | set(bonus_lots)):
        if posted.get((entry_id, account)) != bonus_lots.get((entry_id, account)):
            report.fail("lot-origin", f"the bonus lots of {account} do not hold what the earn "
                        "posted to it", entry_id=entry_id)
    own = (Lot.entry_id == Entry.id) & Lot.source.is_(None)
    missing = session.scalars(select(Entry.id).outerjoin(Lot, own)
                              .where(Entry.kind == EntryKind.EARN, Lot.id.is_(None))).all()
    for entry_id in missing:
        report.fail("lot-origin", "earn has no lot", entry_id=entry_id)
    twice = session.scalars(select(Lot.entry_id).where(Lot.source.is_(None))
                            .group_by(Lot.entry_id).having(func.count(Lot.id) > 1)).all()
    for entry_id in twice:
        report.fail("lot-origin", "earn has more than one lot of its own points", entry_id=entry_id)
    for debt in session.scalars(select(DebtLot)):
        if not 0 <= debt.remaining == debt.points - filled.get(debt.id, 0):
            report.fail("debt-lot-remaining", f"remaining {debt.remaining}, points {debt.points} "
                        f"less filled {filled.get(debt.id, 0)}", debt_lot=debt.id)
    return count


def _verify_holds(session: Session, report: Report, archived: partitions.Archived) -> int:
    """A hold moves no points: only its capture does, as a burn of the hold's partner and member,
    of no more than the hold's points, under the claim id the hold names."""
    count = 0
    for hold, entry in session.execute(select(Hold, Entry).outerjoin(Entry, Entry.id == Hold.entry_id)
                                       .order_by(Hold.id)):
        count += 1
        ref = {"hold_id": hold.hold_id, "partner_id": hold.partner_id}
        if hold.status != CAPTURED:
            if hold.entry_id is not None or hold.captured_points is not None:
                report.fail("hold-capture", f"a {hold.status} hold names a capture", **ref)
            continue
        if entry is None and hold.entry_id is not None and archived.period_of(hold.entry_id):
            continue  # its burn went with its month into the archive
        if entry is None or (entry.kind, entry.partner_id, entry.member_id, entry.claim_id,
                             entry.points) != (EntryKind.BURN, hold.partner_id, hold.member_id,
                                               hold.claim_id, hold.captured_points) \
                or not 0 < hold.captured_points <= hold.points:
            report.fail("hold-capture", "the captured hold's burn does not match it", **ref)
    return count
