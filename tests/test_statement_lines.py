"""GET /v1/statements/{period}/lines: the line items behind a closed statement sum to it exactly."""
from __future__ import annotations

import csv
import io
import json
import os
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from coalition.database import db
from coalition.ledger import Rules
from partners.schemas import cursor_of
from settlement.lines import COLUMNS, TOTALS, LinesDisagree, MonthLines
from settlement.models import Statement
from tests import test_settlement_properties as properties
from tests.conftest import ON_POSTGRES, fresh_database

TERMS = {"bakery": ("0.01", "0.009", "1", "0"), "fuel": ("0.012", "0.0095", "0.5", "0.005"),
         "books": ("0.01", "0.009", "1", "0")}


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def all_lines(partner, period: str, limit: int | None = None) -> tuple[list[dict], dict]:
    lines, cursor, totals = [], None, None
    while True:
        query = "&".join(q for q in (limit and f"limit={limit}", cursor and f"cursor={cursor}") if q)
        r = partner.client.request("GET", f"/v1/statements/{period}/lines" + (f"?{query}" if query else ""))
        assert r.status == 200, r.json()
        page = r.json()
        assert totals is None or page["totals"] == totals  # the same totals on every page
        totals = page["totals"]
        lines += page["lines"]
        cursor = page["next_cursor"]
        if cursor is None:
            return lines, totals


def column_sums(lines: list[dict]) -> dict:
    return {name: sum(line[name] for line in lines) for name in TOTALS}


def statement(partner, period: str) -> dict:
    return partner.client.request("GET", f"/v1/statements/{period}").json()["document"]


@pytest.fixture
def worked_example(app, runner, make_partner):
    """The May of docs/settlement.md, booked the same way."""
    app.config["LEDGER_RULES"] = Rules(app.config["COALITION_TIMEZONE"], 100_000, 36)
    partners = {}
    for name, (price, rate, share, fee) in TERMS.items():
        partners[name] = make_partner(name, issue_price=price, redemption_rate=rate,
                                      issuance_share=share, claim_fee=fee)
    bakery, fuel, books = (partners[p].client for p in ("bakery", "fuel", "books"))
    assert bakery.enrol("M1").status == 201
    for response in (bakery.earn("e1", "M1", 1000, occurred_at="2026-05-02T12:00:00Z"),
                     fuel.earn("f1", "M1", 500, occurred_at="2026-05-03T12:00:00Z"),
                     books.burn("k1", "M1", 300, occurred_at="2026-05-10T12:00:00Z"),
                     fuel.burn("f2", "M1", 900, occurred_at="2026-05-11T12:00:00Z"),
                     books.reverse("k1", "rk1", 100, occurred_at="2026-05-12T12:00:00Z"),
                     fuel.reverse("f1", "rf1", 500, occurred_at="2026-05-13T12:00:00Z"),
                     books.earn("b1", "M1", 250, occurred_at="2026-05-14T12:00:00Z"),
                     bakery.burn("e3", "M1", 101, occurred_at="2026-05-15T12:00:00Z")):
        assert response.status == 201, response.json()
    cli(runner, "settlement", "close", "2026-05")
    return partners


def test_worked_example_lines_sum_to_every_statement_field(worked_example):
    for name, partner in worked_example.items():
        doc = statement(partner, "2026-05")
        for limit in (None, 1, 2, 1000):
            lines, totals = all_lines(partner, "2026-05", limit)
            assert totals == {field: doc[field] for field in TOTALS}
            assert column_sums(lines) == totals, name
            assert all(set(line) == set(COLUMNS) for line in lines)
    fuel = {(line["line"], line["claim_id"], line["kind"]): line
            for line in all_lines(worked_example["fuel"], "2026-05")[0]}
    # By hand (docs/settlement.md, May): three claims at a 0.005 EUR fee are 1.5 cents, 2 on
    # the statement; every line's exact half cent ties, so the two earliest lines get them.
    assert [(key, line["counterparty"], line["points_issued"] + line["points_redeemed"]
             + line["points_funded"] + line["points_debt_recovered"], line["fees_cents"],
             line["net_cents"]) for key, line in fuel.items()] == [
        (("claim", "f1", "earn"), None, 500, 1, -301),  # 500 x 0.012 x 0.5 = 3.00 issuance
        (("claim", "f2", "burn"), None, 900, 1, 854),  # 900 x 0.0095 = 8.55 reimbursed
        (("claim", "rf1", "reversal"), None, -500, 0, 300),
        (("funding", "f1", "burn"), "fuel", 200, 0, -120),  # f2 took 200 of f1: 1.20 funding
        (("debt_recovery", "rf1", "debt_fill"), "books", 200, 0, 120),  # b1 paid rf1's debt
    ]
    assert fuel["claim", "rf1", "reversal"]["reverses"] == "f1"
    books = all_lines(worked_example["books"], "2026-05")[0]
    assert [(line["line"], line["claim_id"], line["kind"], line["counterparty"],
             line["points_funded"]) for line in books if line["line"] == "funding"] == [
        ("funding", "b1", "debt_fill", "fuel", 200), ("funding", "b1", "burn", "bakery", 1)]


def test_late_claims_show_their_own_month(app, runner, worked_example):
    bakery = worked_example["bakery"]
    late = bakery.client.earn("e4", "M1", 50, occurred_at="2026-05-30T12:00:00Z").json()
    boundary = bakery.client.earn("e5", "M1", 77, occurred_at="2026-05-31T22:30:00Z").json()
    assert (late["period"], late["late"], boundary["period"], boundary["late"]) == \
        ("2026-06", True, "2026-06", False)
    cli(runner, "settlement", "close", "2026-06")
    lines, totals = all_lines(bakery, "2026-06")
    assert [(line["claim_id"], line["late"], line["late_claims"], line["own_period"])
            for line in lines] == [("e4", True, 1, "2026-05"), ("e5", False, 0, "2026-06")]
    assert (totals["claims"], totals["late_claims"]) == (2, 1) and column_sums(lines) == totals
    assert all_lines(worked_example["fuel"], "2026-06") == ([], {name: 0 for name in TOTALS})


def test_partners_see_only_their_own_lines(app, worked_example, make_partner):
    for name, partner in worked_example.items():
        own = {c["claim_id"] for c in partner.client.request("GET", "/v1/claims").json()["claims"]}
        lines, _ = all_lines(partner, "2026-05")
        assert lines and {line["claim_id"] for line in lines} <= own, name
    # A partner registered after the close has no statement for the month, so no lines.
    latecomer = make_partner("latecomer")
    for period in ("2026-05", "2026-06", "2026-13", "may"):
        r = latecomer.client.request("GET", f"/v1/statements/{period}/lines")
        assert r.status == 404 and r.json()["type"] == "/problems/not-found"
    assert worked_example["fuel"].client.request("GET", "/v1/statements/2026-06/lines").status == 404


def test_csv_has_every_line_under_a_header_and_sums_to_the_statement(worked_example):
    for name, partner in worked_example.items():
        r = partner.client.request("GET", "/v1/statements/2026-05/lines?format=csv")
        assert r.status == 200 and r.headers["content-type"].startswith("text/csv")
        assert f'filename="statement-lines-{name}-2026-05.csv"' in r.headers["content-disposition"]
        header, *rows = csv.reader(io.StringIO(r.body.decode()))
        assert header == list(COLUMNS)
        lines, totals = all_lines(partner, "2026-05", limit=1)
        assert len(rows) == len(lines)
        for row, line in zip(rows, lines):
            got = dict(zip(header, row))
            assert got == {k: "" if v is None else str(v).lower() if isinstance(v, bool)
                           else str(v) for k, v in line.items()}
        assert {field: sum(int(row[header.index(field)]) for row in rows)
                for field in TOTALS} == totals


@pytest.mark.parametrize("query, pointer", [
    ("limit=0", "/query/limit"), ("limit=1001", "/query/limit"), ("limit=x", "/query/limit"),
    ("cursor=abc", "/query/cursor"), ("format=pdf", "/query/format"), ("page=2", "/query/page"),
    ("format=csv&limit=5", "/query/limit"),
])
def test_bad_query_parameters_are_validation_errors(worked_example, query, pointer):
    r = worked_example["fuel"].client.request("GET", f"/v1/statements/2026-05/lines?{query}")
    assert r.status == 422 and r.json()["type"] == "/problems/validation-error", r.json()
    assert [e["pointer"] for e in r.json()["errors"]] == [pointer]


@pytest.mark.parametrize("key", [[0], [0, 1, 2], [5, 0], [-1, 0], [0, -1], [0, 2**63],
                                 ["0", 1], [0, 1.5], [False, 1], ["2026-05-01T12:00:00Z", 1]])
def test_a_tampered_lines_cursor_is_a_validation_error(worked_example, key):
    r = worked_example["fuel"].client.request(
        "GET", "/v1/statements/2026-05/lines?cursor=" + cursor_of(key))
    assert r.status == 422 and r.json()["errors"][0]["pointer"] == "/query/cursor"


def test_lines_that_no_longer_add_up_to_the_signed_statement_are_refused(app, worked_example):
    with app.app_context():
        row = db.session.get(Statement, ("2026-05", "fuel"))
        doc = json.loads(row.document)
        doc["fees_cents"] += 1
        row.document = json.dumps(doc)
        db.session.commit()
        with pytest.raises(LinesDisagree, match="fees_cents"):
            MonthLines(db.session, "fuel", "2026-05", tz="Europe/Berlin")


# --- random months --------------------------------------------------------------------------

LINE_EXAMPLES = int(os.environ.get("STATEMENT_LINES_EXAMPLES", "10" if ON_POSTGRES else "30"))


def check_lines(session, period: str, partner_id: str, limit: int) -> None:
    month = MonthLines(session, partner_id, period, tz=properties.TZ_NAME)
    doc = month.document
    lines, after = [], None
    while True:
        page, after = month.page(after, limit)
        lines += page
        if after is None:
            break
    assert column_sums(lines) == {field: doc[field] for field in TOTALS}, (period, partner_id)
    terms = {k: Decimal(v) for k, v in doc["terms"].items()}
    price, share = terms["issue_price"], terms["issuance_share"]
    factors = {"issuance_charge_cents": ("points_issued", price * share),
               "redemption_funding_charge_cents": ("points_funded", price * (1 - share)),
               "redemption_reimbursement_cents": ("points_redeemed", terms["redemption_rate"]),
               "fees_cents": ("claims", terms["claim_fee"]),
               "debt_recovery_credit_cents": ("points_debt_recovered", price * (1 - share))}
    for line in lines:
        for column, (field, factor) in factors.items():
            assert abs(line[column] - line[field] * factor * 100) < 1, (line, column)
    session.rollback()


@settings(max_examples=LINE_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(scenario=properties.scenarios(), limit=st.sampled_from([1, 3, 1000]))
def test_lines_of_random_months_sum_to_every_statement(app, migrated, scenario, limit):
    with app.app_context():
        fresh_database(app, migrated)
        properties.run_scenario(db.session, scenario)
        for month in scenario["months"]:
            period = properties.pstr(month)
            for partner_id in db.session.scalars(select(Statement.partner_id)
                                                 .where(Statement.period == period)):
                check_lines(db.session, period, partner_id, limit)
