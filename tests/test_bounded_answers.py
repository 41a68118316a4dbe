"""Answers are bounded whatever the input (issue 14, finding 4): a 300 KB reconciliation upload of
empty objects once answered a 25 MB list of errors.

A problem lists at most MAX_LISTED_ERRORS errors, `errors_total` counts them all, and no text
taken from the input runs longer than MAX_TEXT characters; a reconciliation names at most
MAX_LISTED claims per list, its totals count them all, and `truncated` says when a list is cut."""
from __future__ import annotations

import json

import pytest

from coalition.errors import MAX_LISTED_ERRORS, MAX_TEXT, Problem
from settlement import reconciliation
from settlement.schemas import MAX_LISTED
from tests.adversarial_bodies import ENDPOINTS, shapes_for
from tests.test_reconciliation import FUEL_MAY, fuel, ok, problem, upload, upload_raw  # noqa: F401
from tests.test_settlement import may  # noqa: F401  (a fixture)
from tests.test_validation import assert_problem, earn_body, encode, send, shop  # noqa: F401

MIB = 1024 * 1024
# Bytes: at most 100 errors of at most 2 x 200 characters, and the rest. The inputs here are
# ASCII; escaped non-ASCII text takes up to 12 bytes a character (\uXXXX twice), still bounded.
PROBLEM_BOUND = MAX_LISTED_ERRORS * (2 * MAX_TEXT + 64) + 1024


def test_300_kb_of_empty_records_answers_a_bounded_problem(fuel):
    body = b'{"claims":[' + b",".join([b"{}"] * 100_000) + b"]}"
    assert len(body) > 300_000
    r = upload_raw(fuel, body, "application/json")
    doc = problem(r, 422, "validation-error")
    assert len(r.body) < PROBLEM_BOUND
    assert doc["errors_total"] == 300_000  # claim_id, kind and points missing from each
    assert len(doc["errors"]) == MAX_LISTED_ERRORS
    assert doc["errors"][:3] == [{"pointer": f"/claims/0/{name}", "detail": "Missing data for required field."}
                                 for name in ("claim_id", "kind", "points")]
    assert f"The first {MAX_LISTED_ERRORS} of 300000 errors are listed." in doc["detail"]


def test_a_short_list_of_errors_is_whole_and_counted(fuel):
    doc = problem(upload(fuel, [{}]), 422, "validation-error")
    assert doc["errors_total"] == len(doc["errors"]) == 3
    assert "listed" not in doc["detail"]


def test_csv_rows_of_the_wrong_length_are_counted_not_all_listed(fuel):
    body = "claim_id,kind,points\n" + "a\n" * 50_000
    r = upload_raw(fuel, body, "text/csv")
    doc = problem(r, 422, "validation-error")
    assert (doc["errors_total"], len(doc["errors"])) == (50_000, MAX_LISTED_ERRORS)
    assert len(r.body) < PROBLEM_BOUND


def test_many_unknown_fields_answer_a_bounded_problem(app, shop):
    raw = encode(earn_body())[:-1] + b"".join(b',"k%d":0' % i for i in range(60_000)) + b"}"
    r = send(app, shop, "POST", "/v1/earn", raw)
    doc = assert_problem(r, 422, "validation-error")
    assert doc["errors_total"] == 60_000 and len(doc["errors"]) == MAX_LISTED_ERRORS
    assert len(r.get_data()) < PROBLEM_BOUND


def test_input_text_in_a_problem_is_clipped(app, shop):
    key = "k" * (MIB // 4)
    r = send(app, shop, "POST", "/v1/earn", encode({**earn_body(), key: 1}))
    doc = assert_problem(r, 422, "validation-error")
    pointer = doc["errors"][0]["pointer"]
    assert len(pointer) == MAX_TEXT and pointer.startswith("/kkk") and pointer.endswith("...")
    duplicate = send(app, shop, "POST", "/v1/earn", b'{"%s":1,"%s":2}' % (key.encode(), key.encode()))
    doc = assert_problem(duplicate, 400, "malformed-request")
    assert len(duplicate.get_data()) < 2 * 1024 and doc["detail"].endswith("...")


def test_the_problem_body_caps_whatever_raises_it():
    errors = [{"pointer": f"/x/{i}", "detail": "d" * 1000} for i in range(250)]
    doc = Problem("validation-error", "Bad.", errors=errors).body()
    assert doc["errors_total"] == 250 and len(doc["errors"]) == MAX_LISTED_ERRORS
    assert doc["errors"][0] == {"pointer": "/x/0", "detail": "d" * (MAX_TEXT - 3) + "..."}
    assert len(json.dumps(doc)) < PROBLEM_BOUND


def test_a_reconciliation_names_at_most_max_listed_claims_per_list(fuel):
    unknown = [{"claim_id": f"x{i:05d}", "kind": "earn", "points": 1} for i in range(MAX_LISTED + 500)]
    r = upload(fuel, FUEL_MAY + unknown)
    result = ok(r)
    assert result["totals"]["missing_at_coalition"] == MAX_LISTED + 500
    assert result["totals"]["matched"] == 3 and result["matched"] == ["f1", "f2", "rf1"]
    listed = result["missing_at_coalition"]
    assert [c["claim_id"] for c in listed] == [f"x{i:05d}" for i in range(MAX_LISTED)]
    assert all(c["booked_in"] is None for c in listed)
    assert result["truncated"] is True
    assert len(r.body) < 200 * MAX_LISTED


@pytest.mark.parametrize("upload_ids, listed", [
    ([], "missing_at_partner"),                  # the coalition's f1, f2, rf1 are missing here
    (["f1", "f2", "rf1"], "matched"),
])
def test_every_list_is_cut_and_its_total_kept(fuel, monkeypatch, upload_ids, listed):
    monkeypatch.setattr(reconciliation, "MAX_LISTED", 2)
    claims = [c for c in FUEL_MAY if c["claim_id"] in upload_ids]
    result = ok(upload(fuel, claims))
    assert result["totals"][listed] == 3 and len(result[listed]) == 2
    assert result["truncated"] is True


def test_mismatches_are_cut_too(fuel, monkeypatch):
    monkeypatch.setattr(reconciliation, "MAX_LISTED", 1)
    result = ok(upload(fuel, [{**c, "points": c["points"] + 1} for c in FUEL_MAY]))
    assert result["totals"]["mismatched"] == 3 and [m["claim_id"] for m in result["mismatched"]] == ["f1"]
    assert result["truncated"] is True


def test_an_answer_within_every_limit_is_not_truncated(fuel):
    assert ok(upload(fuel, FUEL_MAY))["truncated"] is False


UPLOAD_SHAPES = [(e, name) for e in ENDPOINTS if e.name.startswith("reconciliation")
                 for name in shapes_for(e)]


@pytest.mark.parametrize("endpoint, shape", UPLOAD_SHAPES, ids=[f"{e.name}-{n}" for e, n in UPLOAD_SHAPES])
def test_no_adversarial_upload_gets_a_large_answer(fuel, endpoint, shape):
    """Every shape of tests/adversarial_bodies.py at 300 KB (the most records the claim limit
    lets through) and at the 1 MiB limit: problems stay small, results within the list caps."""
    for size in (300_000, MIB):  # two uploads: the route allows 10 a minute
        r = upload_raw(fuel, shapes_for(endpoint)[shape](endpoint, size), endpoint.media_type)
        assert r.status in (200, 400, 422), (size, r.status, r.body[:500])
        bound = PROBLEM_BOUND if r.status >= 400 else 400 * MAX_LISTED
        assert len(r.body) < bound, (size, r.status, len(r.body))
