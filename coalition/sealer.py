"""Tamper evidence for the journal without a global lock on the claim path (DESIGN.md).

A claim stores only its own entry hash. The sealer, off the hot path, chains committed entries
in id order into blocks: a block hashes its entries' hashes and the previous block's hash.
It seals only up to a watermark below which no transaction can still commit an entry (see
`watermark`), so an entry that commits late with a lower id is never skipped. `ledger verify`
flags any block whose entries no longer hash to it (an UPDATE, DELETE or INSERT made in SQL on
the journal shows up as a broken block, named by its id range) and any entry left unsealed
well after a later sealing run.
`flask ledger anchor` prints the head hash for the operator to keep outside the database.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import BigInteger, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from . import books
from .database import db, is_sqlite
from .fields import iso_utc
from .hashing import canonical, sha256_hex
from .models import Entry, Id, UtcDateTime
from .periods import as_utc

GENESIS = "0" * 64
SEAL_LOCK = 0x5365616C  # advisory lock: one sealer at a time
UNSEALED_GRACE = timedelta(minutes=10)  # verify's allowance for a claim still in flight
MAX_BLOCK = 10_000


class LedgerBlock(db.Model):
    __tablename__ = "ledger_blocks"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    first_entry_id: Mapped[int] = mapped_column(BigInteger)
    last_entry_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    entry_count: Mapped[int] = mapped_column(BigInteger)
    entries_hash: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)  # the chain cannot fork
    block_hash: Mapped[str] = mapped_column(String(64))
    sealed_at: Mapped[datetime] = mapped_column(UtcDateTime)


def entries_digest(hashes: list[str]) -> str:
    digest = hashlib.sha256()
    for entry_hash in hashes:
        digest.update(bytes.fromhex(entry_hash))
    return digest.hexdigest()


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
        blocks.append(block)


def verify_chain(session: Session, fail) -> int:
    """For `ledger verify`: blocks chain and still hash their entries, and no entry was left
    behind: unsealed although a later seal ran well past its settle window."""
    previous, last_sealed, count = GENESIS, 0, 0
    for block in session.scalars(select(LedgerBlock).order_by(LedgerBlock.id)):
        count += 1
        ref = {"block": block.id, "first_entry_id": block.first_entry_id}
        hashes = session.scalars(select(Entry.entry_hash).where(
            Entry.id.between(block.first_entry_id, block.last_entry_id)).order_by(Entry.id)).all()
        if block.prev_hash != previous or block_hash(block) != block.block_hash:
            fail("block-chain", "block does not chain to the one before it", **ref)
        elif len(hashes) != block.entry_count or entries_digest(hashes) != block.entries_hash:
            fail("block-entries", "entries changed, removed or inserted after sealing: the "
                 f"first broken entry lies in {block.first_entry_id}..{block.last_entry_id}", **ref)
        if block.first_entry_id <= last_sealed:
            fail("block-chain", "blocks overlap", **ref)
        previous, last_sealed = block.block_hash, block.last_entry_id
    last = head(session)
    if last is not None:
        overdue = as_utc(last.sealed_at) - UNSEALED_GRACE
        for entry_id in session.scalars(select(Entry.id).where(
                Entry.id > last_sealed, Entry.recorded_at < overdue).order_by(Entry.id).limit(10)):
            fail("entry-unsealed", "entry left unsealed past the sealing window", entry_id=entry_id)
    return count


def head_hash(session: Session) -> str | None:
    block = head(session)
    return block.block_hash if block else None


def anchor(session: Session) -> dict:
    block = head(session)
    if block is None:
        return {"head": None}
    return {"head": block.block_hash, "block": block.id, "last_entry_id": block.last_entry_id,
            "sealed_at": iso_utc(as_utc(block.sealed_at))}
