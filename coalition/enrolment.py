"""Bulk enrolment: an existing card base, read from CSV, enrolled all at once or not at all.

The file: UTF-8 (a byte order mark is allowed), a header row, then one card number per row.
The header names exactly one column, `member_id`: a member row holds nothing else about a
person, so any other column is refused rather than silently dropped. Each card number must
match ID_PATTERN, exactly as over the API (nothing is trimmed). Blank lines are skipped. A
card number enrolled already counts as `existing`, one repeated in the file as a `duplicate`:
the file says which cards must be enrolled, and two equal rows say the same thing.

One pass over the stream, in bounded memory. Every good card number goes into a temporary
table of the transaction (PostgreSQL: COPY; SQLite: batched inserts). After the first bad row
nothing more is staged, but every row is still checked, so that the operator sees every bad
row at once (the first MAX_LISTED_ERRORS, with the total), and nothing is enrolled. When every
row is good, one INSERT ... SELECT ... ON CONFLICT DO NOTHING enrols the card numbers not
enrolled yet (a repeated one once, at its first row), with exactly the values enrol() gives a
member (tests/test_members_import.py compares the two). The caller commits.
"""
from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Iterator

from sqlalchemy import Boolean, bindparam, text
from sqlalchemy.orm import Session

from .database import is_sqlite
from .models import Member
from .problems import MAX_LISTED_ERRORS, Problem, clip
from .vocabulary import ID_PATTERN

COLUMN = "member_id"
STAGE = "member_import"  # the temporary table; it never outlives the transaction
BATCH = 5000  # staged rows per COPY write or executemany
# No good line comes close (a card number is at most 64 characters); a longer one is reported
# and skipped without ever being held whole.
MAX_LINE = 4096
_ID = re.compile(ID_PATTERN)

_ENROL = text(f"""
    INSERT INTO members (external_id, created_at, enrolled_by, balance, debt, locked,
                         pin_failures)
    SELECT member_id, :now, NULL, 0, 0, :locked, 0 FROM {STAGE}
    WHERE true  -- SQLite would read the ON of ON CONFLICT as a join's without a WHERE
    ON CONFLICT (external_id) DO NOTHING
""").bindparams(bindparam("now", type_=Member.__table__.c.created_at.type),
                bindparam("locked", value=False, type_=Boolean))


@dataclass(frozen=True)
class Imported:
    rows: int  # data rows, blank lines not counted
    created: int  # members enrolled by this import
    existing: int  # distinct card numbers enrolled before it
    duplicates: int  # rows repeating a card number of an earlier row
    sha256: str  # of the file's bytes

    def view(self) -> dict:
        return {"rows": self.rows, "created": self.created, "existing": self.existing,
                "duplicates": self.duplicates, "sha256": self.sha256}


class BadFile(Problem):
    """The file has bad rows (or a bad header): nothing was enrolled. `errors` lists the first
    MAX_LISTED_ERRORS, each with its line (and column); `total` counts them all."""

    def __init__(self, errors: list[dict], total: int, *, header: bool = False) -> None:
        what = "The header row is not valid" if header else (
            f"{total} row{'s are' if total != 1 else ' is'} not valid")
        more = f" (the first {len(errors)} are listed)" if total > len(errors) else ""
        super().__init__("validation-error", f"{what}{more}; nothing was imported.",
                         errors=errors)
        self.total = total


class _Errors:
    """Every error counted, the first MAX_LISTED_ERRORS kept."""

    def __init__(self) -> None:
        self.listed: list[dict] = []
        self.total = 0

    def add(self, line: int, detail: str, column: str | None = None) -> None:
        self.total += 1
        if len(self.listed) < MAX_LISTED_ERRORS:
            self.listed.append({"line": line, **({"column": column} if column else {}),
                                "detail": detail})


class _Digesting(io.RawIOBase):
    """The source's bytes, hashed as they are read."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.source.read(len(buffer))
        self.digest.update(data)
        buffer[:len(data)] = data
        return len(data)


def _lines(text_stream: io.TextIOBase, errors: _Errors) -> Iterator[str]:
    """The file's lines for the csv reader; a line over MAX_LINE characters is reported and
    replaced by a blank one, so that the reader's line numbers stay the file's."""
    number = 0
    while line := text_stream.readline(MAX_LINE):
        number += 1
        if len(line) == MAX_LINE and not line.endswith(("\n", "\r")):
            while (rest := text_stream.readline(MAX_LINE)) and not rest.endswith(("\n", "\r")):
                pass
            errors.add(number, f"longer than {MAX_LINE} characters")
            line = "\n"
        yield line


def _records(digesting: _Digesting, errors: _Errors) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of every record that is not blank; CSV that does not parse is an error
    of its line. Bytes that are not UTF-8 are read as lone surrogates (surrogateescape), so
    that they make their own line's field invalid instead of stopping the read."""
    text_stream = io.TextIOWrapper(io.BufferedReader(digesting, 1 << 16), encoding="utf-8-sig",
                                   errors="surrogateescape", newline="")
    reader = csv.reader(_lines(text_stream, errors), strict=True)
    while True:
        seen = reader.line_num
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            errors.add(reader.line_num, f"not valid CSV: {exc}")
            if reader.line_num == seen:  # nothing consumed: it would fail the same way again
                return
            continue
        if fields:
            yield reader.line_num, fields


def _shown(value: str) -> str:
    """A value from the file, quoted, anything outside ASCII (bytes that were not UTF-8
    included) escaped, and clipped."""
    return clip(ascii(value), 80)


def _header_errors(line: int, fields: list[str]) -> list[dict]:
    errors = _Errors()
    for name in fields:
        if name != COLUMN:
            errors.add(line, f"unknown column {_shown(name)}: a member row holds only the card "
                             f"number, so the file has the one column {COLUMN}",
                       column=_shown(name))
    if fields.count(COLUMN) > 1:
        errors.add(line, "named more than once", column=COLUMN)
    if COLUMN not in fields:
        errors.add(line, f"no {COLUMN} column: the first line must be the header {COLUMN}")
    return errors.listed


def _row_error(fields: list[str]) -> tuple[str, str | None] | None:
    if len(fields) != 1:
        return f"{len(fields)} fields; the header has 1", None
    value = fields[0]
    if not value:
        return "empty", COLUMN
    if not _ID.fullmatch(value):
        return (f"{_shown(value)} is not a card number: it must match {ID_PATTERN} "
                "(nothing is trimmed)", COLUMN)
    return None


class _Stage:
    """The temporary table of good card numbers, filled in batches."""

    def __init__(self, session: Session) -> None:
        self.connection = session.connection()
        self.sqlite = is_sqlite(session)
        self.pending: list[str] = []
        self.copy = self._copy_context = None
        if self.sqlite:
            # A temporary table belongs to the connection: one left by a failed import goes.
            self.connection.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{STAGE}")
            self.connection.exec_driver_sql(
                f"CREATE TEMP TABLE {STAGE} (member_id TEXT NOT NULL)")
        else:
            self.connection.exec_driver_sql(
                f"CREATE TEMP TABLE {STAGE} (member_id varchar(64) NOT NULL) ON COMMIT DROP")
            cursor = self.connection.connection.driver_connection.cursor()
            self._copy_context = cursor.copy(f"COPY {STAGE} (member_id) FROM STDIN")
            self.copy = self._copy_context.__enter__()

    def add(self, member_id: str) -> None:
        self.pending.append(member_id)
        if len(self.pending) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        if self.sqlite:
            self.connection.exec_driver_sql(f"INSERT INTO {STAGE} (member_id) VALUES (?)",
                                            [(member_id,) for member_id in self.pending])
        else:
            # COPY's text format needs no escaping here: a card number that matches
            # ID_PATTERN has no tab, newline or backslash, and is never \N.
            self.copy.write("".join(f"{member_id}\n" for member_id in self.pending))
        self.pending = []

    def close(self) -> None:
        self._flush()
        if self._copy_context is not None:
            context, self._copy_context = self._copy_context, None
            context.__exit__(None, None, None)

    def abandon(self, error: BaseException) -> None:
        """After a failure half-way: end a COPY in progress with an error (psycopg's own way)
        so that the connection is usable again; the caller rolls the transaction back."""
        if self._copy_context is not None:
            context, self._copy_context = self._copy_context, None
            try:
                context.__exit__(type(error), error, error.__traceback__)
            except Exception:  # the connection may be gone: the first error is the one to raise
                pass

    def enrol(self, now: datetime) -> tuple[int, int]:
        """(members created, distinct card numbers staged)."""
        created = self.connection.execute(_ENROL, {"now": now}).rowcount
        distinct = self.connection.exec_driver_sql(
            # Not count(DISTINCT ...): PostgreSQL sorts for that, and hashes for this.
            f"SELECT count(*) FROM (SELECT DISTINCT member_id FROM {STAGE}) AS card_numbers"
        ).scalar_one()
        if self.sqlite:
            self.connection.exec_driver_sql(f"DROP TABLE temp.{STAGE}")
        return created, distinct


def import_members(session: Session, source: BinaryIO, *, now: datetime) -> Imported:
    """Enrol every card number of the CSV file `source` (binary) at `now`, in the session's
    transaction, or raise BadFile having enrolled none. Idempotent: card numbers enrolled
    already are counted as existing and left as they are."""
    errors = _Errors()
    digesting = _Digesting(source)
    records = _records(digesting, errors)
    first = next(records, None)
    if first is None:
        if not errors.total:
            errors.add(1, f"the file is empty: the first line must be the header {COLUMN}")
        raise BadFile(errors.listed, errors.total, header=True)
    header_errors = _header_errors(*first)
    if header_errors or errors.total:
        listed = (errors.listed + header_errors)[:MAX_LISTED_ERRORS]
        raise BadFile(listed, errors.total + len(header_errors), header=True)

    stage = _Stage(session)
    rows = 0
    try:
        for line, fields in records:
            rows += 1
            problem = _row_error(fields)
            if problem is not None:
                errors.add(line, *problem)
            elif not errors.total:  # after the first bad row there is nothing left to stage
                stage.add(fields[0])
    except BaseException as error:
        stage.abandon(error)
        raise
    stage.close()
    if errors.total:  # the caller rolls back what was staged (nothing else was written)
        raise BadFile(errors.listed, errors.total)
    created, distinct = stage.enrol(now)
    return Imported(rows=rows, created=created, existing=distinct - created,
                    duplicates=rows - distinct, sha256=digesting.digest.hexdigest())
