"""The console's partners and settlement in a real browser (fixtures, screenshots and axe's
check: tests/browser/conftest.py): an admin signs in, reads the
partners, closes May 2026 through the confirmation and downloads statements whose bytes are the
partner API's; an analyst is offered no close, and a forged close is refused (403) with nothing
closed. axe-core finds no serious or critical violation on any page, at desktop and phone
width; every page is saved under tests/browser/screenshots/ (git-ignored)."""
from __future__ import annotations

from sqlalchemy import select

from coalition.database import db
from coalition.models import AuditEvent, ClosedPeriod
from tests.browser.support import PASSWORD, add_operator
from tests.browser.conftest import look, shot
from tests.test_web_console_settlement import MAY, booked  # noqa: F401  (May 2026, with keys)


def operator_signs_in(page, name: str) -> None:
    page.goto("/console/sign-in")
    page.get_by_label("Betreibername").fill(name)
    page.get_by_label("Passwort", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Anmelden").click()
    page.wait_for_url("**/console/")


def closed_months(app) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(ClosedPeriod.period)))


def test_an_admin_closes_a_month_and_downloads_statements(page, app, booked, tmp_path):  # noqa: F811  (booked)
    add_operator(app, "ada", "admin")
    operator_signs_in(page, "ada")

    page.get_by_role("link", name="Partner", exact=True).click()
    assert page.locator("#partner-fuel").inner_text().split("\t")[:4] == ["fuel", "Fuel", "Partner", "aktiv"]
    look(page, "console-partners-de")
    page.locator("#partner-fuel").get_by_role("link", name="fuel").click()
    assert "Verlauf der Konditionen" in page.locator("main").inner_text()
    look(page, "console-partner-de")
    page.get_by_label("Ausgabepreis (EUR je ausgegebenem Punkt)").fill("0,02")
    page.get_by_role("button", name="Änderung anzeigen").click()
    assert "0,012" in page.locator("#change-issue_price").inner_text()
    look(page, "console-partner-terms-confirm-de", phone=False)
    page.get_by_role("link", name="Abbrechen").click()
    page.get_by_role("link", name="Sperren").click()
    look(page, "console-partner-suspend-confirm-de", phone=False)
    page.get_by_role("link", name="Abbrechen").click()

    page.get_by_role("link", name="Abrechnung", exact=True).click()
    assert page.locator("#month-2026-05").get_attribute("data-state") == "open"
    look(page, "console-settlement-de")
    page.get_by_role("link", name=f"{MAY} abschließen").click()
    assert page.locator("h1").inner_text() == f"{MAY} abschließen?"
    assert "Fuel (fuel)" in page.locator("#preview-fuel").inner_text()
    look(page, "console-settlement-close-de")
    assert closed_months(app) == []
    page.get_by_role("button", name="Monat abschließen").click()
    page.wait_for_url(f"**/console/settlement/{MAY}")
    assert "3 Abrechnungen sind geschrieben" in page.locator(".flash.ok").inner_text()
    assert closed_months(app) == [MAY]
    with app.app_context():
        actors = db.session.scalars(select(AuditEvent.actor).where(
            AuditEvent.action == "period.close")).all()
    assert actors == ["operator:ada"]
    look(page, "console-settlement-month-de")

    for fmt in ("CSV", "PDF"):
        with page.expect_download() as download:
            page.get_by_role("link", name=f"Abrechnung von Fuel als {fmt}").click()
        target = tmp_path / f"fuel.{fmt.lower()}"
        download.value.save_as(target)
        assert download.value.suggested_filename == f"statement-fuel-{MAY}.{fmt.lower()}"
        api = booked["fuel"].statement(MAY, fmt.lower())
        assert api.status == 200 and target.read_bytes() == api.body

    page.get_by_role("link", name="Positionen von Fuel").click()
    assert page.locator("table.lines tbody tr").count() > 0
    look(page, "console-statement-de")
    page.get_by_role("link", name="English").click()
    assert page.locator("[data-figure=net]").inner_text() == "€8.53"
    look(page, "console-statement-en", phone=False)
    page.goto(f"/console/settlement/{MAY}")
    assert "Coalition report" in page.locator("main").inner_text()
    look(page, "console-settlement-month-en", phone=False)
    page.goto(f"/console/settlement/{MAY}/reconciliation")
    page.get_by_label("Partner", exact=True).select_option("fuel")
    record = tmp_path / "fuel-record.csv"
    record.write_text("claim_id,kind,points\nf1,earn,500\nf2,burn,900\nrf1,reversal,500\n")
    page.get_by_label("The partner's record (CSV)").set_input_files(str(record))
    page.get_by_role("button", name="Compare").click()
    assert page.locator("[data-figure=matched]").inner_text() == "3"
    look(page, "console-reconciliation-en")


def test_an_analyst_cannot_close_a_month(page, app, booked):  # noqa: F811
    add_operator(app, "ann", "analyst")
    operator_signs_in(page, "ann")
    page.get_by_role("link", name="Abrechnung", exact=True).click()
    assert page.locator("#month-2026-05").get_attribute("data-state") == "open"
    assert page.get_by_role("link", name=f"{MAY} abschließen").count() == 0
    assert page.locator("a[href$='/close']").count() == 0
    shot(page, "console-settlement-analyst-de")
    # A forged close, with the analyst's own session and form token: refused, nothing closed.
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    answer = page.request.post(f"/console/settlement/{MAY}/close", form={"csrf_token": token})
    assert answer.status == 403
    page.goto(f"/console/settlement/{MAY}/close")
    assert "Diese Seite ist für Ihre Rolle nicht freigegeben." in page.locator(".flash.error").inner_text()
    look(page, "console-settlement-close-forbidden-de", phone=False)
    assert closed_months(app) == []
    page.goto("/console/partners/fuel")
    assert page.get_by_role("button", name="Änderung anzeigen").count() == 0
    assert page.get_by_role("link", name="Sperren").count() == 0
