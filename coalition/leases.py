"""Leader leases: a job that runs beside every app instance, done by one of them at a time.

Each app instance runs a sealer (`flask ledger seal --every 5`), so that losing an instance
loses no sealing. The sealers share the lease "sealer": the one holding it seals, the others
renew nothing and try again each tick, and take over once the holder stops renewing (it died,
or its host did) for `ttl`. A stopping holder hands the lease back at once.

The lease is a row, taken or renewed by one upsert that succeeds only for the holder or after
expiry. Session advisory locks would not do: behind pgbouncer in transaction mode a session
lock stays on whichever server connection took it, and it is gone after a failover, where a
replicated row is not. Expiry compares the holders' own clocks, so hosts must keep time (NTP);
a skew well below `ttl` is harmless.

The lease decides who does the work, not whether it is safe to do twice: the sealer also takes
its advisory lock for each run (coalition/sealer.py), so two holders for a moment (a holder
stalled past its ttl) seal one after the other and the second finds nothing left.
"""
from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from .database import is_sqlite
from .models import LeaderLease


def holder_name() -> str:
    """host:pid:random, unique per process even when a pid is reused."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    ttl: timedelta

    def hold(self, session: Session, *, now: datetime) -> bool:
        """Take or renew the lease in the caller's transaction; True if this holder has it.
        Commit right after, so that the others see it."""
        insert = sqlite_insert if is_sqlite(session) else pg_insert
        statement = insert(LeaderLease).values(name=self.name, holder=self.holder,
                                               acquired_at=now, expires_at=now + self.ttl)
        ours = LeaderLease.holder == statement.excluded.holder
        session.execute(statement.on_conflict_do_update(
            index_elements=["name"],
            set_={"holder": statement.excluded.holder,
                  # A renewal keeps the time it was first taken: how long a leader has led.
                  "acquired_at": case((ours, LeaderLease.acquired_at),
                                      else_=statement.excluded.acquired_at),
                  "expires_at": statement.excluded.expires_at},
            where=or_(ours, LeaderLease.expires_at < now)))
        return session.scalar(select(LeaderLease.holder).where(LeaderLease.name == self.name)) \
            == self.holder

    def release(self, session: Session, *, now: datetime) -> None:
        """Hand the lease back (if held), in the caller's transaction: the next tick of another
        instance takes it instead of waiting out the ttl."""
        session.execute(update(LeaderLease)
                        .where(LeaderLease.name == self.name, LeaderLease.holder == self.holder)
                        .values(expires_at=now))


def current(session: Session, name: str) -> LeaderLease | None:
    return session.get(LeaderLease, name)
