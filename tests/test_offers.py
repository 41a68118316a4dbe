"""Segments (coalition/segments.py) and what a member can use now (GET /v1/members/{id}/offers,
coalition/offers.py): segment-targeted offers only with marketing consent."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from coalition import tiers
from coalition.database import db
from coalition.members import find
from coalition.segments import contains, get
from tests.conftest import ago


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output) if result.output.strip() else None


@pytest.fixture
def coalition(app, runner, acme, bolt):
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"],
                                         tiers=tiers.parse("Blue:0,Gold:1000"))
    for card in ("M1", "M2"):
        assert acme.client.enrol(card).status == 201
    assert acme.client.earn("e1", "M1", 1200, occurred_at=ago(days=2)).status == 201  # Gold
    assert bolt.client.earn("e2", "M2", 10, occurred_at=ago(days=2)).status == 201
    assert cli(runner, "segments", "add", "acme-regulars", "--name", "Acme in the last 90 days",
               "--rule", "active-at", "--partner", "acme", "--days", "90")[0] == 0

    def campaign(campaign_id, *extra):
        code, answer = cli(runner, "campaigns", "add", campaign_id, "--name", campaign_id,
                           "--kind", "fixed", "--value", "10", "--from", "2026-01-01",
                           "--until", "2099-12-31", "--funder", "acme", *extra)
        assert code == 0, answer
    campaign("for-all")
    campaign("gold-only", "--tiers", "Gold")
    campaign("regulars", "--segment", "acme-regulars")
    return acme, bolt


def offered(partner, card) -> list[str]:
    return [c["id"] for c in partner.client.offers(card).json()["campaigns"]]


def test_tier_and_segment_targeting_and_consent(coalition):
    acme, bolt = coalition
    assert offered(bolt, "M2") == ["for-all"]  # Blue, and not active at acme
    assert offered(acme, "M1") == ["for-all", "gold-only"]  # in the segment, but no consent yet
    assert acme.client.set_consent("M1", True, channel="email").status == 200
    assert offered(acme, "M1") == ["for-all", "gold-only", "regulars"]
    assert acme.client.set_consent("M1", False).status == 200  # the general consent decides
    assert offered(acme, "M1") == ["for-all", "gold-only"]
    body = acme.client.offers("M1").json()
    assert body["tier"] == "Gold" and body["member_id"] == "M1"
    assert acme.client.offers("NOBODY").status == 404


def test_coupons_running_now_with_the_members_activation(runner, coalition):
    acme, _ = coalition
    for coupon_id, until in (("now", "2099-12-31"), ("later", "2099-12-31")):
        start = "2026-01-01" if coupon_id == "now" else "2098-01-01"
        assert cli(runner, "coupons", "add", coupon_id, "--partner", "acme", "--name", coupon_id,
                   "--kind", "multiplier", "--value", "1.5", "--from", start, "--until", until)[0] == 0
    coupons = acme.client.offers("M1").json()["coupons"]
    assert [(c["id"], c["activated"], c["used"]) for c in coupons] == [("now", False, False)]
    assert acme.client.activate_coupon("M1", "now").status == 201
    assert acme.client.offers("M1").json()["coupons"][0]["activated"] is True


def test_segment_rules(app, runner, coalition):
    acme, bolt = coalition
    assert cli(runner, "segments", "add", "big", "--name", "Big earners", "--rule",
               "earned-at-least", "--points", "1000", "--days", "30")[0] == 0
    assert cli(runner, "segments", "add", "asleep", "--name", "No activity", "--rule",
               "inactive", "--days", "1")[0] == 0
    now = datetime.now(timezone.utc)
    with app.app_context():
        m1, m2 = find(db.session, "M1").id, find(db.session, "M2").id
        assert [contains(db.session, get(db.session, "big"), m, now=now) for m in (m1, m2)] == [True, False]
        assert contains(db.session, get(db.session, "asleep"), m1, now=now)  # its earn is 2 days old
        assert contains(db.session, get(db.session, "acme-regulars"), m1, now=now)
        assert not contains(db.session, get(db.session, "acme-regulars"), m2, now=now)
    for args, detail in ((("--rule", "active-at", "--days", "9"), "--partner"),
                         (("--rule", "inactive", "--days", "9", "--points", "5"), "--points"),
                         (("--rule", "active-at", "--partner", "ghost", "--days", "9"), "ghost"),
                         (("--rule", "inactive", "--days", "0"), "--days")):
        code, answer = cli(runner, "segments", "add", "bad", "--name", "Bad", *args)
        assert code == 1 and detail in answer["detail"], answer
    code, answer = cli(runner, "campaigns", "add", "c", "--name", "c", "--kind", "fixed", "--value",
                       "1", "--from", "2026-01-01", "--until", "2099-01-01", "--funder", "acme",
                       "--segment", "nope")
    assert code == 1 and "No segment" in answer["detail"]
    assert [s["id"] for s in cli(runner, "segments", "list")[1]] == ["acme-regulars", "asleep", "big"]
