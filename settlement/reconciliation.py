"""Reconciliation: a partner's own record of a closed month against the coalition's, claim by claim.

The coalition side is the partner's entries booked into the month (a reversal is named by its
reversal_id). A closed month never changes, so the answer for an upload never changes either.
`reconcile` takes plain records; settlement/reconciliation_input.py reads them from a request.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from coalition import books
from coalition.models import Entry, Member
from coalition.problems import Problem
from coalition.vocabulary import CLAIM_KINDS

# The same bounds as settlement/schemas.py's (tests/test_structure.py checks they agree).
MAX_RECONCILIATION_CLAIMS = 100_000
MAX_LISTED = 1000  # claims named per list of a reconciliation; its totals count them all
COMPARED = ("kind", "points", "member_id")
_IN_CHUNK = 500  # bound parameters per IN (...) lookup


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
