"""Listings: a member's history for the operator, and GET /v1/claims for partners."""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest

from coalition import ledger
from coalition.database import db
from coalition.errors import Problem
from coalition.history import member_history
from coalition.ledger import Rules
from partners.schemas import cursor_of
from tests.conftest import ago


def test_member_history_spans_partners_newest_first(app, acme, bolt):
    acme.client.enrol("M1")
    acme.client.enrol("M2")
    acme.client.earn("e1", "M1", 100, occurred_at=ago(minutes=4), description="receipt 7")
    acme.client.earn("e2", "M2", 5, occurred_at=ago(minutes=4))
    bolt.client.burn("b1", "M1", 40, occurred_at=ago(minutes=3))
    acme.client.reverse("e1", "r1", 70, occurred_at=ago(minutes=1))
    with app.app_context():
        history = member_history(db.session, "M1")
        assert [(e["claim_id"], e["kind"], e["partner_id"], e["points"], e["reverses"])
                for e in history] == [("r1", "reversal", "acme", 70, "e1"),
                                      ("b1", "burn", "bolt", 40, None),
                                      ("e1", "earn", "acme", 100, None)]
        assert history[2]["description"] == "receipt 7" and history[2]["status"] == "booked"
        assert set(history[0]) == {"claim_id", "kind", "partner_id", "points", "occurred_at",
                                   "recorded_at", "period", "late", "status", "reverses",
                                   "description"}
        assert history[0]["recorded_at"].endswith("Z") and history[0]["late"] is False
        assert [e["claim_id"] for e in member_history(db.session, "M1", limit=2)] == ["r1", "b1"]
        with pytest.raises(Problem) as unknown:
            member_history(db.session, "nobody")
        assert unknown.value.slug == "not-found"


# --- GET /v1/claims ------------------------------------------------------------------------

def listing(partner, query: str = "") -> dict:
    r = partner.client.request("GET", "/v1/claims" + (f"?{query}" if query else ""))
    assert r.status == 200, r.json()
    return r.json()


def every_page(partner, query: str = "", between=None) -> list[dict]:
    claims, cursor = [], None
    while True:
        page = listing(partner, "&".join(q for q in (query, cursor and f"cursor={cursor}") if q))
        claims += page["claims"]
        cursor = page["next_cursor"]
        if cursor is None:
            return claims
        if between is not None:
            between()


def problem(partner, query: str) -> list[dict]:
    r = partner.client.request("GET", f"/v1/claims?{query}")
    assert r.status == 422 and r.headers["content-type"] == "application/problem+json", r.json()
    assert r.json()["type"] == "/problems/validation-error"
    return r.json()["errors"]


def book_many(app, partner_id: str, member: str, count: int, *, prefix: str, at: datetime):
    """`count` earns booked with one clock: equal recorded_at, ordered by id alone."""
    with app.app_context():
        rules = app.config["LEDGER_RULES"]
        for i in range(count):
            ledger.book_earn(db.session, partner_id=partner_id, claim_id=f"{prefix}{i}",
                             member_id=member, points=i + 1, occurred_at=at, now=at, rules=rules)
        db.session.commit()


def test_claims_are_listed_newest_first_as_reading_one_answers_them(app, acme):
    acme.client.enrol("M1")
    acme.client.earn("e1", "M1", 100, occurred_at=ago(minutes=3), description="receipt 7")
    acme.client.earn("e2", "M1", 50, occurred_at=ago(minutes=3))
    acme.client.reverse("e1", "r1", 30, occurred_at=ago(minutes=1))
    acme.client.reverse("e1", "r2", 70, occurred_at=ago(minutes=1))
    page = listing(acme)
    assert [c["claim_id"] for c in page["claims"]] == ["r2", "r1", "e2", "e1"]
    assert page["next_cursor"] is None
    for listed in page["claims"]:
        read = acme.client.claim(listed["claim_id"]).json()
        assert "reversals" not in listed and len(read.pop("reversals")) == read["reversals_total"]
        assert listed == read
    e1 = page["claims"][3]
    assert (e1["status"], e1["reversed_points"], e1["reversals_total"]) == ("reversed", 100, 2)
    assert page["claims"][0]["reverses"] == "e1"


def test_paging_answers_every_claim_once_while_claims_keep_arriving(app, acme, bolt):
    acme.client.enrol("M1")
    base = datetime.now(timezone.utc) - timedelta(minutes=10)
    book_many(app, "acme", "M1", 7, prefix="tie", at=base)  # seven claims, one recorded_at
    book_many(app, "acme", "M1", 6, prefix="old", at=base - timedelta(minutes=1))
    book_many(app, "bolt", "M1", 5, prefix="tie", at=base)  # same claim ids, other partner
    everything = [c["claim_id"] for c in listing(acme, "limit=500")["claims"]]
    assert everything == [f"tie{i}" for i in reversed(range(7))] + \
        [f"old{i}" for i in reversed(range(6))]
    arrivals = itertools.count()

    def more_claims():
        n = next(arrivals)
        acme.client.earn(f"new{n}", "M1", 1, occurred_at=ago(minutes=1))
        bolt.client.earn(f"new{n}", "M1", 1, occurred_at=ago(minutes=1))
        book_many(app, "acme", "M1", 1, prefix=f"late{n}-", at=base)  # ties the first page's keys

    for limit in (1, 2, 3, 5, 13):
        paged = [c["claim_id"] for c in every_page(acme, f"limit={limit}", between=more_claims)]
        # Nothing skipped, nothing twice, in order; of the claims that arrived meanwhile, only
        # those whose key lies after the page being read can show up (never a newer one).
        assert [c for c in paged if c in everything] == everything, limit
        assert all(c.startswith("late") for c in set(paged) - set(everything))
        assert len(set(paged)) == len(paged)
        everything = [c["claim_id"] for c in listing(acme, "limit=500")["claims"]]
    assert all(c["partner_id"] == "bolt" for c in every_page(bolt, "limit=4"))


def test_filters_combine_and_bound_recorded_at_since_inclusive_until_exclusive(app, acme, bolt):
    app.config["LEDGER_RULES"] = Rules(app.config["COALITION_TIMEZONE"], 100_000, 36)
    for member in ("M1", "M2"):
        acme.client.enrol(member)
    acme.client.earn("may", "M1", 100, occurred_at="2026-05-10T12:00:00Z")
    acme.client.earn("m2", "M2", 40, occurred_at=ago(minutes=5))
    acme.client.burn("b1", "M1", 30, occurred_at=ago(minutes=4))
    acme.client.reverse("b1", "rb1", 10, occurred_at=ago(minutes=3))
    bolt.client.earn("bolt-m1", "M1", 5, occurred_at=ago(minutes=3))

    def ids(query):
        return [c["claim_id"] for c in every_page(acme, query + "&limit=1")]

    assert ids("member_id=M1") == ["rb1", "b1", "may"]
    assert ids("member_id=M2") == ["m2"]
    assert ids("member_id=nobody") == []
    assert ids("period=2026-05") == ["may"]
    assert ids("kind=burn") == ["b1"] and ids("kind=reversal") == ["rb1"]
    assert ids("kind=earn&member_id=M1") == ["may"]
    recorded = {c["claim_id"]: c["recorded_at"] for c in listing(acme)["claims"]}
    since, until = recorded["m2"], recorded["rb1"]
    assert ids(f"since={since}") == ["rb1", "b1", "m2"]
    assert ids(f"until={until}") == ["b1", "m2", "may"]
    assert ids(f"since={since}&until={until}&kind=burn") == ["b1"]
    # An offset is any offset: +02:00 must be sent percent-encoded (a bare + reads as a space).
    local = datetime.fromisoformat(since.replace("Z", "+00:00")).astimezone(
        timezone(timedelta(hours=2))).isoformat()
    assert ids("since=" + local.replace("+", "%2B")) == ["rb1", "b1", "m2"]


@pytest.mark.parametrize("query, pointer", [
    ("limit=0", "/query/limit"), ("limit=501", "/query/limit"), ("limit=%2B5", "/query/limit"),
    ("limit=1.0", "/query/limit"), ("limit=", "/query/limit"),
    ("period=2026-13", "/query/period"), ("period=2026-5", "/query/period"),
    ("period=2026-05%0A", "/query/period"), ("kind=earns", "/query/kind"),
    ("since=2026-05-01", "/query/since"), ("until=yesterday", "/query/until"),
    ("member_id=%20x", "/query/member_id"), ("colour=red", "/query/colour"),
    ("cursor=not-a-cursor", "/query/cursor"), ("cursor=" + "A" * 400, "/query/cursor"),
    ("cursor=%FF", "/query/cursor"), ("cursor=", "/query/cursor"),
])
def test_bad_query_parameters_are_validation_errors_with_pointers(acme, query, pointer):
    assert [e["pointer"] for e in problem(acme, query)] == [pointer]


@pytest.mark.parametrize("key", [
    ["2026-05-01T12:00:00Z"], ["2026-05-01T12:00:00Z", 1, 2], ["2026-05-01T12:00:00Z", -1],
    ["2026-05-01T12:00:00Z", 2**63], ["2026-05-01T12:00:00Z", 10**40], ["2026-05-01T12:00:00Z", 1.5],
    ["2026-05-01T12:00:00Z", True], ["2026-05-01T12:00:00Z", "1"], ["2026-05-01", 1],
    ["2026-02-30T12:00:00Z", 1], [1, 1], {"recorded_at": "2026-05-01T12:00:00Z", "id": 1},
    "2026-05-01T12:00:00Z", None,
])
def test_a_tampered_cursor_is_a_validation_error_never_a_crash(acme, key):
    errors = problem(acme, "cursor=" + cursor_of(key))
    assert errors[0]["pointer"] == "/query/cursor"


def test_a_cursor_holds_nothing_but_the_last_key(app, acme):
    """A cursor made by hand from any key pages on from there: it grants nothing a filter
    would not, and other partners' claims stay out."""
    acme.client.enrol("M1")
    base = datetime.now(timezone.utc) - timedelta(minutes=5)
    book_many(app, "acme", "M1", 4, prefix="a", at=base)
    first = listing(acme, "limit=1")
    recorded_at = first["claims"][0]["recorded_at"]
    rest = [c["claim_id"] for c in listing(acme, "cursor=" + cursor_of([recorded_at, 10**9]))["claims"]]
    assert rest == ["a3", "a2", "a1", "a0"]
    assert listing(acme, "cursor=" + cursor_of([recorded_at, 0]))["claims"] == []
