"""The console's campaigns, coupons and tiers: a campaign added through the form gives the
next earn its bonus, a coupon published through the form can be activated and used, ending
stops the bonus, form errors show on the form and add nothing, analysts read and are refused
every change, the performance figures are those of the bonus lots (cost priced at the funder's
terms as a statement prices bonus issuance), tiers show how many members each holds."""
from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from coalition import clock
from coalition.database import db
from coalition.ledger import Rules
from coalition.models import AuditEvent, Campaign, Consumption, Coupon, Lot
from coalition.periods import day_of
from coalition.vocabulary import ConsumptionKind
from tests.browser.support import add_operator, csrf_of, post_form, sign_in


@pytest.fixture
def fund(make_partner):
    """A funder whose terms differ from the defaults: 0.02 EUR a point, half charged at issue."""
    return make_partner("fund", issue_price=Decimal("0.02"), issuance_share=Decimal("0.5"),
                        redemption_rate=Decimal("0.01"))


@pytest.fixture
def admin(app, acme, fund):
    assert acme.client.enrol("M-1").status == 201
    add_operator(app, "ada", "admin")
    client = app.test_client()
    assert sign_in(client, "console", "ada").status_code == 302
    return client


@pytest.fixture
def analyst(app, admin):
    add_operator(app, "ann", "analyst")
    client = app.test_client()
    assert sign_in(client, "console", "ann").status_code == 302
    return client


def today(app, days: int = 0) -> str:
    return (day_of(clock.now(), app.config["COALITION_TIMEZONE"])[0]
            + timedelta(days=days)).isoformat()


def text_of(response, status: int = 200) -> str:
    assert response.status_code == status, (response.status_code,
                                            response.get_data(as_text=True)[:800])
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.get_data(as_text=True)))


def add_campaign(app, client, status: int = 302, **fields):
    data = {"id": "double", "name": "Doppelte Punkte", "kind": "multiplier", "value": "2",
            "starts": today(app), "ends": today(app, 30), "funder": "fund",
            "partners": ["acme"], **fields}
    answer = post_form(client, "/console/campaigns/new", "/console/campaigns/new", data)
    assert answer.status_code == status, answer.get_data(as_text=True)[:800]
    return answer


def actors(app, action: str) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEvent.actor)
                                       .where(AuditEvent.action == action)))


def test_a_campaign_added_through_the_form_gives_the_next_earn_its_bonus(app, admin, acme):
    answer = add_campaign(app, admin)
    assert answer.headers["Location"].endswith("/console/campaigns/double")
    page = text_of(admin.get("/console/campaigns/double"))
    assert "Aktion Doppelte Punkte ist angelegt." in page
    assert "2-fache Punkte bei Acme" in page and "Laufend" in page
    assert actors(app, "campaign.add") == ["operator:ada"]
    earned = acme.client.earn("e-1", "M-1", 120).json()
    assert earned["bonus_points"] == 120
    assert [(b["id"], b["funder"]) for b in earned["bonuses"]] == [("double", "fund")]
    listing = admin.get("/console/campaigns").get_data(as_text=True)
    running = listing.split('id="campaigns-running"')[1].split("</table>")[0]
    assert 'id="campaign-double"' in running


def test_form_errors_show_on_the_form_and_add_nothing(app, admin):
    page = text_of(add_campaign(app, admin, 422, value="abc"), 422)
    assert "Der Wert eines Multiplikators ist eine Dezimalzahl" in page
    assert 'value="Doppelte Punkte"' in add_campaign(app, admin, 422, value="abc").get_data(
        as_text=True)  # what was typed stays
    assert "Die Kennung hat 1 bis 64" in text_of(add_campaign(app, admin, 422, id="no spaces"),
                                                 422)
    english = post_form(admin, "/console/campaigns/new?lang=en", "/console/campaigns/new",
                        {"id": "x", "name": "X", "kind": "fixed", "value": "0",
                         "starts": today(app), "ends": today(app, 1), "funder": "fund"})
    assert "--value is 1 to 1000000000 points." in text_of(english, 422)
    with app.app_context():
        assert db.session.scalar(select(func.count(Campaign.id))) == 0
    assert actors(app, "campaign.add") == []


def test_ending_a_campaign_stops_its_bonus(app, admin, acme):
    add_campaign(app, admin)
    confirm = text_of(admin.get("/console/campaigns/double/end"))
    assert "Das Beenden gilt sofort und endgültig" in confirm
    with app.app_context():
        assert db.session.get(Campaign, "double").ended_at is None  # asking ends nothing
    done = post_form(admin, "/console/campaigns/double/end", "/console/campaigns/double/end",
                     follow_redirects=True)
    assert "Doppelte Punkte ist beendet." in text_of(done) and "Beendet" in text_of(done)
    assert actors(app, "campaign.end") == ["operator:ada"]
    # A purchase after the end (the client sends whole seconds: one in this second could
    # still lie before it)
    later = clock.now() + timedelta(seconds=2)
    assert acme.client.earn("e-1", "M-1", 100, occurred_at=later).json()["bonus_points"] == 0
    listing = admin.get("/console/campaigns").get_data(as_text=True)
    assert 'id="campaign-double"' in listing.split('id="campaigns-ended"')[1]


def test_a_coupon_published_through_the_form_is_activated_used_and_ended(app, admin, acme):
    answer = post_form(admin, "/console/coupons/new", "/console/coupons/new", {
        "id": "coffee", "name": "Kaffee-Bonus", "partner": "acme", "funder": "", "kind": "fixed",
        "value": "50", "starts": today(app), "ends": today(app, 10)})
    assert answer.status_code == 302, answer.get_data(as_text=True)[:800]
    assert actors(app, "coupon.publish") == ["operator:ada"]
    with app.app_context():
        assert db.session.get(Coupon, "coffee").funder_id == "acme"  # empty: the partner
    assert acme.client.activate_coupon("M-1", "coffee").status == 201
    assert acme.client.earn("e-1", "M-1", 10).json()["bonus_points"] == 50
    page = text_of(admin.get("/console/coupons/coffee"))
    assert "50 Extrapunkte bei Acme" in page
    done = post_form(admin, "/console/coupons/coffee/end", "/console/coupons/coffee/end",
                     follow_redirects=True)
    assert "Kaffee-Bonus ist beendet." in text_of(done)
    assert acme.client.activate_coupon("M-1", "coffee").status == 200  # activated before
    assert actors(app, "coupon.end") == ["operator:ada"]


def test_an_analyst_reads_but_cannot_add_or_end(app, admin, analyst):
    add_campaign(app, admin)
    listing = text_of(analyst.get("/console/campaigns"))
    assert "Doppelte Punkte" in listing and "Neue Aktion" not in listing
    assert "Beenden" not in text_of(analyst.get("/console/campaigns/double"))
    token = csrf_of(analyst.get("/console/campaigns").get_data(as_text=True))
    assert analyst.get("/console/campaigns/new").status_code == 403
    assert analyst.post("/console/campaigns/new", data={
        "csrf_token": token, "id": "forged", "name": "F", "kind": "fixed", "value": "5",
        "starts": today(app), "ends": today(app, 1), "funder": "fund"}).status_code == 403
    assert analyst.post("/console/campaigns/double/end",
                        data={"csrf_token": token}).status_code == 403
    assert analyst.post("/console/coupons/new", data={"csrf_token": token}).status_code == 403
    with app.app_context():
        assert db.session.get(Campaign, "forged") is None
        assert db.session.get(Campaign, "double").ended_at is None
    assert actors(app, "campaign.end") == []


def test_performance_matches_the_bonus_lots(app, admin, acme, bolt):
    add_campaign(app, admin)
    assert acme.client.earn("e-1", "M-1", 100).json()["bonus_points"] == 100
    assert acme.client.earn("e-2", "M-1", 51).json()["bonus_points"] == 51
    assert acme.client.reverse("e-1", "r-1", 30).status == 201  # takes back 30 of the bonus
    assert acme.client.reverse("e-1", "r-2", 5).status == 201  # and 5 more
    assert bolt.client.burn("b-1", "M-1", 200).status == 201
    assert bolt.client.earn("e-3", "M-1", 100).json()["bonus_points"] == 0  # not bolt's
    with app.app_context():
        source = Lot.source == "campaign:double"
        issued = db.session.scalar(select(func.sum(Lot.points)).where(source))
        remaining = db.session.scalar(select(func.sum(Lot.remaining)).where(source))
        redeemed = db.session.scalar(
            select(func.coalesce(func.sum(Consumption.points), 0)).join(Lot)
            .where(source, Consumption.kind.in_((ConsumptionKind.BURN,
                                                 ConsumptionKind.BURN_REVERSAL))))
        taken_back = db.session.scalar(
            select(func.coalesce(func.sum(Consumption.points), 0)).join(Lot)
            .where(source, Consumption.kind == ConsumptionKind.EARN_REVERSAL))
    assert (issued, taken_back) == (151, 35)  # nothing was spent of what they took back
    html = admin.get("/console/campaigns/double").get_data(as_text=True)

    def figure(name: str) -> str:
        return re.search(rf'data-perf="{name}">([^<]*)<', html).group(1)

    assert figure("issued") == "151" and figure("reversed") == "35"
    assert figure("net") == "116\u00a0Punkte"
    assert figure("redeemed") == str(redeemed) and figure("remaining") == str(remaining)
    assert figure("earns") == "2"
    # 116 points x 0.02 EUR x 0.5 charged at issue = 1.16 EUR, as the statement would charge
    assert figure("cost") == "1,16\u00a0€"
    listing = admin.get("/console/campaigns?lang=en").get_data(as_text=True)
    row = listing.split('id="campaign-double"')[1].split("</tr>")[0]
    assert 'data-perf="net">116<' in row and 'data-perf="cost">€1.16<' in row


def test_tiers_as_configured_with_their_members(app, admin, acme):
    app.config["COALITION_TIERS"] = "Blue:0,Silver:1000,Gold:5000:1.5"
    app.config["LEDGER_RULES"] = Rules.from_config(app.config)
    assert acme.client.enrol("M-2").status == 201
    assert acme.client.earn("e-1", "M-2", 1200).status == 201
    html = admin.get("/console/campaigns").get_data(as_text=True)
    members = dict(re.findall(r'id="tier-(\w+)">.*?data-tier="members">(\d+)<', html, re.S))
    assert members == {"Blue": "1", "Silver": "1", "Gold": "0"}
    assert "1,5" in html.split('id="tier-Gold"')[1].split("</tr>")[0]
