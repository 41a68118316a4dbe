"""The console's partners (web/console_partners.py) over the domain: the list and a partner's
page for every operator; terms changes (shown before they are set), keys added and revoked,
suspension and activation for admins only, each audited under operator:<name> and felt by the
partner API at once; an analyst's attempt is refused (403) and changes nothing."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from coalition.database import db
from coalition.models import AuditEvent
from partners import service, usage
from partners.client import PartnerClient
from tests.browser.support import add_operator, csrf_of, post_form, sign_in
from tests.conftest import new_key, public_pem, transport_for
from tests.test_settlement import close, doc, may  # noqa: F401  (may: the closed-month fixture)


def text_of(response, status: int = 200) -> str:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:2000])
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.get_data(as_text=True)))


def operator_client(app, name: str, role: str):
    add_operator(app, name, role)
    client = app.test_client()
    assert sign_in(client, "console", name).status_code == 302
    return client


@pytest.fixture
def ada(app):
    return operator_client(app, "ada", "admin")


@pytest.fixture
def ann(app):
    return operator_client(app, "ann", "analyst")


def audit_rows(app, actor: str) -> list[tuple[str, str]]:
    with app.app_context():
        return [(e.action, e.subject) for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.actor == actor).order_by(AuditEvent.id))
            if not e.action.startswith("credential.")]  # the password the test set


def partner_state(app, partner_id: str) -> dict:
    with app.app_context():
        view = service.partner_view(service.get_partner(db.session, partner_id))
        db.session.rollback()
        return view


def test_every_operator_reads_the_list_and_a_partner_in_german_and_english(app, ann, acme, bolt):
    assert acme.client.enrol("M-1").status == 201
    assert acme.client.earn("e-1", "M-1", 1200).status == 201
    assert bolt.client.burn("b-1", "M-1", 200).status == 201
    with app.app_context():
        service.set_terms(db.session, "bolt", "2099-01", {"redemption_rate": "0.0095"},
                          now=datetime.now(timezone.utc))
        db.session.commit()
    page = text_of(ann.get("/console/partners"))
    assert "Partnerliste" in page and "Acme" in page and "Bolt" in page
    # the terms in force now, every place shown (0.009 EUR, not rounded to cents)
    assert re.search(r"acme Acme Partner aktiv 0,01 0,009 1 0 1", page), page
    html = ann.get("/console/partners").get_data(as_text=True)
    assert 'href="/console/partners/acme"' in html
    page = text_of(ann.get("/console/partners/bolt"))
    assert "Verlauf der Konditionen" in page and "Beginn" in page and "2099-01" in page
    assert "0,0095" in page  # the new rate in the history, to its last place
    assert "Nur die Administration" in page
    usage_row = text_of(ann.get("/console/partners/bolt")).split("Nutzung", 1)[1]
    assert re.search(r"\d{4}-\d\d 1 0 0 200", usage_row), usage_row
    html = ann.get("/console/partners/bolt").get_data(as_text=True)
    assert "<form" not in html.split("</header>", 1)[1]  # an analyst is offered no change
    english = text_of(ann.get("/console/partners/acme?lang=en"))
    assert "Terms history" in english and "the beginning" in english and "active" in english
    assert ann.get("/console/partners/nobody").status_code == 404


def test_an_analyst_is_refused_every_change_and_nothing_changes(app, ann, acme):
    before = partner_state(app, "acme")
    page = "/console/partners/acme"
    token = csrf_of(ann.get(page).get_data(as_text=True))
    kid = acme.kid
    attempts = [
        ("post", "/console/partners/acme/terms", {"starts": "2099-01", "issue_price": "0.02",
                                                   "confirmed": "yes"}),
        ("post", "/console/partners/acme/keys", {"public_key": public_pem(new_key("EdDSA")).decode()}),
        ("get", f"/console/partners/acme/keys/{kid}/revoke", None),
        ("post", f"/console/partners/acme/keys/{kid}/revoke", {}),
        ("get", "/console/partners/acme/status?to=suspended", None),
        ("post", "/console/partners/acme/status", {"to": "suspended"}),
    ]
    for method, path, data in attempts:
        if method == "get":
            answer = ann.get(path)
        else:
            answer = ann.post(path, data={"csrf_token": token, **data})
        assert answer.status_code == 403, (path, answer.status_code)
        assert "Diese Seite ist für Ihre Rolle nicht freigegeben." in text_of(answer, 403)
    assert partner_state(app, "acme") == before
    assert audit_rows(app, "operator:ann") == []
    assert acme.client.balance("nobody").status == 404  # the key still works


def test_an_admin_changes_terms_after_seeing_old_and_new(app, ada, acme):
    page = "/console/partners/acme"
    shown = post_form(ada, page, "/console/partners/acme/terms", {
        "starts": "2099-03", "issue_price": "0,012", "redemption_rate": "", "issuance_share": "0.5",
        "claim_fee": ""})
    text = text_of(shown)
    assert "Konditionen von Acme ändern?" in text and "Ab 2099-03" in text
    assert re.search(r"Ausgabepreis \(EUR je ausgegebenem Punkt\) 0,01 0,012", text), text
    assert re.search(r"Einlösesatz \(EUR je eingelöstem Punkt\) 0,009 0,009", text), text
    assert re.search(r"Ausgabeanteil \(0 bis 1, bei Ausgabe berechnet\) 1 0,5", text), text
    # only shown so far
    assert [t["from"] for t in partner_state(app, "acme")["terms"]] == [None]
    assert audit_rows(app, "operator:ada") == []

    html = shown.get_data(as_text=True)
    confirm = {name: value for name, value in re.findall(
        r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', html)}
    assert confirm["confirmed"] == "yes" and confirm["issue_price"] == "0.012"
    done = ada.post("/console/partners/acme/terms", data=confirm)
    assert done.status_code == 302 and done.headers["Location"].endswith("/console/partners/acme#terms")
    flashed = text_of(ada.get(page))
    assert "Die Konditionen von acme ab 2099-03 sind festgelegt." in flashed
    terms = partner_state(app, "acme")["terms"]
    assert terms[-1] == {"from": "2099-03", "issue_price": "0.012", "redemption_rate": "0.009",
                         "issuance_share": "0.5", "claim_fee": "0"}
    assert audit_rows(app, "operator:ada") == [("partner.terms.set", "partner:acme")]


def test_a_terms_change_the_domain_refuses_is_shown_with_its_reason(app, ada, acme):
    page = "/console/partners/acme"
    losing = post_form(ada, page, "/console/partners/acme/terms",
                       {"starts": "2099-01", "redemption_rate": "0.05"})
    text = text_of(losing, 422)
    assert "redemption_rate 0.05 is above issue_price 0.01" in text
    assert 'value="0.05"' in losing.get_data(as_text=True)  # the form keeps what was typed
    nothing = post_form(ada, page, "/console/partners/acme/terms", {"starts": "2099-01"})
    assert "set-terms needs at least one term" in text_of(nothing, 422)
    bad = post_form(ada, page, "/console/partners/acme/terms", {"starts": "99-1", "claim_fee": "1"})
    assert "A period is a month written YYYY-MM." in text_of(bad, 422)
    # forced: shown, then set, audited as forced
    forced = post_form(ada, page, "/console/partners/acme/terms",
                       {"starts": "2099-01", "redemption_rate": "0.05", "force": "yes",
                        "confirmed": "yes"})
    assert forced.status_code == 302
    with app.app_context():
        event = db.session.scalars(select(AuditEvent).where(
            AuditEvent.action == "partner.terms.set")).one()
        after = json.loads(event.after) if isinstance(event.after, str) else event.after
        assert event.actor == "operator:ada" and after["forced"] is True
    assert partner_state(app, "acme")["terms"][-1]["redemption_rate"] == "0.05"


def test_an_admin_adds_a_key_and_revokes_one_and_the_partner_api_follows(app, ada, acme):
    page = "/console/partners/acme"
    key = new_key("ES256")
    added = post_form(ada, page, "/console/partners/acme/keys", {"public_key": public_pem(key).decode()})
    assert added.status_code == 302
    client = PartnerClient("", "acme", key, transport=transport_for(app))
    assert "ist hinzugefügt" in text_of(ada.get(page))
    assert client.balance("nobody").status == 404  # authenticated: the member is unknown
    again = post_form(ada, page, "/console/partners/acme/keys", {"public_key": public_pem(key).decode()})
    assert "This key is registered already for this partner" in text_of(again, 422)
    junk = post_form(ada, page, "/console/partners/acme/keys", {"public_key": "not a key"})
    assert "Not a PEM-encoded public key." in text_of(junk, 422)
    empty = post_form(ada, page, "/console/partners/acme/keys", {"public_key": ""})
    assert "Fügen Sie den öffentlichen Schlüssel des Partners ein (PEM)." in text_of(empty, 422)

    confirm = ada.get(f"/console/partners/acme/keys/{acme.kid}/revoke")
    text = text_of(confirm)
    assert f"Schlüssel {acme.kid} widerrufen?" in text and "nie wieder registriert" in text
    assert acme.client.balance("nobody").status == 404  # only asked so far
    done = ada.post(f"/console/partners/acme/keys/{acme.kid}/revoke",
                    data={"csrf_token": csrf_of(confirm.get_data(as_text=True))})
    assert done.status_code == 302
    refused = acme.client.balance("nobody")
    assert refused.status == 401 and refused.json()["type"].endswith("key-revoked")
    assert client.balance("nobody").status == 404  # the other key still works
    keys = {k["kid"]: k["state"] for k in partner_state(app, "acme")["keys"]}
    assert keys[acme.kid] == "revoked" and list(keys.values()).count("active") == 1
    assert audit_rows(app, "operator:ada") == [("partner.key.add", "partner:acme"),
                                               ("partner.key.revoke", "partner:acme")]


def test_an_admin_suspends_and_activates_through_a_confirmation(app, ada, acme):
    page = "/console/partners/acme"
    assert 'href="/console/partners/acme/status?to=suspended"' in ada.get(page).get_data(as_text=True)
    confirm = ada.get("/console/partners/acme/status?to=suspended")
    text = text_of(confirm)
    assert "Acme sperren?" in text and "aktiv → gesperrt" in text
    assert acme.client.balance("nobody").status == 404
    done = ada.post("/console/partners/acme/status",
                    data={"csrf_token": csrf_of(confirm.get_data(as_text=True)), "to": "suspended"})
    assert done.status_code == 302
    assert "Acme ist gesperrt." in text_of(ada.get(page))
    refused = acme.client.balance("nobody")
    assert refused.status == 401 and refused.json()["type"].endswith("partner-suspended")
    back = post_form(ada, "/console/partners/acme/status?to=active", "/console/partners/acme/status",
                     {"to": "active"})
    assert back.status_code == 302
    assert acme.client.balance("nobody").status == 404
    assert audit_rows(app, "operator:ada") == [("partner.suspend", "partner:acme"),
                                               ("partner.activate", "partner:acme")]
    assert ada.post("/console/partners/acme/status", data={
        "csrf_token": csrf_of(ada.get(page).get_data(as_text=True)), "to": "gone"}).status_code == 400


def test_usage_of_a_closed_month_is_what_its_statement_says(app, may):  # noqa: F811
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=timezone.utc))
    for partner in ("bakery", "fuel", "books"):
        statement = doc(may, partner)
        (month,) = usage.by_month(may, partner)
        assert (month.period, month.claims, month.late_claims, month.points_issued,
                month.points_redeemed) == ("2026-05", statement["claims"], statement["late_claims"],
                                           statement["points_issued"], statement["points_redeemed"])
    fuel = doc(may, "fuel")
    may.commit()  # SQLite: one writer, and the fixture's session would hold it
    # Each request in an app context of its own: the fixture's holds `g` across requests.
    with app.app_context():
        client = operator_client(app, "ann", "analyst")
    with app.app_context():
        page = text_of(client.get("/console/partners/fuel"))
    assert (f"2026-05 {fuel['claims']} {fuel['late_claims']} {fuel['points_issued']} "
            f"{fuel['points_redeemed']}") in page



def test_the_coalition_itself_is_listed_and_takes_a_key_like_any_partner(app, ada, runner):
    result = runner.invoke(args=["partners", "add", "club", "--name", "Club", "--kind", "operator"])
    assert result.exit_code == 0, result.output
    assert re.search(r"club Club Betreiber aktiv", text_of(ada.get("/console/partners")))
    page = ada.get("/console/partners/club")
    assert "Keine Schlüssel." in text_of(page)
    added = post_form(ada, "/console/partners/club", "/console/partners/club/keys",
                      {"public_key": public_pem(new_key("EdDSA")).decode()})
    assert added.status_code == 302
    assert [k["state"] for k in partner_state(app, "club")["keys"]] == ["active"]
