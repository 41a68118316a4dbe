"""Statement documents are versioned: a month closed as v1 (terms with six places, netting in
counts only), as v2 (no breakage in the report) or as v3 (no bonus points) still re-derives
byte for byte and verifies after closes write v4."""
from __future__ import annotations

import json
from datetime import datetime, timezone

from sqlalchemy import text

from coalition.hashing import canonical
from coalition.models import ClosedPeriod
from partners import service as partner_service
from settlement import exports, statements
from settlement import service as settlement
from settlement.pdf import report_pdf, statement_pdf
from tests.test_settlement import TERMS, Book, close, day, may  # noqa: F401  (may is a fixture)

UTC = timezone.utc
# The fuel statement of May exactly as the close wrote it before v2 (closed_at and the two
# anchors aside): the format a v1 month keeps for ever.
FUEL_MAY_V1 = {
    "type": "coalition-statement/v1", "period": "2026-05", "partner_id": "fuel", "currency": "EUR",
    "terms": {"issue_price": "0.012000", "redemption_rate": "0.009500", "issuance_share": "0.500000",
              "claim_fee": "0.005000"},
    "claims": 3, "late_claims": 0, "points_issued": 0, "points_redeemed": 900, "points_expired": 0,
    "points_funded": 200, "points_debt_recovered": 200, "issuance_charge_cents": 0,
    "redemption_funding_charge_cents": 120, "redemption_reimbursement_cents": 855, "fees_cents": 2,
    "debt_recovery_credit_cents": 120, "net_cents": 853,
    "counterparties": [{"partner_id": "bakery", "issued_by_them_redeemed_here": 700,
                        "issued_here_redeemed_there": 0}],
}


def verify(runner) -> dict:
    result = runner.invoke(args=["ledger", "verify"])
    return json.loads(result.output)


def close_may_as_v1_then_june(s, monkeypatch):
    with monkeypatch.context() as patch:  # the close as it was before v2: same code, v1 builder
        patch.setattr(statements, "CURRENT", 1)
        close(s, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    partner_service.set_terms(s, "bakery", "2026-06", {**TERMS["bakery"], "issue_price": "0.02"},
                              now=day(2, month=6))
    s.commit()
    Book(s, now=day(3, month=6)).earn("bakery", "e4", "M2", 50, day(30))  # late: into June
    with monkeypatch.context() as patch:  # and June as it was before v3
        patch.setattr(statements, "CURRENT", 2)
        close(s, "2026-06", datetime(2026, 7, 2, tzinfo=UTC))


def test_a_month_closed_as_v1_keeps_its_format_and_verifies_beside_a_v2_month(may, runner, monkeypatch):
    close_may_as_v1_then_june(may, monkeypatch)
    fuel = json.loads(settlement.statement(may, "fuel", "2026-05").document)
    assert {k: v for k, v in fuel.items() if k not in ("closed_at", "ledger_anchor", "ledger_head")} \
        == FUEL_MAY_V1
    may_report = json.loads(settlement.report(may, "2026-05").document)
    assert may_report["type"] == "coalition-report/v1"
    assert may_report["payments"] == {"gross_obligations": 8, "net_payments": 3, "saved": 5}

    june = json.loads(settlement.statement(may, "bakery", "2026-06").document)
    june_report = json.loads(settlement.report(may, "2026-06").document)
    assert (june["type"], june_report["type"]) == ("coalition-statement/v2", "coalition-report/v2")
    assert june["terms"] == {"issue_price": "0.02", "redemption_rate": "0.009", "issuance_share": "1",
                             "claim_fee": "0"}
    assert june_report["payments"] == {"gross_obligations": 1, "net_payments": 1, "saved": 0,
                                       "gross_obligations_cents": 100, "net_payments_cents": 100,
                                       "saved_cents": 0}
    may.commit()
    report = verify(runner)
    assert report["ok"], report
    assert report["checked"]["statements"] == 2 * 4

    # The version is what keeps May verifiable: rebuilt in today's format, it would differ.
    closed = may.get(ClosedPeriod, "2026-05")
    partners = ["bakery", "books", "fuel"]
    as_v2, _ = settlement.derive(may, "2026-05", closed.closed_at, partners, 2)
    as_v1, _ = settlement.derive(may, "2026-05", closed.closed_at, partners, 1)
    stored = settlement.statement(may, "fuel", "2026-05").document.encode()
    assert canonical(as_v1["fuel"]) == stored != canonical(as_v2["fuel"])


def test_v1_v2_v3_and_v4_months_verify_side_by_side(may, runner, monkeypatch):
    close_may_as_v1_then_june(may, monkeypatch)
    Book(may, now=day(3, month=7)).earn("fuel", "f9", "M2", 10, day(3, month=7))
    with monkeypatch.context() as patch:  # July as a close before v4 wrote it
        patch.setattr(statements, "CURRENT", 3)
        close(may, "2026-07", datetime(2026, 8, 2, tzinfo=UTC))
    Book(may, now=day(3, month=8)).earn("fuel", "f10", "M2", 7, day(3, month=8))
    close(may, "2026-08", datetime(2026, 9, 2, tzinfo=UTC))
    periods = ("2026-05", "2026-06", "2026-07", "2026-08")
    types = [json.loads(settlement.report(may, p).document)["type"] for p in periods]
    assert types == ["coalition-report/v1", "coalition-report/v2", "coalition-report/v3",
                     "coalition-report/v4"]
    july = json.loads(settlement.statement(may, "fuel", "2026-07").document)
    assert july["type"] == "coalition-statement/v2"  # v3 changed only the report
    assert "bonus_points_issued" not in july and "bonus_issuance_charge_cents" not in july
    assert "bonus_points_issued" not in json.loads(settlement.report(may, "2026-07").document)["totals"]
    august = json.loads(settlement.statement(may, "fuel", "2026-08").document)
    assert august["type"] == "coalition-statement/v3"
    assert (august["bonus_points_issued"], august["bonus_issuance_charge_cents"]) == (0, 0)
    assert json.loads(settlement.report(may, "2026-08").document)["totals"]["bonus_points_issued"] == 0
    may.commit()
    report = verify(runner)
    assert report["ok"], report
    assert report["checked"]["statements"] == 4 * 4

    # Each month re-derives its stored bytes in its own version, and in no later one.
    partners = ["bakery", "books", "fuel"]
    for period, version in zip(periods, (1, 2, 3, 4)):
        closed = may.get(ClosedPeriod, period)
        docs, report_doc = settlement.derive(may, period, closed.closed_at, partners, version)
        for p in partners:
            assert canonical(docs[p]) == settlement.statement(may, p, period).document.encode()
        assert canonical(report_doc) == settlement.report(may, period).document.encode()
        if version < statements.CURRENT:
            later, later_report = settlement.derive(may, period, closed.closed_at, partners, version + 1)
            assert canonical(later_report) != canonical(report_doc), period
    # v4 statements differ from v3's (type and the two bonus fields), the report by its type and
    # totals.bonus_points_issued.
    closed = may.get(ClosedPeriod, "2026-07")
    as_v3, report_v3 = settlement.derive(may, "2026-07", closed.closed_at, partners, 3)
    as_v4, report_v4 = settlement.derive(may, "2026-07", closed.closed_at, partners, 4)
    assert {k: v for k, v in as_v4["fuel"].items()
            if k not in ("type", "bonus_points_issued", "bonus_issuance_charge_cents")} \
        == {k: v for k, v in as_v3["fuel"].items() if k != "type"}
    assert report_v4["totals"] == {**report_v3["totals"], "bonus_points_issued": 0}


def test_a_v1_month_changed_behind_the_services_back_is_still_caught(may, runner, monkeypatch):
    close_may_as_v1_then_june(may, monkeypatch)
    may.execute(text("UPDATE statements SET net_cents = 1 WHERE period = '2026-05' AND partner_id = 'books'"))
    may.execute(text("UPDATE coalition_reports SET document = REPLACE(document, :old, :new) "
                     "WHERE period = '2026-05'"),
                {"old": '"type":"coalition-report/v1"', "new": '"type":"coalition-report/v2"'})
    may.commit()
    report = verify(runner)
    assert not report["ok"]
    # Claiming v2 in the report rebuilds the month as v2: nothing of May matches any more.
    assert report["violations_by_check"] == {"statement-digest": 4, "statement-column": 1}, report


def test_v1_documents_still_export_and_render(may, monkeypatch):
    close_may_as_v1_then_june(may, monkeypatch)
    signed = settlement.signed(settlement.statement(may, "fuel", "2026-05"))
    assert "terms.claim_fee,0.005000\n" in exports.statement_csv(signed["document"], signed["digest"])
    assert statement_pdf(signed).startswith(b"%PDF-")
    report = settlement.signed(settlement.report(may, "2026-05"))
    csv = exports.report_csv(report["document"], report["digest"])
    assert "payments.saved,5\n" in csv and "_cents,2618" not in csv
    assert f"digest,{report['digest']}\n" in csv
    assert report_pdf(report).startswith(b"%PDF-")
    listed = settlement.statements_of(may, "fuel")
    assert [(s.period, s.net_cents) for s in listed] == [("2026-05", 853), ("2026-06", 0)]
