"""Reconciliation: a partner's own record of a closed month against the coalition's, claim by claim.

The coalition side is the partner's entries booked into the month (a reversal is named by its
reversal_id). A closed month never changes, so the answer for an upload never changes either.
`reconcile` takes plain records; settlement/reconciliation_input.py reads them from a request.

Every answer is kept (`store`, in the transaction of the request that asked): who uploaded it
(partner:<id>, or operator:<name> for a file an operator uploaded in the console), the upload's
SHA-256 and size but not its bytes, the complete counts, and the answer as JSON. The answer is
bounded (MAX_LISTED claims per list: about 1.5 MB at most), so the row is too. Answers name
card numbers (member_id, ours and theirs): each one's SHA-256 goes into reconciliation_cards, so
that a member's erasure (`erase_card`) finds the answers to take the card out of.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, aliased

from coalition import books
from coalition.clock import iso_utc
from coalition.models import Entry, Member
from coalition.problems import Problem
from coalition.vocabulary import CLAIM_KINDS

from .models import Reconciliation, ReconciliationCard

# The same bounds as settlement/schemas.py's (tests/test_structure.py checks they agree).
MAX_RECONCILIATION_CLAIMS = 100_000
MAX_LISTED = 1000  # claims named per list of a reconciliation; its totals count them all
COMPARED = ("kind", "points", "member_id")
_IN_CHUNK = 500  # bound parameters per IN (...) lookup
FORMATS = ("json", "csv")
MAX_STORED_LISTED = 100  # stored reconciliations per page of a listing
COUNTS = ("coalition_claims", "partner_claims", "matched", "mismatched", "missing_at_partner",
          "missing_at_coalition")


def reconcile(session: Session, partner_id: str, period: str, records: list[dict]) -> dict:
    """Compare `records` (as ReconciliationUploadSchema loads them: claim_id, kind, points, and
    member_id and occurred_at when given) with what the coalition booked.

    The totals count everything; each list names at most MAX_LISTED claims, the first by
    claim_id, and `truncated` says whether any list left some out: a month of a million claims,
    or an upload of 100,000 the coalition never saw, still answers in a bounded size."""
    if not books.is_closed(session, period):  # a malformed period is a validation-error
        raise Problem("period-open", f"{period} is not closed.")
    check_bounded(records)
    theirs = _unique(records)
    ours = _coalition_side(session, partner_id, period)
    matched, mismatched = [], []
    for claim_id in sorted(ours.keys() & theirs.keys()):
        differences = _differences(ours[claim_id], theirs[claim_id])
        if differences:
            mismatched.append({"claim_id": claim_id, "differences": differences})
        else:
            matched.append(claim_id)
    missing_at_partner = sorted(ours.keys() - theirs.keys())
    absent = sorted(theirs.keys() - ours.keys())
    elsewhere = _booked_in(session, partner_id, absent[:MAX_LISTED])  # only for the claims named
    counts = {"matched": len(matched), "mismatched": len(mismatched),
              "missing_at_partner": len(missing_at_partner), "missing_at_coalition": len(absent)}
    return {
        "period": period, "partner_id": partner_id,
        "totals": {
            "coalition_claims": len(ours), "partner_claims": len(theirs), **counts,
            "coalition_points": _points_by_kind(ours.values()),
            "partner_points": _points_by_kind(theirs.values()),
        },
        "matched": matched[:MAX_LISTED], "mismatched": mismatched[:MAX_LISTED],
        "missing_at_partner": [ours[c] for c in missing_at_partner[:MAX_LISTED]],
        "missing_at_coalition": [{**theirs[c], "booked_in": elsewhere.get(c)} for c in absent[:MAX_LISTED]],
        "truncated": max(counts.values()) > MAX_LISTED,
    }


def check_bounded(claims) -> None:
    if isinstance(claims, list) and len(claims) > MAX_RECONCILIATION_CLAIMS:
        raise Problem("validation-error", "The upload has too many claims.", errors=[
            {"pointer": "/claims", "detail": f"At most {MAX_RECONCILIATION_CLAIMS} claims per upload."}])


def _unique(records: list[dict]) -> dict[str, dict]:
    by_id: dict[str, dict] = {}
    first: dict[str, int] = {}
    errors = []
    for index, record in enumerate(records):
        claim_id = record["claim_id"]
        if claim_id in first:
            errors.append({"pointer": f"/claims/{index}/claim_id",
                           "detail": f"Duplicate claim_id, first at /claims/{first[claim_id]}."})
        else:
            first[claim_id] = index
            by_id[claim_id] = record
    if errors:
        raise Problem("validation-error", "The upload lists a claim_id more than once.", errors=errors)
    return by_id


def _coalition_side(session: Session, partner_id: str, period: str) -> dict[str, dict]:
    target = aliased(Entry)
    rows = session.execute(
        select(Entry.claim_id, Entry.kind, Entry.points, Member.external_id, Entry.occurred_at,
               Entry.late, target.claim_id)
        .join(Member, Member.id == Entry.member_id)
        .outerjoin(target, target.id == Entry.reverses_id)
        .where(Entry.partner_id == partner_id, Entry.period == period, Entry.kind.in_(CLAIM_KINDS),
               Entry.claim_id.is_not(None)))
    return {claim_id: {"claim_id": claim_id, "kind": kind, "points": int(points),
                       "member_id": member, "occurred_at": occurred_at, "late": late,
                       "reverses": reverses}
            for claim_id, kind, points, member, occurred_at, late, reverses in rows}


def _differences(ours: dict, theirs: dict) -> list[dict]:
    out = []
    for name in COMPARED:
        if name not in theirs or ours[name] is None:  # not given, or the member was erased
            continue
        if ours[name] != theirs[name]:
            out.append({"field": name, "ours": ours[name], "theirs": theirs[name]})
    return out


def _booked_in(session: Session, partner_id: str, claim_ids: list[str]) -> dict[str, str]:
    """The month each of these claims of the partner was booked into, for those it has."""
    found: dict[str, str] = {}
    for start in range(0, len(claim_ids), _IN_CHUNK):
        found.update(session.execute(
            select(Entry.claim_id, Entry.period)
            .where(Entry.partner_id == partner_id, Entry.claim_id.in_(claim_ids[start:start + _IN_CHUNK]))
        ).all())
    return found


def _points_by_kind(records) -> dict[str, int]:
    totals = dict.fromkeys(CLAIM_KINDS, 0)
    for record in records:
        totals[record["kind"]] += record["points"]
    return totals


# --- Stored reconciliations ------------------------------------------------------------------

def store(session: Session, result: dict, *, fmt: str, raw: bytes, uploaded_by: str,
          now: datetime) -> Reconciliation:
    """Keep `result` (as `reconcile` answered it) in the caller's transaction (no commit), so it
    commits with the request or not at all: a failure here fails the request, the partner is
    never told a result that was not kept."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown reconciliation format {fmt!r}")
    totals = result["totals"]
    row = Reconciliation(
        partner_id=result["partner_id"], period=result["period"], uploaded_at=now,
        uploaded_by=uploaded_by, format=fmt, input_sha256=hashlib.sha256(raw).hexdigest(),
        input_bytes=len(raw), truncated=result["truncated"], result=_encoded(result),
        **{name: totals[name] for name in COUNTS})
    session.add(row)
    session.flush()
    session.add_all(ReconciliationCard(card_hash=card_hash(card), reconciliation_id=row.id)
                    for card in sorted(_cards(result)))
    return row


def stored(session: Session, period: str, *, partner_id: str | None = None,
           limit: int = MAX_STORED_LISTED, before: int | None = None) -> list[Reconciliation]:
    """The month's stored reconciliations, newest first (of one partner, if given), at most
    `limit`, those older than id `before` if given."""
    query = select(Reconciliation).where(Reconciliation.period == period)
    if partner_id is not None:
        query = query.where(Reconciliation.partner_id == partner_id)
    if before is not None:
        query = query.where(Reconciliation.id < before)
    return list(session.scalars(query.order_by(Reconciliation.id.desc()).limit(limit)))


def stored_one(session: Session, reconciliation_id: int) -> Reconciliation:
    # An id past BIGINT is no row's, and SQLite could not even bind it.
    row = session.get(Reconciliation, reconciliation_id) if 0 < reconciliation_id < 2**63 else None
    if row is None:
        raise Problem("not-found", "No such reconciliation.")
    return row


def summary(row: Reconciliation) -> dict:
    """A stored reconciliation without its lists: what a listing shows of each."""
    return {"reconciliation_id": row.id, "period": row.period, "partner_id": row.partner_id,
            "uploaded_at": row.uploaded_at, "uploaded_by": row.uploaded_by, "format": row.format,
            "input_sha256": row.input_sha256, "input_bytes": row.input_bytes,
            "totals": {name: getattr(row, name) for name in COUNTS}, "truncated": row.truncated}


def card_hash(card: str) -> str:
    return hashlib.sha256(card.encode()).hexdigest()


def erase_card(session: Session, member: Member, card: str) -> int:
    """A member's erasure (coalition/member_erasure.py, app.extensions["member_erasure"]): take
    the card out of every stored answer naming it (member_id becomes null, or is left out of a
    partner's record, as if not given) and forget its hash. Returns how many answers named it.
    The rows are locked first: two erasures of cards in the same answer must not each write back
    the other's card."""
    digest = card_hash(card)
    ids = list(session.scalars(select(ReconciliationCard.reconciliation_id)
                               .where(ReconciliationCard.card_hash == digest)))
    for start in range(0, len(ids), _IN_CHUNK):
        for row in session.scalars(select(Reconciliation)
                                   .where(Reconciliation.id.in_(ids[start:start + _IN_CHUNK]))
                                   .order_by(Reconciliation.id).with_for_update()):
            row.result = _encoded(_without_card(json.loads(row.result), card))
    session.execute(delete(ReconciliationCard).where(ReconciliationCard.card_hash == digest)
                    .execution_options(synchronize_session=False))
    session.flush()
    return len(ids)


def naming_member(session: Session, member: Member) -> list[dict]:
    """A member export's `reconciliations`: each stored answer naming the member's card, with
    the claims it names the card in (the rest of the answer is about other members)."""
    if member.external_id is None:
        return []
    card = member.external_id
    rows = session.scalars(
        select(Reconciliation).join(ReconciliationCard,
                                    ReconciliationCard.reconciliation_id == Reconciliation.id)
        .where(ReconciliationCard.card_hash == card_hash(card)).order_by(Reconciliation.id))
    return [{"partner_id": row.partner_id, "period": row.period,
             "uploaded_at": iso_utc(row.uploaded_at), "claims": _claims_naming(json.loads(row.result), card)} for row in rows]


def _claims_naming(result: dict, card: str) -> list[str]:
    named = {record["claim_id"] for key in ("missing_at_partner", "missing_at_coalition")
             for record in result[key] if record.get("member_id") == card}
    named.update(mismatch["claim_id"] for mismatch in result["mismatched"]
                 for difference in mismatch["differences"]
                 if difference["field"] == "member_id" and card in (difference["ours"], difference["theirs"]))
    return sorted(named)


def _encoded(result: dict) -> str:
    # Instants as the answer writes them (coalition/fields.py, Rfc3339).
    return json.dumps(result, separators=(",", ":"), ensure_ascii=False,
                      default=lambda value: iso_utc(value) if isinstance(value, datetime) else str(value))


def _cards(result: dict) -> set[str]:
    """Every card number the answer names: the members of the listed claims, and the member
    values of differences."""
    cards = {record.get("member_id") for key in ("missing_at_partner", "missing_at_coalition")
             for record in result[key]}
    cards.update(difference[side] for mismatch in result["mismatched"]
                 for difference in mismatch["differences"] if difference["field"] == "member_id"
                 for side in ("ours", "theirs"))
    return {card for card in cards if isinstance(card, str)}


def _without_card(result: dict, card: str) -> dict:
    for record in result["missing_at_partner"]:
        if record.get("member_id") == card:
            record["member_id"] = None  # as the coalition's record of an erased member says
    for record in result["missing_at_coalition"]:
        if record.get("member_id") == card:
            del record["member_id"]
    for mismatch in result["mismatched"]:
        for difference in mismatch["differences"]:
            if difference["field"] == "member_id":
                for side in ("ours", "theirs"):
                    if difference[side] == card:
                        difference[side] = None
    return result
