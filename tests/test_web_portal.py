"""The member portal's pages over the domain: what the partner API booked shows in the balance
and the history (partner names, base and bonus points, reversals linked to their claims,
filters, pages), coupons activate, consent switches with its history, the export downloads;
German first, English on request, numbers formatted for each."""
from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from coalition.ledger import Rules
from tests.browser.support import give_password, post_form, sign_in
from web import i18n


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if result.output.strip() else None


@pytest.fixture
def member(app, acme, bolt):
    assert acme.client.enrol("M-1").status == 201
    give_password(app, "member", "M-1")
    return "M-1"


@pytest.fixture
def client(app, member):
    client = app.test_client()
    assert sign_in(client, "portal", member).status_code == 302
    return client


def text_of(response, status: int = 200) -> str:
    assert response.status_code == status, response.status_code
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.get_data(as_text=True)))


def test_the_balance_the_api_booked_in_german_then_english(app, client, acme, bolt):
    app.config["COALITION_TIERS"] = "Blue:0,Silver:2000,Gold:5000"
    app.config["LEDGER_RULES"] = Rules.from_config(app.config)
    assert acme.client.earn("e-1", "M-1", 1234).status == 201
    assert bolt.client.earn("e-2", "M-1", 1000).status == 201
    assert bolt.client.burn("b-1", "M-1", 234).status == 201
    api = acme.client.balance("M-1").json()
    assert api["available"] == 2000
    page = text_of(client.get("/portal/"))
    assert 'lang="de"' in client.get("/portal/").get_data(as_text=True)
    assert "Verfügbar 2.000 Punkte" in page
    assert "Ihre Stufe: Silver" in page and "Noch 2.766 Punkte bis Gold" in page
    assert "2.234 Punkte in den letzten 12 Monaten gezählt" in page
    assert re.search(r"Ihre Stufe gilt mindestens bis \d+\. \w+ 20\d\d", page), page
    english = text_of(client.get("/portal/?lang=en"))
    assert "Available 2,000 points" in english and "2,766 points more for Gold" in english
    assert "Your tier: Silver" in english
    # the choice stays for the rest of the session
    assert "Balance" in text_of(client.get("/portal/history"))
    assert 'lang="en"' in client.get("/portal/offers").get_data(as_text=True)
    assert "Kontostand" in text_of(client.get("/portal/?lang=de"))


def test_held_and_owed_points(app, client, acme):
    assert acme.client.earn("e-1", "M-1", 100).status == 201
    assert acme.client.burn("b-1", "M-1", 80).status == 201
    assert acme.client.reverse("e-1", "r-1", 100).status == 201  # spent: 80 owed
    assert acme.client.earn("e-2", "M-1", 500).status == 201  # pays the 80 back first
    assert acme.client.hold("h-1", "M-1", 120).status == 201
    api = acme.client.balance("M-1").json()
    page = text_of(client.get("/portal/"))
    assert f"Verfügbar {api['available']:,} Punkte".replace(",", ".") in page
    assert "Reserviert 120 Punkte" in page and "zurückgelegt" in page
    assert f"Geschuldet {api['debt']} Punkte" in page
    assert acme.client.void("h-1").status == 200
    assert acme.client.earn("e-3", "M-1", 10).status == 201
    assert acme.client.burn("b-2", "M-1", api["available"] + 130).status == 201
    assert acme.client.reverse("e-3", "r-3", 10).status == 201
    owed = acme.client.balance("M-1").json()["debt"]
    assert owed > 0
    page = text_of(client.get("/portal/"))
    assert f"Geschuldet {owed} Punkte" in page and "zuerst mit neu gesammelten" in page


def test_points_expiring_within_the_notice_window_are_pointed_out(app, client, acme):
    app.config["POINTS_EXPIRE_MONTHS"] = 0  # at the end of the earn's month: within 30 days
    app.config["LEDGER_RULES"] = Rules.from_config(app.config)
    assert acme.client.earn("e-1", "M-1", 1500).status == 201
    notices = acme.client.expiry_notices("M-1").json()["notices"]
    assert [n["points"] for n in notices] == [1500]
    page = text_of(client.get("/portal/"))
    assert "In den nächsten 30 Tagen verfallen: 1.500 Punkte" in page
    last_day = notices[0]["expires_on"]  # YYYY-MM-DD
    year, month, day = last_day.split("-")
    assert f"{int(day)}. " in page and year in page


def test_numbers_and_money_for_each_language(app):
    with app.test_request_context("/portal/?lang=en"):
        i18n.choose_from_request()
        assert i18n.points(1234) == "1,234\u00a0points" and i18n.points(1) == "1\u00a0point"
        assert i18n.money(123456) == "€1,234.56"
        assert i18n.number(Decimal("1.5")) == "1.5"
    with app.test_request_context("/portal/"):
        assert i18n.language() == "de"
        assert i18n.points(1234) == "1.234\u00a0Punkte"
        assert i18n.money(123456) == "1.234,56\u00a0€"
        assert i18n.number(Decimal("1.5")) == "1,5"


def test_every_german_string_has_the_same_placeholders():
    for english, german in i18n.GERMAN.items():
        assert set(re.findall(r"{(\w+)}", english)) == set(re.findall(r"{(\w+)}", german)), english


def claims_in(page: str) -> list[str]:
    return re.findall(r'<tr id="claim-([^"]+)"', page)


def test_the_history_across_partners_with_bonus_reversals_filters_and_pages(app, client, acme,
                                                                            bolt, runner):
    cli(runner, "coupons", "add", "double", "--partner", "acme", "--name", "25 extra",
        "--kind", "fixed", "--value", "25", "--from", "2026-01-01", "--until", "2099-12-31")
    assert post_form(client, "/portal/offers", "/portal/coupons/double/activation"
                     ).status_code == 302
    assert acme.client.earn("e-1", "M-1", 100).status == 201
    assert acme.client.reverse("e-1", "r-1", 40).status == 201
    for n in range(22):
        assert bolt.client.earn(f"b-{n}", "M-1", 1).status == 201
    page = client.get("/portal/history").get_data(as_text=True)
    assert "Vorherige Seite" not in page and page.count('<tr id="claim-') == 20
    older = re.search(r'href="(/portal/history\?before=\d+)" rel="next">Nächste Seite', page)
    second = client.get(older.group(1)).get_data(as_text=True)
    assert "Nächste Seite" not in second and second.count('<tr id="claim-') == 4
    assert "Acme" in second and "e-1" in second and "Bolt" in page and "e-1" not in page
    newer = re.search(r'href="(/portal/history\?after=\d+)" rel="prev">Vorherige Seite', second)
    back = client.get(newer.group(1)).get_data(as_text=True)
    assert claims_in(back) == claims_in(page)  # the first page again, newest first
    assert [int(c.split("-")[-1]) for c in claims_in(page)[:21] if c.startswith("bolt")] \
        == list(range(21, 1, -1))
    earns_of_acme = text_of(client.get("/portal/history?partner=acme&kind=earn"))
    assert "Gutschrift" in earns_of_acme and "+25" in earns_of_acme and "100" in earns_of_acme
    assert "Bolt" not in earns_of_acme.split("Alle Partner")[-1].split("Filtern")[-1]
    assert "Storno" not in earns_of_acme.split("Filtern")[-1]
    reversals = client.get("/portal/history?kind=reversal").get_data(as_text=True)
    assert "Storniert e-1" in reversals and "b-0" not in reversals
    assert 'href="/portal/history?claim=e-1&amp;partner=acme"' in reversals
    claim = text_of(client.get("/portal/history?claim=e-1&partner=acme"))
    assert "Vorgang e-1 mit seinen Stornos" in claim and "r-1" in claim and "b-1 " not in claim
    # cursors that name no entry, or are no number: a page all the same
    assert client.get("/portal/history?before=1").status_code == 200
    assert "Keine Einträge" in text_of(client.get("/portal/history?before=1"))
    assert client.get("/portal/history?before=x&after=%C2%B2").status_code == 200
    assert client.get("/portal/history?kind=nonsense").status_code == 200


def test_a_member_activates_a_coupon_on_the_offers_page(app, client, acme, runner):
    cli(runner, "coupons", "add", "coffee", "--partner", "acme", "--name", "Coffee bonus",
        "--kind", "multiplier", "--value", "1.5", "--from", "2026-01-01", "--until", "2099-12-31")
    page = text_of(client.get("/portal/offers"))
    assert "Coffee bonus" in page and "1,5-fache Punkte bei Acme" in page
    assert "Gültig vom 01.01.2026 bis 31.12.2099" in page and "Aktivieren" in page
    done = post_form(client, "/portal/offers", "/portal/coupons/coffee/activation")
    assert done.status_code == 302
    page = text_of(client.get(done.headers["Location"]))
    assert "Coupon Coffee bonus ist aktiviert." in page and "Aktiviert" in page
    offers = acme.client.offers("M-1").json()
    assert offers["coupons"][0]["activated"] is True
    again = post_form(client, "/portal/offers", "/portal/coupons/coffee/activation")
    assert "war schon aktiviert" in text_of(client.get(again.headers["Location"]))
    missing = post_form(client, "/portal/offers", "/portal/coupons/nope/activation")
    assert missing.status_code == 404 and missing.mimetype == "text/html"
    cli(runner, "coupons", "end", "coffee")
    assert "Coffee bonus" not in text_of(client.get("/portal/offers"))


def test_consent_switch_and_its_history(app, client, acme):
    assert acme.client.set_consent("M-1", True, "email").status == 200
    page = text_of(client.get("/portal/consent"))
    assert "Sie sind einverstanden" in page and "email" in page and "Acme" in page
    post_form(client, "/portal/consent", "/portal/consent", {})  # unchecked: withdrawn
    page = text_of(client.get("/portal/consent"))
    assert "Sie erhalten keine Angebote" in page and "widerrufen" in page
    assert "Mitgliederportal" in page
    post_form(client, "/portal/consent", "/portal/consent", {"marketing": "yes"})
    assert 'data-consent="yes"' in client.get("/portal/consent").get_data(as_text=True)
    assert len(re.findall(r"Mitgliederportal", text_of(client.get("/portal/consent")))) >= 3


def test_the_member_downloads_the_export_and_it_is_audited(app, client, acme, runner):
    assert acme.client.earn("e-1", "M-1", 7).status == 201
    answer = post_form(client, "/portal/consent", "/portal/export")
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    assert answer.headers["Content-Disposition"] == 'attachment; filename="member-data-M-1.json"'
    document = answer.get_json()
    assert document["member"]["member_id"] == "M-1"
    assert [c["claim_id"] for c in document["claims"]] == ["e-1"]
    events = cli(runner, "audit", "list", "--action", "member.export")
    assert any(e["actor"] == "member:M-1" for e in (events if isinstance(events, list)
                                                    else events["events"]))


def test_set_password_with_a_code_then_sign_in(app, acme):
    from coalition import clock, credentials
    from coalition.database import db
    assert acme.client.enrol("M-9").status == 201
    with app.app_context():
        code = credentials.issue_code(db.session, "member:M-9", now=clock.now(), actor="test")
        db.session.commit()
    client = app.test_client()
    form = {"member_id": "M-9", "code": code, "password": "a new password", "password_again":
            "another password"}
    assert "stimmen nicht überein" in text_of(post_form(client, "/portal/set-password",
                                                         "/portal/set-password", form), 422)
    bad = post_form(client, "/portal/set-password", "/portal/set-password",
                    {**form, "code": "0000-0000-0000", "password_again": "a new password"})
    assert "Der Code ist falsch" in text_of(bad, 422)
    short = post_form(client, "/portal/set-password", "/portal/set-password",
                      {**form, "password": "short", "password_again": "short"})
    assert "Ein Passwort ist 10 bis 256 Zeichen lang." in text_of(short, 422)
    done = post_form(client, "/portal/set-password", "/portal/set-password",
                     {**form, "password_again": "a new password"})
    assert done.status_code == 302
    assert "Passwort ist festgelegt" in text_of(client.get(done.headers["Location"]))
    assert sign_in(client, "portal", "M-9", "a new password").status_code == 302


def test_the_console_signs_operators_in_by_role(app):
    from tests.browser.support import add_operator
    add_operator(app, "ann", "admin")
    add_operator(app, "ben", "analyst")
    for name, role in (("ann", "Administration"), ("ben", "Analyse")):
        client = app.test_client()
        assert client.get("/console/").status_code == 302
        assert sign_in(client, "console", name).status_code == 302
        page = text_of(client.get("/console/"))
        assert f"Willkommen, {name}." in page and f"Rolle: {role}" in page
        assert client.get("/portal/").status_code == 302  # an operator is no member
    wrong = text_of(sign_in(app.test_client(), "console", "ann", "not the password"))
    assert "Der Name oder das Passwort ist falsch." in wrong
