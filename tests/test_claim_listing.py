"""Listings: a member's history for the operator, and GET /v1/claims for partners."""
from __future__ import annotations

import pytest

from coalition.database import db
from coalition.errors import Problem
from coalition.history import member_history
from tests.conftest import ago


def test_member_history_spans_partners_newest_first(app, acme, bolt):
    acme.client.enrol("M1")
    acme.client.enrol("M2")
    acme.client.earn("e1", "M1", 100, occurred_at=ago(minutes=4), description="receipt 7")
    acme.client.earn("e2", "M2", 5, occurred_at=ago(minutes=4))
    bolt.client.burn("b1", "M1", 40, occurred_at=ago(minutes=3))
    acme.client.reverse("e1", "r1", 70, occurred_at=ago(minutes=1))
    with app.app_context():
        history = member_history(db.session, "M1")
        assert [(e["claim_id"], e["kind"], e["partner_id"], e["points"], e["reverses"])
                for e in history] == [("r1", "reversal", "acme", 70, "e1"),
                                      ("b1", "burn", "bolt", 40, None),
                                      ("e1", "earn", "acme", 100, None)]
        assert history[2]["description"] == "receipt 7" and history[2]["status"] == "booked"
        assert set(history[0]) == {"claim_id", "kind", "partner_id", "points", "occurred_at",
                                   "recorded_at", "period", "late", "status", "reverses",
                                   "description"}
        assert history[0]["recorded_at"].endswith("Z") and history[0]["late"] is False
        assert [e["claim_id"] for e in member_history(db.session, "M1", limit=2)] == ["r1", "b1"]
        with pytest.raises(Problem) as unknown:
            member_history(db.session, "nobody")
        assert unknown.value.slug == "not-found"
