"""`flask members show ID`: one member's balance and history across every partner."""
from __future__ import annotations

import json

from tests.conftest import ago


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output)


def test_members_show_has_the_balance_and_the_history_across_partners(app, runner, acme, bolt):
    assert acme.client.enrol("M1").status == 201
    assert acme.client.enrol("M2").status == 201
    assert acme.client.earn("a1", "M1", 300, occurred_at=ago(minutes=5), description="Shoes").status == 201
    assert bolt.client.earn("b1", "M1", 200, occurred_at=ago(minutes=4)).status == 201
    assert bolt.client.earn("b2", "M1", 50, occurred_at=ago(minutes=4),
                            pending_until=ago(minutes=-60)).status == 201
    assert bolt.client.burn("b3", "M1", 120, occurred_at=ago(minutes=3)).status == 201
    assert acme.client.reverse("a1", "a1-r", 100, occurred_at=ago(minutes=2)).status == 201
    assert bolt.client.earn("other", "M2", 999, occurred_at=ago(minutes=1)).status == 201

    code, shown = cli(runner, "members", "show", "M1")
    assert code == 0
    balance = acme.client.balance("M1").json()
    assert {k: shown[k] for k in balance} == balance  # the balance as partners read it
    assert (shown["available"], shown["pending"], shown["debt"]) == (280, 50, 0)
    assert (shown["locked"], shown["pin_set"], shown["pin_locked"]) == (False, False, False)
    assert shown["enrolled_by"] == "acme" and shown["enrolled_at"].endswith("Z")
    history = shown["history"]
    assert [(h["claim_id"], h["kind"], h["partner_id"], h["points"]) for h in history] == [
        ("a1-r", "reversal", "acme", 100), ("b3", "burn", "bolt", 120), ("b2", "earn", "bolt", 50),
        ("b1", "earn", "bolt", 200), ("a1", "earn", "acme", 300)]
    assert history[0]["reverses"] == "a1" and history[-1]["description"] == "Shoes"
    assert history[2]["status"] == "pending"

    code, newest = cli(runner, "members", "show", "M1", "--limit", "2")
    assert code == 0 and [h["claim_id"] for h in newest["history"]] == ["a1-r", "b3"]


def test_members_show_an_unknown_or_new_member(runner):
    assert cli(runner, "members", "show", "NOBODY") == (1, {"error": "not-found", "detail": "No such member."})
    assert cli(runner, "members", "add", "M1")[0] == 0
    code, shown = cli(runner, "members", "show", "M1")
    assert code == 0 and shown["history"] == [] and shown["available"] == 0
    assert shown["enrolled_by"] is None  # enrolled by the operator


def test_the_operator_locks_and_unlocks_a_member_with_a_reason(app, runner, acme, monkeypatch):
    monkeypatch.setenv("COALITION_OPERATOR", "ops-anna")
    acme.client.enrol("M1")
    assert acme.client.earn("e1", "M1", 100, occurred_at=ago(minutes=5)).status == 201
    code, locked = cli(runner, "members", "lock", "M1", "--reason", "case 4711: card skimmed")
    assert code == 0 and (locked["locked"], locked["changed"]) == (True, True)
    burn = acme.client.burn("b1", "M1", 10, occurred_at=ago(minutes=1))
    assert burn.status == 403 and burn.json()["type"].endswith("/member-locked")
    assert acme.client.earn("e2", "M1", 5, occurred_at=ago(minutes=1)).status == 201  # earns book
    batch = acme.client.batch([{"kind": "burn", "claim_id": "b2", "member_id": "M1",
                                "points": 1, "occurred_at": ago(minutes=1)}]).json()
    assert batch["results"][0]["status"] == 403
    assert cli(runner, "members", "lock", "M1", "--reason", "again")[1]["changed"] is False
    code, shown = cli(runner, "members", "show", "M1")
    assert shown["locked"] is True and shown["lock_change"]["reason"] == "case 4711: card skimmed"
    assert shown["lock_change"]["by"] == "ops-anna" and shown["lock_change"]["action"] == "member.lock"

    code, unlocked = cli(runner, "members", "unlock", "M1", "--reason", "case 4711 closed")
    assert code == 0 and (unlocked["locked"], unlocked["changed"]) == (False, True)
    assert acme.client.burn("b1", "M1", 10, occurred_at=ago(minutes=1)).status == 201
    code, events = cli(runner, "audit", "list", "--action", "member")
    assert [(e["action"], e["actor"], e["after"]) for e in events
            if e["action"] in ("member.lock", "member.unlock")] == [
        ("member.lock", "ops-anna", {"locked": True, "reason": "case 4711: card skimmed"}),
        ("member.unlock", "ops-anna", {"locked": False, "reason": "case 4711 closed"})]
    assert all("M1" not in json.dumps(e) for e in events
               if e["action"] in ("member.lock", "member.unlock"))  # no card number in the log


def test_locking_needs_a_member_and_a_reason(runner):
    assert cli(runner, "members", "lock", "NOBODY", "--reason", "x")[1]["error"] == "not-found"
    assert cli(runner, "members", "add", "M1")[0] == 0
    code, answer = cli(runner, "members", "lock", "M1", "--reason", "   ")
    assert code == 1 and answer["error"] == "validation-error"
    code, answer = cli(runner, "members", "lock", "M1")
    assert code == 2 and answer["error"] == "usage-error"
    assert cli(runner, "members", "show", "M1")[1]["locked"] is False


def test_a_member_export_holds_everything_about_the_member_and_is_audited(
        app, runner, acme, bolt, tmp_path):
    acme.client.enrol("M1")
    acme.client.enrol("M2")
    assert acme.client.earn("e1", "M1", 100, occurred_at=ago(minutes=5), description="Shoes").status == 201
    assert bolt.client.burn("b1", "M1", 30, occurred_at=ago(minutes=4)).status == 201
    assert acme.client.reverse("e1", "e1-r", 90, occurred_at=ago(minutes=3)).status == 201  # debt 20
    assert acme.client.earn("other", "M2", 7, occurred_at=ago(minutes=3)).status == 201
    acme.client.set_consent("M1", True, channel="email")
    bolt.client.balance("M1")
    cli(runner, "members", "lock", "M1", "--reason", "case 12")
    code, doc = cli(runner, "members", "export", "M1")
    assert code == 0 and doc["format"] == "coalition.member-export/1"
    assert doc["member"]["member_id"] == "M1" and doc["member"]["locked"] is True
    assert "pin_hash" not in json.dumps(doc)
    assert [(c["claim_id"], c["partner_id"]) for c in doc["claims"]] == [
        ("e1", "acme"), ("b1", "bolt"), ("e1-r", "acme")]  # M2's claim is not in it
    assert doc["balance"]["debt"] == 20 and doc["debt_lots"] == [
        {"creditor": "acme", "points": 20, "remaining": 20}]
    assert [(lot["issuer"], lot["points"], lot["remaining"]) for lot in doc["lots"]] == [
        ("acme", 100, 0)]
    assert [(c["channel"], c["marketing"], c["partner_id"]) for c in doc["consents"]] == [
        ("email", True, "acme")]
    assert [(x["partner_id"], x["known"]) for x in doc["lookups"]] == [("bolt", True)]
    assert [e["action"] for e in doc["audit_events"]] == ["member.lock"]
    code, events = cli(runner, "audit", "list", "--action", "member.export")
    assert [e["after"] for e in events] == [{"claims": 3}]

    out = tmp_path / "m1.json"
    code, written = cli(runner, "members", "export", "M1", "--out", str(out))
    assert code == 0 and written["claims"] == 3
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert json.loads(out.read_text())["claims"] == doc["claims"]
    assert cli(runner, "members", "export", "NOBODY")[1]["error"] == "not-found"
