"""`flask ledger verify` re-derives the ledger and catches rows changed behind its back."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from coalition.database import db
from tests.conftest import ago


@pytest.fixture
def ledger_with_history(app, acme, bolt):
    """Earns, burns, a burn reversal, an earn reversal with debt and a debt fill."""
    c, b = acme.client, bolt.client
    c.enrol("M1"), c.enrol("M2")
    assert c.earn("e1", "M1", 100, occurred_at=ago(minutes=9)).status == 201
    assert c.earn("e2", "M2", 50, occurred_at=ago(minutes=9)).status == 201
    assert b.burn("b1", "M1", 80, occurred_at=ago(minutes=8)).status == 201
    assert b.reverse("b1", "rb1", 10, occurred_at=ago(minutes=7)).status == 201
    assert c.reverse("e1", "re1", 100, occurred_at=ago(minutes=6)).status == 201  # 70 spent: debt
    assert b.earn("e3", "M1", 40, occurred_at=ago(minutes=5)).status == 201     # fills 40
    return app


def run_verify(runner):
    result = runner.invoke(args=["ledger", "verify"])
    return result.exit_code, json.loads(result.output)


def test_clean_ledger_verifies(ledger_with_history, runner):
    code, report = run_verify(runner)
    assert code == 0 and report["ok"], report
    assert report["checked"]["entries"] == 6 and report["checked"]["lots"] == 3


TAMPERING = {
    "posting changed": ("UPDATE postings SET points = points + 1 WHERE id = 1", "entry-balanced"),
    "posting moved to another account":
        ("UPDATE postings SET account = 'issued:bolt' WHERE account = 'issued:acme' "
         "AND points = -100", "entry-hash"),
    "posting deleted": ("DELETE FROM postings WHERE id = 2", "entry-balanced"),
    "posting inserted": ("INSERT INTO postings (entry_id, account, points, period) "
                         "SELECT 1, 'expired', 5, period FROM journal_entries WHERE id = 1",
                         "entry-balanced"),
    "pair of postings inserted":
        ("INSERT INTO postings (entry_id, account, points, period) "
         "SELECT 1, a, p, period FROM journal_entries, (SELECT 'expired' AS a, 5 AS p "
         "UNION ALL SELECT 'issued:acme', -5) AS x WHERE id = 1", "entry-hash"),
    "entry points changed": ("UPDATE journal_entries SET points = 99 WHERE claim_id = 'e2'",
                             "entry-hash"),
    "entry member changed":
        ("UPDATE journal_entries SET member_id = 2 WHERE claim_id = 'b1'", "entry-hash"),
    "stored balance changed": ("UPDATE members SET balance = balance + 50 WHERE id = 2",
                               "member-balance"),
    "stored debt forgiven": ("UPDATE members SET debt = 0 WHERE id = 1", "member-debt"),
    "lot topped up": ("UPDATE lots SET remaining = remaining + 1, spent_period = 'open' "
                      "WHERE id = 1", "lot-remaining"),
    "lot issuer changed": ("UPDATE lots SET issuer_id = 'bolt' WHERE id = 1", "lot-origin"),
    "consumption deleted":
        ("DELETE FROM consumptions WHERE kind = 'burn_reversal'", "entry-shape"),
    "debt lot shrunk": ("UPDATE debt_lots SET remaining = remaining - 1", "debt-lot-remaining"),
    # A deletion that also rewrites every derived row consistently needs the hash chain of the
    # reliability work to be caught; deleting the journal rows alone is caught here.
    "earn's postings deleted": ("DELETE FROM postings WHERE entry_id = 2", "entry-balanced"),
}


def tamper(app, sql: str) -> None:
    """Run statements behind the service's back, as someone with database access would."""
    with app.app_context():
        with db.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            for statement in sql.split("; "):
                conn.execute(text(statement))


@pytest.mark.parametrize("sql, check", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_is_caught(ledger_with_history, runner, sql, check):
    tamper(ledger_with_history, sql)
    code, report = run_verify(runner)
    assert code == 1 and not report["ok"]
    assert check in report["violations_by_check"], report
