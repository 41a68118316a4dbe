"""Campaigns as the operator adds, lists, shows and ends them (`flask campaigns ...`,
coalition/campaigns.py). What a campaign books on an earn is not in here yet."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from coalition import tiers
from coalition.database import db
from coalition.models import ClosedPeriod


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output) if result.output.strip() else None


@pytest.fixture
def parties(runner):
    assert cli(runner, "partners", "add", "coalition", "--name", "Coalition", "--kind", "operator")[0] == 0
    for partner in ("shop", "fuel"):
        assert cli(runner, "partners", "add", partner, "--name", partner.title())[0] == 0


def add(runner, campaign_id="double", *extra, kind="multiplier", value="2", starts="2027-03-27",
        ends="2027-03-28", funder="coalition"):
    return cli(runner, "campaigns", "add", campaign_id, "--name", "Double points", "--kind", kind,
               "--value", value, "--from", starts, "--until", ends, "--funder", funder, *extra)


def test_a_window_of_days_is_whole_days_in_berlin_across_the_dst_change(app, runner, parties):
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"],
                                         tiers=tiers.parse("Blue:0,Gold:1000"))
    # Berlin moves to summer time in the night of 27-28 March 2027: the 28th has 23 hours.
    code, campaign = add(runner, "double", "--partners", "shop,fuel", "--tiers", "Gold",
                         "--cap-per-member", "500", "--cap-total", "100000")
    assert code == 0, campaign
    assert (campaign["starts_at"], campaign["ends_at"]) == ("2027-03-26T23:00:00Z",
                                                          "2027-03-28T22:00:00Z")
    assert campaign["factor"] == "2" and campaign["bonus_points"] is None
    assert campaign["partners"] == ["fuel", "shop"] and campaign["tiers"] == ["Gold"]
    assert (campaign["funder"], campaign["cap_per_member"], campaign["cap_total"]) == (
        "coalition", 500, 100000)
    code, fixed = add(runner, "welcome", kind="fixed", value="50", starts="2027-10-30T18:00",
                      ends="2027-10-31T12:00", funder="shop")
    assert code == 0 and fixed["bonus_points"] == 50 and fixed["factor"] is None
    # 18:00 summer time (UTC+2) to 12:00 winter time (UTC+1).
    assert (fixed["starts_at"], fixed["ends_at"]) == ("2027-10-30T16:00:00Z", "2027-10-31T11:00:00Z")
    assert cli(runner, "campaigns", "show", "welcome")[1] == fixed
    assert [c["id"] for c in cli(runner, "campaigns", "list")[1]] == ["double", "welcome"]
    code, events = cli(runner, "audit", "list", "--action", "campaign.add")
    assert [e["subject"] for e in events] == ["campaign:double", "campaign:welcome"]


@pytest.mark.parametrize("change, detail", [
    ({"value": "1"}, "above 1"), ({"value": "2.00001"}, "4 places"), ({"value": "NaN"}, "above 1"),
    ({"value": "101"}, "above 1"), ({"kind": "fixed", "value": "0"}, "1 to"),
    ({"kind": "fixed", "value": "1.5"}, "1 to"), ({"starts": "2027-03-28", "ends": "2027-03-27"}, "empty"),
    ({"starts": "27.03.2027"}, "--from must be"), ({"funder": "nobody"}, "no registered partner"),
    # digits of other scripts (and superscripts) are no numbers here
    ({"kind": "fixed", "value": "\u00b2"}, "1 to"), ({"kind": "fixed", "value": "\u0665"}, "1 to"),
    ({"value": "\u0662"}, "above 1"),
])
def test_bad_campaigns_are_refused_and_nothing_is_stored(runner, parties, change, detail):
    code, answer = add(runner, **change)
    assert code == 1 and answer["error"] == "validation-error" and detail in answer["detail"]
    assert cli(runner, "campaigns", "list")[1] == []


def test_unknown_partners_tiers_caps_and_duplicates_are_refused(app, runner, parties):
    code, answer = add(runner, "x", "--partners", "shop,ghost")
    assert code == 1 and "ghost" in answer["detail"]
    code, answer = add(runner, "x", "--tiers", "Gold")  # no tiers configured
    assert code == 1 and "No such tiers: Gold" in answer["detail"]
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"],
                                         tiers=tiers.parse("Blue:0,Gold:1000"))
    code, answer = add(runner, "x", "--tiers", "Gold,Glod")  # a misspelt tier never applies
    assert code == 1 and "No such tiers: Glod (the tiers are: Blue, Gold)" in answer["detail"]
    assert add(runner, "x", "--cap-total", "0")[0] == 1
    assert add(runner, "x")[0] == 0
    code, answer = add(runner, "x")
    assert code == 1 and "exists already" in answer["detail"]


def test_a_campaign_cannot_reach_into_a_closed_month(app, runner, parties):
    with app.app_context():
        db.session.add(ClosedPeriod(period="2027-02", closed_at=datetime.now(timezone.utc)))
        db.session.commit()
    code, answer = add(runner, starts="2027-02-28", ends="2027-03-05")
    assert code == 1 and "2027-02 is closed" in answer["detail"]
    # The first instant of March in Berlin is still 28 February in UTC: allowed.
    assert add(runner, starts="2027-03-01", ends="2027-03-05")[0] == 0


def test_ending_a_campaign_shortens_its_window_once(runner, parties):
    assert add(runner, "now", starts="2026-01-01", ends="2099-12-31")[0] == 0
    assert add(runner, "later", starts="2098-01-01", ends="2098-02-01")[0] == 0
    assert [c["id"] for c in cli(runner, "campaigns", "list", "--active")[1]] == ["now"]
    code, ended = cli(runner, "campaigns", "end", "now")
    assert code == 0 and ended["changed"] is True and ended["ended_at"] is not None
    assert ended["ends_at"] == ended["ended_at"]
    assert cli(runner, "campaigns", "list", "--active")[1] == []
    assert cli(runner, "campaigns", "end", "now")[1]["changed"] is False
    code, never = cli(runner, "campaigns", "end", "later")  # never ran: ends at its start
    assert never["starts_at"] == "2097-12-31T23:00:00Z"
    assert never["ends_at"] == "2097-12-31T23:00:00.000001Z"  # an instant after its start
    assert cli(runner, "campaigns", "end", "ghost")[1]["error"] == "not-found"
    code, events = cli(runner, "audit", "list", "--action", "campaign.end")
    assert [e["subject"] for e in events] == ["campaign:now", "campaign:later"]
