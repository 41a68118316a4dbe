"""The lean claim path: what it keeps per process, what it reads on every claim, and how many
statements a claim costs.

Per process the partner API keeps only the public keys by kid (partners.tokens.KeyCache): a kid
names one key of one partner for good. Everything an operator changes from another process
(a key revoked, a partner suspended or its redemption policy changed, a month closed) is read
from the database by every claim, and takes effect on the next one: shown here with a second
app instance on the same database, as another gunicorn worker or the command line would be.
"""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from coalition import create_app, ledger
from coalition.database import db
from coalition.periods import period_of
from partners import service as partner_service
from partners.auth import KEYS
from tests.conftest import ON_POSTGRES, ago, new_key, postgres_only, public_pem, transport_for
from tests.test_claims_api import problem_slug

UTC = timezone.utc


@pytest.fixture
def other(app):
    """A second app instance on the same database (its own pool, its own key cache)."""
    second = create_app({"SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
                         "TESTING": True,
                         "COALITION_SIGNING_KEY_FILE": app.config["COALITION_SIGNING_KEY_FILE"]})
    yield second
    with second.app_context():
        db.session.remove()
        db.engine.dispose()


def operator(app, *args) -> dict:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def cached_kids(app) -> set[str]:
    return set(app.extensions[KEYS]._keys)


# --- what a process keeps, and what every claim reads -----------------------------------------

def test_a_key_revoked_by_another_instance_is_refused_on_the_next_claim(app, other, acme):
    acme.client.enrol("M1")
    assert acme.client.earn("e1", "M1", 10, occurred_at=ago(minutes=2)).status == 201
    assert acme.kid in cached_kids(app)  # the next request verifies without reading the key
    signed_before = acme.client.sign("POST", "/v1/earn", acme.client.encode_body(
        {"claim_id": "e2", "member_id": "M1", "points": 10, "occurred_at": ago(minutes=1)}))
    assert operator(other, "partners", "revoke-key", "acme", "--", acme.kid)["state"] == "revoked"
    r = acme.client.earn("e3", "M1", 10, occurred_at=ago(minutes=1))
    assert r.status == 401 and problem_slug(r) == "key-revoked"
    body = acme.client.encode_body({"claim_id": "e2", "member_id": "M1", "points": 10,
                                    "occurred_at": ago(minutes=1)})
    with app.test_client() as client:
        r = client.post("/v1/earn", data=body, headers=signed_before)
    assert r.status_code == 401 and r.json["type"].endswith("key-revoked")
    assert acme.client.claim("e3").status == 401  # GETs too: the key is unusable
    with app.app_context():
        assert ledger.find_claim(db.session, "acme", "e3") is None


def test_a_partner_suspended_by_another_instance_is_refused_until_activated(app, other, acme, bolt):
    acme.client.enrol("M1")
    assert acme.client.earn("e1", "M1", 10, occurred_at=ago(minutes=2)).status == 201
    assert operator(other, "partners", "suspend", "acme")["status"] == "suspended"
    r = acme.client.earn("e2", "M1", 10, occurred_at=ago(minutes=1))
    assert r.status == 401 and problem_slug(r) == "partner-suspended"
    assert bolt.client.earn("b-e1", "M1", 10, occurred_at=ago(minutes=1)).status == 201
    assert operator(other, "partners", "activate", "acme")["status"] == "active"
    assert acme.client.earn("e2", "M1", 10, occurred_at=ago(minutes=1)).status == 201


def test_a_key_added_by_another_instance_is_accepted_at_once(app, other, acme):
    acme.client.enrol("M1")
    assert acme.client.earn("e1", "M1", 10, occurred_at=ago(minutes=2)).status == 201
    rotated = new_key("ES256")
    with other.app_context():
        kid = partner_service.add_key(db.session, "acme", public_pem(rotated),
                                      now=datetime.now(UTC)).kid
        db.session.commit()
    from partners.client import PartnerClient
    client = PartnerClient("", "acme", rotated, transport=transport_for(app))
    assert kid not in cached_kids(app)
    assert client.earn("e2", "M1", 10, occurred_at=ago(minutes=1)).status == 201
    assert kid in cached_kids(app)


def test_a_key_row_deleted_by_hand_is_refused_and_forgotten(app, other, acme):
    """Not something the service does (a kid is registered once, for good); if an operator
    deletes the row in SQL anyway, the cached key does not outlive it."""
    acme.client.enrol("M1")
    assert acme.client.earn("e1", "M1", 10, occurred_at=ago(minutes=2)).status == 201
    with other.app_context():
        db.session.execute(text("DELETE FROM partner_keys WHERE kid = :kid"), {"kid": acme.kid})
        db.session.commit()
    r = acme.client.earn("e2", "M1", 10, occurred_at=ago(minutes=1))
    assert r.status == 401 and problem_slug(r) == "invalid-token"
    assert acme.kid not in cached_kids(app)


def test_a_redemption_policy_set_by_another_instance_applies_to_the_next_burn(app, other, acme,
                                                                            bolt):
    acme.client.enrol("M1")
    assert acme.client.earn("e1", "M1", 1000, occurred_at=ago(minutes=3)).status == 201
    assert bolt.client.burn("b1", "M1", 100, occurred_at=ago(minutes=2)).status == 201
    operator(other, "partners", "set-policy", "bolt", "--daily-redeem-limit", "150")
    r = bolt.client.burn("b2", "M1", 100, occurred_at=ago(minutes=1))
    assert r.status == 422 and problem_slug(r) == "limit-exceeded"
    operator(other, "partners", "set-policy", "bolt", "--daily-redeem-limit", "none",
             "--redeem-auth", "pin")
    r = bolt.client.burn("b2", "M1", 100, occurred_at=ago(minutes=1))
    assert r.status == 403 and problem_slug(r) == "member-auth-required"
    operator(other, "partners", "set-policy", "bolt", "--redeem-auth", "none")
    assert bolt.client.burn("b2", "M1", 100, occurred_at=ago(minutes=1)).status == 201


def test_a_month_closed_by_another_session_sends_the_next_claim_to_the_next_month(app, other,
                                                                                acme):
    """Only what the claim path reads is shown here (settlement's own tests close months
    through `settlement close`): the months closed are read by every claim, under the books
    lock."""
    tz = app.config["COALITION_TIMEZONE"]
    acme.client.enrol("M1")
    first = acme.client.earn("e1", "M1", 10, occurred_at=ago(minutes=2)).json()
    own = period_of(datetime.now(UTC) - timedelta(minutes=1), tz)
    assert (first["period"], first["late"]) == (own, False)
    with other.app_context():
        db.session.execute(text("INSERT INTO closed_periods (period, closed_at) "
                                "VALUES (:period, :at)"), {"period": own, "at": datetime.now(UTC)})
        db.session.commit()
    later = acme.client.earn("e2", "M1", 10, occurred_at=ago(minutes=1)).json()
    year, month = map(int, own.split("-"))
    following = f"{year + month // 12:04d}-{month % 12 + 1:02d}"
    assert (later["period"], later["late"]) == (following, True)


# --- the member lock: a claim that waited for it reads what the claim before it booked --------

def waiting_for_locks(expected: int) -> None:
    """Wait until `expected` sessions of this database wait for a lock (a connection of its own:
    the app's pool is busy with them)."""
    deadline = time.monotonic() + 20
    with psycopg.connect(db.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False), autocommit=True) as watcher:
        while watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()").fetchone()[0] < expected:
            assert time.monotonic() < deadline, "the claims never waited for the member"
            time.sleep(0.05)


@postgres_only
@pytest.mark.timeout(60)
def test_claims_that_waited_for_the_member_lock_read_the_booking_they_waited_for(app, acme, bolt,
                                                                               verify_clean):
    """An earn, a retry of the claim in flight and a burn all wait for the member's row while
    another transaction holds it with an earn booked; once that commits, each sees it: the
    earn's balance_after counts it, the retry replays it, the burn can spend it."""
    acme.client.enrol("M1")
    assert acme.client.earn("e0", "M1", 100, occurred_at=ago(minutes=3)).status == 201
    now = datetime.now(UTC).replace(microsecond=0)  # as the client writes it: a retry's content
    held = dict(partner_id="acme", claim_id="e1", member_id="M1", points=50,
                occurred_at=now - timedelta(minutes=2), now=now, rules=app.config["LEDGER_RULES"])
    answers: dict[str, object] = {}

    def send(name, call):
        answers[name] = call()

    with app.app_context():
        holder = Session(db.engine)
        try:
            ledger.book_earn(holder, **held)  # written, not committed: the member's row is locked
            threads = [threading.Thread(target=send, args=(name, call), daemon=True)
                       for name, call in (
                           ("earn", lambda: acme.client.earn("e2", "M1", 10,
                                                             occurred_at=ago(minutes=1))),
                           ("retry", lambda: acme.client.earn("e1", "M1", 50,
                                                              occurred_at=held["occurred_at"])),
                           ("burn", lambda: bolt.client.burn("b1", "M1", 150,
                                                             occurred_at=ago(minutes=1))))]
            for thread in threads:
                thread.start()
            waiting_for_locks(expected=3)
        finally:
            holder.commit()
            holder.close()
        for thread in threads:
            thread.join(30)
    earn, retry, burn = answers["earn"], answers["retry"], answers["burn"]
    assert retry.status == 201 and retry.headers["idempotent-replayed"] == "true"
    assert earn.status == 201 and burn.status == 201, (earn.body, burn.body)
    # Whichever of the earn and the burn went first, the member's points add up.
    assert sorted([earn.json()["balance_after"], burn.json()["balance_after"]]) in (
        [10, 160], [0, 10])
    assert acme.client.balance("M1").json()["available"] == 100 + 50 + 10 - 150
    verify_clean()


# --- what a claim costs -------------------------------------------------------------------------

class Statements:
    def __init__(self, engine) -> None:
        self.engine, self.seen = engine, []
        event.listen(engine, "before_cursor_execute", self.count)

    def count(self, conn, cursor, statement, parameters, context, executemany):
        self.seen.append(" ".join(statement.split())[:60])

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self.count)


@pytest.fixture
def statements(app):
    with app.app_context():
        counter = Statements(db.engine)
    yield counter
    counter.close()


# Statements per claim through the API, the token's jti included. PostgreSQL: the jti (which
# holds the books open), the member's lock with the reads under it, the write. SQLite: BEGIN
# IMMEDIATE, the jti, the member, the reads, then one statement per table written.
MOST_STATEMENTS = {"earn": 3, "burn": 3} if ON_POSTGRES else {"earn": 9, "burn": 9}


def test_an_earn_and_a_burn_cost_a_bounded_number_of_statements(app, acme, bolt, statements):
    acme.client.enrol("M1")
    assert acme.client.earn("e0", "M1", 100, occurred_at=ago(minutes=3)).status == 201
    assert bolt.client.burn("b0", "M1", 1, occurred_at=ago(minutes=3)).status == 201  # warm
    for kind, send in (("earn", lambda: acme.client.earn("e1", "M1", 100,
                                                         occurred_at=ago(minutes=2))),
                       ("burn", lambda: bolt.client.burn("b1", "M1", 150,
                                                         occurred_at=ago(minutes=1)))):
        statements.seen.clear()
        assert send().status == 201
        assert len(statements.seen) <= MOST_STATEMENTS[kind], statements.seen
