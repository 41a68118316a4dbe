"""Request and response schemas of the partner API. Strict: unknown fields are errors."""
from __future__ import annotations

import re
from datetime import datetime

from flask import current_app, has_app_context
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from coalition import activities, bonus_terms, segments
from coalition.api import path_parameter
from coalition.batch import MAX_ITEMS, Item
from coalition.expiry_notices import MAX_WINDOW_DAYS, NOTICE_DAYS
from coalition.holds import DEFAULT_LIFETIME_S, MAX_LIFETIME_S
from coalition.fields import Identifier, Points, Rfc3339, StrictBoolean, StrictInteger, Text
from coalition.pins import PIN_PATTERN, valid_pin
from coalition.problems import Problem, validation_problem
from coalition.schemas import (MAX_CURSOR, PERIOD_PATTERN, Cursor, Period,  # noqa: F401
                               QueryInteger, StrictSchema, cursor_of)
from coalition.vocabulary import (BATCH_KINDS, CLAIM_KINDS, ENROLMENT, ID_PATTERN, MAX_POINTS,
                                  EntryKind)


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


class ReferredEnrolSchema(EnrolSchema):
    """POST /v1/members (a batch's enrolment item takes no referred_by)."""
    referred_by = Identifier(metadata={
        "description": "The member who referred this one (an enrolled member, not the member "
                       "itself). Recorded only when the member is enrolled now; both get the "
                       "coalition's referral points when this member's first purchase earn "
                       "books (not pending)."})


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
    activity = fields.String(validate=validate.OneOf(activities.POSTED), metadata={
        "description": "What the points reward: purchase (the default), review (one a day per "
                       "member at your shop), signup or newsletter (once per member at your "
                       "shop). Bonuses apply to purchases only."})


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


class ConsentSchema(StrictSchema):
    EXAMPLE = {"marketing": True, "channel": "email"}
    marketing = StrictBoolean(required=True, metadata={
        "description": "true: the member agrees to marketing; false: withdrawn."})
    channel = Identifier(allow_none=True, metadata={
        "description": "The channel the consent is about (email, sms, post, ...); absent or "
                       "null: marketing in general."})


class CouponSchema(Schema):
    id = fields.String(required=True)
    partner_id = fields.String(required=True, metadata={"description": "Earns here qualify."})
    name = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["multiplier", "fixed"]))
    factor = fields.String(required=True, allow_none=True, metadata={
        "description": "multiplier: the earn's points times this in all (\"2\": double)."})
    bonus_points = fields.Integer(required=True, allow_none=True, metadata={
        "description": "fixed: the bonus points."})
    starts_at = Rfc3339(required=True)
    ends_at = Rfc3339(required=True)
    funder = fields.String(required=True, metadata={"description": "Who pays for the bonus."})
    published_by = fields.String(required=True)


class CouponActivationSchema(Schema):
    coupon_id = fields.String(required=True)
    member_id = fields.String(required=True)
    activated_at = Rfc3339(required=True)
    channel = fields.String(required=True, metadata={
        "description": "Where it was activated: partner:<id>, portal or operator."})
    used = fields.Boolean(required=True, metadata={
        "description": "Whether an earn has received the coupon's bonus (it gives it once)."})
    coupon = fields.Nested(CouponSchema, required=True)


class InvitationSchema(Schema):
    EXAMPLE = {"member_id": "M-1001", "code": "7KQ2-M9XD-4HTC",
               "expires_at": "2026-05-07T10:00:00Z"}
    member_id = fields.String(required=True)
    code = fields.String(required=True, metadata={
        "description": "The one-time code, shown here only: 12 characters in groups of 4 "
                       "(Crockford base32; typed in any case, dashes and spaces ignored)."})
    expires_at = Rfc3339(required=True, metadata={"description": "72 hours from now."})


class OfferedCouponSchema(CouponSchema):
    activated = fields.Boolean(required=True)
    used = fields.Boolean(required=True, metadata={
        "description": "The bonus was received already (a coupon gives it once)."})


class OfferedCampaignSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["multiplier", "fixed"]))
    factor = fields.String(required=True, allow_none=True)
    bonus_points = fields.Integer(required=True, allow_none=True)
    partners = fields.List(fields.String(), required=True, allow_none=True, metadata={
        "description": "Whose earns qualify; null: every partner's."})
    segment = fields.String(required=True, allow_none=True)
    starts_at = Rfc3339(required=True)
    ends_at = Rfc3339(required=True)


class OffersSchema(Schema):
    member_id = fields.String(required=True)
    tier = fields.String(required=True, allow_none=True)
    campaigns = fields.List(fields.Nested(OfferedCampaignSchema), required=True)
    coupons = fields.List(fields.Nested(OfferedCouponSchema), required=True)


class ConsentRecordSchema(Schema):
    member_id = fields.String(required=True)
    marketing = fields.Boolean(required=True)
    channel = fields.String(required=True, allow_none=True)
    partner_id = fields.String(required=True, metadata={"description": "Who recorded it."})
    recorded_at = Rfc3339(required=True)


class MemberSchema(Schema):
    member_id = fields.String(required=True)
    created_at = Rfc3339(required=True)


class NextTierSchema(Schema):
    name = fields.String(required=True)
    points = fields.Integer(required=True, metadata={"description": "Its threshold."})
    missing = fields.Integer(required=True, metadata={
        "description": "Points still to earn (within the trailing 12 months) to reach it."})


class TierSchema(Schema):
    name = fields.String(required=True)
    points = fields.Integer(required=True, metadata={
        "description": "Points that count: earned (no longer pending, net of reversals) in the "
                       "trailing 12 months, the coalition's days."})
    until = fields.Date(required=True, allow_none=True, metadata={
        "description": "The last day the tier lasts if nothing more is earned (null: the lowest "
                       "tier, for ever)."})
    next = fields.Nested(NextTierSchema, required=True, allow_none=True, metadata={
        "description": "The next tier up, or null at the top."})


class ExpiringSchema(Schema):
    points = fields.Integer(required=True)
    expires_on = fields.Date(required=True, metadata={
        "description": "Last day (coalition time zone) on which these points can be spent."})


class BalanceSchema(Schema):
    member_id = fields.String(required=True)
    available = fields.Integer(required=True, metadata={
        "description": "Spendable now, net of any debt and of the points open holds reserve "
                       "(negative while a debt is unpaid)."})
    pending = fields.Integer(required=True)
    held = fields.Integer(required=True, metadata={
        "description": "Points reserved by open holds (POST /v1/holds), at any partner: not "
                       "available until captured (then redeemed) or voided or lapsed (then "
                       "available again)."})
    debt = fields.Integer(required=True, metadata={
        "description": "Points owed after an earn was reversed after they were spent."})
    expiring = fields.List(fields.Nested(ExpiringSchema), required=True)
    tier = fields.Nested(TierSchema, required=True, allow_none=True, metadata={
        "description": "The member's status tier, or null when the coalition runs no tiers."})


class ExpiryNoticesQuerySchema(StrictSchema):
    within_days = QueryInteger(
        load_default=NOTICE_DAYS, validate=validate.Range(0, MAX_WINDOW_DAYS),
        metadata={"description": "The window: expiries whose last day lies from today through "
                                 f"this many days on (0 to {MAX_WINDOW_DAYS}; default "
                                 f"{NOTICE_DAYS})."})


class ExpiryNoticeSchema(Schema):
    points = fields.Integer(required=True, metadata={
        "description": "Points that expire then unless spent before (pending ones included)."})
    expires_on = fields.Date(required=True, metadata={
        "description": "Last day (coalition time zone) on which these points can be spent."})
    notify_from = fields.Date(required=True, metadata={
        "description": f"From this day on ({NOTICE_DAYS} days before expires_on) the member "
                       "should be told: show it on the receipt, in the app, by mail."})


class ExpiryNoticesSchema(Schema):
    EXAMPLE = {"member_id": "M-1001", "within_days": 30, "notices": [
        {"points": 150, "expires_on": "2029-05-31", "notify_from": "2029-05-01"}]}
    member_id = fields.String(required=True)
    within_days = fields.Integer(required=True, metadata={
        "description": "The window asked for, in days from today."})
    notices = fields.List(fields.Nested(ExpiryNoticeSchema), required=True, metadata={
        "description": "Each expiry in the window, earliest first; empty when none."})


class ReversalRefSchema(Schema):
    reversal_id = fields.String(required=True)
    points = fields.Integer(required=True)
    occurred_at = Rfc3339(required=True)
    recorded_at = Rfc3339(required=True)
    period = fields.String(required=True)


class BonusSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(
        ["campaign", "coupon", "tier", "referral"]))
    id = fields.String(required=True, metadata={"description": "The campaign's or coupon's id, "
                                                               "the tier's name, or referral."})
    funder = fields.String(required=True, metadata={
        "description": "Who pays for these points: a partner, or the coalition's operator id."})
    points = fields.Integer(required=True)


class ClaimSchema(Schema):
    claim_id = fields.String(required=True, metadata={"description": "claim_id, or reversal_id of a reversal."})
    kind = fields.String(required=True, validate=validate.OneOf([str(k) for k in CLAIM_KINDS]))
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
    activity = fields.String(validate=validate.OneOf(activities.ALL), metadata={
        "description": "An earn: what it rewards (purchase, review, signup, newsletter; "
                       "referral: the coalition's earn for a member who referred another)."})
    reverses = fields.String(allow_none=True, metadata={"description": "For a reversal: the claim it reverses."})
    reversals = fields.List(fields.Nested(ReversalRefSchema), metadata={
        "description": "Present when reading a claim: its reversals so far, oldest first, "
                       "at most 1000 (reversals_total counts them all)."})
    reversals_total = fields.Integer(metadata={
        "description": "Present when reading a claim: how many reversals it has."})
    bonus_points = fields.Integer(metadata={
        "description": "An earn: the bonus points it got besides "
                       "`points` (campaigns, coupons, the member's tier), in all."})
    bonuses = fields.List(fields.Nested(BonusSchema), metadata={
        "description": "An earn: each bonus, with who pays for it."})
    coupons_not_activated = fields.List(fields.String(), metadata={
        "description": "An earn, in the answer that books it (or replays it): your coupons "
                       "whose window held the purchase but which the member had not activated "
                       "before it; they gave nothing."})


# --- holds -----------------------------------------------------------------------------------

class HoldSchema(StrictSchema):
    EXAMPLE = {"hold_id": "till-7-auth-0816", "member_id": "M-1001", "points": 500,
               "occurred_at": "2026-05-04T10:01:00Z", "expires_in": 900}
    hold_id = Identifier(required=True, metadata={
        "description": "The partner's id of the hold: sending the same hold again replays it."})
    member_id = Identifier(required=True)
    points = Points(required=True)
    occurred_at = Rfc3339(required=True)
    expires_in = StrictInteger(
        validate=validate.Range(1, MAX_LIFETIME_S), load_default=DEFAULT_LIFETIME_S,
        metadata={"description": f"Seconds until an uncaptured hold lapses and its points are "
                                 f"available again (default {DEFAULT_LIFETIME_S}, at most "
                                 f"{MAX_LIFETIME_S}: 7 days)."})
    member_pin = Pin(metadata={
        "format": "password",
        "description": "The member's PIN, where the partner's redemption policy asks for one "
                       "at this many points: a hold is the redemption's authorisation."})


class CaptureSchema(StrictSchema):
    EXAMPLE = {"claim_id": "till-7-0816", "points": 450}
    claim_id = Identifier(required=True, metadata={
        "description": "The burn's claim id: the capture books a burn under it."})
    points = Points(metadata={
        "description": "How many of the held points to redeem (default: all); the rest is "
                       "released."})


class HoldViewSchema(Schema):
    hold_id = fields.String(required=True)
    member_id = fields.String(required=True, allow_none=True)
    partner_id = fields.String(required=True)
    points = StrictInteger(required=True, metadata={"description": "The points held."})
    occurred_at = Rfc3339(required=True)
    created_at = Rfc3339(required=True)
    expires_at = Rfc3339(required=True, metadata={
        "description": "When the hold lapses unless captured or voided before."})
    status = fields.String(required=True, validate=validate.OneOf(
        ["open", "captured", "voided", "lapsed"]), metadata={
        "description": "open: the points are held. captured: redeemed (see claim). voided or "
                       "lapsed: released."})
    closed_at = Rfc3339(allow_none=True, metadata={
        "description": "When it was captured or voided (null while open or once lapsed)."})
    captured_points = fields.Integer(allow_none=True)
    claim_id = fields.String(allow_none=True, metadata={
        "description": "The burn that captured the hold."})
    claim = fields.Nested(ClaimSchema, allow_none=True, metadata={
        "description": "In the answer to a capture: the burn it booked."})


# --- batches ---------------------------------------------------------------------------------

class BatchReversalSchema(ReversalSchema):
    """A reversal in a batch: the claim it reverses is named in the body, not the path."""
    claim_id = Identifier(required=True)


# Each item is validated on its own, by the schema of the endpoint it stands for: an item's
# errors are the ones that endpoint would answer, with pointers into the item.
_ITEM_SCHEMAS = {EntryKind.EARN: EarnSchema(), EntryKind.BURN: BurnSchema(),
                 EntryKind.REVERSAL: BatchReversalSchema(), ENROLMENT: EnrolSchema()}
_KINDS = ", ".join(str(kind) for kind in BATCH_KINDS)


def batch_item(raw) -> Item | Problem:
    """One item of a batch, validated: an Item, or the validation problem that answers it."""
    if not isinstance(raw, dict):
        return Problem("validation-error", "A batch item must be a JSON object.",
                       errors=[{"pointer": "/", "detail": "Must be an object."}])
    kind = raw.get("kind")
    schema = _ITEM_SCHEMAS.get(kind) if isinstance(kind, str) else None
    if schema is None:
        return Problem("validation-error", "The item's kind is missing or unknown.",
                       errors=[{"pointer": "/kind", "detail": f"Must be one of: {_KINDS}."}])
    try:
        return Item(kind, schema.load({name: value for name, value in raw.items()
                                       if name != "kind"}))
    except ValidationError as error:
        return validation_problem(error.messages)


class BatchSchema(StrictSchema):
    EXAMPLE = {"claims": [
        {"kind": ENROLMENT, "member_id": "M-1002"},
        {"kind": str(EntryKind.EARN), "claim_id": "order-44", "member_id": "M-1002", "points": 120,
         "occurred_at": "2026-05-04T10:02:00+02:00"},
        {"kind": str(EntryKind.BURN), "claim_id": "till-7-0816", "member_id": "M-1001", "points": 30,
         "occurred_at": "2026-05-04T10:03:00Z"},
        {"kind": str(EntryKind.REVERSAL), "claim_id": "order-43", "reversal_id": "order-43-return-1",
         "points": 20, "occurred_at": "2026-05-04T10:04:00Z"}]}
    claims = fields.List(
        fields.Raw(metadata={"type": "object", "description":
                   f"An item: `kind` ({_KINDS}) and the fields of its endpoint's body: "
                   "earn as POST /v1/earn, burn as POST /v1/burn, reversal as "
                   "POST /v1/claims/{claim_id}/reversals with the claim_id of the claim it "
                   "reverses in the item, enrolment as POST /v1/members."}),
        required=True,
        validate=validate.Length(1, MAX_ITEMS, error=f"Must hold 1 to {MAX_ITEMS} items."),
        metadata={"description": f"1 to {MAX_ITEMS} items, answered in this order."})


class BatchResultSchema(Schema):
    status = fields.Integer(required=True, metadata={
        "description": "The status this item would be answered alone: 201 booked (or "
                       "enrolled), 200 enrolled before, or the problem's status."})
    replayed = fields.Boolean(required=True, metadata={
        "description": "A claim booked before with the same content: its booking, as "
                       "Idempotent-Replayed: true answers it alone."})
    body = fields.Dict(required=True, metadata={
        "description": "What the item would be answered alone: the claim, the member, or "
                       "the problem (type, title, status, detail, errors)."})


class BatchSummarySchema(Schema):
    booked = fields.Integer(required=True, metadata={"description": "Claims booked now."})
    replayed = fields.Integer(required=True, metadata={
        "description": "Claims booked before with the same content (replayed)."})
    enrolled = fields.Integer(required=True, metadata={"description": "Cards enrolled now."})
    existing = fields.Integer(required=True, metadata={
        "description": "Enrolments of cards enrolled before."})
    refused = fields.Integer(required=True, metadata={
        "description": "Items answered with a problem: nothing of them was booked."})


class BatchAnswerSchema(Schema):
    results = fields.List(fields.Nested(BatchResultSchema), required=True, metadata={
        "description": "One result per item, in the order of the items."})
    summary = fields.Nested(BatchSummarySchema, required=True, metadata={
        "description": "The results counted: every item is one of these."})


# --- listings: query parameters and pages ---------------------------------------------------

MAX_CLAIMS_PAGE = 500


class ClaimListQuerySchema(StrictSchema):
    member_id = Identifier(metadata={"description": "Only this member's claims."})
    period = Period(metadata={"description": "Only claims booked into this settlement month."})
    kind = fields.String(validate=validate.OneOf([str(k) for k in CLAIM_KINDS]))
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


# --- campaigns and coupons over the API (partners/bonus_api.py) -----------------------------

path_parameter("campaign_id", ID_PATTERN, "A campaign's id, as it was added.")

# A window's bound: a date (the start of that day; for `ends` the end of it) or a date-time to
# the minute or second, in the coalition's time zone unless it carries an offset. The pattern is
# only the shape: coalition/bonus_terms.py reads the value, in the coalition's time zone.
WHEN_PATTERN = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt][0-9]{2}:[0-9]{2}"
                r"(:[0-9]{2}(\.[0-9]{1,6})?)?([Zz]|[+-][0-9]{2}:[0-9]{2})?)?$")
_WHEN = re.compile(WHEN_PATTERN, re.ASCII)
MIN_YEAR, MAX_YEAR = 1970, 9998
MAX_LISTED_PARTIES = 1000
_KINDS_OF_BONUS = [bonus_terms.MULTIPLIER, bonus_terms.FIXED]
_VALUES = {bonus_terms.MULTIPLIER: re.compile(r"[0-9]{1,3}(\.[0-9]{1,4})?", re.ASCII),
           bonus_terms.FIXED: re.compile(r"[0-9]{1,10}", re.ASCII)}
_VALUE_ERRORS = {
    bonus_terms.MULTIPLIER: f"A multiplier's value is a decimal above 1 and at most "
                            f"{bonus_terms.MAX_FACTOR}, with at most 4 places, as a string "
                            "(\"2\": double points).",
    bonus_terms.FIXED: f"A fixed bonus's value is 1 to {MAX_POINTS} points, as a string of "
                       "digits (\"50\").",
}


class When(fields.String):
    def __init__(self, **kwargs) -> None:
        super().__init__(validate=validate.Regexp(WHEN_PATTERN), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str) or not _WHEN.fullmatch(value):
            raise ValidationError("Must be a date (YYYY-MM-DD) or a date-time "
                                  "(YYYY-MM-DDTHH:MM[:SS], coalition time unless an offset is "
                                  "given).")
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError("Not a valid date or date-time.") from None
        # Year 1 with an offset, or the day after 9999-12-31, is no instant Python can hold.
        if not MIN_YEAR <= int(value[:4]) <= MAX_YEAR:
            raise ValidationError(f"The year must be {MIN_YEAR} to {MAX_YEAR}.")
        return value


class _BonusTermsSchema(StrictSchema):
    """What campaigns and coupons share: terms fixed once added."""
    id = Identifier(required=True, metadata={"description": "Your id for it, unique: sending "
                                                            "an id used before is refused."})
    name = Text(required=True, validate=validate.Length(1, 200))
    kind = fields.String(required=True, validate=validate.OneOf(_KINDS_OF_BONUS), metadata={
        "description": "multiplier: the earn's points times `value` in all; fixed: `value` "
                       "bonus points per qualifying earn."})
    value = fields.String(required=True, validate=validate.Length(1, 20), metadata={
        "description": "multiplier: the factor, a decimal above 1 and at most "
                       f"{bonus_terms.MAX_FACTOR} with at most 4 places (\"2\": double "
                       f"points); fixed: 1 to {MAX_POINTS} points. A string, so that a factor "
                       "is never a binary float."})
    starts = When(required=True, metadata={
        "description": "A date (from the start of that day) or a date-time, coalition time "
                       "unless it has an offset. Not in a closed month."})
    ends = When(required=True, metadata={
        "description": "A date (through the end of that day) or a date-time (exclusive), "
                       "coalition time unless it has an offset. After `starts`."})

    @validates_schema
    def _value_and_window(self, data, **kwargs):
        # ASCII digits first: str.isdigit and int() take other scripts' digits, and "²" passed
        # isdigit only to fail int() (a 500).
        if not _VALUES[data["kind"]].fullmatch(data["value"]):
            raise ValidationError(_VALUE_ERRORS[data["kind"]], "value")
        try:
            bonus_terms.parse_value(data["kind"], data["value"])
        except Problem:
            raise ValidationError(_VALUE_ERRORS[data["kind"]], "value") from None
        # A request's window is read in the coalition's time zone; a body loaded outside one
        # (a schema's example, on its own) in UTC: either way, the same bounds in both.
        tz = current_app.config["COALITION_TIMEZONE"] if has_app_context() else "UTC"
        starts = bonus_terms.parse_instant(data["starts"], tz, "starts")
        ends = bonus_terms.parse_instant(data["ends"], tz, "ends", end=True)
        if ends <= starts:
            raise ValidationError("The window is empty: ends must lie after starts.", "ends")


class CampaignCreateSchema(_BonusTermsSchema):
    EXAMPLE = {"id": "double-weekend", "name": "Double points weekend", "kind": "multiplier",
               "value": "2", "starts": "2026-05-09", "ends": "2026-05-10",
               "funder": "example-shop", "partners": ["example-shop"], "cap_per_member": 500}
    funder = Identifier(required=True, metadata={
        "description": "Who pays for the bonus: a registered partner, or the operator."})
    partners = fields.List(Identifier(), validate=validate.Length(1, MAX_LISTED_PARTIES),
                           allow_none=True, metadata={
        "description": "Whose earns qualify (registered partners); absent or null: every "
                       "partner's."})
    tiers = fields.List(Identifier(), validate=validate.Length(1, MAX_LISTED_PARTIES),
                        allow_none=True, metadata={
        "description": "Tier names whose members qualify; absent or null: every member."})
    segment = Identifier(allow_none=True, metadata={
        "description": "A segment's id: only its members qualify, and only with their "
                       "marketing consent."})
    cap_per_member = Points(allow_none=True, metadata={
        "description": "Bonus points per member, at most."})
    cap_total = Points(allow_none=True, metadata={"description": "Bonus points in all, at most."})


class CouponCreateSchema(_BonusTermsSchema):
    EXAMPLE = {"id": "spring-50", "name": "50 extra points", "kind": "fixed", "value": "50",
               "starts": "2026-05-01", "ends": "2026-05-31"}
    partner_id = Identifier(metadata={
        "description": "Whose earns qualify. A partner publishes for itself (absent, or its own "
                       "id); the operator names the partner."})
    funder = Identifier(metadata={
        "description": "Who pays for the bonus: by default the coupon's partner. A partner "
                       "publishing may name only itself; the operator any partner, or itself."})


class WindowQuerySchema(StrictSchema):
    active_at = Rfc3339(metadata={"description": "Only those whose window holds this instant."})
    active = fields.String(validate=validate.OneOf(["true", "false"]), metadata={
        "description": "true: only those running now (not with active_at)."})

    @validates_schema
    def _one_filter(self, data, **kwargs):
        if "active_at" in data and "active" in data:
            raise ValidationError("Give active or active_at, not both.", "active")


def _instant(description: str = "", **kwargs):
    """A time in an answer: RFC 3339, UTC."""
    return fields.String(metadata={"format": "date-time", "description": description}, **kwargs)


class CampaignViewSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(_KINDS_OF_BONUS))
    factor = fields.String(required=True, allow_none=True, metadata={
        "description": "multiplier: the earn's points times this in all (\"2\": double)."})
    bonus_points = fields.Integer(required=True, allow_none=True, metadata={
        "description": "fixed: the bonus points per qualifying earn."})
    starts_at = _instant("The window's first instant.", required=True)
    ends_at = _instant("The window's end (exclusive); once ended early, when it ended.",
                       required=True)
    partners = fields.List(fields.String(), required=True, allow_none=True, metadata={
        "description": "Whose earns qualify; null: every partner's."})
    tiers = fields.List(fields.String(), required=True, allow_none=True, metadata={
        "description": "Tiers whose members qualify; null: every member."})
    segment = fields.String(required=True, allow_none=True)
    funder = fields.String(required=True, metadata={"description": "Who pays for the bonus."})
    cap_per_member = fields.Integer(required=True, allow_none=True)
    cap_total = fields.Integer(required=True, allow_none=True)
    created_at = _instant(required=True)
    ended_at = _instant("When it was ended early; null: it runs its whole window.",
                        required=True, allow_none=True)
    changed = fields.Boolean(metadata={
        "description": "Only in the answer of an end: whether this request ended it (false: "
                       "it had ended already)."})


class CampaignListSchema(Schema):
    campaigns = fields.List(fields.Nested(CampaignViewSchema), required=True, metadata={
        "description": "By start, then id."})


class CouponViewSchema(Schema):
    id = fields.String(required=True)
    partner_id = fields.String(required=True, metadata={"description": "Earns here qualify."})
    name = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(_KINDS_OF_BONUS))
    factor = fields.String(required=True, allow_none=True, metadata={
        "description": "multiplier: the earn's points times this in all (\"2\": double)."})
    bonus_points = fields.Integer(required=True, allow_none=True, metadata={
        "description": "fixed: the bonus points."})
    starts_at = _instant("The window's first instant.", required=True)
    ends_at = _instant("The window's end (exclusive); once ended early, when it ended.",
                       required=True)
    funder = fields.String(required=True, metadata={"description": "Who pays for the bonus."})
    published_by = fields.String(required=True, metadata={
        "description": "The partner that published it, or operator."})
    created_at = _instant(required=True)
    ended_at = _instant("When it was ended early; null: it runs its whole window.",
                        required=True, allow_none=True)
    changed = fields.Boolean(metadata={
        "description": "Only in the answer of an end: whether this request ended it (false: "
                       "it had ended already)."})


class CouponListSchema(Schema):
    coupons = fields.List(fields.Nested(CouponViewSchema), required=True, metadata={
        "description": "By start, then id."})


# --- segments (the operator's groups of members) ---------------------------------------------

path_parameter("segment_id", ID_PATTERN, "A segment's id, as it was added.")


class SegmentCreateSchema(StrictSchema):
    EXAMPLE = {"id": "shop-regulars", "name": "Active at example-shop in the last 90 days",
               "rule": "active-at", "partner_id": "example-shop", "days": 90}
    id = Identifier(required=True)
    name = Text(required=True, validate=validate.Length(1, 200))
    rule = fields.String(required=True, validate=validate.OneOf(segments.RULES), metadata={
        "description": f"{segments.ACTIVE_AT}: an earn or burn at `partner_id` in the last "
                       f"`days` days; {segments.EARNED_AT_LEAST}: at least `points` earned "
                       f"(any partner) in the last `days` days; {segments.INACTIVE}: no earn "
                       "or burn at all in the last `days` days."})
    days = StrictInteger(required=True, validate=validate.Range(1, segments.MAX_DAYS), metadata={
        "description": "The rule's look-back window, in days."})
    partner_id = Identifier(metadata={"description": f"With {segments.ACTIVE_AT}, and only "
                                                     "with it: the partner."})
    points = Points()  # with earned-at-least, and only with it (see rule)

    @validates_schema
    def _rule_and_its_fields(self, data, **kwargs):
        errors = {name: [f"Goes with the {rule} rule, and only with it."]
                  for name, rule in (("partner_id", segments.ACTIVE_AT),
                                     ("points", segments.EARNED_AT_LEAST))
                  if (name in data) != (data["rule"] == rule)}
        if errors:
            raise ValidationError(errors)


class SegmentViewSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    rule = fields.String(required=True, validate=validate.OneOf(segments.RULES))
    partner_id = fields.String(required=True, allow_none=True)
    days = fields.Integer(required=True)
    points = fields.Integer(required=True, allow_none=True)
    created_at = _instant(required=True)


class SegmentListSchema(Schema):
    segments = fields.List(fields.Nested(SegmentViewSchema), required=True, metadata={
        "description": "By id."})
