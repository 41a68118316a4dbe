"""The console's members, campaigns and audit log in a real browser (fixtures, screenshots and
axe's check: tests/browser/conftest.py). An admin signs in, finds a member, locks it with a
reason (the partner API then refuses its burn), filters its history by kind and partner
(the Members tab stays current on the member's page), adds a campaign through the form, ends it and
reads both in the audit log; an analyst sees no lock button, and a forged lock is refused 403.
Every page is checked by axe-core (no serious or critical violation) at desktop and phone width
and saved under tests/browser/screenshots/."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest

from coalition import clock
from coalition.ledger import Rules
from coalition.periods import day_of
from tests.browser.conftest import look, shot
from tests.browser.support import PASSWORD, add_operator


@pytest.fixture
def booked(app, acme, bolt):
    app.config["COALITION_TIERS"] = "Blue:0,Silver:1000,Gold:5000"
    app.config["LEDGER_RULES"] = Rules.from_config(app.config)
    assert acme.client.enrol("M-1").status == 201
    assert acme.client.earn("e-1", "M-1", 1200).status == 201
    assert bolt.client.burn("b-1", "M-1", 200).status == 201
    return "M-1"


def operator_signs_in(page, name: str) -> None:
    page.goto("/console/sign-in")
    page.get_by_label("Betreibername").fill(name)
    page.get_by_label("Passwort", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Anmelden").click()
    page.wait_for_url("**/console/")


def test_an_admin_locks_a_member_and_ends_a_campaign(page, app, booked, acme):
    add_operator(app, "ada", "admin")
    operator_signs_in(page, "ada")
    page.get_by_role("link", name="Mitglieder").click()
    look(page, "console-members-search-de")
    page.get_by_label("Mitgliedsnummer").fill(booked)
    page.get_by_role("button", name="Suchen").click()
    assert page.url.endswith("/console/members/M-1")
    assert page.locator("[data-figure=available]").inner_text() == "1.000\u00a0Punkte"
    assert "Acme" in page.locator("table.history").inner_text()
    assert page.get_by_role("link", name="Mitglieder").get_attribute("aria-current") == "page"
    look(page, "console-member-de")
    page.get_by_label("Art", exact=True).select_option("burn")
    page.get_by_role("button", name="Filtern").click()
    # Each filter loads a new page: wait for it, not for the old one's rows.
    page.wait_for_url(re.compile(r"[?&]kind=burn"))
    assert page.locator("table.history tbody tr").count() == 1
    assert "Bolt" in page.locator("table.history").inner_text()
    page.get_by_label("Art", exact=True).select_option("")
    page.get_by_label("Partner", exact=True).select_option("acme")
    page.get_by_role("button", name="Filtern").click()
    page.wait_for_url(re.compile(r"[?&]partner=acme"))
    assert page.locator("table.history tbody tr").count() == 1
    assert "Bonuspunkte" in page.locator("table.history thead").inner_text()

    page.get_by_role("link", name="Einlösung sperren").click()
    look(page, "console-member-lock-de")
    page.get_by_role("button", name="Jetzt sperren").click()  # no reason: the browser asks
    assert page.url.endswith("/lock")
    page.get_by_label("Grund (Pflichtfeld, wird im Prüfprotokoll erfasst)").fill(
        "Fall 4711: Karte als gestohlen gemeldet")
    page.get_by_role("button", name="Jetzt sperren").click()
    assert "Das Mitglied ist gesperrt" in page.locator(".flash.ok").inner_text()
    assert page.locator("[data-state=lock]").inner_text() == "Gesperrt"
    assert "operator:ada" in page.locator("[data-state=lock-change]").inner_text()
    look(page, "console-member-locked-de")
    refused = acme.client.burn("b-2", booked, 10)
    assert refused.status == 403 and refused.json()["type"].endswith("member-locked")

    page.get_by_role("link", name="Aktionen").click()
    look(page, "console-campaigns-empty-de", phone=False)
    page.get_by_role("link", name="Neue Aktion").click()
    tz = app.config["COALITION_TIMEZONE"]
    first = day_of(clock.now(), tz)[0]
    page.get_by_label("Kennung").fill("double")
    page.get_by_label("Name", exact=True).fill("Doppelte Punkte")
    page.get_by_label("Art des Bonus").select_option("multiplier")
    page.get_by_label("Wert (Multiplikator: der Faktor, z. B. 2; fester Bonus: Bonuspunkte je "
                      "Gutschrift)").fill("2")
    page.get_by_label("Erster Tag").fill(first.isoformat())
    page.get_by_label("Letzter Tag (einschließlich)").fill((first + timedelta(days=30)).isoformat())
    page.get_by_label("Finanziert von").select_option("acme")
    page.get_by_label("Acme").check()
    look(page, "console-campaign-form-de")
    page.get_by_role("button", name="Aktion anlegen").click()
    assert "Aktion Doppelte Punkte ist angelegt." in page.locator(".flash.ok").inner_text()
    assert acme.client.earn("e-2", booked, 100).json()["bonus_points"] == 100
    page.reload()
    assert page.locator("dd[data-perf=issued]").inner_text() == "100"
    assert page.locator("dd[data-perf=cost]").inner_text() == "1,00\u00a0€"
    look(page, "console-campaign-de")
    page.get_by_role("link", name="Beenden").click()
    look(page, "console-campaign-end-de", phone=False)
    page.get_by_role("button", name="Jetzt beenden").click()
    assert "Doppelte Punkte ist beendet." in page.locator(".flash.ok").inner_text()
    assert page.locator("[data-state=window]").inner_text() == "Beendet"
    page.get_by_role("link", name="Aktionen").first.click()
    look(page, "console-campaigns-de")

    page.get_by_role("link", name="Prüfprotokoll").click()
    page.get_by_label("Handelnd").fill("operator:ada")
    page.get_by_role("button", name="Filtern").click()
    actions = page.locator("table.audit").inner_text()
    assert "member.lock" in actions and "campaign.add" in actions and "campaign.end" in actions
    look(page, "console-audit-de")
    page.get_by_role("link", name="English").click()
    assert "Audit log" in page.locator("h1").inner_text()
    look(page, "console-audit-en", phone=False)


def test_an_analyst_cannot_lock_a_member(page, app, booked, acme):
    add_operator(app, "ann", "analyst")
    operator_signs_in(page, "ann")
    page.goto(f"/console/members/{booked}")
    assert page.locator("[data-figure=available]").inner_text() == "1.000\u00a0Punkte"
    assert page.get_by_role("link", name="Einlösung sperren").count() == 0
    assert page.get_by_role("link", name="Mitglied löschen").count() == 0
    assert "nichts ändern" in page.locator("main").inner_text()
    look(page, "console-member-analyst-de")
    # A forged lock, with the session's own form token: refused all the same.
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    forged = page.request.post(f"/console/members/{booked}/lock",
                               form={"csrf_token": token, "reason": "forged"})
    assert forged.status == 403
    page.goto(f"/console/members/{booked}/lock")
    assert "nicht freigegeben" in page.locator("main").inner_text()
    shot(page, "console-member-lock-refused-de")
    assert acme.client.burn("b-2", booked, 10).status == 201  # not locked
