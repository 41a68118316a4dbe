"""The console's dashboard (web/console_dashboard.py) over the small coalition of
tests/test_trends.py (May 2026 closed, June open), with two claims booked today and refusals
counted yesterday and today: every chart drawn as SVG with its German and English title; each
chart's JSON and CSV equal to settlement/trends.py's series for the same months; the query
parameters checked (422, never a 500); an analyst reads it; without a session the sign-in
page; a partner's bearer token opens nothing."""
from __future__ import annotations

import csv
import io
import json
import re
import time
from datetime import timedelta

import pytest

from coalition import clock, ledger
from coalition import tiers as tiering
from coalition.database import db
from coalition.ledger import Rules
from coalition.periods import day_of, period_of
from partners import rejects
from settlement import trends
from tests.browser.support import add_operator, sign_in
from tests.test_trends import RULES, TZ, book_coalition

TIERS = "Blue:0,Silver:150,Gold:1000"
MAY_JUNE = {"from": "2026-05", "to": "2026-06"}
CHARTS = ("liability", "issuance-redemption", "breakage", "flows", "active-members", "tiers",
          "claims-per-day")


@pytest.fixture
def booked(app):
    """tests/test_trends.py's coalition, tiers configured, two claims today (an acme earn and
    a bolt burn) and refusals: yesterday 2 validation-error (acme), today 3 insufficient-points
    (bolt) and 1 invalid-token (unauthenticated). No app context held."""
    app.config["COALITION_TIERS"] = TIERS
    app.config["LEDGER_RULES"] = Rules.from_config(app.config)
    with app.app_context():
        s = db.session
        book_coalition(s)
        now = clock.now()
        ledger.book_earn(s, partner_id="acme", claim_id="today-1", member_id="M2", points=70,
                         occurred_at=now - timedelta(minutes=5), now=now, rules=RULES)
        ledger.book_burn(s, partner_id="bolt", claim_id="today-2", member_id="M2", points=20,
                         occurred_at=now - timedelta(minutes=4), now=now, rules=RULES)
        today = day_of(now, TZ)[0]
        rejects.add(s, {("acme", today - timedelta(days=1), "validation-error"): 2,
                        ("bolt", today, "insufficient-points"): 3,
                        (rejects.UNAUTHENTICATED, today, "invalid-token"): 1})
        s.commit()
    return app


def operator(app, name: str, role: str):
    add_operator(app, name, role)
    client = app.test_client()
    assert sign_in(client, "console", name).status_code == 302
    return client


@pytest.fixture
def ada(app):
    return operator(app, "ada", "admin")


@pytest.fixture
def ann(app):
    return operator(app, "ann", "analyst")


def svg_titles(html: str) -> list[str]:
    return re.findall(r'<svg [^>]*role="img"[^>]*><title id="[^"]+">([^<]*)</title>', html)


def test_the_dashboard_draws_every_chart_in_german_and_english(booked, ada):
    answer = ada.get("/console/dashboard?from=2026-01&to=2026-06&flows=2026-05")
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    assert "<h1>Übersicht</h1>" in html
    assert svg_titles(html) == [
        "Ausstehende Verbindlichkeit in Punkten", "Ausstehende Verbindlichkeit in EUR",
        "Ausgegebene und eingelöste Punkte je Partner", "Verfall in Punkten", "Verfall in EUR",
        "Ströme von Herausgeber zu Einlöser, 2026-05", "Aktive und angemeldete Mitglieder",
        "Mitglieder je Stufe", "Vorgänge pro Tag"]
    assert 'style=' not in html and "<script" not in html
    # Localised figures in the marks' titles: June's liability, May's flow, a German date.
    assert "Punkte, 2026-06: 150</title>" in html
    assert "EUR, 2026-05: 1,18\u00a0€</title>" in html
    assert "Acme \u2192 Bolt: 100</title>" in html
    assert "Abgelehnt: insufficient-points" in html and "Gutschriften" in html
    # Each section: a heading, its charts, a caption and the downloads with the same months.
    for chart in CHARTS:
        assert f'<section class="card chart-card" id="chart-{chart}"' in html
        assert f'href="/console/dashboard/{chart}.csv?from=2026-01&amp;to=2026-06&amp;flows=2026-05"' in html

    english = ada.get("/console/dashboard?from=2026-01&to=2026-06&flows=2026-05&lang=en")
    html = english.get_data(as_text=True)
    assert svg_titles(html) == [
        "Outstanding liability in points", "Outstanding liability in EUR",
        "Points issued and redeemed per partner", "Breakage in points", "Breakage in EUR",
        "Issuer and redeemer flows, 2026-05", "Active and enrolled members", "Members per tier",
        "Claims per day"]
    assert "Points, 2026-06: 150</title>" in html and "EUR, 2026-05: €1.18</title>" in html


def test_the_default_range_is_the_last_twelve_months_and_the_latest_closed_flows(booked, ada):
    html = ada.get("/console/dashboard").get_data(as_text=True)
    with booked.app_context():
        months = trends.months(now=clock.now(), tz=TZ)
    assert f'id="from" name="from" type="month" value="{months[0]}"' in html
    assert f'id="to" name="to" type="month" value="{months[-1]}"' in html
    assert 'id="flows" name="flows" type="month" value="2026-05"' in html  # the latest closed
    assert f'/console/dashboard/liability.json?from={months[0]}&amp;to={months[-1]}"' in html


def test_without_tiers_the_tier_chart_is_left_out(app, ada):
    app.config["COALITION_TIERS"] = ""
    app.config["LEDGER_RULES"] = Rules.from_config(app.config)
    html = ada.get("/console/dashboard").get_data(as_text=True)
    assert 'id="chart-tiers"' not in html and "Mitglieder je Stufe" not in html
    assert "Keine Daten" in html  # nothing booked: the charts say so
    assert len(svg_titles(html)) == 8
    assert ada.get("/console/dashboard/tiers.json").get_json() == []
    assert ada.get("/console/dashboard/tiers.csv").get_data(as_text=True) == \
        "tier,threshold,members\n"


def expected(app, chart: str, first: str, last: str, flows: str) -> list:
    """The series as settlement/trends.py gives it, read here without the page."""
    with app.app_context():
        s, now = db.session, clock.now()
        periods = trends.months(now=now, tz=TZ, count=12, last=last)
        periods = [p for p in periods if p >= first]
        at = min(trends.month_end(last, TZ), now)
        rows = {
            "liability": lambda: trends.liability(s, periods),
            "issuance-redemption": lambda: trends.issuance_and_redemption(s, periods),
            "breakage": lambda: trends.breakage(s, periods),
            "flows": lambda: trends.flow_matrix(s, flows),
            "active-members": lambda: trends.active_members(s, periods, now=now, tz=TZ),
            "tiers": lambda: trends.tier_distribution(s, tiering.parse(TIERS), at=at, tz=TZ),
            "claims-per-day": lambda: trends.claims_per_day(
                s, *trends.days(now=now, tz=TZ), tz=TZ,
                rejected=rejects.per_day(s, *trends.days(now=now, tz=TZ))),
        }[chart]()
        db.session.rollback()
        return rows


@pytest.mark.parametrize("chart", CHARTS)
def test_each_charts_json_and_csv_are_the_trends_series(booked, ann, chart):
    query = "from=2026-04&to=2026-07&flows=2026-06"
    rows = expected(booked, chart, "2026-04", "2026-07", "2026-06")
    assert rows  # every series has rows over these months

    answer = ann.get(f"/console/dashboard/{chart}.json?{query}")
    assert answer.status_code == 200 and answer.mimetype == "application/json"
    assert answer.get_json() == json.loads(json.dumps(trends.as_json(rows)))

    download = ann.get(f"/console/dashboard/{chart}.csv?{query}")
    assert download.status_code == 200 and download.mimetype == "text/csv"
    assert download.headers["Content-Disposition"].startswith('attachment; filename="')
    assert download.get_data(as_text=True) == trends.as_csv(rows)
    assert download.headers["Cache-Control"] == "no-store"


def test_the_downloads_hold_the_figures_worked_out_by_hand(booked, ada):
    liability = ada.get("/console/dashboard/liability.json?from=2026-05&to=2026-06").get_json()
    assert [(r["period"], r["points"], r["eur"], r["closed"]) for r in liability] == [
        ("2026-05", 100, "1.18", True), ("2026-06", 150, "2.25", False)]
    flows = ada.get("/console/dashboard/flows.csv?flows=2026-05")
    assert flows.headers["Content-Disposition"] == 'attachment; filename="flows-2026-05.csv"'
    assert list(csv.reader(io.StringIO(flows.get_data(as_text=True)))) == [
        ["period", "issuer", "redeemer", "points"], ["2026-05", "acme", "bolt", "100"],
        ["2026-05", "coalition", "bolt", "20"]]
    days = ada.get("/console/dashboard/claims-per-day.json").get_json()
    assert len(days) == 30
    assert (days[-1]["earns"], days[-1]["burns"], days[-1]["rejected"]) == \
        (1, 1, {"insufficient-points": 3, "invalid-token": 1})
    assert days[-2]["rejected"] == {"validation-error": 2}
    tiers = ada.get("/console/dashboard/tiers.json").get_json()
    # M1: 300 (Silver); M2: 50 and today's 70 (120, Blue); M3 30; M4 nothing.
    assert [(t["tier"], t["members"]) for t in tiers] == [("Blue", 3), ("Silver", 1), ("Gold", 0)]
    assert ada.get("/console/dashboard/issuance-redemption.csv?from=2026-05&to=2026-06") \
        .get_data(as_text=True).splitlines()[:2] == [
        "period,partner_id,points_issued,bonus_points_issued,points_redeemed,closed",
        "2026-05,acme,130,0,0,true"]


@pytest.mark.parametrize("query", [
    "from=2026-13", "to=26-01", "from=2026-05&to=2026-04", "flows=tomorrow", "from=1999-12",
    "to=2999-01", "from=2020-01&to=2026-01", "from=%EF%BC%92026-01", "flows=0000-01",
    "to=" + "9" * 5000])
def test_bad_query_parameters_are_refused_never_a_500(booked, ada, query):
    page = ada.get(f"/console/dashboard?{query}")
    assert page.status_code == 422
    assert "Ein Monat wird JJJJ-MM geschrieben" in page.get_data(as_text=True) or \
        "Der erste Monat darf nicht nach dem letzten liegen" in page.get_data(as_text=True)
    for fmt in ("json", "csv"):
        answer = ada.get(f"/console/dashboard/liability.{fmt}?{query}")
        assert answer.status_code == 422 and answer.mimetype == "application/problem+json"
        assert answer.get_json()["type"] == "/problems/validation-error"


def test_unknown_charts_and_formats_are_not_found(booked, ada):
    assert ada.get("/console/dashboard/margin.json").status_code == 404
    assert ada.get("/console/dashboard/liability.pdf").status_code == 404
    assert ada.get("/console/dashboard/liability").status_code == 404


def test_the_console_home_leads_to_the_dashboard(booked, ann):
    home = ann.get("/console/").get_data(as_text=True)
    assert 'class="button" href="/console/dashboard">Übersicht öffnen</a>' in home
    assert '<a href="/console/dashboard">Übersicht</a>' in home  # the tab
    assert ann.get("/console/dashboard").status_code == 200  # an analyst reads


def test_without_a_session_every_page_leads_to_the_sign_in(booked):
    client = booked.test_client()
    for path in ("/console/dashboard?from=2026-05", "/console/dashboard/liability.json",
                 "/console/dashboard/flows.csv"):
        answer = client.get(path)
        assert answer.status_code == 302
        assert answer.headers["Location"].startswith("/console/sign-in?next=")
        assert b"points" not in answer.data


def test_a_partner_token_opens_nothing(booked, make_partner):
    """A bearer token the partner API accepts is not looked at by the console."""
    acme = make_partner("tokenholder")
    assert acme.client.balance("M1").status == 200  # the token is good at the partner API
    client = booked.test_client()
    for path in ("/console/dashboard", "/console/dashboard/liability.json",
                 "/console/dashboard/claims-per-day.csv"):
        headers = acme.client.sign("GET", path, b"")  # the partner API would take it
        assert headers["Authorization"].startswith("Bearer ")
        answer = client.get(path, headers=headers)
        assert answer.status_code == 302 and "/console/sign-in" in answer.headers["Location"]


def test_a_member_session_opens_no_console_page(booked):
    from tests.browser.support import give_password
    give_password(booked, "member", "M1")
    client = booked.test_client()
    assert sign_in(client, "portal", "M1").status_code == 302
    answer = client.get("/console/dashboard/liability.json")
    assert answer.status_code == 302 and "/console/sign-in" in answer.headers["Location"]


def test_the_page_reads_the_months_once(booked, ada, monkeypatch):
    """figures_for once per page (the flows' month with them); no series reads a month again."""
    calls = []
    real = trends.month_figures
    monkeypatch.setattr(trends, "month_figures", lambda s, p: calls.append(p) or real(s, p))
    started = time.perf_counter()
    assert ada.get("/console/dashboard?from=2026-01&to=2026-06&flows=2025-12").status_code == 200
    assert sorted(calls) == ["2025-12", *[f"2026-{m:02d}" for m in range(1, 7)]]
    assert time.perf_counter() - started < 20
    with booked.app_context():
        assert period_of(clock.now(), TZ) >= "2026-06"
