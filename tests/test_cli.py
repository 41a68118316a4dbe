"""The operator's command line (API.md section 4): JSON on stdout, non-zero exit on error."""
from __future__ import annotations

import json

from partners.client import jwk_thumbprint
from tests.conftest import new_key, public_pem


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
        "from": None, "issue_price": "0.012000", "redemption_rate": "0.009000",
        "issuance_share": "0.500000", "claim_fee": "0.001000"}

    private, path = key_file(tmp_path, "ES256")
    code, added = cli(runner, "partners", "add-key", "shop", "--public-key", path)
    assert code == 0 and added["alg"] == "ES256"
    assert added["kid"] == jwk_thumbprint(private.public_key())  # RFC 7638, as the client computes
    code, again = cli(runner, "partners", "add-key", "shop", "--public-key", path)
    assert code == 0 and again["kid"] == added["kid"]

    _, second = key_file(tmp_path, "EdDSA", "second.pub")
    code, rotated = cli(runner, "partners", "add-key", "shop", "--public-key", second)
    code, shown = cli(runner, "partners", "show", "shop")
    assert [(k["kid"], k["state"]) for k in shown["keys"]] == [
        (added["kid"], "active"), (rotated["kid"], "active")]

    code, revoked = cli(runner, "partners", "revoke-key", "shop", "--", added["kid"])
    assert code == 0 and revoked["state"] == "revoked"
    code, _ = cli(runner, "partners", "add-key", "shop", "--public-key", path)
    assert code == 1  # a revoked key never comes back

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
