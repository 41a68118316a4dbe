"""`flask members import FILE.csv`: bulk enrolment of a card base, all rows or none, idempotent
(coalition/enrolment.py). Runs on SQLite and on PostgreSQL."""
from __future__ import annotations

import hashlib
import io
import json

import pytest
from sqlalchemy import func, select

from coalition import clock, enrolment
from coalition.database import db
from coalition.models import AuditEvent, Member
from coalition.problems import MAX_LISTED_ERRORS
from tests.conftest import ago


def run(runner, *args, input=None):
    result = runner.invoke(args=["members", "import", *args], input=input)
    return result.exit_code, json.loads(result.stdout)


def write(tmp_path, text: str | bytes, name: str = "cards.csv") -> str:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return str(path)


def members(app) -> list[str]:
    with app.app_context():
        return list(db.session.scalars(select(Member.external_id).order_by(Member.id)))


def import_events(app) -> list[dict]:
    with app.app_context():
        events = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "member.import")
                                    .order_by(AuditEvent.id)).all()
        return [{"actor": e.actor, "subject": e.subject, "after": json.loads(e.after)}
                for e in events]


def test_an_import_enrols_every_card_and_running_it_again_creates_nothing(app, runner, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setenv("COALITION_OPERATOR", "ops-anna")
    assert runner.invoke(args=["members", "add", "CARD-2"]).exit_code == 0  # enrolled before
    content = "member_id\nCARD-1\nCARD-2\nCARD-3\n"
    path = write(tmp_path, content)
    digest = hashlib.sha256(content.encode()).hexdigest()

    assert run(runner, path) == (0, {"file": path, "rows": 3, "created": 2, "existing": 1,
                                     "duplicates": 0, "sha256": digest})
    assert sorted(members(app)) == ["CARD-1", "CARD-2", "CARD-3"]
    assert run(runner, path) == (0, {"file": path, "rows": 3, "created": 0, "existing": 3,
                                     "duplicates": 0, "sha256": digest})
    assert len(members(app)) == 3

    # One event for the file, none for the rerun that changed nothing; no card number in it.
    assert import_events(app) == [{
        "actor": "ops-anna", "subject": f"member-import:{digest}",
        "after": {"file": path, "rows": 3, "created": 2, "existing": 1, "duplicates": 0,
                  "sha256": digest}}]


def test_a_card_repeated_in_the_file_is_enrolled_once_and_counted_as_a_duplicate(app, runner,
                                                                                  tmp_path):
    path = write(tmp_path, "member_id\nA1\nB2\nA1\nC3\nA1\nB2\n")
    code, done = run(runner, path)
    assert code == 0
    assert (done["rows"], done["created"], done["existing"], done["duplicates"]) == (6, 3, 0, 3)
    assert sorted(members(app)) == ["A1", "B2", "C3"]
    code, again = run(runner, path)
    assert (again["created"], again["existing"], again["duplicates"]) == (0, 3, 3)


def test_bad_rows_are_listed_by_line_and_nothing_is_imported(app, runner, tmp_path):
    path = write(tmp_path, "member_id\nGOOD-1\nbad card\n\nGOOD-2\n-starts-with-dash\n"
                           "two,fields\n\"\"\nGOOD-3\n" + "x" * 65 + "\n")
    code, error = run(runner, path)
    assert code == 1
    assert error["error"] == "validation-error"
    assert error["detail"] == "5 rows are not valid; nothing was imported."
    assert error["errors_total"] == 5
    assert [(e["line"], e.get("column")) for e in error["errors"]] == [
        (3, "member_id"), (6, "member_id"), (7, None), (8, "member_id"), (10, "member_id")]
    assert error["errors"][0]["detail"].startswith("'bad card' is not a card number: it must match ")
    assert error["errors"][2]["detail"] == "2 fields; the header has 1"
    assert error["errors"][3]["detail"] == "empty"
    assert members(app) == []  # the good rows before and after the bad ones too
    assert import_events(app) == []


def test_at_most_a_hundred_errors_are_listed_with_the_total(app, runner, tmp_path):
    rows = [f"ok-{i}" if i % 3 else f"bad card {i}" for i in range(1, 1001)]
    code, error = run(runner, write(tmp_path, "member_id\n" + "\n".join(rows) + "\n"))
    assert code == 1 and error["errors_total"] == 333
    assert len(error["errors"]) == MAX_LISTED_ERRORS
    assert error["errors"][0]["line"] == 4 and error["errors"][-1]["line"] == 301
    assert error["detail"] == ("333 rows are not valid (the first 100 are listed); "
                               "nothing was imported.")
    assert members(app) == []


@pytest.mark.parametrize("content, errors", [
    ("", [{"line": 1, "detail": "the file is empty: the first line must be the header member_id"}]),
    ("\n\n", [{"line": 1, "detail": "the file is empty: the first line must be the header member_id"}]),
    ("card\nA1\n", [
        {"line": 1, "column": "'card'", "detail": "unknown column 'card': a member row holds only "
         "the card number, so the file has the one column member_id"},
        {"line": 1, "detail": "no member_id column: the first line must be the header member_id"}]),
    ("member_id,name,email\nA1,Ann,a@example.org\n", [
        {"line": 1, "column": "'name'", "detail": "unknown column 'name': a member row holds only "
         "the card number, so the file has the one column member_id"},
        {"line": 1, "column": "'email'", "detail": "unknown column 'email': a member row holds "
         "only the card number, so the file has the one column member_id"}]),
    ("member_id,member_id\nA1,A1\n", [
        {"line": 1, "column": "member_id", "detail": "named more than once"}]),
    ("A1\nA2\n", [
        {"line": 1, "column": "'A1'", "detail": "unknown column 'A1': a member row holds only "
         "the card number, so the file has the one column member_id"},
        {"line": 1, "detail": "no member_id column: the first line must be the header member_id"}]),
])
def test_a_bad_header_is_refused_before_any_row(app, runner, tmp_path, content, errors):
    code, error = run(runner, write(tmp_path, content))
    assert (code, error["error"]) == (1, "validation-error")
    assert error["detail"] == "The header row is not valid; nothing was imported."
    assert (error["errors"], error["errors_total"]) == (errors, len(errors))
    assert members(app) == []


def test_what_spreadsheets_write_is_read(app, runner, tmp_path):
    """A byte order mark, CRLF line ends, quoted values, blank lines and no final newline."""
    path = write(tmp_path, b'\xef\xbb\xbf"member_id"\r\n"A1"\r\n\r\nB2\r\n"C3"')
    code, done = run(runner, path)
    assert code == 0 and (done["rows"], done["created"]) == (3, 3)
    assert members(app) == ["A1", "B2", "C3"]


def test_what_is_not_text_or_not_csv_is_reported_by_line(app, runner, tmp_path):
    path = write(tmp_path, b"member_id\nA1\nB\xff2\n\"C3\nD4\n" + b"E" * 5000 + b"\nF6\n")
    code, error = run(runner, path)
    assert code == 1
    found = [(e["line"], e["detail"]) for e in error["errors"]]
    assert found[0] == (3, "'B\\udcff2' is not a card number: it must match "
                           "^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$ (nothing is trimmed)")
    assert [line for line, _ in found] == [3, 6, 7]  # the quote left open runs to the long line
    assert found[1] == (6, "longer than 4096 characters")
    assert "not valid CSV" in found[2][1]
    assert members(app) == []


def test_stdin_is_read_with_a_dash(app, runner):
    assert run(runner, "-", input=b"member_id\nS1\nS2\n") == (0, {
        "file": "-", "rows": 2, "created": 2, "existing": 0, "duplicates": 0,
        "sha256": hashlib.sha256(b"member_id\nS1\nS2\n").hexdigest()})
    assert members(app) == ["S1", "S2"]


def test_a_file_that_does_not_exist_is_a_usage_error(runner, tmp_path):
    code, error = run(runner, str(tmp_path / "missing.csv"))
    assert (code, error["error"]) == (2, "usage-error")
    assert error["detail"].endswith("missing.csv': No such file or directory")


def test_an_imported_member_is_one_like_any_other(app, runner, tmp_path, acme, bolt,
                                                   verify_clean):
    """The same row as `members add` writes, the same rows elsewhere (none today: whatever
    enrol() starts writing for a member, an import must write too), and the API serves it."""
    assert runner.invoke(args=["members", "add", "ADDED"]).exit_code == 0
    assert run(runner, write(tmp_path, "member_id\nIMPORTED\n"))[1]["created"] == 1
    with app.app_context():
        added, imported = (db.session.scalars(select(Member).where(Member.external_id == card))
                           .one() for card in ("ADDED", "IMPORTED"))
        same = {c.key for c in Member.__table__.columns} - {"id", "external_id", "created_at"}
        assert {k: getattr(imported, k) for k in same} == {k: getattr(added, k) for k in same}
        for table in db.metadata.sorted_tables:
            for fk in table.foreign_keys:
                if fk.column.table is Member.__table__:
                    counts = [db.session.scalar(select(func.count()).select_from(table)
                                                .where(fk.parent == member.id))
                              for member in (added, imported)]
                    assert counts[0] == counts[1], (table.name, fk.parent.name)

    assert acme.client.balance("IMPORTED").json()["available"] == 0
    assert acme.client.enrol("IMPORTED").status == 200  # enrolled already
    assert acme.client.earn("e1", "IMPORTED", 500, occurred_at=ago(minutes=3)).status == 201
    assert bolt.client.burn("b1", "IMPORTED", 120, occurred_at=ago(minutes=2)).status == 201
    assert acme.client.reverse("e1", "e1-r", 100, occurred_at=ago(minutes=1)).status == 201
    assert acme.client.balance("IMPORTED").json()["available"] == 280
    code = runner.invoke(args=["members", "show", "IMPORTED"])
    shown = json.loads(code.stdout)
    assert shown["enrolled_by"] is None and shown["available"] == 280
    assert len(shown["history"]) == 3
    verify_clean()


def test_twenty_thousand_cards(app, runner, tmp_path):
    cards = [f"BULK-{i:06d}" for i in range(20_000)]
    path = write(tmp_path, "member_id\n" + "\n".join(cards) + "\n")
    code, done = run(runner, path)
    assert code == 0 and (done["rows"], done["created"], done["existing"]) == (20_000, 20_000, 0)
    with app.app_context():
        assert db.session.scalar(select(func.count(Member.id))) == 20_000
        # In the order of the file.
        first, last = (db.session.scalar(select(Member.external_id).order_by(order).limit(1))
                       for order in (Member.id, Member.id.desc()))
        assert (first, last) == ("BULK-000000", "BULK-019999")
    code, again = run(runner, path)
    assert code == 0 and (again["created"], again["existing"]) == (0, 20_000)


class Failing(io.RawIOBase):
    """A source whose read fails after `good` bytes (a disk or pipe error half-way)."""

    def __init__(self, good: bytes) -> None:
        self.data = io.BytesIO(good)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.data.read(len(buffer))
        if not chunk:
            raise OSError("read error")
        buffer[:len(chunk)] = chunk
        return len(chunk)


def test_a_read_that_fails_half_way_leaves_nothing_and_a_usable_session(app):
    good = ("member_id\n" + "".join(f"F{i}\n" for i in range(12_000))).encode()
    with app.app_context():
        with pytest.raises(OSError):
            enrolment.import_members(db.session, io.BufferedReader(Failing(good)),
                                     now=clock.now())
        db.session.rollback()
        assert db.session.scalar(select(func.count(Member.id))) == 0
        done = enrolment.import_members(db.session, io.BytesIO(b"member_id\nF1\n"), now=clock.now())
        db.session.commit()
        assert (done.created, done.rows) == (1, 1)
