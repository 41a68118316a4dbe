"""Redemption holds (coalition/holds.py): reserve points, capture them as a burn or void them,
lapse by time. Through signed HTTP requests, on SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from coalition.database import db
from coalition.models import Hold
from partners import views
from tests.conftest import ago
from tests.test_claims_api import problem_slug


@pytest.fixture
def clock(monkeypatch):
    """The partner API's clock, moved by hand (a hold lapses by time alone)."""
    now = [datetime.now(timezone.utc)]
    monkeypatch.setattr(views, "_now", lambda: now[0])
    return now


@pytest.fixture
def member(app, acme, bolt, clock):
    assert acme.client.enrol("M1").status == 201
    assert acme.client.earn("seed", "M1", 1000, occurred_at=ago(minutes=30)).status == 201
    return acme, bolt


def balance(partner, card="M1") -> dict:
    body = partner.client.balance(card).json()
    return {"available": body["available"], "held": body["held"]}


def test_a_hold_reserves_points_and_a_capture_burns_part_of_them(app, member, verify_clean):
    acme, bolt = member
    r = acme.client.hold("h1", "M1", 300, occurred_at=ago(minutes=1))
    assert r.status == 201, r.json()
    assert r.json()["status"] == "open" and r.json()["points"] == 300
    assert balance(acme) == {"available": 700, "held": 300}
    # Points held are not available to anyone: a burn of what is left passes, one more fails.
    assert problem_slug(bolt.client.burn("b1", "M1", 701, occurred_at=ago(minutes=1))) == \
        "insufficient-points"
    captured = acme.client.capture("h1", "c1", points=250)
    assert captured.status == 201, captured.json()
    body = captured.json()
    assert body["status"] == "captured" and body["captured_points"] == 250
    assert body["claim"]["kind"] == "burn" and body["claim"]["points"] == 250
    assert body["claim"]["balance_after"] == 750
    assert balance(acme) == {"available": 750, "held": 0}  # the 50 not captured are released
    claim = acme.client.claim("c1").json()
    assert claim["points"] == 250 and claim["member_id"] == "M1"
    verify_clean()


def test_a_void_releases_the_hold_and_closed_holds_answer_hold_closed(app, member):
    acme, _ = member
    assert acme.client.hold("h1", "M1", 400, occurred_at=ago(minutes=1)).status == 201
    voided = acme.client.void("h1")
    assert voided.status == 200 and voided.json()["status"] == "voided"
    assert balance(acme) == {"available": 1000, "held": 0}
    for again in (acme.client.void("h1"), acme.client.capture("h1", "c1")):
        assert again.status == 409 and problem_slug(again) == "hold-closed"
        assert again.json()["hold_status"] == "voided"
    assert acme.client.claim("c1").status == 404  # nothing was booked


def test_a_hold_lapses_by_time_and_cannot_be_captured_after(app, member, clock):
    acme, _ = member
    assert acme.client.hold("h1", "M1", 400, occurred_at=ago(minutes=1), expires_in=60).status == 201
    clock[0] += timedelta(seconds=59)
    assert balance(acme)["held"] == 400
    clock[0] += timedelta(seconds=1)
    assert balance(acme) == {"available": 1000, "held": 0}
    assert acme.client.get_hold("h1").json()["status"] == "lapsed"
    late = acme.client.capture("h1", "c1")
    assert late.status == 409 and late.json()["hold_status"] == "lapsed"


def test_holds_are_idempotent_like_claims(app, member):
    acme, _ = member
    at = ago(minutes=1)
    first = acme.client.hold("h1", "M1", 300, occurred_at=at)
    again = acme.client.hold("h1", "M1", 300, occurred_at=at)
    assert again.status == 201 and again.headers.get("idempotent-replayed") == "true"
    assert again.json() == first.json()
    assert balance(acme)["held"] == 300  # held once
    different = acme.client.hold("h1", "M1", 301, occurred_at=at)
    assert different.status == 409 and problem_slug(different) == "claim-id-conflict"
    captured = acme.client.capture("h1", "c1")
    replay = acme.client.capture("h1", "c1")
    assert replay.status == 201 and replay.headers.get("idempotent-replayed") == "true"
    assert replay.json()["claim"] == captured.json()["claim"]
    assert balance(acme) == {"available": 700, "held": 0}  # burned once
    assert problem_slug(acme.client.capture("h1", "c1", points=299)) == "claim-id-conflict"
    assert problem_slug(acme.client.capture("h1", "c2")) == "hold-closed"


def test_another_partners_hold_is_not_found(app, member):
    acme, bolt = member
    assert acme.client.hold("h1", "M1", 300, occurred_at=ago(minutes=1)).status == 201
    for r in (bolt.client.capture("h1", "c1"), bolt.client.void("h1"), bolt.client.get_hold("h1")):
        assert r.status == 404 and problem_slug(r) == "not-found"
    # The same hold id is the other partner's own.
    assert bolt.client.hold("h1", "M1", 100, occurred_at=ago(minutes=1)).status == 201
    assert balance(acme)["held"] == 400


def test_a_hold_larger_than_what_is_available_is_refused(app, member):
    acme, bolt = member
    assert acme.client.hold("h1", "M1", 600, occurred_at=ago(minutes=1)).status == 201
    refused = bolt.client.hold("h2", "M1", 401, occurred_at=ago(minutes=1))
    assert refused.status == 422 and problem_slug(refused) == "insufficient-points"
    assert bolt.client.hold("h2", "M1", 400, occurred_at=ago(minutes=1)).status == 201
    assert balance(acme) == {"available": 0, "held": 1000}
    with app.app_context():
        assert db.session.query(Hold).count() == 2  # the refused hold left no row
