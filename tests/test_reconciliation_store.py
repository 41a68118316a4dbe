"""Kept reconciliations (settlement/reconciliation.py, store): every answer of
POST /v1/statements/{period}/reconciliation is stored with its upload's SHA-256 and size and its
counts, in the request's transaction; the partner lists its own (GET .../reconciliations); the
console lists a month's of every partner to every operator, an operator's own upload kept as
operator:<name>; a member's erasure takes the card out of the kept answers, an export lists them.

Fuel's May (tests/test_settlement.py, `may`): f1 earn 500, f2 burn 900, rf1 reversal of f1 500,
all member M1.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import threading

import flask_migrate
import pytest
from flask import current_app
from sqlalchemy import inspect, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from coalition import clock, member_erasure, member_export
from coalition.database import db
from settlement import reconciliation
from settlement.models import Reconciliation, ReconciliationCard
from tests.browser.support import csrf_of
from tests.conftest import await_lock_wait, postgres_only
from tests.test_reconciliation import FUEL_MAY, FUEL_MAY_CSV, fuel, ok, problem, upload, upload_raw  # noqa: F401
from tests.test_settlement import may  # noqa: F401  (a fixture)
from tests.test_web_console_settlement import MAY, ada, ann, booked, close_may, text_of  # noqa: F401

LIST = "/v1/statements/2026-05/reconciliations"
ANSWER_KEYS = {"period", "partner_id", "totals", "matched", "mismatched", "missing_at_partner",
               "missing_at_coalition", "truncated"}
# Every card in the lists: rf1 (member M1) left out, f2's member differs (M1 ours, M2 theirs),
# and a claim the coalition never saw names M1.
NAMING_M1 = [
    {"claim_id": "f1", "kind": "earn", "points": 500, "member_id": "M1"},
    {"claim_id": "f2", "kind": "burn", "points": 900, "member_id": "M2"},
    {"claim_id": "f-ghost", "kind": "earn", "points": 7, "member_id": "M1"},
]


def kept(session) -> list[Reconciliation]:
    session.expire_all()
    return list(session.scalars(select(Reconciliation).order_by(Reconciliation.id)))


def test_json_and_csv_uploads_are_kept_with_their_summary_and_the_answer_unchanged(fuel, may):
    body = json.dumps({"claims": FUEL_MAY[:2]}).encode()
    first = ok(upload_raw(fuel, body, "application/json"))
    assert set(first) == ANSWER_KEYS  # the contract: nothing added
    second = ok(upload_raw(fuel, FUEL_MAY_CSV, "text/csv; charset=utf-8"))
    rows = kept(may)
    assert [(r.partner_id, r.period, r.format, r.uploaded_by) for r in rows] == [
        ("fuel", "2026-05", "json", "partner:fuel"), ("fuel", "2026-05", "csv", "partner:fuel")]
    assert rows[0].input_sha256 == hashlib.sha256(body).hexdigest()
    assert rows[0].input_bytes == len(body)
    assert rows[1].input_sha256 == hashlib.sha256(FUEL_MAY_CSV.encode()).hexdigest()
    assert [(r.coalition_claims, r.partner_claims, r.matched, r.mismatched, r.missing_at_partner,
             r.missing_at_coalition, r.truncated) for r in rows] == [
        (3, 2, 2, 0, 1, 0, False), (3, 3, 3, 0, 0, 0, False)]
    # The answer as the partner got it, instants as it wrote them.
    assert json.loads(rows[0].result) == first and json.loads(rows[1].result) == second
    assert clock.as_utc(rows[0].uploaded_at) <= clock.now()


def test_a_refused_upload_keeps_nothing(fuel, may):
    problem(upload(fuel, FUEL_MAY + [FUEL_MAY[0]]), 422, "validation-error")  # a duplicate
    problem(upload(fuel, FUEL_MAY, path="/v1/statements/2026-06/reconciliation"), 409, "period-open")
    assert kept(may) == []


def test_an_answer_that_cannot_be_kept_is_not_given(fuel, may, monkeypatch):
    """Store or fail: the database failing at the insert answers 503 unavailable, as any
    database failure does, and nothing is kept; the partner retries."""
    def failing(session, result, **kwargs):
        raise OperationalError("INSERT INTO reconciliations", {}, Exception("connection lost"))
    monkeypatch.setattr(reconciliation, "store", failing)
    from settlement import reconciliation_input
    monkeypatch.setattr(reconciliation_input, "store", failing)
    problem(upload(fuel, FUEL_MAY), 503, "unavailable")
    assert kept(may) == []


def test_the_partner_lists_its_own_kept_reconciliations_newest_first(fuel, may, acme):
    for claims in (FUEL_MAY, FUEL_MAY[:1], FUEL_MAY[:2]):
        ok(upload(fuel, claims))
    listed = ok(fuel.request("GET", LIST))
    assert [r["totals"]["partner_claims"] for r in listed["reconciliations"]] == [2, 1, 3]
    assert listed["next_cursor"] is None
    newest = listed["reconciliations"][0]
    row = kept(may)[-1]
    assert newest == {
        "reconciliation_id": row.id, "period": "2026-05", "partner_id": "fuel",
        "uploaded_at": clock.iso_utc(row.uploaded_at), "uploaded_by": "partner:fuel",
        "format": "json", "input_sha256": row.input_sha256, "input_bytes": row.input_bytes,
        "totals": {"coalition_claims": 3, "partner_claims": 2, "matched": 2, "mismatched": 0,
                   "missing_at_partner": 1, "missing_at_coalition": 0},
        "truncated": False}
    # Pages of one, following next_cursor to the end.
    seen, path = [], LIST + "?limit=1"
    while path:
        page = ok(fuel.request("GET", path))
        seen += [r["reconciliation_id"] for r in page["reconciliations"]]
        path = LIST + f"?limit=1&cursor={page['next_cursor']}" if page["next_cursor"] else None
    assert seen == [r["reconciliation_id"] for r in listed["reconciliations"]]
    # Only the caller's: another partner sees none of fuel's.
    assert ok(acme.client.request("GET", LIST)) == {"reconciliations": [], "next_cursor": None}
    assert ok(fuel.request("GET", "/v1/statements/2026-06/reconciliations"))["reconciliations"] == []
    problem(fuel.request("GET", "/v1/statements/2026-5/reconciliations"), 404, "not-found")
    problem(fuel.request("GET", LIST + "?limit=0"), 422, "validation-error")
    problem(fuel.request("GET", LIST + "?cursor=nonsense"), 422, "validation-error")


def record_upload(client, page, partner: str, record: str):
    return client.post(f"/console/settlement/{MAY}/reconciliation", data={
        "csrf_token": csrf_of(page.get_data(as_text=True)), "partner_id": partner,
        "records": (io.BytesIO(record.encode()), "record.csv")}, content_type="multipart/form-data")


def test_the_console_lists_every_partners_kept_reconciliations_to_every_operator(app, booked, ada, ann):
    close_may(ada)
    ok(booked["fuel"].request("POST", f"/v1/statements/{MAY}/reconciliation",
                              {"claims": [{"claim_id": "f1", "kind": "earn", "points": 500}]}))
    page = ann.get(f"/console/settlement/{MAY}/reconciliation")
    answer = record_upload(ann, page, "bakery", "claim_id,kind,points\ne1,earn,1000\ne3,burn,100\n")
    assert "Gespeichert als Abgleich" in text_of(answer)
    with app.app_context():
        rows = kept(db.session)
    assert [(r.partner_id, r.uploaded_by, r.format) for r in rows] == [
        ("fuel", "partner:fuel", "json"), ("bakery", "operator:ann", "csv")]
    fuel_id, bakery_id = rows[0].id, rows[1].id

    assert f"/console/settlement/{MAY}/reconciliations" in ada.get(f"/console/settlement/{MAY}").get_data(as_text=True)
    for operator in (ann, ada):  # analyst and admin alike
        listing = operator.get(f"/console/settlement/{MAY}/reconciliations")
        html = listing.get_data(as_text=True)
        assert html.index(f'id="reconciliation-{bakery_id}"') < html.index(f'id="reconciliation-{fuel_id}"')
        text = text_of(listing)
        assert "Bakery" in text and "Fuel" in text and "operator:ann" in text and "partner:fuel" in text
        bakery_row = html[html.index(f'id="reconciliation-{bakery_id}"'):html.index(f'id="reconciliation-{fuel_id}"')]
        assert re.search(r'data-figure="mismatched">1<', bakery_row)  # e3 burned 101, not 100
        assert re.search(r'data-figure="matched">1<', bakery_row)
        view = operator.get(f"/console/settlement/{MAY}/reconciliations/{bakery_id}")
        assert "e3 points 101 100" in text_of(view)
        assert f'href="/console/settlement/{MAY}/reconciliations/{fuel_id}"' in html
    # Another month's id, and an unknown one, are not found.
    assert ann.get(f"/console/settlement/2026-04/reconciliations/{bakery_id}").status_code == 404
    assert ann.get(f"/console/settlement/{MAY}/reconciliations/999999").status_code == 404
    assert ann.get(f"/console/settlement/{MAY}/reconciliations/{2**64}").status_code == 404
    assert "Für diesen Monat wurde noch kein Abgleich ausgeführt." in text_of(
        ann.get("/console/settlement/2026-04/reconciliations"))
    # Signed out: the sign-in page, not the list.
    assert app.test_client().get(f"/console/settlement/{MAY}/reconciliations").status_code in (302, 401, 403)


def test_the_console_pages_the_list(app, booked, ada, ann, monkeypatch):
    from web import console_settlement
    monkeypatch.setattr(console_settlement, "STORED_PAGE", 2)
    close_may(ada)
    for points in (1, 2, 3):
        ok(booked["fuel"].request("POST", f"/v1/statements/{MAY}/reconciliation",
                                  {"claims": [{"claim_id": "f1", "kind": "earn", "points": points}]}))
    first = ann.get(f"/console/settlement/{MAY}/reconciliations").get_data(as_text=True)
    ids = re.findall(r'id="reconciliation-(\d+)"', first)
    older = re.search(r'<a href="([^"]+before=[^"]+)">', first).group(1).replace("&amp;", "&")
    rest = re.findall(r'id="reconciliation-(\d+)"', ann.get(older).get_data(as_text=True))
    assert len(ids) == 2 and len(rest) == 1 and int(ids[1]) > int(rest[0])


def test_erasure_takes_the_card_out_of_kept_answers_and_an_export_lists_them(fuel, may):
    answer = ok(upload(fuel, NAMING_M1))
    assert answer["missing_at_partner"][0]["member_id"] == "M1"  # rf1
    ok(upload(fuel, [{"claim_id": "f1", "kind": "earn", "points": 500}]))  # f2, rf1 missing: M1
    ok(upload(fuel, FUEL_MAY))  # names no card: every claim matches
    hooks = current_app.extensions
    exported = member_export.export(may, "M1", now=clock.now(), tz="Europe/Berlin", actor="ops",
                                    more=hooks["member_data"])
    assert [(r["partner_id"], r["period"], r["claims"]) for r in exported["reconciliations"]] == [
        ("fuel", "2026-05", ["f-ghost", "f2", "rf1"]), ("fuel", "2026-05", ["f2", "rf1"])]
    assert "uploaded_by" not in exported["reconciliations"][0]
    may.commit()

    done = member_erasure.erase(may, "M1", now=clock.now(), actor="ops", more=hooks["member_erasure"])
    may.commit()
    assert done["reconciliation_cards_deleted"] == 2
    rows = kept(may)
    assert all('"M1"' not in row.result for row in rows)
    result = json.loads(rows[0].result)
    assert result["missing_at_partner"][0] == {**answer["missing_at_partner"][0], "member_id": None}
    ghost = result["missing_at_coalition"][0]
    assert ghost["claim_id"] == "f-ghost" and "member_id" not in ghost
    assert result["mismatched"] == [{"claim_id": "f2", "differences": [
        {"field": "member_id", "ours": None, "theirs": "M2"}]}]  # M2's card stays: not erased
    assert result["totals"] == answer["totals"] and result["matched"] == answer["matched"]
    hashes = set(may.scalars(select(ReconciliationCard.card_hash)))
    assert reconciliation.card_hash("M1") not in hashes and reconciliation.card_hash("M2") in hashes
    # M2's export still finds its answer.
    assert [r["claims"] for r in member_export.export(
        may, "M2", now=clock.now(), tz="Europe/Berlin", actor="ops",
        more=hooks["member_data"])["reconciliations"]] == [["f2"]]


@postgres_only
def test_two_erasures_of_cards_in_one_kept_answer_both_take_effect(app, fuel, may):
    """Erasing M2 while M1's erasure is uncommitted waits for it and then rewrites the answer as
    M1's erasure left it: neither card comes back."""
    ok(upload(fuel, NAMING_M1))  # names M1 and M2
    hooks = current_app.extensions["member_erasure"]
    done = {}

    def erase_m2():
        with app.app_context():
            with Session(db.engine) as second:
                done["m2"] = member_erasure.erase(second, "M2", now=clock.now(), actor="ops", more=hooks)
                second.commit()

    with Session(db.engine) as first:
        member_erasure.erase(first, "M1", now=clock.now(), actor="ops", more=hooks)
        thread = threading.Thread(target=erase_m2, daemon=True)
        thread.start()
        try:
            await_lock_wait(db.engine, still_running=thread.is_alive)
        finally:
            first.commit()
    thread.join(30)
    assert not thread.is_alive() and done["m2"]["reconciliation_cards_deleted"] == 1
    result = kept(may)[0].result
    assert '"M1"' not in result and '"M2"' not in result
    assert may.scalars(select(ReconciliationCard)).all() == []


def test_the_migration_downgrades_to_0022_and_upgrades_again(app):
    with app.app_context():
        flask_migrate.downgrade(revision="0022")
        tables = set(inspect(db.engine).get_table_names())
        assert not tables & {"reconciliations", "reconciliation_cards"}
        flask_migrate.upgrade()
        db.session.remove()
        tables = set(inspect(db.engine).get_table_names())
        assert {"reconciliations", "reconciliation_cards"} <= tables
