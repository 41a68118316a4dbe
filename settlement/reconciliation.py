"""Reconciliation: a partner's own record of a closed month against the coalition's, claim by claim.

The coalition side is the partner's entries booked into the month (a reversal is named by its
reversal_id). A closed month never changes, so the answer for an upload never changes either.
`records_from` reads the upload (JSON or CSV) of a Flask request into the records `reconcile` takes.
"""
from __future__ import annotations

import csv
import io
import re

from marshmallow import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from coalition import books
from coalition.api import require_json_object
from coalition.errors import Problem, pointers
from coalition.models import Entry, Member
from coalition.vocabulary import CLAIM_KINDS

from .schemas import MAX_LISTED, MAX_RECONCILIATION_CLAIMS, ReconciliationUploadSchema

COMPARED = ("kind", "points", "member_id")
CSV_REQUIRED = ("claim_id", "kind", "points")
CSV_OPTIONAL = ("member_id", "occurred_at")
# Integers as JSON writes them; anything else ("1e3", "1.0", " 5", 20 digits) stays a string
# and the schema rejects it as it rejects a string in JSON.
_CSV_INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,18})", re.ASCII)
_IN_CHUNK = 500  # bound parameters per IN (...) lookup


def reconcile(session: Session, partner_id: str, period: str, records: list[dict]) -> dict:
    """Compare `records` (loaded by ReconciliationUploadSchema) with what the coalition booked.

    The totals count everything; each list names at most MAX_LISTED claims, the first by
    claim_id, and `truncated` says whether any list left some out: a month of a million claims,
    or an upload of 100,000 the coalition never saw, still answers in a bounded size."""
    if not books.is_closed(session, period):  # a malformed period is a validation-error
        raise Problem("period-open", f"{period} is not closed.")
    _check_bounded(records)
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


def _check_bounded(claims) -> None:
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


# --- Reading the upload of a request -------------------------------------------------------

def records_from(request) -> list[dict]:
    """The validated records of a JSON (`{"claims": [...]}`) or CSV upload."""
    if request.mimetype == "text/csv":
        upload = {"claims": _csv_rows(request.get_data(cache=True), request.mimetype_params)}
    elif request.mimetype == "application/json":
        upload = require_json_object()
    else:
        raise Problem("unsupported-media-type", "Send the records as application/json or text/csv.")
    _check_bounded(upload.get("claims"))
    try:
        return ReconciliationUploadSchema().load(upload)["claims"]
    except ValidationError as err:
        raise Problem("validation-error", "The upload has invalid fields.",
                      errors=pointers(err.messages)) from None


def _csv_rows(raw: bytes, params: dict) -> list[dict]:
    """CSV rows as the JSON records they stand for; the schema validates them the same way."""
    if params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
        raise Problem("unsupported-media-type", "Send CSV as UTF-8 (charset=utf-8).")
    try:
        text = raw.decode("utf-8-sig")  # a leading byte order mark (spreadsheet exports) is dropped
    except UnicodeDecodeError:
        raise Problem("malformed-request", "The CSV is not valid UTF-8.") from None
    try:
        # Blank lines are skipped: /claims/N is the N-th data row, counted from 0.
        rows = [row for row in csv.reader(io.StringIO(text, newline=""), strict=True) if row]
    except csv.Error as err:
        raise Problem("malformed-request", f"The CSV cannot be read: {err}.") from None
    if not rows:
        raise Problem("malformed-request", "The CSV has no header row.")
    header, data = rows[0], rows[1:]
    _check_header(header)
    _check_bounded(data)  # before a row-by-row check can list half a million short rows
    ragged = [{"pointer": f"/claims/{index}", "detail": f"{len(row)} fields; the header has {len(header)}."}
              for index, row in enumerate(data) if len(row) != len(header)]
    if ragged:
        raise Problem("validation-error", "The CSV has rows of the wrong length.", errors=ragged)
    return [_csv_record(header, row) for row in data]


def _check_header(header: list[str]) -> None:
    missing = [name for name in CSV_REQUIRED if name not in header]
    unknown = [name for name in header if name not in CSV_REQUIRED + CSV_OPTIONAL]
    if missing or unknown or len(set(header)) != len(header):
        raise Problem("malformed-request",
                      f"The CSV header must name the columns {','.join(CSV_REQUIRED)} and may add "
                      f"{','.join(CSV_OPTIONAL)}, each once.")


def _csv_record(header: list[str], row: list[str]) -> dict:
    record: dict[str, object] = {}
    for name, value in zip(header, row):
        if name == "points" and _CSV_INTEGER.fullmatch(value):
            record[name] = int(value)
        elif value or name in CSV_REQUIRED:  # an empty optional cell means "not given"
            record[name] = value
    return record
