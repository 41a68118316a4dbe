"""The journal partitioned by month (migration 0026, coalition/partitions.py): claim ids stay
unique across months, rows sit in their month's partition, the migration carries a database
holding data, and a closed month detached into the archive keeps `ledger verify` (and
`--anchors`) whole, catching tampering with what stands in for it."""
from __future__ import annotations

import json
import threading
from datetime import datetime, timezone

import flask_migrate
import pytest
from sqlalchemy import inspect, text

from coalition import ledger, partitions
from coalition.database import db
from coalition.members import enrol
from coalition.periods import add_months, month_of
from coalition.problems import Problem
from partners import service as partner_service
from settlement import service as settlement
from tests.conftest import ON_POSTGRES, await_lock_wait, postgres_only

UTC = timezone.utc


def month(app, back: int) -> str:
    year, mon = add_months(*month_of(datetime.now(UTC), app.config["COALITION_TIMEZONE"]), -back)
    return f"{year:04d}-{mon:02d}"


def mid(period: str, day: int = 15) -> datetime:
    return datetime(int(period[:4]), int(period[5:7]), day, 12, tzinfo=UTC)


def rules(app) -> ledger.Rules:
    return ledger.Rules(app.config["COALITION_TIMEZONE"], 30, 36)


@pytest.fixture
def months(app):
    """Claims in three months, booked with their own clocks: two months ago an earn (e-old), a
    second member's earn and a burn; last month a partial reversal of e-old and an earn; this
    month a burn. Answers (two months ago, last month, this month)."""
    old, last, now = month(app, 2), month(app, 1), month(app, 0)
    with app.app_context():
        s, r = db.session, rules(app)
        partner_service.add_partner(s, "shop", "Shop", now=mid(old, 1))
        enrol(s, "M1", now=mid(old, 1)), enrol(s, "M2", now=mid(old, 1))
        ledger.book_earn(s, now=mid(old), rules=r, partner_id="shop", claim_id="e-old",
                         member_id="M1", points=500, occurred_at=mid(old))
        ledger.book_earn(s, now=mid(old), rules=r, partner_id="shop", claim_id="e-m2",
                         member_id="M2", points=70, occurred_at=mid(old))
        ledger.book_burn(s, now=mid(old, 20), rules=r, partner_id="shop", claim_id="b-old",
                         member_id="M1", points=120, occurred_at=mid(old, 20))
        ledger.book_reversal(s, now=mid(last), rules=r, partner_id="shop", claim_id="e-old",
                             reversal_id="r-last", points=100, occurred_at=mid(last))
        ledger.book_earn(s, now=mid(last), rules=r, partner_id="shop", claim_id="e-last",
                         member_id="M1", points=40, occurred_at=mid(last))
        at = datetime.now(UTC)
        ledger.book_burn(s, now=at, rules=r, partner_id="shop", claim_id="b-now",
                         member_id="M1", points=30, occurred_at=at)
        s.commit()
    return old, last, now


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output)


def where(app, table: str) -> dict[str, list[str]]:
    """period -> the partitions its rows of `table` sit in (PostgreSQL's tableoid)."""
    with app.app_context():
        rows = db.session.execute(text(
            f"SELECT DISTINCT period, tableoid::regclass::text FROM {table}")).all()
    found: dict[str, list[str]] = {}
    for period, partition in rows:
        found.setdefault(period, []).append(partition)
    return found


@pytest.fixture(autouse=True)
def pristine_partitions(app):
    """Partitions and detached tables outlive the TRUNCATE between tests: drop the ones a test
    made (and what it left in `archive`), so that the next one starts from the migrated schema."""
    if not ON_POSTGRES:
        yield
        return
    with app.app_context():
        before = {p.name for p in partitions.list_partitions(db.session)}
        db.session.commit()
    yield
    with app.app_context():
        s = db.session
        s.rollback()
        for (name,) in s.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = "
                                      "'archive'")).all():
            s.execute(text(f"DROP TABLE archive.{name}"))
        for made in {p.name for p in partitions.list_partitions(s)} - before:
            s.execute(text(f"DROP TABLE {made}"))
        s.commit()


# --- on both databases ----------------------------------------------------------------------

def test_a_claim_id_stays_unique_across_months(app, months):
    old, _, _ = months
    with app.app_context():
        s, at = db.session, datetime.now(UTC)
        replay = ledger.book_earn(s, now=at, rules=rules(app), partner_id="shop",
                                  claim_id="e-old", member_id="M1", points=500,
                                  occurred_at=mid(old))
        assert replay.replayed and replay.entry.period == old
        with pytest.raises(Problem) as exc:
            ledger.book_earn(s, now=at, rules=rules(app), partner_id="shop", claim_id="e-old",
                             member_id="M1", points=501, occurred_at=at)
        assert exc.value.slug == "claim-id-conflict"
        s.rollback()
        keys = s.execute(text("SELECT claim_id, period FROM claim_keys ORDER BY claim_id")).all()
        entries = s.execute(text("SELECT claim_id, period FROM journal_entries "
                                 "WHERE claim_id IS NOT NULL ORDER BY claim_id")).all()
        assert keys == entries and len(keys) == 6


def test_postings_and_consumptions_carry_their_entrys_month(app, months, verify_clean):
    with app.app_context():
        for table in ("postings", "consumptions"):
            assert db.session.execute(text(
                f"SELECT count(*) FROM {table} x JOIN journal_entries e ON e.id = x.entry_id "
                "WHERE x.period <> e.period")).scalar() == 0
    verify_clean()


def test_the_migration_carries_a_database_holding_data(app, months, runner, verify_clean):
    old, last, now = months
    with app.app_context():
        s = db.session
        before = {t: s.execute(text(f"SELECT id, period FROM {t} ORDER BY id")).all()
                  for t in partitions.JOURNAL}
        s.commit()
        flask_migrate.downgrade(revision="0025")
        s.remove()
        tables = set(inspect(db.engine).get_table_names())
        assert not tables & {"claim_keys", "archived_periods", "archived_sums"}
        columns = {c["name"] for c in inspect(db.engine).get_columns("postings")}
        assert "period" not in columns
        if ON_POSTGRES:
            assert db.session.execute(text("SELECT count(*) FROM pg_partitioned_table")
                                      ).scalar() == 0
        flask_migrate.upgrade()
        s.remove()
        s = db.session
        after = {t: s.execute(text(f"SELECT id, period FROM {t} ORDER BY id")).all()
                 for t in partitions.JOURNAL}
        assert after == before
        assert s.execute(text("SELECT count(*) FROM claim_keys")).scalar() == 6
        s.commit()
    if ON_POSTGRES:  # every month that held data has its own partition, DEFAULT holds nothing
        for table in partitions.JOURNAL:
            assert where(app, table) == {
                p: [partitions.partition_name(table, p)] for p in (old, last, now)
                if p in where(app, table)}
    verify_clean()
    # The id sequences carried on, and the old claim ids still hold.
    with app.app_context():
        s, at = db.session, datetime.now(UTC)
        booked = ledger.book_earn(s, now=at, rules=rules(app), partner_id="shop",
                                  claim_id="e-new", member_id="M2", points=5, occurred_at=at)
        assert booked.entry.id > max(i for i, _ in before["journal_entries"])
        with pytest.raises(Problem) as exc:
            ledger.book_earn(s, now=at, rules=rules(app), partner_id="shop", claim_id="e-m2",
                             member_id="M2", points=1, occurred_at=at)
        assert exc.value.slug == "claim-id-conflict"
        s.rollback()


def test_partition_commands_say_sqlite_is_not_partitioned(app, runner):
    if ON_POSTGRES:
        pytest.skip("SQLite's answer")
    assert cli(runner, "ledger", "partitions", "list") == (0, {
        "partitioned": False, "detail": partitions.NOT_PARTITIONED})
    code, out = cli(runner, "ledger", "partitions", "ensure")
    assert code == 0 and out["created"] == [] and out["partitioned"] is False
    code, out = cli(runner, "ledger", "partitions", "detach", "2020-01")
    assert code == 1 and out["error"] == "validation-error"


# --- PostgreSQL: the partitions themselves --------------------------------------------------

@postgres_only
def test_rows_of_a_month_without_partition_wait_in_default_until_ensure_moves_them(
        app, months, runner, verify_clean):
    old, last, now = months
    # The migrated schema has this month and the next ones: older months fall into DEFAULT.
    assert where(app, "journal_entries")[now] == [partitions.partition_name("journal_entries", now)]
    assert where(app, "journal_entries")[old] == ["journal_entries_default"]
    code, out = cli(runner, "ledger", "partitions", "ensure", "--month", old, "--month", last)
    assert code == 0, out
    assert out["moved_from_default"] == {"journal_entries_" + old.replace("-", "_"): 3,
                                         "postings_" + old.replace("-", "_"): 6,
                                         "consumptions_" + old.replace("-", "_"): 1,
                                         "journal_entries_" + last.replace("-", "_"): 2,
                                         "postings_" + last.replace("-", "_"): 4,
                                         "consumptions_" + last.replace("-", "_"): 1}
    for table in partitions.JOURNAL:
        assert all(found == [partitions.partition_name(table, p)]
                   for p, found in where(app, table).items()), where(app, table)
    # Nothing is left to do the second time; DEFAULT says exactly what it holds (nothing).
    code, again = cli(runner, "ledger", "partitions", "ensure", "--month", old)
    assert (code, again["created"], again["moved_from_default"]) == (0, [], {})
    code, listed = cli(runner, "ledger", "partitions", "list")
    defaults = [p for p in listed["partitions"] if p["period"] is None]
    assert [(p["name"], p["rows"]) for p in defaults] == [
        (f"{t}_default", 0) for t in partitions.PARTITIONED]
    assert {p["period"] for p in listed["partitions"]} >= {old, last, now}
    verify_clean()


@postgres_only
def test_ensure_creates_the_coming_months_once(app, runner):
    far = datetime(2031, 11, 3, tzinfo=UTC)
    with app.app_context():
        made = partitions.ensure_partitions(db.session, months_ahead=2, now=far)
        db.session.commit()
        again = partitions.ensure_partitions(db.session, months_ahead=2, now=far)
        db.session.commit()
        for table in partitions.PARTITIONED:  # leave the schema as the next test expects it
            for period in ("2031-11", "2031-12", "2032-01"):
                db.session.execute(text(f"DROP TABLE {partitions.partition_name(table, period)}"))
        db.session.commit()
    assert made["months"] == ["2031-11", "2031-12", "2032-01"]
    assert sorted(made["created"]) == sorted(partitions.partition_name(t, p)
                                             for t in partitions.PARTITIONED
                                             for p in made["months"])
    assert again["created"] == []


@postgres_only
def test_a_single_claim_reads_one_partition_of_the_journal(app, months):
    """The replay lookup goes through claim_keys and prunes to the month it names."""
    with app.app_context():
        plan = "\n".join(db.session.execute(text(
            "EXPLAIN SELECT e.* FROM journal_entries e JOIN claim_keys k ON k.entry_id = e.id "
            "AND k.period = e.period WHERE k.partner_id = 'shop' AND k.claim_id = 'e-old'"))
            .scalars())
    assert "claim_keys" in plan and "journal_entries_default" in plan  # e-old's month: DEFAULT


@postgres_only
def test_one_claim_id_booked_at_once_into_two_months_books_once(app, months):
    """Two sessions book the same claim id, for other members, into different months (so other
    partitions): the second waits on the first's claim key and then conflicts."""
    old, _, _ = months
    first_booked, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def book(name: str, member: str, at: datetime, hold: bool) -> None:
        with app.app_context():
            s = db.session
            try:
                # As the partner API books: a lost race for the claim id is replayed.
                ledger.book_raced(s, ledger.book_earn, restore=lambda: None, now=at,
                                  rules=rules(app), partner_id="shop", claim_id="twice",
                                  member_id=member, points=10, occurred_at=at)
                if hold:
                    first_booked.set()
                    release.wait(30)
                s.commit()
                outcome[name] = "booked"
            except Problem as exc:
                s.rollback()
                outcome[name] = exc.slug

    first = threading.Thread(target=book, args=("first", "M1", mid(old, 25), True))
    first.start()
    assert first_booked.wait(30)
    second = threading.Thread(target=book, args=("second", "M2", datetime.now(UTC), False))
    second.start()
    try:
        with app.app_context():
            await_lock_wait(db.engine, still_running=second.is_alive)
    finally:
        release.set()
        first.join(30), second.join(30)
    assert outcome == {"first": "booked", "second": "claim-id-conflict"}
    with app.app_context():
        assert db.session.execute(text("SELECT period FROM journal_entries "
                                       "WHERE claim_id = 'twice'")).scalars().all() == [old]
        assert db.session.execute(text("SELECT period FROM claim_keys "
                                       "WHERE claim_id = 'twice'")).scalars().all() == [old]


# --- PostgreSQL: a closed month detached into the archive -------------------------------------

def close(app, period: str) -> None:
    key = settlement.signing.signing_key(app.config["COALITION_SIGNING_KEY_FILE"])
    settlement.close(db.session, period, now=datetime.now(UTC),
                     tz=app.config["COALITION_TIMEZONE"], key=key)
    db.session.commit()


@pytest.fixture
def archived_month(app, months, runner, tmp_path):
    """Two months ago closed, anchored, and detached into the archive schema."""
    old, last, _ = months
    assert cli(runner, "ledger", "partitions", "ensure", "--month", old, "--month", last)[0] == 0
    with app.app_context():
        close(app, old)
    code, anchor = cli(runner, "ledger", "anchor")
    assert code == 0, anchor
    anchors = tmp_path / "anchors.jsonl"
    anchors.write_text(json.dumps(anchor) + "\n")
    code, out = cli(runner, "ledger", "partitions", "detach", old)
    assert code == 0, out
    return old, out, anchors


@postgres_only
def test_a_detached_month_leaves_the_journal_and_verify_carries_it(
        app, runner, archived_month):
    old, out, anchors = archived_month
    assert (out["entries"], out["anchored_in_chain"]) == (3, True)
    assert out["tables"] == [f"archive.{partitions.partition_name(t, old)}"
                             for t in partitions.JOURNAL]
    assert old not in where(app, "journal_entries")
    with app.app_context():
        assert db.session.execute(text(
            f"SELECT count(*) FROM archive.journal_entries_{old.replace('-', '_')}")).scalar() == 3
        actions = db.session.execute(text(
            "SELECT action FROM audit_events WHERE subject = :s"), {"s": f"period:{old}"}).scalars()
        assert "period.archive" in list(actions)
    code, report = cli(runner, "ledger", "verify", "--anchors", str(anchors))
    assert code == 0 and report["ok"], report
    assert report["checked"]["archived_periods"] == 1 and report["checked"]["anchors"] == 1
    code, listed = cli(runner, "ledger", "partitions", "list")
    assert [a["period"] for a in listed["archived"]] == [old]


@postgres_only
def test_the_month_after_an_archived_one_closes_and_verifies(app, runner, archived_month):
    """Last month reverses part of an earn of the archived month: its close and its
    statements' re-derivation read what the archive kept, not the detached rows."""
    old, _, anchors = archived_month
    last = month(app, 1)
    with app.app_context():
        close(app, last)
    code, report = cli(runner, "ledger", "verify", "--anchors", str(anchors))
    assert code == 0 and report["ok"], report


@postgres_only
def test_an_archived_claim_id_cannot_be_used_again(app, archived_month):
    old, _, _ = archived_month
    with app.app_context():
        at = datetime.now(UTC)
        with pytest.raises(Problem) as exc:
            ledger.book_earn(db.session, now=at, rules=rules(app), partner_id="shop",
                             claim_id="e-m2", member_id="M2", points=70, occurred_at=mid(old))
        assert exc.value.slug == "claim-id-conflict" and "archived" in exc.value.detail
        db.session.rollback()
        with pytest.raises(Problem) as exc:
            ledger.book_reversal(db.session, now=at, rules=rules(app), partner_id="shop",
                                 claim_id="e-m2", reversal_id="r-late", points=1, occurred_at=at)
        assert exc.value.slug == "not-found" and f"booked in {old}" in exc.value.detail
        db.session.rollback()


ARCHIVE_TAMPERING = {
    # What stands in for the month's rows is changed: the sums no longer add up to the members'
    # balances and lots, or the seal records no longer hash to the month's digest.
    "a member's archived postings": (
        "UPDATE archived_sums SET points = points + 5 WHERE kind = 'account' "
        "AND key = (SELECT 'member:' || id FROM members WHERE external_id = 'M2')",
        "member-balance"),
    "an archived lot's consumptions": (
        "UPDATE archived_sums SET points = points - 1 WHERE kind = 'lot'", "lot-remaining"),
    "a seal record of the month": (
        "UPDATE ledger_seals SET entry_hash = repeat('0', 64) WHERE entry_id = "
        "(SELECT min(id) FROM archive.journal_entries_{m})", "block-entries"),
    "the month's digest": ("UPDATE archived_periods SET digest = repeat('0', 64)",
                           "archived-period"),
    "the month's id runs": ("DELETE FROM archived_sums WHERE kind = 'ids'", "lot-origin"),
    "a signed statement of the month": (
        "UPDATE statements SET net_cents = net_cents + 1", "statement-column"),
}


@postgres_only
@pytest.mark.parametrize("sql, check", ARCHIVE_TAMPERING.values(), ids=ARCHIVE_TAMPERING.keys())
def test_tampering_with_an_archived_month_is_caught(app, runner, archived_month, sql, check):
    old, _, anchors = archived_month
    with app.app_context():
        with db.engine.begin() as conn:
            conn.execute(text(sql.format(m=old.replace("-", "_"))))
    code, report = cli(runner, "ledger", "verify", "--anchors", str(anchors))
    assert code == 1 and not report["ok"]
    assert check in {v["check"] for v in report["violations"]}, report["violations"]


@postgres_only
def test_attach_puts_the_month_back(app, runner, archived_month, verify_clean):
    old, _, _ = archived_month
    code, out = cli(runner, "ledger", "partitions", "attach", old)
    assert (code, out["entries"]) == (0, 3)
    assert where(app, "journal_entries")[old] == [partitions.partition_name("journal_entries", old)]
    with app.app_context():
        assert db.session.execute(text("SELECT count(*) FROM archived_sums")).scalar() == 0
    verify_clean()


@postgres_only
def test_only_a_closed_sealed_month_with_its_own_partitions_detaches(app, months, runner):
    old, last, _ = months
    code, out = cli(runner, "ledger", "partitions", "detach", last)
    assert (code, out["error"]) == (1, "validation-error") and "not closed" in out["detail"]
    with app.app_context():
        close(app, old)
    code, out = cli(runner, "ledger", "partitions", "detach", old)  # its rows sit in DEFAULT
    assert (code, out["error"]) == (1, "validation-error") and "ensure" in out["detail"]
    assert cli(runner, "ledger", "partitions", "ensure", "--month", old)[0] == 0
    with app.app_context():  # an entry changed after its seal: not archived as it is
        db.session.execute(text("UPDATE journal_entries SET entry_hash = repeat('1', 64) "
                                "WHERE claim_id = 'e-m2'"))
        db.session.commit()
    code, out = cli(runner, "ledger", "partitions", "detach", old)
    assert (code, out["error"]) == (1, "validation-error") and "not sealed" in out["detail"]
    assert old in where(app, "journal_entries")


# --- monitoring ------------------------------------------------------------------------------

def test_metrics_report_default_rows_and_the_months_ahead(app, months, runner):
    from tests.test_metrics import scrape
    names = ("coalition_ledger_default_partition_rows", "coalition_ledger_partition_months_ahead")
    scraped = scrape(app)
    if not ON_POSTGRES:  # nothing is partitioned: no such gauges
        assert not [key for key in scraped if key[0] in names]
        return
    old, last, _ = months
    # Two past months without partitions: their 5 entries, 10 postings, 2 consumptions wait
    # in DEFAULT; the migration made this month and the 3 after it.
    assert [scraped[(name, ())] for name in names] == [17, 3]
    assert cli(runner, "ledger", "partitions", "ensure", "--month", old, "--month", last)[0] == 0
    assert [scrape(app)[(name, ())] for name in names] == [0, 3]
    with app.app_context():
        far = partitions.health(db.session, now=datetime(2031, 1, 1, tzinfo=UTC))
    assert far == partitions.Health(default_rows=0, months_ahead=-1)
