"""Request and response schemas of the partner API. Strict: unknown fields are errors."""
from __future__ import annotations

import base64
import binascii
import json
import re

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from coalition.fields import Identifier, Points, Rfc3339, StrictInteger, Text
from coalition.hashing import canonical
from coalition.pins import PIN_PATTERN, valid_pin


class StrictSchema(Schema):
    """A request schema. Its EXAMPLE, when set, is the example of every request body it
    describes in the OpenAPI document (coalition/api.py); the examples are those of
    docs/partner-api.md, and tests/test_openapi.py checks them against the schema and the app."""

    class Meta:
        unknown = RAISE


class Pin(fields.String):
    """4 to 6 ASCII digits, write-only. No error message ever repeats the value."""

    def __init__(self, **kwargs) -> None:
        super().__init__(validate=validate.Regexp(PIN_PATTERN, error="Must be 4 to 6 digits."),
                         load_only=True, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not valid_pin(value):  # a str of [0-9]{4,6}, fullmatch
            raise ValidationError("Must be a string of 4 to 6 digits (0-9).")
        return value


class EnrolSchema(StrictSchema):
    EXAMPLE = {"member_id": "M-1001"}
    member_id = Identifier(required=True)


class EarnSchema(StrictSchema):
    EXAMPLE = {"claim_id": "order-43", "member_id": "M-1001", "points": 50,
               "occurred_at": "2026-05-04T09:59:00+02:00", "pending_until": "2026-05-18T00:00:00Z"}
    claim_id = Identifier(required=True)
    member_id = Identifier(required=True)
    points = Points(required=True)
    occurred_at = Rfc3339(required=True)
    pending_until = Rfc3339(allow_none=True, metadata={
        "description": "Points stay pending (visible, not spendable) until then."})
    description = Text(allow_none=True, validate=validate.Length(max=500))


class BurnSchema(StrictSchema):
    EXAMPLE = {"claim_id": "till-7-0815", "member_id": "M-1001", "points": 30,
               "occurred_at": "2026-05-04T09:59:30Z", "member_pin": "4711"}
    claim_id = Identifier(required=True)
    member_id = Identifier(required=True)
    points = Points(required=True)
    occurred_at = Rfc3339(required=True)
    description = Text(allow_none=True, validate=validate.Length(max=500))
    member_pin = Pin(metadata={
        "format": "password",
        "description": "The member's PIN from the till's PIN pad, where the partner's "
                       "redemption policy asks for one. Checked, never stored; not part of "
                       "the claim's content (a retry replays with or without it)."})


class PinSchema(StrictSchema):
    EXAMPLE = {"pin": "4711"}  # the first PIN; a change sends current_pin too
    pin = Pin(required=True, metadata={"format": "password", "description": "The new PIN."})
    current_pin = Pin(metadata={
        "format": "password",
        "description": "Required to change a PIN that is set; must be absent for the first."})


class ReversalSchema(StrictSchema):
    EXAMPLE = {"reversal_id": "order-42-return-1", "points": 40,
               "occurred_at": "2026-05-04T10:00:00Z"}
    reversal_id = Identifier(required=True)
    points = Points(required=True)
    occurred_at = Rfc3339(required=True)


class MemberSchema(Schema):
    member_id = fields.String(required=True)
    created_at = Rfc3339(required=True)


class ExpiringSchema(Schema):
    points = fields.Integer(required=True)
    expires_on = fields.Date(required=True, metadata={
        "description": "Last day (coalition time zone) on which these points can be spent."})


class BalanceSchema(Schema):
    member_id = fields.String(required=True)
    available = fields.Integer(required=True, metadata={
        "description": "Spendable now, net of any debt (negative while a debt is unpaid)."})
    pending = fields.Integer(required=True)
    debt = fields.Integer(required=True, metadata={
        "description": "Points owed after an earn was reversed after they were spent."})
    expiring = fields.List(fields.Nested(ExpiringSchema), required=True)


class ReversalRefSchema(Schema):
    reversal_id = fields.String(required=True)
    points = fields.Integer(required=True)
    occurred_at = Rfc3339(required=True)
    recorded_at = Rfc3339(required=True)
    period = fields.String(required=True)


class ClaimSchema(Schema):
    claim_id = fields.String(required=True, metadata={"description": "claim_id, or reversal_id of a reversal."})
    kind = fields.String(required=True, validate=validate.OneOf(["earn", "burn", "reversal"]))
    member_id = fields.String(required=True, allow_none=True)
    partner_id = fields.String(required=True)
    points = StrictInteger(required=True)
    occurred_at = Rfc3339(required=True)
    recorded_at = Rfc3339(required=True)
    period = fields.String(required=True, metadata={"description": "Settlement month, YYYY-MM."})
    late = fields.Boolean(required=True, metadata={
        "description": "Booked into a later month because its own month was closed."})
    status = fields.String(required=True, validate=validate.OneOf(
        ["booked", "pending", "partially_reversed", "reversed"]))
    reversed_points = fields.Integer(required=True)
    balance_after = fields.Integer(required=True, metadata={
        "description": "The member's available points right after this claim was booked."})
    pending_until = Rfc3339(allow_none=True)
    description = fields.String(allow_none=True)
    reverses = fields.String(allow_none=True, metadata={"description": "For a reversal: the claim it reverses."})
    reversals = fields.List(fields.Nested(ReversalRefSchema), metadata={
        "description": "Present when reading a claim: its reversals so far, oldest first, "
                       "at most 1000 (reversals_total counts them all)."})
    reversals_total = fields.Integer(metadata={
        "description": "Present when reading a claim: how many reversals it has."})


# --- listings: query parameters and pages ---------------------------------------------------

MAX_CURSOR = 200  # characters; every cursor this service issues is far shorter
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_CURSOR, re.ASCII)
_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])", re.ASCII)
PERIOD_PATTERN = f"^{_PERIOD.pattern}$"
MAX_ROW_ID = 2**63 - 1  # BIGINT: a larger id in a query would fail in the database, not here


def cursor_of(key: list) -> str:
    """The opaque cursor for a page that ends at the row with sort key `key` (strings and
    integers): base64url, unpadded, of its canonical JSON. Partners pass it back unchanged."""
    return base64.urlsafe_b64encode(canonical(key)).rstrip(b"=").decode("ascii")


class Cursor(fields.String):
    """A cursor this service issued (`cursor_of`), loaded as the sort key it holds; `parts`
    names the type of each part (str for an RFC 3339 time, loaded as a datetime; int for a row
    id or another count from 0), `check` what else the key must satisfy. Anything else, a
    tampered cursor included, is a validation error."""

    def __init__(self, *parts: type, check=lambda key: True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.parts, self.check = parts, check

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            if not (isinstance(value, str) and _CURSOR.fullmatch(value)):
                raise ValueError
            key = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
            if not (isinstance(key, list) and len(key) == len(self.parts)):
                raise ValueError
            key = tuple(self._part(kind, part) for kind, part in zip(self.parts, key))
            if not self.check(key):
                raise ValueError
            return key
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, ValidationError):
            raise ValidationError("Not a cursor of this listing: pass next_cursor back "
                                  "exactly as answered.") from None

    @staticmethod
    def _part(kind: type, part):
        if kind is int:
            if type(part) is not int or not 0 <= part <= MAX_ROW_ID:
                raise ValueError
            return part
        return Rfc3339()._deserialize(part, None, None)


class QueryInteger(fields.Integer):
    """A whole number in a query string: ASCII digits only (int() would also take " 5", "+5",
    "1_000" and other scripts' digits)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9):
            raise ValidationError("Must be a whole number, in ASCII digits.")
        return int(value)


class Period(fields.String):
    """A settlement month, YYYY-MM."""

    def __init__(self, **kwargs) -> None:
        super().__init__(validate=validate.Regexp(PERIOD_PATTERN), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not (isinstance(value, str) and _PERIOD.fullmatch(value)):
            raise ValidationError("Must be a month, YYYY-MM.")
        return value


MAX_CLAIMS_PAGE = 500


class ClaimListQuerySchema(StrictSchema):
    member_id = Identifier(metadata={"description": "Only this member's claims."})
    period = Period(metadata={"description": "Only claims booked into this settlement month."})
    kind = fields.String(validate=validate.OneOf(["earn", "burn", "reversal"]))
    since = Rfc3339(metadata={"description": "Only claims recorded at or after this time "
                                             "(inclusive)."})
    until = Rfc3339(metadata={"description": "Only claims recorded before this time "
                                             "(exclusive)."})
    cursor = Cursor(str, int, metadata={
        "description": "next_cursor of the previous page, unchanged; with the same filters."})
    limit = QueryInteger(load_default=100, validate=validate.Range(1, MAX_CLAIMS_PAGE),
                         metadata={"description": f"Claims per page, 1 to {MAX_CLAIMS_PAGE}."})


class ClaimListSchema(Schema):
    claims = fields.List(fields.Nested(ClaimSchema), required=True, metadata={
        "description": "Newest first (by recorded_at, then booking order). Each claim as "
                       "GET /v1/claims/{claim_id} answers it, with its current status, "
                       "reversed_points and reversals_total, but without the `reversals` list."})
    next_cursor = fields.String(required=True, allow_none=True, metadata={
        "description": "Pass as `cursor` for the next page; null on the last page."})
