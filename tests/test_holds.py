"""Redemption holds (coalition/holds.py): reserve points, capture them as a burn or void them,
lapse by time. Through signed HTTP requests, on SQLite and PostgreSQL."""
from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from coalition.database import db
from coalition.models import Hold
from partners import views
from tests.conftest import ago, await_lock_wait, postgres_only
from tests.test_claims_api import problem_slug
from tests.test_concurrency import in_parallel


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


# --- authorisation: placing a hold is the redemption's decision ---------------------------------

def test_a_locked_members_hold_is_refused_and_a_hold_placed_before_still_captures(app, member, runner):
    acme, _ = member
    assert acme.client.hold("h1", "M1", 100, occurred_at=ago(minutes=1)).status == 201
    assert runner.invoke(args=["members", "lock", "M1", "--reason", "case 7"]).exit_code == 0
    refused = acme.client.hold("h2", "M1", 100, occurred_at=ago(minutes=1))
    assert refused.status == 403 and problem_slug(refused) == "member-locked"
    assert problem_slug(acme.client.burn("b1", "M1", 10, occurred_at=ago(minutes=1))) == "member-locked"
    # The capture honours the authorisation given before the lock (as a card capture does).
    assert acme.client.capture("h1", "c1").status == 201
    assert balance(acme) == {"available": 900, "held": 0}


def test_the_pin_is_asked_when_the_hold_is_placed_not_when_captured(app, member):
    from dataclasses import replace

    from tests.test_redemption_policy import set_policy
    acme, _ = member
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"], pin_log_n=4)
    assert acme.client.set_pin("M1", "4711").status == 204
    set_policy(app, "acme", redeem_auth="pin", pin_above=0)
    assert problem_slug(acme.client.hold("h1", "M1", 100, occurred_at=ago(minutes=1))) == \
        "member-auth-required"
    assert problem_slug(acme.client.hold("h1", "M1", 100, occurred_at=ago(minutes=1),
                                         member_pin="0000")) == "member-auth-invalid"
    assert acme.client.hold("h1", "M1", 100, occurred_at=ago(minutes=1),
                            member_pin="4711").status == 201
    assert acme.client.capture("h1", "c1").status == 201


def test_open_holds_count_towards_the_daily_limits_and_released_ones_do_not(app, member):
    from tests.test_claim_limits import limited, refused_for
    from tests.test_redemption_policy import set_policy
    acme, bolt = member
    set_policy(app, "acme", daily_redeem_limit=300)
    assert acme.client.hold("h1", "M1", 200, occurred_at=ago(minutes=1)).status == 201
    refused_for_partner = acme.client.burn("b1", "M1", 101, occurred_at=ago(minutes=1))
    assert problem_slug(refused_for_partner) == "limit-exceeded"
    assert problem_slug(acme.client.hold("h2", "M1", 101, occurred_at=ago(minutes=1))) == \
        "limit-exceeded"
    assert acme.client.void("h1").status == 200  # released: no longer counted
    assert acme.client.burn("b1", "M1", 101, occurred_at=ago(minutes=1)).status == 201
    limited(app, member_daily_redeem=250)  # the member's limit across partners
    assert bolt.client.hold("h3", "M1", 149, occurred_at=ago(minutes=1)).status == 201
    refused_for(bolt.client.burn("b2", "M1", 1, occurred_at=ago(minutes=1)), "member-daily-redeem")
    assert bolt.client.capture("h3", "c3", points=100).status == 201  # captured: its burn counts
    assert bolt.client.burn("b2", "M1", 49, occurred_at=ago(minutes=1)).status == 201


def test_a_hold_counts_as_a_claim_per_minute(app, member):
    from tests.test_claim_limits import limited, refused_for
    acme, _ = member
    limited(app, member_claims_per_minute=3)  # the seed earn is one of them
    assert acme.client.hold("h1", "M1", 10, occurred_at=ago(minutes=1)).status == 201
    assert acme.client.hold("h2", "M1", 10, occurred_at=ago(minutes=1)).status == 201
    refused_for(acme.client.hold("h3", "M1", 10, occurred_at=ago(minutes=1)),
                "member-claims-per-minute")


# --- what a hold may reserve, and what a capture may find --------------------------------------

def test_a_hold_reserves_only_points_still_valid_when_it_lapses(app, acme, clock):
    from coalition.expiry import expire  # noqa: F401  (the lots' expiry: coalition/periods.py)
    from coalition.models import Lot
    assert acme.client.enrol("M1").status == 201
    assert acme.client.earn("old", "M1", 300, occurred_at=ago(minutes=30)).status == 201
    assert acme.client.earn("new", "M1", 200, occurred_at=ago(minutes=20)).status == 201
    with app.app_context():  # the first lot expires in an hour
        lot = db.session.query(Lot).filter(Lot.points == 300).one()
        lot.expires_at = clock[0] + timedelta(hours=1)
        db.session.commit()
    assert balance(acme) == {"available": 500, "held": 0}
    short = acme.client.hold("h1", "M1", 250, occurred_at=ago(minutes=1), expires_in=2 * 3600)
    assert short.status == 422 and problem_slug(short) == "insufficient-points"
    assert "200 points available to hold" in short.json()["detail"]
    assert acme.client.hold("h1", "M1", 250, occurred_at=ago(minutes=1), expires_in=1800).status == 201
    # A burn takes the soonest expiring points first, so the hold's capture still finds its own.
    assert acme.client.burn("b1", "M1", 250, occurred_at=ago(minutes=1)).status == 201
    assert balance(acme) == {"available": 0, "held": 250}
    clock[0] += timedelta(minutes=29)
    assert acme.client.capture("h1", "c1").status == 201
    assert balance(acme) == {"available": 0, "held": 0}


def test_a_capture_short_of_points_is_refused_and_the_hold_stays_open(app, member):
    acme, bolt = member
    assert acme.client.hold("h1", "M1", 900, occurred_at=ago(minutes=1)).status == 201
    # The seed earn is reversed almost whole: 10 of its points and 40 new ones are left.
    assert acme.client.reverse("seed", "seed-r", 990, occurred_at=ago(minutes=1)).status == 201
    assert acme.client.earn("e2", "M1", 40, occurred_at=ago(minutes=1)).status == 201
    assert balance(acme) == {"available": 50 - 900, "held": 900}
    short = acme.client.capture("h1", "c1")
    assert short.status == 422 and problem_slug(short) == "insufficient-points"
    assert acme.client.get_hold("h1").json()["status"] == "open"
    assert acme.client.claim("c1").status == 404
    assert acme.client.capture("h1", "c1", points=40).status == 201
    assert balance(acme) == {"available": 10, "held": 0}


def test_bad_hold_and_capture_bodies_are_refused_field_by_field(app, member):
    acme, _ = member
    at = ago(minutes=1)
    for expires_in in (0, 604801, "900", 1.5, True):
        r = acme.client.request("POST", "/v1/holds", {"hold_id": "h1", "member_id": "M1",
                                                      "points": 1, "occurred_at": at,
                                                      "expires_in": expires_in})
        assert r.status == 422 and r.json()["errors"][0]["pointer"] == "/expires_in", expires_in
    assert acme.client.hold("h1", "M1", 100, occurred_at=at, expires_in=604800).status == 201
    over = acme.client.capture("h1", "c1", points=101)
    assert over.status == 422 and over.json()["errors"][0]["pointer"] == "/points"
    assert acme.client.burn("used", "M1", 1, occurred_at=at).status == 201
    assert problem_slug(acme.client.capture("h1", "used")) == "claim-id-conflict"
    r = acme.client.request("POST", "/v1/holds/h1/capture", {"claim_id": "c1", "hold_id": "h1"})
    assert r.status == 422 and r.json()["errors"][0]["pointer"] == "/hold_id"
    assert acme.client.get_hold("h1").json()["status"] == "open"  # nothing changed it
    assert acme.client.capture("nope", "c1").status == 404
    assert acme.client.hold("h2", "NOBODY", 1, occurred_at=at).status == 404


def test_the_member_export_lists_the_holds(app, member, runner):
    import json
    acme, bolt = member
    assert acme.client.hold("h1", "M1", 100, occurred_at=ago(minutes=1)).status == 201
    assert bolt.client.hold("h2", "M1", 50, occurred_at=ago(minutes=1)).status == 201
    assert bolt.client.capture("h2", "c2", points=20).status == 201
    doc = json.loads(runner.invoke(args=["members", "export", "M1"]).output)
    assert [(h["partner"], h["hold_id"], h["points"], h["status"], h["captured_points"])
            for h in doc["holds"]] == [("acme", "h1", 100, "open", None),
                                       ("bolt", "h2", 50, "captured", 20)]
    assert doc["balance"]["held"] == 100


# --- concurrency (PostgreSQL, real threads each on its own connection) --------------------------

@postgres_only
def test_parallel_holds_and_burns_never_spend_the_same_points(app, acme, bolt, verify_clean):
    assert acme.client.enrol("M1").status == 201
    assert acme.client.earn("seed", "M1", 1000, occurred_at=ago(minutes=30)).status == 201

    def hold_or_burn(i):
        if i % 2:
            return "hold", acme.client.hold(f"h{i}", "M1", 70, occurred_at=ago(seconds=5)).status
        return "burn", bolt.client.burn(f"b{i}", "M1", 70, occurred_at=ago(seconds=5)).status
    outcomes = in_parallel(40, hold_or_burn)
    held = [i for i, (kind, status) in enumerate(outcomes) if kind == "hold" and status == 201]
    burned = [i for i, (kind, status) in enumerate(outcomes) if kind == "burn" and status == 201]
    assert len(held) + len(burned) == 14  # 1000 // 70: never more, and every refusal was needed
    assert {status for _, status in outcomes} <= {201, 422}
    assert balance(acme) == {"available": 1000 - 14 * 70, "held": 70 * len(held)}
    captured = in_parallel(len(held), lambda n: acme.client.capture(f"h{held[n]}", f"c{n}").status)
    assert captured == [201] * len(held)
    assert balance(acme) == {"available": 1000 - 14 * 70, "held": 0}
    verify_clean()


@postgres_only
def test_a_hold_lapsing_while_its_capture_waits_for_the_member_is_not_captured(app, acme, bolt):
    """The capture arrives in time, but the member is busy; by the time it gets its turn the
    hold has lapsed, and a burn that came meanwhile may have used the points: it is refused."""
    assert acme.client.enrol("M1").status == 201
    assert acme.client.earn("seed", "M1", 100, occurred_at=ago(minutes=30)).status == 201
    assert acme.client.hold("h1", "M1", 100, occurred_at=ago(seconds=5), expires_in=2).status == 201
    with app.app_context():
        engine = db.engine
        blocker = engine.connect()
        transaction = blocker.begin()
        blocker.execute(text("SELECT 1 FROM members WHERE external_id = 'M1' FOR UPDATE"))
        with ThreadPoolExecutor(1) as pool:
            capture = pool.submit(acme.client.capture, "h1", "c1")
            await_lock_wait(engine, still_running=lambda: not capture.done())
            time.sleep(2.2)  # the hold lapses while the capture waits
            transaction.rollback()
            blocker.close()
            answer = capture.result(timeout=30)
    assert answer.status == 409 and answer.json()["hold_status"] == "lapsed"
    assert acme.client.claim("c1").status == 404
    assert bolt.client.burn("b1", "M1", 100, occurred_at=ago(seconds=1)).status == 201


@postgres_only
def test_a_capture_racing_the_lapse_resolves_one_way_only(app, acme, bolt, verify_clean):
    """Rounds of a capture and another partner's burn of the same points sent at the instant the
    hold lapses: never both booked; the capture booked exactly when the hold says captured."""
    outcomes = Counter()
    for n in range(12):
        card = f"M{n}"
        assert acme.client.enrol(card).status == 201
        assert acme.client.earn(f"seed-{n}", card, 100, occurred_at=ago(minutes=30)).status == 201
        placed = acme.client.hold(f"h{n}", card, 100, occurred_at=ago(seconds=5), expires_in=1)
        assert placed.status == 201
        lapse = datetime.fromisoformat(placed.json()["expires_at"].replace("Z", "+00:00"))
        time.sleep(max(0.0, (lapse - datetime.now(timezone.utc)).total_seconds()
                       + (n % 4) * 0.012 - 0.03))  # from 30 ms before to 6 ms after it
        capture, burn = in_parallel(2, lambda i: (
            acme.client.capture(f"h{n}", f"c{n}") if i == 0
            else bolt.client.burn(f"b{n}", card, 100, occurred_at=ago(seconds=1))))
        hold = acme.client.get_hold(f"h{n}").json()
        assert not (capture.status == 201 and burn.status == 201)
        if capture.status == 201:
            assert hold["status"] == "captured" and burn.status == 422
            assert acme.client.claim(f"c{n}").json()["points"] == 100
        else:
            assert capture.status == 409 and capture.json()["hold_status"] == "lapsed"
            assert hold["status"] == "lapsed" and acme.client.claim(f"c{n}").status == 404
        assert balance(acme, card)["available"] == (0 if 201 in (capture.status, burn.status)
                                                    else 100)
        outcomes[(capture.status, burn.status)] += 1
    verify_clean()
    print("capture, burn outcomes at the lapse:", dict(outcomes))


def test_ledger_verify_checks_each_capture_against_its_hold(app, member, verify_clean):
    from coalition.verify import verify
    acme, _ = member
    assert acme.client.hold("h1", "M1", 100, occurred_at=ago(minutes=1)).status == 201
    assert acme.client.capture("h1", "c1", points=60).status == 201
    assert acme.client.hold("h2", "M1", 10, occurred_at=ago(minutes=1)).status == 201
    report = verify_clean()
    assert report["checked"]["holds"] == 2
    with app.app_context():
        db.session.query(Hold).filter(Hold.hold_id == "h1").update({"captured_points": 70})
        db.session.query(Hold).filter(Hold.hold_id == "h2").update({"captured_points": 10})
        db.session.commit()
        report = verify(db.session)
    assert [(v["check"], v["hold_id"]) for v in report["violations"]] == [
        ("hold-capture", "h1"), ("hold-capture", "h2")]


def test_erasing_a_member_voids_its_open_holds(app, member, runner):
    import json
    acme, _ = member
    assert acme.client.hold("h1", "M1", 100, occurred_at=ago(minutes=1)).status == 201
    assert acme.client.hold("h2", "M1", 50, occurred_at=ago(minutes=1)).status == 201
    assert acme.client.capture("h2", "c2").status == 201
    done = json.loads(runner.invoke(args=["members", "erase", "M1"]).output)
    assert done["holds_voided"] == 1
    voided = acme.client.get_hold("h1").json()
    assert voided["status"] == "voided" and voided["member_id"] is None
    assert acme.client.get_hold("h2").json()["status"] == "captured"
    assert problem_slug(acme.client.capture("h1", "c1")) == "hold-closed"
