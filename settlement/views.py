"""Partners read their own closed statements; anyone reads the coalition's public keys."""
from __future__ import annotations

import re

from flask import Response, current_app, g, request, stream_with_context
from marshmallow import RAISE, Schema, fields, validate

from coalition import clock, limits
from coalition.api import Blueprint, problems
from coalition.database import db
from coalition.replica import standby_ok
from coalition.errors import Problem
from coalition.schemas import PERIOD_PATTERN, cursor_of
from partners.auth import AUTH, COMMON, authenticate, crashed, failed

from . import exports, lines, schemas, service, signing
from . import reconciliation_input as reconciliation  # the upload's parsing; reconcile itself
from .pdf import statement_pdf

blp = Blueprint("statements", __name__, url_prefix="/v1",
                description="Closed monthly statements of the calling partner, signed by the coalition.")
blp.before_request(authenticate)
blp.register_error_handler(Problem, failed)
blp.register_error_handler(Exception, crashed)

keys_blp = Blueprint("coalition_keys", __name__, description="The coalition's public keys.")


class FormatSchema(Schema):
    format = fields.String(load_default="json", validate=validate.OneOf(["json", "csv", "pdf"]))


@blp.route("/statements", methods=["GET"])
@blp.doc(security=AUTH, summary="The caller's closed statements")
@blp.response(200, schemas.StatementListSchema, description="Every closed month of the "
              "caller: period, net and the digest of its signed statement")
@problems(blp, *COMMON)
@standby_ok
def list_statements():
    rows = service.statements_of(db.session, g.caller.partner_id)
    db.session.commit()
    return {"statements": [{"period": r.period, "net_cents": r.net_cents, "digest": r.digest}
                           for r in rows]}


@blp.route("/statements/<period>", methods=["GET"])
@blp.doc(security=AUTH, summary="One closed statement, as signed (JSON), CSV or PDF",
         responses={"200": {"description": "The statement: as signed (JSON, the default), or "
                                           "as CSV or PDF (?format=)",
                            "content": {
             "application/json": {"schema": {"$ref": "#/components/schemas/SignedStatement"}},
             "text/csv": {"schema": {"type": "string"}},
             "application/pdf": {"schema": {"type": "string", "format": "binary"}}}}})
@blp.arguments(FormatSchema, location="query")
@blp.response(200, schemas.SignedStatementSchema)
@problems(blp, *COMMON, "not-found", "validation-error")
@standby_ok
def get_statement(query: dict, period: str):
    row = service.statement(db.session, g.caller.partner_id, period)
    db.session.commit()
    filename = f"statement-{row.partner_id}-{period}.{query['format']}"
    disposition = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if query["format"] == "csv":
        body = exports.statement_csv(service.signed(row)["document"], row.digest)
        return Response(body, mimetype="text/csv", headers=disposition)
    if query["format"] == "pdf":
        return Response(statement_pdf(service.signed(row)), mimetype="application/pdf",
                        headers=disposition)
    return service.signed(row)


DEFAULT_LINES = 100


@blp.route("/statements/<period>/lines", methods=["GET"])
@blp.doc(security=AUTH, summary="The line items behind one closed statement (JSON pages, or CSV)",
         description="Every claim of the caller booked into the month, every use of the "
                     "caller's points (funding), every debt paid back to it (debt_recovery) "
                     "and every expiry of its points (breakage). "
                     "Each points and cents column sums exactly to the statement's field of the "
                     "same name; a money line's cents are spread over its lines by the largest "
                     "remainder method. JSON: pages in order, the statement's totals on every "
                     "page. CSV: every line, one header row, streamed.",
         responses={"200": {"description": "One page of lines (JSON), or every line (CSV)",
                             "content": {
             "application/json": {"schema": {"$ref": "#/components/schemas/StatementLines"}},
             "text/csv": {"schema": {"type": "string"}}}}})
@blp.arguments(schemas.LinesQuerySchema, location="query", unknown=RAISE)
@blp.response(200, schemas.StatementLinesSchema)
@problems(blp, *COMMON, "not-found", "validation-error")
@standby_ok
def statement_lines(query: dict, period: str):
    """JSON is paged by keyset: `limit` lines (1 to 1000, default 100) after `cursor`, with
    `next_cursor` until the last page and the statement's totals on every page. CSV streams
    every line after one header row, a page at a time (settlement/lines.py, csv_chunks).
    Not found as GET /v1/statements/{period} is: no statement of the caller for the month."""
    month = lines.MonthLines(db.session, g.caller.partner_id, period,
                             tz=current_app.config["COALITION_TIMEZONE"])
    if query["format"] == "csv":
        db.session.commit()  # the jti; each page of the stream reads in its own transaction
        filename = f"statement-lines-{g.caller.partner_id}-{period}.csv"
        return Response(stream_with_context(lines.csv_chunks(month, commit=db.session.commit)),
                        mimetype="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    page, last = month.page(query.get("cursor"), query.get("limit", DEFAULT_LINES))
    db.session.commit()
    return {"period": period, "partner_id": g.caller.partner_id, "digest": month.digest,
            "totals": month.totals, "lines": page,
            "next_cursor": cursor_of(list(last)) if last else None}


RECONCILIATION_BODY = {
    "required": True,
    "description": "The caller's own record of the month's claims (a reversal by its reversal_id), "
                   "as JSON or as CSV with the header `claim_id,kind,points[,member_id][,occurred_at]` "
                   "(UTF-8, columns in any order). At most "
                   f"{schemas.MAX_RECONCILIATION_CLAIMS} claims, each claim_id once.",
    "content": {
        "application/json": {"schema": schemas.ReconciliationUploadSchema},
        "text/csv": {"schema": {"type": "string"},
                     "example": "claim_id,kind,points\norder-42,earn,100\n"
                                "order-42-return-1,reversal,40\n"},
    },
}


@blp.route("/statements/<period>/reconciliation", methods=["POST"])
@limits.own_quota("reconciliation")  # RATELIMIT_RECONCILIATION, besides the partner's quota
@blp.doc(security=AUTH, summary="Reconcile the caller's record of a closed month, claim by claim",
         requestBody=RECONCILIATION_BODY)
@blp.response(200, schemas.ReconciliationSchema, description="The comparison: matched, "
              "mismatched and missing claims, with complete totals")
@problems(blp, *COMMON, "validation-error", "unsupported-media-type", "payload-too-large", "period-open")
def reconcile(period: str):
    records = reconciliation.records_from(request)
    result = reconciliation.reconcile(db.session, g.caller.partner_id, period, records)
    # Kept with the jti in one commit: if it cannot be kept the request fails (503 unavailable
    # when the database is away) and the partner retries, never holding an unkept answer.
    reconciliation.store(db.session, result, fmt=reconciliation.format_of(request),
                         raw=request.get_data(cache=True),
                         uploaded_by=f"partner:{g.caller.partner_id}", now=clock.now())
    db.session.commit()
    return result


DEFAULT_STORED = 20


@blp.route("/statements/<period>/reconciliations", methods=["GET"])
@blp.doc(security=AUTH, summary="The caller's stored reconciliations of a month, newest first",
         description="Every reconciliation of the month answered to the caller (and every one an "
                     "operator ran on a file of the caller's in the console), newest first: "
                     "when, by whom, the upload's SHA-256 and size, and the counts of its answer.")
@blp.arguments(schemas.StoredReconciliationsQuerySchema, location="query", unknown=RAISE)
@blp.response(200, schemas.StoredReconciliationListSchema, description="One page of the "
              "caller's stored reconciliations of the month")
@problems(blp, *COMMON, "not-found", "validation-error")
@standby_ok
def list_reconciliations(query: dict, period: str):
    """An open month, or one without any reconciliation, answers an empty list; a malformed
    one is not-found, as GET /v1/statements/{period} answers it."""
    if not re.fullmatch(PERIOD_PATTERN, period):
        raise Problem("not-found", f"No month {period}: a month is YYYY-MM.")
    limit = query.get("limit", DEFAULT_STORED)
    before = query["cursor"][0] if "cursor" in query else None
    rows = reconciliation.stored(db.session, period, partner_id=g.caller.partner_id,
                                 limit=limit + 1, before=before)
    db.session.commit()
    page = rows[:limit]
    return {"reconciliations": [reconciliation.summary(row) for row in page],
            "next_cursor": cursor_of([page[-1].id]) if len(rows) > limit else None}


@keys_blp.route("/.well-known/jwks.json", methods=["GET"])
@keys_blp.doc(summary="Public keys that sign statements (JWKS)",
              description="Every key the coalition signed statements with and has not retired, "
                          "the current one first: pick the key by the statement's `signature.kid`.")
@keys_blp.response(200, schemas.JwksSchema, description="The public keys statements are "
                   "signed with (RFC 7517), by kid")
@problems(keys_blp, "unavailable")  # read from the database (coalition/errors.py answers 503)
def jwks():
    document = signing.jwks(db.session, signing.existing_key(current_app.config["COALITION_SIGNING_KEY_FILE"]))
    db.session.commit()
    return document
