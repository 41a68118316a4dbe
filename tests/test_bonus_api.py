"""Campaigns and coupons over the partner API (partners/bonus_api.py): the operator (the partner
of kind operator, signing with its own key) adds, lists, shows and ends campaigns and publishes
coupons for any partner; a partner publishes, reads and ends its own coupons and reads the
campaigns that concern it. What the API adds lands in the ledger as the command line's does:
the next earn gets the bonus."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text

from coalition import audit
from coalition.database import db
from coalition.models import AuditEvent, Campaign, ClosedPeriod, Coupon
from coalition.vocabulary import MAX_POINTS
from partners import service as partner_service
from partners.client import PartnerClient
from partners.models import OPERATOR
from tests.conftest import (Partner, ago, await_lock_wait, new_key, postgres_only, public_pem,
                            transport_for)

UTC = timezone.utc
FOREVER = {"starts": "2026-01-01", "ends": "2099-12-31"}


@pytest.fixture
def operator(app):
    """The coalition registered as the operator, holding a key of its own."""
    key = new_key("EdDSA")
    with app.app_context():
        now = datetime.now(UTC)
        partner_service.add_partner(db.session, "coalition", "Coalition", now=now, kind=OPERATOR)
        kid = partner_service.add_key(db.session, "coalition", public_pem(key), now=now).kid
        db.session.commit()
    return Partner("coalition", key, kid,
                   PartnerClient("", "coalition", key, transport=transport_for(app)))


@pytest.fixture
def parties(operator, acme, bolt):
    assert acme.client.enrol("M1").status == 201
    return operator.client, acme.client, bolt.client


def slug(response) -> str:
    assert response.headers["content-type"] == "application/problem+json", response.body
    return response.json()["type"].rsplit("/", 1)[-1]


def campaign_body(campaign_id="double", **change):
    return {"id": campaign_id, "name": "Double points", "kind": "multiplier", "value": "2",
            "funder": "coalition", **FOREVER, **change}


def coupon_body(coupon_id="spring-50", **change):
    return {"id": coupon_id, "name": "50 extra points", "kind": "fixed", "value": "50",
            **FOREVER, **change}


def add_campaign(client, campaign_id="double", **change):
    answer = client.request("POST", "/v1/campaigns", campaign_body(campaign_id, **change))
    assert answer.status == 201, answer.body
    return answer.json()


def publish(client, coupon_id="spring-50", **change):
    answer = client.request("POST", "/v1/coupons", coupon_body(coupon_id, **change))
    assert answer.status == 201, answer.body
    return answer.json()


def ids(answer, key: str) -> list[str]:
    assert answer.status == 200, answer.body
    return [row["id"] for row in answer.json()[key]]


def earn(partner_client, claim_id, points=100, at=None):
    answer = partner_client.earn(claim_id, "M1", points, occurred_at=at or ago(minutes=1))
    assert answer.status == 201, answer.body
    return answer.json()


def audit_rows(app, action: str) -> list[tuple[str, str]]:
    with app.app_context():
        return [(e.actor, e.subject) for e in audit.events(db.session, action=action)]


def counts(app) -> tuple[int, int, int]:
    with app.app_context():
        return tuple(db.session.scalar(select(func.count()).select_from(model))
                     for model in (Campaign, Coupon, AuditEvent))


# --- campaigns -------------------------------------------------------------------------------

def test_the_operator_adds_shows_lists_and_ends_a_campaign_and_earns_follow(app, parties):
    operator, acme, bolt = parties
    added = add_campaign(operator, "welcome", kind="fixed", value="25", partners=["acme"],
                         cap_per_member=500, cap_total=100000)
    assert {k: added[k] for k in ("id", "kind", "factor", "bonus_points", "partners", "tiers",
                                  "funder", "cap_per_member", "cap_total", "ended_at")} == {
        "id": "welcome", "kind": "fixed", "factor": None, "bonus_points": 25,
        "partners": ["acme"], "tiers": None, "funder": "coalition", "cap_per_member": 500,
        "cap_total": 100000, "ended_at": None}
    assert (added["starts_at"], added["ends_at"]) == ("2025-12-31T23:00:00Z",
                                                      "2099-12-31T23:00:00Z")  # Berlin days
    assert "changed" not in added
    shown = operator.request("GET", "/v1/campaigns/welcome")
    assert shown.status == 200 and shown.json() == added
    assert ids(operator.request("GET", "/v1/campaigns"), "campaigns") == ["welcome"]

    booked = earn(acme, "e1")
    assert booked["bonuses"] == [{"type": "campaign", "id": "welcome", "funder": "coalition",
                                  "points": 25}]
    assert earn(bolt, "b1")["bonuses"] == []  # bolt's earns do not qualify

    ended = operator.request("POST", "/v1/campaigns/welcome/end")
    assert ended.status == 200, ended.body
    assert ended.json()["changed"] is True and ended.json()["ended_at"] == ended.json()["ends_at"]
    again = operator.request("POST", "/v1/campaigns/welcome/end")
    assert again.status == 200 and again.json() == {**ended.json(), "changed": False}
    # After the end (the client sends whole seconds: the next one).
    assert earn(acme, "e2", at=datetime.now(UTC) + timedelta(seconds=1))["bonuses"] == []
    assert ids(operator.request("GET", "/v1/campaigns?active=true"), "campaigns") == []

    assert audit_rows(app, "campaign") == [("partner:coalition", "campaign:welcome")] * 2
    with app.app_context():
        actions = [e.action for e in audit.events(db.session, subject="campaign:welcome")]
    assert actions == ["campaign.add", "campaign.end"]


def test_a_partner_reads_the_campaigns_that_concern_it_and_no_others(parties):
    operator, acme, bolt = parties
    add_campaign(operator, "acme-only", partners=["acme"])
    add_campaign(operator, "bolt-funded", funder="bolt", partners=["bolt"])
    add_campaign(operator, "acme-pays-for-bolt", funder="acme", partners=["bolt"])
    add_campaign(operator, "everyone", starts="2098-01-01", ends="2098-01-31")
    assert ids(acme.request("GET", "/v1/campaigns"), "campaigns") == [
        "acme-only", "acme-pays-for-bolt", "everyone"]
    assert ids(bolt.request("GET", "/v1/campaigns"), "campaigns") == [
        "acme-pays-for-bolt", "bolt-funded", "everyone"]
    assert len(ids(operator.request("GET", "/v1/campaigns"), "campaigns")) == 4
    hidden = acme.request("GET", "/v1/campaigns/bolt-funded")
    assert hidden.status == 404 and slug(hidden) == "not-found"
    assert bolt.request("GET", "/v1/campaigns/everyone").status == 200

    # Filters: running now, or at an instant.
    assert ids(acme.request("GET", "/v1/campaigns?active=true"), "campaigns") == [
        "acme-only", "acme-pays-for-bolt"]
    assert ids(acme.request("GET", "/v1/campaigns?active_at=2098-01-15T12:00:00Z"),
               "campaigns") == ["acme-only", "acme-pays-for-bolt", "everyone"]
    for query in ("active=true&active_at=2098-01-15T12:00:00Z", "active=yes",
                  "active_at=2098-01-15", "colour=red"):
        refused = acme.request("GET", f"/v1/campaigns?{query}")
        assert refused.status == 422 and slug(refused) == "validation-error", query


def test_a_partner_can_neither_add_nor_end_a_campaign(app, parties):
    operator, acme, _ = parties
    add_campaign(operator, "double")
    before = counts(app)
    for body in (campaign_body("mine", funder="acme"), {}, {"id": 7}):
        refused = acme.request("POST", "/v1/campaigns", body)
        assert refused.status == 403 and slug(refused) == "forbidden", body  # before the body
    refused = acme.request("POST", "/v1/campaigns/double/end")
    assert refused.status == 403 and slug(refused) == "forbidden"
    assert acme.request("GET", "/v1/campaigns/double").json()["ended_at"] is None
    assert counts(app) == before

    for method, path in (("GET", "/v1/campaigns/ghost"), ("POST", "/v1/campaigns/ghost/end"),
                         ("GET", "/v1/campaigns/-not-an-id")):
        missing = operator.request(method, path)
        assert missing.status == 404 and slug(missing) == "not-found", path
    assert counts(app) == before


@pytest.mark.parametrize("change, pointer, detail", [
    ({"starts": "2026-03-28", "ends": "2026-03-27"}, "/ends", "window is empty"),
    ({"starts": "2026-03-28T10:00", "ends": "2026-03-28T10:00"}, "/ends", "window is empty"),
    ({"starts": "27.03.2027"}, "/starts", "Must be a date"),
    ({"ends": "2026-02-30"}, "/ends", "Not a valid date"),
    ({"starts": "0001-01-01T00:00+01:00"}, "/starts", "year"),
    ({"ends": "9999-12-31"}, "/ends", "year"),
    ({"value": "1"}, "/value", "above 1"),
    ({"value": "2.00001"}, "/value", "4 places"),
    ({"value": "NaN"}, "/value", "above 1"),
    ({"value": 2}, "/value", "Not a valid string"),
    ({"kind": "fixed", "value": "1.5"}, "/value", "1 to"),
    ({"kind": "fixed", "value": str(MAX_POINTS + 1)}, "/value", "1 to"),
    ({"kind": "fixed", "value": "\u00b2"}, "/value", "1 to"),  # a digit to isdigit, not to int
    ({"kind": "fixed", "value": "\u0665\u0660"}, "/value", "1 to"),  # 50 in Arabic-Indic digits
    ({"value": "\u0662"}, "/value", "above 1"),
    ({"value": " 2"}, "/value", "above 1"),
    ({"kind": "double"}, "/kind", "Must be one of"),
    ({"cap_per_member": 0}, "/cap_per_member", None),
    ({"cap_total": MAX_POINTS + 1}, "/cap_total", None),
    ({"cap_total": "100"}, "/cap_total", None),
    ({"partners": []}, "/partners", None),
    ({"name": ""}, "/name", None),
    ({"id": "-x"}, "/id", None),
    ({"colour": "red"}, "/colour", "Unknown field"),
    ({"funder": "ghost"}, None, "no registered partner"),
    ({"partners": ["acme", "ghost"]}, None, "ghost"),
    ({"segment": "ghost"}, None, "No segment"),
    ({"id": "double"}, None, "exists already"),
])
def test_bad_campaigns_are_problems_and_write_nothing(app, parties, change, pointer, detail):
    operator = parties[0]
    add_campaign(operator, "double")
    before = counts(app)
    refused = operator.request("POST", "/v1/campaigns", campaign_body("other", **change))
    assert refused.status == 422 and slug(refused) == "validation-error", refused.body
    problem = refused.json()
    if pointer is not None:
        assert [e["pointer"] for e in problem["errors"]] == [pointer]
    if detail is not None:
        said = [problem["detail"], *(e["detail"] for e in problem.get("errors", []))]
        assert any(detail in text for text in said), said
    assert "--" not in problem["detail"]  # no command line option named to an API caller
    assert counts(app) == before
    assert ids(operator.request("GET", "/v1/campaigns"), "campaigns") == ["double"]


def test_a_campaign_cannot_reach_into_a_closed_month_nor_read_a_broken_body(app, parties):
    operator = parties[0]
    with app.app_context():
        db.session.add(ClosedPeriod(period="2027-02", closed_at=datetime.now(UTC)))
        db.session.commit()
    before = counts(app)
    refused = operator.request("POST", "/v1/campaigns", campaign_body(
        starts="2027-02-28", ends="2027-03-05"))
    assert refused.status == 422 and "2027-02 is closed" in refused.json()["detail"]
    for body in (b"{", b'{"id": "a", "id": "b"}', b"[]"):
        headers = operator.sign("POST", "/v1/campaigns", body)
        with app.test_client() as client:
            answer = client.post("/v1/campaigns", data=body, headers=headers)
        assert answer.status_code == 400, body
        assert answer.get_json()["type"] == "/problems/malformed-request"
    assert counts(app) == before
    # The first instant of March in Berlin is still 28 February in UTC: allowed.
    assert add_campaign(operator, starts="2027-03-01", ends="2027-03-05")["starts_at"] == \
        "2027-02-28T23:00:00Z"


# --- coupons ---------------------------------------------------------------------------------

def test_a_partner_publishes_a_coupon_a_member_activates_it_and_an_earn_gets_it(app, parties):
    operator, acme, bolt = parties
    coupon = publish(acme)
    assert {k: coupon[k] for k in ("id", "partner_id", "funder", "published_by", "bonus_points",
                                   "factor", "starts_at", "ended_at")} == {
        "id": "spring-50", "partner_id": "acme", "funder": "acme", "published_by": "acme",
        "bonus_points": 50, "factor": None, "starts_at": "2025-12-31T23:00:00Z",
        "ended_at": None}
    assert acme.request("GET", "/v1/coupons/spring-50").json() == coupon
    assert ids(acme.request("GET", "/v1/coupons"), "coupons") == ["spring-50"]
    assert ids(operator.request("GET", "/v1/coupons"), "coupons") == ["spring-50"]
    assert ids(bolt.request("GET", "/v1/coupons"), "coupons") == []
    assert bolt.request("GET", "/v1/coupons/spring-50").status == 404

    assert earn(acme, "e1")["coupons_not_activated"] == ["spring-50"]
    assert bolt.activate_coupon("M1", "spring-50").status == 201  # any partner activates
    assert earn(acme, "e2")["bonuses"] == [{"type": "coupon", "id": "spring-50",
                                            "funder": "acme", "points": 50}]
    assert earn(acme, "e3")["bonuses"] == []  # once
    assert audit_rows(app, "coupon.publish") == [("partner:acme", "coupon:spring-50")]


def test_a_partner_publishes_only_for_itself(app, parties):
    _, acme, _ = parties
    before = counts(app)
    for change in ({"partner_id": "bolt"}, {"funder": "bolt"}, {"funder": "coalition"},
                   {"partner_id": "bolt", "funder": "acme"}):
        refused = acme.request("POST", "/v1/coupons", coupon_body(**change))
        assert refused.status == 403 and slug(refused) == "forbidden", change
    assert counts(app) == before
    assert publish(acme, partner_id="acme", funder="acme")["funder"] == "acme"


def test_the_operator_publishes_for_any_partner_with_any_funder(app, parties):
    operator, acme, bolt = parties
    coupon = publish(operator, "paid-by-us", partner_id="acme", funder="coalition",
                     kind="multiplier", value="1.5")
    assert (coupon["partner_id"], coupon["funder"], coupon["published_by"], coupon["factor"]) == (
        "acme", "coalition", "operator", "1.5")
    assert publish(operator, "bolt-default", partner_id="bolt")["funder"] == "bolt"
    before = counts(app)
    for body, where in ((coupon_body("x"), "/partner_id"),
                        (coupon_body("x", partner_id="ghost"), None),
                        (coupon_body("x", partner_id="acme", funder="ghost"), None),
                        (coupon_body("x", partner_id="acme", starts="2026-05-02",
                                     ends="2026-05-01"), "/ends")):
        refused = operator.request("POST", "/v1/coupons", body)
        assert refused.status == 422 and slug(refused) == "validation-error", body
        if where:
            assert [e["pointer"] for e in refused.json()["errors"]] == [where]
    assert counts(app) == before
    assert ids(operator.request("GET", "/v1/coupons"), "coupons") == ["bolt-default",
                                                                     "paid-by-us"]
    assert ids(acme.request("GET", "/v1/coupons"), "coupons") == ["paid-by-us"]
    assert audit_rows(app, "coupon.publish") == [("partner:coalition", "coupon:paid-by-us"),
                                                 ("partner:coalition", "coupon:bolt-default")]


def test_a_coupon_is_ended_by_its_partner_or_the_operator_only(app, parties, monkeypatch):
    operator, acme, bolt = parties
    publish(acme)
    publish(operator, "bolt-pays", partner_id="acme", funder="bolt")
    before = counts(app)
    other = bolt.request("POST", "/v1/coupons/spring-50/end")
    assert other.status == 404 and slug(other) == "not-found"  # not bolt's: not there for bolt
    funder = bolt.request("POST", "/v1/coupons/bolt-pays/end")  # bolt reads it, pays for it
    assert funder.status == 403 and slug(funder) == "forbidden"
    assert bolt.request("GET", "/v1/coupons/bolt-pays").json()["ended_at"] is None
    assert acme.request("POST", "/v1/coupons/ghost/end").status == 404
    assert counts(app) == before

    ended = acme.request("POST", "/v1/coupons/spring-50/end")
    assert ended.status == 200 and ended.json()["changed"] is True
    again = operator.request("POST", "/v1/coupons/spring-50/end")
    assert again.status == 200 and again.json() == {**ended.json(), "changed": False}
    assert operator.request("POST", "/v1/coupons/bolt-pays/end").json()["changed"] is True
    assert audit_rows(app, "coupon.end") == [("partner:acme", "coupon:spring-50"),
                                             ("partner:coalition", "coupon:bolt-pays")]
    late = acme.activate_coupon("M1", "spring-50")
    assert late.status == 409 and slug(late) == "coupon-ended"
    assert ids(acme.request("GET", "/v1/coupons?active=true"), "coupons") == []
    assert ids(acme.request("GET", "/v1/coupons"), "coupons") == ["bolt-pays", "spring-50"]


@pytest.mark.parametrize("change, pointer", [
    ({"value": "0", "kind": "fixed"}, "/value"),
    ({"starts": "2026-05-01T25:00"}, "/starts"),
    ({"name": "x" * 201}, "/name"),
    ({"partners": ["acme"]}, "/partners"),  # a campaign's field
])
def test_bad_coupons_are_problems_and_write_nothing(app, parties, change, pointer):
    _, acme, _ = parties
    before = counts(app)
    refused = acme.request("POST", "/v1/coupons", coupon_body(**change))
    assert refused.status == 422 and slug(refused) == "validation-error", refused.body
    assert [e["pointer"] for e in refused.json()["errors"]] == [pointer]
    assert counts(app) == before


def test_a_coupon_cannot_begin_in_a_closed_month(app, parties):
    _, acme, _ = parties
    with app.app_context():
        db.session.add(ClosedPeriod(period="2027-02", closed_at=datetime.now(UTC)))
        db.session.commit()
    refused = acme.request("POST", "/v1/coupons", coupon_body(starts="2027-02-27"))
    assert refused.status == 422 and "2027-02 is closed" in refused.json()["detail"]
    assert counts(app)[1] == 0


# --- segments --------------------------------------------------------------------------------

def test_the_operator_defines_segments_that_campaigns_target_and_partners_cannot_see(app,
                                                                                    parties):
    operator, acme, _ = parties
    body = {"id": "acme-regulars", "name": "Active at acme", "rule": "active-at",
            "partner_id": "acme", "days": 90}
    added = operator.request("POST", "/v1/segments", body)
    assert added.status == 201, added.body
    assert {k: v for k, v in added.json().items() if k != "created_at"} == {
        "id": "acme-regulars", "name": "Active at acme", "rule": "active-at",
        "partner_id": "acme", "days": 90, "points": None}
    assert operator.request("GET", "/v1/segments/acme-regulars").json() == added.json()
    assert ids(operator.request("GET", "/v1/segments"), "segments") == ["acme-regulars"]
    assert add_campaign(operator, segment="acme-regulars")["segment"] == "acme-regulars"
    missing = operator.request("GET", "/v1/segments/ghost")
    assert missing.status == 404 and slug(missing) == "not-found"

    before = counts(app)
    for method, path, sent in (("POST", "/v1/segments", {**body, "id": "mine"}),
                               ("GET", "/v1/segments", None),
                               ("GET", "/v1/segments/acme-regulars", None)):
        refused = acme.request(method, path, sent)
        assert refused.status == 403 and slug(refused) == "forbidden", path
    for change, pointers in (({"rule": "inactive"}, ["/partner_id"]),
                             ({"rule": "earned-at-least"}, ["/partner_id", "/points"]),
                             ({"points": 5}, ["/points"]), ({"days": 0}, ["/days"]),
                             ({"days": "90"}, ["/days"]), ({"rule": "rich"}, ["/rule"]),
                             ({"partner_id": "ghost"}, None), ({}, None)):  # ({}: exists)
        refused = operator.request("POST", "/v1/segments", {**body, **change})
        assert refused.status == 422 and slug(refused) == "validation-error", change
        if pointers:
            assert sorted(e["pointer"] for e in refused.json()["errors"]) == pointers, change
        assert "--" not in refused.json()["detail"]
    assert counts(app) == before
    assert audit_rows(app, "segment.add") == [("partner:coalition", "segment:acme-regulars")]


@postgres_only
def test_a_campaign_added_twice_at_once_is_added_once_and_the_other_is_refused(app, parties):
    """Both requests find no campaign of that id; the second insert waits for the first
    and is then refused by the primary key: 422 as a campaign added before, never a 500."""
    operator = parties[0]
    with app.app_context():
        engine = db.engine
        first = engine.connect()
        transaction = first.begin()
        first.execute(text(
            "INSERT INTO campaigns (id, name, kind, factor, starts_at, ends_at, funder_id, "
            "awarded, created_at) VALUES ('double', 'First', 'multiplier', 2, "
            "'2026-01-01T00:00:00Z', '2099-01-01T00:00:00Z', 'coalition', 0, now())"))
        with ThreadPoolExecutor(1) as pool:
            second = pool.submit(operator.request, "POST", "/v1/campaigns", campaign_body())
            await_lock_wait(engine, still_running=lambda: not second.done())
            transaction.commit()
            first.close()
            answer = second.result(timeout=30)
    assert answer.status == 422 and "exists already" in answer.json()["detail"], answer.body
    assert operator.request("GET", "/v1/campaigns/double").json()["name"] == "First"
    assert audit_rows(app, "campaign.add") == []
