"""Fraud limits on claims (coalition/claim_limits.py): per member, points redeemed per day and
claims per minute; per partner, points issued per day. Through signed HTTP requests."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from coalition import audit
from coalition.claim_limits import ClaimLimits
from coalition.config import from_environment
from coalition.database import db
from partners import views
from tests.conftest import ago
from tests.test_claims_api import problem_slug


def limited(app, **limits) -> None:
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"], limits=ClaimLimits(**limits))


def hits(app) -> list[dict]:
    with app.app_context():
        return [audit.event_view(e)["after"] | {"subject": e.subject, "action": e.action}
                for e in audit.events(db.session) if e.action.endswith(".limit-hit")]


def refused_for(response, limit: str) -> None:
    assert response.status == 422 and problem_slug(response) == "limit-exceeded", response.json()
    assert f"(limit: {limit})" in response.json()["detail"]


@pytest.fixture
def members(app, acme, bolt):
    for card in ("M1", "M2"):
        assert acme.client.enrol(card).status == 201
        assert acme.client.earn(f"seed-{card}", card, 1000, occurred_at=ago(minutes=30)).status == 201
    return acme, bolt


def test_a_members_daily_redemption_counts_across_partners(app, members):
    acme, bolt = members
    limited(app, member_daily_redeem=100)
    assert acme.client.burn("b1", "M1", 60, occurred_at=ago(minutes=5)).status == 201
    refused_for(bolt.client.burn("b2", "M1", 50, occurred_at=ago(minutes=4)), "member-daily-redeem")
    assert bolt.client.burn("b3", "M1", 40, occurred_at=ago(minutes=3)).status == 201  # 100 in all
    refused_for(acme.client.burn("b4", "M1", 1, occurred_at=ago(minutes=2)), "member-daily-redeem")
    assert acme.client.burn("b5", "M2", 100, occurred_at=ago(minutes=2)).status == 201  # another member
    assert acme.client.earn("e1", "M1", 10, occurred_at=ago(minutes=1)).status == 201  # earns still book
    assert acme.client.balance("M1").json()["available"] == 1000 - 100 + 10
    assert [(h["action"], h["limit"], h["used"], h["requested"]) for h in hits(app)] == [
        ("member.limit-hit", "member-daily-redeem", 60, 50),
        ("member.limit-hit", "member-daily-redeem", 100, 1)]
    assert all(h["subject"].startswith("member-id:") for h in hits(app))  # no card in the log


def test_a_members_claims_per_minute_and_reversals_are_never_refused(app, members, monkeypatch):
    acme, bolt = members
    now = [datetime.now(timezone.utc) + timedelta(minutes=2)]  # the seed earns are older
    monkeypatch.setattr(views, "_now", lambda: now[0])
    limited(app, member_claims_per_minute=2)
    first = ago(minutes=1)
    assert acme.client.earn("e1", "M1", 10, occurred_at=first).status == 201
    assert bolt.client.burn("b1", "M1", 5, occurred_at=ago(minutes=1)).status == 201
    refused_for(acme.client.earn("e2", "M1", 10, occurred_at=ago(minutes=1)),
                "member-claims-per-minute")
    assert acme.client.reverse("e1", "r1", 10, occurred_at=ago(minutes=1)).status == 201
    assert acme.client.earn("e3", "M2", 10, occurred_at=ago(minutes=1)).status == 201
    replay = acme.client.earn("e1", "M1", 10, occurred_at=first)  # a retry replays, limit or not
    assert replay.status == 201 and replay.headers.get("idempotent-replayed") == "true"
    now[0] += timedelta(seconds=61)
    assert acme.client.earn("e2", "M1", 10, occurred_at=ago(minutes=1)).status == 201
    assert [h["limit"] for h in hits(app)] == ["member-claims-per-minute"]


def test_a_partners_daily_issuing(app, members):
    acme, bolt = members  # acme issued 2000 points seeding
    limited(app, partner_daily_issue=2100)
    assert acme.client.earn("e1", "M1", 100, occurred_at=ago(minutes=5)).status == 201
    refused_for(acme.client.earn("e2", "M2", 1, occurred_at=ago(minutes=4)), "partner-daily-issue")
    assert bolt.client.earn("e3", "M2", 500, occurred_at=ago(minutes=3)).status == 201
    assert acme.client.burn("b1", "M2", 10, occurred_at=ago(minutes=2)).status == 201
    [hit] = hits(app)
    assert (hit["action"], hit["subject"], hit["used"], hit["allowed"]) == (
        "partner.limit-hit", "partner:acme", 2100, 2100)


def test_a_batch_counts_its_own_items(app, members):
    acme, _ = members
    limited(app, member_claims_per_minute=3)  # the seed earns count: booked a moment ago
    earn = {"kind": "earn", "member_id": "M1", "points": 5, "occurred_at": ago(minutes=1)}
    r = acme.client.batch([{**earn, "claim_id": f"x{i}"} for i in range(3)]
                          + [{**earn, "member_id": "M2", "claim_id": "y"}])
    assert r.status == 200
    results = r.json()["results"]
    assert [x["status"] for x in results] == [201, 201, 422, 201]
    assert "(limit: member-claims-per-minute)" in results[2]["body"]["detail"]
    assert r.json()["summary"]["refused"] == 1
    assert len(hits(app)) == 1


def test_no_limit_unless_configured_and_nonsense_refused(app, members, monkeypatch):
    acme, _ = members
    for i in range(5):
        assert acme.client.earn(f"n{i}", "M1", 1, occurred_at=ago(minutes=1)).status == 201
    assert hits(app) == []
    monkeypatch.setenv("MEMBER_CLAIMS_PER_MINUTE", "0")
    with pytest.raises(ValueError, match="MEMBER_CLAIMS_PER_MINUTE must be a whole number"):
        from_environment("/tmp")
    monkeypatch.setenv("MEMBER_CLAIMS_PER_MINUTE", "30")
    monkeypatch.setenv("PARTNER_DAILY_ISSUE_LIMIT", "")
    settings = from_environment("/tmp")
    assert (settings["MEMBER_CLAIMS_PER_MINUTE"], settings["PARTNER_DAILY_ISSUE_LIMIT"]) == (30, None)
