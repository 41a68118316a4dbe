"""Closing a month into final statements (DESIGN.md, "Periods and statements").

Every number is an aggregate over the journal of that month: entries booked into it, and
the consumption records of those entries, which say whose points every burn and debt fill
took. Money lines are rounded once each, half up, to cents.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased

from coalition import audit, books, sealer
from coalition.errors import Problem
from coalition.fields import iso_utc
from coalition.hashing import canonical
from coalition.models import ClosedPeriod, Consumption, DebtLot, Entry, Lot
from partners.models import Partner
from partners.service import terms_in_force

from . import signing
from .models import CoalitionReport, Statement

MONEY_LINES = ("issuance_charge_cents", "redemption_funding_charge_cents",
               "redemption_reimbursement_cents", "fees_cents", "debt_recovery_credit_cents")


def cents(points: int, *factors: Decimal) -> int:
    amount = Decimal(points) * 100
    for factor in factors:
        amount *= factor
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass
class Flows:
    """What happened in one month, per partner, in points."""
    claims: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    late: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    issued: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    redeemed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    funded: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by issuer
    recovered: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by creditor
    expired: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by issuer
    matrix: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    anchor: str = ""


def month_flows(session: Session, period: str) -> Flows:
    flows = Flows()
    target = aliased(Entry)
    for partner, kind, target_kind, late, count, points in session.execute(
            select(Entry.partner_id, Entry.kind, target.kind, Entry.late,
                   func.count(Entry.id), func.sum(Entry.points))
            .outerjoin(target, target.id == Entry.reverses_id)
            .where(Entry.period == period, Entry.partner_id.is_not(None))
            .group_by(Entry.partner_id, Entry.kind, target.kind, Entry.late)):
        flows.claims[partner] += count
        flows.late[partner] += count if late else 0
        points = int(points)
        if kind == "earn" or (kind == "reversal" and target_kind == "earn"):
            flows.issued[partner] += points if kind == "earn" else -points
        elif kind == "burn" or (kind == "reversal" and target_kind == "burn"):
            flows.redeemed[partner] += points if kind == "burn" else -points
    for kind, issuer, redeemer, creditor, points in session.execute(
            select(Consumption.kind, Lot.issuer_id, Entry.partner_id, DebtLot.creditor_id,
                   func.sum(Consumption.points))
            .join(Entry, Entry.id == Consumption.entry_id).join(Lot, Lot.id == Consumption.lot_id)
            .outerjoin(DebtLot, DebtLot.id == Consumption.debt_lot_id)
            .where(Entry.period == period,
                   Consumption.kind.in_(("burn", "burn_reversal", "debt_fill", "expiry")))
            .group_by(Consumption.kind, Lot.issuer_id, Entry.partner_id, DebtLot.creditor_id)):
        points = int(points)
        if kind == "expiry":
            flows.expired[issuer] += points
            continue
        flows.funded[issuer] += points  # a debt fill redeems the filling issuer's points too
        if kind == "debt_fill":
            flows.recovered[creditor] += points
        else:
            flows.matrix[issuer, redeemer] += points
    hashes = session.scalars(select(Entry.entry_hash).where(Entry.period == period).order_by(Entry.id))
    digest = hashlib.sha256()
    for entry_hash in hashes:
        digest.update(bytes.fromhex(entry_hash))
    flows.anchor = digest.hexdigest()
    return flows


def statement_of(partner: str, period: str, closed_at: str, terms: dict[str, Decimal],
                 flows: Flows, partners: list[str], ledger_head: str | None) -> dict:
    price, share = terms["issue_price"], terms["issuance_share"]
    doc = {
        "type": "coalition-statement/v1", "period": period, "partner_id": partner,
        "currency": "EUR", "closed_at": closed_at,
        "terms": {name: format(value, "f") for name, value in terms.items()},
        "claims": flows.claims[partner], "late_claims": flows.late[partner],
        "points_issued": flows.issued[partner], "points_redeemed": flows.redeemed[partner],
        "points_expired": flows.expired[partner],
        "points_funded": flows.funded[partner], "points_debt_recovered": flows.recovered[partner],
        "issuance_charge_cents": cents(flows.issued[partner], price, share),
        "redemption_funding_charge_cents": cents(flows.funded[partner], price, 1 - share),
        "redemption_reimbursement_cents": cents(flows.redeemed[partner], terms["redemption_rate"]),
        "fees_cents": cents(flows.claims[partner], terms["claim_fee"]),
        "debt_recovery_credit_cents": cents(flows.recovered[partner], price, 1 - share),
        "counterparties": [
            {"partner_id": other,
             "issued_by_them_redeemed_here": flows.matrix[other, partner],
             "issued_here_redeemed_there": flows.matrix[partner, other]}
            for other in partners
            if other != partner and (flows.matrix[other, partner] or flows.matrix[partner, other])],
        "ledger_anchor": flows.anchor, "ledger_head": ledger_head,
    }
    doc["net_cents"] = (doc["redemption_reimbursement_cents"] + doc["debt_recovery_credit_cents"]
                        - doc["issuance_charge_cents"] - doc["redemption_funding_charge_cents"]
                        - doc["fees_cents"])
    return doc


def report_of(period: str, closed_at: str, statements: dict[str, dict], digests: dict[str, str],
              flows: Flows, ledger_head: str | None) -> dict:
    nets = {p: s["net_cents"] for p, s in statements.items()}
    gross = sum(1 for s in statements.values() for line in MONEY_LINES if s[line])
    net_payments = sum(1 for n in nets.values() if n)
    return {
        "type": "coalition-report/v1", "period": period, "currency": "EUR", "closed_at": closed_at,
        "statements": [{"partner_id": p, "net_cents": nets[p], "digest": digests[p]}
                       for p in sorted(statements)],
        "matrix": [{"issuer": i, "redeemer": r, "points": n}
                   for (i, r), n in sorted(flows.matrix.items()) if n],
        "totals": {"points_issued": sum(flows.issued.values()),
                   "points_redeemed": sum(flows.redeemed.values()),
                   "points_expired": sum(flows.expired.values())},
        "operator_margin_cents": -sum(nets.values()),
        "payments": {"gross_obligations": gross, "net_payments": net_payments,
                     "saved": gross - net_payments},
        "ledger_anchor": flows.anchor, "ledger_head": ledger_head,
    }


def derive(session: Session, period: str, closed_at: datetime, partners: list[str]) -> tuple[dict, dict]:
    """Statements and coalition report of a month, as canonical documents."""
    flows = month_flows(session, period)
    stamp = iso_utc(closed_at)
    head = session.get(ClosedPeriod, period).ledger_head
    statements = {p: statement_of(p, period, stamp, terms_in_force(session, p, period), flows,
                                  partners, head) for p in partners}
    digests = {p: hashlib.sha256(canonical(doc)).hexdigest() for p, doc in statements.items()}
    return statements, report_of(period, stamp, statements, digests, flows, head)


def close(session: Session, period: str, *, now: datetime, tz: str, key,
          actor: str = audit.SYSTEM) -> dict:
    closed = books.close_books(session, period, now=now, tz=tz)
    # The books lock is held exclusively: no claim is in flight, so everything booked can be
    # sealed now, and the statements anchor to a head that covers the whole month.
    sealer.seal(session, now=now, upto=sealer.last_entry_id(session))
    closed.ledger_head = sealer.head_hash(session)
    session.flush()
    signing.for_signing(session, key, now=now)
    partners = sorted(session.scalars(select(Partner.id)))
    statements, report = derive(session, period, closed.closed_at, partners)
    for partner, doc in statements.items():
        body = canonical(doc)
        kid, signature = signing.sign(key, body)
        session.add(Statement(period=period, partner_id=partner, document=body.decode(),
                              digest=hashlib.sha256(body).hexdigest(), signature=signature,
                              kid=kid, net_cents=doc["net_cents"], created_at=now))
    body = canonical(report)
    kid, signature = signing.sign(key, body)
    digest = hashlib.sha256(body).hexdigest()
    session.add(CoalitionReport(period=period, document=body.decode(), kid=kid,
                                digest=digest, signature=signature))
    session.flush()
    audit.record(session, actor=actor, action="period.close", subject=f"period:{period}",
                 before=None, after={"report_digest": digest, "ledger_anchor": report["ledger_anchor"],
                                     "net_cents": {s["partner_id"]: s["net_cents"] for s in report["statements"]},
                                     "operator_margin_cents": report["operator_margin_cents"]},
                 now=now)
    return report


def signed(row) -> dict:
    return {"document": json.loads(row.document), "digest": row.digest,
            "signature": {"alg": "EdDSA", "kid": row.kid, "value": row.signature}}


def statements_of(session: Session, partner_id: str) -> list[Statement]:
    return list(session.scalars(select(Statement).where(Statement.partner_id == partner_id)
                                .order_by(Statement.period)))


def statement(session: Session, partner_id: str, period: str) -> Statement:
    row = session.get(Statement, (period, partner_id))
    if row is None:
        raise Problem("not-found", f"No statement for {period}.")
    return row


def report(session: Session, period: str) -> CoalitionReport:
    books.parse_period(period)
    row = session.get(CoalitionReport, period)
    if row is None:
        raise Problem("period-open", f"{period} is not closed.")
    return row


def check_closed_periods(session: Session, fail, key) -> int:
    """For `ledger verify`: every closed month re-derives byte for byte, and every signature
    holds under the key its kid names (`key`: the key file's, published even if unregistered).
    A kid the coalition never published, or one it retired, is a violation, never skipped."""
    by_kid = {k.kid: k for k in signing.keys(session, key)}
    count = 0
    for closed in session.scalars(select(ClosedPeriod).order_by(ClosedPeriod.period)):
        rows = {s.partner_id: s for s in session.scalars(
            select(Statement).where(Statement.period == closed.period))}
        statements, report_doc = derive(session, closed.period, closed.closed_at, sorted(rows))
        stored_report = session.get(CoalitionReport, closed.period)
        pairs = [(f"statement {closed.period} {p}", rows[p], canonical(statements[p])) for p in rows]
        pairs.append((f"coalition report {closed.period}", stored_report, canonical(report_doc)))
        for name, row, derived in pairs:
            count += 1
            if row is None:
                fail("statement-missing", f"{name} is missing")
            elif row.document.encode() != derived or row.digest != hashlib.sha256(derived).hexdigest():
                fail("statement-digest", f"{name} does not re-derive from the journal")
            elif (wrong := signing.check(by_kid, row.kid, row.document.encode(), row.signature)):
                fail(wrong[0], f"{name} {wrong[1]}")
    return count
