"""Bonus points in settlement (format v4): a funder's bonus_points_issued and its
bonus_issuance_charge_cents in the statement, totals.bonus_points_issued in the report, from
Flows that carry bonus (by funder). The July and August of docs/settlement.md ("Bonus points"),
figure by figure, and what earlier versions leave out."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest
from flask import current_app

from coalition import campaigns
from coalition.database import db
from coalition.hashing import canonical, sha256_hex
from partners import service as partner_service
from settlement import exports, statements
from settlement import service as settlement
from settlement.lines import TOTALS, MonthLines
from settlement.pdf import report_pdf, statement_pdf
from settlement.signing import signing_key
from settlement.statements import Flows, report_of, statement_of
from tests.test_statement_pdf import drawn, page_text

CLOSED_AT = "2026-08-01T06:00:00Z"
# The terms of docs/settlement.md for July 2026 (bakery at June's price), and the operator.
TERMS = {
    "bakery": {"issue_price": "0.02", "redemption_rate": "0.009", "issuance_share": "1",
               "claim_fee": "0"},
    "books": {"issue_price": "0.01", "redemption_rate": "0.009", "issuance_share": "1",
              "claim_fee": "0"},
    "coalition": {"issue_price": "0.008", "redemption_rate": "0", "issuance_share": "0.5",
                  "claim_fee": "0"},
    "fuel": {"issue_price": "0.012", "redemption_rate": "0.0095", "issuance_share": "0.5",
             "claim_fee": "0.005"},
}
PARTNERS = sorted(TERMS)
BONUS = ("bonus_points_issued", "bonus_issuance_charge_cents")


def terms(partner: str) -> dict[str, Decimal]:
    return {name: Decimal(value) for name, value in TERMS[partner].items()}


def by_hand(points: int, *factors: str) -> int:
    """points x factors in cents, rounded once, half up (away from zero), apart from cents()."""
    exact = Decimal(points) * 100
    for factor in factors:
        exact *= Decimal(factor)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def month(flows: Flows, period: str = "2026-07", version: int = statements.CURRENT):
    docs = {p: statement_of(p, period, CLOSED_AT, terms(p), flows, PARTNERS, "h" * 64, version)
            for p in PARTNERS}
    digests = {p: sha256_hex(canonical(d)) for p, d in docs.items()}
    prices = {p: terms(p)["issue_price"] for p in PARTNERS}
    return docs, report_of(period, CLOSED_AT, docs, digests, flows, "h" * 64, version, prices)


def july() -> Flows:
    """July 2026 of docs/settlement.md, member M4: books earn k20 400 under books' campaign
    double-books (x2, +400 funded by books) and M4's Silver tier (+40 funded by the coalition);
    bakery earn e20 300 with fuel's coupon fuel-coffee (+50 funded by fuel); fuel burn f20 840,
    which spends k20's three lots (books 800, coalition 40)."""
    f = Flows()
    f.claims.update(bakery=1, books=1, fuel=1)
    f.issued.update(bakery=300, books=400)
    f.bonus.update(books=400, coalition=40, fuel=50)
    f.redeemed["fuel"] = 840
    f.funded.update(books=800, coalition=40)
    f.matrix["books", "fuel"], f.matrix["coalition", "fuel"] = 800, 40
    return f


def august() -> Flows:
    """August: bakery reverses e20 whole (re20): 300 of its own points and the coupon's 50
    come back, so fuel's bonus_points_issued is -50."""
    f = Flows()
    f.claims["bakery"] = 1
    f.issued["bakery"] = -300
    f.bonus["fuel"] = -50
    return f


def test_july_of_the_worked_example_to_the_cent():
    docs, report = month(july())
    assert {p: (d["bonus_points_issued"], d["bonus_issuance_charge_cents"])
            for p, d in docs.items()} == {"bakery": (0, 0), "books": (400, 400),
                                          "coalition": (40, 16), "fuel": (50, 30)}
    # 400 x 0.01 x 1 = 4.00; 40 x 0.008 x 0.5 = 0.16; 50 x 0.012 x 0.5 = 0.30 EUR
    for p, d in docs.items():
        assert d["bonus_issuance_charge_cents"] == by_hand(
            d["bonus_points_issued"], TERMS[p]["issue_price"], TERMS[p]["issuance_share"])
    assert docs["books"]["issuance_charge_cents"] == 400  # its own 400, apart from the bonus
    # The coalition funds the redemption of its 40 tier points like any issuer: 40 x 0.008 x 0.5.
    assert docs["coalition"]["redemption_funding_charge_cents"] == 16
    assert docs["books"]["redemption_funding_charge_cents"] == 0  # share 1: paid at issue
    assert docs["fuel"]["redemption_reimbursement_cents"] == 798  # 840 x 0.0095 = 7.98
    assert docs["fuel"]["fees_cents"] == 1  # 0.005 EUR: half a cent, up
    assert {p: d["net_cents"] for p, d in docs.items()} == \
        {"bakery": -600, "books": -800, "coalition": -32, "fuel": 798 - 1 - 30}
    assert report["operator_margin_cents"] == 665
    assert sum(d["net_cents"] for d in docs.values()) + report["operator_margin_cents"] == 0
    assert report["totals"] == {"points_issued": 700, "points_redeemed": 840, "points_expired": 0,
                                "bonus_points_issued": 490}
    assert report["matrix"] == [{"issuer": "books", "redeemer": "fuel", "points": 800},
                                {"issuer": "coalition", "redeemer": "fuel", "points": 40}]
    # Netting counts the bonus charge as a money line: bakery 1, books 2, coalition 2, fuel 3.
    assert report["payments"] == {"gross_obligations": 8, "net_payments": 4, "saved": 4,
                                  "gross_obligations_cents": 600 + 800 + 32 + 829,
                                  "net_payments_cents": 600 + 800 + 32 + 767,
                                  "saved_cents": 62}
    assert {d["type"] for d in docs.values()} == {"coalition-statement/v3"}
    assert report["type"] == "coalition-report/v4"


def test_a_month_of_reversals_gives_the_funder_its_bonus_back_negative():
    docs, report = month(august(), "2026-08")
    fuel = docs["fuel"]
    # -50 x 0.012 x 0.5 = -0.30 EUR: a credit to fuel.
    assert (fuel["bonus_points_issued"], fuel["bonus_issuance_charge_cents"], fuel["net_cents"]) \
        == (-50, -30, 30)
    assert docs["bakery"]["issuance_charge_cents"] == -600 and docs["bakery"]["net_cents"] == 600
    assert report["totals"]["bonus_points_issued"] == -50
    assert report["operator_margin_cents"] == -630
    assert sum(d["net_cents"] for d in docs.values()) + report["operator_margin_cents"] == 0
    # Two months together: the coupon that was taken back costs fuel nothing.
    july_docs, _ = month(july())
    assert july_docs["fuel"]["bonus_issuance_charge_cents"] \
        + fuel["bonus_issuance_charge_cents"] == 0


@pytest.mark.parametrize("points, price, share, expected", [
    (1001, "0.013", "0.5", 651),      # 650.65
    (-75, "0.013", "0.5", -49),       # -48.75: half away from zero, as every money line
    (1, "0.01", "0.5", 1),            # 0.5 of a cent: up
    (-1, "0.01", "0.5", -1),
    (3, "0.0001", "1", 0),
    (10**9, "0.012345", "0.25", 308625000),
])
def test_the_bonus_charge_rounds_once_half_up_like_the_issuance_charge(points, price, share,
                                                                       expected):
    f = Flows()
    f.bonus["x"] = f.issued["y"] = points
    t = {"issue_price": Decimal(price), "redemption_rate": Decimal("0"),
         "issuance_share": Decimal(share), "claim_fee": Decimal("0")}
    doc = statement_of("x", "2026-07", CLOSED_AT, t, f, ["x", "y"], None)
    assert doc["bonus_issuance_charge_cents"] == expected == by_hand(points, price, share)
    assert doc["net_cents"] == -expected
    # the same arithmetic as the partner's own points would get
    same = statement_of("y", "2026-07", CLOSED_AT, t, f, ["x", "y"], None)
    assert same["issuance_charge_cents"] == expected and same["bonus_points_issued"] == 0


def test_the_operator_as_funder_has_a_statement_like_any_partner():
    f = Flows()
    f.bonus["coalition"] = 1250  # the coalition funds tier bonuses at two partners
    f.issued.update(bakery=1000, books=500)
    f.funded["coalition"] = 333  # and some were redeemed
    docs, report = month(f)
    op = docs["coalition"]
    assert (op["points_issued"], op["bonus_points_issued"]) == (0, 1250)
    assert op["bonus_issuance_charge_cents"] == 500  # 1250 x 0.008 x 0.5 = 5.00 EUR
    assert op["redemption_funding_charge_cents"] == by_hand(333, "0.008", "0.5") == 133  # 133.2
    assert op["net_cents"] == -633
    assert report["totals"]["bonus_points_issued"] == 1250
    assert report["operator_margin_cents"] == -sum(d["net_cents"] for d in docs.values())


def test_versions_before_v4_have_no_bonus_and_keep_their_bytes():
    f = july()
    without = july()
    without.bonus.clear()
    for version in (1, 2, 3):
        docs, report = month(f, version=version)
        plain_docs, plain_report = month(without, version=version)
        for p in PARTNERS:
            assert not set(BONUS) & set(docs[p])
            assert canonical(docs[p]) == canonical(plain_docs[p])
        assert canonical(report) == canonical(plain_report)
        assert "bonus_points_issued" not in report["totals"]
        assert statements.version_of(report) == version
    assert statements.version_of({"type": "coalition-statement/v3"}) == 4
    assert statements.version_of({"type": "coalition-report/v4"}) == 4
    assert statements.money_lines(3) == statements.MONEY_LINES
    assert statements.money_lines(4) == (*statements.CHARGES, "bonus_issuance_charge_cents",
                                         *statements.CREDITS)


def test_exports_and_pdfs_show_the_bonus_of_v4_documents_only():
    docs, report = month(july())
    fuel = docs["fuel"]
    csv = exports.statement_csv(fuel, "d" * 64)
    assert "\npoints_debt_recovered,0\nbonus_points_issued,50\n" in csv
    assert "\ndebt_recovery_credit_cents,0\nbonus_issuance_charge_cents,30\nnet_cents,767\n" in csv
    report_csv = exports.report_csv(report, "d" * 64)
    assert "\ntotals.bonus_points_issued,490\ntotals.points_expired,0\n" in report_csv
    signed = {"document": fuel, "digest": "d" * 64, "signature": {"alg": "EdDSA", "kid": "k"}}
    text = page_text(statement_pdf(signed, compress=False))
    for needle in ("Bonus issuance charge", "50 bonus pts you funded x 0.012 x 0.5", "-0.30",
                   "Bonus points you funded (net of reversals)", "+7.67"):
        assert drawn(needle) in text, needle
    signed_report = {"document": report, "digest": "d" * 64,
                     "signature": {"alg": "EdDSA", "kid": "k"}}
    text = page_text(report_pdf(signed_report, compress=False))
    assert drawn("Bonus points issued") in text and drawn("490") in text

    old_docs, old_report = month(july(), version=3)
    old = old_docs["fuel"]
    assert "bonus" not in exports.statement_csv(old, "d" * 64)
    assert "bonus" not in exports.report_csv(old_report, "d" * 64)
    signed = {"document": old, "digest": "d" * 64, "signature": {"alg": "EdDSA", "kid": "k"}}
    assert b"Bonus" not in page_text(statement_pdf(signed, compress=False))
    signed_report = {"document": old_report, "digest": "d" * 64,
                     "signature": {"alg": "EdDSA", "kid": "k"}}
    assert b"Bonus" not in page_text(report_pdf(signed_report, compress=False))


# --- end to end: bonus earns booked through the API, closed into v4 statements ---------------

def month_after(period: str) -> tuple[str, datetime]:
    """The month after `period`, and an instant when `period` has ended in Berlin."""
    year, month = map(int, period.split("-"))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return f"{year:04d}-{month:02d}", datetime(year, month, 2, tzinfo=timezone.utc)


def test_bonus_earns_close_into_the_funders_statements_and_lines(app, make_partner, runner):
    """acme's earn n1 of 101 points qualifies for two campaigns: x1.5 funded by the coalition
    (the operator issuer: floor(101 x 0.5) = 50) and a fixed 25 funded by bolt; the member
    spends 150 of the 176 at bolt, which redeems 50 of the coalition's bonus points at least (its
    funding charge). The month closes; acme then reverses n1 whole (a late claim, booked into
    the next month): both funders get their bonus back there, negative."""
    acme = make_partner("acme", issue_price="0.013", redemption_rate="0.01",
                        issuance_share="0.5", claim_fee="0")
    bolt = make_partner("bolt", issue_price="0.0125", redemption_rate="0.01",
                        issuance_share="1", claim_fee="0")
    with app.app_context():
        s, tz = db.session, current_app.config["COALITION_TIMEZONE"]
        now = datetime.now(timezone.utc)
        partner_service.add_partner(s, "coalition", "The Coalition", now=now, kind="operator",
                                    terms=TERMS["coalition"])
        issuers = set(partner_service.partner_ids(s))
        for campaign_id, kind, value, funder in (("half-more", "multiplier", "1.5", "coalition"),
                                                 ("bolt-25", "fixed", "25", "bolt")):
            campaigns.add(s, campaign_id, name=campaign_id, kind=kind, value=value,
                          starts=(now - timedelta(days=1)).date().isoformat(), ends="2099-12-31",
                          funder=funder, issuers=issuers, now=now, tz=tz, partners=["acme"])
        s.commit()
        assert acme.client.enrol("M1").status == 201
        earned = acme.client.earn("n1", "M1", 101)
        assert earned.status == 201, earned.body
        assert bolt.client.burn("x1", "M1", 150).status == 201
        first = earned.json()["period"]
        second, first_ended = month_after(first)
        _, second_ended = month_after(second)
        key = signing_key(current_app.config["COALITION_SIGNING_KEY_FILE"])
        settlement.close(s, first, now=first_ended, tz=tz, key=key)
        s.commit()

        def stated(period):
            docs = {p: json.loads(settlement.statement(s, p, period).document)
                    for p in ("acme", "bolt", "coalition")}
            return docs, json.loads(settlement.report(s, period).document)

        def lines_of(partner, period):
            month, lines, after = MonthLines(s, partner, period, tz=tz), [], None
            while True:
                page, after = month.page(after, 1)
                lines += page
                if after is None:
                    return month, lines

        docs, report = stated(first)
        assert {p: (d["points_issued"], d["bonus_points_issued"], d["bonus_issuance_charge_cents"])
                for p, d in docs.items()} == {"acme": (101, 0, 0),
                                              "bolt": (0, 25, by_hand(25, "0.0125", "1")),
                                              "coalition": (0, 50, by_hand(50, "0.008", "0.5"))}
        assert (docs["bolt"]["bonus_issuance_charge_cents"],
                docs["coalition"]["bonus_issuance_charge_cents"]) == (31, 20)  # 31.25, 20.00
        assert docs["acme"]["issuance_charge_cents"] == 66  # 101 x 0.013 x 0.5 = 65.65
        assert report["type"] == "coalition-report/v4"
        assert report["totals"]["bonus_points_issued"] == 75
        # Whichever of n1's lots the burn took first, all its issuers' points funded it.
        funded = {p: d["points_funded"] for p, d in docs.items()}
        assert sum(funded.values()) == 150 and funded["coalition"] >= 50 - (176 - 150)
        assert docs["coalition"]["redemption_funding_charge_cents"] == by_hand(
            funded["coalition"], "0.008", "0.5")
        assert {(m["issuer"], m["redeemer"]) for m in report["matrix"]} <= \
            {("acme", "bolt"), ("bolt", "bolt"), ("coalition", "bolt")}
        assert sum(d["net_cents"] for d in docs.values()) + report["operator_margin_cents"] == 0
        for partner in docs:
            month, lines = lines_of(partner, first)
            assert {f: sum(line[f] for line in lines) for f in TOTALS} == month.totals, partner
        _, lines = lines_of("coalition", first)
        bonus = [(x["claim_id"], x["kind"], x["counterparty"], x["bonus_points_issued"],
                  x["bonus_issuance_charge_cents"]) for x in lines if x["line"] == "bonus"]
        # acme's receipt number is acme's business: the funder sees whose claim, not which.
        assert bonus == [(None, "earn", "acme", 50, 20)]
        s.commit()

        reversed_ = acme.client.reverse("n1", "rn1", 101)
        assert reversed_.status == 201, reversed_.body
        assert reversed_.json()["period"] == second
        settlement.close(s, second, now=second_ended, tz=tz, key=key)
        s.commit()
        docs, report = stated(second)
        assert {p: (d["points_issued"], d["bonus_points_issued"], d["bonus_issuance_charge_cents"],
                    d["net_cents"]) for p, d in docs.items()} == {
            "acme": (-101, 0, 0, 66), "bolt": (0, -25, -31, 31), "coalition": (0, -50, -20, 20)}
        assert report["totals"]["bonus_points_issued"] == -75
        assert sum(d["net_cents"] for d in docs.values()) + report["operator_margin_cents"] == 0
        for partner in docs:
            month, lines = lines_of(partner, second)
            assert {f: sum(line[f] for line in lines) for f in TOTALS} == month.totals, partner
        _, lines = lines_of("bolt", second)
        bonus = [(x["claim_id"], x["kind"], x["reverses"], x["counterparty"],
                  x["bonus_points_issued"], x["net_cents"]) for x in lines if x["line"] == "bonus"]
        assert bonus == [(None, "reversal", None, "acme", -25, 31)]
        _, lines = lines_of("acme", first)  # its own claim, funded by itself, would be named
        assert all(x["claim_id"] is not None for x in lines)
        s.commit()
    verified = json.loads(runner.invoke(args=["ledger", "verify"]).output)
    assert verified["ok"], verified
