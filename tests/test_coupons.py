"""Coupons, activate-then-earn (coalition/coupons.py): published by the operator, activated by a
member through any partner. What an activated coupon books on an earn is not in here yet."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor  # noqa: F401
from datetime import datetime, timedelta, timezone

import pytest

from partners import views
from tests.test_claims_api import problem_slug

UTC = timezone.utc


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output) if result.output.strip() else None


@pytest.fixture
def published(runner, acme, bolt):
    assert acme.client.enrol("M1").status == 201
    code, coupon = cli(runner, "coupons", "add", "spring-50", "--partner", "acme", "--name",
                       "50 extra points", "--kind", "fixed", "--value", "50",
                       "--from", "2026-01-01", "--until", "2099-12-31")
    assert code == 0, coupon
    return coupon


def test_a_published_coupon_is_the_partners_own_by_default(runner, published):
    assert published["funder"] == "acme" and published["published_by"] == "operator"
    assert published["starts_at"] == "2025-12-31T23:00:00Z"  # midnight in Berlin
    assert cli(runner, "coupons", "show", "spring-50")[1] == published
    assert [c["id"] for c in cli(runner, "coupons", "list", "--active")[1]] == ["spring-50"]
    code, bad = cli(runner, "coupons", "add", "x", "--partner", "ghost", "--name", "X", "--kind",
                    "fixed", "--value", "5", "--from", "2026-01-01", "--until", "2026-02-01")
    assert code == 1 and "ghost" in bad["detail"]
    code, events = cli(runner, "audit", "list", "--action", "coupon.publish")
    assert [e["subject"] for e in events] == ["coupon:spring-50"]


def test_a_member_activates_a_coupon_once_through_any_partner(published, acme, bolt):
    first = bolt.client.activate_coupon("M1", "spring-50")
    assert first.status == 201, first.json()
    body = first.json()
    assert body["channel"] == "partner:bolt" and body["used"] is False
    assert body["coupon"]["partner_id"] == "acme" and body["coupon"]["bonus_points"] == 50
    again = acme.client.activate_coupon("M1", "spring-50")
    assert again.status == 200 and again.json() == body  # the first activation, unchanged
    assert acme.client.activate_coupon("M1", "nope").status == 404
    assert acme.client.activate_coupon("NOBODY", "spring-50").status == 404


def test_an_ended_coupon_cannot_be_activated(runner, published, acme, monkeypatch):
    code, ended = cli(runner, "coupons", "end", "spring-50")
    assert code == 0 and ended["changed"] is True
    monkeypatch.setattr(views, "_now", lambda: datetime.now(UTC) + timedelta(seconds=1))
    refused = acme.client.activate_coupon("M1", "spring-50")
    assert refused.status == 409 and problem_slug(refused) == "coupon-ended"
    code, by_operator = cli(runner, "coupons", "activate", "spring-50", "M1")
    assert code == 1 and by_operator["error"] == "coupon-ended"
