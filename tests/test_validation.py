"""Strict input (docs/partner-api.md, sections 9 and 10): every rejected request is a
problem+json document with the contract's slug, 422s point at the offending field, and nothing
reaches the ledger."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from coalition.database import db
from coalition.errors import SLUGS
from coalition.fields import ID_PATTERN
from coalition.models import Entry, Lot
from tests.conftest import ago

PROBLEM_JSON = "application/problem+json"
MIB = 1024 * 1024
DROP = object()  # marks a field to leave out of a body
REVERSAL_PATH = "/v1/claims/c0/reversals"


# --- helpers ------------------------------------------------------------------------------

def encode(doc) -> bytes:
    """Compact UTF-8 JSON; a lone surrogate (not UTF-8 encodable) goes out as a \\ud800 escape."""
    try:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(doc, separators=(",", ":")).encode("ascii")


def send(app, partner, method: str, path: str, raw: bytes = b"",
         content_type: str | None = "application/json"):
    """A correctly signed request carrying exactly `raw`, through the Flask test client."""
    headers = partner.client.sign(method, path, raw)
    headers.pop("Content-Type", None)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return app.test_client().open(path, method=method, data=raw, headers=headers)


def post(app, partner, path: str, doc) -> object:
    return send(app, partner, "POST", path, encode(doc))


def with_literal(doc: dict, field: str, literal: bytes) -> bytes:
    """`doc` as JSON with `field` set to a raw JSON literal (NaN, 1e3, 400 digits...)."""
    marker = "\u0001placeholder\u0001"
    return encode({**doc, field: marker}).replace(encode(marker), literal)


def earn_body(**fields) -> dict:
    doc = {"claim_id": "c1", "member_id": "M1", "points": 100, "occurred_at": ago(minutes=1)}
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not DROP}


def burn_body(**fields) -> dict:
    return earn_body(**{"claim_id": "b1", **fields})


def reversal_body(**fields) -> dict:
    doc = {"reversal_id": "r1", "points": 10, "occurred_at": ago(seconds=30)}
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not DROP}


BODIES = {"/v1/earn": earn_body, "/v1/burn": burn_body, REVERSAL_PATH: reversal_body}


def assert_problem(r, status: int, slug: str, pointer: str | None = None) -> dict:
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == PROBLEM_JSON
    doc = json.loads(r.get_data())
    assert doc["type"].rsplit("/", 1)[-1] == slug
    assert doc["status"] == status and doc["title"] and doc["detail"]
    assert "Traceback" not in r.get_data(as_text=True)
    if status == 422 and slug == "validation-error":
        assert doc["errors"], doc
        assert all(set(e) == {"pointer", "detail"} for e in doc["errors"])
    if pointer is not None:
        assert pointer in [e["pointer"] for e in doc["errors"]], doc
    return doc


def ledger_rows(app) -> tuple[int, int]:
    with app.app_context():
        entries = db.session.scalar(select(func.count()).select_from(Entry))
        lots = db.session.scalar(select(func.count()).select_from(Lot))
        db.session.rollback()
    return entries, lots


@pytest.fixture
def shop(app, acme):
    """acme with member M1 holding 1,000 points from claim c0; the ledger state is recorded."""
    assert acme.client.enrol("M1").status == 201
    assert acme.client.earn("c0", "M1", 1000, occurred_at=ago(minutes=5)).status == 201
    acme.before = ledger_rows(app)
    return acme


def assert_nothing_booked(app, partner) -> None:
    assert ledger_rows(app) == partner.before


def assert_booked(r, app, partner, entries: int = 1) -> dict:
    assert r.status_code == 201, r.get_data(as_text=True)
    assert r.mimetype == "application/json"
    assert ledger_rows(app)[0] == partner.before[0] + entries
    return r.get_json()


# --- points -------------------------------------------------------------------------------

BAD_POINTS = [
    pytest.param(b'"100"', id="string"),
    pytest.param(b"100.5", id="fraction"),
    pytest.param(b"100.0", id="float-integral"),
    pytest.param(b"1e3", id="exponent"),
    pytest.param(b"1E2", id="exponent-upper"),
    pytest.param(b"1e400", id="float-overflow"),
    pytest.param(b"true", id="true"),
    pytest.param(b"false", id="false"),
    pytest.param(b"null", id="null"),
    pytest.param(b"NaN", id="nan"),
    pytest.param(b"Infinity", id="infinity"),
    pytest.param(b"-Infinity", id="minus-infinity"),
    pytest.param(b"-1", id="negative"),
    pytest.param(b"0", id="zero"),
    pytest.param(b"-0", id="minus-zero"),
    pytest.param(b"1000000001", id="over-max"),
    pytest.param(b"99999999999999999999", id="20-digits"),
    pytest.param(b"9" * 400, id="400-digits"),
    pytest.param(b"-" + b"9" * 400, id="minus-400-digits"),
    pytest.param(b"1" * 5000, id="5000-digits"),  # beyond Python's int() string limit
    pytest.param(b"[100]", id="array"),
    pytest.param(b'{"value":100}', id="object"),
]


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize("literal", BAD_POINTS)
def test_points_must_be_an_integer_in_range(app, shop, path, literal):
    r = send(app, shop, "POST", path, with_literal(BODIES[path](), "points", literal))
    assert_problem(r, 422, "validation-error", "/points")
    assert_nothing_booked(app, shop)


@pytest.mark.parametrize("points", [1, 10**9])
def test_points_bounds_are_accepted(app, shop, points):
    r = send(app, shop, "POST", "/v1/earn", with_literal(earn_body(), "points", str(points).encode()))
    assert assert_booked(r, app, shop)["points"] == points


# --- fields: unknown, missing, null -------------------------------------------------------

@pytest.mark.parametrize("field", ["extra", "partner_id", "kind", "balance_after", "status", "Points"])
def test_unknown_fields_are_rejected(app, shop, field):
    r = post(app, shop, "/v1/earn", earn_body(**{field: "x"}))
    doc = assert_problem(r, 422, "validation-error", f"/{field}")
    assert [e["pointer"] for e in doc["errors"]] == [f"/{field}"]
    assert_nothing_booked(app, shop)


def test_unknown_field_pointer_is_escaped_rfc6901(app, shop):
    r = post(app, shop, "/v1/earn", earn_body(**{"a/b~c": 1}))
    assert_problem(r, 422, "validation-error", "/a~1b~0c")
    assert_nothing_booked(app, shop)


@pytest.mark.parametrize("path, field", [
    *[("/v1/earn", f) for f in ("claim_id", "member_id", "points", "occurred_at")],
    *[("/v1/burn", f) for f in ("claim_id", "member_id", "points", "occurred_at")],
    *[(REVERSAL_PATH, f) for f in ("reversal_id", "points", "occurred_at")],
])
def test_missing_fields_are_rejected(app, shop, path, field):
    r = post(app, shop, path, BODIES[path](**{field: DROP}))
    doc = assert_problem(r, 422, "validation-error", f"/{field}")
    assert [e["pointer"] for e in doc["errors"]] == [f"/{field}"]
    assert_nothing_booked(app, shop)


def test_empty_object_names_every_missing_field(app, shop):
    doc = assert_problem(post(app, shop, "/v1/earn", {}), 422, "validation-error")
    assert {e["pointer"] for e in doc["errors"]} == {"/claim_id", "/member_id", "/points", "/occurred_at"}
    doc = assert_problem(post(app, shop, "/v1/members", {}), 422, "validation-error")
    assert [e["pointer"] for e in doc["errors"]] == ["/member_id"]
    assert_nothing_booked(app, shop)


@pytest.mark.parametrize("field", ["claim_id", "member_id", "points", "occurred_at"])
def test_required_fields_may_not_be_null(app, shop, field):
    r = post(app, shop, "/v1/earn", earn_body(**{field: None}))
    assert_problem(r, 422, "validation-error", f"/{field}")
    assert_nothing_booked(app, shop)


@pytest.mark.parametrize("path", ["/v1/earn", "/v1/burn"])
def test_null_description_and_pending_until_are_accepted(app, shop, path):
    extra = {"pending_until": None} if path == "/v1/earn" else {}
    claim = assert_booked(post(app, shop, path, BODIES[path](description=None, **extra)), app, shop)
    assert claim["description"] is None


# --- identifiers --------------------------------------------------------------------------

BAD_IDS = [
    pytest.param(".lead", id="leading-dot"),
    pytest.param("-lead", id="leading-dash"),
    pytest.param(":lead", id="leading-colon"),
    pytest.param("a" * 65, id="65-chars"),
    pytest.param("", id="empty"),
    pytest.param("a b", id="space"),
    pytest.param("c1\n", id="trailing-newline"),
    pytest.param("a\tb", id="tab"),
    pytest.param("a/b", id="slash"),
    pytest.param("caf\u00e9", id="unicode"),
    pytest.param("\uff21BC", id="fullwidth"),
    pytest.param("a\u0000b", id="nul"),
    pytest.param(123, id="number"),
    pytest.param(["a"], id="array"),
]


@pytest.mark.parametrize("path, field", [
    ("/v1/earn", "claim_id"), ("/v1/earn", "member_id"), ("/v1/burn", "claim_id"),
    ("/v1/burn", "member_id"), (REVERSAL_PATH, "reversal_id"), ("/v1/members", "member_id"),
])
@pytest.mark.parametrize("value", BAD_IDS)
def test_identifiers_must_match_the_pattern(app, shop, path, field, value):
    body = {"member_id": value} if path == "/v1/members" else BODIES[path](**{field: value})
    doc = assert_problem(post(app, shop, path, body), 422, "validation-error", f"/{field}")
    expected = f"Must match {ID_PATTERN}." if isinstance(value, str) else "Must be a string."
    assert doc["errors"] == [{"pointer": f"/{field}", "detail": expected}]
    assert_nothing_booked(app, shop)
    assert shop.client.balance("M1").json()["available"] == 1000


@pytest.mark.parametrize("claim_id", ["a" * 64, "A", "0.9_x:Y-z", "9"])
def test_identifiers_at_the_edge_of_the_pattern_are_accepted(app, shop, claim_id):
    claim = assert_booked(post(app, shop, "/v1/earn", earn_body(claim_id=claim_id)), app, shop)
    assert claim["claim_id"] == claim_id


# --- times --------------------------------------------------------------------------------

def naive_now() -> str:
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


BAD_TIMES = [
    pytest.param(naive_now, id="naive"),
    pytest.param(lambda: naive_now()[:10], id="date-only"),
    pytest.param(lambda: "yesterday", id="garbage"),
    pytest.param(lambda: "", id="empty"),
    pytest.param(lambda: ago(minutes=1) + "\n", id="trailing-newline"),
    pytest.param(lambda: naive_now().replace("T", " ") + "Z", id="space-separator"),
    pytest.param(lambda: naive_now() + "+0100", id="offset-without-colon"),
    pytest.param(lambda: "2026-02-30T00:00:00Z", id="no-such-day"),
    pytest.param(lambda: "2026-01-01T24:00:00Z", id="hour-24"),
    pytest.param(lambda: "2026-01-01T00:00:00+24:00", id="offset-24h"),
    pytest.param(lambda: "\u0662\u0660\u0662\u0666-01-01T00:00:00Z", id="arabic-digits"),
    pytest.param(lambda: 1767225600, id="epoch-number"),
    pytest.param(lambda: ago(days=31), id="past-max-claim-age"),
    pytest.param(lambda: ago(minutes=-6), id="future-over-5-min"),
    pytest.param(lambda: ago(days=-400), id="far-future"),
]


@pytest.mark.parametrize("path", list(BODIES))
@pytest.mark.parametrize("make", BAD_TIMES)
def test_occurred_at_must_be_rfc3339_with_offset_within_the_window(app, shop, path, make):
    r = post(app, shop, path, BODIES[path](occurred_at=make()))
    assert_problem(r, 422, "validation-error", "/occurred_at")
    assert_nothing_booked(app, shop)


@pytest.mark.parametrize("occurred_at", [
    pytest.param(lambda: ago(days=29), id="29-days-ago"),
    pytest.param(lambda: ago(minutes=-4), id="4-min-ahead"),
    pytest.param(lambda: ago(minutes=2).replace("T", "t").replace("Z", "z"), id="lower-case-t-z"),
])
def test_occurred_at_inside_the_window_is_accepted(app, shop, occurred_at):
    assert_booked(post(app, shop, "/v1/earn", earn_body(occurred_at=occurred_at())), app, shop)


@pytest.mark.parametrize("offset", [timedelta(hours=5, minutes=30), timedelta(hours=-3), timedelta(0)])
def test_times_with_an_offset_are_stored_and_returned_in_utc(app, shop, offset):
    moment = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=1)
    local = moment.astimezone(timezone(offset)).isoformat()
    pending = (moment + timedelta(days=2)).astimezone(timezone(offset)).isoformat()
    claim = assert_booked(post(app, shop, "/v1/earn", earn_body(occurred_at=local, pending_until=pending)),
                          app, shop)
    assert claim["occurred_at"] == moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert claim["pending_until"] == (moment + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert claim["recorded_at"].endswith("Z")
    recorded = datetime.fromisoformat(claim["recorded_at"].replace("Z", "+00:00"))
    assert abs(recorded - datetime.now(timezone.utc)) < timedelta(minutes=1)
    read = shop.client.claim("c1").json()  # read back from the database, not the request
    assert (read["occurred_at"], read["pending_until"], read["recorded_at"]) == \
        (claim["occurred_at"], claim["pending_until"], claim["recorded_at"])


def test_nanosecond_fraction_is_truncated_to_microseconds(app, shop):
    moment = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=3)
    text = moment.astimezone(timezone(timedelta(hours=2))).strftime("%Y-%m-%dT%H:%M:%S") + ".123456789+02:00"
    claim = assert_booked(post(app, shop, "/v1/earn", earn_body(occurred_at=text)), app, shop)
    assert claim["occurred_at"] == moment.strftime("%Y-%m-%dT%H:%M:%S") + ".123456Z"


@pytest.mark.parametrize("pending_until", [
    pytest.param(lambda: ago(minutes=20), id="before-occurred-at"),
    pytest.param(lambda: ago(days=-400), id="over-366-days"),
    pytest.param(lambda: naive_now(), id="naive"),
    pytest.param(lambda: 5, id="number"),
])
def test_pending_until_must_be_valid_and_after_occurred_at(app, shop, pending_until):
    r = post(app, shop, "/v1/earn", earn_body(occurred_at=ago(minutes=10), pending_until=pending_until()))
    assert_problem(r, 422, "validation-error", "/pending_until")
    assert_nothing_booked(app, shop)


# --- description --------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/earn", "/v1/burn"])
@pytest.mark.parametrize("description", [
    pytest.param("x" * 501, id="501-chars"),
    pytest.param("\u00e9" * 501, id="501-unicode-chars"),
    pytest.param(42, id="number"),
    pytest.param(["receipt"], id="array"),
    pytest.param("a\u0000b", id="nul"),  # PostgreSQL cannot store NUL: was a 500 there
    pytest.param("a\ud800b", id="lone-surrogate"),  # not encodable as UTF-8: was a 500 on both
])
def test_description_is_bounded_text(app, shop, path, description):
    r = post(app, shop, path, BODIES[path](description=description))
    assert_problem(r, 422, "validation-error", "/description")
    assert_nothing_booked(app, shop)


def test_description_of_500_chars_is_accepted(app, shop):
    text = "\u00e9\U0001f600" * 250
    claim = assert_booked(post(app, shop, "/v1/earn", earn_body(description=text)), app, shop)
    assert claim["description"] == text


# --- malformed bodies (400) ---------------------------------------------------------------

MALFORMED = [
    pytest.param(b"[]", id="array"),
    pytest.param(b'[{"claim_id":"c1"}]', id="array-of-object"),
    pytest.param(b'"text"', id="string"),
    pytest.param(b"42", id="number"),
    pytest.param(b"null", id="null"),
    pytest.param(b"true", id="true"),
    pytest.param(b"", id="empty"),
    pytest.param(b"   ", id="whitespace"),
    pytest.param(b"{", id="truncated"),
    pytest.param(b'{"claim_id": "c1",}', id="trailing-comma"),
    pytest.param(b"{'claim_id': 'c1'}", id="single-quotes"),
    pytest.param(b'{"claim_id":"c1"} {}', id="two-documents"),
    pytest.param(b'{"description":"\xff"}', id="invalid-utf8"),
    pytest.param(b'{"description":"\xc3"}', id="truncated-utf8"),
    pytest.param(b'{"description":"\xed\xa0\x80"}', id="utf8-encoded-surrogate"),
    pytest.param(b'{"description":"\xc0\xaf"}', id="overlong-utf8"),
    pytest.param(b"\xff\xfe{\x00}\x00", id="utf16"),
    pytest.param(b'{"points":1,"points":2}', id="duplicate-key"),
    pytest.param(b'{"extra":{"a":1,"a":2}}', id="nested-duplicate-key"),
    pytest.param(b'{"extra":' + b"[" * 100 + b"]" * 100 + b"}", id="100-nested-arrays"),
    pytest.param(b'{"extra":' + b"[" * 16 + b"]" * 16 + b"}", id="depth-17"),
    pytest.param(b"[" * 100_000, id="100000-brackets"),
    pytest.param(b'{"extra":' + b'{"a":' * 100_000, id="100000-objects"),
]


@pytest.mark.parametrize("path", ["/v1/earn", "/v1/burn", REVERSAL_PATH, "/v1/members"])
@pytest.mark.parametrize("raw", MALFORMED)
def test_malformed_bodies_are_400(app, shop, path, raw):
    assert_problem(send(app, shop, "POST", path, raw), 400, "malformed-request")
    assert_nothing_booked(app, shop)


def test_duplicate_keys_are_400_even_with_equal_values(app, shop):
    body = encode(earn_body())[:-1] + b',"points":100}'
    assert_problem(send(app, shop, "POST", "/v1/earn", body), 400, "malformed-request")
    assert_nothing_booked(app, shop)


def test_depth_at_the_limit_parses_and_fails_validation_only(app, shop):
    # The object is level 1; 15 arrays inside make 16 = MAX_JSON_DEPTH: parsed, then rejected as 422.
    assert app.config["MAX_JSON_DEPTH"] == 16
    r = send(app, shop, "POST", "/v1/earn", b'{"extra":' + b"[" * 15 + b"]" * 15 + b"}")
    assert_problem(r, 422, "validation-error", "/extra")


def test_brackets_inside_strings_do_not_count_as_depth(app, shop):
    text = '\\"' + "[{" * 100 + '"\\'  # escaped quotes must not end the string early
    claim = assert_booked(post(app, shop, "/v1/earn", earn_body(description=text)), app, shop)
    assert claim["description"] == text


# --- size and media type ------------------------------------------------------------------

def padded(doc: dict, size: int) -> bytes:
    raw = encode(doc)
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


@pytest.mark.parametrize("path", ["/v1/earn", "/v1/members"])
def test_body_over_one_mib_is_413(app, shop, path):
    body = earn_body() if path == "/v1/earn" else {"member_id": "M2"}
    r = send(app, shop, "POST", path, padded(body, MIB + 1))
    assert_problem(r, 413, "payload-too-large")
    assert_nothing_booked(app, shop)
    assert shop.client.balance("M2").status == 404


def test_body_of_exactly_one_mib_is_accepted(app, shop):
    assert app.config["MAX_CONTENT_LENGTH"] == MIB
    assert_booked(send(app, shop, "POST", "/v1/earn", padded(earn_body(), MIB)), app, shop)


def test_huge_body_with_an_oversized_field_is_413_not_422(app, shop):
    r = post(app, shop, "/v1/earn", earn_body(description="x" * (2 * MIB)))
    assert_problem(r, 413, "payload-too-large")
    assert_nothing_booked(app, shop)


@pytest.mark.parametrize("content_type", [
    pytest.param(None, id="missing"),
    pytest.param("text/plain", id="text-plain"),
    pytest.param("application/x-www-form-urlencoded", id="form"),
    pytest.param("multipart/form-data; boundary=x", id="multipart"),
    pytest.param("application/xml", id="xml"),
    pytest.param("text/json", id="text-json"),
])
@pytest.mark.parametrize("path", ["/v1/earn", "/v1/members"])
def test_body_that_is_not_application_json_is_415(app, shop, content_type, path):
    body = earn_body() if path == "/v1/earn" else {"member_id": "M2"}
    r = send(app, shop, "POST", path, encode(body), content_type=content_type)
    assert_problem(r, 415, "unsupported-media-type")
    assert_nothing_booked(app, shop)
    assert shop.client.balance("M2").status == 404


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_application_json_with_parameters_is_accepted(app, shop, content_type):
    assert_booked(send(app, shop, "POST", "/v1/earn", encode(earn_body()), content_type=content_type),
                  app, shop)


# --- paths, routes, methods ---------------------------------------------------------------

def test_balance_of_a_valid_id_is_found(shop):
    assert shop.client.balance("M1").status == 200  # the control for the 404s below


@pytest.mark.parametrize("method, path", [
    ("GET", "/v1/members/.M1/balance"),
    ("GET", "/v1/members/M1%0A/balance"),
    ("GET", "/v1/members/M1%20/balance"),
    ("GET", "/v1/members/" + "a" * 65 + "/balance"),
    ("GET", "/v1/members/caf%C3%A9/balance"),
    ("GET", "/v1/claims/.c0"),
    ("GET", "/v1/claims/c0%0A"),
    ("GET", "/v1/claims/c0%3Bdrop"),
    ("GET", "/v1/claims/" + "c" * 65),
    ("POST", "/v1/claims/.c0/reversals"),
    ("POST", "/v1/claims/c0%20/reversals"),
])
def test_path_ids_off_the_pattern_are_404(app, shop, method, path):
    raw = encode(reversal_body()) if method == "POST" else b""
    r = send(app, shop, method, path, raw, content_type="application/json" if raw else None)
    assert_problem(r, 404, "not-found")
    assert_nothing_booked(app, shop)


@pytest.mark.parametrize("path", ["/v1/nope", "/v1/earn/extra", "/nope", "/v2/earn", "/v1/claim"])
def test_unknown_routes_are_404_problem_json(app, shop, path):
    assert_problem(app.test_client().get(path), 404, "not-found")
    assert_problem(send(app, shop, "GET", path), 404, "not-found")


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/v1/earn", "POST"),
    ("PUT", "/v1/burn", "POST"),
    ("DELETE", "/v1/claims/c0", "GET"),
    ("POST", "/v1/members/M1/balance", "GET"),
    ("PATCH", "/v1/members", "POST"),
])
def test_wrong_method_is_405_problem_json(app, shop, method, path, allowed):
    r = app.test_client().open(path, method=method)
    assert_problem(r, 405, "method-not-allowed")
    assert allowed in [m.strip() for m in r.headers["Allow"].split(",")]
    assert_nothing_booked(app, shop)


# --- property: nothing the body says makes the service fail -------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16)

EARN_FIELDS = ["claim_id", "member_id", "points", "occurred_at", "pending_until", "description", "extra"]

bodies = st.one_of(
    json_values.map(encode),  # any JSON document at all, NaN and Infinity included
    st.tuples(st.sampled_from(EARN_FIELDS), st.text(max_size=70) | json_values).map(  # one field spoiled
        lambda fv: encode(earn_body(**{"claim_id": "fuzz", fv[0]: fv[1]}))),
    st.binary(max_size=300),
    st.just(b"").map(lambda _: encode(earn_body(claim_id="fuzz-ok"))),
)

ALLOWED = {201, 400, 404, 409, 413, 415, 422}


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=bodies, content_type=st.sampled_from(["application/json"] * 5 + ["text/plain"]))
def test_random_bodies_never_fail_the_service(app, shop, verify_clean, raw, content_type):
    r = send(app, shop, "POST", "/v1/earn", raw, content_type=content_type)
    assert r.status_code in ALLOWED, (raw, r.status_code, r.get_data(as_text=True))
    if r.status_code == 201:
        assert r.mimetype == "application/json" and r.get_json()["kind"] == "earn"
    else:
        doc = json.loads(r.get_data())
        slug = doc["type"].rsplit("/", 1)[-1]
        assert r.mimetype == PROBLEM_JSON and SLUGS[slug][0] == doc["status"] == r.status_code
    verify_clean()
