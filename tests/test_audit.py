"""The audit log: one event per operator action, append-only, hash-chained, readable as JSON."""
from __future__ import annotations

import contextlib
import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DatabaseError

from coalition import audit, ledger
from coalition.database import db, is_sqlite
from coalition.members import enrol
from coalition.periods import add_months, month_of
from partners import service as partner_service
from settlement.models import CoalitionReport
from tests.conftest import new_key, public_pem
from tests.test_concurrency import in_parallel

UTC = timezone.utc


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output)


def listed(runner, *filters) -> list[dict]:
    code, events = cli(runner, "audit", "list", "--limit", "10000", *filters)
    assert code == 0
    return events


def count(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(audit.AuditEvent.id)))


@pytest.fixture
def alice(monkeypatch):
    monkeypatch.setenv("COALITION_OPERATOR", "alice")
    return "alice"


@pytest.fixture
def step(app, runner):
    """Run one operator command; check it succeeded and wrote `writes` events; return the last."""
    def run(*args, writes=1):
        before = count(app)
        code, output = cli(runner, *args)
        assert code == 0, output
        assert count(app) == before + writes
        return listed(runner)[-1] if writes else None
    return run


def test_every_partner_and_member_command_writes_one_event(app, runner, step, alice, tmp_path):
    added = step("partners", "add", "shop", "--name", "The Shop", "--issue-price", "0.012")
    assert {k: added[k] for k in ("actor", "action", "subject", "before")} == {
        "actor": "alice", "action": "partner.add", "subject": "partner:shop", "before": None}
    assert added["after"]["status"] == "active" and added["after"]["terms"][0]["issue_price"] == "0.012"
    assert added["prev_hash"] == audit.GENESIS

    path = tmp_path / "shop.pub"
    path.write_bytes(public_pem(new_key("ES256")))
    key = step("partners", "add-key", "shop", "--public-key", str(path))
    kid = key["after"]["kid"]
    assert (key["action"], key["subject"], key["before"]) == ("partner.key.add", "partner:shop", None)
    assert key["after"] | {"created_at": None} == {"kid": kid, "alg": "ES256", "state": "active",
                                                   "created_at": None, "revoked_at": None}
    written = count(app)
    code, again = cli(runner, "partners", "add-key", "shop", "--public-key", str(path))
    assert code == 1 and "registered already" in again["detail"]  # same key: refused, unrecorded
    assert count(app) == written

    revoked = step("partners", "revoke-key", "shop", "--", kid)
    assert revoked["action"] == "partner.key.revoke"
    assert (revoked["before"]["state"], revoked["after"]["state"]) == ("active", "revoked")
    assert revoked["before"]["revoked_at"] is None and revoked["after"]["revoked_at"] is not None
    step("partners", "revoke-key", "shop", "--", kid, writes=0)

    suspended = step("partners", "suspend", "shop")
    assert (suspended["action"], suspended["before"], suspended["after"]) == (
        "partner.suspend", {"status": "active"}, {"status": "suspended"})
    step("partners", "suspend", "shop", writes=0)
    activated = step("partners", "activate", "shop")
    assert (activated["action"], activated["before"], activated["after"]) == (
        "partner.activate", {"status": "suspended"}, {"status": "active"})

    terms = step("partners", "set-terms", "shop", "--from", "2099-01", "--issue-price", "0.02",
                 "--redemption-rate", "0.009", "--issuance-share", "1", "--claim-fee", "0")
    assert (terms["action"], terms["subject"]) == ("partner.terms.set", "partner:shop")
    assert terms["before"] == {"from": None, "issue_price": "0.012", "redemption_rate": "0.009",
                               "issuance_share": "1", "claim_fee": "0"}
    assert terms["after"] == {"from": "2099-01", "issue_price": "0.02", "redemption_rate": "0.009",
                              "issuance_share": "1", "claim_fee": "0"}
    again = step("partners", "set-terms", "shop", "--from", "2099-01", "--issue-price", "0.03",
                 "--redemption-rate", "0.009", "--issuance-share", "1", "--claim-fee", "0")
    assert (again["before"]["from"], again["before"]["issue_price"], again["after"]["issue_price"]) == (
        "2099-01", "0.02", "0.03")

    member = step("members", "add", "CARD-1")
    assert (member["action"], member["subject"], member["before"]) == ("member.add", "member:CARD-1", None)
    assert set(member["after"]) == {"member"}  # the internal id; the card number only in subject
    step("members", "add", "CARD-1", writes=0)

    events = listed(runner)
    assert {e["actor"] for e in events} == {"alice"}
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert all(e["prev_hash"] == p["hash"] for p, e in zip(events, events[1:]))
    code, report = cli(runner, "ledger", "verify")
    assert code == 0 and report["checked"]["audit"] == len(events) == 8


def test_closing_a_month_is_audited_with_its_digest_and_net_totals(app, runner, alice):
    tz = app.config["COALITION_TIMEZONE"]
    year, month = add_months(*month_of(datetime.now(UTC), tz), -1)
    period, booked_at = f"{year:04d}-{month:02d}", datetime(year, month, 15, 12, tzinfo=UTC)
    with app.app_context():  # last month's claims, booked with last month's clock
        partner_service.add_partner(db.session, "shop", "Shop", now=booked_at)
        enrol(db.session, "M1", now=booked_at)
        ledger.book_earn(db.session, now=booked_at, rules=ledger.Rules(tz, 30, 36), partner_id="shop",
                         claim_id="e1", member_id="M1", points=500, occurred_at=booked_at)
        db.session.commit()
    before = count(app)
    code, report = cli(runner, "settlement", "close", period)
    assert code == 0, report
    assert count(app) == before + 1
    event = listed(runner, "--action", "period.close")[-1]
    with app.app_context():
        digest = db.session.get(CoalitionReport, period).digest
    assert (event["actor"], event["subject"], event["before"]) == ("alice", f"period:{period}", None)
    assert event["after"] == {"report_digest": digest, "ledger_anchor": report["ledger_anchor"],
                              "net_cents": {"shop": -500}, "operator_margin_cents": 500}
    assert cli(runner, "settlement", "close", period)[0] == 1  # closed already: nothing written
    assert count(app) == before + 1
    assert cli(runner, "ledger", "verify")[0] == 0


def test_a_failing_command_writes_nothing(app, runner, alice, monkeypatch):
    assert cli(runner, "partners", "add", "shop", "--name", "Shop")[0] == 0
    written = count(app)
    for args in (("partners", "add", "shop", "--name", "Again"),
                 ("partners", "add", "bad id", "--name", "x"),
                 ("partners", "revoke-key", "shop", "nope"),
                 ("partners", "suspend", "nope"),
                 ("partners", "set-terms", "shop", "--from", "2099-13", "--issue-price", "1",
                  "--redemption-rate", "1", "--issuance-share", "1", "--claim-fee", "0"),
                 ("members", "add", "bad id"),
                 ("settlement", "close", "2020-01")):
        assert cli(runner, *args)[0] == 1, args
    assert count(app) == written

    # A command that fails after its event was recorded rolls the event back with the change.
    def broken_view(partner):
        from coalition.errors import Problem
        raise Problem("internal-error", "the view broke")
    monkeypatch.setattr(partner_service, "partner_view", broken_view)
    assert cli(runner, "partners", "suspend", "shop")[0] == 1
    assert count(app) == written
    with app.app_context():
        assert partner_service.get_partner(db.session, "shop").status == "active"


def test_operator_is_the_os_user_unless_coalition_operator_is_set(app, runner, monkeypatch):
    monkeypatch.delenv("COALITION_OPERATOR", raising=False)
    monkeypatch.setattr("getpass.getuser", lambda: "os-user")
    assert cli(runner, "members", "add", "CARD-1")[0] == 0
    monkeypatch.setenv("COALITION_OPERATOR", "  bob  ")
    assert cli(runner, "members", "add", "CARD-2")[0] == 0
    assert [e["actor"] for e in listed(runner)] == ["os-user", "bob"]


def test_audit_list_filters(app, runner, alice, tmp_path):
    for partner in ("a", "b"):
        cli(runner, "partners", "add", partner, "--name", partner.upper())
        path = tmp_path / f"{partner}.pub"
        path.write_bytes(public_pem(new_key("EdDSA")))
        cli(runner, "partners", "add-key", partner, "--public-key", str(path))
    cli(runner, "partners", "suspend", "a")
    cli(runner, "members", "add", "CARD-1")

    def actions(*filters):
        return [(e["action"], e["subject"]) for e in listed(runner, *filters)]
    assert actions("--subject", "partner:a") == [
        ("partner.add", "partner:a"), ("partner.key.add", "partner:a"), ("partner.suspend", "partner:a")]
    assert actions("--action", "partner.key") == [("partner.key.add", "partner:a"),
                                                  ("partner.key.add", "partner:b")]
    assert len(actions("--action", "partner")) == 5  # partner and every action below it
    assert actions("--action", "partner.k") == []  # whole name segments only
    assert actions("--action", "member.add", "--subject", "member:CARD-1") == [("member.add", "member:CARD-1")]
    code, last_two = cli(runner, "audit", "list", "--limit", "2")
    assert [e["action"] for e in last_two] == ["partner.suspend", "member.add"]  # newest, oldest first
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert actions("--since", tomorrow) == []
    assert len(actions("--since", "2020-01-01T00:00:00Z")) == 6
    first = listed(runner)[1]["at"]
    assert len(actions("--since", first)) == 5
    assert cli(runner, "audit", "list", "--since", "yesterday")[0] == 1


def test_the_database_refuses_update_and_delete(app, alice, runner):
    cli(runner, "members", "add", "CARD-1")
    with app.app_context():
        for sql in ("UPDATE audit_events SET actor = 'mallory'", "DELETE FROM audit_events"):
            with pytest.raises(DatabaseError, match="append-only"):
                db.session.execute(text(sql))
            db.session.rollback()
        assert db.session.scalar(select(audit.AuditEvent.actor)) == "alice"


@contextlib.contextmanager
def triggers_off(session):
    """Tamper as someone who can switch the append-only triggers off, and on again after."""
    if is_sqlite(session):
        ddl = session.scalars(text("SELECT sql FROM sqlite_master WHERE type = 'trigger' "
                                   "AND tbl_name = 'audit_events'")).all()
        assert len(ddl) == 2
        for name in ("audit_events_no_update", "audit_events_no_delete"):
            session.execute(text(f"DROP TRIGGER {name}"))
        yield
        for sql in ddl:
            session.execute(text(sql))
    else:
        session.execute(text("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only"))
        yield
        session.execute(text("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only"))
    session.commit()


@pytest.mark.parametrize("tamper", ["alter", "delete", "insert"])
def test_ledger_verify_catches_a_broken_chain(app, runner, alice, tamper):
    for card in ("CARD-1", "CARD-2", "CARD-3"):
        cli(runner, "members", "add", card)
    assert cli(runner, "ledger", "verify")[0] == 0
    with app.app_context():
        s = db.session
        middle = s.scalars(select(audit.AuditEvent.id).order_by(audit.AuditEvent.id)).all()[1]
        if tamper == "insert":  # needs no trigger switched off: it is simply not in the chain
            s.add(audit.AuditEvent(at=datetime.now(UTC), actor="mallory", action="member.add",
                                   subject="member:X", prev_hash="f" * 64, hash="f" * 64))
            s.commit()
        else:
            with triggers_off(s):
                s.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE id = :id"
                               if tamper == "alter" else "DELETE FROM audit_events WHERE id = :id"),
                          {"id": middle})
        with pytest.raises(DatabaseError, match="append-only"):  # the triggers are back
            s.execute(text("DELETE FROM audit_events"))
        s.rollback()
    code, report = cli(runner, "ledger", "verify")
    assert code == 1 and report["violations_by_check"] == {"audit-chain": 1}
    assert report["violations"][0]["audit_event"] == (middle if tamper == "alter" else
                                                     middle + 1 if tamper == "delete" else
                                                     middle + 2)


def test_concurrent_operators_never_fork_the_chain(app, make_partner):
    for p in ("p0", "p1", "p2", "p3"):
        make_partner(p)

    def toggle(i):
        for n in range(5):
            with app.app_context():
                partner_service.set_status(db.session, f"p{i}", "suspended" if n % 2 == 0 else "active",
                                           now=datetime.now(UTC), actor=f"operator-{i}")
                db.session.commit()
    in_parallel(4, toggle)
    with app.app_context():
        events = audit.events(db.session, action="partner", limit=1000)
        failures = []
        assert audit.verify_chain(db.session, lambda *a, **k: failures.append(a)) == len(events) == 4 * 2 + 20
        assert failures == []
