"""`partners set-terms` changes only the terms given; terms under which the coalition loses
money on every point (redemption_rate above issue_price) need --force, for `partners add` too;
terms print one way everywhere (coalition.decimals.plain)."""
from __future__ import annotations

import json

import pytest

DEFAULTS = {"issue_price": "0.01", "redemption_rate": "0.009", "issuance_share": "1", "claim_fee": "0"}


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output)


def events(runner, action: str) -> list[dict]:
    code, listed = cli(runner, "audit", "list", "--action", action)
    assert code == 0
    return listed


@pytest.fixture
def shop(runner):
    code, partner = cli(runner, "partners", "add", "shop", "--name", "Shop", "--issue-price", "0.0120",
                        "--claim-fee", "0.001")
    assert code == 0, partner
    return partner


def terms(runner, partner="shop") -> list[dict]:
    return cli(runner, "partners", "show", partner)[1]["terms"]


def test_set_terms_changes_only_the_terms_given(runner, shop):
    first = {"from": None, **DEFAULTS, "issue_price": "0.012", "claim_fee": "0.001"}
    code, shown = cli(runner, "partners", "set-terms", "shop", "--from", "2099-01", "--claim-fee", "0.002")
    assert code == 0 and shown["terms"] == [first, {**first, "from": "2099-01", "claim_fee": "0.002"}]
    # From the terms in force for that month: 2099-01's for 2099-03, not the first ones.
    assert cli(runner, "partners", "set-terms", "shop", "--from", "2099-03",
               "--issuance-share", "0.5")[0] == 0
    # and for 2099-02 those of 2099-01 too, whatever starts later
    assert cli(runner, "partners", "set-terms", "shop", "--from", "2099-02",
               "--redemption-rate", "0.011")[0] == 0
    assert terms(runner) == [
        first,
        {**first, "from": "2099-01", "claim_fee": "0.002"},
        {**first, "from": "2099-02", "claim_fee": "0.002", "redemption_rate": "0.011"},
        {**first, "from": "2099-03", "claim_fee": "0.002", "issuance_share": "0.5"}]
    # Changing one term of a month that has its own terms already changes that term only.
    assert cli(runner, "partners", "set-terms", "shop", "--from", "2099-02", "--issue-price", "0.02")[0] == 0
    assert terms(runner)[2] == {**first, "from": "2099-02", "claim_fee": "0.002",
                                "redemption_rate": "0.011", "issue_price": "0.02"}
    changed = events(runner, "partner.terms.set")[-1]
    assert (changed["before"]["issue_price"], changed["after"]["issue_price"]) == ("0.012", "0.02")
    assert changed["before"]["redemption_rate"] == changed["after"]["redemption_rate"] == "0.011"


def test_set_terms_needs_a_term(runner, shop):
    assert cli(runner, "partners", "set-terms", "shop", "--from", "2099-01") == (1, {
        "error": "validation-error",
        "detail": "set-terms needs at least one term: issue_price, redemption_rate, issuance_share, claim_fee."})


def test_terms_that_lose_money_on_every_point_need_force(runner, shop):
    refused = (1, {"error": "validation-error", "detail": "redemption_rate 0.013 is above issue_price "
                   "0.012: the coalition would lose money on every point issued and redeemed here. "
                   "Give --force if that is meant."})
    written = len(events(runner, "partner"))
    assert cli(runner, "partners", "set-terms", "shop", "--from", "2099-01",
               "--redemption-rate", "0.013") == refused
    # Lowering the issue price under the redemption rate in force is the same loss.
    code, error = cli(runner, "partners", "set-terms", "shop", "--from", "2099-01", "--issue-price", "0.008")
    assert code == 1 and error["detail"].startswith("redemption_rate 0.009 is above issue_price 0.008")
    assert len(events(runner, "partner")) == written and len(terms(runner)) == 1

    # Equal is no loss on the point itself.
    assert cli(runner, "partners", "set-terms", "shop", "--from", "2099-01",
               "--redemption-rate", "0.012")[0] == 0
    assert "forced" not in events(runner, "partner.terms.set")[-1]["after"]
    code, shown = cli(runner, "partners", "set-terms", "shop", "--from", "2099-02",
                      "--redemption-rate", "0.013", "--force")
    assert code == 0 and shown["terms"][-1]["redemption_rate"] == "0.013"
    forced = events(runner, "partner.terms.set")[-1]
    assert forced["after"] == {"from": "2099-02", "issue_price": "0.012", "redemption_rate": "0.013",
                               "issuance_share": "1", "claim_fee": "0.001", "forced": True}


def test_partners_add_with_terms_that_lose_money_needs_force(runner):
    code, error = cli(runner, "partners", "add", "shop", "--name", "Shop", "--redemption-rate", "0.02")
    assert code == 1 and error["error"] == "validation-error"
    assert error["detail"].startswith("redemption_rate 0.02 is above issue_price 0.01:")
    assert cli(runner, "partners", "show", "shop")[1]["error"] == "not-found"
    assert events(runner, "partner") == []
    code, added = cli(runner, "partners", "add", "shop", "--name", "Shop", "--redemption-rate", "0.02",
                      "--force")
    assert code == 0 and added["terms"] == [{"from": None, **DEFAULTS, "redemption_rate": "0.02"}]
    assert events(runner, "partner.add")[-1]["after"]["forced"] is True
    code, plain_add = cli(runner, "partners", "add", "cafe", "--name", "Cafe")
    assert code == 0 and "forced" not in events(runner, "partner.add")[-1]["after"]


def test_decimals_print_one_way_in_every_partner_command(runner):
    code, added = cli(runner, "partners", "add", "shop", "--name", "Shop", "--issue-price", "1E+1",
                      "--redemption-rate", "0.0100", "--issuance-share", "1.000000", "--claim-fee", "5E-6")
    expected = {"from": None, "issue_price": "10", "redemption_rate": "0.01", "issuance_share": "1",
                "claim_fee": "0.000005"}
    assert code == 0 and added["terms"] == [expected]
    assert cli(runner, "partners", "show", "shop")[1]["terms"] == [expected]
    assert cli(runner, "partners", "list")[1][0]["terms"] == [expected]
    code, shown = cli(runner, "partners", "set-terms", "shop", "--from", "2099-01", "--claim-fee", "0.010")
    assert code == 0 and shown["terms"][1] == {**expected, "from": "2099-01", "claim_fee": "0.01"}
    assert events(runner, "partner.add")[0]["after"]["terms"] == [expected]
