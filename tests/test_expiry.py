"""`flask points expire`: lots past their expiry give their points to the expired account."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from coalition import expiry
from coalition.database import db
from coalition.members import find
from coalition.models import Consumption, Entry, Lot
from coalition.periods import month_start_utc, period_of
from coalition.vocabulary import ConsumptionKind, EntryKind
from settlement.service import month_flows
from tests.conftest import ago

ROOT = Path(__file__).resolve().parent.parent
TZ = "Europe/Berlin"


def next_month_start() -> datetime:
    """When lots earned this month expire, with POINTS_EXPIRE_MONTHS 0."""
    now = datetime.now(timezone.utc)
    local = now.astimezone(ZoneInfo(TZ))
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return month_start_utc(year, month, TZ)


@pytest.fixture
def short_lived(app):
    """Points expire at the end of the month they were earned in."""
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"], expire_months=0)
    return app


def run(app, *, days_after: float = 1, chunk: int = expiry.CHUNK, on_chunk=None) -> dict:
    later = next_month_start() + timedelta(days=days_after)
    with app.app_context():
        as_of = (later - timedelta(hours=1)).astimezone(ZoneInfo(TZ)).date()
        return expiry.expire(db.session, as_of=as_of, now=lambda: later, tz=TZ, chunk=chunk,
                             on_chunk=on_chunk)


def entries(app, kind=EntryKind.EXPIRY) -> list[tuple]:
    with app.app_context():
        return [(e.points, e.member.external_id, e.period, e.late) for e in db.session.scalars(
            select(Entry).where(Entry.kind == kind).order_by(Entry.id))]


def test_each_lot_with_points_left_at_its_expiry_expires_once(short_lived, acme, bolt,
                                                             verify_clean):
    app = short_lived
    for card in ("M1", "M2"):
        acme.client.enrol(card)
    acme.client.earn("a1", "M1", 100, occurred_at=ago(minutes=10))
    bolt.client.earn("b1", "M1", 50, occurred_at=ago(minutes=9))
    assert bolt.client.burn("b2", "M1", 30, occurred_at=ago(minutes=8)).status == 201  # from a1
    acme.client.earn("a2", "M2", 20, occurred_at=ago(minutes=7))
    assert acme.client.burn("a3", "M2", 20, occurred_at=ago(minutes=6)).status == 201  # all of it
    done = run(app)
    assert (done["lots_expired"], done["points_expired"], done["members"]) == (2, 120, 1)
    expiry_period = period_of(next_month_start(), TZ)
    assert entries(app) == [(70, "M1", expiry_period, False), (50, "M1", expiry_period, False)]
    with app.app_context():
        member = find(db.session, "M1")
        assert member.balance == 0
        assert db.session.scalar(select(func.sum(Lot.remaining))) == 0
        flows = month_flows(db.session, expiry_period)
        assert dict(flows.expired) == {"acme": 70, "bolt": 50}  # breakage by issuer
        consumed = db.session.scalars(select(Consumption.points)
                                      .where(Consumption.kind == ConsumptionKind.EXPIRY)).all()
        assert sorted(consumed) == [50, 70]
    # Idempotent: a second run books nothing.
    again = run(app, days_after=3)
    assert (again["lots_expired"], again["points_expired"]) == (0, 0)
    assert len(entries(app)) == 2
    history = json.loads(app.test_cli_runner().invoke(args=["members", "show", "M1"]).output)
    assert [h["kind"] for h in history["history"][:2]] == ["expiry", "expiry"]
    verify_clean()


def test_lots_not_yet_due_and_debt_lots_stay(short_lived, acme, verify_clean):
    app = short_lived
    acme.client.enrol("M1")
    acme.client.earn("a1", "M1", 100, occurred_at=ago(minutes=10))
    assert acme.client.burn("b1", "M1", 60, occurred_at=ago(minutes=9)).status == 201
    assert acme.client.reverse("a1", "a1-r", 100, occurred_at=ago(minutes=8)).status == 201
    with app.app_context():
        assert find(db.session, "M1").debt == 60
    later = next_month_start() - timedelta(hours=1)  # before the lots' expiry
    with app.app_context():
        early = expiry.expire(db.session, as_of=later.date(), now=lambda: later, tz=TZ)
    assert early["lots_expired"] == 0
    assert run(app)["lots_expired"] == 0  # the lot is empty; the debt lot never expires
    with app.app_context():
        assert find(db.session, "M1").debt == 60
    verify_clean()


def test_a_run_stopped_after_a_chunk_resumes_without_booking_twice(short_lived, acme,
                                                                   verify_clean):
    app = short_lived
    for i in range(5):
        acme.client.enrol(f"M{i}")
        acme.client.earn(f"e{i}", f"M{i}", 10 + i, occurred_at=ago(minutes=5))

    class Crash(Exception):
        pass

    def crash_after_two(progress):
        if progress["chunk"] == 2:
            raise Crash()
    with pytest.raises(Crash):
        run(app, chunk=1, on_chunk=crash_after_two)
    assert len(entries(app)) == 2  # two chunks committed before the crash
    rest = run(app, chunk=2)
    assert rest["lots_expired"] == 3
    assert sorted(p for p, *_ in entries(app)) == [10, 11, 12, 13, 14]
    verify_clean()


def test_the_day_asked_for_may_not_lie_in_the_future(app, runner):
    tomorrow_but_one = date.today() + timedelta(days=3)
    result = runner.invoke(args=["points", "expire", "--as-of", tomorrow_but_one.isoformat()])
    assert result.exit_code == 1 and json.loads(result.output)["error"] == "validation-error"
    result = runner.invoke(args=["points", "expire", "--as-of", date.today().isoformat()])
    assert result.exit_code == 0 and json.loads(result.output)["lots_expired"] == 0


def test_an_expiry_run_killed_mid_run_is_finished_by_the_next(short_lived, acme, tmp_path,
                                                             verify_clean):
    """SIGKILL, not an exception: the process dies between two chunks' commits or inside one."""
    app = short_lived
    for i in range(40):
        acme.client.enrol(f"K{i}")
        acme.client.earn(f"k{i}", f"K{i}", 5, occurred_at=ago(minutes=5))
    later = next_month_start() + timedelta(days=1)
    script = tmp_path / "slow_expiry.py"
    script.write_text(f"""
import sys, time
from datetime import datetime
sys.path.insert(0, {str(ROOT)!r})
from coalition import create_app, expiry
from coalition.database import db
app = create_app({{"SQLALCHEMY_DATABASE_URI": {app.config["SQLALCHEMY_DATABASE_URI"]!r}}})
later = datetime.fromisoformat({later.isoformat()!r})
def slowly(progress):
    print(progress["chunk"], flush=True)
    time.sleep(0.2)
with app.app_context():
    expiry.expire(db.session, as_of=later.date(), now=lambda: later, tz={TZ!r}, chunk=3,
                  on_chunk=slowly)
""")
    with app.app_context():
        db.session.remove()
        db.engine.dispose()  # SQLite: the child writes; nothing of ours may hold the file
    child = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen = [child.stdout.readline() for _ in range(3)]
    assert seen[-1].strip() == "3"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    partial = len(entries(app))
    assert 9 <= partial < 40  # three chunks at least, not all
    rest = run(app)
    assert rest["lots_expired"] == 40 - partial
    assert len(entries(app)) == 40
    verify_clean()


def test_reversing_an_earn_whose_points_expired_takes_them_from_breakage_not_the_member(
        short_lived, acme, bolt, verify_clean):
    """The expired part of the earn's lot comes back from the expired account; only the part
    the member spent becomes a debt."""
    from coalition import ledger
    app = short_lived
    acme.client.enrol("M1")
    acme.client.earn("a1", "M1", 100, occurred_at=ago(minutes=10))
    assert bolt.client.burn("b1", "M1", 30, occurred_at=ago(minutes=9)).status == 201
    assert run(app)["points_expired"] == 70
    later = next_month_start() + timedelta(days=1)
    with app.app_context():
        s = db.session

        def reverse(rid, points):
            booked = ledger.book_reversal(s, partner_id="acme", claim_id="a1", reversal_id=rid,
                                          points=points, occurred_at=later - timedelta(minutes=1),
                                          now=later, rules=app.config["LEDGER_RULES"])
            s.commit()
            return {p.account: p.points for p in booked.entry.postings}

        assert reverse("r1", 80) == {"expired": -70, "debt": -10, "issued:acme": 80}
        assert reverse("r2", 20) == {"debt": -20, "issued:acme": 20}  # nothing expired is left
        member = find(s, "M1")
        assert (member.balance, member.debt) == (0, 30)
        assert s.scalar(select(func.sum(Lot.remaining))) == 0
        flows = month_flows(s, period_of(later, TZ))
        assert dict(flows.expired) == {"acme": 0}  # expired 70, given back 70: no breakage
    verify_clean()


@pytest.mark.parametrize("path", ["single", "batch"])
def test_an_earn_sent_after_its_points_expired_books_but_neither_counts_nor_pays_debt(
        short_lived, acme, bolt, verify_clean, path):
    """A claim may arrive up to 30 days late, after the end of the month that was its points'
    expiry (POINTS_EXPIRE_MONTHS 0 here). The earn books and bolt is charged its issuance, but
    the points were never spendable: balance_after leaves them out, the member's debt stays,
    and the next expiry run books them to the expired account (bolt's breakage)."""
    from coalition import batch, ledger, redemption
    app = short_lived
    acme.client.enrol("M1")
    acme.client.earn("a1", "M1", 100, occurred_at=ago(minutes=10))
    assert bolt.client.burn("b1", "M1", 100, occurred_at=ago(minutes=9)).status == 201
    assert acme.client.reverse("a1", "r1", 100, occurred_at=ago(minutes=8)).status == 201
    later = next_month_start() + timedelta(days=1)
    occurred = next_month_start() - timedelta(hours=2)  # last month's points: expired at its end
    rules = app.config["LEDGER_RULES"]
    with app.app_context():
        s = db.session
        claim = {"claim_id": "late", "member_id": "M1", "points": 40, "occurred_at": occurred}
        if path == "single":
            entry = ledger.book_earn(s, partner_id="bolt", now=later, rules=rules, **claim).entry
        else:
            [outcome] = batch.book_batch(s, [batch.Item("earn", claim)], partner_id="bolt",
                                         now=later, rules=rules, policy=redemption.NO_POLICY,
                                         restore=lambda: None)
            assert outcome.status == 201, outcome.problem
            entry = outcome.booked.entry if outcome.booked else s.scalars(
                select(Entry).where(Entry.claim_id == "late")).one()
        s.commit()
        assert entry.balance_after == -100  # the debt, and none of the 40
        member = find(s, "M1")
        assert (member.balance, member.debt) == (40, 100)
        lot = s.scalars(select(Lot).where(Lot.entry_id == entry.id)).one()
        assert lot.remaining == 40
        assert s.scalar(select(func.count(Consumption.id))
                        .where(Consumption.kind == ConsumptionKind.DEBT_FILL)) == 0
    assert run(app)["points_expired"] == 40
    with app.app_context():
        member = find(db.session, "M1")
        assert (member.balance, member.debt) == (0, 100)
        assert dict(month_flows(db.session, period_of(later, TZ)).expired) == {"bolt": 40}
    verify_clean()
