"""Member PINs (issue 14, finding 6): PUT /v1/members/{id}/pin, scrypt storage, the operator's
unlock-pin and reset-pin, nothing in clear in the database or the logs, and on PostgreSQL
parallel guesses that queue on the member's row."""
from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections import Counter
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from sqlalchemy import select, text

from coalition import audit, pins
from coalition.database import db
from coalition.members import find
from partners import service
from tests.conftest import ago, postgres_only
from tests.test_claims_api import problem_slug
from tests.test_concurrency import in_parallel

UTC = timezone.utc


@pytest.fixture
def cheap_pins(app):
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"], pin_log_n=4)


def stored_hash(app, card: str) -> str | None:
    with app.app_context():
        return find(db.session, card).pin_hash


def state(app, card: str) -> dict:
    with app.app_context():
        return pins.pin_state(find(db.session, card))


def pin_policy(app, partner_id: str, pin_above: int = 0) -> None:
    with app.app_context():
        service.set_policy(db.session, partner_id, redeem_auth="pin", pin_above=str(pin_above),
                           now=datetime.now(UTC))
        db.session.commit()


@pytest.fixture
def member(acme):
    acme.client.enrol("M1")
    assert acme.client.earn("e1", "M1", 1_000, occurred_at=ago(minutes=10)).status == 201
    return "M1"


# --- setting and changing -------------------------------------------------------------------

def test_first_set_and_change(app, acme, bolt, member, cheap_pins):
    r = acme.client.set_pin("M1", "1234")
    assert (r.status, r.body) == (204, b"")
    assert state(app, "M1") == {"pin_set": True, "pin_failures": 0, "pin_locked": False}
    # Set already: a first set again is refused without looking at it (no free guesses).
    again = bolt.client.set_pin("M1", "1234")
    assert (again.status, problem_slug(again)) == (403, "member-auth-required")
    assert "current_pin" in again.json()["detail"]
    assert state(app, "M1")["pin_failures"] == 0
    # A change needs the current PIN; any partner's till can do it.
    assert bolt.client.set_pin("M1", "567890", current_pin="1234").status == 204
    pin_policy(app, "bolt")
    assert problem_slug(bolt.client.burn("b1", "M1", 5, occurred_at=ago(minutes=1),
                                         member_pin="1234")) == "member-auth-invalid"
    assert bolt.client.burn("b1", "M1", 5, occurred_at=ago(minutes=1),
                            member_pin="567890").status == 201
    # A change whose answer was lost is retried with the new PIN as the current one.
    assert bolt.client.set_pin("M1", "567890", current_pin="567890").status == 204


def test_a_wrong_current_pin_counts_like_a_wrong_burn(app, acme, bolt, member, cheap_pins):
    acme.client.set_pin("M1", "1234")
    pin_policy(app, "bolt")
    for i in range(2):
        r = acme.client.set_pin("M1", "4321", current_pin="0000")
        assert (r.status, problem_slug(r)) == (403, "member-auth-invalid")
    for i in range(2):
        bolt.client.burn(f"w{i}", "M1", 1, occurred_at=ago(minutes=1), member_pin="0000")
    assert state(app, "M1")["pin_failures"] == 4
    fifth = acme.client.set_pin("M1", "4321", current_pin="0000")
    assert (fifth.status, problem_slug(fifth)) == (403, "member-locked")
    # Locked: the right current PIN does not change it either.
    locked = acme.client.set_pin("M1", "4321", current_pin="1234")
    assert problem_slug(locked) == "member-locked"
    assert state(app, "M1") == {"pin_set": True, "pin_failures": 5, "pin_locked": True}
    [event] = [e for e in _events(app) if e["action"] == "member.pin.lock"]
    assert event["after"]["partner"] == "acme"


def test_set_pin_refusals(app, acme, member, cheap_pins):
    r = acme.client.set_pin("ghost", "1234")
    assert (r.status, problem_slug(r)) == (404, "not-found")
    r = acme.client.set_pin("M1", "1234", current_pin="1234")  # no PIN yet: pin alone
    assert (r.status, problem_slug(r)) == (422, "validation-error")
    assert r.json()["errors"][0]["pointer"] == "/current_pin"
    assert state(app, "M1")["pin_set"] is False
    assert acme.client.request("PUT", "/v1/members/bad%20id/pin", {"pin": "1234"}).status == 404


@pytest.mark.parametrize("body", [
    {"pin": "123"}, {"pin": "1234567"}, {"pin": "12a4"}, {"pin": 1234}, {"pin": None},
    {"pin": "\u0661\u0662\u0663\u0664"},  # ARABIC-INDIC digits: not ASCII
    {"pin": "1234\n"}, {"pin": " 1234"}, {"pin": "１２３４"}, {}, {"pin": "1234", "extra": 1},
    {"pin": "1234", "current_pin": "12"},
])
def test_malformed_pins_are_422_and_never_echoed(app, acme, member, body):
    r = acme.client.request("PUT", "/v1/members/M1/pin", body)
    assert (r.status, problem_slug(r)) == (422, "validation-error")
    # The request id is random hex and may contain a PIN like "12a4" by chance: it is not an echo.
    problem = {k: v for k, v in r.json().items() if k != "request_id"}
    for value in body.values():
        if isinstance(value, str) and len(value.strip()) >= 4:
            assert value not in json.dumps(problem, ensure_ascii=False)
    assert state(app, "M1")["pin_set"] is False


@pytest.mark.parametrize("pin", ["123", "1234567", "12a4", 1234, "\u0661\u0662\u0663\u0664"])
def test_a_malformed_member_pin_on_a_burn_is_422(app, acme, member, pin):
    r = acme.client.request("POST", "/v1/burn", {"claim_id": "b1", "member_id": "M1", "points": 1,
                                                 "occurred_at": ago(minutes=1), "member_pin": pin})
    assert (r.status, problem_slug(r)) == (422, "validation-error")
    assert r.json()["errors"] == [{"pointer": "/member_pin",
                                   "detail": "Must be a string of 4 to 6 digits (0-9)."}]


# --- storage --------------------------------------------------------------------------------

def test_production_scrypt_parameters(app, acme, bolt, member):
    """The configured cost (n = 2**14, r = 8, p = 1), not the tests' cheap one."""
    assert app.config["LEDGER_RULES"].pin_log_n == 14
    acme.client.enrol("M2")
    started = time.perf_counter()
    assert acme.client.set_pin("M1", "8642").status == 204
    elapsed = time.perf_counter() - started
    assert acme.client.set_pin("M2", "8642").status == 204
    first, second = stored_hash(app, "M1"), stored_hash(app, "M2")
    for stored in (first, second):
        scheme, params, salt, key = stored.split("$")
        assert (scheme, params) == ("scrypt", "ln=14,r=8,p=1")
        assert len(base64.urlsafe_b64decode(salt + "==")) == 16
        assert len(base64.urlsafe_b64decode(key + "=")) == 32
    assert first != second  # a salt per PIN: equal PINs do not look equal
    assert elapsed > 0.005  # a real key derivation happened (~45 ms on one core)
    pin_policy(app, "bolt")
    assert bolt.client.burn("b1", "M1", 5, occurred_at=ago(minutes=1), member_pin="8642").status == 201
    assert problem_slug(bolt.client.burn("b2", "M1", 5, occurred_at=ago(minutes=1),
                                         member_pin="8641")) == "member-auth-invalid"


def test_a_pin_hashed_at_an_old_cost_is_rehashed_when_next_entered(app, acme, bolt, member,
                                                                    cheap_pins):
    acme.client.set_pin("M1", "1357")
    old = stored_hash(app, "M1")
    assert old.startswith("scrypt$ln=4,")
    pin_policy(app, "bolt")
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"], pin_log_n=5)  # cost raised
    bolt.client.burn("w1", "M1", 1, occurred_at=ago(minutes=1), member_pin="0000")
    assert stored_hash(app, "M1") == old  # a wrong PIN changes nothing
    assert bolt.client.burn("b1", "M1", 1, occurred_at=ago(minutes=1), member_pin="1357").status == 201
    new = stored_hash(app, "M1")
    assert new.startswith("scrypt$ln=5,r=8,p=1$") and new != old
    assert pins.pin_matches(new, "1357") and not pins.pin_matches(new, "1358")


def all_rows_text(app) -> str:
    """Every value in every table, as text."""
    with app.app_context():
        out = []
        for table in db.metadata.sorted_tables:
            for row in db.session.execute(select(table)):
                out.append(" ".join(str(v) for v in row))
        return "\n".join(out)


def test_no_pin_in_clear_in_the_database_or_the_logs(app, acme, bolt, member, cheap_pins, caplog):
    first, second, wrong = "731946", "582047", "390215"
    caplog.set_level(logging.DEBUG)
    pin_policy(app, "bolt")
    assert acme.client.set_pin("M1", first).status == 204
    assert acme.client.set_pin("M1", second, current_pin=first).status == 204
    when = ago(minutes=1)
    assert bolt.client.burn("b1", "M1", 5, occurred_at=when, member_pin=second,
                            description="till 4").status == 201
    replay = bolt.client.burn("b1", "M1", 5, occurred_at=when, description="till 4")
    assert replay.headers["idempotent-replayed"] == "true"
    for i in range(5):  # to the lock, with its audit event
        bolt.client.burn(f"w{i}", "M1", 5, occurred_at=ago(minutes=1), member_pin=wrong)
    assert acme.client.set_pin("M1", first, current_pin=wrong).status == 403
    assert state(app, "M1")["pin_locked"]
    dump = all_rows_text(app)
    assert "scrypt$ln=4" in dump and "till 4" in dump  # the dump does hold the rows
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "/v1/burn" in logged  # the access log did write
    for pin in (first, second, wrong):
        assert pin not in dump
        assert pin not in logged


# --- the operator ---------------------------------------------------------------------------

def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output)


def _events(app) -> list[dict]:
    with app.app_context():
        return [audit.event_view(e) for e in audit.events(db.session, action="member.pin")]


def lock(bolt, app):
    pin_policy(app, "bolt")
    for i in range(5):
        bolt.client.burn(f"w{i}-{time.monotonic_ns()}", "M1", 1, occurred_at=ago(minutes=1),
                         member_pin="0000")
    assert state(app, "M1")["pin_locked"]


def test_unlock_pin_lifts_the_lock_and_keeps_the_pin(app, runner, acme, bolt, member, cheap_pins,
                                                     monkeypatch):
    monkeypatch.setenv("COALITION_OPERATOR", "alice")
    acme.client.set_pin("M1", "2580")
    lock(bolt, app)
    code, out = cli(runner, "members", "unlock-pin", "M1")
    assert code == 0
    assert out | {"member": 0} == {"member_id": "M1", "member": 0, "changed": True, "pin_set": True,
                                   "pin_failures": 0, "pin_locked": False, "locked": False}
    event = _events(app)[-1]
    assert (event["action"], event["actor"], event["subject"]) == (
        "member.pin.unlock", "alice", f"member-id:{out['member']}")
    assert (event["before"]["pin_locked"], event["after"]["pin_locked"]) == (True, False)
    assert bolt.client.burn("b1", "M1", 5, occurred_at=ago(minutes=1), member_pin="2580").status == 201
    code, out = cli(runner, "members", "unlock-pin", "M1")  # nothing to lift: nothing recorded
    assert code == 0 and out["changed"] is False
    assert [e["action"] for e in _events(app)] == ["member.pin.lock", "member.pin.unlock"]
    assert cli(runner, "members", "unlock-pin", "ghost") == (1, {"error": "not-found",
                                                                 "detail": "No such member."})


def test_reset_pin_removes_a_forgotten_pin(app, runner, acme, bolt, member, cheap_pins):
    acme.client.set_pin("M1", "2580")
    lock(bolt, app)
    code, out = cli(runner, "members", "reset-pin", "M1")
    assert code == 0 and (out["changed"], out["pin_set"], out["pin_locked"]) == (True, False, False)
    assert _events(app)[-1]["action"] == "member.pin.reset"
    assert stored_hash(app, "M1") is None
    r = bolt.client.burn("b1", "M1", 5, occurred_at=ago(minutes=1), member_pin="2580")
    assert problem_slug(r) == "member-auth-required" and "has not set one" in r.json()["detail"]
    assert acme.client.set_pin("M1", "1111").status == 204  # set afresh at a till
    assert bolt.client.burn("b1", "M1", 5, occurred_at=ago(minutes=1), member_pin="1111").status == 201
    assert cli(runner, "members", "reset-pin", "M1")[1]["changed"] is True
    assert cli(runner, "members", "reset-pin", "M1")[1]["changed"] is False


def test_the_operators_own_lock_is_apart_from_the_pin_lock(app, runner, acme, bolt, member,
                                                           cheap_pins):
    acme.client.set_pin("M1", "2580")
    with app.app_context():
        find(db.session, "M1").locked = True
        db.session.commit()
    r = bolt.client.burn("b1", "M1", 5, occurred_at=ago(minutes=1))
    assert problem_slug(r) == "member-locked" and "wrong PINs" not in r.json()["detail"]
    assert cli(runner, "members", "unlock-pin", "M1")[1] | {"member": 0} == {
        "member_id": "M1", "member": 0, "changed": False, "pin_set": True, "pin_failures": 0,
        "pin_locked": False, "locked": True}
    assert problem_slug(bolt.client.burn("b1", "M1", 5, occurred_at=ago(minutes=1))) == "member-locked"


# --- PostgreSQL: guesses in parallel queue on the member's row -----------------------------

@postgres_only
@pytest.mark.parametrize("guesses", [3, 12])
def test_parallel_wrong_pins_are_counted_one_by_one_and_lock_at_five(app, acme, bolt, member,
                                                                     cheap_pins, guesses):
    acme.client.set_pin("M1", "2580")
    pin_policy(app, "bolt")
    answers = in_parallel(guesses, lambda i: bolt.client.burn(
        f"g{i}", "M1", 5, occurred_at=ago(minutes=1), member_pin=f"{i:04d}"))
    slugs = Counter(problem_slug(r) for r in answers)
    counted = min(guesses, 5)
    if guesses < 5:
        assert slugs == {"member-auth-invalid": guesses}
    else:  # four told "invalid", the fifth locked it, the rest found it locked and were not counted
        assert slugs == {"member-auth-invalid": 4, "member-locked": guesses - 4}
    assert state(app, "M1") == {"pin_set": True, "pin_failures": counted,
                                "pin_locked": guesses >= 5}
    assert len([e for e in _events(app) if e["action"] == "member.pin.lock"]) == (guesses >= 5)


@postgres_only
def test_the_daily_limit_sum_uses_its_index(app, acme):
    """A year of claims of 20 partners: one partner's burns of one day come from the partial
    index ix_journal_entries_burns (migration 0008), not from a scan of its claims."""
    acme.client.enrol("M1")
    with app.app_context():
        member = find(db.session, "M1").id
        db.session.execute(text(
            "INSERT INTO journal_entries (kind, partner_id, claim_id, member_id, points, "
            "occurred_at, recorded_at, period, late, fingerprint, status, balance_after, "
            "entry_hash) SELECT CASE WHEN i % 2 = 0 THEN 'burn' ELSE 'earn' END, "
            "'p' || (i % 20), 'c' || i, :member, 1, now() - i * interval '5 minutes', "
            "now() - i * interval '5 minutes', '2026-01', false, 'f', 'booked', 0, 'h' "
            "FROM generate_series(1, 100000) AS i"), {"member": member})
        db.session.execute(text("ANALYZE journal_entries"))
        from coalition.redemption import redeemed_on_day
        statement = []
        from sqlalchemy import event

        @event.listens_for(db.engine, "before_cursor_execute")
        def catch(conn, cursor, sql, params, context, executemany):
            statement.append((sql, params))
        redeemed_on_day(db.session, "p4", now=datetime.now(UTC), tz="Europe/Berlin")
        event.remove(db.engine, "before_cursor_execute", catch)
        sql, params = statement[-1]
        plan = "\n".join(row[0] for row in db.session.connection().exec_driver_sql(
            "EXPLAIN " + sql, params))
        # On the partitioned journal (migration 0026) each partition has its own copy of the
        # index, named after the partition: the rows sit in DEFAULT (no partition for 2026-01).
        names = {"ix_journal_entries_burns", *db.session.execute(text(
            "SELECT inhrelid::regclass::text FROM pg_inherits "
            "WHERE inhparent = 'ix_journal_entries_burns'::regclass")).scalars()}
        db.session.rollback()
    # "Index Scan using <index> on <table>" or "Bitmap Index Scan on <index>": which plan the
    # planner picks depends on how much of the day has passed (how many rows the range holds).
    used = [re.search(r"Index (?:Only )?Scan (?:using|on) (\S+)", line).group(1)
            for line in plan.splitlines() if "Index Scan" in line and "journal_entries" in line]
    assert used and set(used) <= names, plan
    assert "Seq Scan on journal_entries_default" not in plan, plan  # where the rows are
