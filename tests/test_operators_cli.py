"""`flask operators add|invite|remove|list` and `flask members invite`: one-time codes for the operator
console and the member portal, printed once as JSON, stored only hashed, audited."""
from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from coalition import clock, credentials
from coalition.database import db
from coalition.problems import Problem


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.stdout)


def moment(text: str) -> datetime:
    return clock.parse_iso(text.replace("Z", "+00:00"))


def set_password(app, who: str, code: str, password: str) -> None:
    with app.app_context():
        credentials.set_password(db.session, who, code, password, now=clock.now())
        db.session.commit()


def signs_in(app, who: str, password: str) -> bool:
    with app.app_context():
        verdict = credentials.sign_in(db.session, who, password, now=clock.now())
        db.session.commit()
        return verdict.ok


def test_an_operator_is_added_with_a_role_and_a_code_that_sets_the_password(
        app, runner, monkeypatch):
    monkeypatch.setenv("COALITION_OPERATOR", "ops-root")
    before = clock.now()
    code, added = cli(runner, "operators", "add", "anna", "--role", "admin")
    assert code == 0 and set(added) == {"name", "role", "code", "expires_at"}
    assert (added["name"], added["role"]) == ("anna", "admin")
    expires = moment(added["expires_at"])
    assert before + timedelta(hours=72) <= expires <= clock.now() + timedelta(hours=72)
    assert cli(runner, "operators", "add", "bob", "--role", "analyst")[0] == 0

    code, listed = cli(runner, "operators", "list")
    assert code == 0 and [(o["name"], o["role"], o["password_set"], o["code_pending"])
                          for o in listed] == [("anna", "admin", False, True),
                                               ("bob", "analyst", False, True)]
    who = credentials.principal("operator", "anna")
    set_password(app, who, added["code"], "anna's console password")
    assert signs_in(app, who, "anna's console password")
    assert not signs_in(app, who, "not anna's password")
    code, listed = cli(runner, "operators", "list")
    assert {k: listed[0][k] for k in ("password_set", "code_pending", "failures", "locked_until")} == {
        "password_set": True, "code_pending": False, "failures": 1, "locked_until": None}
    assert listed[0]["created_at"].endswith("Z")
    assert "scrypt" not in json.dumps(listed)

    code, events = cli(runner, "audit", "list", "--subject", "operator:anna")
    assert [(e["actor"], e["action"]) for e in events] == [
        ("ops-root", "operator.add"), ("ops-root", "credential.code-issued"),
        ("operator:anna", "credential.password-set")]
    assert events[0]["after"] == {"role": "admin"}
    assert added["code"] not in json.dumps(events) and "anna's console" not in json.dumps(events)


def test_adding_an_operator_twice_or_with_a_bad_name_or_role_is_refused(runner):
    assert cli(runner, "operators", "add", "anna", "--role", "admin")[0] == 0
    code, error = cli(runner, "operators", "add", "anna", "--role", "analyst")
    assert (code, error["error"]) == (1, "validation-error") and "exists already" in error["detail"]
    for name in ("Anna", "_anna", "an na", "anna:x", "a" * 65):
        code, error = cli(runner, "operators", "add", name, "--role", "admin")
        assert (code, error["error"], error["errors"][0]["pointer"]) == (
            1, "validation-error", "/name"), name
    code, error = cli(runner, "operators", "add", "bob", "--role", "boss")
    assert (code, error["error"]) == (2, "usage-error") and "'boss'" in error["detail"]
    code, error = cli(runner, "operators", "add", "bob")
    assert (code, error["error"]) == (2, "usage-error") and "--role" in error["detail"]
    code, listed = cli(runner, "operators", "list")
    assert [(o["name"], o["role"]) for o in listed] == [("anna", "admin")]


def test_inviting_an_operator_again_replaces_the_code_and_keeps_the_password(app, runner):
    code, added = cli(runner, "operators", "add", "anna", "--role", "analyst")
    who = credentials.principal("operator", "anna")
    set_password(app, who, added["code"], "the first password")
    code, invited = cli(runner, "operators", "invite", "anna")
    assert code == 0 and set(invited) == {"name", "code", "expires_at"}
    assert invited["code"] != added["code"]
    code, newer = cli(runner, "operators", "invite", "anna")
    assert signs_in(app, who, "the first password")  # until a code sets a new one
    with pytest.raises(Problem):
        set_password(app, who, invited["code"], "the second password")  # replaced
    set_password(app, who, newer["code"], "the second password")
    assert signs_in(app, who, "the second password")
    assert not signs_in(app, who, "the first password")
    assert cli(runner, "operators", "invite", "zed") == (1, {"error": "not-found",
                                                             "detail": "No operator 'zed'."})
    code, events = cli(runner, "audit", "list", "--action", "credential.code-issued")
    assert [e["after"]["replaced_code"] for e in events] == [False, False, True]
    assert [e["after"]["password_set"] for e in events] == [False, True, True]


def test_an_empty_list_of_operators(runner):
    assert cli(runner, "operators", "list") == (0, [])


def test_a_member_is_invited_to_the_portal(app, runner, monkeypatch):
    monkeypatch.setenv("COALITION_OPERATOR", "ops-anna")
    assert cli(runner, "members", "add", "M-1")[0] == 0
    code, invited = cli(runner, "members", "invite", "M-1")
    assert code == 0 and set(invited) == {"member_id", "member", "code", "expires_at"}
    assert invited["member_id"] == "M-1" and isinstance(invited["member"], int)
    assert moment(invited["expires_at"]) - clock.now() > timedelta(hours=71, minutes=59)
    who = credentials.principal("member", "M-1")
    set_password(app, who, invited["code"], "my portal password")
    assert signs_in(app, who, "my portal password")
    assert not signs_in(app, who, "not my password")
    code, shown = cli(runner, "members", "show", "M-1")
    assert shown["sign_in"] == {"password_set": True, "code_pending": False, "failures": 1,
                                "locked_until": None}

    code, shown = cli(runner, "members", "export", "M-1")
    assert shown["member"]["sign_in"]["password_set"] is True and "scrypt" not in json.dumps(shown)
    code, events = cli(runner, "audit", "list", "--action", "credential")
    subject = f"member-id:{invited['member']}"
    assert [(e["actor"], e["action"], e["subject"]) for e in events] == [
        ("ops-anna", "credential.code-issued", subject),
        (subject, "credential.password-set", subject)]
    assert "M-1" not in json.dumps(events) and invited["code"] not in json.dumps(events)


def test_only_an_enrolled_member_is_invited(runner):
    code, error = cli(runner, "members", "invite", "NOBODY")
    assert (code, error["error"]) == (1, "not-found")
    assert cli(runner, "members", "add", "M-1")[0] == 0
    assert cli(runner, "members", "invite", "M-1")[0] == 0
    assert cli(runner, "members", "erase", "M-1")[0] == 0
    code, error = cli(runner, "members", "invite", "M-1")
    assert (code, error["error"]) == (1, "not-found")
    code, error = cli(runner, "members", "invite")
    assert (code, error["error"]) == (2, "usage-error")


def test_an_erased_members_pending_code_and_password_go_with_it(app, runner):
    assert cli(runner, "members", "add", "M-1")[0] == 0
    code, invited = cli(runner, "members", "invite", "M-1")
    who = credentials.principal("member", "M-1")
    set_password(app, who, invited["code"], "my portal password")
    code, again = cli(runner, "members", "invite", "M-1")  # a code pending as well
    code, erased = cli(runner, "members", "erase", "M-1")
    assert code == 0 and erased["credential_deleted"] is True
    assert not signs_in(app, who, "my portal password")
    with pytest.raises(Problem):
        set_password(app, who, again["code"], "another password")
    with app.app_context():
        assert credentials.stored(db.session, f"member-id:{invited['member']}") is None


def test_a_removed_operator_cannot_sign_in_and_its_name_may_be_added_again(app, runner, monkeypatch):
    monkeypatch.setenv("COALITION_OPERATOR", "ops-root")
    code, added = cli(runner, "operators", "add", "anna", "--role", "admin")
    who = credentials.principal("operator", "anna")
    set_password(app, who, added["code"], "anna's console password")
    assert cli(runner, "operators", "add", "bob", "--role", "analyst")[0] == 0
    assert cli(runner, "operators", "remove", "anna") == (0, {"name": "anna", "removed": True})
    assert not signs_in(app, who, "anna's console password")
    with app.app_context():
        assert credentials.stored(db.session, "operator:anna") is None
        assert not credentials.has_password(db.session, who)
    assert [o["name"] for o in cli(runner, "operators", "list")[1]] == ["bob"]
    assert cli(runner, "operators", "remove", "anna") == (1, {"error": "not-found",
                                                              "detail": "No operator 'anna'."})
    code, again = cli(runner, "operators", "add", "anna", "--role", "analyst")
    assert code == 0 and not signs_in(app, who, "anna's console password")
    code, events = cli(runner, "audit", "list", "--subject", "operator:anna")
    assert [e["action"] for e in events] == [
        "operator.add", "credential.code-issued", "credential.password-set", "operator.remove",
        "operator.add", "credential.code-issued"]
    assert events[3]["before"] == {"role": "admin"} and events[3]["actor"] == "ops-root"
