"""Tamper evidence for the journal without a global lock on the claim path.

A claim stores only its own entry hash. The sealer, off the hot path, chains committed entries
in id order into blocks: a block hashes its entries' hashes and the previous block's hash.
It seals only up to a watermark below which no transaction can still commit an entry (see
`watermark`), so an entry that commits late with a lower id is never skipped. `ledger verify`
flags any block whose entries no longer hash to it (an UPDATE, DELETE or INSERT made in SQL on
the journal shows up as a broken block, named by its id range) and any entry left unsealed
well after a later sealing run.
`flask ledger anchor` prints the head hash for the operator to keep outside the database;
`flask ledger seal --every N` runs the sealer by itself (`run_sealer`) and, with an anchor file,
appends the head once per UTC day, which `ledger verify --anchors` checks the chain against.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

from sqlalchemy import func, insert, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from . import books, clock, partitions
from .clock import as_utc, iso_utc
from .database import is_sqlite
from .hashing import canonical, entries_digest, sha256_hex
from .leases import Lease
from .models import Entry, LedgerBlock, LedgerSeal
from .outages import database_unavailable

GENESIS = "0" * 64
SEAL_LOCK = 0x5365616C  # advisory lock: one sealer at a time
UNSEALED_GRACE = timedelta(minutes=10)  # verify's allowance for a claim still in flight
MAX_BLOCK = 10_000
# What a database going away looks like (refused or dropped connections, a failover, a full
# pool, reconnections that all failed): the sealer logs it and tries again at the next tick.
# Anything else is a bug.
def retryable(exc: BaseException) -> bool:
    return isinstance(exc, (DBAPIError, PoolTimeout)) or database_unavailable(exc)

log = logging.getLogger("coalition.sealer")
T = TypeVar("T")


def block_hash(block: LedgerBlock) -> str:
    return sha256_hex(canonical({
        "v": 1, "prev_hash": block.prev_hash, "first_entry_id": block.first_entry_id,
        "last_entry_id": block.last_entry_id, "entry_count": block.entry_count,
        "entries_hash": block.entries_hash, "sealed_at": iso_utc(block.sealed_at)}))


def head(session: Session) -> LedgerBlock | None:
    return session.scalars(select(LedgerBlock).order_by(LedgerBlock.id.desc()).limit(1)).first()


def watermark(session: Session) -> int:
    """The highest entry id below which nothing can still commit.

    Every claim holds the books lock (shared) from before it inserts its entry until it
    commits, so with the lock taken exclusively for a moment no claim is in flight, and any
    id handed out later is higher than every id seen now. The pause lasts as long as the
    claims already in flight (milliseconds) and is taken once per sealing run.
    """
    if is_sqlite(session):  # one writer at a time: what is visible is final
        return last_entry_id(session)
    with session.get_bind().connect() as connection, connection.begin():
        connection.execute(select(func.pg_advisory_xact_lock(books.BOOKS_LOCK)))
        return connection.scalar(select(func.coalesce(func.max(Entry.id), 0)))


def last_entry_id(session: Session) -> int:
    """Final as a watermark only while the caller holds the books lock exclusively."""
    return session.scalar(select(func.coalesce(func.max(Entry.id), 0)))


def seal(session: Session, *, now: datetime, upto: int | None = None) -> list[LedgerBlock]:
    """Chain every entry up to the watermark (or `upto`) into blocks of at most MAX_BLOCK.
    One sealer at a time; a second one finds nothing left to do."""
    # The watermark first: taking it waits for the books lock, which a closing month holds
    # while it waits for the sealer's lock; the other order could wait forever.
    upto = watermark(session) if upto is None else upto
    if not is_sqlite(session):
        session.execute(select(func.pg_advisory_xact_lock(SEAL_LOCK)))
    blocks = []
    while True:
        last = head(session)
        rows = session.execute(
            select(Entry.id, Entry.entry_hash)
            .where(Entry.id > (last.last_entry_id if last else 0), Entry.id <= upto)
            .order_by(Entry.id).limit(MAX_BLOCK)).all()
        if not rows:
            return blocks
        block = LedgerBlock(first_entry_id=rows[0][0], last_entry_id=rows[-1][0],
                            entry_count=len(rows), entries_hash=entries_digest([h for _, h in rows]),
                            prev_hash=last.block_hash if last else GENESIS, sealed_at=now)
        block.block_hash = block_hash(block)
        session.add(block)
        session.flush()
        session.execute(insert(LedgerSeal), [
            {"entry_id": entry_id, "block_id": block.id, "entry_hash": entry_hash}
            for entry_id, entry_hash in rows])
        blocks.append(block)


def verify_chain(session: Session, fail) -> int:
    """For `ledger verify`: blocks chain, their seal records still hash to them, and the entries
    in each block's range are exactly the sealed ones, hash for hash (else the first entry that
    differs is named); and no entry was left unsealed well after a later seal."""
    previous, last_sealed, count = GENESIS, 0, 0
    # An archived month's entries are no longer in the journal: their seal records stand in
    # for them, and must still hash to the digest taken from the entries when the month was
    # detached (partitions.detach_period), and the month's anchor must still be in the chain.
    archived = partitions.archived(session)
    archived_hashes: dict[str, list[tuple[int, str]]] = {a.period: [] for a in archived.periods}
    for block in session.scalars(select(LedgerBlock).order_by(LedgerBlock.id)):
        count += 1
        ref = {"block": block.id, "first_entry_id": block.first_entry_id}
        current = [tuple(r) for r in session.execute(
            select(Entry.id, Entry.entry_hash).where(
                Entry.id.between(block.first_entry_id, block.last_entry_id)).order_by(Entry.id))]
        sealed = [tuple(r) for r in session.execute(
            select(LedgerSeal.entry_id, LedgerSeal.entry_hash)
            .where(LedgerSeal.block_id == block.id).order_by(LedgerSeal.entry_id))]
        if archived.runs:
            gone = [(i, h, p) for i, h in sealed if (p := archived.period_of(i)) is not None]
            for entry_id, entry_hash, period in gone:
                archived_hashes[period].append((entry_id, entry_hash))
            current = sorted(current + [(i, h) for i, h, _ in gone])
        if block.prev_hash != previous or block_hash(block) != block.block_hash:
            fail("block-chain", "block does not chain to the one before it", **ref)
        elif not _matches(block, sealed):
            fail("block-seals", "the block's seal records were changed", **ref)
            if not _matches(block, current):
                fail("block-entries", "entries changed, removed or inserted after sealing "
                     f"somewhere in {block.first_entry_id}..{block.last_entry_id}", **ref)
        elif (broken := first_difference(sealed, current)) is not None:
            entry_id, how = broken
            fail("block-entries", f"entry {entry_id} was {how} after sealing: the first broken "
                 f"entry of block {block.id}", **ref, entry_id=entry_id)
        if block.first_entry_id <= last_sealed:
            fail("block-chain", "blocks overlap", **ref)
        previous, last_sealed = block.block_hash, block.last_entry_id
    chained = set(session.scalars(select(LedgerBlock.block_hash))) if archived.periods else set()
    for month in archived.periods:
        rows = sorted(archived_hashes[month.period])
        if len(rows) != month.entry_count or entries_digest(h for _, h in rows) != month.digest:
            fail("archived-period", f"the seal records of archived {month.period} no longer "
                 "hash to the digest taken from its entries", period=month.period)
        if month.ledger_head is not None and month.ledger_head not in chained:
            fail("archived-period", f"the anchor of archived {month.period} (the chain's head "
                 "at its close) is no longer a block of the chain", period=month.period)
    last = head(session)
    if last is not None:
        overdue = as_utc(last.sealed_at) - UNSEALED_GRACE
        for entry_id in session.scalars(select(Entry.id).where(
                Entry.id > last_sealed, Entry.recorded_at < overdue).order_by(Entry.id).limit(10)):
            fail("entry-unsealed", "entry left unsealed past the sealing window", entry_id=entry_id)
    return count


def _matches(block: LedgerBlock, rows: list[tuple[int, str]]) -> bool:
    return (len(rows) == block.entry_count and entries_digest([h for _, h in rows]) == block.entries_hash
            and all(block.first_entry_id <= i <= block.last_entry_id for i, _ in rows))


def first_difference(sealed: list[tuple[int, str]], current: list[tuple[int, str]]):
    """(entry id, "changed" | "deleted" | "inserted") where the two id-ordered lists first part."""
    for (sealed_id, sealed_hash), (current_id, current_hash) in zip(sealed, current):
        if sealed_id != current_id:
            return (sealed_id, "deleted") if sealed_id < current_id else (current_id, "inserted")
        if sealed_hash != current_hash:
            return sealed_id, "changed"
    if len(sealed) > len(current):
        return sealed[len(current)][0], "deleted"
    if len(current) > len(sealed):
        return current[len(sealed)][0], "inserted"
    return None


def head_hash(session: Session) -> str | None:
    block = head(session)
    return block.block_hash if block else None


def anchor(session: Session) -> dict:
    block = head(session)
    if block is None:
        return {"head": None}
    return {"head": block.block_hash, "block": block.id, "last_entry_id": block.last_entry_id,
            "sealed_at": iso_utc(as_utc(block.sealed_at))}


def seal_run(session: Session, *, now: datetime) -> dict:
    """One sealing run: what `flask ledger seal` prints. The caller commits."""
    blocks = seal(session, now=now)
    return {"blocks": len(blocks), "entries": sum(b.entry_count for b in blocks), **anchor(session)}


class AnchorFile:
    """The daily anchors: an append-only file of JSON lines {date, head, block, last_entry_id,
    sealed_at}, one per UTC day, for the operator to ship outside the database. Whoever can
    rewrite the journal can recompute every block after it, but not an anchor kept elsewhere:
    `ledger verify --anchors` reports an anchored head that the chain no longer holds."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.touch()  # an unwritable path fails at start, not at the first anchor
        self.last_date = self._last_date()

    def reload(self) -> None:
        """Read the last line again: several instances' sealers may share one file, and the
        one that takes over from another must not anchor a day twice."""
        self.last_date = self._last_date()

    def _last_date(self) -> str | None:
        for line in reversed(self.path.read_text(encoding="utf-8").splitlines()):
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                return json.loads(line).get("date")
        return None  # empty, or nothing parses: today's line is missing

    def due(self, today: date) -> bool:
        return self.last_date != today.isoformat()

    def append(self, today: date, head: dict) -> dict:
        line = {"date": today.isoformat(), "head": head["head"], "block": head["block"],
                "last_entry_id": head["last_entry_id"], "sealed_at": head["sealed_at"]}
        with open(self.path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            # A crash mid-write can leave a last line without its newline: start a fresh line
            # rather than glue today's anchor onto a broken one.
            newline = f.tell() > 0 and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n"
            f.write((b"\n" if newline else b"") + json.dumps(line).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())  # the anchor is the evidence: on disk before we say so
        self.last_date = line["date"]
        return line

    def append_if_due(self, now: datetime, head: dict) -> dict | None:
        """Today's line, written by the first run of the UTC day that has a head to anchor."""
        today = now.astimezone(timezone.utc).date()
        if head.get("head") is None or not self.due(today):
            return None
        return self.append(today, head)


def log_error(exc: BaseException) -> None:
    """One warning line per failed run: the first line of the error, never a traceback."""
    first_line = (str(exc).strip().splitlines() or [""])[0]
    what = "anchor not written" if isinstance(exc, OSError) else "sealing run failed"
    log.warning(f"{what}; retrying at the next tick",
                extra={"error": f"{type(exc).__name__}: {first_line}"})


utcnow = clock.now  # run_sealer's clock; a test passes its own


def run_sealer(session_factory: Callable[[], Session], *, every: float, stop: threading.Event,
               report: Callable[[dict], None], now: Callable[[], datetime] = utcnow,
               on_error: Callable[[BaseException], None] = log_error,
               anchors: AnchorFile | None = None, max_runs: int | None = None,
               lease: Lease | None = None) -> int:
    """Seal every `every` seconds until `stop` is set (or `max_runs` runs are done); returns
    the number of runs.

    Each run takes a session from `session_factory`, seals, commits and closes it, then
    passes `report` a {"event": "sealed", ...} line if it sealed anything and an
    {"event": "anchored", ...} line if it wrote the day's anchor; an idle run reports nothing.
    A database error is handed to `on_error`, the session rolled back and closed, and the
    next tick tries again: a database restart or failover must not end the sealer, or
    entries would pile up unsealed until `verify` flags them. Other exceptions are bugs and
    propagate. `stop.wait` is the sleep, so setting `stop` ends the wait at once while a run
    in progress always completes.

    With a `lease`, each run first takes or renews it (coalition/leases.py) and seals only while
    it holds it; taking it is reported as {"event": "leading"}, losing it as {"event":
    "following"}. Stopping hands it back, so another instance's sealer takes over at its next
    tick.
    """
    assert every > 0, "every is a positive number of seconds"
    runs, partitions_due = 0, time.monotonic()
    leading = None if lease is not None else True
    while not stop.is_set():
        deadline = time.monotonic() + every  # a fixed rate: a slow run shortens the next wait
        moment = now()
        runs += 1
        if lease is not None:
            try:
                holds = _in_transaction(session_factory, lambda s: lease.hold(s, now=moment))
            except SQLAlchemyError as exc:
                if not retryable(exc):
                    raise
                on_error(exc)
                holds = None
            if holds is not None and holds != leading:
                leading = holds
                report({"event": "leading" if holds else "following", "holder": lease.holder})
                if holds and anchors is not None:
                    anchors.reload()  # another instance may have anchored meanwhile
            if not holds:
                if max_runs is not None and runs >= max_runs:
                    break
                stop.wait(max(0.0, deadline - time.monotonic()))
                continue
        try:
            due = time.monotonic() >= partitions_due
            result = _in_transaction(session_factory,
                                     lambda s: _seal_and_partition(s, moment, due, on_error))
        except SQLAlchemyError as exc:
            if not retryable(exc):
                raise
            on_error(exc)
        else:
            created = result.pop("partitions", None)
            if due and created is not None:
                partitions_due = time.monotonic() + PARTITIONS_EVERY
            if created:
                report({"event": "partitions-created", **created})
            if result["blocks"]:
                report({"event": "sealed", **result})
            if anchors is not None:
                try:
                    line = anchors.append_if_due(moment, result)
                except OSError as exc:  # a full disk: the line is still due, next tick retries
                    on_error(exc)
                else:
                    if line is not None:
                        report({"event": "anchored", "file": str(anchors.path), **line})
        if max_runs is not None and runs >= max_runs:
            break
        stop.wait(max(0.0, deadline - time.monotonic()))
    if lease is not None and leading:
        try:
            _in_transaction(session_factory, lambda s: lease.release(s, now=now()))
        except SQLAlchemyError as exc:  # the lease then runs out by itself
            if not retryable(exc):
                raise
            on_error(exc)
    return runs


PARTITIONS_EVERY = 3600.0  # seconds: the coming months' partitions are months ahead anyway


def _seal_and_partition(session: Session, moment: datetime, due: bool, on_error) -> dict:
    """A sealing run; when due, the leading sealer (the one job that runs exactly once across
    the instances) also creates the coming months' partitions, in a savepoint so that a
    failure there (a lock timeout) never undoes the seal."""
    result = seal_run(session, now=moment)
    if due:
        try:
            with session.begin_nested():
                done = partitions.ensure_partitions(session)
        except SQLAlchemyError as exc:
            on_error(exc)
        else:
            result["partitions"] = ({"created": done["created"],
                                     "moved_from_default": done["moved_from_default"]}
                                    if done["created"] else {})
    return result


def _in_transaction(session_factory: Callable[[], Session], work: Callable[[Session], T]) -> T:
    session = session_factory()
    try:
        result = work(session)
        session.commit()
        return result
    except BaseException:
        # With the server gone the rollback fails too; the error worth reporting is the first.
        with contextlib.suppress(SQLAlchemyError):
            session.rollback()
        raise
    finally:
        session.close()  # the connection goes back to the pool (or is discarded, if broken)


def verify_anchors(session: Session, fail, lines: Iterable[str]) -> int:
    """For `ledger verify --anchors`: every anchored head is still the hash of that block.
    A chain recomputed after tampering, or cut back, no longer holds it."""
    count = 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            kept = json.loads(line)
            anchored, block_id = kept["head"], kept.get("block")
        except (ValueError, TypeError, KeyError):
            fail("anchor-malformed", "not an anchor line (JSON with head and block)", line=number)
            continue
        count += 1
        if anchored is None:  # anchored before the first block: nothing to hold the chain to
            continue
        ref = {"line": number, "date": kept.get("date"), "block": block_id}
        block = session.get(LedgerBlock, block_id) if isinstance(block_id, int) else None
        if block is None:
            fail("anchor-mismatch", "the anchored block is no longer in the chain: blocks "
                 "were deleted or the chain rebuilt after this anchor", **ref)
        elif block.block_hash != anchored or block.last_entry_id != kept.get("last_entry_id"):
            fail("anchor-mismatch", "the anchored block has another hash now: the chain was "
                 "recomputed after this anchor (entries changed behind the sealer)", **ref)
    return count
