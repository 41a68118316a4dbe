"""The console's settlement (web/console_settlement.py) over the domain, with May 2026 of
docs/settlement.md booked: months with their state; an admin closes May through a confirmation
showing what will close, and the statements are those `flask settlement close` writes
(re-derived from the journal, served alike by the partner API), audited as operator:<name>;
an analyst reads everything but cannot close (403, nothing closed); the coalition view
(matrix, margin, netting in counts and EUR); downloads with the partner API's bytes; the
statement's lines a page at a time; a partner's record reconciled."""
from __future__ import annotations

import io
import json
import re
from datetime import datetime, timezone

import pytest
from sqlalchemy import select

from coalition.database import db
from coalition.models import AuditEvent, ClosedPeriod
from partners import service as partner_service
from partners.client import PartnerClient
from settlement import service as settlement
from settlement import statements
from settlement.models import Statement
from tests.browser.support import add_operator, csrf_of, sign_in
from tests.conftest import new_key, public_pem, transport_for
from tests.test_settlement import TERMS, Book, day
from coalition.members import enrol
from web import console_settlement

MAY = "2026-05"


def text_of(response, status: int = 200) -> str:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True)[:3000])
    # Babel separates amount and currency by a no-break space (narrow in some locales)
    text = re.sub(r"<[^>]+>", " ", response.get_data(as_text=True))
    return re.sub(r"\s+", " ", text.replace("\u00a0", " ").replace("\u202f", " "))


@pytest.fixture
def booked(app):
    """May 2026 as tests/test_settlement.py books it (fixed clock), every partner with a key
    and a signing client; no app context held."""
    clients = {}
    with app.app_context():
        s = db.session
        for partner, terms in TERMS.items():
            partner_service.add_partner(s, partner, partner.title(), now=day(1), terms=terms)
        for member in ("M1", "M2"):
            enrol(s, member, now=day(1))
        s.commit()
        b = Book(s)
        b.earn("bakery", "e1", "M1", 1000, day(2))
        b.earn("fuel", "f1", "M1", 500, day(3))
        b.burn("books", "k1", "M1", 300, day(10))
        b.burn("fuel", "f2", "M1", 900, day(11))
        b.reverse("books", "k1", "rk1", 100, day(12))
        b.reverse("fuel", "f1", "rf1", 500, day(13))
        b.earn("books", "b1", "M1", 250, day(14))
        b.burn("bakery", "e3", "M1", 101, day(15))
        for partner in TERMS:
            key = new_key("EdDSA")
            partner_service.add_key(s, partner, public_pem(key), now=day(1))
            clients[partner] = PartnerClient("", partner, key, transport=transport_for(app))
        s.commit()
    return clients


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


def closed_months(app) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(ClosedPeriod.period)))


def close_may(ada):
    page = ada.get(f"/console/settlement/{MAY}/close")
    done = ada.post(f"/console/settlement/{MAY}/close",
                    data={"csrf_token": csrf_of(page.get_data(as_text=True))})
    assert done.status_code == 302, text_of(done, done.status_code)
    assert done.headers["Location"].endswith(f"/console/settlement/{MAY}")
    return page


def test_an_admin_closes_a_month_through_its_confirmation(app, booked, ada, verify_clean):
    months = text_of(ada.get("/console/settlement"))
    assert "als Nächstes 2026-05" in months
    assert re.search(r"2026-05 offen", months) and re.search(r"2026-12 offen \(läuft\)", months)
    html = ada.get("/console/settlement").get_data(as_text=True)
    assert html.count("/close\"") == 1 and f'href="/console/settlement/{MAY}/close"' in html

    confirm = ada.get(f"/console/settlement/{MAY}/close")
    text = text_of(confirm)
    assert "2026-05 abschließen?" in text and "Was abgeschlossen wird" in text
    # what will close: each partner's claims and points, as the close will count them
    assert re.search(r"Fuel \(fuel\) 3 0 0 0 900 0", text), text
    assert re.search(r"Bakery \(bakery\) 2 0 1\.000 0 101 0", text), text
    assert re.search(r"Summe 8 0 1\.250 0 1\.201 0", text), text
    assert "Monat abschließen" in text
    assert closed_months(app) == []  # only shown

    close_may(ada)
    month = text_of(ada.get(f"/console/settlement/{MAY}"))
    assert "2026-05 ist abgeschlossen: 3 Abrechnungen sind geschrieben." in month
    assert closed_months(app) == [MAY]
    with app.app_context():
        event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "period.close")).one()
        assert (event.actor, event.subject) == ("operator:ada", f"period:{MAY}")
        # What `flask settlement close` writes: the statements derived from the journal
        # by the same function, at the moment the month closed.
        closed = db.session.get(ClosedPeriod, MAY)
        docs, report = settlement.derive(db.session, MAY, closed.closed_at, sorted(TERMS),
                                         statements.CURRENT)
        stored = {row.partner_id: json.loads(row.document)
                  for row in db.session.scalars(select(Statement))}
        assert stored == docs
        assert json.loads(settlement.report(db.session, MAY).document) == report
        db.session.rollback()
    verify_clean()  # every closed month re-derives byte for byte, signatures hold
    for partner, client in booked.items():
        signed = client.statement(MAY).json()
        assert signed["document"] == stored[partner]
    assert booked["fuel"].statement(MAY).json()["document"]["net_cents"] == 853
    # closed now: the confirmation goes to the month, a second close is refused
    assert ada.get(f"/console/settlement/{MAY}/close").headers["Location"].endswith(
        f"/console/settlement/{MAY}")
    again = ada.post(f"/console/settlement/{MAY}/close", data={
        "csrf_token": csrf_of(ada.get("/console/settlement").get_data(as_text=True))})
    assert "2026-05 is closed already." in text_of(again, 409)
    assert "/close\"" not in ada.get("/console/settlement").get_data(as_text=True).split(
        "</header>", 1)[1].replace(f"/console/settlement/2026-06/close\"", "")


def test_a_month_the_domain_refuses_to_close_says_why(app, booked, ada):
    text = text_of(ada.get("/console/settlement/2026-07/close"))
    assert "Dieser Monat kann jetzt nicht abgeschlossen werden: Close 2026-05 first: months close in order." in text
    assert "Monat abschließen" not in text
    running = text_of(ada.get("/console/settlement/2026-12/close"))
    assert "2026-12 has not ended yet." in running
    forced = ada.post("/console/settlement/2026-07/close", data={
        "csrf_token": csrf_of(ada.get("/console/settlement").get_data(as_text=True))})
    assert "Close 2026-05 first" in text_of(forced, 409)
    assert closed_months(app) == []
    assert ada.get("/console/settlement/2026-13").status_code == 404


def test_an_analyst_reads_everything_and_cannot_close(app, booked, ann):
    html = ann.get("/console/settlement").get_data(as_text=True)
    assert "2026-05" in html and "/close" not in html
    assert "2026-05 (offen)" in text_of(ann.get(f"/console/settlement/{MAY}"))
    assert ann.get(f"/console/settlement/{MAY}/close").status_code == 403
    token = csrf_of(html)
    refused = ann.post(f"/console/settlement/{MAY}/close", data={"csrf_token": token})
    assert refused.status_code == 403
    assert "Diese Seite ist für Ihre Rolle nicht freigegeben." in text_of(refused, 403)
    assert closed_months(app) == []
    with app.app_context():
        assert db.session.scalars(select(AuditEvent).where(
            AuditEvent.action == "period.close")).all() == []
    # closed by an admin, the analyst reads the month, statements and lines
    close_may(operator_client(app, "ada", "admin"))
    assert "Bericht der Koalition" in text_of(ann.get(f"/console/settlement/{MAY}"))
    assert ann.get(f"/console/settlement/{MAY}/statements/fuel.pdf").status_code == 200
    assert ann.get(f"/console/settlement/{MAY}/statements/fuel").status_code == 200


def test_the_coalition_view_of_a_closed_month(app, booked, ada):
    close_may(ada)
    with app.app_context():
        report = json.loads(settlement.report(db.session, MAY).document)
    text = text_of(ada.get(f"/console/settlement/{MAY}"))
    margin = report["operator_margin_cents"]
    euros = f"{abs(margin) // 100},{abs(margin) % 100:02d} €"
    assert euros in text
    payments = report["payments"]
    cents = payments["saved_cents"]
    assert re.search(rf"Eingespart {payments['saved']} {cents // 100},{cents % 100:02d} €", text), text
    assert re.search(rf"Einzelzahlungen {payments['gross_obligations']} ", text)
    # issuer x redeemer: bakery's points redeemed at books (300 - 100 back) and fuel (700), ...
    html = ada.get(f"/console/settlement/{MAY}").get_data(as_text=True)
    for cell in report["matrix"]:
        found = re.search(rf'data-cell="{cell["issuer"]}-{cell["redeemer"]}">([^<]+)<', html)
        assert found and found.group(1) == f"{cell['points']:,}".replace(",", "."), cell
    english = text_of(ada.get(f"/console/settlement/{MAY}?lang=en"))
    assert "Coalition report" in english and f"€{abs(margin) // 100}.{abs(margin) % 100:02d}" in english
    assert "Fuel" in english and "€8.53" in english  # fuel's net: the coalition pays it


def test_downloads_are_the_partner_apis_bytes(app, booked, ada):
    close_may(ada)
    fuel = booked["fuel"]
    for fmt, mimetype in (("json", "application/json"), ("csv", "text/csv"),
                          ("pdf", "application/pdf")):
        mine = ada.get(f"/console/settlement/{MAY}/statements/fuel.{fmt}")
        api = fuel.statement(MAY, fmt)
        assert mine.status_code == 200 and api.status == 200
        assert mine.mimetype == mimetype and api.headers["content-type"].startswith(mimetype)
        assert mine.get_data() == api.body, fmt
        assert mine.headers["Content-Disposition"] == \
            f'attachment; filename="statement-fuel-{MAY}.{fmt}"'
    lines_csv = ada.get(f"/console/settlement/{MAY}/statements/fuel/lines.csv")
    api_lines = fuel.request("GET", f"/v1/statements/{MAY}/lines?format=csv")
    assert lines_csv.mimetype == "text/csv" and lines_csv.get_data() == api_lines.body
    report_pdf = ada.get(f"/console/settlement/{MAY}/report.pdf")
    assert report_pdf.mimetype == "application/pdf" and report_pdf.get_data().startswith(b"%PDF")
    report_csv = ada.get(f"/console/settlement/{MAY}/report.csv").get_data(as_text=True)
    assert report_csv.startswith("field,value\nperiod,2026-05\n")
    assert ada.get(f"/console/settlement/{MAY}/report.json").get_json()["document"]["period"] == MAY
    assert ada.get(f"/console/settlement/{MAY}/statements/nobody.csv").status_code == 404
    assert ada.get(f"/console/settlement/{MAY}/statements/fuel.xml").status_code == 404
    assert ada.get("/console/settlement/2026-06/statements/fuel.pdf").status_code == 404


def test_statement_lines_a_page_at_a_time(app, booked, ada, monkeypatch):
    close_may(ada)
    monkeypatch.setattr(console_settlement, "LINES_PAGE", 2)
    api = booked["bakery"].request("GET", f"/v1/statements/{MAY}/lines?limit=1000").json()
    every = [(line["line"], line["claim_id"], line["net_cents"]) for line in api["lines"]]
    assert len(every) > 4
    seen, url = [], f"/console/settlement/{MAY}/statements/bakery"
    first = text_of(ada.get(url))
    assert "Ausgabeentgelt" in first and "Erstattung für Einlösungen" in first
    while url:
        html = ada.get(url).get_data(as_text=True)
        rows = re.findall(r'<tr class="line-([a-z_]+)"><td[^>]*>[^<]*</td>\s*<td[^>]*>([^<]*)</td>', html)
        assert 0 < len(rows) <= 2
        seen += [(line, claim or None) for line, claim in rows]
        found = re.search(r'<a href="([^"]+)" rel="next">', html)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert seen == [(line, claim) for line, claim, _ in every]


def test_a_partners_record_reconciled(app, booked, ada, ann):
    close_may(ada)
    record = "claim_id,kind,points\nf1,earn,500\nf2,burn,901\nx9,earn,5\n"
    page = ann.get(f"/console/settlement/{MAY}/reconciliation")
    assert "Aufzeichnung des Partners (CSV)" in text_of(page)
    answer = ann.post(f"/console/settlement/{MAY}/reconciliation", data={
        "csrf_token": csrf_of(page.get_data(as_text=True)), "partner_id": "fuel",
        "records": (io.BytesIO(record.encode()), "fuel.csv")}, content_type="multipart/form-data")
    text = text_of(answer)
    api = booked["fuel"].request("POST", f"/v1/statements/{MAY}/reconciliation",
                                 {"claims": [{"claim_id": "f1", "kind": "earn", "points": 500},
                                             {"claim_id": "f2", "kind": "burn", "points": 901},
                                             {"claim_id": "x9", "kind": "earn", "points": 5}]}).json()
    html = answer.get_data(as_text=True)
    for name, value in api["totals"].items():
        if isinstance(value, int):
            found = re.search(rf'data-figure="{name}">([^<]+)<', html)
            assert found is None or found.group(1) == str(value), name
    assert re.search(r'data-figure="mismatched">1<', html) and "f2 points 900 901" in text
    assert "rf1" in text and "x9" in text  # missing at the partner / at the coalition
    bad = ann.post(f"/console/settlement/{MAY}/reconciliation", data={
        "csrf_token": csrf_of(page.get_data(as_text=True)), "partner_id": "fuel",
        "records": (io.BytesIO(b"claim,points\n"), "bad.csv")}, content_type="multipart/form-data")
    assert "The CSV header must name the columns" in text_of(bad, 422)
    open_month = ann.post("/console/settlement/2026-06/reconciliation", data={
        "csrf_token": csrf_of(page.get_data(as_text=True)), "partner_id": "fuel",
        "records": (io.BytesIO(record.encode()), "fuel.csv")}, content_type="multipart/form-data")
    assert "2026-06 is not closed." in text_of(open_month, 422)
