"""The sealer's leader lease (coalition/leases.py): of several sealers, one seals at a time;
another takes over when the holder stops (at once) or stops renewing (after the ttl); on
PostgreSQL, contenders racing for a free lease end with exactly one holder."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from coalition import leases, sealer
from coalition.database import db
from coalition.models import LeaderLease
from tests.conftest import postgres_only
from tests.test_sealer_loop import Ticks, blocks, earn_later
from tests.test_verify import ledger_with_history  # noqa: F401  (fixture)

T0 = datetime(2026, 12, 6, 6, 0, tzinfo=timezone.utc)
TTL = timedelta(seconds=15)


def lease(holder: str) -> leases.Lease:
    return leases.Lease("sealer", holder, TTL)


def hold(app, who: leases.Lease, at: datetime) -> bool:
    with app.app_context():
        held = who.hold(db.session, now=at)
        db.session.commit()
        return held


def test_the_holder_renews_and_others_wait_until_it_expires(app):
    a, b = lease("a"), lease("b")
    assert hold(app, a, T0)
    assert not hold(app, b, T0 + timedelta(seconds=1))
    assert hold(app, a, T0 + timedelta(seconds=10))            # renewed: now runs to T0+25
    assert not hold(app, b, T0 + timedelta(seconds=20))        # past the first ttl, not this one
    assert hold(app, b, T0 + timedelta(seconds=26))            # a stopped renewing
    assert not hold(app, a, T0 + timedelta(seconds=27))
    with app.app_context():
        row = db.session.get(LeaderLease, "sealer")
        assert (row.holder, row.acquired_at.replace(tzinfo=timezone.utc)) == \
            ("b", T0 + timedelta(seconds=26))


def test_a_released_lease_is_taken_at_the_next_try(app):
    a, b = lease("a"), lease("b")
    assert hold(app, a, T0)
    with app.app_context():
        b.release(db.session, now=T0 + timedelta(seconds=1))   # not b's: changes nothing
        db.session.commit()
    assert not hold(app, b, T0 + timedelta(seconds=2))
    with app.app_context():
        a.release(db.session, now=T0 + timedelta(seconds=3))
        db.session.commit()
    assert hold(app, b, T0 + timedelta(seconds=3, milliseconds=1))


def run_with_lease(app, who, stop, moments):
    lines, errors = [], []
    with app.app_context():
        runs = sealer.run_sealer(db.session, every=5, stop=stop, report=lines.append,
                                 on_error=errors.append, now=lambda: moments.pop(0), lease=who)
    assert errors == []
    return runs, lines


def test_only_the_holder_seals_and_the_other_takes_over_when_it_stops(ledger_with_history, acme):
    app = ledger_with_history
    assert hold(app, lease("other-instance"), T0)   # another instance leads
    runs, lines = run_with_lease(app, lease("me"), Ticks(earn_later(acme)),
                                 [T0 + timedelta(seconds=5), T0 + timedelta(seconds=10)])
    assert runs == 2
    assert lines == [{"event": "following", "holder": "me"}]
    assert blocks(app) == []                         # following: nothing sealed

    # The leader died without handing back: after its ttl, this one leads and seals it all.
    runs, lines = run_with_lease(app, lease("me"), Ticks(),
                                 [T0 + timedelta(seconds=16), T0 + timedelta(seconds=17)])
    assert [line["event"] for line in lines] == ["leading", "sealed"]
    assert lines[1]["entries"] == 7
    with app.app_context():                          # stopping handed it back
        row = db.session.get(LeaderLease, "sealer")
        assert (row.holder, row.expires_at.replace(tzinfo=timezone.utc)) == \
            ("me", T0 + timedelta(seconds=17))
    assert hold(app, lease("next"), T0 + timedelta(seconds=17, milliseconds=1))


@postgres_only
def test_racing_contenders_end_with_one_holder(app):
    """Twelve threads, each its own session and connection, try to take the free lease at
    once: exactly one gets it, and the row names that one."""
    start, results = threading.Barrier(12), {}

    def contend(name):
        with app.app_context():
            start.wait()
            results[name] = lease(name).hold(db.session, now=T0)
            db.session.commit()
            db.session.remove()

    threads = [threading.Thread(target=contend, args=(f"c{i}",)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [name for name, held in results.items() if held]
    assert len(results) == 12 and len(winners) == 1
    with app.app_context():
        assert db.session.scalar(select(LeaderLease.holder)) == winners[0]
