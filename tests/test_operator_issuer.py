"""The coalition as an issuer (issue 11, funders): `partners add ID --kind operator` registers the
coalition itself, once, with terms like any partner's and no keys; it gets a statement when a
month closes like every partner."""
from __future__ import annotations

import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output) if result.output.strip() else None


def test_the_coalition_is_registered_once_as_the_operator(runner):
    code, coalition = cli(runner, "partners", "add", "coalition", "--name", "The Coalition",
                          "--kind", "operator", "--issue-price", "0.008")
    assert code == 0 and coalition["kind"] == "operator"
    assert coalition["terms"][0]["issue_price"] == "0.008"
    code, shop = cli(runner, "partners", "add", "shop", "--name", "Shop")
    assert code == 0 and shop["kind"] == "partner"  # the default
    code, again = cli(runner, "partners", "add", "coalition-2", "--name", "Another",
                      "--kind", "operator")
    assert code == 1 and again["error"] == "validation-error" and "'coalition'" in again["detail"]
    assert [p["kind"] for p in cli(runner, "partners", "list")[1]] == ["operator", "partner"]
    code, wrong = cli(runner, "partners", "add", "x", "--name", "X", "--kind", "merchant")
    assert code == 2  # not one of the kinds


def test_the_operator_takes_no_key(runner, tmp_path):
    cli(runner, "partners", "add", "coalition", "--name", "The Coalition", "--kind", "operator")
    pem = tmp_path / "key.pem"
    pem.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    code, refused = cli(runner, "partners", "add-key", "coalition", "--public-key", str(pem))
    assert code == 1 and refused["error"] == "validation-error"
    assert cli(runner, "partners", "show", "coalition")[1]["keys"] == []
