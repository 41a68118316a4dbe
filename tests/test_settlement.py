"""Settlement: a month computed by hand, the close rules, signed statements, verify."""
from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flask import current_app
from sqlalchemy import select, text

from coalition import ledger
from coalition.database import db
from coalition.errors import Problem
from coalition.hashing import entries_digest
from coalition.members import enrol
from coalition.models import Entry
from partners import service as partner_service
from settlement import service as settlement
from settlement.signing import signing_key

UTC = timezone.utc
RULES = ledger.Rules("Europe/Berlin", 30, 36)
MAY = datetime(2026, 5, 31, 12, tzinfo=UTC)  # the booking clock for May's claims
TERMS = {
    "bakery": {"issue_price": "0.01", "redemption_rate": "0.009", "issuance_share": "1", "claim_fee": "0"},
    "fuel": {"issue_price": "0.012", "redemption_rate": "0.0095", "issuance_share": "0.5", "claim_fee": "0.005"},
    "books": {"issue_price": "0.01", "redemption_rate": "0.009", "issuance_share": "1", "claim_fee": "0"},
}


def day(d: int, month: int = 5, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(2026, month, d, hour, minute, tzinfo=UTC)


class Book:
    def __init__(self, session, now=MAY):
        self.s, self.now = session, now

    def _run(self, fn, **kw):
        booked = fn(self.s, now=self.now, rules=RULES, **kw)
        self.s.commit()
        return booked.entry

    def earn(self, partner, claim, member, points, when, **kw):
        return self._run(ledger.book_earn, partner_id=partner, claim_id=claim, member_id=member,
                         points=points, occurred_at=when, **kw)

    def burn(self, partner, claim, member, points, when):
        return self._run(ledger.book_burn, partner_id=partner, claim_id=claim, member_id=member,
                         points=points, occurred_at=when)

    def reverse(self, partner, claim, rid, points, when):
        return self._run(ledger.book_reversal, partner_id=partner, claim_id=claim,
                         reversal_id=rid, points=points, occurred_at=when)


@pytest.fixture
def may(app):
    """May 2026 of docs/settlement.md, booked with a fixed clock."""
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
        b.burn("books", "k1", "M1", 300, day(10))       # bakery's lot (occurred first)
        b.burn("fuel", "f2", "M1", 900, day(11))        # bakery 700, fuel 200
        b.reverse("books", "k1", "rk1", 100, day(12))   # back to bakery's lot
        b.reverse("fuel", "f1", "rf1", 500, day(13))    # 300 left in the lot: 200 become debt
        b.earn("books", "b1", "M1", 250, day(14))       # fills fuel's 200 of debt first
        b.burn("bakery", "e3", "M1", 101, day(15))      # bakery's lot 100, books' lot 1
        yield s


def close(s, period, now):
    report = settlement.close(s, period, now=now, tz=RULES.timezone,
                              key=signing_key(current_app.config["COALITION_SIGNING_KEY_FILE"]))
    s.commit()
    return report


def doc(s, partner, period="2026-05"):
    return json.loads(settlement.statement(s, partner, period).document)


def test_the_anchor_streams_every_entry_of_the_month_in_booking_order(may, monkeypatch):
    """Read in batches smaller than the month, the anchor still covers each of its entries
    once, in id order, and none of the next month's."""
    Book(may, now=day(5, month=6)).earn("bakery", "j1", "M2", 10, day(3, month=6))
    monkeypatch.setattr(settlement, "ANCHOR_BATCH", 3)
    for period, count in (("2026-05", 8), ("2026-06", 1)):
        hashes = may.scalars(select(Entry.entry_hash).where(Entry.period == period)
                             .order_by(Entry.id)).all()
        assert len(hashes) == count
        assert settlement.month_anchor(may, period) == entries_digest(hashes)
    assert settlement.month_anchor(may, "2026-07") == entries_digest([])


def test_may_statements_match_the_hand_computation(may):
    report = close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    bakery, fuel, books = doc(may, "bakery"), doc(may, "fuel"), doc(may, "books")
    assert {k: bakery[k] for k in ("claims", "points_issued", "points_redeemed", "points_funded",
                                   "issuance_charge_cents", "redemption_funding_charge_cents",
                                   "redemption_reimbursement_cents", "fees_cents",
                                   "debt_recovery_credit_cents", "net_cents")} == {
        "claims": 2, "points_issued": 1000, "points_redeemed": 101, "points_funded": 1000,
        "issuance_charge_cents": 1000, "redemption_funding_charge_cents": 0,
        "redemption_reimbursement_cents": 91,  # 0.909 EUR, half up
        "fees_cents": 0, "debt_recovery_credit_cents": 0, "net_cents": -909}
    assert {k: fuel[k] for k in ("claims", "points_issued", "points_redeemed", "points_funded",
                                 "points_debt_recovered", "issuance_charge_cents",
                                 "redemption_funding_charge_cents", "redemption_reimbursement_cents",
                                 "fees_cents", "debt_recovery_credit_cents", "net_cents")} == {
        "claims": 3, "points_issued": 0, "points_redeemed": 900, "points_funded": 200,
        "points_debt_recovered": 200, "issuance_charge_cents": 0,
        "redemption_funding_charge_cents": 120, "redemption_reimbursement_cents": 855,
        "fees_cents": 2,  # 3 claims x 0.005 EUR = 1.5 cents, half up
        "debt_recovery_credit_cents": 120, "net_cents": 853}
    assert (books["points_issued"], books["points_redeemed"], books["points_funded"],
            books["issuance_charge_cents"], books["redemption_reimbursement_cents"],
            books["net_cents"]) == (250, 200, 201, 250, 180, -70)
    assert bakery["counterparties"] == [
        {"partner_id": "books", "issued_by_them_redeemed_here": 1, "issued_here_redeemed_there": 200},
        {"partner_id": "fuel", "issued_by_them_redeemed_here": 0, "issued_here_redeemed_there": 700}]
    assert fuel["counterparties"] == [
        {"partner_id": "bakery", "issued_by_them_redeemed_here": 700, "issued_here_redeemed_there": 0}]
    assert report["matrix"] == [
        {"issuer": "bakery", "redeemer": "bakery", "points": 100},
        {"issuer": "bakery", "redeemer": "books", "points": 200},
        {"issuer": "bakery", "redeemer": "fuel", "points": 700},
        {"issuer": "books", "redeemer": "bakery", "points": 1},
        {"issuer": "fuel", "redeemer": "fuel", "points": 200}]
    assert report["operator_margin_cents"] == 126 == -(bakery["net_cents"] + fuel["net_cents"] + books["net_cents"])
    # Netting: 8 money lines (1091 + 1097 + 430 cents) paid one by one, against 3 net payments
    # (909 + 853 + 70 cents).
    assert report["payments"] == {"gross_obligations": 8, "net_payments": 3, "saved": 5,
                                  "gross_obligations_cents": 2618, "net_payments_cents": 1832,
                                  "saved_cents": 786}
    assert report["totals"] == {"points_issued": 1250, "points_redeemed": 1201, "points_expired": 0,
                                "bonus_points_issued": 0}


def test_june_takes_late_claims_berlin_boundary_and_new_terms(may):
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    partner_service.set_terms(may, "bakery", "2026-06", {**TERMS["bakery"], "issue_price": "0.02"},
                              now=day(2, month=6))
    may.commit()
    june = Book(may, now=day(3, month=6))
    late = june.earn("bakery", "e4", "M2", 50, day(30))               # May is closed: June, late
    boundary = june.earn("bakery", "e5", "M2", 77, day(31, hour=22, minute=30))  # 00:30 in Berlin
    assert (late.period, late.late, boundary.period, boundary.late) == ("2026-06", True, "2026-06", False)
    with pytest.raises(Problem) as exc:
        close(may, "2026-06", datetime(2026, 6, 30, 21, 59, tzinfo=UTC))  # 23:59 in Berlin
    assert exc.value.slug == "period-open"
    may.rollback()
    close(may, "2026-06", datetime(2026, 6, 30, 22, 0, tzinfo=UTC))
    bakery = doc(may, "bakery", "2026-06")
    assert (bakery["claims"], bakery["late_claims"], bakery["points_issued"]) == (2, 1, 127)
    assert bakery["terms"]["issue_price"] == "0.02" and bakery["issuance_charge_cents"] == 254
    assert doc(may, "bakery")["terms"]["issue_price"] == "0.01"  # May keeps May's terms


def test_months_close_once_in_order_after_they_end(may):
    def attempt(period, now=datetime(2026, 8, 1, tzinfo=UTC)):
        with pytest.raises(Problem) as exc:
            close(may, period, now)
        may.rollback()
        return exc.value.slug
    assert attempt("2026-05", datetime(2026, 5, 31, 21, 59, tzinfo=UTC)) == "period-open"
    assert attempt("2026-06") == "period-open"      # May first
    assert attempt("2026-04") == "period-open"      # before the first period: nothing there
    assert attempt("2026-13") == "validation-error"
    close(may, "2026-05", datetime(2026, 6, 1, tzinfo=UTC))
    assert attempt("2026-05") == "period-closed"
    with pytest.raises(Problem) as exc:
        partner_service.set_terms(may, "fuel", "2026-05", TERMS["fuel"], now=day(2, month=6))
    assert exc.value.slug == "period-closed"


def test_nothing_booked_means_nothing_to_close(app):
    with app.app_context():
        with pytest.raises(Problem) as exc:
            close(db.session, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
        assert exc.value.slug == "period-open"


def test_statements_are_signed(may, runner):
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    row = settlement.statement(may, "fuel", "2026-05")
    client = current_app.test_client()
    jwk = client.get("/.well-known/jwks.json").get_json()["keys"][0]
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "="))
    assert jwk["kid"] == row.kid
    public.verify(base64.urlsafe_b64decode(row.signature + "=" * (-len(row.signature) % 4)),
                  row.document.encode())
    may.commit()
    result = runner.invoke(args=["ledger", "verify"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["checked"]["statements"] == 4


REPLACE_IN_FUEL = "UPDATE statements SET document = REPLACE(document, :old, :new){} WHERE partner_id = 'fuel'"
STATEMENT_TAMPERING = {
    "document changed": (REPLACE_IN_FUEL.format(""), {"old": '"net_cents":853', "new": '"net_cents":953'},
                         {"statement-digest": 1}),
    "document and its digest changed": (REPLACE_IN_FUEL.format(", digest = :digest"),
                                        {"old": '"claims":3', "new": '"claims":2'},
                                        {"statement-digest": 1}),
    # The column that served GET /v1/statements went unchecked once (issue 8): now the listing
    # reads the signed document, and verify compares the column with it.
    "net_cents column changed": ("UPDATE statements SET net_cents = 953 WHERE partner_id = 'fuel'", {},
                                 {"statement-column": 1}),
    "report changed": ("UPDATE coalition_reports SET document = REPLACE(document, :old, :new)",
                       {"old": '"operator_margin_cents":126', "new": '"operator_margin_cents":26'},
                       {"statement-digest": 1}),
    "signature replaced": ("UPDATE statements SET signature = (SELECT signature FROM statements "
                           "WHERE partner_id = 'bakery') WHERE partner_id = 'fuel'", {},
                           {"statement-signature": 1}),
}


@pytest.mark.parametrize("sql, params, caught", STATEMENT_TAMPERING.values(), ids=STATEMENT_TAMPERING.keys())
def test_verify_catches_statements_changed_behind_its_back(may, runner, sql, params, caught):
    from partners.client import PartnerClient
    from tests.conftest import new_key, public_pem, transport_for
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    key = new_key("EdDSA")
    partner_service.add_key(may, "fuel", public_pem(key), now=day(2, month=6))
    may.commit()
    client = PartnerClient("", "fuel", key, transport=transport_for(current_app))
    listed = client.request("GET", "/v1/statements").json()
    document = settlement.statement(may, "fuel", "2026-05").document
    if params:  # the digest of the changed document, for the case that changes both
        params = {**params, "digest": hashlib.sha256(
            document.replace(params["old"], params["new"]).encode()).hexdigest()}
    may.execute(text(sql), params)
    may.commit()
    result = runner.invoke(args=["ledger", "verify"])
    assert result.exit_code == 1, result.output
    assert json.loads(result.output)["violations_by_check"] == caught
    if "statement-column" in caught:  # and what the partner is shown did not move
        assert listed["statements"][0]["net_cents"] == 853
        assert client.request("GET", "/v1/statements").json() == listed


def test_first_terms_apply_from_the_beginning_and_later_terms_change_no_earlier_month(may):
    partner_service.set_terms(may, "fuel", "2026-07", {**TERMS["fuel"], "claim_fee": "0.5"},
                              now=day(2, month=6))
    assert partner_service.terms_in_force(may, "fuel", "2020-01")["claim_fee"] == Decimal("0.005000")
    assert partner_service.terms_in_force(may, "fuel", "2026-06")["claim_fee"] == Decimal("0.005000")
    assert partner_service.terms_in_force(may, "fuel", "2026-07")["claim_fee"] == Decimal("0.500000")
    assert partner_service.terms_in_force(may, "fuel", "2031-01")["claim_fee"] == Decimal("0.500000")


def test_partners_read_their_own_statements_as_json_and_csv(may, make_partner, runner):
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    may.commit()
    fuel = make_partner("fuel-api")  # a partner registered after May: no May statement
    assert fuel.client.request("GET", "/v1/statements").json() == {"statements": []}
    assert fuel.client.request("GET", "/v1/statements/2026-05").status == 404
    # Give the real fuel partner a key and read its statement through the API.
    from tests.conftest import new_key, public_pem, transport_for
    from partners.client import PartnerClient
    key = new_key("EdDSA")
    partner_service.add_key(may, "fuel", public_pem(key), now=day(2, month=6))
    may.commit()
    client = PartnerClient("", "fuel", key, transport=transport_for(current_app))
    listed = client.request("GET", "/v1/statements").json()["statements"]
    assert [(s["period"], s["net_cents"]) for s in listed] == [("2026-05", 853)]
    signed = client.request("GET", "/v1/statements/2026-05").json()
    assert signed["document"]["partner_id"] == "fuel" and signed["signature"]["alg"] == "EdDSA"
    assert signed["digest"] == listed[0]["digest"]
    csv = client.request("GET", "/v1/statements/2026-05?format=csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert "net_cents,853" in csv.body.decode() and "bakery,700,0" in csv.body.decode()
    assert client.request("GET", "/v1/statements/2026-05?format=pdfx").status == 422
    assert client.request("GET", "/v1/statements/2026-06").status == 404

    shown = runner.invoke(args=["settlement", "show", "2026-05"])
    assert shown.exit_code == 0
    view = json.loads(shown.output)
    assert view["document"]["operator_margin_cents"] == 126 and len(view["partners"]) == 3
    one = runner.invoke(args=["settlement", "show", "2026-05", "--partner", "bakery", "--format", "csv"])
    assert one.exit_code == 0 and "net_cents,-909" in one.output
    assert runner.invoke(args=["settlement", "show", "2026-07"]).exit_code == 1
    closed_again = runner.invoke(args=["settlement", "close", "2026-05"])
    assert closed_again.exit_code == 1 and json.loads(closed_again.output)["error"] == "period-closed"


def test_statement_as_pdf_over_the_api_and_the_cli(may, runner, tmp_path):
    from tests.conftest import new_key, public_pem, transport_for
    from partners.client import PartnerClient
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=UTC))
    key = new_key("EdDSA")
    partner_service.add_key(may, "fuel", public_pem(key), now=day(2, month=6))
    may.commit()
    client = PartnerClient("", "fuel", key, transport=transport_for(current_app))
    pdf = client.statement("2026-05", format="pdf")
    assert pdf.status == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.body.startswith(b"%PDF-")
    out = tmp_path / "fuel.pdf"
    result = runner.invoke(args=["settlement", "show", "2026-05", "--partner", "fuel",
                                 "--format", "pdf", "--out", str(out)])
    assert result.exit_code == 0 and json.loads(result.output)["written"] == str(out)
    assert out.read_bytes() == pdf.body  # the same statement renders to the same bytes
    assert runner.invoke(args=["settlement", "show", "2026-05", "--format", "pdf"]).exit_code == 1
