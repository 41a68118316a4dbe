"""The coalition as an issuer (issue 11, funders): `partners add ID --kind operator` registers the
coalition itself, once, with terms like any partner's; its key signs the operator's API calls
and the points the coalition gives, never a redemption; it gets a statement when a month closes
like every partner."""
from __future__ import annotations

import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from partners.client import PartnerClient
from partners.demo import transport_for
from tests.conftest import ago


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


def test_the_operators_key_earns_for_the_coalition_but_never_redeems(app, runner, tmp_path,
                                                                      acme):
    """The operator signs with a key of its own (its API: campaigns, coupons, segments) and may
    book the points the coalition gives; nothing is redeemed at it: burns, holds and a batch's
    burns answer 403 forbidden and book nothing."""
    cli(runner, "partners", "add", "coalition", "--name", "The Coalition", "--kind", "operator")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = tmp_path / "key.pem"
    pem.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    code, added = cli(runner, "partners", "add-key", "coalition", "--public-key", str(pem))
    assert code == 0, added
    assert [k["kid"] for k in cli(runner, "partners", "show", "coalition")[1]["keys"]] == [
        added["kid"]]
    coalition = PartnerClient("", "coalition", key, transport=transport_for(app))
    assert acme.client.enrol("M1").status == 201
    assert acme.client.earn("a1", "M1", 100).status == 201
    goodwill = coalition.earn("sorry-1", "M1", 50)
    assert goodwill.status == 201 and goodwill.json()["balance_after"] == 150
    for refused in (coalition.burn("b1", "M1", 10), coalition.hold("h1", "M1", 10)):
        assert refused.status == 403, refused.body
        assert refused.json()["type"].endswith("/forbidden")
    answer = coalition.batch([{"kind": "earn", "claim_id": "sorry-2", "member_id": "M1",
                               "points": 5, "occurred_at": ago(minutes=1)},
                              {"kind": "burn", "claim_id": "b2", "member_id": "M1",
                               "points": 10, "occurred_at": ago(minutes=1)}]).json()
    assert [r["status"] for r in answer["results"]] == [201, 403]
    assert answer["results"][1]["body"]["type"].endswith("/forbidden")
    assert acme.client.balance("M1").json()["available"] == 155
