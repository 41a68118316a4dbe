"""Closing a month while claims for it keep arriving, on a real PostgreSQL server."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from sqlalchemy import func, select

from coalition import sealer
from coalition.database import db
from coalition.ledger import Rules
from coalition.models import Entry
from coalition.periods import add_months, month_of, period_of
from settlement import service as settlement
from settlement.signing import signing_key
from tests.conftest import postgres_only
from tests.test_concurrency import in_parallel

pytestmark = postgres_only


def test_a_claim_lands_wholly_in_the_closing_month_or_wholly_in_the_next(app, acme, bolt, runner, verify_clean):
    tz = app.config["COALITION_TIMEZONE"]
    app.config["LEDGER_RULES"] = Rules(tz, 400, 36)  # claims of last month stay acceptable
    now = datetime.now(timezone.utc)
    year, month = add_months(*month_of(now, tz), -1)
    last_month = f"{year:04d}-{month:02d}"
    occurred = (datetime(year, month, 15, 12, tzinfo=timezone.utc)).isoformat()
    members = [f"M{i}" for i in range(10)]
    for m in members:
        acme.client.enrol(m)
        assert acme.client.earn(f"seed-{m}", m, 1000, occurred_at=occurred).status == 201

    def work(i):
        if i == 0:  # the operator closes last month while the others post claims for it
            time.sleep(0.05)
            with app.app_context():
                settlement.close(db.session, last_month, now=datetime.now(timezone.utc), tz=tz,
                                 key=signing_key(app.config["COALITION_SIGNING_KEY_FILE"]))
                db.session.commit()
            return "closed"
        if i == 1:  # and the sealer runs alongside, as it would every few seconds
            for _ in range(5):
                with app.app_context():
                    sealer.seal(db.session, now=datetime.now(timezone.utc))
                    db.session.commit()
                time.sleep(0.02)
            return "sealed"
        statuses = []
        for j in range(6):
            m = members[(i + j) % 10]
            statuses.append(acme.client.earn(f"e{i}-{j}", m, 10, occurred_at=occurred).status)
            statuses.append(bolt.client.burn(f"b{i}-{j}", m, 3, occurred_at=occurred).status)
        return statuses
    results = in_parallel(18, work)
    assert results[:2] == ["closed", "sealed"]
    assert all(s == 201 for r in results[2:] for s in r)

    with app.app_context():
        s = db.session
        in_month = s.execute(select(Entry.late, func.count(), func.sum(Entry.points))
                             .where(Entry.period == last_month).group_by(Entry.late)).all()
        later = s.execute(select(Entry.period, Entry.late, func.count())
                          .where(Entry.period != last_month).group_by(Entry.period, Entry.late)).all()
        acme_doc = json.loads(settlement.statement(s, "acme", last_month).document)
        bolt_doc = json.loads(settlement.statement(s, "bolt", last_month).document)
    assert [late for late, _, _ in in_month] == [False]
    assert all(period == period_of(now, tz) and late for period, late, _ in later)
    booked = in_month[0][1]
    late_count = sum(n for _, _, n in later)
    assert booked + late_count == 10 + 16 * 12
    assert acme_doc["claims"] + bolt_doc["claims"] == booked  # the statement saw exactly those
    assert acme_doc["points_issued"] + bolt_doc["points_redeemed"] == in_month[0][2]
    verify_clean()
    result = runner.invoke(args=["ledger", "verify"])
    assert result.exit_code == 0, result.output
