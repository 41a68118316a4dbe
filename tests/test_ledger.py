"""The ledger's rules, driven through the domain functions with a fixed clock."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from coalition import ledger
from coalition.database import db
from coalition.errors import Problem
from coalition.members import balance, enrol
from coalition.models import Consumption, DebtLot, Entry, Lot, Member

UTC = timezone.utc
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
RULES = ledger.Rules("Europe/Berlin", 30, 36)


@pytest.fixture
def s(app):
    with app.app_context():
        enrol(db.session, "M1", now=NOW)
        enrol(db.session, "M2", now=NOW)
        db.session.commit()
        yield db.session


def at(day: int, hour: int = 12, month: int = 6) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def earn(s, claim, points, when, *, member="M1", partner="acme", now=NOW, **kw):
    booked = ledger.book_earn(s, partner_id=partner, claim_id=claim, member_id=member,
                              points=points, occurred_at=when, now=now, rules=RULES, **kw)
    s.commit()
    return booked.entry


def burn(s, claim, points, when=NOW, *, member="M1", partner="bolt", now=NOW):
    booked = ledger.book_burn(s, partner_id=partner, claim_id=claim, member_id=member,
                              points=points, occurred_at=when, now=now, rules=RULES)
    s.commit()
    return booked.entry


def reverse(s, claim, rid, points, *, partner, when=NOW, now=NOW):
    booked = ledger.book_reversal(s, partner_id=partner, claim_id=claim, reversal_id=rid,
                                  points=points, occurred_at=when, now=now, rules=RULES)
    s.commit()
    return booked.entry


def lot_of(s, entry) -> Lot:
    return s.scalars(select(Lot).where(Lot.entry_id == entry.id)).one()


def taken(s, entry) -> list[tuple[str, int, int]]:
    """(claim id of the lot's earn, points, debt lot id) per consumption of an entry, in order."""
    rows = s.execute(select(Entry.claim_id, Consumption.points, Consumption.debt_lot_id)
                     .join(Lot, Lot.id == Consumption.lot_id).join(Entry, Entry.id == Lot.entry_id)
                     .where(Consumption.entry_id == entry.id).order_by(Consumption.id)).all()
    return [tuple(r) for r in rows]


def available(s, member="M1", now=NOW) -> int:
    return balance(s, member, now=now, tz=RULES.timezone)["available"]


def test_earn_posts_balanced_double_entry(s, verify_clean):
    entry = earn(s, "e1", 100, at(10))
    assert {p.account: p.points for p in entry.postings} == {
        f"member:{entry.member_id}": 100, "issued:acme": -100}
    assert entry.period == "2026-06" and entry.balance_after == 100 and entry.status == "booked"
    assert len(entry.entry_hash) == 64
    verify_clean()


def test_burn_consumes_first_expiring_then_earliest_occurred_then_earliest_booked(s, verify_clean):
    earn(s, "june-early", 100, at(1))                         # expires end of June 2029
    earn(s, "june-late-booked", 100, at(1), partner="bolt")   # same expiry, same time, booked later
    earn(s, "may", 100, at(20, month=5))                     # expires end of May 2029: first
    earn(s, "june-10", 100, at(10))
    b1 = burn(s, "b1", 150)
    assert taken(s, b1) == [("may", 100, None), ("june-early", 50, None)]
    b2 = burn(s, "b2", 100)
    assert taken(s, b2) == [("june-early", 50, None), ("june-late-booked", 50, None)]
    assert available(s) == 150 and b2.balance_after == 150
    verify_clean()


def test_burn_beyond_available_is_rejected_and_leaves_nothing(s):
    earn(s, "e1", 100, at(10))
    with pytest.raises(Problem) as exc:
        burn(s, "b1", 101)
    assert exc.value.slug == "insufficient-points"
    s.rollback()
    assert s.scalar(select(func.count(Entry.id))) == 1
    assert available(s) == 100
    burn(s, "b1", 100)  # the rejected claim id was not stored: its retry is evaluated afresh
    assert available(s) == 0


def test_pending_points_are_visible_but_not_spendable_until_released(s, verify_clean):
    entry = earn(s, "e1", 100, at(14), pending_until=NOW + timedelta(days=10))
    assert entry.status == "pending" and entry.balance_after == 0
    view = balance(s, "M1", now=NOW, tz=RULES.timezone)
    assert (view["available"], view["pending"]) == (0, 100)
    with pytest.raises(Problem, match="0 points available"):
        burn(s, "b1", 1)
    s.rollback()
    later = NOW + timedelta(days=11)
    assert available(s, now=later) == 100
    burn(s, "b1", 100, when=later, now=later)
    verify_clean()


def test_reversing_a_pending_earn_cancels_it_without_debt(s, verify_clean):
    earn(s, "e1", 100, at(14), pending_until=NOW + timedelta(days=10))
    rev = reverse(s, "e1", "r1", 100, partner="acme")
    assert {p.account: p.points for p in rev.postings} == {
        f"member:{rev.member_id}": -100, "issued:acme": 100}
    assert s.scalar(select(func.count(DebtLot.id))) == 0
    view = balance(s, "M1", now=NOW, tz=RULES.timezone)
    assert (view["available"], view["pending"], view["debt"]) == (0, 0, 0)
    verify_clean()


def test_burn_reversal_returns_points_to_the_lot_consumed_last_first(s, verify_clean):
    may = earn(s, "may", 100, at(20, month=5))
    june = earn(s, "june", 100, at(1))
    b = burn(s, "b1", 150)
    r1 = reverse(s, "b1", "r1", 60, partner="bolt")
    assert taken(s, r1) == [("june", -50, None), ("may", -10, None)]
    assert (lot_of(s, may).remaining, lot_of(s, june).remaining) == (10, 100)
    r2 = reverse(s, "b1", "r2", 90, partner="bolt")
    assert taken(s, r2) == [("may", -90, None)]
    assert available(s) == 200 and r2.balance_after == 200
    with pytest.raises(Problem) as exc:
        reverse(s, "b1", "r3", 1, partner="bolt")
    assert exc.value.slug == "reversal-exceeds-claim"
    s.rollback()
    assert b.points == 150
    verify_clean()


def test_earn_reversal_after_spending_makes_debt_that_later_earns_fill(s, verify_clean):
    earn(s, "e1", 100, at(10), partner="acme")
    burn(s, "b1", 80, partner="bolt")
    rev = reverse(s, "e1", "r1", 100, partner="acme")
    assert {p.account: p.points for p in rev.postings} == {
        f"member:{rev.member_id}": -20, "debt": -80, "issued:acme": 100}
    debt = s.scalars(select(DebtLot)).one()
    assert (debt.creditor_id, debt.points, debt.remaining) == ("acme", 80, 80)
    assert available(s) == -80 and rev.balance_after == -80
    with pytest.raises(Problem):
        burn(s, "b2", 1)
    s.rollback()

    fill1 = earn(s, "e2", 50, at(12), partner="bolt")
    assert {p.account: p.points for p in fill1.postings} == {"debt": 50, "issued:bolt": -50}
    assert taken(s, fill1) == [("e2", 50, debt.id)]
    assert available(s) == -30 and fill1.balance_after == -30
    fill2 = earn(s, "e3", 50, at(13), partner="bolt")
    assert {p.account: p.points for p in fill2.postings} == {
        f"member:{fill2.member_id}": 20, "debt": 30, "issued:bolt": -50}
    assert lot_of(s, fill2).remaining == 20 and available(s) == 20
    s.refresh(debt)
    assert debt.remaining == 0
    assert s.get(Member, rev.member_id).debt == 0
    verify_clean()


def test_a_burn_reversal_pays_the_debt_of_its_lots_reversed_earn_first(s, verify_clean):
    """Debt first: points given back to a lot whose earn was reversed into debt pay that debt
    before they are spendable again; another lot's points given back stay spendable."""
    earn(s, "e1", 100, at(10), partner="acme")
    earn(s, "c1", 15, at(11), partner="cafe")
    earn(s, "d1", 5, at(9), partner="dell")
    burn(s, "b0", 5, partner="bolt")  # d1 -5 (occurred first)
    reverse(s, "d1", "rd", 5, partner="dell")  # a debt of 5 to dell: no lot of b1's
    burn(s, "b1", 110, partner="bolt")  # e1 -100, c1 -10
    reverse(s, "e1", "r1", 50, partner="acme")  # nothing left in e1: a debt of 50 to acme
    dell_debt, acme_debt = s.scalars(select(DebtLot).order_by(DebtLot.id)).all()
    assert available(s) == 5 - 55

    back = reverse(s, "b1", "rb", 110, partner="bolt")  # c1's 10 back first, then e1's 100
    assert {p.account: p.points for p in back.postings} == {
        f"member:{back.member_id}": 60, "debt": 50, "redeemed:bolt": -110}
    assert taken(s, back) == [("c1", -10, None), ("e1", -100, None), ("e1", 50, acme_debt.id)]
    s.refresh(acme_debt)
    s.refresh(dell_debt)
    assert (acme_debt.remaining, dell_debt.remaining) == (0, 5)
    e1 = s.scalars(select(Entry).where(Entry.claim_id == "e1")).one()
    assert lot_of(s, e1).remaining == 50
    assert available(s) == 65 - 5 and back.balance_after == 60
    assert s.get(Member, back.member_id).debt == 5
    verify_clean()


def test_debt_lots_fill_oldest_first_and_pending_earns_fill_nothing(s, verify_clean):
    earn(s, "a1", 10, at(1), partner="acme")
    earn(s, "c1", 10, at(1), partner="cafe")
    burn(s, "b1", 20)
    reverse(s, "a1", "ra", 10, partner="acme")
    reverse(s, "c1", "rc", 10, partner="cafe")
    first, second = s.scalars(select(DebtLot).order_by(DebtLot.id)).all()
    assert (first.creditor_id, second.creditor_id) == ("acme", "cafe")
    pending = earn(s, "p1", 100, at(14), partner="bolt", pending_until=NOW + timedelta(days=3))
    assert taken(s, pending) == [] and s.get(Member, pending.member_id).debt == 20
    e = earn(s, "e1", 15, at(14), partner="bolt")
    assert taken(s, e) == [("e1", 10, first.id), ("e1", 5, second.id)]
    verify_clean()


def test_partial_earn_reversals_never_exceed_the_claim(s, verify_clean):
    earn(s, "e1", 100, at(10))
    reverse(s, "e1", "r1", 40, partner="acme")
    reverse(s, "e1", "r2", 60, partner="acme")
    with pytest.raises(Problem) as exc:
        reverse(s, "e1", "r3", 1, partner="acme")
    assert exc.value.slug == "reversal-exceeds-claim"
    s.rollback()
    assert available(s) == 0
    verify_clean()


def test_claim_ids_are_idempotent_per_partner(s):
    first = ledger.book_earn(s, partner_id="acme", claim_id="e1", member_id="M1", points=100,
                             occurred_at=at(10), now=NOW, rules=RULES)
    s.commit()
    again = ledger.book_earn(s, partner_id="acme", claim_id="e1", member_id="M1", points=100,
                             occurred_at=at(10), now=NOW + timedelta(seconds=5), rules=RULES)
    assert again.replayed and again.entry.id == first.entry.id
    with pytest.raises(Problem) as exc:
        ledger.book_earn(s, partner_id="acme", claim_id="e1", member_id="M1", points=101,
                         occurred_at=at(10), now=NOW, rules=RULES)
    assert exc.value.slug == "claim-id-conflict"
    s.rollback()
    # The same claim id at another partner is another claim; a reversal id shares the namespace.
    earn(s, "e1", 5, at(10), partner="bolt")
    with pytest.raises(Problem) as exc:
        reverse(s, "e1", "e1", 5, partner="bolt")
    assert exc.value.slug == "claim-id-conflict"
    s.rollback()
    assert s.scalar(select(func.count(Entry.id))) == 2


def test_reversal_rules(s):
    earn(s, "e1", 100, at(10))
    with pytest.raises(Problem) as exc:
        reverse(s, "e1", "r1", 10, partner="bolt")  # not bolt's claim
    assert exc.value.slug == "not-found"
    s.rollback()
    reverse(s, "e1", "r1", 10, partner="acme")
    with pytest.raises(Problem) as exc:
        reverse(s, "r1", "r2", 10, partner="acme")  # a reversal is not reversible
    assert exc.value.slug == "validation-error"
    s.rollback()
    with pytest.raises(Problem) as exc:
        reverse(s, "e1", "r3", 10, partner="acme", when=at(9))  # before its claim
    assert exc.value.slug == "validation-error"


def test_occurred_at_window_and_unknown_member(s):
    for when in (NOW - timedelta(days=30, seconds=1), NOW + timedelta(minutes=5, seconds=1)):
        with pytest.raises(Problem) as exc:
            earn(s, "e1", 1, when)
        assert exc.value.errors[0]["pointer"] == "/occurred_at"
        s.rollback()
    earn(s, "e1", 1, NOW + timedelta(minutes=5))
    earn(s, "e2", 1, NOW - timedelta(days=30))
    with pytest.raises(Problem) as exc:
        earn(s, "e3", 1, NOW, member="nobody")
    assert exc.value.slug == "not-found"


def test_locked_member_cannot_burn_but_can_earn(s):
    earn(s, "e1", 100, at(10))
    s.scalars(select(Member).where(Member.external_id == "M1")).one().locked = True
    s.commit()
    with pytest.raises(Problem) as exc:
        burn(s, "b1", 10)
    assert exc.value.slug == "member-locked"
    s.rollback()
    earn(s, "e2", 5, at(11))
    assert available(s) == 105


def test_period_and_expiry_follow_berlin_months(s):
    # 22:30 UTC on 31 August is already September in Berlin.
    now = datetime(2026, 9, 2, tzinfo=UTC)
    entry = earn(s, "e1", 100, datetime(2026, 8, 31, 22, 30, tzinfo=UTC), now=now)
    assert entry.period == "2026-09"
    lot = lot_of(s, entry)
    assert lot.expires_at.replace(tzinfo=UTC) == datetime(2029, 9, 30, 22, 0, tzinfo=UTC)
    view = balance(s, "M1", now=now, tz=RULES.timezone)
    assert view["expiring"] == [{"points": 100, "expires_on": datetime(2029, 9, 30).date()}]
    last_moment = datetime(2029, 9, 30, 21, 59, tzinfo=UTC)
    assert available(s, now=last_moment) == 100
    assert available(s, now=datetime(2029, 9, 30, 22, 0, tzinfo=UTC)) == 0
