"""GET /v1/claims: the caller's own claims, filtered and paged by an opaque cursor.

Registered on the partner API's blueprint, so it is authenticated, rate limited and answers
errors exactly as every other partner route.
"""
from __future__ import annotations

from flask import g
from marshmallow import RAISE

from coalition import bonuses, clock
from coalition.api import problems
from coalition.clock import iso_utc
from coalition.database import db
from coalition.history import partner_claims
from coalition.vocabulary import EntryKind

from . import schemas
from .auth import AUTH, COMMON
from .service import claim_view
from .views import blp


@blp.route("/claims", methods=["GET"])
@blp.doc(security=AUTH, summary="The caller's own claims, newest first, a page at a time",
         description="Filters combine (all must match). `since` and `until` bound recorded_at: "
                     "since inclusive, until exclusive. Pass `next_cursor` back as `cursor`, with "
                     "the same filters, until it is null: every claim recorded before the first "
                     "page is answered exactly once, and claims booked while you page sort "
                     "before the first page (a claim whose booking was still in flight may "
                     "appear only on the next listing).")
@blp.arguments(schemas.ClaimListQuerySchema, location="query", unknown=RAISE)
@blp.response(200, schemas.ClaimListSchema, description="One page of claims, and the "
              "cursor of the next (null on the last page)")
@problems(blp, *COMMON, "validation-error")
def list_claims(query: dict):
    now = clock.now()
    after = query.pop("cursor", None)
    page, last = partner_claims(db.session, g.caller.partner_id, after=after, **query)
    given = bonuses.of_entries(db.session, [listed.entry.id for listed in page
                                            if listed.entry.kind == EntryKind.EARN])
    db.session.commit()
    claims = []
    for listed in page:
        view = claim_view(listed.entry, reversals=[], now=now,
                          reversed_points=listed.reversed_points,
                          reversals_total=listed.reversals_total,
                          bonus=(given.get(listed.entry.id, []), None)
                          if listed.entry.kind == EntryKind.EARN else None)
        del view["reversals"]  # reversals_total counts them; GET /v1/claims/{id} names them
        claims.append(view)
    return {"claims": claims,
            "next_cursor": schemas.cursor_of([iso_utc(last[0]), last[1]]) if last else None}
