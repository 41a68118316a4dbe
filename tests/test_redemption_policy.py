"""A partner's redemption policy (issue 14, finding 6): the member's PIN above a threshold, a
daily redemption limit per partner, and `partners set-policy`. Through signed HTTP requests.

PINs are hashed with a cheap scrypt cost here (n = 2**4) to keep the suite fast;
tests/test_member_pin.py runs the production parameters too.
"""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from coalition import audit
from coalition.database import db
from coalition.members import find
from coalition.models import Entry
from partners import service, views
from tests.conftest import ago
from tests.test_claims_api import problem_slug

UTC = timezone.utc


@pytest.fixture(autouse=True)
def cheap_pins(app):
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"], pin_log_n=4)


def set_policy(app, partner_id: str, **options) -> dict:
    with app.app_context():
        partner = service.set_policy(db.session, partner_id, now=datetime.now(UTC),
                                     **{k: str(v) for k, v in options.items()})
        db.session.commit()
        return service.policy_view(partner)


def member_row(app, card: str) -> dict:
    with app.app_context():
        m = find(db.session, card)
        return {"id": m.id, "pin_failures": m.pin_failures, "pin_locked": m.pin_locked_at is not None}


def burns(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(Entry.id)).where(Entry.kind == "burn"))


def audit_events(app, action: str) -> list[dict]:
    with app.app_context():
        return [audit.event_view(e) for e in audit.events(db.session, action=action)]


@pytest.fixture
def funded(acme, bolt):
    """M1 with 10000 points earned at acme and the PIN 2468 set at a till."""
    acme.client.enrol("M1")
    assert acme.client.earn("e1", "M1", 10_000, occurred_at=ago(minutes=30)).status == 201
    assert acme.client.set_pin("M1", "2468").status == 204
    return "M1"


# --- policy none ----------------------------------------------------------------------------

def test_policy_defaults_to_none_and_burns_as_before(app, acme, bolt, funded, verify_clean):
    with app.app_context():
        assert service.policy_view(service.get_partner(db.session, "bolt")) == {
            "redeem_auth": "none", "pin_above": None, "daily_redeem_limit": None}
    r = bolt.client.burn("b1", "M1", 9_000, occurred_at=ago(minutes=1))
    assert r.status == 201 and r.json()["balance_after"] == 1_000
    # A PIN sent where none is asked for is not looked at: a wrong one is not counted either.
    assert bolt.client.burn("b2", "M1", 10, occurred_at=ago(minutes=1), member_pin="0000").status == 201
    assert member_row(app, "M1")["pin_failures"] == 0
    verify_clean()


# --- the PIN ---------------------------------------------------------------------------------

def test_pin_is_needed_only_above_the_threshold(app, bolt, funded, verify_clean):
    set_policy(app, "bolt", redeem_auth="pin", pin_above=100)
    assert bolt.client.burn("b1", "M1", 100, occurred_at=ago(minutes=1)).status == 201  # at it: no PIN
    assert bolt.client.burn("b2", "M1", 1, occurred_at=ago(minutes=1)).status == 201
    missing = bolt.client.burn("b3", "M1", 101, occurred_at=ago(minutes=1))
    assert (missing.status, problem_slug(missing)) == (403, "member-auth-required")
    assert "member_pin" in missing.json()["detail"]
    ok = bolt.client.burn("b3", "M1", 101, occurred_at=ago(minutes=1), member_pin="2468")
    assert ok.status == 201 and "idempotent-replayed" not in ok.headers
    assert bolt.client.balance("M1").json()["available"] == 10_000 - 100 - 1 - 101
    verify_clean()


def test_pin_above_zero_asks_for_it_on_every_burn(app, bolt, funded):
    policy = set_policy(app, "bolt", redeem_auth="pin")  # no --pin-above: 0, the strictest
    assert policy == {"redeem_auth": "pin", "pin_above": 0, "daily_redeem_limit": None}
    r = bolt.client.burn("b1", "M1", 1, occurred_at=ago(minutes=1))
    assert problem_slug(r) == "member-auth-required"
    assert bolt.client.burn("b1", "M1", 1, occurred_at=ago(minutes=1), member_pin="2468").status == 201


def test_a_member_without_a_pin_is_told_so(app, acme, bolt):
    acme.client.enrol("M2")
    acme.client.earn("e2", "M2", 500, occurred_at=ago(minutes=5))
    set_policy(app, "bolt", redeem_auth="pin", pin_above=0)
    for pin in (None, "1234"):
        r = bolt.client.burn("b1", "M2", 10, occurred_at=ago(minutes=1), member_pin=pin)
        assert (r.status, problem_slug(r)) == (403, "member-auth-required")
        assert "has not set one" in r.json()["detail"]
    assert member_row(app, "M2")["pin_failures"] == 0 and burns(app) == 0


def test_a_wrong_pin_is_refused_counted_and_books_nothing(app, acme, bolt, funded, verify_clean):
    set_policy(app, "bolt", redeem_auth="pin", pin_above=0)
    r = bolt.client.burn("b1", "M1", 50, occurred_at=ago(minutes=1), member_pin="1111")
    assert (r.status, problem_slug(r)) == (403, "member-auth-invalid")
    assert "remain" not in r.json()["detail"]  # how many tries are left is not said
    assert member_row(app, "M1")["pin_failures"] == 1  # committed although the burn was refused
    assert burns(app) == 0 and bolt.client.claim("b1").status == 404
    assert acme.client.balance("M1").json()["available"] == 10_000
    # The refused claim id stays free: the retry with the right PIN books it.
    ok = bolt.client.burn("b1", "M1", 50, occurred_at=ago(minutes=1), member_pin="2468")
    assert ok.status == 201 and "idempotent-replayed" not in ok.headers
    verify_clean()


def test_the_token_of_a_wrong_pin_request_is_spent(app, bolt, funded):
    set_policy(app, "bolt", redeem_auth="pin", pin_above=0)
    body = bolt.client.encode_body({"claim_id": "b1", "member_id": "M1", "points": 5,
                                    "occurred_at": ago(minutes=1), "member_pin": "1111"})
    headers = bolt.client.sign("POST", "/v1/burn", body)
    with app.test_client() as c:
        assert c.post("/v1/burn", data=body, headers=headers).status_code == 403
        assert c.post("/v1/burn", data=body, headers=headers).status_code == 401  # not a free guess
    assert member_row(app, "M1")["pin_failures"] == 1


def test_the_fifth_wrong_pin_locks_redemption_everywhere_and_is_audited(app, acme, bolt, funded):
    set_policy(app, "bolt", redeem_auth="pin", pin_above=0)
    slugs = [problem_slug(bolt.client.burn(f"b{i}", "M1", 10, occurred_at=ago(minutes=1),
                                           member_pin=f"000{i}")) for i in range(1, 6)]
    assert slugs == ["member-auth-invalid"] * 4 + ["member-locked"]
    row = member_row(app, "M1")
    assert row == {"id": row["id"], "pin_failures": 5, "pin_locked": True}
    [event] = audit_events(app, "member.pin.lock")
    assert (event["actor"], event["subject"], event["before"]) == (
        "system", f"member-id:{row['id']}", {"pin_locked": False})
    assert event["after"] == {"pin_locked": True, "pin_failures": 5, "partner": "bolt"}
    assert "M1" not in json.dumps(event)  # the card number stays out of the append-only log
    # Locked for every redemption: the right PIN, a burn below any threshold, another partner
    # that asks for no PIN; not counted any more.
    for client, pin in ((bolt.client, "2468"), (acme.client, None), (acme.client, "1111")):
        r = client.burn("late", "M1", 1, occurred_at=ago(minutes=1), member_pin=pin)
        assert (r.status, problem_slug(r)) == (403, "member-locked")
        assert "wrong PINs" in r.json()["detail"]
    assert member_row(app, "M1")["pin_failures"] == 5 and burns(app) == 0
    assert len(audit_events(app, "member.pin.lock")) == 1
    # Earning and reading the balance still work.
    assert acme.client.earn("e9", "M1", 5, occurred_at=ago(minutes=1)).status == 201
    assert acme.client.balance("M1").json()["available"] == 10_005


def test_a_correct_pin_resets_the_count(app, bolt, funded):
    set_policy(app, "bolt", redeem_auth="pin", pin_above=0)
    for i in range(4):
        bolt.client.burn(f"w{i}", "M1", 1, occurred_at=ago(minutes=1), member_pin="9999")
    assert member_row(app, "M1")["pin_failures"] == 4
    assert bolt.client.burn("ok", "M1", 1, occurred_at=ago(minutes=1), member_pin="2468").status == 201
    assert member_row(app, "M1")["pin_failures"] == 0
    for i in range(4):
        r = bolt.client.burn(f"x{i}", "M1", 1, occurred_at=ago(minutes=1), member_pin="9999")
        assert problem_slug(r) == "member-auth-invalid"
    assert member_row(app, "M1") | {"id": 0} == {"id": 0, "pin_failures": 4, "pin_locked": False}


def test_a_burn_refused_after_a_correct_pin_leaves_the_count_as_it_was(app, bolt, funded):
    set_policy(app, "bolt", redeem_auth="pin", pin_above=0)
    bolt.client.burn("w1", "M1", 1, occurred_at=ago(minutes=1), member_pin="9999")
    r = bolt.client.burn("big", "M1", 20_000, occurred_at=ago(minutes=1), member_pin="2468")
    assert problem_slug(r) == "insufficient-points"
    assert member_row(app, "M1")["pin_failures"] == 1  # reset only when the burn books


def test_a_pin_failure_that_cannot_be_committed_answers_503_and_counts_nothing(app, bolt, funded,
                                                                              monkeypatch):
    from sqlalchemy.exc import OperationalError

    set_policy(app, "bolt", redeem_auth="pin", pin_above=0)

    def gone(*args, **kwargs):
        raise OperationalError("COMMIT", {}, Exception("server closed the connection"))
    with app.app_context():
        monkeypatch.setattr(db.session, "commit", gone)
        r = bolt.client.burn("b1", "M1", 5, occurred_at=ago(minutes=1), member_pin="1111")
        monkeypatch.undo()
    assert r.status == 503 and problem_slug(r) == "unavailable"
    assert member_row(app, "M1")["pin_failures"] == 0


def test_the_order_of_refusals(app, acme, bolt, funded):
    """Replay first; then the window, the locks, the PIN, the daily limit, the points."""
    set_policy(app, "bolt", redeem_auth="pin", pin_above=0, daily_redeem_limit=100)
    when = ago(minutes=1)
    assert bolt.client.burn("b1", "M1", 100, occurred_at=when, member_pin="2468").status == 201
    too_old = bolt.client.burn("b2", "M1", 5, occurred_at=ago(days=40), member_pin="1111")
    assert problem_slug(too_old) == "validation-error"
    assert member_row(app, "M1")["pin_failures"] == 0  # a claim out of its window is no guess
    # Over the limit and beyond the balance, but without the PIN: the PIN is asked for first.
    assert problem_slug(bolt.client.burn("b3", "M1", 50_000, occurred_at=when)) == "member-auth-required"
    assert problem_slug(bolt.client.burn("b3", "M1", 50_000, occurred_at=when,
                                         member_pin="1111")) == "member-auth-invalid"
    assert problem_slug(bolt.client.burn("b3", "M1", 50_000, occurred_at=when,
                                         member_pin="2468")) == "limit-exceeded"
    set_policy(app, "bolt", daily_redeem_limit="none")
    assert problem_slug(bolt.client.burn("b3", "M1", 50_000, occurred_at=when,
                                         member_pin="2468")) == "insufficient-points"


# --- replays -------------------------------------------------------------------------------

def test_a_booked_burn_replays_with_or_without_its_pin(app, acme, bolt, funded):
    set_policy(app, "bolt", redeem_auth="pin", pin_above=0)
    when = ago(minutes=1)
    first = bolt.client.burn("b1", "M1", 300, occurred_at=when, member_pin="2468")
    assert first.status == 201
    for pin in ("2468", None, "0000"):  # the PIN is not part of the claim's content
        again = bolt.client.burn("b1", "M1", 300, occurred_at=when, member_pin=pin)
        assert (again.status, again.headers.get("idempotent-replayed")) == (201, "true")
        assert again.json() == first.json()
    assert member_row(app, "M1")["pin_failures"] == 0  # a replay checks no PIN, counts nothing
    conflict = bolt.client.burn("b1", "M1", 301, occurred_at=when, member_pin="2468")
    assert problem_slug(conflict) == "claim-id-conflict"
    # Even once redemption is locked, the booked burn still replays.
    for i in range(5):
        bolt.client.burn(f"w{i}", "M1", 1, occurred_at=when, member_pin="1357")
    assert member_row(app, "M1")["pin_locked"]
    again = bolt.client.burn("b1", "M1", 300, occurred_at=when)
    assert again.status == 201 and again.json() == first.json()
    with app.app_context():
        entry = db.session.scalars(select(Entry).where(Entry.claim_id == "b1")).one()
        assert "2468" not in json.dumps({c.name: str(getattr(entry, c.name))
                                         for c in Entry.__table__.columns})


# --- the daily limit -----------------------------------------------------------------------

def test_the_burn_that_would_cross_the_daily_limit_is_refused(app, acme, bolt, make_partner,
                                                              funded, verify_clean):
    acme.client.enrol("M2")
    acme.client.earn("e2", "M2", 5_000, occurred_at=ago(minutes=20))
    set_policy(app, "bolt", daily_redeem_limit=500)
    assert bolt.client.burn("b1", "M1", 300, occurred_at=ago(minutes=2)).status == 201
    assert bolt.client.burn("b2", "M2", 200, occurred_at=ago(minutes=2)).status == 201  # = limit
    over = bolt.client.burn("b3", "M2", 1, occurred_at=ago(minutes=1))
    assert (over.status, problem_slug(over)) == (422, "limit-exceeded")
    detail = over.json()["detail"]
    assert "daily redemption limit of 500 points" in detail and "500 points redeemed" in detail
    assert burns(app) == 2 and bolt.client.claim("b3").status == 404
    assert acme.client.balance("M2").json()["available"] == 4_800
    # Other partners have their own limits (none here).
    assert acme.client.burn("a1", "M2", 1_000, occurred_at=ago(minutes=1)).status == 201
    # Audited once per partner and day, however many burns it refuses.
    assert problem_slug(bolt.client.burn("b4", "M1", 7, occurred_at=ago(minutes=1))) == "limit-exceeded"
    [event] = audit_events(app, "partner.policy.limit-hit")
    assert (event["actor"], event["subject"]) == ("system", "partner:bolt")
    assert event["after"] | {"day": None} == {"day": None, "daily_redeem_limit": 500,
                                             "redeemed": 500, "requested": 1}
    # Reversing a burn gives the member the points back, not the partner its allowance.
    assert bolt.client.reverse("b1", "r1", 300, occurred_at=ago(seconds=30)).status == 201
    assert problem_slug(bolt.client.burn("b5", "M1", 1, occurred_at=ago(seconds=10))) == "limit-exceeded"
    # Raising the limit lets the next burn through.
    set_policy(app, "bolt", daily_redeem_limit=600)
    assert bolt.client.burn("b5", "M1", 100, occurred_at=ago(seconds=10)).status == 201
    verify_clean()


def test_a_limit_of_zero_stops_redemption_at_that_partner(app, bolt, funded):
    set_policy(app, "bolt", daily_redeem_limit=0)
    assert problem_slug(bolt.client.burn("b1", "M1", 1, occurred_at=ago(minutes=1))) == "limit-exceeded"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_the_daily_limit_is_per_calendar_day_in_the_coalition_time_zone(app, acme, bolt,
                                                                         monkeypatch):
    tz = ZoneInfo(app.config["COALITION_TIMEZONE"])
    day = datetime.now(tz).date() - timedelta(days=3)
    late = datetime(day.year, day.month, day.day, 23, 30, tzinfo=tz).astimezone(UTC)
    after_midnight = late + timedelta(hours=1)  # 00:30 local: the same UTC date, a new local day
    assert after_midnight.astimezone(tz).date() == day + timedelta(days=1)
    assert after_midnight.date() == late.date()
    clock = Clock(late)
    monkeypatch.setattr(views, "_now", clock)

    def at(moment):
        return (moment - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    acme.client.enrol("M1")
    assert acme.client.earn("e1", "M1", 5_000, occurred_at=at(late)).status == 201
    set_policy(app, "bolt", daily_redeem_limit=1_000)
    assert bolt.client.burn("b1", "M1", 1_000, occurred_at=at(late)).status == 201
    assert problem_slug(bolt.client.burn("b2", "M1", 1, occurred_at=at(late))) == "limit-exceeded"
    clock.now = after_midnight
    assert bolt.client.burn("b2", "M1", 1_000, occurred_at=at(late)).status == 201
    assert problem_slug(bolt.client.burn("b3", "M1", 1, occurred_at=at(after_midnight))) == "limit-exceeded"
    days = [e["after"]["day"] for e in audit_events(app, "partner.policy.limit-hit")]
    assert days == [day.isoformat(), (day + timedelta(days=1)).isoformat()]


def test_a_backdated_burn_counts_on_the_day_it_is_booked(app, acme, bolt):
    acme.client.enrol("M1")
    acme.client.earn("e1", "M1", 5_000, occurred_at=ago(days=10))
    set_policy(app, "bolt", daily_redeem_limit=100)
    assert bolt.client.burn("b1", "M1", 100, occurred_at=ago(days=9)).status == 201
    # occurred_at a week earlier: still today's allowance (a leaked key cannot spread its
    # burns over the past 30 days).
    assert problem_slug(bolt.client.burn("b2", "M1", 1, occurred_at=ago(days=2))) == "limit-exceeded"


def test_a_booked_burn_replays_after_the_limit_is_used_up(app, bolt, funded):
    set_policy(app, "bolt", daily_redeem_limit=100)
    when = ago(minutes=1)
    first = bolt.client.burn("b1", "M1", 100, occurred_at=when)
    again = bolt.client.burn("b1", "M1", 100, occurred_at=when)
    assert again.status == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()


# --- the operator's command ----------------------------------------------------------------

def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output)


def test_set_policy_prints_the_partner_and_is_audited(app, runner, monkeypatch):
    monkeypatch.setenv("COALITION_OPERATOR", "alice")
    assert cli(runner, "partners", "add", "shop", "--name", "Shop")[0] == 0
    code, shown = cli(runner, "partners", "show", "shop")
    assert code == 0 and shown["policy"] == {"redeem_auth": "none", "pin_above": None,
                                             "daily_redeem_limit": None}
    code, partner = cli(runner, "partners", "set-policy", "shop", "--redeem-auth", "pin",
                        "--pin-above", "250", "--daily-redeem-limit", "100000")
    assert code == 0 and partner["id"] == "shop"
    assert partner["policy"] == {"redeem_auth": "pin", "pin_above": 250, "daily_redeem_limit": 100000}
    assert cli(runner, "partners", "list")[1][0]["policy"] == partner["policy"]
    [event] = audit_events(app, "partner.policy.set")
    assert (event["actor"], event["subject"]) == ("alice", "partner:shop")
    assert event["before"] == {"redeem_auth": "none", "pin_above": None, "daily_redeem_limit": None}
    assert event["after"] == partner["policy"]
    # Options not given keep their value; the same policy again records nothing.
    code, partner = cli(runner, "partners", "set-policy", "shop", "--daily-redeem-limit", "none")
    assert partner["policy"] == {"redeem_auth": "pin", "pin_above": 250, "daily_redeem_limit": None}
    assert cli(runner, "partners", "set-policy", "shop", "--pin-above", "250")[0] == 0
    code, partner = cli(runner, "partners", "set-policy", "shop", "--redeem-auth", "none")
    assert partner["policy"] == {"redeem_auth": "none", "pin_above": None, "daily_redeem_limit": None}
    assert len(audit_events(app, "partner.policy.set")) == 3


@pytest.mark.parametrize("args, says", [
    ((), "needs"),
    (("--redeem-auth", "maybe"), "none or pin"),
    (("--redeem-auth", "PIN"), "none or pin"),
    (("--pin-above", "10"), "only with --redeem-auth pin"),
    (("--redeem-auth", "none", "--pin-above", "10"), "only with --redeem-auth pin"),
    (("--redeem-auth", "pin", "--pin-above", "-1"), "whole number"),
    (("--redeem-auth", "pin", "--pin-above", "1e3"), "whole number"),
    (("--redeem-auth", "pin", "--pin-above", " 5"), "whole number"),
    (("--redeem-auth", "pin", "--pin-above", "\u0663"), "whole number"),  # ARABIC-INDIC THREE
    (("--redeem-auth", "pin", "--pin-above", "1000000001"), "at most"),
    (("--daily-redeem-limit", "-5"), "whole number"),
    (("--daily-redeem-limit", "lots"), "whole number"),
    (("--daily-redeem-limit", "99999999999999999999999"), "whole number"),
])
def test_set_policy_refuses_bad_values_with_json(app, runner, args, says):
    assert cli(runner, "partners", "add", "shop", "--name", "Shop")[0] == 0
    code, error = cli(runner, "partners", "set-policy", "shop", *args)
    assert code == 1 and error["error"] == "validation-error" and says in error["detail"]
    assert audit_events(app, "partner.policy") == []
    assert cli(runner, "partners", "show", "shop")[1]["policy"]["redeem_auth"] == "none"


def test_set_policy_of_an_unknown_partner(runner):
    assert cli(runner, "partners", "set-policy", "nope", "--redeem-auth", "pin") == (
        1, {"error": "not-found", "detail": "No partner 'nope'."})
