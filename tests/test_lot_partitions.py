"""Lots partitioned by the month they were used up in (migration 0027): a lot holds
spent_period 'open' while it has points, else the latest month of the entries that changed it
(last_period); on PostgreSQL the open lots sit in lots_open and the used-up ones in their
month's partition. Settlement finds a month's lots by it (vocabulary.lot_since), so
last_period must reach every consumption's month, even one a late claim books into an earlier
month."""
from __future__ import annotations

from datetime import datetime, timezone

import flask_migrate
import pytest
from sqlalchemy import select, text

from coalition import ledger
from coalition.database import db
from coalition.members import enrol
from coalition.models import Lot
from coalition.vocabulary import spendable
from partners import service as partner_service
from settlement import service as settlement
from tests.conftest import ON_POSTGRES, postgres_only
from tests.test_partitions import mid, month, rules

UTC = timezone.utc


def lots(app) -> dict[int, tuple]:
    """id -> (remaining, last_period, spent_period, the partition it sits in on PostgreSQL)."""
    where = "tableoid::regclass::text" if ON_POSTGRES else "'lots'"
    with app.app_context():
        return {row[0]: tuple(row[1:]) for row in db.session.execute(text(
            f"SELECT id, remaining, last_period, spent_period, {where} FROM lots ORDER BY id"))}


def partition(period: str) -> str:
    return f"lots_{period.replace('-', '_')}" if ON_POSTGRES else "lots"


OPEN = "lots_open" if ON_POSTGRES else "lots"


@pytest.fixture
def shop(app):
    last = month(app, 1)
    with app.app_context():
        partner_service.add_partner(db.session, "shop", "Shop", now=mid(last, 1))
        enrol(db.session, "M1", now=mid(last, 1))
        db.session.commit()
    return last, month(app, 0)


def test_a_lot_moves_out_of_the_open_lots_when_used_up_and_back_when_given_back(
        app, shop, verify_clean):
    last, now = shop
    at = datetime.now(UTC)
    with app.app_context():
        s, r = db.session, rules(app)
        ledger.book_earn(s, now=mid(last), rules=r, partner_id="shop", claim_id="e1",
                         member_id="M1", points=100, occurred_at=mid(last))
        ledger.book_earn(s, now=mid(last), rules=r, partner_id="shop", claim_id="e2",
                         member_id="M1", points=50, occurred_at=mid(last))
        s.commit()
        first, second = sorted(lots(app))
        assert lots(app) == {first: (100, last, "open", OPEN), second: (50, last, "open", OPEN)}
        ledger.book_burn(s, now=at, rules=r, partner_id="shop", claim_id="b1", member_id="M1",
                         points=120, occurred_at=at)
        s.commit()
        assert lots(app) == {first: (0, now, now, partition(now)),
                             second: (30, now, "open", OPEN)}
        # The reversal gives the points back to the lot consumed last first: the second lot,
        # then 10 to the first, which holds points again.
        ledger.book_reversal(s, now=at, rules=r, partner_id="shop", claim_id="b1",
                             reversal_id="rb1", points=30, occurred_at=at)
        s.commit()
        assert lots(app) == {first: (10, now, "open", OPEN), second: (50, now, "open", OPEN)}
        # Reversing the earn in full takes what is left of its lot: used up again.
        ledger.book_reversal(s, now=at, rules=r, partner_id="shop", claim_id="e1",
                             reversal_id="re1", points=100, occurred_at=at)
        s.commit()
        assert lots(app)[first] == (0, now, now, partition(now))
    verify_clean()


def test_a_late_claim_into_an_earlier_month_leaves_the_lot_in_the_latest_month(
        app, shop, verify_clean):
    """A burn of this month takes part of a lot; a late burn, booked afterwards into last
    month (still open), takes the rest. The lot is used up in this month, the latest of its
    consumptions, not in last month: last month's close finds it there, and settles it."""
    last, now = shop
    day_2, day_3 = mid(now, 2), mid(now, 3)
    with app.app_context():
        s, r = db.session, rules(app)
        ledger.book_earn(s, now=mid(last, 20), rules=r, partner_id="shop", claim_id="e1",
                         member_id="M1", points=100, occurred_at=mid(last, 20))
        ledger.book_burn(s, now=day_2, rules=r, partner_id="shop", claim_id="b-now",
                         member_id="M1", points=30, occurred_at=day_2)
        late = ledger.book_burn(s, now=day_3, rules=r, partner_id="shop", claim_id="b-late",
                                member_id="M1", points=70, occurred_at=mid(last, 28))
        s.commit()
        assert late.entry.period == last
        assert list(lots(app).values()) == [(0, now, now, partition(now))]
        flows = settlement.month_flows(s, last)
        assert flows.funded["shop"] == 70 and flows.matrix["shop", "shop"] == 70
        assert settlement.month_flows(s, now).funded["shop"] == 30
    verify_clean()


def test_verify_catches_a_lot_whose_months_disagree_with_the_journal(app, shop):
    last, now = shop
    at = datetime.now(UTC)
    with app.app_context():
        s, r = db.session, rules(app)
        ledger.book_earn(s, now=mid(last), rules=r, partner_id="shop", claim_id="e1",
                         member_id="M1", points=100, occurred_at=mid(last))
        ledger.book_burn(s, now=at, rules=r, partner_id="shop", claim_id="b1", member_id="M1",
                         points=100, occurred_at=at)
        s.commit()
        # The lot said used up last month, while this month's burn consumed it.
        s.execute(text("UPDATE lots SET last_period = :p, spent_period = :p"), {"p": last})
        s.commit()
        from coalition.verify import verify
        report = verify(s)
        s.rollback()
    assert not report["ok"]
    assert {v["check"] for v in report["violations"]} == {"lot-period"}


@postgres_only
def test_the_database_refuses_a_lot_that_holds_points_outside_the_open_partition(app, shop):
    last, _ = shop
    with app.app_context():
        s = db.session
        ledger.book_earn(s, now=mid(last), rules=rules(app), partner_id="shop", claim_id="e1",
                         member_id="M1", points=100, occurred_at=mid(last))
        s.commit()
        with pytest.raises(Exception, match="spent_when_empty"):
            s.execute(text("UPDATE lots SET spent_period = :p"), {"p": last})
        s.rollback()


@postgres_only
def test_a_burn_reads_the_open_lots_partition_only(app, shop):
    at = datetime.now(UTC)
    with app.app_context():
        statement = select(Lot.id).where(Lot.member_id == 1, spendable(Lot, at))
        sql = str(statement.compile(db.engine, compile_kwargs={"literal_binds": True}))
        plan = "\n".join(db.session.execute(text(f"EXPLAIN {sql}")).scalars())
    assert "lots_open" in plan
    assert "lots_default" not in plan and "lots_20" not in plan, plan


def test_the_migration_fills_the_lots_months_from_the_journal(app, shop, verify_clean):
    """0026 -> 0027 over an open lot, a lot used up by a late claim and one by a reversal:
    last_period and spent_period as the ledger would have kept them, each lot in its
    partition, verify clean, and claims book on."""
    last, now = shop
    at, day_2, day_3 = datetime.now(UTC), mid(now, 2), mid(now, 3)
    with app.app_context():
        s, r = db.session, rules(app)
        for claim, points in (("e1", 100), ("e2", 40), ("e3", 25)):
            ledger.book_earn(s, now=mid(last, 20), rules=r, partner_id="shop", claim_id=claim,
                             member_id="M1", points=points, occurred_at=mid(last, 20))
        ledger.book_burn(s, now=day_2, rules=r, partner_id="shop", claim_id="b-now",
                         member_id="M1", points=30, occurred_at=day_2)
        ledger.book_burn(s, now=day_3, rules=r, partner_id="shop", claim_id="b-late",
                         member_id="M1", points=70, occurred_at=mid(last, 28))
        ledger.book_reversal(s, now=at, rules=r, partner_id="shop", claim_id="e3",
                             reversal_id="re3", points=25, occurred_at=at)
        s.commit()
    before = lots(app)
    assert sorted(v[2] for v in before.values()) == [now, now, "open"]
    with app.app_context():
        flask_migrate.downgrade(revision="0026")
        db.session.remove()
        flask_migrate.upgrade()
        db.session.remove()
    assert lots(app) == before
    verify_clean()
    with app.app_context():
        s = db.session
        ledger.book_burn(s, now=at, rules=rules(app), partner_id="shop", claim_id="b-after",
                         member_id="M1", points=40, occurred_at=at)
        s.commit()
    assert sorted(v[2] for v in lots(app).values()) == [now, now, now]
    verify_clean()
