"""Status tiers (coalition/tiers.py): from points earned in the trailing 12 months, shown in the
balance with the progress to the next tier and the last day the tier lasts."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from coalition import tiers
from partners import views

TIERS = "Blue:0,Silver:2000,Gold:5000:1.5"
UTC = timezone.utc


@pytest.fixture
def clock(monkeypatch):
    now = [datetime(2026, 6, 10, 10, 0, tzinfo=UTC)]
    monkeypatch.setattr(views, "_now", lambda: now[0])
    return now


@pytest.fixture
def tiered(app, acme, clock):
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"], tiers=tiers.parse(TIERS))
    assert acme.client.enrol("M1").status == 201
    return acme


def tier(partner, card="M1") -> dict:
    return partner.client.balance(card).json()["tier"]


def test_the_tier_rises_at_its_threshold_and_a_reversal_lowers_it(tiered, clock):
    at = clock[0] - timedelta(days=1)
    assert tier(tiered) == {"name": "Blue", "points": 0, "until": None,
                            "next": {"name": "Silver", "points": 2000, "missing": 2000}}
    assert tiered.client.earn("e1", "M1", 1999, occurred_at=at).status == 201
    assert tier(tiered)["name"] == "Blue" and tier(tiered)["next"]["missing"] == 1
    assert tiered.client.earn("e2", "M1", 1, occurred_at=at).status == 201
    silver = tier(tiered)
    assert silver["name"] == "Silver" and silver["points"] == 2000
    assert silver["next"] == {"name": "Gold", "points": 5000, "missing": 3000}
    # Both earns occurred on 9 June 2026: they count through 8 June 2027.
    assert silver["until"] == "2027-06-08"
    assert tiered.client.reverse("e2", "e2-r", 1, occurred_at=at).status == 201
    assert tier(tiered)["name"] == "Blue"  # 1999: back below the threshold at once
    # Spending points does not: the tier counts what was earned, not the balance.
    assert tiered.client.earn("e3", "M1", 3001, occurred_at=at).status == 201
    assert tiered.client.burn("b1", "M1", 5000, occurred_at=at).status == 201
    gold = tier(tiered)
    assert gold["name"] == "Gold" and gold["points"] == 5000 and gold["next"] is None


def test_a_tier_lasts_until_the_older_earns_no_longer_reach_it(app, tiered, clock):
    start = clock[0]
    clock[0] = start - timedelta(days=25)  # earns 25 and 5 days back, each within the window
    assert tiered.client.earn("old", "M1", 1500, occurred_at=clock[0] - timedelta(hours=1)).status == 201
    clock[0] = start
    assert tiered.client.earn("new", "M1", 600, occurred_at=start - timedelta(days=5)).status == 201
    status = tier(tiered)
    assert status["name"] == "Silver" and status["points"] == 2100
    # "old" occurred on 16 May 2026 (Berlin): without it 600 are left, below Silver.
    assert status["until"] == "2027-05-15"
    clock[0] = datetime(2027, 5, 15, 21, 59, tzinfo=UTC)  # 23:59 in Berlin, summer time
    assert tier(tiered)["name"] == "Silver"
    clock[0] = datetime(2027, 5, 15, 22, 0, tzinfo=UTC)  # midnight in Berlin: "old" is out
    assert tier(tiered) == {"name": "Blue", "points": 600, "until": None,
                            "next": {"name": "Silver", "points": 2000, "missing": 1400}}


def test_pending_points_count_once_they_are_available(tiered, clock):
    at = clock[0] - timedelta(hours=1)
    assert tiered.client.earn("p1", "M1", 2500, occurred_at=at,
                              pending_until=clock[0] + timedelta(days=14)).status == 201
    assert tier(tiered)["name"] == "Blue"
    clock[0] += timedelta(days=14)
    assert tier(tiered)["name"] == "Silver"


def test_without_tiers_the_balance_shows_none(app, acme):
    assert acme.client.enrol("M1").status == 201
    assert acme.client.balance("M1").json()["tier"] is None


@pytest.mark.parametrize("text, error", [
    ("Blue:10,Silver:20", "starts at 0"), ("Blue:0,Silver:20,Gold:20", "rise"),
    ("Blue:0,blue:5", "differ"), ("Blue", "Name:threshold"), ("Blue:0,Gold:x", "Name:threshold"),
    ("Blue:0,Gold:100:0.5", "1 to 10"), ("Blue:0,Gold:100:abc", "1 to 10"),
])
def test_bad_tier_settings_are_refused_at_start_up(text, error):
    with pytest.raises(ValueError, match=error):
        tiers.parse(text)


def test_an_earn_counts_twelve_months_to_the_day_in_berlin():
    tz = "Europe/Berlin"
    # Earned 00:30 on 1 January in Berlin (still 31 December in UTC): counts through 31 December.
    stops = tiers.counts_until(datetime(2025, 12, 31, 23, 30, tzinfo=UTC), tz)
    assert stops == datetime(2026, 12, 31, 23, 0, tzinfo=UTC)  # local midnight of 1 January 2027
    leap = tiers.counts_until(datetime(2028, 2, 29, 12, 0, tzinfo=UTC), tz)
    assert leap == datetime(2029, 2, 28, 23, 0, tzinfo=UTC)  # 1 March 2029 in Berlin
    assert tiers.parse(TIERS)[2].multiplier == 1.5 and tiers.parse("") == ()
