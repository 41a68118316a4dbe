"""The HTTP side of reconciliation: an upload (JSON or CSV) of a request read into the records
that settlement.reconciliation.reconcile compares. Marshmallow validates them here, so the
domain module takes plain values. settlement/views.py imports this module under the name
`reconciliation`: `records_from` reads the upload, `format_of` names its format; `reconcile`,
`store`, `stored`, `stored_one` and `summary` are the domain's, re-exported.
"""
from __future__ import annotations

import csv
import io
import re

from marshmallow import ValidationError

from coalition.api import require_json_object
from coalition.errors import Problem, pointers

from .reconciliation import (check_bounded, reconcile, store, stored, stored_one,  # noqa: F401
                             summary)  # (views call them here)
from .schemas import ReconciliationUploadSchema

CSV_REQUIRED = ("claim_id", "kind", "points")
CSV_OPTIONAL = ("member_id", "occurred_at")
# Integers as JSON writes them; anything else ("1e3", "1.0", " 5", 20 digits) stays a string
# and the schema rejects it as it rejects a string in JSON.
_CSV_INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,18})", re.ASCII)


def records_from(request) -> list[dict]:
    """The validated records of a JSON (`{"claims": [...]}`) or CSV upload."""
    if request.mimetype == "text/csv":
        upload = {"claims": _csv_rows(request.get_data(cache=True), request.mimetype_params)}
    elif request.mimetype == "application/json":
        upload = require_json_object()
    else:
        raise Problem("unsupported-media-type", "Send the records as application/json or text/csv.")
    check_bounded(upload.get("claims"))
    try:
        return ReconciliationUploadSchema().load(upload)["claims"]
    except ValidationError as err:
        raise Problem("validation-error", "The upload has invalid fields.",
                      errors=pointers(err.messages)) from None


def format_of(request) -> str:
    """The format of an upload records_from has read: csv or json."""
    return "csv" if request.mimetype == "text/csv" else "json"


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
    check_bounded(data)  # before a row-by-row check can list half a million short rows
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
