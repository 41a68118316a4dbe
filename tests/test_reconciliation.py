"""Reconciliation: fuel's own record of May against the coalition's, over the HTTP API.

Fuel's May in the `may` fixture: f1 earn 500, f2 burn 900, rf1 reversal of f1 500 (all member M1).
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from flask import current_app

from coalition.errors import PROBLEM_JSON, Problem
from partners import service as partner_service
from partners.client import PartnerClient
from settlement.reconciliation import reconcile
from tests.conftest import new_key, public_pem, transport_for
from tests.test_settlement import Book, close, day, may  # noqa: F401  (may is a fixture)

JUNE_2 = datetime(2026, 6, 2, tzinfo=timezone.utc)
PATH = "/v1/statements/2026-05/reconciliation"
FUEL_MAY = [
    {"claim_id": "f1", "kind": "earn", "points": 500, "member_id": "M1",
     "occurred_at": "2026-05-03T14:00:00+02:00"},
    {"claim_id": "f2", "kind": "burn", "points": 900, "member_id": "M1"},
    {"claim_id": "rf1", "kind": "reversal", "points": 500},
]
CSV_HEADER = "claim_id,kind,points,member_id,occurred_at\r\n"
FUEL_MAY_CSV = CSV_HEADER + "f1,earn,500,M1,2026-05-03T12:00:00Z\r\nf2,burn,900,M1,\r\nrf1,reversal,500,,\r\n"


@pytest.fixture
def fuel(may):
    """May closed; fuel holds a key and talks to the API."""
    close(may, "2026-05", JUNE_2)
    key = new_key("EdDSA")
    partner_service.add_key(may, "fuel", public_pem(key), now=day(2, month=6))
    may.commit()
    return PartnerClient("", "fuel", key, transport=transport_for(current_app))


def upload(client: PartnerClient, claims, path: str = PATH):
    return client.request("POST", path, {"claims": claims})


def upload_raw(client: PartnerClient, body: bytes | str, content_type: str, path: str = PATH):
    body = body.encode() if isinstance(body, str) else body
    headers = client.sign("POST", path, body)
    headers["Content-Type"] = content_type
    return client.transport("POST", path, headers, body)


def ok(response) -> dict:
    assert response.status == 200, response.body
    return response.json()


def problem(response, status: int, slug: str) -> dict:
    assert response.status == status, response.body
    assert response.headers["content-type"] == PROBLEM_JSON
    doc = response.json()
    assert doc["type"] == f"/problems/{slug}"
    return doc


def test_a_perfect_upload_matches_every_claim(fuel):
    result = ok(upload(fuel, FUEL_MAY))
    assert result == {
        "period": "2026-05", "partner_id": "fuel",
        "totals": {"coalition_claims": 3, "partner_claims": 3, "matched": 3, "mismatched": 0,
                   "missing_at_partner": 0, "missing_at_coalition": 0,
                   "coalition_points": {"earn": 500, "burn": 900, "reversal": 500},
                   "partner_points": {"earn": 500, "burn": 900, "reversal": 500}},
        "matched": ["f1", "f2", "rf1"], "mismatched": [],
        "missing_at_partner": [], "missing_at_coalition": [], "truncated": False}


def test_missing_extra_and_mismatched_claims(fuel, may):
    # After May closed: a claim of May arrives late (booked into June), and one of June itself.
    june = Book(may, now=day(3, month=6))
    june.earn("fuel", "f-late", "M2", 40, day(30))
    june.earn("fuel", "f-june", "M2", 60, day(2, month=6))
    claims = [
        {"claim_id": "f1", "kind": "earn", "points": 450, "member_id": "M1"},   # points differ
        {"claim_id": "f2", "kind": "earn", "points": 900, "member_id": "M2"},   # kind, member differ
        # rf1 left out: missing at the partner
        {"claim_id": "f-late", "kind": "earn", "points": 40, "occurred_at": "2026-05-30T12:00:00Z"},
        {"claim_id": "f-june", "kind": "earn", "points": 60},
        {"claim_id": "f-ghost", "kind": "burn", "points": 7, "member_id": "M1"},
    ]
    result = ok(upload(fuel, claims))
    assert result["totals"] == {
        "coalition_claims": 3, "partner_claims": 5, "matched": 0, "mismatched": 2,
        "missing_at_partner": 1, "missing_at_coalition": 3,
        "coalition_points": {"earn": 500, "burn": 900, "reversal": 500},
        "partner_points": {"earn": 450 + 900 + 40 + 60, "burn": 7, "reversal": 0}}
    assert result["matched"] == []
    assert result["mismatched"] == [
        {"claim_id": "f1", "differences": [{"field": "points", "ours": 500, "theirs": 450}]},
        {"claim_id": "f2", "differences": [{"field": "kind", "ours": "burn", "theirs": "earn"},
                                           {"field": "member_id", "ours": "M1", "theirs": "M2"}]}]
    assert result["missing_at_partner"] == [
        {"claim_id": "rf1", "kind": "reversal", "points": 500, "member_id": "M1",
         "occurred_at": "2026-05-13T12:00:00Z", "late": False, "reverses": "f1"}]
    assert result["missing_at_coalition"] == [  # sorted by claim_id
        {"claim_id": "f-ghost", "kind": "burn", "points": 7, "member_id": "M1", "booked_in": None},
        {"claim_id": "f-june", "kind": "earn", "points": 60, "booked_in": "2026-06"},
        {"claim_id": "f-late", "kind": "earn", "points": 40, "occurred_at": "2026-05-30T12:00:00Z",
         "booked_in": "2026-06"}]


def test_a_member_id_left_out_is_not_compared(fuel):
    claims = [{k: v for k, v in c.items() if k != "member_id"} for c in FUEL_MAY]
    assert ok(upload(fuel, claims))["matched"] == ["f1", "f2", "rf1"]


def test_the_same_by_csv(fuel, may):
    assert ok(upload_raw(fuel, FUEL_MAY_CSV, "text/csv")) == ok(upload(fuel, FUEL_MAY))
    # Columns in any order, a byte order mark, charset=utf-8, a blank line; one of each outcome.
    Book(may, now=day(3, month=6)).earn("fuel", "f-late", "M2", 40, day(30))
    body = "\ufeffpoints,kind,claim_id\n450,earn,f1\n900,earn,f2\n\n40,earn,f-late\n"
    result = ok(upload_raw(fuel, body, "text/csv; charset=utf-8"))
    assert result["totals"]["partner_points"] == {"earn": 1390, "burn": 0, "reversal": 0}
    assert [m["claim_id"] for m in result["mismatched"]] == ["f1", "f2"]
    assert result["mismatched"][1]["differences"] == [{"field": "kind", "ours": "burn", "theirs": "earn"}]
    assert [m["claim_id"] for m in result["missing_at_partner"]] == ["rf1"]
    assert result["missing_at_coalition"] == [
        {"claim_id": "f-late", "kind": "earn", "points": 40, "booked_in": "2026-06"}]


def test_another_partners_claims_never_show(fuel):
    # e1 and e3 are bakery's May claims: for fuel they do not exist, in May or any other month.
    claims = FUEL_MAY + [{"claim_id": "e1", "kind": "earn", "points": 1000, "member_id": "M1"},
                         {"claim_id": "e3", "kind": "burn", "points": 101}]
    result = ok(upload(fuel, claims))
    assert result["matched"] == ["f1", "f2", "rf1"] and result["missing_at_partner"] == []
    assert [(c["claim_id"], c["booked_in"]) for c in result["missing_at_coalition"]] == [
        ("e1", None), ("e3", None)]
    assert result["totals"]["coalition_claims"] == 3
    assert result["totals"]["coalition_points"] == {"earn": 500, "burn": 900, "reversal": 500}
    # An empty upload shows fuel's three claims and nothing of bakery's or books'.
    empty = ok(upload(fuel, []))
    assert [c["claim_id"] for c in empty["missing_at_partner"]] == ["f1", "f2", "rf1"]


def test_the_domain_function_without_flask(fuel, may):
    records = [{"claim_id": "f2", "kind": "burn", "points": 900}]
    result = reconcile(may, "books", "2026-05", records)
    assert result["missing_at_coalition"] == [{**records[0], "booked_in": None}]  # f2 is fuel's
    assert [c["claim_id"] for c in result["missing_at_partner"]] == ["b1", "k1", "rk1"]
    assert result["missing_at_partner"][2]["reverses"] == "k1"


@pytest.mark.parametrize("claims, pointer", [
    (FUEL_MAY + [{"claim_id": "f1", "kind": "earn", "points": 500}], "/claims/3/claim_id"),
    ([{"claim_id": "f1", "kind": "earn", "points": "500"}], "/claims/0/points"),
    ([{"claim_id": "f1", "kind": "earn", "points": 500.0}], "/claims/0/points"),
    ([{"claim_id": "f1", "kind": "earn", "points": 0}], "/claims/0/points"),
    ([{"claim_id": "f1", "kind": "earn", "points": 500, "amount": 5}], "/claims/0/amount"),
    ([{"claim_id": "f1", "kind": "refund", "points": 500}], "/claims/0/kind"),
    ([{"claim_id": "f 1", "kind": "earn", "points": 500}], "/claims/0/claim_id"),
    ([FUEL_MAY[0], {"claim_id": "f2", "kind": "burn", "points": 9, "member_id": ""}], "/claims/1/member_id"),
    ([{"claim_id": "f1", "kind": "earn", "points": 5, "occurred_at": "2026-05-03"}], "/claims/0/occurred_at"),
    ([{"kind": "earn", "points": 500}], "/claims/0/claim_id"),
    ([42], "/claims/0"),
    ("f1", "/claims"),
])
def test_json_validation_errors_point_at_the_field(fuel, claims, pointer):
    doc = problem(upload(fuel, claims), 422, "validation-error")
    assert pointer in [e["pointer"] for e in doc["errors"]], doc


def test_duplicates_name_the_first_occurrence(fuel):
    doc = problem(upload(fuel, FUEL_MAY + [FUEL_MAY[1]]), 422, "validation-error")
    assert doc["errors"] == [{"pointer": "/claims/3/claim_id", "detail": "Duplicate claim_id, first at /claims/1."}]


def test_json_body_problems(fuel):
    problem(fuel.request("POST", PATH, {"records": []}), 422, "validation-error")  # unknown, and no claims
    problem(upload_raw(fuel, b'{"claims": [], "claims": []}', "application/json"), 400, "malformed-request")
    problem(upload_raw(fuel, b"[]", "application/json"), 400, "malformed-request")


@pytest.mark.parametrize("body, pointer", [
    (CSV_HEADER + "f1,earn,five hundred,M1,\r\n", "/claims/0/points"),
    (CSV_HEADER + "f1,earn,500,M1,\r\nf2,burn,1e3,M1,\r\n", "/claims/1/points"),
    (CSV_HEADER + "f1,earn,500,M1,\r\nf2,burn,0900,M1,\r\n", "/claims/1/points"),
    (CSV_HEADER + "f1,earn,500,M1,\r\nf2,burn,900,M1,\r\nrf1,undo,500,,\r\n", "/claims/2/kind"),
    (CSV_HEADER + "f1,earn,500,M1,yesterday\r\n", "/claims/0/occurred_at"),
    (CSV_HEADER + "f1,earn,500,M1,\r\nf1,earn,500,M1,\r\n", "/claims/1/claim_id"),
    (CSV_HEADER + ",earn,500,M1,\r\n", "/claims/0/claim_id"),
    (CSV_HEADER + "f1,earn,500\r\n", "/claims/0"),
])
def test_csv_validation_errors_point_at_the_data_row(fuel, body, pointer):
    doc = problem(upload_raw(fuel, body, "text/csv"), 422, "validation-error")
    assert [e["pointer"] for e in doc["errors"]] == [pointer], doc


@pytest.mark.parametrize("body", [
    b"",                                                      # no header at all
    b"\n\n",
    b"id,kind,points\nf1,earn,500\n",                         # claim_id column missing
    b"claim_id,kind\nf1,earn\n",                              # points column missing
    b"f1,earn,500\n",                                         # a data row where the header belongs
    b"claim_id,kind,points,amount\nf1,earn,500,5\n",          # unknown column
    b"claim_id,kind,points,points\nf1,earn,500,500\n",        # a column twice
    "claim_id,kind,points,member_id\nf1,earn,500,Müller\n".encode("latin-1"),  # not UTF-8
    b'claim_id,kind,points\n"f1,earn,500\n',                  # unterminated quote
])
def test_unreadable_csv_is_malformed(fuel, body):
    problem(upload_raw(fuel, body, "text/csv"), 400, "malformed-request")


def test_other_media_types_are_415(fuel):
    problem(upload_raw(fuel, FUEL_MAY_CSV, "text/plain"), 415, "unsupported-media-type")
    problem(upload_raw(fuel, FUEL_MAY_CSV.encode("utf-16"), "text/csv; charset=utf-16"),
            415, "unsupported-media-type")
    problem(upload_raw(fuel, b"", "application/x-www-form-urlencoded"), 415, "unsupported-media-type")


def test_only_a_closed_month_can_be_reconciled(fuel):
    doc = problem(upload(fuel, FUEL_MAY, path="/v1/statements/2026-06/reconciliation"), 409, "period-open")
    assert "2026-06" in doc["detail"]
    problem(upload(fuel, FUEL_MAY, path="/v1/statements/2026-13/reconciliation"), 422, "validation-error")
    problem(upload(fuel, FUEL_MAY, path="/v1/statements/May/reconciliation"), 422, "validation-error")


def test_an_open_may_is_409_before_close(may):
    with pytest.raises(Problem) as exc:
        reconcile(may, "fuel", "2026-05", [])
    assert exc.value.slug == "period-open"


def test_the_upload_is_bounded(fuel):
    rows = "".join(f"c{i},earn,1\n" for i in range(100_001))
    body = "claim_id,kind,points\n" + rows
    problem(upload_raw(fuel, body, "text/csv"), 413, "payload-too-large")  # 1 MiB by default
    current_app.config["MAX_CONTENT_LENGTH"] = 4 * 1024 * 1024
    doc = problem(upload_raw(fuel, body, "text/csv"), 422, "validation-error")
    assert doc["errors"] == [{"pointer": "/claims", "detail": "At most 100000 claims per upload."}]


def test_unauthenticated_uploads_are_401(fuel):
    client = current_app.test_client()
    r = client.post(PATH, data=FUEL_MAY_CSV, content_type="text/csv")
    assert r.status_code == 401 and r.mimetype == PROBLEM_JSON


def test_documented_in_openapi(app):
    spec = app.test_client().get("/openapi.json").get_json()
    op = spec["paths"]["/v1/statements/{period}/reconciliation"]["post"]
    assert set(op["requestBody"]["content"]) == {"application/json", "text/csv"}
    assert op["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReconciliationUpload"}
    record = spec["components"]["schemas"]["ReconciliationRecord"]
    assert set(record["required"]) == {"claim_id", "kind", "points"}
    assert record["additionalProperties"] is False
    assert op["security"] == [{"partnerToken": []}]
    slugs = {status: r["description"] for status, r in op["responses"].items()}
    assert "`period-open`" in slugs["409"] and "`validation-error`" in slugs["422"]
    assert "`unsupported-media-type`" in slugs["415"] and "`payload-too-large`" in slugs["413"]
    result = spec["components"]["schemas"]["Reconciliation"]
    assert set(result["required"]) == {"period", "partner_id", "totals", "matched", "mismatched",
                                       "missing_at_partner", "missing_at_coalition", "truncated"}
