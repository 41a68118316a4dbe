"""The console's members: find a member, read balance and history (bonus points, filters by
partner and kind, older and newer pages), lock and unlock with a reason (the partner API then
refuses the member's burns), download the export, hand out a portal code, erase after the typed
confirmation; analysts read and are refused every change. A tab is current on its whole area."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from coalition import credentials
from coalition.database import db
from coalition.models import AuditEvent, Member
from tests.browser.support import add_operator, csrf_of, post_form, sign_in


@pytest.fixture
def member(app, acme, bolt):
    assert acme.client.enrol("M-1").status == 201
    assert acme.client.earn("e-1", "M-1", 1200).status == 201
    assert bolt.client.burn("b-1", "M-1", 200).status == 201
    return "M-1"


@pytest.fixture
def admin(app, member):
    add_operator(app, "ada", "admin")
    client = app.test_client()
    assert sign_in(client, "console", "ada").status_code == 302
    return client


@pytest.fixture
def analyst(app, member):
    add_operator(app, "ann", "analyst")
    client = app.test_client()
    assert sign_in(client, "console", "ann").status_code == 302
    return client


def text_of(response, status: int = 200) -> str:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:500])
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.get_data(as_text=True)))


def events(app, action: str) -> list[AuditEvent]:
    with app.app_context():
        rows = list(db.session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                       .order_by(AuditEvent.id)))
        db.session.expunge_all()
        return rows


def locked(app, card: str) -> bool:
    with app.app_context():
        return db.session.scalar(select(Member.locked).where(Member.external_id == card))


def test_the_search_finds_the_member_and_its_page_shows_balance_and_history(admin, member):
    answer = admin.get("/console/members?member_id=M-1")
    assert answer.status_code == 302 and answer.headers["Location"].endswith("/console/members/M-1")
    page = text_of(admin.get("/console/members/M-1"))
    assert "Verfügbar 1.000 Punkte" in page
    assert "Gutschrift" in page and "+1.200" in page and "\u2212200" in page
    assert "Acme" in page and "Bolt" in page
    assert "Einlösung sperren" in page and "Mitglied löschen" in page
    missing = text_of(admin.get("/console/members?member_id=NOPE"), 404)
    assert "Kein Mitglied hat die Nummer NOPE." in missing
    assert admin.get("/console/members/NOPE").status_code == 404
    english = text_of(admin.get("/console/members/M-1?lang=en"))
    assert "Available 1,000 points" in english


def test_the_history_is_paged(admin, acme, member):
    for n in range(25):
        assert acme.client.earn(f"p-{n}", "M-1", 10).status == 201
    page = admin.get("/console/members/M-1").get_data(as_text=True)
    first = text_of(admin.get("/console/members/M-1"))
    assert "p-24" in first and "e-1" not in first and "Vorherige Seite" not in first
    older = re.search(r'href="(/console/members/M-1\?before=\d+)#history-heading" '
                      r'rel="next">Nächste Seite', page)
    second = text_of(admin.get(older.group(1)))
    assert "e-1" in second and "b-1" in second and "p-24" not in second
    assert "p-5 " not in second and "p-4 " in second and "Nächste Seite" not in second
    assert "Vorherige Seite" in second


def test_the_history_shows_bonus_points_and_filters_by_partner_and_kind(app, admin, acme, bolt,
                                                                        member, runner):
    result = runner.invoke(args=["coupons", "add", "extra", "--partner", "acme", "--name",
                                 "25 extra", "--kind", "fixed", "--value", "25", "--from",
                                 "2026-01-01", "--until", "2099-12-31"])
    assert result.exit_code == 0, result.output
    assert runner.invoke(args=["coupons", "activate", "extra", "M-1"]).exit_code == 0
    assert acme.client.earn("e-2", "M-1", 100).status == 201
    assert acme.client.reverse("e-2", "r-2", 40).status == 201
    page = admin.get("/console/members/M-1").get_data(as_text=True)
    assert "Bonuspunkte" in page
    row = re.search(r'<tr id="claim-acme-e-2".*?</tr>', page, re.S).group(0)
    assert "+100" in row and "+25" in row
    reversal = re.search(r'<tr id="claim-acme-r-2".*?</tr>', page, re.S).group(0)
    assert "\u221240" in reversal and "Storniert e-2" in reversal
    acme_only = text_of(admin.get("/console/members/M-1?partner=acme"))
    assert "e-1" in acme_only and "e-2" in acme_only and "b-1 " not in acme_only
    reversals = text_of(admin.get("/console/members/M-1?kind=reversal"))
    assert "r-2" in reversals and "e-1 " not in reversals and "b-1 " not in reversals
    burns_at_acme = text_of(admin.get("/console/members/M-1?partner=acme&kind=burn"))
    assert "Keine Einträge." in burns_at_acme
    # an unknown kind is no filter
    assert "b-1" in text_of(admin.get("/console/members/M-1?kind=nonsense"))


def test_an_admin_locks_with_a_reason_and_the_partner_api_refuses_the_burn(app, admin, acme,
                                                                            member):
    form = admin.get("/console/members/M-1/lock")
    assert "Grund" in text_of(form)
    assert not locked(app, "M-1")  # the form is only the confirmation step
    no_reason = post_form(admin, "/console/members/M-1/lock", "/console/members/M-1/lock",
                          {"reason": "  "})
    assert "Ein Grund ist nötig" in text_of(no_reason, 422)
    assert not locked(app, "M-1") and not events(app, "member.lock")
    done = post_form(admin, "/console/members/M-1/lock", "/console/members/M-1/lock",
                     {"reason": "case 4711: card reported stolen"}, follow_redirects=True)
    page = text_of(done)
    assert "Das Mitglied ist gesperrt" in page and "Gesperrt von operator:ada" in page
    assert locked(app, "M-1")
    refused = acme.client.burn("b-2", "M-1", 10)
    assert refused.status == 403 and refused.json()["type"].endswith("member-locked")
    assert acme.client.earn("e-2", "M-1", 10).status == 201  # earns still book
    [event] = events(app, "member.lock")
    assert event.actor == "operator:ada"
    assert json.loads(event.after)["reason"] == "case 4711: card reported stolen"

    done = post_form(admin, "/console/members/M-1/unlock", "/console/members/M-1/unlock",
                     {"reason": "case 4711 closed"}, follow_redirects=True)
    assert "Das Mitglied ist entsperrt" in text_of(done)
    assert acme.client.burn("b-3", "M-1", 10).status == 201
    assert [e.actor for e in events(app, "member.unlock")] == ["operator:ada"]


def test_an_analyst_reads_but_cannot_change_anything(app, admin, analyst, member):
    page = text_of(analyst.get("/console/members/M-1"))
    assert "Verfügbar 1.000 Punkte" in page
    assert "Einlösung sperren" not in page and "Mitglied löschen" not in page
    assert "Portal-Code ausgeben" not in page
    assert "Datenauszug herunterladen" in page
    token = csrf_of(analyst.get("/console/members/M-1").get_data(as_text=True))
    for path, data in (("/console/members/M-1/lock", {"reason": "forged"}),
                       ("/console/members/M-1/erase", {"confirm": "M-1"}),
                       ("/console/members/M-1/code", {})):
        assert analyst.post(path, data={"csrf_token": token, **data}).status_code == 403, path
        assert analyst.get(path).status_code in (403, 405)
    assert not locked(app, "M-1")
    assert not events(app, "member.lock") and not events(app, "member.erase")
    # (the operators' own codes, from setting them up, are issued by "test")
    assert not [e for e in events(app, "credential.code-issued") if e.actor != "test"]


def test_a_post_without_its_token_is_refused(app, admin, member):
    assert admin.post("/console/members/M-1/lock", data={"reason": "x"}).status_code == 400
    assert not locked(app, "M-1")


def test_the_export_downloads_and_is_audited_under_the_operator(app, analyst, member):
    answer = post_form(analyst, "/console/members/M-1", "/console/members/M-1/export")
    assert answer.status_code == 200
    assert 'filename="member-data-M-1.json"' in answer.headers["Content-Disposition"]
    document = json.loads(answer.get_data(as_text=True))
    assert document["member"]["member_id"] == "M-1"
    assert {c["claim_id"] for c in document["claims"]} == {"e-1", "b-1"}
    assert [e.actor for e in events(app, "member.export")] == ["operator:ann"]


def test_a_portal_code_is_shown_once_and_sets_the_members_password(app, admin, member):
    answer = post_form(admin, "/console/members/M-1", "/console/members/M-1/code")
    code = re.search(r"data-code>([0-9A-Z-]+)<", answer.get_data(as_text=True)).group(1)
    assert "Einmalcode für M-1" in text_of(answer)
    assert [e.actor for e in events(app, "credential.code-issued")
            if e.actor != "test"] == ["operator:ada"]
    with app.app_context():
        from coalition import clock
        credentials.set_password(db.session, credentials.principal("member", "M-1"), code,
                                 "a good long password", now=clock.now())
        db.session.commit()
    portal = app.test_client()
    assert sign_in(portal, "portal", "M-1", "a good long password").status_code == 302
    assert code not in admin.get("/console/members/M-1").get_data(as_text=True)


def test_erase_needs_the_member_number_typed(app, admin, acme, member):
    page = text_of(admin.get("/console/members/M-1/erase"))
    assert "lässt sich nicht rückgängig machen" in page and "Kartennummer wird entfernt" in page
    wrong = post_form(admin, "/console/members/M-1/erase", "/console/members/M-1/erase",
                      {"confirm": "M-2"})
    assert "Es wurde nichts gelöscht" in text_of(wrong, 422)
    assert acme.client.balance("M-1").status == 200
    assert not events(app, "member.erase")
    done = post_form(admin, "/console/members/M-1/erase", "/console/members/M-1/erase",
                     {"confirm": "M-1"}, follow_redirects=True)
    assert "Mitglied M-1 ist gelöscht" in text_of(done)
    assert acme.client.balance("M-1").status == 404
    [event] = events(app, "member.erase")
    assert event.actor == "operator:ada"
    assert admin.get("/console/members/M-1").status_code == 404


def current_tabs(response) -> list[str]:
    assert response.status_code == 200, response.status_code
    nav = response.get_data(as_text=True).split('class="tabs"')[1].split("</nav>")[0]
    return re.findall(r'<a href="[^"]*" aria-current="page">([^<]+)</a>', nav)


def test_a_tab_is_current_on_every_page_of_its_area(admin, acme, runner):
    result = runner.invoke(args=["coupons", "add", "extra", "--partner", "acme", "--name", "Extra",
                                 "--kind", "fixed", "--value", "25", "--from", "2026-01-01",
                                 "--until", "2099-12-31"])
    assert result.exit_code == 0, result.output
    for url, tab in (("/console/", "Konsole"), ("/console/members", "Mitglieder"),
                     ("/console/members/M-1", "Mitglieder"),
                     ("/console/members/M-1?kind=earn", "Mitglieder"),
                     ("/console/members/M-1/lock", "Mitglieder"),
                     ("/console/members/M-1/erase", "Mitglieder"),
                     ("/console/partners", "Partner"), ("/console/partners/acme", "Partner"),
                     ("/console/coupons/extra", "Aktionen"),
                     ("/console/campaigns/new", "Aktionen"),
                     ("/console/settlement", "Abrechnung"),
                     (f"/console/settlement/{datetime.now(timezone.utc):%Y-%m}", "Abrechnung"),
                     ("/console/audit", "Prüfprotokoll")):
        assert current_tabs(admin.get(url)) == [tab], url
