"""The sealer chains committed journal entries into blocks; verify catches any change after."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timezone

import pytest

from coalition import ledger, sealer
from coalition.database import db
from tests.conftest import postgres_only
from tests.test_verify import ledger_with_history, tamper  # noqa: F401  (fixture)

NOW = datetime.now(timezone.utc)


def seal(runner):
    result = runner.invoke(args=["ledger", "seal"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def verify(runner):
    result = runner.invoke(args=["ledger", "verify"])
    return result.exit_code, json.loads(result.output)


def test_sealing_chains_every_committed_entry_once(ledger_with_history, runner):
    first = seal(runner)
    assert (first["blocks"], first["entries"], first["last_entry_id"]) == (1, 6, 6)
    assert seal(runner) == {**first, "blocks": 0, "entries": 0}  # nothing new: nothing sealed
    anchor = json.loads(runner.invoke(args=["ledger", "anchor"]).output)
    assert anchor["head"] == first["head"] and len(anchor["head"]) == 64
    code, report = verify(runner)
    assert code == 0 and report["checked"]["blocks"] == 1


def test_sealing_stops_at_the_watermark(ledger_with_history):
    with ledger_with_history.app_context():
        blocks = sealer.seal(db.session, now=NOW, upto=4)
        assert [(b.first_entry_id, b.last_entry_id, b.entry_count) for b in blocks] == [(1, 4, 4)]
        assert blocks[0].prev_hash == sealer.GENESIS
        rest = sealer.seal(db.session, now=NOW)
        assert [(b.first_entry_id, b.last_entry_id) for b in rest] == [(5, 6)]
        assert rest[0].prev_hash == blocks[0].block_hash


@postgres_only
def test_the_sealer_waits_for_a_claim_in_flight_rather_than_skip_its_id(ledger_with_history):
    """An uncommitted entry with a lower id than a committed one is never sealed past."""
    app = ledger_with_history
    rules = app.config["LEDGER_RULES"]
    with app.app_context():
        ledger.book_earn(db.session, partner_id="acme", claim_id="slow", member_id="M1",
                         points=7, occurred_at=NOW, now=NOW, rules=rules)
        db.session.flush()  # id 7 is taken, the transaction stays open
        sealed = []

        def run_sealer():
            with app.app_context():
                sealed.extend((b.first_entry_id, b.last_entry_id) for b in
                              sealer.seal(db.session, now=datetime.now(timezone.utc)))
                db.session.commit()
        thread = threading.Thread(target=run_sealer)
        thread.start()
        thread.join(timeout=1)
        assert thread.is_alive()  # waiting for the claim in flight
        db.session.commit()
        thread.join(timeout=10)
    assert sealed == [(1, 7)]


def test_blocks_chain_to_each_other(ledger_with_history, acme, runner):
    seal(runner)
    acme.client.earn("later", "M2", 5)
    second = seal(runner)
    assert (second["blocks"], second["entries"]) == (1, 1)
    with ledger_with_history.app_context():
        first, last = db.session.scalars(db.select(sealer.LedgerBlock).order_by(sealer.LedgerBlock.id))
        assert last.prev_hash == first.block_hash
    assert verify(runner)[0] == 0


# A different hash: its first two characters replaced, by "aa" unless they were "aa" already
# (1 hash in 256: the update would then change nothing).
REWRITTEN = ("CASE WHEN substr(entry_hash, 1, 2) = 'aa' THEN 'bb' ELSE 'aa' END "
             "|| substr(entry_hash, 3)")

TAMPERING = {
    # A whole claim deleted with every derived row rewritten to match: only the chain sees it.
    "claim deleted consistently":
        ("DELETE FROM postings WHERE entry_id = 2; DELETE FROM lots WHERE entry_id = 2; "
         "UPDATE members SET balance = 0 WHERE id = 2; DELETE FROM journal_entries WHERE id = 2",
         "block-entries"),
    "entry hash rewritten to match edited content":
        ("UPDATE journal_entries SET entry_hash = " + REWRITTEN + " WHERE id = 3",
         "block-entries"),
    "block edited": ("UPDATE ledger_blocks SET entry_count = 5", "block-chain"),
    "seal record edited": ("UPDATE ledger_seals SET entry_hash = entry_hash || '' WHERE entry_id = 1; "
                           "DELETE FROM ledger_seals WHERE entry_id = 4", "block-seals"),
    "block deleted and the chain rebuilt without it": ("DELETE FROM ledger_blocks", None),
}


@pytest.mark.parametrize("sql, check", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_after_sealing_is_caught(ledger_with_history, runner, sql, check):
    seal(runner)
    tamper(ledger_with_history, sql)
    code, report = verify(runner)
    if check is None:
        # Deleting every block is not visible from inside the database: that is what the
        # anchor kept outside it is for (the head no longer matches).
        assert code == 0 and report["checked"]["blocks"] == 0
    else:
        assert code == 1 and check in report["violations_by_check"], report


# Each change made after sealing is named by the first entry it broke, and how.
DELETE_ENTRY = ("DELETE FROM postings WHERE entry_id = {id}; DELETE FROM lots WHERE entry_id = {id}; "
                "DELETE FROM journal_entries WHERE id = {id}")
FIRST_BROKEN = {
    "deleted": (DELETE_ENTRY, "deleted"),
    "hash rewritten": ("UPDATE journal_entries SET entry_hash = " + REWRITTEN + " WHERE id = {id}",
                       "changed"),
}


def entry_ids(app) -> list[int]:
    with app.app_context():
        return db.session.scalars(db.select(ledger.Entry.id).order_by(ledger.Entry.id)).all()


def named_breaks(report) -> list[tuple[int, int]]:
    return [(v["entry_id"], v["block"]) for v in report["violations"] if v["check"] == "block-entries"]


@pytest.mark.parametrize("sql, how", FIRST_BROKEN.values(), ids=FIRST_BROKEN.keys())
def test_verify_names_the_first_broken_entry(ledger_with_history, runner, sql, how):
    assert seal(runner)["blocks"] == 1
    target = entry_ids(ledger_with_history)[1]  # e2: a plain earn nothing else refers to
    tamper(ledger_with_history, sql.format(id=target))
    code, report = verify(runner)
    assert code == 1 and named_breaks(report) == [(target, 1)], report
    assert f"entry {target} was {how}" in next(
        v["detail"] for v in report["violations"] if v["check"] == "block-entries")


def test_verify_names_an_entry_inserted_into_a_sealed_gap(ledger_with_history, runner):
    """Ids can have gaps (a rolled-back insert on PostgreSQL); a row forged into one is named."""
    ids = entry_ids(ledger_with_history)
    gap = ids[1]
    tamper(ledger_with_history, DELETE_ENTRY.format(id=gap))  # before sealing: the gap
    seal(runner)
    tamper(ledger_with_history,
           "INSERT INTO journal_entries (id, kind, partner_id, claim_id, member_id, points, "
           "occurred_at, recorded_at, period, late, fingerprint, status, balance_after, entry_hash) "
           "SELECT {gap}, kind, partner_id, 'forged', member_id, points, occurred_at, recorded_at, "
           "period, late, fingerprint, status, balance_after, entry_hash "
           "FROM journal_entries WHERE id = {first}".format(gap=gap, first=ids[0]))
    code, report = verify(runner)
    assert code == 1 and named_breaks(report) == [(gap, 1)], report
    assert f"entry {gap} was inserted" in str(report["violations"])


def test_upgrading_to_seal_records_backfills_the_sealed_entries(ledger_with_history, runner):
    """Blocks sealed before migration 0007 get their per-entry seal records from the journal."""
    import flask_migrate
    seal(runner)
    with ledger_with_history.app_context():
        flask_migrate.downgrade(revision="0006")
        flask_migrate.upgrade()
        seals = db.session.execute(db.select(sealer.LedgerSeal.entry_id, sealer.LedgerSeal.block_id)
                                   .order_by(sealer.LedgerSeal.entry_id)).all()
        db.session.rollback()
    assert seals == [(i, 1) for i in entry_ids(ledger_with_history)]
    assert verify(runner)[0] == 0
    tamper(ledger_with_history, DELETE_ENTRY.format(id=seals[1][0]))
    assert named_breaks(verify(runner)[1]) == [(seals[1][0], 1)]
