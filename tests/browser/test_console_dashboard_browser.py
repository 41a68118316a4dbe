"""The console's dashboard in a real browser (fixtures, screenshots and axe's check:
tests/browser/conftest.py), over the coalition of tests/test_trends.py with claims and refusals
today (tests/test_web_console_dashboard.py): an operator signs in, opens the dashboard from the
console's home and sees every chart (an SVG image named by its title, visible), narrows the
months through the form, reads it in English and downloads a chart's CSV. axe-core finds no
serious or critical violation at desktop and phone width; the pages are saved under
tests/browser/screenshots/ (git-ignored)."""
from __future__ import annotations

from playwright.sync_api import expect

from tests.browser.conftest import look
from tests.browser.support import PASSWORD, add_operator
from tests.test_web_console_dashboard import booked  # noqa: F401  (the coalition, tiers, today)

GERMAN = ("Ausstehende Verbindlichkeit in Punkten", "Ausstehende Verbindlichkeit in EUR",
          "Ausgegebene und eingelöste Punkte je Partner", "Verfall in Punkten", "Verfall in EUR",
          "Ströme von Herausgeber zu Einlöser, 2026-05", "Aktive und angemeldete Mitglieder",
          "Mitglieder je Stufe", "Vorgänge pro Tag")
ENGLISH = ("Outstanding liability in points", "Outstanding liability in EUR",
           "Points issued and redeemed per partner", "Breakage in points", "Breakage in EUR",
           "Issuer and redeemer flows, 2026-06", "Active and enrolled members",
           "Members per tier", "Claims per day")


def operator_signs_in(page, name: str) -> None:
    page.goto("/console/sign-in")
    page.get_by_label("Betreibername").fill(name)
    page.get_by_label("Passwort", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Anmelden").click()
    page.wait_for_url("**/console/")


def charts_visible(page, titles) -> None:
    images = page.locator("main svg[role=img]")
    expect(images).to_have_count(len(titles))
    for title in titles:
        chart = page.get_by_role("img", name=title)
        expect(chart).to_be_visible()
        box = chart.bounding_box()
        assert box["width"] > 250 and box["height"] > 150, (title, box)


def test_an_operator_sees_the_dashboards_charts(page, app, booked, tmp_path):  # noqa: F811
    add_operator(app, "ann", "analyst")
    operator_signs_in(page, "ann")
    look(page, "console-home-de", phone=False)
    page.get_by_role("link", name="Übersicht öffnen").click()
    page.wait_for_url("**/console/dashboard")
    expect(page.locator("h1")).to_have_text("Übersicht")
    charts_visible(page, GERMAN)
    expect(page.get_by_role("heading", name="Vorgänge pro Tag")).to_be_visible()
    look(page, "console-dashboard-de")

    page.get_by_label("Von (Monat)").fill("2026-04")
    page.get_by_label("Bis (Monat, einschließlich)").fill("2026-07")
    page.get_by_label("Monat der Ströme").fill("2026-06")
    page.get_by_role("button", name="Anzeigen").click()
    page.wait_for_url("**/console/dashboard?from=2026-04&to=2026-07&flows=2026-06")
    expect(page.get_by_role("img", name="Ströme von Herausgeber zu Einlöser, 2026-06")).to_be_visible()
    # June's liability, a mark's title in German figures.
    assert page.locator("#chart-liability svg title", has_text="2026-06: 150").count() == 1

    page.get_by_role("link", name="English").click()
    charts_visible(page, ENGLISH)
    look(page, "console-dashboard-en", phone=False)

    with page.expect_download() as download:
        page.get_by_role("link", name="Outstanding liability as CSV").click()
    assert download.value.suggested_filename == "liability-2026-04-2026-07.csv"
    target = tmp_path / "liability.csv"
    download.value.save_as(target)
    assert target.read_text().splitlines()[:3] == [
        "period,points,eur,closed", "2026-04,0,0.00,false", "2026-05,100,1.18,true"]


def test_a_bad_month_is_a_page_that_says_so(page, app, booked):  # noqa: F811
    add_operator(app, "ada", "admin")
    operator_signs_in(page, "ada")
    answer = page.goto("/console/dashboard?from=2026-13")
    assert answer.status == 422
    expect(page.locator(".flash.error")).to_contain_text("Ein Monat wird JJJJ-MM geschrieben")
    look(page, "console-dashboard-bad-month-de", phone=False)
