"""Response schemas of the statements API (documents are returned exactly as signed)."""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from coalition.api import path_parameter
from coalition.fields import Identifier, Points, Rfc3339
from coalition.schemas import PERIOD_PATTERN, Cursor, QueryInteger, StrictSchema
from coalition.vocabulary import CLAIM_KINDS, EntryKind

from .lines import SECTIONS
from .reconciliation import MAX_LISTED, MAX_RECONCILIATION_CLAIMS, MAX_STORED_LISTED  # noqa: F401

# {period} in the statements' paths: a value that is no YYYY-MM has no statement (404) and
# cannot be reconciled (422 validation-error).
path_parameter("period", PERIOD_PATTERN, "A settlement month, YYYY-MM.")


class SignatureSchema(Schema):
    alg = fields.String(required=True, metadata={"example": "EdDSA"})
    kid = fields.String(required=True, metadata={"description": "Key id in /.well-known/jwks.json"})
    value = fields.String(required=True, metadata={
        "description": "base64url Ed25519 signature over the canonical JSON of `document` "
                       "(keys sorted, no whitespace, UTF-8)."})


class SignedStatementSchema(Schema):
    document = fields.Dict(required=True, metadata={
        "description": "The statement: every field docs/settlement.md lists for a statement, "
                       "money in integer cents, terms as decimal strings. From "
                       "`coalition-statement/v3` also `bonus_points_issued` (bonus points the "
                       "partner funded in the month, net of reversals; may be negative) and "
                       "`bonus_issuance_charge_cents` (a charge counted in `net_cents`)."})
    digest = fields.String(required=True, metadata={"description": "SHA-256 hex of the canonical document"})
    signature = fields.Nested(SignatureSchema, required=True)


class StatementSummarySchema(Schema):
    period = fields.String(required=True)
    net_cents = fields.Integer(required=True)
    digest = fields.String(required=True)


class StatementListSchema(Schema):
    statements = fields.List(fields.Nested(StatementSummarySchema), required=True)


class JwkSchema(Schema):
    """A public Ed25519 key (RFC 8037). Only these members are ever serialised: never "d"."""
    kty = fields.String(required=True, validate=validate.Equal("OKP"), metadata={"example": "OKP"})
    crv = fields.String(required=True, validate=validate.Equal("Ed25519"), metadata={"example": "Ed25519"})
    x = fields.String(required=True, metadata={"description": "base64url public key (32 bytes)"})
    kid = fields.String(required=True, metadata={
        "description": "RFC 7638 thumbprint of the key; statements name it in `signature.kid`."})
    alg = fields.String(required=True, validate=validate.Equal("EdDSA"), metadata={"example": "EdDSA"})
    use = fields.String(required=True, validate=validate.Equal("sig"), metadata={"example": "sig"})


class JwksSchema(Schema):
    keys = fields.List(fields.Nested(JwkSchema), required=True, metadata={
        "description": "The current key first, then keys replaced by a rotation (still valid for "
                       "the statements they signed). A retired (compromised) key is absent."})


# --- Reconciliation (docs/partner-api.md): the partner's record of a closed month, and the answer.

KINDS = [str(kind) for kind in CLAIM_KINDS]


class ReconciliationRecordSchema(StrictSchema):
    """One claim as the partner recorded it. A reversal is named by its reversal_id."""
    claim_id = Identifier(required=True, metadata={"description": "claim_id, or reversal_id of a reversal."})
    kind = fields.String(required=True, validate=validate.OneOf(KINDS))
    points = Points(required=True)
    member_id = Identifier(metadata={"description": "Compared when given."})
    occurred_at = Rfc3339(metadata={"description": "For the partner's reference; not compared."})


class ReconciliationUploadSchema(StrictSchema):
    EXAMPLE = {"claims": [
        {"claim_id": "order-42", "kind": EntryKind.EARN, "points": 100, "member_id": "M-1001"},
        {"claim_id": "order-42-return-1", "kind": EntryKind.REVERSAL, "points": 30},
        {"claim_id": "order-43", "kind": EntryKind.EARN, "points": 50},
        {"claim_id": "order-99", "kind": EntryKind.EARN, "points": 10}]}
    claims = fields.List(fields.Nested(ReconciliationRecordSchema), required=True,
                         validate=validate.Length(max=MAX_RECONCILIATION_CLAIMS))


class PointsByKindSchema(Schema):
    earn = fields.Integer(required=True)
    burn = fields.Integer(required=True)
    reversal = fields.Integer(required=True)


class ReconciliationTotalsSchema(Schema):
    coalition_claims = fields.Integer(required=True)
    partner_claims = fields.Integer(required=True)
    matched = fields.Integer(required=True)
    mismatched = fields.Integer(required=True)
    missing_at_partner = fields.Integer(required=True)
    missing_at_coalition = fields.Integer(required=True)
    coalition_points = fields.Nested(PointsByKindSchema, required=True)
    partner_points = fields.Nested(PointsByKindSchema, required=True)


class DifferenceSchema(Schema):
    field = fields.String(required=True, validate=validate.OneOf(["kind", "points", "member_id"]))
    ours = fields.Raw(required=True, metadata={"description": "The coalition's value."})
    theirs = fields.Raw(required=True, metadata={"description": "The partner's value."})


class MismatchSchema(Schema):
    claim_id = fields.String(required=True)
    differences = fields.List(fields.Nested(DifferenceSchema), required=True)


class CoalitionRecordSchema(Schema):
    claim_id = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(KINDS))
    points = fields.Integer(required=True)
    member_id = fields.String(required=True, allow_none=True, metadata={
        "description": "null once the member's personal data was erased."})
    occurred_at = Rfc3339(required=True)
    late = fields.Boolean(required=True, metadata={
        "description": "Booked into this month because its own month was closed already."})
    reverses = fields.String(required=True, allow_none=True, metadata={
        "description": "For a reversal: the claim it reverses."})


class PartnerRecordSchema(Schema):
    claim_id = fields.String(required=True)
    kind = fields.String(required=True)
    points = fields.Integer(required=True)
    member_id = fields.String()
    occurred_at = Rfc3339()
    booked_in = fields.String(required=True, allow_none=True, metadata={
        "description": "The month the coalition booked this claim of the caller into, "
                       "if another one; null if the coalition has no such claim at all."})


class ReconciliationSchema(Schema):
    period = fields.String(required=True)
    partner_id = fields.String(required=True)
    totals = fields.Nested(ReconciliationTotalsSchema, required=True, metadata={
        "description": "Complete counts, also of what the lists leave out."})
    matched = fields.List(fields.String(), required=True, metadata={
        "description": f"claim ids; the first {MAX_LISTED} by claim_id at most."})
    mismatched = fields.List(fields.Nested(MismatchSchema), required=True, metadata={
        "description": f"The first {MAX_LISTED} by claim_id at most."})
    missing_at_partner = fields.List(fields.Nested(CoalitionRecordSchema), required=True, metadata={
        "description": "Claims the coalition booked into the month that the upload lacks; "
                       f"the first {MAX_LISTED} by claim_id at most."})
    missing_at_coalition = fields.List(fields.Nested(PartnerRecordSchema), required=True, metadata={
        "description": "Uploaded claims the coalition did not book into the month; "
                       f"the first {MAX_LISTED} by claim_id at most."})
    truncated = fields.Boolean(required=True, metadata={
        "description": f"true when a list holds more than {MAX_LISTED} claims and names only the "
                       "first of them; `totals` has the full count of each."})


class StoredReconciliationsQuerySchema(StrictSchema):
    cursor = Cursor(int, metadata={"description": "next_cursor of the previous page, unchanged."})
    limit = QueryInteger(validate=validate.Range(1, MAX_STORED_LISTED), metadata={
        "description": f"Reconciliations per page, 1 to {MAX_STORED_LISTED}; 20 when not given."})


class StoredTotalsSchema(Schema):
    coalition_claims = fields.Integer(required=True)
    partner_claims = fields.Integer(required=True)
    matched = fields.Integer(required=True)
    mismatched = fields.Integer(required=True)
    missing_at_partner = fields.Integer(required=True)
    missing_at_coalition = fields.Integer(required=True)


class StoredReconciliationSchema(Schema):
    reconciliation_id = fields.Integer(required=True)
    period = fields.String(required=True)
    partner_id = fields.String(required=True)
    uploaded_at = Rfc3339(required=True)
    uploaded_by = fields.String(required=True, metadata={
        "description": "partner:<id> for an upload to POST /v1/statements/{period}/reconciliation; "
                       "operator:<name> for a file of yours an operator reconciled for you."})
    format = fields.String(required=True, validate=validate.OneOf(["json", "csv"]))
    input_sha256 = fields.String(required=True, metadata={
        "description": "SHA-256 hex of the uploaded body (the upload itself is not kept)."})
    input_bytes = fields.Integer(required=True)
    totals = fields.Nested(StoredTotalsSchema, required=True, metadata={
        "description": "The counts of the answer's totals."})
    truncated = fields.Boolean(required=True)


class StoredReconciliationListSchema(Schema):
    reconciliations = fields.List(fields.Nested(StoredReconciliationSchema), required=True, metadata={
        "description": "Newest first."})
    next_cursor = fields.String(required=True, allow_none=True, metadata={
        "description": "Pass as `cursor` for the next page; null on the last page."})


# --- Statement lines: the line items behind a closed statement (settlement/lines.py) -------

MAX_LINES_PAGE = 1000


class LinesQuerySchema(StrictSchema):
    format = fields.String(load_default="json", validate=validate.OneOf(["json", "csv"]), metadata={
        "description": "csv: every line in one streamed response, no cursor or limit."})
    cursor = Cursor(int, int, check=lambda key: key[0] < len(SECTIONS), metadata={
        "description": "next_cursor of the previous page, unchanged (JSON only)."})
    limit = QueryInteger(validate=validate.Range(1, MAX_LINES_PAGE), metadata={
        "description": f"Lines per page, 1 to {MAX_LINES_PAGE}; 100 when not given (JSON only)."})

    @validates_schema
    def _paged_in_json_only(self, data, **kwargs):
        if data.get("format") == "csv":
            for name in ("cursor", "limit"):
                if name in data:
                    raise ValidationError("CSV answers every line at once: no cursor or limit.",
                                          field_name=name)


class StatementTotalsSchema(Schema):
    """The statement's columns that lines sum to: each line has them too."""
    claims = fields.Integer(required=True)
    late_claims = fields.Integer(required=True)
    points_issued = fields.Integer(required=True)
    points_redeemed = fields.Integer(required=True)
    points_funded = fields.Integer(required=True)
    points_debt_recovered = fields.Integer(required=True)
    points_expired = fields.Integer(required=True)
    issuance_charge_cents = fields.Integer(required=True)
    redemption_funding_charge_cents = fields.Integer(required=True)
    redemption_reimbursement_cents = fields.Integer(required=True)
    fees_cents = fields.Integer(required=True)
    debt_recovery_credit_cents = fields.Integer(required=True)
    bonus_points_issued = fields.Integer(metadata={
        "description": "Statements from coalition-statement/v3 only (absent before): bonus points "
                       "the caller funded, net of reversals."})
    bonus_issuance_charge_cents = fields.Integer(metadata={
        "description": "Statements from coalition-statement/v3 only (absent before): "
                       "bonus_points_issued x issue_price x issuance_share."})
    net_cents = fields.Integer(required=True)


class StatementLineSchema(StatementTotalsSchema):
    line = fields.String(required=True, validate=validate.OneOf(SECTIONS))
    claim_id = fields.String(required=True, allow_none=True, metadata={
        "description": "The caller's own claim: the claim (claim), the earn whose points were "
                       "used (funding) or expired (breakage), the reversal that left the debt "
                       "(debt_recovery); bonus: the caller's claim that booked the bonus it "
                       "funds, null when another partner's claim booked it (counterparty "
                       "names that partner)."})
    kind = fields.String(required=True, metadata={
        "description": "claim: earn, burn or reversal; funding: burn, burn_reversal or "
                       "debt_fill; debt_recovery: debt_fill; breakage: expiry (the points "
                       "expired), or reversal (your reversal of the earn took expired points "
                       "back: negative points); bonus: earn (bonus points you fund) or reversal "
                       "(bonus points a reversal took back: negative points)."})
    reverses = fields.String(required=True, allow_none=True, metadata={
        "description": "claim and bonus lines of a reversal: the claim it reverses (bonus: "
                       "null when another partner's)."})
    member_id = fields.String(required=True, allow_none=True, metadata={
        "description": "null once the member's personal data was erased."})
    counterparty = fields.String(required=True, allow_none=True, metadata={
        "description": "funding: the partner that redeemed the points (for a debt fill: the "
                       "partner whose debt they paid); debt_recovery: the partner whose points "
                       "paid the debt; bonus: the partner whose claim booked the bonus (you "
                       "too); claim and breakage: null."})
    occurred_at = Rfc3339(required=True, metadata={"description": "Of the claim that booked the line."})
    recorded_at = Rfc3339(required=True, metadata={"description": "Of the claim that booked the line."})
    late = fields.Boolean(required=True, metadata={
        "description": "claim lines: booked into this month because its own month was closed."})
    own_period = fields.String(required=True, allow_none=True, metadata={
        "description": "claim lines: the month of occurred_at (differs from the statement's "
                       "month for a late claim); null otherwise."})


class StatementLinesSchema(Schema):
    period = fields.String(required=True)
    partner_id = fields.String(required=True)
    digest = fields.String(required=True, metadata={"description": "The statement's digest."})
    totals = fields.Nested(StatementTotalsSchema, required=True, metadata={
        "description": "The statement's fields that the lines of every page together sum to, "
                       "column by column."})
    lines = fields.List(fields.Nested(StatementLineSchema), required=True, metadata={
        "description": "Claim lines, then funding lines, then debt recovery lines, then "
                       "breakage lines, then (statements from coalition-statement/v3) bonus "
                       "lines, each in booking order."})
    next_cursor = fields.String(required=True, allow_none=True, metadata={
        "description": "Pass as `cursor` for the next page; null on the last page."})
