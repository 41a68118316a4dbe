"""Rotating the coalition's statement signing key (settlement/signing.py, `flask settlement
rotate-signing-key`): statements signed before a rotation still verify offline against the
served JWKS, `ledger verify` checks each statement against the key its kid names, and a retired
key takes what it signed with it."""
from __future__ import annotations

import base64
import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from flask import current_app
from sqlalchemy import text

from coalition.database import db
from coalition.errors import Problem
from partners import service as partner_service
from partners.client import PartnerClient, verify_statement
from settlement import service as settlement
from settlement.signing import kid_of, signing_key
from tests.conftest import new_key, public_pem, transport_for
from tests.test_settlement import Book, close, day, may  # noqa: F401  (may: May 2026 booked)

UTC = timezone.utc
JWK_MEMBERS = {"kty", "crv", "x", "kid", "alg", "use"}


@pytest.fixture
def signing_key_file(tmp_path):
    """This test's own key file: a rotation must not change the key other tests sign with."""
    return str(tmp_path / "keys" / "coalition-signing-key.pem")


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output)


def current_kid() -> str:
    return kid_of(signing_key(current_app.config["COALITION_SIGNING_KEY_FILE"]))


def served_jwks() -> dict:
    response = current_app.test_client().get("/.well-known/jwks.json")
    assert response.status_code == 200
    return response.get_json()


def close_june(s) -> None:
    """A June claim (so June has something of its own), then June closes."""
    Book(s, now=day(20, month=6)).earn("bakery", "e-june", "M2", 40, day(19, month=6))
    close(s, "2026-06", datetime(2026, 7, 2, tzinfo=UTC))


@pytest.fixture
def fuel(app, may):  # noqa: F811
    """Partner "fuel" with a key of its own, reading its statements over the signed API."""
    key = new_key("EdDSA")
    partner_service.add_key(may, "fuel", public_pem(key), now=day(1))
    may.commit()
    return PartnerClient("", "fuel", key, transport=transport_for(app))


def test_statements_from_before_and_after_a_rotation_both_verify_offline(may, fuel, runner,
                                                                         signing_key_file):
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    may_kid = current_kid()
    code, rotated = cli(runner, "settlement", "rotate-signing-key")
    assert code == 0, rotated
    assert rotated["previous"] == may_kid and rotated["kid"] != may_kid
    assert rotated["published"] == [rotated["kid"], may_kid] and rotated["retired"] == []
    assert current_kid() == rotated["kid"]  # the same process picks the new file up
    close_june(may)

    jwks = served_jwks()
    assert [k["kid"] for k in jwks["keys"]] == [rotated["kid"], may_kid]  # current first
    signed = {p: fuel.statement(p).json() for p in ("2026-05", "2026-06")}
    assert signed["2026-05"]["signature"]["kid"] == may_kid
    assert signed["2026-06"]["signature"]["kid"] == rotated["kid"]
    assert verify_statement(signed["2026-05"], jwks)["net_cents"] == 853
    assert verify_statement(signed["2026-06"], jwks)["period"] == "2026-06"
    with pytest.raises(ValueError, match="no Ed25519"):  # the old statement needs the old key
        verify_statement(signed["2026-05"], {"keys": jwks["keys"][:1]})

    code, report = cli(runner, "ledger", "verify")
    assert code == 0 and report["ok"], report["violations"]
    assert report["checked"]["statements"] == 8  # 3 statements and 1 report per month

    file = Path(signing_key_file)
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert sorted(p.name for p in file.parent.iterdir()) == [file.name]  # nothing staged is left


def test_the_jwks_and_the_database_never_hold_a_private_key(may, runner, signing_key_file):
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    def private_d() -> str:  # the JWK "d" member the current key would have
        raw = signing_key(signing_key_file).private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    privates, outputs = [], []
    for _ in range(3):
        privates.append(private_d())
        code, output = cli(runner, "settlement", "rotate-signing-key")
        assert code == 0
        outputs.append(json.dumps(output))
    privates.append(private_d())
    body = current_app.test_client().get("/.well-known/jwks.json").get_data(as_text=True)
    keys = json.loads(body)["keys"]
    assert len(keys) == 4 and all(set(k) == JWK_MEMBERS for k in keys)  # no "d", nothing extra
    registry = json.dumps([list(r) for r in may.execute(text("SELECT * FROM signing_keys"))], default=str)
    events = json.dumps(cli(runner, "audit", "list")[1])
    for place in (body, registry, events, *outputs):
        assert "PRIVATE" not in place
        assert not any(d in place for d in privates)


def test_rotation_is_audited_with_kids_only(may, runner, monkeypatch):
    monkeypatch.setenv("COALITION_OPERATOR", "alice")
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    old = current_kid()
    code, rotated = cli(runner, "settlement", "rotate-signing-key")
    assert code == 0
    code, events = cli(runner, "audit", "list", "--action", "coalition.key")
    assert code == 0 and len(events) == 1
    event = events[0]
    assert (event["actor"], event["action"], event["subject"]) == (
        "alice", "coalition.key.rotate", "coalition:signing-key")
    assert event["before"] == {"current": old, "published": [old]}
    assert event["after"] == {"current": rotated["kid"], "published": sorted([old, rotated["kid"]]),
                              "retired": []}
    jwks_x = [k["x"] for k in served_jwks()["keys"]]
    assert not any(x in json.dumps(event) for x in jwks_x)  # kids, never the keys themselves


def test_a_retired_key_leaves_the_jwks_and_what_it_signed_fails_verify(may, fuel, runner):
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    may_signed = fuel.statement("2026-05").json()
    old = current_kid()
    code, rotated = cli(runner, "settlement", "rotate-signing-key", "--retire", old)
    assert code == 0, rotated
    assert rotated["retired"] == [old] and rotated["published"] == [rotated["kid"]]
    assert rotated["unverifiable"] == 4  # May's 3 statements and its coalition report

    jwks = served_jwks()
    assert [k["kid"] for k in jwks["keys"]] == [rotated["kid"]]
    with pytest.raises(ValueError, match=f"no Ed25519 \\(OKP\\) key with kid {old}"):
        verify_statement(may_signed, jwks)
    code, report = cli(runner, "ledger", "verify")
    assert code == 1 and report["violations_by_check"] == {"statement-key-retired": 4}
    assert all(old in v["detail"] for v in report["violations"])

    close_june(may)  # signs with the new key, which verifies
    assert verify_statement(fuel.statement("2026-06").json(), served_jwks())["period"] == "2026-06"
    code, listed = cli(runner, "settlement", "signing-keys")
    assert code == 0
    assert [(k["kid"], k["state"], k["signed"]) for k in listed] == [
        (rotated["kid"], "current", 4), (old, "retired", 4)]


def test_retiring_an_unknown_kid_changes_nothing(may, runner, signing_key_file):
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    before = Path(signing_key_file).read_bytes()
    code, error = cli(runner, "settlement", "rotate-signing-key", "--retire", "no-such-kid")
    assert code == 1 and error["error"] == "not-found" and "no-such-kid" in error["detail"]
    assert Path(signing_key_file).read_bytes() == before
    assert cli(runner, "audit", "list", "--action", "coalition.key")[1] == []
    assert [k["kid"] for k in served_jwks()["keys"]] == [kid_of(signing_key(signing_key_file))]


def test_a_kid_nobody_published_and_a_bad_signature_are_violations_not_skipped(may, runner):
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    code, _ = cli(runner, "settlement", "rotate-signing-key")  # May's kid is no longer the current one
    assert code == 0
    may.execute(text("UPDATE statements SET kid = 'never-published' WHERE partner_id = 'fuel'"))
    row = settlement.statement(may, "books", "2026-05")
    forged = base64.urlsafe_b64encode(new_key("EdDSA").sign(row.document.encode())).rstrip(b"=").decode()
    may.execute(text("UPDATE statements SET signature = :s WHERE partner_id = 'books'"), {"s": forged})
    may.commit()
    code, report = cli(runner, "ledger", "verify")
    assert code == 1
    assert report["violations_by_check"] == {"statement-key-unknown": 1, "statement-signature": 1}


def test_a_key_file_from_before_rotation_becomes_the_first_key(may, fuel, runner):
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    may_signed = fuel.statement("2026-05").json()
    old = may_signed["signature"]["kid"]
    # A deployment upgraded to migration 0006: statements, a key file, no registered key yet.
    may.execute(text("DELETE FROM signing_keys"))
    may.commit()
    assert [k["kid"] for k in served_jwks()["keys"]] == [old]
    code, report = cli(runner, "ledger", "verify")
    assert code == 0, report["violations"]
    assert cli(runner, "settlement", "signing-keys")[1] == [
        {"kid": old, "state": "current", "signed": 4, "registered_at": None, "retired_at": None}]

    code, rotated = cli(runner, "settlement", "rotate-signing-key")
    assert code == 0 and rotated["previous"] == old
    assert [k["kid"] for k in served_jwks()["keys"]] == [rotated["kid"], old]
    assert verify_statement(may_signed, served_jwks())["net_cents"] == 853
    assert cli(runner, "ledger", "verify")[0] == 0


def test_a_rotation_that_fails_after_committing_leaves_the_old_key_signing(
        may, fuel, runner, signing_key_file, monkeypatch):
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    may_signed = fuel.statement("2026-05").json()
    old = current_kid()
    staged = Path(signing_key_file + ".next")
    staged.write_text("left by a rotation that crashed")  # discarded, never installed

    def crash(*_):
        raise OSError("disk gone")

    def rotate_and_crash(*retire):
        with monkeypatch.context() as patch:
            patch.setattr("settlement.signing.os.replace", crash)
            result = runner.invoke(args=["settlement", "rotate-signing-key", *retire])
        assert result.exit_code == 1 and json.loads(result.stdout) == {
            "error": "internal-error", "detail": "The command failed: OSError (details on stderr)."}
        assert current_kid() == old and not staged.exists()  # the new private key is gone
        return cli(runner, "audit", "list", "--action", "coalition.key")[1][-1]["after"]["current"]

    # The database committed, the file was not replaced: the old key still signs and is
    # still published; the orphan's public key is published too but nothing holds its private key.
    orphan = rotate_and_crash()
    assert [k["kid"] for k in served_jwks()["keys"]] == [old, orphan]
    assert verify_statement(may_signed, served_jwks())["net_cents"] == 853
    assert cli(runner, "ledger", "verify")[0] == 0

    # The same crash while retiring the old key: the file still holds a retired key, and no
    # close may sign with it until a rotation completes.
    rotate_and_crash("--retire", old)
    assert cli(runner, "ledger", "verify")[1]["violations_by_check"] == {"statement-key-retired": 4}
    Book(may, now=day(20, month=6)).earn("bakery", "e-june", "M2", 40, day(19, month=6))
    with pytest.raises(Problem) as refused:
        close(may, "2026-06", datetime(2026, 7, 2, tzinfo=UTC))
    assert refused.value.slug == "unavailable" and old in refused.value.detail
    may.rollback()
    code, rotated = cli(runner, "settlement", "rotate-signing-key")
    assert code == 0 and rotated["previous"] == old
    close(may, "2026-06", datetime(2026, 7, 2, tzinfo=UTC))
    assert verify_statement(fuel.statement("2026-06").json(), served_jwks())["period"] == "2026-06"


def test_a_key_file_is_generated_once_with_mode_0600(app, signing_key_file):
    with app.app_context():
        first = kid_of(signing_key(signing_key_file))
        assert kid_of(signing_key(signing_key_file)) == first
    assert stat.S_IMODE(os.stat(signing_key_file).st_mode) == 0o600
    assert sorted(os.listdir(Path(signing_key_file).parent)) == [Path(signing_key_file).name]


def test_a_host_without_the_key_file_serves_every_published_key_and_makes_none(
        may, runner, signing_key_file):
    """Only the signing host needs the private key; a web host publishes the table's keys."""
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    first = current_kid()
    code, rotated = cli(runner, "settlement", "rotate-signing-key")
    assert code == 0, rotated
    Path(signing_key_file).rename(Path(signing_key_file).with_suffix(".away"))
    jwks = served_jwks()
    assert [k["kid"] for k in jwks["keys"]] == [rotated["kid"], first]  # the newest first
    assert not Path(signing_key_file).exists()  # serving the JWKS generated no key
