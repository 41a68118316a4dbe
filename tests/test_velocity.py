"""`flask members suspicious`: velocity rules over members' claims."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import partners.views

T0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)


def at(monkeypatch, minutes: float) -> str:
    """Book what follows as recorded `minutes` after T0; its occurred_at a little before."""
    when = T0 + timedelta(minutes=minutes)
    monkeypatch.setattr(partners.views, "_now", lambda: when)
    return (when - timedelta(seconds=5)).isoformat()


def suspicious(runner, *args) -> dict:
    result = runner.invoke(args=["members", "suspicious", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_claims_at_many_partners_within_the_window_fire_and_spread_ones_do_not(
        app, runner, make_partner, monkeypatch):
    shops = [make_partner(f"shop{i}") for i in range(4)]
    for card in ("FAST", "SLOW"):
        shops[0].client.enrol(card)
    for i, shop in enumerate(shops):  # FAST: four partners in 30 minutes
        assert shop.client.earn(f"f{i}", "FAST", 10, occurred_at=at(monkeypatch, 10 * i)).status == 201
    for i, shop in enumerate(shops):  # SLOW: the same four, 50 minutes apart
        assert shop.client.earn(f"s{i}", "SLOW", 10, occurred_at=at(monkeypatch, 50 * i)).status == 201
    found = suspicious(runner, "--since", (T0 - timedelta(minutes=1)).isoformat())
    assert [m["member_id"] for m in found["members"]] == ["FAST"]
    rule = found["members"][0]["rules"][0]
    assert rule["rule"] == "many-partners" and rule["partners"] == ["shop0", "shop1", "shop2", "shop3"]
    assert rule["at"] == (T0 + timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    # A wider window catches SLOW too; fewer partners needed catches it at once.
    wide = suspicious(runner, "--since", T0.isoformat(), "--within", "200")
    assert sorted(m["member_id"] for m in wide["members"]) == ["FAST", "SLOW"]
    # Claims before --since are not looked at.
    late = suspicious(runner, "--since", (T0 + timedelta(minutes=15)).isoformat())
    assert late["members"] == []


def test_a_burn_right_after_an_earn_at_another_partner_fires(app, runner, make_partner,
                                                             monkeypatch):
    a, b = make_partner("shopa"), make_partner("shopb")
    for card in ("QUICK", "SAME", "PATIENT"):
        a.client.enrol(card)
    a.client.earn("q1", "QUICK", 100, occurred_at=at(monkeypatch, 0))
    assert b.client.burn("q2", "QUICK", 90, occurred_at=at(monkeypatch, 3)).status == 201
    a.client.earn("s1", "SAME", 100, occurred_at=at(monkeypatch, 0))
    assert a.client.burn("s2", "SAME", 90, occurred_at=at(monkeypatch, 2)).status == 201  # same shop
    a.client.earn("p1", "PATIENT", 100, occurred_at=at(monkeypatch, 0))
    assert b.client.burn("p2", "PATIENT", 90, occurred_at=at(monkeypatch, 40)).status == 201
    found = suspicious(runner, "--since", T0.isoformat())
    assert [m["member_id"] for m in found["members"]] == ["QUICK"]
    assert found["members"][0]["rules"] == [{
        "rule": "burn-after-earn", "at": (T0 + timedelta(minutes=3)).isoformat().replace("+00:00", "Z"),
        "burn_claim": "q2", "burned_at": "shopb", "earn_claim": "q1", "earned_at": "shopa",
        "seconds_after": 180}]
    assert [m["member_id"] for m in suspicious(runner, "--since", T0.isoformat(),
                                               "--burn-within", "60")["members"]] == ["QUICK", "PATIENT"]


def test_suspicious_needs_since(runner):
    result = runner.invoke(args=["members", "suspicious"])
    assert result.exit_code == 2 and json.loads(result.output)["error"] == "usage-error"
    bad = runner.invoke(args=["members", "suspicious", "--since", "yesterday"])
    assert bad.exit_code == 1 and json.loads(bad.output)["error"] == "validation-error"
