"""history.page_of, the member history the portal and the console page through: every entry
exactly once across pages (both ways, and with entries booked between pages), the filters by
partner, kind and claim, bonus points, the claims reversals undo, partner names, and a bounded
number of statements per page whatever its size."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, select

from coalition import expiry, members
from coalition.database import db
from coalition.history import KINDS, page_of
from coalition.models import Entry
from coalition.problems import Problem


@pytest.fixture
def booked(app, acme, bolt, runner):
    """M-1: a coupon bonus on e-0, earns at both partners, a burn, an earn's and a burn's
    reversals, a pending earn, and expiries; M-2: entries of its own between them."""
    for card in ("M-1", "M-2"):
        assert acme.client.enrol(card).status == 201
    for args in (["coupons", "add", "extra", "--partner", "acme", "--name", "25 extra", "--kind",
                  "fixed", "--value", "25", "--from", "2026-01-01", "--until", "2099-12-31"],
                 ["coupons", "activate", "extra", "M-1"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 0, result.output
    assert acme.client.earn("e-0", "M-1", 100).status == 201
    for n in range(1, 15):
        assert acme.client.earn(f"a-{n}", "M-1", 10).status == 201
        assert bolt.client.earn(f"b-{n}", "M-1", 5).status == 201
        if n % 5 == 0:
            assert acme.client.earn(f"o-{n}", "M-2", 7).status == 201
    assert bolt.client.burn("x-1", "M-1", 30).status == 201
    assert acme.client.reverse("a-1", "r-1", 10).status == 201
    assert bolt.client.reverse("x-1", "rx-1", 30).status == 201
    later = datetime.now(timezone.utc) + timedelta(days=3)
    assert acme.client.earn("p-1", "M-1", 50, pending_until=later).status == 201
    with app.app_context():
        # far enough ahead that every lot has expired: the coalition's own entries
        ahead = datetime.now(timezone.utc) + timedelta(days=366 * 5)
        expiry.expire(db.session, as_of=ahead.date(), now=lambda: ahead,
                      tz=app.config["COALITION_TIMEZONE"])
        db.session.commit()
    return app


def member_pk(card: str) -> int:
    return members.find(db.session, card).id


def entries_of(card: str, *where) -> list[int]:
    """The member's entry ids, newest first, straight from the journal."""
    return list(db.session.scalars(select(Entry.id).where(Entry.member_id == member_pk(card),
                                                          *where).order_by(Entry.id.desc())))


def walk(pk: int, limit: int, **filters) -> list[list[dict]]:
    """Every page from the newest, older and older, checking the cursors on the way."""
    pages, before = [], None
    while True:
        page = page_of(db.session, pk, before=before, limit=limit, **filters)
        assert len(page.rows) <= limit
        assert (page.newer is None) == (before is None), "a newer page exactly after the first"
        pages.append(page.rows)
        if page.older is None:
            return pages
        assert len(page.rows) == limit and page.older == page.rows[-1]["id"]
        before = page.older


def ids(pages: list[list[dict]]) -> list[int]:
    return [row["id"] for rows in pages for row in rows]


def test_the_pages_hold_every_entry_once_newest_first_both_ways(booked):
    with booked.app_context():
        everything = entries_of("M-1")
        assert len(everything) > 40 and entries_of("M-2")
        for limit in (1, 7, 20, len(everything), 1000):
            pages = walk(member_pk("M-1"), limit)
            assert ids(pages) == everything, limit
        # back from the oldest page with `after`: the same pages, newest first within each
        pk, pages = member_pk("M-1"), walk(member_pk("M-1"), 7)
        after, back = pages[-1][0]["id"], [pages[-1]]
        while after is not None:
            page = page_of(db.session, pk, after=after, limit=7)
            back.insert(0, page.rows)
            assert page.older == page.rows[-1]["id"]
            after = page.newer
        assert back == pages
        assert page_of(db.session, pk, before=min(everything)).rows == []
        assert page_of(db.session, pk, after=max(everything)) == ([], None, None)


def test_an_entry_booked_between_pages_is_neither_repeated_nor_skipped(booked, acme):
    with booked.app_context():
        pk = member_pk("M-1")
        first = page_of(db.session, pk, limit=10)
        db.session.rollback()
    assert acme.client.earn("late-1", "M-1", 3).status == 201
    with booked.app_context():
        rest = walk(pk, 10)  # from the top again: the new earn first
        assert rest[0][0]["claim_id"] == "late-1"
        shown, before = list(first.rows), first.older
        while before is not None:
            page = page_of(db.session, pk, before=before, limit=10)
            shown += page.rows
            before = page.older
        assert [r["id"] for r in shown] == entries_of("M-1")[1:]


@pytest.mark.parametrize("kind", KINDS)
def test_filters_by_kind_and_partner(booked, kind):
    with booked.app_context():
        pk = member_pk("M-1")
        expected = entries_of("M-1", Entry.kind == kind)
        assert expected, kind  # the data has every kind
        assert ids(walk(pk, 4, kind=kind)) == expected
        for partner in ("acme", "bolt"):
            assert ids(walk(pk, 4, kind=kind, partner_id=partner)) == entries_of(
                "M-1", Entry.kind == kind, Entry.partner_id == partner)
            assert ids(walk(pk, 6, partner_id=partner)) == entries_of(
                "M-1", Entry.partner_id == partner)
        assert page_of(db.session, pk, partner_id="nobody").rows == []
        with pytest.raises(Problem) as refused:
            page_of(db.session, pk, kind="refund")
        assert refused.value.slug == "validation-error"


def test_a_claim_and_the_reversals_of_it(booked):
    with booked.app_context():
        pk = member_pk("M-1")
        rows = page_of(db.session, pk, partner_id="acme", claim_id="a-1").rows
        assert [(r["claim_id"], r["kind"]) for r in rows] == [("r-1", "reversal"), ("a-1", "earn")]
        assert rows[0]["reverses"] == {"id": rows[1]["id"], "claim_id": "a-1", "kind": "earn"}
        # another member's claim of the same id is not this member's
        assert page_of(db.session, member_pk("M-2"), claim_id="a-1").rows == []


def test_each_row_says_what_was_booked(booked):
    with booked.app_context():
        rows = {r["claim_id"]: r for r in ids_and_rows(member_pk("M-1"))}
        assert rows["e-0"]["bonus_points"] == 25 and rows["e-0"]["points"] == 100
        assert all(r["bonus_points"] == 0 for c, r in rows.items() if c != "e-0")
        assert rows["e-0"]["partner_name"] == "Acme" and rows["b-3"]["partner_name"] == "Bolt"
        assert rows["rx-1"]["reverses"]["claim_id"] == "x-1"
        assert rows["rx-1"]["reverses"]["kind"] == "burn"
        assert rows["a-2"]["reverses"] is None
        assert rows["p-1"]["status"] == "pending" and rows["a-2"]["status"] == "booked"
        assert rows["p-1"]["pending_until"] > rows["p-1"]["recorded_at"]
        expiries = [r for r in ids_and_rows(member_pk("M-1")) if r["kind"] == "expiry"]
        assert expiries and all(r["partner_id"] is None and r["partner_name"] is None
                                for r in expiries)
        a2 = db.session.scalar(select(Entry).where(Entry.claim_id == "a-2"))
        assert rows["a-2"]["occurred_at"].utcoffset() == timedelta(0)
        assert (rows["a-2"]["period"], rows["a-2"]["late"]) == (a2.period, a2.late)
        assert rows["a-2"]["recorded_at"].replace(tzinfo=None) \
            == a2.recorded_at.replace(tzinfo=None)


def ids_and_rows(pk: int) -> list[dict]:
    return page_of(db.session, pk, limit=1000).rows


def test_a_page_costs_a_bounded_number_of_statements_whatever_its_size(booked):
    with booked.app_context():
        pk = member_pk("M-1")
        everything = entries_of("M-1")
        counted: list[str] = []

        def count(conn, cursor, statement, *args):
            counted.append(statement)

        event.listen(db.engine, "before_cursor_execute", count)
        try:
            for shape in ({}, {"partner_id": "acme"}, {"kind": "earn"}, {"kind": "reversal"},
                          {"before": everything[3]}, {"after": everything[-5]},
                          {"claim_id": "e-0", "partner_id": "acme"}):
                per_size = []
                for limit in (2, 10, 50):
                    counted.clear()
                    page = page_of(db.session, pk, limit=limit, **shape)
                    assert page.rows
                    per_size.append(len(counted))
                # the page, the bonus lots of its earns (if it has any), and, from a `before`
                # cursor, whether anything newer matches: never a statement per row
                assert max(per_size) <= 3, (shape, per_size)
            counted.clear()
            rows = page_of(db.session, pk, limit=200).rows
            assert sum(r["kind"] == "earn" for r in rows) > 25 and len(counted) == 2
        finally:
            event.remove(db.engine, "before_cursor_execute", count)
