"""docs/settlement.md, run through the signed HTTP API and the operator CLI, to the cent."""
from __future__ import annotations

import json

from coalition.ledger import Rules
from partners.client import PartnerClient
from tests.conftest import new_key, public_pem, transport_for

TERMS = {"bakery": ("0.01", "0.009", "1", "0"), "fuel": ("0.012", "0.0095", "0.5", "0.005"),
         "books": ("0.01", "0.009", "1", "0")}


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_the_worked_example(app, runner, tmp_path):
    # The example lies in May and June 2026: accept claims that old for this test.
    app.config["LEDGER_RULES"] = Rules(app.config["COALITION_TIMEZONE"], 100_000, 36)
    clients = {}
    for partner, (price, rate, share, fee) in TERMS.items():
        cli(runner, "partners", "add", partner, "--name", partner.title(), "--issue-price", price,
            "--redemption-rate", rate, "--issuance-share", share, "--claim-fee", fee)
        key = new_key("EdDSA")
        (tmp_path / f"{partner}.pub").write_bytes(public_pem(key))
        cli(runner, "partners", "add-key", partner, "--public-key", str(tmp_path / f"{partner}.pub"))
        clients[partner] = PartnerClient("", partner, key, transport=transport_for(app))
    bakery, fuel, books = clients["bakery"], clients["fuel"], clients["books"]
    for member in ("M1", "M2", "M3"):
        assert bakery.enrol(member).status == 201

    def ok(response, balance_after=None):
        assert response.status == 201, response.json()
        if balance_after is not None:
            assert response.json()["balance_after"] == balance_after
        return response.json()

    ok(bakery.earn("e1", "M1", 1000, occurred_at="2026-05-02T12:00:00Z"), 1000)
    ok(fuel.earn("f1", "M1", 500, occurred_at="2026-05-03T12:00:00Z"), 1500)
    ok(books.burn("k1", "M1", 300, occurred_at="2026-05-10T12:00:00Z"), 1200)
    ok(fuel.burn("f2", "M1", 900, occurred_at="2026-05-11T12:00:00Z"), 300)
    ok(books.reverse("k1", "rk1", 100, occurred_at="2026-05-12T12:00:00Z"), 400)
    ok(fuel.reverse("f1", "rf1", 500, occurred_at="2026-05-13T12:00:00Z"), -100)
    ok(books.earn("b1", "M1", 250, occurred_at="2026-05-14T12:00:00Z"), 150)
    ok(bakery.burn("e3", "M1", 101, occurred_at="2026-05-15T12:00:00Z"), 49)

    cli(runner, "settlement", "close", "2026-05")
    may = cli(runner, "settlement", "show", "2026-05")
    statements = {s["document"]["partner_id"]: s["document"] for s in may["partners"]}
    lines = ("claims", "points_issued", "points_redeemed", "points_funded", "points_debt_recovered",
             "issuance_charge_cents", "redemption_funding_charge_cents",
             "redemption_reimbursement_cents", "fees_cents", "debt_recovery_credit_cents", "net_cents")
    expected = {
        "bakery": (2, 1000, 101, 1000, 0, 1000, 0, 91, 0, 0, -909),
        "fuel": (3, 0, 900, 200, 200, 0, 120, 855, 2, 120, 853),
        "books": (3, 250, 200, 201, 0, 250, 0, 180, 0, 0, -70),
    }
    for partner, numbers in expected.items():
        assert tuple(statements[partner][line] for line in lines) == numbers, partner
    assert statements["bakery"]["counterparties"] == [
        {"partner_id": "books", "issued_by_them_redeemed_here": 1, "issued_here_redeemed_there": 200},
        {"partner_id": "fuel", "issued_by_them_redeemed_here": 0, "issued_here_redeemed_there": 700}]
    report = may["document"]
    assert [(m["issuer"], m["redeemer"], m["points"]) for m in report["matrix"]] == [
        ("bakery", "bakery", 100), ("bakery", "books", 200), ("bakery", "fuel", 700),
        ("books", "bakery", 1), ("fuel", "fuel", 200)]
    assert report["operator_margin_cents"] == 126
    assert report["payments"] == {"gross_obligations": 8, "net_payments": 3, "saved": 5,
                                  "gross_obligations_cents": 2618, "net_payments_cents": 1832,
                                  "saved_cents": 786}

    # The partner reads the same statement over the API.
    signed = fuel.request("GET", "/v1/statements/2026-05").json()
    assert signed["document"] == statements["fuel"]

    cli(runner, "partners", "set-terms", "bakery", "--from", "2026-06", "--issue-price", "0.02",
        "--redemption-rate", "0.009", "--issuance-share", "1", "--claim-fee", "0")
    late = ok(bakery.earn("e4", "M2", 50, occurred_at="2026-05-30T12:00:00Z"))
    boundary = ok(bakery.earn("e5", "M2", 77, occurred_at="2026-05-31T22:30:00Z"))
    assert (late["period"], late["late"]) == ("2026-06", True)
    assert (boundary["period"], boundary["late"]) == ("2026-06", False)
    # Debt first: points given back to a lot whose earn was reversed into debt pay that debt.
    ok(fuel.earn("f3", "M3", 400, occurred_at="2026-06-02T12:00:00Z"), 400)
    ok(books.burn("k2", "M3", 300, occurred_at="2026-06-03T12:00:00Z"), 100)
    ok(fuel.reverse("f3", "rf3", 400, occurred_at="2026-06-04T12:00:00Z"), -300)
    ok(books.reverse("k2", "rk2", 300, occurred_at="2026-06-05T12:00:00Z"), 0)
    assert bakery.balance("M3").json()["available"] == 0
    cli(runner, "settlement", "close", "2026-06")
    june = {s["document"]["partner_id"]: s["document"]
            for s in cli(runner, "settlement", "show", "2026-06")["partners"]}
    assert (june["bakery"]["claims"], june["bakery"]["late_claims"],
            june["bakery"]["points_issued"], june["bakery"]["issuance_charge_cents"],
            june["bakery"]["net_cents"]) == (2, 1, 127, 254, -254)
    assert june["bakery"]["terms"]["issue_price"] == "0.02"
    expected = {"fuel": (2, 0, 0, 300, 300, 0, 180, 0, 1, 180, -1),
                "books": (2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)}
    for partner, numbers in expected.items():
        assert tuple(june[partner][line] for line in lines) == numbers, partner
    assert cli(runner, "ledger", "verify")["ok"]
