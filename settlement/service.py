"""Closing a month into final statements (docs/settlement.md), reading them back, and
re-deriving them for `ledger verify`.

Every number is an aggregate over the journal of that month: entries booked into it, and
the consumption records of those entries, which say whose points every burn and debt fill
took. The arithmetic from those aggregates to the documents is in settlement/statements.py.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coalition import audit, books, sealer
from coalition.database import is_sqlite
from coalition.clock import iso_utc
from coalition.hashing import canonical, entries_digest, sha256_hex
from coalition.models import ArchivedPeriod, ClosedPeriod, Consumption, DebtLot, Entry, Lot, Posting
from coalition.problems import Problem
from coalition.vocabulary import FUNDING, Account, ConsumptionKind, EntryKind, lot_since
from partners.service import partner_ids, terms_in_force

from . import signing, statements
from .models import CoalitionReport, Statement
from .statements import Flows


def month_flows(session: Session, period: str) -> Flows:
    flows = Flows()
    for partner, late, count in session.execute(
            select(Entry.partner_id, Entry.late, func.count(Entry.id))
            .where(Entry.period == period, Entry.partner_id.is_not(None))
            .group_by(Entry.partner_id, Entry.late)):
        flows.claims[partner] += count
        flows.late[partner] += count if late else 0
    # Points issued and redeemed, net of their reversals, are what the month's entries posted
    # to issued:<partner> (an earn -points, its reversal +points) and redeemed:<partner> (a
    # burn +points, its reversal -points); ledger verify holds every entry to that shape.
    # Read from the postings rather than by joining each reversal to the claim it reverses,
    # which on the partitioned journal (migration 0026) would read every month's partition.
    for account, points in session.execute(
            select(Posting.account, func.sum(Posting.points))
            .join(Entry, (Entry.id == Posting.entry_id) & (Entry.period == Posting.period))
            .where(Entry.period == period, Posting.period == period,
                   Posting.account.startswith(Account.ISSUED, autoescape=True)
                   | Posting.account.startswith(Account.REDEEMED, autoescape=True))
            .group_by(Posting.account)):
        if account.startswith(Account.ISSUED):
            flows.issued[account.removeprefix(Account.ISSUED)] -= int(points)
        else:
            flows.redeemed[account.removeprefix(Account.REDEEMED)] += int(points)
    for kind, issuer, redeemer, creditor, points in session.execute(
            select(Consumption.kind, Lot.issuer_id, Entry.partner_id, DebtLot.creditor_id,
                   func.sum(Consumption.points))
            .join(Entry, (Entry.id == Consumption.entry_id) & (Entry.period == Consumption.period))
            # lot_since: on PostgreSQL the lots of the month's consumptions are looked up in
            # the open lots and those used up since (migration 0027), not in every month's.
            .join(Lot, (Lot.id == Consumption.lot_id) & lot_since(Lot, period))
            .outerjoin(DebtLot, DebtLot.id == Consumption.debt_lot_id)
            # Consumption.period too: on PostgreSQL it prunes the consumptions to the month's
            # partition before the join (the entry's period, migration 0026).
            .where(Entry.period == period, Consumption.period == period,
                   Consumption.kind.in_((*FUNDING, ConsumptionKind.EXPIRY)))
            .group_by(Consumption.kind, Lot.issuer_id, Entry.partner_id, DebtLot.creditor_id)):
        points = int(points)
        if kind == ConsumptionKind.EXPIRY:
            flows.expired[issuer] += points
            continue
        flows.funded[issuer] += points  # a debt fill redeems the filling issuer's points too
        if kind == ConsumptionKind.DEBT_FILL:
            flows.recovered[creditor] += points
        else:
            flows.matrix[issuer, redeemer] += points
    # Bonus points by funder: an earn's bonus posts bonus:<funder> -points, a reversal gives
    # back +points, so the funder's bonus_points_issued is minus their sum.
    for account, points in session.execute(
            select(Posting.account, func.sum(Posting.points))
            .join(Entry, Entry.id == Posting.entry_id)
            .where(Entry.period == period, Posting.period == period,
                   Posting.account.startswith(Account.BONUS, autoescape=True))
            .group_by(Posting.account)):
        flows.bonus[account.removeprefix(Account.BONUS)] -= int(points)
    flows.anchor = month_anchor(session, period)
    return flows


ANCHOR_BATCH = 10_000  # entry hashes held at a time while the anchor is taken


def month_anchor(session: Session, period: str) -> str:
    """entries_digest over the month's entry hashes in booking (id) order, streamed: a month
    can hold millions of entries, and a close must not hold them all in memory at once. On
    PostgreSQL through the driver's server-side cursor in the session's transaction (an ORM
    result costs about twice the time per row for this one column)."""
    query = select(Entry.entry_hash).where(Entry.period == period).order_by(Entry.id)
    if is_sqlite(session):
        return entries_digest(session.scalars(query.execution_options(yield_per=ANCHOR_BATCH)))
    compiled = query.compile(dialect=session.get_bind().dialect)
    driver = session.connection().connection.driver_connection
    digest = hashlib.sha256()
    with driver.cursor(name="month_anchor") as cursor:
        cursor.execute(str(compiled), compiled.params)
        # A batch's hashes decoded at once: the same bytes entries_digest hashes, in a third
        # of the time of a row at a time.
        while rows := cursor.fetchmany(ANCHOR_BATCH):
            digest.update(bytes.fromhex("".join([entry_hash for (entry_hash,) in rows])))
    return digest.hexdigest()


def derive(session: Session, period: str, closed_at: datetime, partners: list[str],
           version: int) -> tuple[dict, dict]:
    """Statements and coalition report of a month, as documents of `version`."""
    flows = month_flows(session, period)
    stamp = iso_utc(closed_at)
    head = session.get(ClosedPeriod, period).ledger_head
    # Every issuer with points expired and every funder with bonus points is priced, a
    # partner without a statement too: a month whose statement row went missing must still
    # re-derive (and be reported), not fail.
    terms = {p: terms_in_force(session, p, period)
             for p in {*partners, *flows.expired, *flows.bonus}}
    docs = {p: statements.statement_of(p, period, stamp, terms[p], flows, partners, head, version)
            for p in partners}
    digests = {p: sha256_hex(canonical(doc)) for p, doc in docs.items()}
    prices = {p: t["issue_price"] for p, t in terms.items()}
    return docs, statements.report_of(period, stamp, docs, digests, flows, head, version, prices)


def close(session: Session, period: str, *, now: datetime, tz: str, key,
          actor: str = audit.SYSTEM) -> dict:
    closed = books.close_books(session, period, now=now, tz=tz)
    # The books lock is held exclusively: no claim is in flight, so everything booked can be
    # sealed now, and the statements anchor to a head that covers the whole month.
    sealer.seal(session, now=now, upto=sealer.last_entry_id(session))
    closed.ledger_head = sealer.head_hash(session)
    session.flush()
    signing.for_signing(session, key, now=now)
    docs, report = derive(session, period, closed.closed_at, partner_ids(session), statements.CURRENT)
    for partner, doc in docs.items():
        body = canonical(doc)
        kid, signature = signing.sign(key, body)
        session.add(Statement(period=period, partner_id=partner, document=body.decode(),
                              digest=sha256_hex(body), signature=signature,
                              kid=kid, net_cents=doc["net_cents"], created_at=now))
    body = canonical(report)
    kid, signature = signing.sign(key, body)
    digest = sha256_hex(body)
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


@dataclass(frozen=True)
class Listed:
    """One closed statement in a partner's listing."""
    period: str
    net_cents: int
    digest: str


def statements_of(session: Session, partner_id: str) -> list[Listed]:
    """Read from the signed documents, not from the columns beside them: a column changed
    behind the service's back must not change what a partner is told."""
    listed = []
    for document in session.scalars(select(Statement.document)
                                    .where(Statement.partner_id == partner_id)
                                    .order_by(Statement.period)):
        doc = json.loads(document)
        listed.append(Listed(doc["period"], doc["net_cents"], sha256_hex(document.encode())))
    return listed


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


def closed_version(rows: list) -> int:
    """The document version a month was closed with, from what it stored: the report first,
    then any statement. A month is re-derived in its own version, so a later format never
    breaks the re-derivation of a month closed before it."""
    for row in rows:
        try:
            version = statements.version_of(json.loads(row.document))
        except (ValueError, TypeError, AttributeError):
            continue  # a row too damaged to say; the byte comparison reports it
        if version is not None:
            return version
    return statements.CURRENT


def check_closed_periods(session: Session, fail, key) -> int:
    """For `ledger verify`: every closed month re-derives byte for byte, in the version it was
    closed with; every signature holds under the key its kid names (`key`: the key file's,
    published even if unregistered); and the net_cents column of every statement, which only
    serves queries, says what its document says. A kid the coalition never published, or one it
    retired, is a violation, never skipped."""
    by_kid = {k.kid: k for k in signing.keys(session, key)}
    archived = set(session.scalars(select(ArchivedPeriod.period)))
    count = 0
    for closed in session.scalars(select(ClosedPeriod).order_by(ClosedPeriod.period)):
        rows = {s.partner_id: s for s in session.scalars(
            select(Statement).where(Statement.period == closed.period))}
        stored_report = session.get(CoalitionReport, closed.period)
        if closed.period in archived:
            count += _check_archived(closed.period, rows, stored_report, by_kid, fail)
            continue
        version = closed_version([r for r in (stored_report, *rows.values()) if r is not None])
        docs, report_doc = derive(session, closed.period, closed.closed_at, sorted(rows), version)
        pairs = [(f"statement {closed.period} {p}", rows[p], canonical(docs[p])) for p in rows]
        pairs.append((f"coalition report {closed.period}", stored_report, canonical(report_doc)))
        for name, row, derived in pairs:
            count += 1
            if row is None:
                fail("statement-missing", f"{name} is missing")
            elif row.document.encode() != derived or row.digest != sha256_hex(derived):
                fail("statement-digest", f"{name} does not re-derive from the journal")
            elif (wrong := signing.check(by_kid, row.kid, row.document.encode(), row.signature)):
                fail(wrong[0], f"{name} {wrong[1]}")
        for p, row in rows.items():
            if row.net_cents != docs[p]["net_cents"]:
                fail("statement-column", f"statement {closed.period} {p}: the net_cents column says "
                     f"{row.net_cents}, the signed statement {docs[p]['net_cents']}")
    return count


def _check_archived(period: str, rows: dict, stored_report, by_kid, fail) -> int:
    """A month whose journal rows were detached (coalition/partitions.py) cannot be derived
    again: its statements must still be what was signed (document, digest, signature, net_cents
    column), and the chain's check of the month's entries is ledger verify's."""
    documents = [(f"statement {period} {p}", row) for p, row in rows.items()]
    documents.append((f"coalition report {period}", stored_report))
    for name, row in documents:
        if row is None:
            fail("statement-missing", f"{name} is missing")
        elif row.digest != sha256_hex(row.document.encode()):
            fail("statement-digest", f"{name} is not the document its digest was taken of")
        elif (wrong := signing.check(by_kid, row.kid, row.document.encode(), row.signature)):
            fail(wrong[0], f"{name} {wrong[1]}")
    for p, row in rows.items():
        signed = json.loads(row.document).get("net_cents")
        if row.net_cents != signed:
            fail("statement-column", f"statement {period} {p}: the net_cents column says "
                 f"{row.net_cents}, the signed statement {signed}")
    return len(documents)
