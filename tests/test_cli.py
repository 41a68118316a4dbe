"""The operator's command line (README, "Operator command line"): JSON on stdout, non-zero exit on error."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timezone

import pytest

from coalition.database import db
from coalition.errors import Problem
from partners import service as partner_service
from partners.client import jwk_thumbprint
from tests.conftest import await_lock_wait, new_key, postgres_only, public_pem


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output)


def key_file(tmp_path, alg="EdDSA", name="key.pub"):
    private = new_key(alg)
    path = tmp_path / name
    path.write_bytes(public_pem(private))
    return private, str(path)


def test_partner_lifecycle(runner, tmp_path):
    code, partner = cli(runner, "partners", "add", "shop", "--name", "The Shop",
                        "--issue-price", "0.012", "--issuance-share", "0.5", "--claim-fee", "0.001")
    assert code == 0 and partner["status"] == "active"
    assert partner["terms"][0] | {"from": None} == {
        "from": None, "issue_price": "0.012", "redemption_rate": "0.009",
        "issuance_share": "0.5", "claim_fee": "0.001"}

    private, path = key_file(tmp_path, "ES256")
    code, added = cli(runner, "partners", "add-key", "shop", "--public-key", path)
    assert code == 0 and added["alg"] == "ES256"
    assert added["kid"] == jwk_thumbprint(private.public_key())  # RFC 7638, as the client computes
    code, again = cli(runner, "partners", "add-key", "shop", "--public-key", path)
    assert (code, again) == (1, {"error": "validation-error", "detail": "This key is registered "
                                 f"already for this partner, as kid {added['kid']}."})

    _, second = key_file(tmp_path, "EdDSA", "second.pub")
    code, rotated = cli(runner, "partners", "add-key", "shop", "--public-key", second)
    code, shown = cli(runner, "partners", "show", "shop")
    assert [(k["kid"], k["state"]) for k in shown["keys"]] == [
        (added["kid"], "active"), (rotated["kid"], "active")]

    code, revoked = cli(runner, "partners", "revoke-key", "shop", "--", added["kid"])
    assert code == 0 and revoked["state"] == "revoked"
    code, error = cli(runner, "partners", "add-key", "shop", "--public-key", path)
    assert code == 1 and "revoked: a revoked key is never accepted again" in error["detail"]

    assert cli(runner, "partners", "suspend", "shop")[1]["status"] == "suspended"
    assert cli(runner, "partners", "activate", "shop")[1]["status"] == "active"
    code, listed = cli(runner, "partners", "list")
    assert code == 0 and [p["id"] for p in listed] == ["shop"]


def test_partner_errors_exit_non_zero_with_json(runner, tmp_path):
    assert cli(runner, "partners", "add", "a b", "--name", "x") == (1, {
        "error": "validation-error", "detail": "ID must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$."})
    assert cli(runner, "partners", "add", "shop", "--name", "x", "--issuance-share", "1.5")[0] == 1
    assert cli(runner, "partners", "add", "shop", "--name", "x", "--issue-price", "-1")[0] == 1
    assert cli(runner, "partners", "add", "shop", "--name", "x", "--issue-price", "abc")[0] == 1
    assert cli(runner, "partners", "add", "shop", "--name", "Shop")[0] == 0
    code, error = cli(runner, "partners", "add", "shop", "--name", "Shop")
    assert code == 1 and error["error"] == "validation-error"
    code, error = cli(runner, "partners", "show", "nope")
    assert code == 1 and error["error"] == "not-found"
    code, error = cli(runner, "partners", "revoke-key", "shop", "no-such-kid")
    assert code == 1 and error["error"] == "not-found"

    not_a_key = tmp_path / "junk.pem"
    not_a_key.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    assert cli(runner, "partners", "add-key", "shop", "--public-key", str(not_a_key))[0] == 1
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives import serialization
    for private in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP384R1())):
        path = tmp_path / "other.pub"
        path.write_bytes(private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        code, error = cli(runner, "partners", "add-key", "shop", "--public-key", str(path))
        assert code == 1 and "P-256" in error["detail"]


def test_members_add_is_idempotent(runner):
    assert cli(runner, "members", "add", "CARD-1") == (0, {"member_id": "CARD-1", "created": True})
    assert cli(runner, "members", "add", "CARD-1") == (0, {"member_id": "CARD-1", "created": False})
    assert cli(runner, "members", "add", "bad id")[0] == 1


def test_a_key_registered_for_another_partner_says_whose(runner, tmp_path):
    for partner in ("shop", "cafe"):
        assert cli(runner, "partners", "add", partner, "--name", partner.title())[0] == 0
    _, path = key_file(tmp_path)
    code, added = cli(runner, "partners", "add-key", "shop", "--public-key", path)
    assert code == 0
    code, error = cli(runner, "partners", "add-key", "cafe", "--public-key", path)
    assert (code, error) == (1, {"error": "validation-error", "detail": "This key is registered "
                                 f"already for partner 'shop', as kid {added['kid']}."})
    assert cli(runner, "partners", "revoke-key", "shop", "--", added["kid"])[0] == 0
    code, error = cli(runner, "partners", "add-key", "cafe", "--public-key", path)
    assert code == 1 and error["detail"].startswith(
        f"This key (kid {added['kid']}) was registered for partner 'shop' and revoked")
    assert [k["kid"] for k in cli(runner, "partners", "show", "cafe")[1]["keys"]] == []


@postgres_only
def test_a_key_registered_twice_at_once_is_a_problem_not_an_integrity_error(app, tmp_path):
    """The second insert waits on the first's uncommitted row, then fails on the primary key:
    the loser answers like a key registered before it looked."""
    from sqlalchemy.orm import Session

    key = public_pem(new_key("EdDSA"))
    now = datetime.now(timezone.utc)
    with app.app_context():
        for partner in ("shop", "cafe"):
            partner_service.add_partner(db.session, partner, partner.title(), now=now)
        db.session.commit()
        first, second = Session(db.engine), Session(db.engine)
        try:
            partner_service.add_key(first, "shop", key, now=now)  # flushed, not committed
            outcome = {}

            def register():
                try:
                    partner_service.add_key(second, "cafe", key, now=now)
                except Exception as exc:  # noqa: BLE001 - the test names what it expects below
                    outcome["error"] = exc
            racer = threading.Thread(target=register, daemon=True)
            racer.start()
            try:
                await_lock_wait(db.engine, still_running=racer.is_alive, timeout=5)
            finally:
                first.commit()
            racer.join(10)
            error = outcome.get("error")
            assert isinstance(error, Problem) and error.slug == "validation-error", error
            assert "registered already for partner 'shop'" in error.detail
        finally:
            second.rollback()
            first.close()
            second.close()
