"""The sealer running by itself (`flask ledger seal --every`): it seals what is booked between
ticks, outlives database errors, stops cleanly on SIGTERM/SIGINT, writes one anchor line per
UTC day, and `ledger verify --anchors` catches a chain recomputed after tampering."""
from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from coalition import create_app, ledger, members, sealer
from coalition.database import db
from coalition.models import Entry
from partners import service as partner_service
from tests.conftest import ON_POSTGRES
from tests.test_verify import ledger_with_history, tamper  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
FLASK = [str(ROOT / ".venv" / "bin" / "flask"), "--app", "wsgi"]
# In the past: verify flags entries recorded well before the head was sealed and still unsealed.
DAY1 = datetime(2021, 3, 1, 23, 59, 50, tzinfo=timezone.utc)


class Ticks(threading.Event):
    """A stop event whose wait() runs the test's next step instead of sleeping: every wait of
    the loop is one step between two runs, and the loop stops when the steps run out."""

    def __init__(self, *steps):
        super().__init__()
        self.steps = list(steps)

    def wait(self, timeout=None):
        if self.steps:
            self.steps.pop(0)()
        else:
            self.set()
        return self.is_set()


def earn_later(partner):
    """A step between ticks: one more claim booked through the partner API."""
    def step():
        assert partner.client.earn("later", "M2", 5).status == 201
    return step


def clock(*moments):
    moments = list(moments)
    return lambda: moments.pop(0)


def run(app, stop, *, now=None, anchors=None, session_factory=None):
    """run_sealer as the CLI runs it, over the app's session; returns (runs, lines, errors)."""
    lines, errors = [], []
    with app.app_context():
        runs = sealer.run_sealer(session_factory or db.session, every=5, stop=stop,
                                 report=lines.append, on_error=errors.append,
                                 now=now or sealer.utcnow, anchors=anchors)
    return runs, lines, errors


def blocks(app):
    with app.app_context():
        rows = db.session.scalars(select(sealer.LedgerBlock).order_by(sealer.LedgerBlock.id))
        return [(b.first_entry_id, b.last_entry_id, b.prev_hash, b.block_hash) for b in rows]


def verify(runner, *args):
    result = runner.invoke(args=["ledger", "verify", *args])
    return result.exit_code, json.loads(result.output)


def test_the_loop_seals_what_is_booked_between_ticks(ledger_with_history, acme, runner):
    runs, lines, errors = run(ledger_with_history, Ticks(earn_later(acme), lambda: None))
    assert (runs, errors) == (3, [])
    # The third run found nothing new and said nothing.
    assert [(line["event"], line["blocks"], line["entries"], line["last_entry_id"])
            for line in lines] == [("sealed", 1, 6, 6), ("sealed", 1, 1, 7)]
    first, second = blocks(ledger_with_history)
    assert (first[:2], second[:2]) == ((1, 6), (7, 7))
    assert second[2] == first[3] and lines[-1]["head"] == second[3]  # chained, and reported
    assert verify(runner)[0] == 0


def test_a_database_error_is_reported_rolled_back_and_the_next_tick_seals(
        ledger_with_history, monkeypatch):
    real_seal, calls = sealer.seal, []

    def seal_then_lose_the_connection(session, **kwargs):
        calls.append(kwargs)
        sealed = real_seal(session, **kwargs)  # blocks flushed: the rollback must discard them
        if len(calls) == 1:
            raise OperationalError("COMMIT", {}, Exception("terminating connection due to "
                                                           "administrator command"))
        return sealed
    monkeypatch.setattr(sealer, "seal", seal_then_lose_the_connection)
    runs, lines, errors = run(ledger_with_history, Ticks(lambda: None))
    assert runs == 2 and len(calls) == 2
    assert [type(e) for e in errors] == [OperationalError]
    assert [(line["event"], line["entries"]) for line in lines] == [("sealed", 6)]
    # One block 1..6 chained to genesis: nothing of the failed run survived into the next.
    assert [(first, last, prev) for first, last, prev, _ in blocks(ledger_with_history)] == [
        (1, 6, sealer.GENESIS)]


def test_an_unreachable_database_does_not_end_the_loop(ledger_with_history):
    """A real connection failure (nothing listens there), then the database is back."""
    dead_url = ("postgresql+psycopg://postgres@127.0.0.1:1/nowhere?connect_timeout=2" if ON_POSTGRES
                else "sqlite:////nonexistent-dir/coalition.db")
    dead = create_engine(dead_url)
    sessions = [lambda: Session(dead), db.session]
    try:
        runs, lines, errors = run(ledger_with_history, Ticks(lambda: None),
                                  session_factory=lambda: sessions.pop(0)())
    finally:
        dead.dispose()
    assert runs == 2
    assert [type(e) for e in errors] == [OperationalError]
    assert [line["entries"] for line in lines] == [6]


def test_other_errors_are_bugs_and_end_the_loop(ledger_with_history, monkeypatch):
    monkeypatch.setattr(sealer, "seal", lambda session, **kw: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run(ledger_with_history, Ticks(lambda: None))


def test_cli_loop_prints_one_json_line_per_event(ledger_with_history, runner):
    result = runner.invoke(args=["ledger", "seal", "--every", "0.01", "--max-runs", "3"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["event"] for line in lines] == ["sealer-started", "leading", "sealed",
                                                 "sealer-stopped"]
    assert lines[1]["holder"] == lines[0]["holder"]
    assert (lines[2]["entries"], lines[3]["runs"]) == (6, 3)


@pytest.mark.parametrize("args", [["--every", "0"], ["--every", "-1"], ["--every", "nan"],
                                  ["--every", "inf"], ["--max-runs", "2"],
                                  ["--every", "1", "--max-runs", "0"],
                                  ["--lease-ttl", "30"], ["--every", "5", "--lease-ttl", "1"]])
def test_cli_refuses_what_is_not_a_schedule(runner, args):
    assert runner.invoke(args=["ledger", "seal", *args]).exit_code == 2


# --- the process: signals and a database error, through the real command line ------------

@pytest.fixture(scope="module")
def upgraded_sqlite(tmp_path_factory):
    path = tmp_path_factory.mktemp("loopdb") / "template.db"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{path}"}
    subprocess.run([*FLASK, "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
    return path


class Sealer:
    """`flask ledger seal --every 0.2` in a process of its own, on its own SQLite file."""

    def __init__(self, db_file: Path, signing_key: Path):
        self.uri = f"sqlite:///{db_file}"
        env = {**os.environ, "DATABASE_URL": self.uri,
               "COALITION_SIGNING_KEY_FILE": str(signing_key)}
        self.proc = subprocess.Popen([*FLASK, "ledger", "seal", "--every", "0.2"], cwd=ROOT,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.stdout, self.stderr = self._reader(self.proc.stdout), self._reader(self.proc.stderr)
        self.app = create_app({"SQLALCHEMY_DATABASE_URI": self.uri, "TESTING": True,
                               "COALITION_SIGNING_KEY_FILE": str(signing_key)})

    @staticmethod
    def _reader(stream) -> queue.Queue:
        lines = queue.Queue()

        def pump():
            for line in stream:
                lines.put(line)
            lines.put(None)
        threading.Thread(target=pump, daemon=True).start()
        return lines

    def next_json(self, lines: queue.Queue, match, timeout=20.0) -> dict:
        deadline, seen = time.monotonic() + timeout, []
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                break
            assert line is not None, f"the sealer ended: {self.proc.poll()}; {seen}"
            seen.append(line)
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if match(doc):
                return doc
        pytest.fail(f"no matching line in time: {seen}")

    def book(self, count: int, start: int = 0) -> None:
        now = datetime.now(timezone.utc)
        with self.app.app_context():
            if start == 0:
                partner_service.add_partner(db.session, "acme", "Acme", now=now)
                members.enrol(db.session, "M1", now=now)
            for n in range(start, start + count):
                ledger.book_earn(db.session, partner_id="acme", claim_id=f"c{n}", member_id="M1",
                                 points=10, occurred_at=now, now=now,
                                 rules=self.app.config["LEDGER_RULES"])
            db.session.commit()

    def sql(self, statement: str) -> None:
        tamper(self.app, statement)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with self.app.app_context():
            db.engine.dispose()


@pytest.fixture
def sealer_process(upgraded_sqlite, tmp_path, signing_key_file):
    shutil.copy(upgraded_sqlite, tmp_path / "coalition.db")
    process = Sealer(tmp_path / "coalition.db", Path(signing_key_file))
    yield process
    process.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_process_cleanly(sealer_process, signum):
    p = sealer_process
    p.next_json(p.stdout, lambda d: d["event"] == "sealer-started")  # handlers installed
    p.book(3)
    sealed = p.next_json(p.stdout, lambda d: d["event"] == "sealed")
    assert (sealed["entries"], sealed["last_entry_id"]) == (3, 3)
    p.proc.send_signal(signum)
    assert p.proc.wait(timeout=10) == 0
    stopped = p.next_json(p.stdout, lambda d: True)
    assert stopped["event"] == "sealer-stopped" and stopped["runs"] >= 1


def test_the_process_logs_a_database_error_and_carries_on(sealer_process):
    p = sealer_process
    p.next_json(p.stdout, lambda d: d["event"] == "sealer-started")
    p.sql("ALTER TABLE ledger_blocks RENAME TO ledger_blocks_away")  # every run now fails
    warning = p.next_json(p.stderr, lambda d: d.get("name") == "coalition.sealer")
    assert warning["level"] == "WARNING" and "OperationalError" in warning["error"]
    assert p.proc.poll() is None
    p.book(2)
    p.sql("ALTER TABLE ledger_blocks_away RENAME TO ledger_blocks")
    sealed = p.next_json(p.stdout, lambda d: d["event"] == "sealed")
    assert sealed["entries"] == 2
    p.proc.terminate()
    assert p.proc.wait(timeout=10) == 0


# --- daily anchors -------------------------------------------------------------------------

def anchor_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_anchor_line_per_utc_day(ledger_with_history, acme, tmp_path):
    path = tmp_path / "anchors.jsonl"
    moments = [DAY1, DAY1 + timedelta(seconds=5), DAY1 + timedelta(seconds=10),
               DAY1 + timedelta(seconds=15)]  # the third and fourth fall on the next UTC day
    steps = Ticks(earn_later(acme), lambda: None, lambda: None)
    runs, lines, errors = run(ledger_with_history, steps, now=clock(*moments),
                              anchors=sealer.AnchorFile(path))
    assert (runs, errors) == (4, [])
    assert [(line["event"], line.get("date")) for line in lines] == [
        ("sealed", None), ("anchored", "2021-03-01"), ("sealed", None), ("anchored", "2021-03-02")]
    heads = [b[3] for b in blocks(ledger_with_history)]
    kept = anchor_lines(path)
    assert [(a["date"], a["block"], a["head"], a["last_entry_id"]) for a in kept] == [
        ("2021-03-01", 1, heads[0], 6), ("2021-03-02", 2, heads[1], 7)]
    assert kept[1]["sealed_at"] == "2021-03-01T23:59:55Z"  # the head sealed the day before

    # A restart on a day that has its line adds none; on a day that lacks one, it anchors at once.
    run(ledger_with_history, Ticks(), now=clock(DAY1 + timedelta(hours=1)),
        anchors=sealer.AnchorFile(path))
    assert len(anchor_lines(path)) == 2
    _, lines, _ = run(ledger_with_history, Ticks(), now=clock(DAY1 + timedelta(days=1, hours=1)),
                      anchors=sealer.AnchorFile(path))
    assert [line["event"] for line in lines] == ["anchored"]
    assert [(a["date"], a["head"]) for a in anchor_lines(path)][2:] == [("2021-03-03", heads[1])]


def test_nothing_to_anchor_before_the_first_block(app, tmp_path):
    path = tmp_path / "anchors.jsonl"
    _, lines, _ = run(app, Ticks(), now=clock(DAY1), anchors=sealer.AnchorFile(path))
    assert lines == [] and path.read_text() == ""


def test_an_anchor_after_a_torn_last_line_starts_a_line_of_its_own(ledger_with_history, tmp_path):
    path = tmp_path / "anchors.jsonl"
    path.write_text('{"date": "2021-03-01", "head": "ab')  # a crash in the middle of a write
    run(ledger_with_history, Ticks(), now=clock(DAY1), anchors=sealer.AnchorFile(path))
    torn, today = path.read_text().splitlines()
    assert json.loads(today)["date"] == "2021-03-01"  # the torn line did not count as written


def test_an_anchor_that_could_not_be_written_is_written_at_the_next_tick(
        ledger_with_history, tmp_path, monkeypatch):
    anchors, attempts = sealer.AnchorFile(tmp_path / "anchors.jsonl"), []
    real_append = anchors.append

    def full_disk_once(today, head):
        attempts.append(today)
        if len(attempts) == 1:
            raise OSError(28, "No space left on device")
        return real_append(today, head)
    monkeypatch.setattr(anchors, "append", full_disk_once)
    runs, lines, errors = run(ledger_with_history, Ticks(lambda: None, lambda: None),
                              now=clock(DAY1, DAY1, DAY1), anchors=anchors)
    assert runs == 3 and [type(e) for e in errors] == [OSError]
    assert [line["event"] for line in lines] == ["sealed", "anchored"]
    assert len(attempts) == 2 and len(anchor_lines(anchors.path)) == 1


def test_one_shot_seal_writes_todays_anchor_once(ledger_with_history, runner, tmp_path):
    path = tmp_path / "anchors.jsonl"
    outputs = []
    for _ in range(2):
        result = runner.invoke(args=["ledger", "seal", "--anchor-file", str(path)])
        assert result.exit_code == 0, result.output
        outputs.append(json.loads(result.output))
    assert set(outputs[0]) == {"blocks", "entries", "head", "block", "last_entry_id", "sealed_at"}
    (line,) = anchor_lines(path)
    assert (line["date"], line["head"]) == (outputs[0]["sealed_at"][:10], outputs[0]["head"])


# --- verify --anchors ----------------------------------------------------------------------

@pytest.fixture
def anchored(ledger_with_history, acme, tmp_path):
    """Two days of anchors over two blocks, the way the loop writes them."""
    path = tmp_path / "anchors.jsonl"
    run(ledger_with_history, Ticks(earn_later(acme)), now=clock(DAY1, DAY1 + timedelta(days=1)),
        anchors=sealer.AnchorFile(path))
    assert [a["block"] for a in anchor_lines(path)] == [1, 2]
    return path


def rewrite_chain(app) -> None:
    """What someone with database access does after changing the journal: recompute every
    block over the journal as it is now, and write the hashes back in SQL. The algorithm is
    no secret, so the chain verifies again."""
    statements, previous = [], sealer.GENESIS
    with app.app_context():
        for block in db.session.scalars(
                select(sealer.LedgerBlock).order_by(sealer.LedgerBlock.id)).all():
            hashes = db.session.scalars(
                select(Entry.entry_hash).order_by(Entry.id)
                .where(Entry.id.between(block.first_entry_id, block.last_entry_id))).all()
            db.session.expunge(block)
            block.entry_count, block.entries_hash = len(hashes), sealer.entries_digest(hashes)
            block.prev_hash = previous
            block.block_hash = previous = sealer.block_hash(block)
            statements.append(f"UPDATE ledger_blocks SET entry_count = {block.entry_count}, "
                              f"entries_hash = '{block.entries_hash}', prev_hash = "
                              f"'{block.prev_hash}', block_hash = '{block.block_hash}' "
                              f"WHERE id = {block.id}")
        db.session.rollback()
    # The per-entry seal records too, rebuilt from the journal as it is now.
    statements += ["DELETE FROM ledger_seals",
                   "INSERT INTO ledger_seals (entry_id, block_id, entry_hash) "
                   "SELECT e.id, b.id, e.entry_hash FROM journal_entries e "
                   "JOIN ledger_blocks b ON e.id BETWEEN b.first_entry_id AND b.last_entry_id"]
    tamper(app, "; ".join(statements))


# A whole claim deleted with every derived row rewritten to match (as in test_sealer.py).
DELETE_CLAIM = ("DELETE FROM postings WHERE entry_id = 2; DELETE FROM lots WHERE entry_id = 2; "
                "UPDATE members SET balance = balance - 50 WHERE id = 2; "
                "DELETE FROM journal_entries WHERE id = 2")


def test_verify_with_anchors_passes_on_an_untouched_chain(anchored, runner):
    code, report = verify(runner, "--anchors", str(anchored))
    assert code == 0, report
    assert report["checked"]["anchors"] == 2 and report["checked"]["blocks"] == 2
    code, plain = verify(runner)
    assert code == 0 and "anchors" not in plain["checked"]  # without the option: as before


def test_verify_with_anchors_catches_a_chain_recomputed_after_tampering(
        ledger_with_history, anchored, runner):
    tamper(ledger_with_history, DELETE_CLAIM)
    assert verify(runner)[0] == 1  # the chain alone notices the deletion...
    rewrite_chain(ledger_with_history)
    code, report = verify(runner)
    assert code == 0, report  # ...until it is recomputed: now only an anchor kept outside can
    code, report = verify(runner, "--anchors", str(anchored))
    assert code == 1 and report["violations_by_check"] == {"anchor-mismatch": 2}, report
    assert [(v["line"], v["block"], v["date"]) for v in report["violations"]] == [
        (1, 1, "2021-03-01"), (2, 2, "2021-03-02")]


def test_verify_with_anchors_catches_a_chain_cut_back(ledger_with_history, anchored, runner):
    tamper(ledger_with_history, "DELETE FROM ledger_blocks WHERE id = 2")
    assert verify(runner)[0] == 0  # the newest block gone: invisible from inside the database
    code, report = verify(runner, "--anchors", str(anchored))
    assert code == 1 and [(v["check"], v["block"]) for v in report["violations"]] == [
        ("anchor-mismatch", 2)]


def test_verify_names_a_line_that_is_no_anchor(anchored, runner):
    with anchored.open("a") as f:
        f.write("not json\n\n")
    code, report = verify(runner, "--anchors", str(anchored))
    assert code == 1 and report["violations_by_check"] == {"anchor-malformed": 1}
    assert report["violations"][0]["line"] == 3 and report["checked"]["anchors"] == 2
