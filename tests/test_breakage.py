"""Breakage in settlement: points that expired unspent, per issuer, in points and in EUR at the
issuer's issue price for the month (coalition report v3), and the statement lines behind each
issuer's points_expired."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest
from flask import current_app

from coalition import expiry, ledger
from coalition.database import db
from coalition.hashing import canonical
from coalition.members import enrol
from coalition.models import ClosedPeriod
from coalition.vocabulary import EntryKind
from partners import service as partner_service
from settlement import exports, statements
from settlement import service as settlement
from settlement.lines import TOTALS, MonthLines
from settlement.pdf import report_pdf
from settlement.signing import signing_key
from tests.test_statement_pdf import drawn, page_text

UTC = timezone.utc
TZ = "Europe/Berlin"
RULES = ledger.Rules(TZ, 30, 0)  # points expire at the end of the month they were earned in
PARTNERS = ("acme", "bolt", "calm")
TERMS = {  # two issuers at different prices; calm issues nothing
    "acme": {"issue_price": "0.013", "redemption_rate": "0.01", "issuance_share": "0.5",
             "claim_fee": "0"},
    "bolt": {"issue_price": "0.0125", "redemption_rate": "0.01", "issuance_share": "1",
             "claim_fee": "0"},
    "calm": {"issue_price": "0.01", "redemption_rate": "0.01", "issuance_share": "1",
             "claim_fee": "0"},
}
ACME_FROM_JUNE = "0.015"  # the price June's breakage of acme is priced at, not May's 0.013


def at(month: int, d: int, hour: int = 12) -> datetime:
    return datetime(2026, month, d, hour, tzinfo=UTC)


def book(s, fn, now: datetime, **claim):
    booked = fn(s, now=now, rules=RULES, **claim)
    s.commit()
    return booked.entry


def close(s, period: str, now: datetime) -> dict:
    report = settlement.close(s, period, now=now, tz=TZ,
                              key=signing_key(current_app.config["COALITION_SIGNING_KEY_FILE"]))
    s.commit()
    return report


def stored_report(s, period: str) -> dict:
    return json.loads(settlement.report(s, period).document)


def stored_statement(s, partner: str, period: str) -> dict:
    return json.loads(settlement.statement(s, partner, period).document)


def lines_of(s, partner: str, period: str, limit: int = 2) -> list[dict]:
    month, lines, after = MonthLines(s, partner, period, tz=TZ), [], None
    while True:
        page, after = month.page(after, limit)
        lines += page
        if after is None:
            return lines


def by_hand(points: int, price: str) -> int:
    """points x price in cents, rounded once, half up, written out apart from cents()."""
    exact = Decimal(points) * Decimal(price) * 100
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@pytest.fixture
def expired(app):
    """May: acme and bolt issue, bolt's burn spends 30 of acme's points; the rest expires at
    the end of May (Berlin), so the expiry run books it into June. May is closed first."""
    with app.app_context():
        s = db.session
        for partner in PARTNERS:
            partner_service.add_partner(s, partner, partner.title(), now=at(5, 1),
                                        terms=TERMS[partner])
        partner_service.set_terms(s, "acme", "2026-06", {"issue_price": ACME_FROM_JUNE},
                                  now=at(5, 1))
        for member in ("M1", "M2"):
            enrol(s, member, now=at(5, 1))
        s.commit()
        now = at(5, 20)
        book(s, ledger.book_earn, now, partner_id="acme", claim_id="a1", member_id="M1",
             points=100, occurred_at=at(5, 2))
        book(s, ledger.book_earn, now, partner_id="bolt", claim_id="b1", member_id="M1",
             points=50, occurred_at=at(5, 3))
        book(s, ledger.book_earn, now, partner_id="acme", claim_id="a2", member_id="M2",
             points=21, occurred_at=at(5, 4))
        book(s, ledger.book_burn, now, partner_id="bolt", claim_id="b2", member_id="M1",
             points=30, occurred_at=at(5, 10))  # a1 occurred first: a1 keeps 70
        close(s, "2026-05", at(6, 1, 6))
        done = expiry.expire(s, as_of=date(2026, 6, 2), now=lambda: at(6, 2, 6), tz=TZ)
        assert (done["lots_expired"], done["points_expired"]) == (3, 70 + 50 + 21)
        yield s


def reverse_a1_in_july(s) -> None:
    """acme takes a1 back: its 70 expired points come back from breakage (July's acme
    points_expired is -70), the 30 spent become a debt."""
    book(s, ledger.book_reversal, at(7, 5), partner_id="acme", claim_id="a1", reversal_id="ra1",
         points=100, occurred_at=at(7, 5))


def test_the_report_prices_each_issuers_breakage_at_its_issue_price_for_the_month(expired, runner):
    s = expired
    report = close(s, "2026-06", at(7, 1, 6))
    assert report == stored_report(s, "2026-06")
    assert report["type"] == "coalition-report/v4"  # v4 kept v3's breakage as it was
    docs = {p: stored_statement(s, p, "2026-06") for p in PARTNERS}
    assert {p: d["points_expired"] for p, d in docs.items()} == {"acme": 91, "bolt": 50, "calm": 0}
    assert {d["type"] for d in docs.values()} == {"coalition-statement/v3"}  # v4's (bonus)
    # 91 x 0.015 = 1.365 EUR -> 137 cents; 50 x 0.0125 = 0.625 EUR -> 63 cents (half up).
    assert report["breakage"] == {
        "by_issuer": [
            {"partner_id": "acme", "points": 91, "issue_price": "0.015", "breakage_cents": 137},
            {"partner_id": "bolt", "points": 50, "issue_price": "0.0125", "breakage_cents": 63}],
        "points": 141, "breakage_cents": 200}
    for row in report["breakage"]["by_issuer"]:
        doc = docs[row["partner_id"]]
        assert row["points"] == doc["points_expired"]
        assert row["issue_price"] == doc["terms"]["issue_price"]  # the statement's own price
        assert row["breakage_cents"] == by_hand(row["points"], doc["terms"]["issue_price"])
    assert report["breakage"]["points"] == report["totals"]["points_expired"] \
        == sum(d["points_expired"] for d in docs.values())
    assert report["breakage"]["breakage_cents"] == sum(
        r["breakage_cents"] for r in report["breakage"]["by_issuer"])
    # Breakage is no money line: nothing of it moves between the coalition and the partners.
    assert report["operator_margin_cents"] == -sum(d["net_cents"] for d in docs.values()) == 0

    may = stored_report(s, "2026-05")
    assert may["breakage"] == {"by_issuer": [], "points": 0, "breakage_cents": 0}
    assert verify(runner)["ok"]


def test_the_breakage_lines_of_each_issuer_sum_to_its_points_expired(expired):
    s = expired
    close(s, "2026-06", at(7, 1, 6))
    reverse_a1_in_july(s)
    close(s, "2026-07", at(8, 1, 6))
    for period in ("2026-05", "2026-06", "2026-07"):
        for partner in PARTNERS:
            doc = stored_statement(s, partner, period)
            lines = lines_of(s, partner, period)
            assert {f: sum(line[f] for line in lines) for f in TOTALS} == {f: doc[f] for f in TOTALS}
            breakage = [line for line in lines if line["line"] == "breakage"]
            assert sum(line["points_expired"] for line in breakage) == doc["points_expired"]
            assert all(line["points_expired"] == 0 for line in lines if line["line"] != "breakage")
            s.rollback()
    june = {p: [(line["claim_id"], line["kind"], line["member_id"], line["points_expired"],
                 line["counterparty"], line["net_cents"])
                for line in lines_of(s, p, "2026-06") if line["line"] == "breakage"]
            for p in PARTNERS}
    assert june == {"acme": [("a1", EntryKind.EXPIRY, "M1", 70, None, 0),
                             ("a2", EntryKind.EXPIRY, "M2", 21, None, 0)],
                    "bolt": [("b1", EntryKind.EXPIRY, "M1", 50, None, 0)], "calm": []}
    july = [(line["line"], line["claim_id"], line["kind"], line["points_issued"],
             line["points_expired"]) for line in lines_of(s, "acme", "2026-07")]
    # The reversal is acme's claim (points_issued -100) and gives 70 expired points back.
    assert july == [("claim", "ra1", EntryKind.REVERSAL, -100, 0),
                    ("breakage", "a1", EntryKind.REVERSAL, 0, -70)]
    report = stored_report(s, "2026-07")
    # -70 x 0.015 = -1.05 EUR: breakage given back, in the month of the reversal.
    assert report["breakage"] == {"by_issuer": [{"partner_id": "acme", "points": -70,
                                                 "issue_price": "0.015", "breakage_cents": -105}],
                                  "points": -70, "breakage_cents": -105}


def verify(runner) -> dict:
    return json.loads(runner.invoke(args=["ledger", "verify"]).output)


def test_a_month_with_breakage_closed_as_v2_keeps_its_bytes_beside_v3(expired, runner,
                                                                       monkeypatch):
    s = expired
    with monkeypatch.context() as patch:  # June as a close before v3 wrote it
        patch.setattr(statements, "CURRENT", 2)
        close(s, "2026-06", at(7, 1, 6))
    reverse_a1_in_july(s)
    close(s, "2026-07", at(8, 1, 6))
    june, july = stored_report(s, "2026-06"), stored_report(s, "2026-07")
    assert (june["type"], july["type"]) == ("coalition-report/v2", "coalition-report/v4")
    assert "breakage" not in june and june["totals"]["points_expired"] == 141
    assert july["breakage"]["breakage_cents"] == -105
    report = verify(runner)
    assert report["ok"], report
    assert report["checked"]["statements"] == 3 * (len(PARTNERS) + 1)

    # June re-derives as v2, byte for byte; as v3 its report would differ by the breakage.
    closed = s.get(ClosedPeriod, "2026-06")
    stored = settlement.report(s, "2026-06").document.encode()
    _, as_v2 = settlement.derive(s, "2026-06", closed.closed_at, list(PARTNERS), 2)
    docs_v3, as_v3 = settlement.derive(s, "2026-06", closed.closed_at, list(PARTNERS), 3)
    assert canonical(as_v2) == stored != canonical(as_v3)
    assert {k: v for k, v in as_v3.items() if k not in ("type", "breakage")} == \
        {k: v for k, v in june.items() if k != "type"}
    for p in PARTNERS:  # the statements are the same bytes in v2 and v3
        assert canonical(docs_v3[p]) == settlement.statement(s, p, "2026-06").document.encode()


def test_the_report_exports_show_breakage_from_v3(expired):
    s = expired
    close(s, "2026-06", at(7, 1, 6))
    signed = settlement.signed(settlement.report(s, "2026-06"))
    csv = exports.report_csv(signed["document"], signed["digest"])
    assert "\nbreakage.points,141\nbreakage.breakage_cents,200\n" in csv
    assert csv.endswith("\nissuer,points_expired,issue_price,breakage_cents\n"
                        "acme,91,0.015,137\nbolt,50,0.0125,63\n")
    text = page_text(report_pdf(signed, compress=False))
    for needle in ("Breakage (points that expired unspent", "acme", "91", "0.015", "1.37",
                   "0.0125", "0.63", "141", "2.00"):
        assert drawn(needle) in text, needle
    assert report_pdf(signed) == report_pdf(signed)  # same report, same bytes
    may = settlement.signed(settlement.report(s, "2026-05"))  # v3 without breakage: as before
    assert "breakage" not in exports.report_csv(may["document"], may["digest"])
    assert b"Breakage" not in page_text(report_pdf(may, compress=False))


@pytest.mark.parametrize("points, price, expected", [
    (91, "0.015", 137),     # 136.5: half up
    (-70, "0.015", -105),   # given back: the mirror of an expiry
    (-1, "0.005", -1),      # -0.5: half away from zero, as every money line
    (3, "0.0001", 0),       # 0.03 of a cent
    (10**9, "0.012345", 1234500000),
])
def test_breakage_rounds_once_per_issuer_half_up(points, price, expected):
    flows = statements.Flows()
    flows.expired["x"] = points
    flows.expired["zero"] = 0  # an issuer whose expiries were all given back is not listed
    got = statements.breakage(flows, {"x": Decimal(price), "zero": Decimal("1")})
    assert got == {"by_issuer": [{"partner_id": "x", "points": points, "issue_price": price,
                                  "breakage_cents": expected}],
                   "points": points, "breakage_cents": expected}
    assert expected == by_hand(points, price)


def test_a_v3_month_is_known_by_its_report():
    assert statements.version_of({"type": "coalition-report/v3"}) == 3
    # v3 statements are v2's, type included: a statement alone says v2, which re-derives the
    # same bytes (closed_version reads the report first).
    assert statements.STATEMENT_TYPES[3] == statements.STATEMENT_TYPES[2]
    assert statements.version_of({"type": "coalition-statement/v2"}) == 2
