"""The member portal in a real browser: Debian's Chromium (/usr/bin/chromium, from apt) driven by
Playwright, against the app served on a free port in a thread, over the test database (SQLite,
or PostgreSQL with DATABASE_URL). Flows: a member signs in, reads the balance and history the
partner API booked, activates a coupon, switches consent and downloads the export; five wrong
passwords lock the sign-in out; a form without its token is refused; German and English pages
render with their number formats; axe-core (shipped in axe-playwright-python) finds no serious
or critical violation on any page, at desktop and phone width. Every page is saved as a
screenshot under tests/browser/screenshots/ (git-ignored).

Skipped, saying why, when Chromium or Playwright is missing: `apt-get install -y chromium` and
`pip install -r requirements-dev.txt`. No browser is ever downloaded."""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from coalition import limits
from coalition.ledger import Rules
from tests.browser.conftest import PHONE, accessible, look, shot
from tests.browser.support import PASSWORD, add_operator, give_password

def member_signs_in(page, card: str, password: str = PASSWORD) -> None:
    page.goto("/portal/sign-in")
    page.get_by_label("Mitgliedsnummer").fill(card)
    page.get_by_label("Passwort", exact=True).fill(password)
    page.get_by_role("button", name="Anmelden").click()


@pytest.fixture
def booked(app, acme, bolt, runner):
    """A member with a password, and what partners booked for it through the API."""
    app.config["COALITION_TIERS"] = "Blue:0,Silver:1000,Gold:5000"
    app.config["LEDGER_RULES"] = Rules.from_config(app.config)
    assert acme.client.enrol("M-1").status == 201
    give_password(app, "member", "M-1")
    result = runner.invoke(args=["coupons", "add", "coffee", "--partner", "acme", "--name",
                                 "Kaffee-Bonus", "--kind", "fixed", "--value", "50", "--from",
                                 "2026-01-01", "--until", "2099-12-31"])
    assert result.exit_code == 0, result.output
    assert acme.client.earn("e-1", "M-1", 1200).status == 201
    assert bolt.client.earn("e-2", "M-1", 300).status == 201
    assert bolt.client.burn("b-1", "M-1", 266).status == 201
    assert acme.client.reverse("e-1", "r-1", 100).status == 201
    assert acme.client.set_consent("M-1", True, "email").status == 200
    assert acme.client.balance("M-1").json()["available"] == 1134
    return "M-1"


def test_a_member_reads_the_balance_and_history_activates_a_coupon_and_downloads_the_export(
        page, booked, tmp_path):
    page.goto("/portal/sign-in")
    look(page, "sign-in-de")
    page.goto("/portal/set-password")
    look(page, "set-password-de", phone=False)
    member_signs_in(page, booked)
    assert page.url.endswith("/portal/")
    assert page.locator("[data-figure=available]").inner_text() == "1.134\u00a0Punkte"
    assert page.locator("html").get_attribute("lang") == "de"
    assert "Ihre Stufe: Silver" in page.locator("main").inner_text()
    assert page.locator("progress").get_attribute("max") == "5000"
    look(page, "balance-de")

    page.get_by_role("link", name="Verlauf").click()
    table = page.locator("table.history")
    assert table.locator("tr", has_text="e-1").first.locator("td").nth(1).inner_text() == "Acme"
    assert "1.200" in table.locator("#claim-acme-e-1").inner_text()
    assert "Storniert e-1" in table.locator("#claim-acme-r-1").inner_text()
    assert "\u2212100" in table.locator("#claim-acme-r-1").inner_text()
    assert "\u2212266" in table.locator("#claim-bolt-b-1").inner_text()
    assert "Bolt" in table.locator("#claim-bolt-b-1").inner_text()
    look(page, "history-de")
    page.get_by_label("Art", exact=True).select_option("burn")
    page.get_by_role("button", name="Filtern").click()
    # The filter and the link load a new page: wait for it, not for the old one's rows.
    page.wait_for_url(re.compile(r"[?&]kind=burn"))
    assert page.locator("table.history tbody tr").count() == 1
    page.goto("/portal/history")
    page.locator("#claim-acme-r-1").get_by_role("link", name="Storniert e-1").click()
    page.wait_for_url(re.compile(r"[?&]claim=e-1"))
    assert page.locator("table.history tbody tr").count() == 2

    page.get_by_role("link", name="Angebote").click()
    coupon = page.locator("#coupon-coffee")
    assert "50 Extrapunkte bei Acme" in coupon.inner_text()
    look(page, "offers-de")
    coupon.get_by_role("button", name="Aktivieren").click()
    assert "Coupon Kaffee-Bonus ist aktiviert." in page.locator(".flash.ok").inner_text()
    assert page.locator("#coupon-coffee .badge.on").inner_text() == "Aktiviert"
    shot(page, "offers-activated-de")

    page.get_by_role("link", name="Einwilligung und Daten").click()
    assert page.get_by_label("Ich möchte Werbeangebote erhalten").is_checked()
    look(page, "consent-de")
    page.get_by_label("Ich möchte Werbeangebote erhalten").uncheck()
    page.get_by_role("button", name="Speichern").click()
    assert page.locator("[data-consent]").get_attribute("data-consent") == "no"
    assert "widerrufen" in page.locator("table").inner_text()
    with page.expect_download() as download:
        page.get_by_role("button", name="Meine Daten herunterladen").click()
    target = tmp_path / "export.json"
    download.value.save_as(target)
    document = json.loads(target.read_text())
    assert document["member"]["member_id"] == "M-1"
    assert {c["claim_id"] for c in document["claims"]} == {"e-1", "e-2", "b-1", "r-1"}
    assert [c["marketing"] for c in document["consents"]] == [True, False]

    # English: the switch in the header, kept for the next pages
    page.get_by_role("link", name="English").click()
    assert page.locator("html").get_attribute("lang") == "en"
    look(page, "consent-en", phone=False)
    page.get_by_role("link", name="Balance").click()
    assert page.locator("[data-figure=available]").inner_text() == "1,134\u00a0points"
    look(page, "balance-en")
    page.get_by_role("link", name="History").click()
    assert "1,200" in page.locator("#claim-acme-e-1").inner_text()
    look(page, "history-en", phone=False)
    page.get_by_role("link", name="Offers").click()
    assert page.locator("#coupon-coffee .badge.on").inner_text() == "Activated"
    look(page, "offers-en", phone=False)
    page.get_by_role("button", name="Sign out").click()
    assert "You are signed out." in page.locator(".flash.ok").inner_text()
    look(page, "sign-in-en", phone=False)
    page.goto("/portal/")
    assert "/portal/sign-in" in page.url


def test_five_wrong_passwords_lock_the_sign_in_out(page, booked):
    for attempt in range(5):
        member_signs_in(page, booked, "not the password")
    message = page.locator(".flash.error").inner_text()
    assert re.fullmatch(r"Zu viele Fehlversuche\. Versuchen Sie es nach \d\d:\d\d Uhr erneut\.",
                        message), message
    shot(page, "sign-in-locked-de")
    member_signs_in(page, booked)  # the right password, but locked now
    assert "/portal/sign-in" in page.url and "Fehlversuche" in page.locator(".flash").inner_text()


def test_a_form_without_its_token_is_refused(page, booked):
    page.goto("/portal/sign-in")
    # Playwright's evaluate runs outside the page's CSP: the page itself runs no script.
    page.evaluate("document.querySelector('input[name=csrf_token]').remove()")
    page.get_by_label("Mitgliedsnummer").fill(booked)
    page.get_by_label("Passwort", exact=True).fill(PASSWORD)
    with page.expect_response(lambda r: r.url.endswith("/portal/sign-in")
                              and r.request.method == "POST") as answer:
        page.get_by_role("button", name="Anmelden").click()
    assert answer.value.status == 400
    assert "Formular war abgelaufen" in page.locator(".flash.error").inner_text()
    look(page, "csrf-refused-de", phone=False)
    page.goto("/portal/")
    assert "/portal/sign-in" in page.url  # not signed in


def test_the_keyboard_reaches_every_control_of_the_sign_in(page, booked):
    page.goto("/portal/sign-in")
    reached = []
    for _ in range(8):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
    assert reached[0] == "Zum Inhalt springen"
    assert reached.index("member_id") < reached.index("password") < reached.index("Anmelden")
    page.goto("/portal/sign-in")  # again, by keyboard alone
    for _ in range(10):
        if page.evaluate("document.activeElement.id") == "member_id":
            break
        page.keyboard.press("Tab")
    page.keyboard.type(booked)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url("**/portal/")
    assert page.locator("h1").inner_text() == "Kontostand"


def test_the_console_sign_in_and_home(page, app):
    add_operator(app, "ann", "analyst")
    page.goto("/console/sign-in")
    look(page, "console-sign-in-de", phone=False)
    page.get_by_label("Betreibername").fill("ann")
    page.get_by_label("Passwort", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Anmelden").click()
    assert "Rolle: Analyse" in page.locator("main").inner_text()
    look(page, "console-home-de", phone=False)
