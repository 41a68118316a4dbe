"""Problem answers of the partner API, counted per partner, local day and slug
(partners.models.ClaimRejectCount): a refused claim leaves no other trace, and the operator
console charts them beside the claims the journal accepted (settlement/trends.py).

partners/auth.py counts each answer with `count`, one upsert in the transaction that commits
the request's spent jti. Under a flood of refusals the table does not grow: each partner has
one row per day and slug, and concurrent refusals of one partner queue on that row's lock
for the rest of their (short) transactions, which is why the upsert is their last statement.

A refusal that spends no jti (a 401 before the token verified, a 429) commits nothing today,
and must stay cheap: a flood of bad tokens would otherwise cost a write each, all on the one
row of the day's unauthenticated refusals. Those are tallied in the process (`Tally`) and
written at most once per FLUSH_EVERY_S, one upsert per partner, day and slug with the sum;
a process that dies loses at most that last second of them.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from datetime import date

from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from .models import UNAUTHENTICATED, ClaimRejectCount

__all__ = ["UNAUTHENTICATED", "Tally", "add", "count", "per_day"]

FLUSH_EVERY_S = 1.0


def _upsert(dialect_insert):
    statement = dialect_insert(ClaimRejectCount).values(
        partner_id=bindparam("partner_id"), day=bindparam("day"), slug=bindparam("slug"),
        count=bindparam("count"))
    return statement.on_conflict_do_update(
        index_elements=["partner_id", "day", "slug"],
        set_={"count": ClaimRejectCount.count + statement.excluded.count})


_COUNT_PG, _COUNT_SQLITE = _upsert(pg_insert), _upsert(sqlite_insert)


Key = tuple[str, date, str]  # partner_id, day, slug


def add(bind: Session | Connection, counts: dict[Key, int]) -> None:
    """Add `counts` to the counters, in the current transaction of `bind`."""
    dialect = bind.get_bind().dialect if hasattr(bind, "get_bind") else bind.dialect
    sqlite = dialect.name == "sqlite"
    bind.execute(_COUNT_SQLITE if sqlite else _COUNT_PG,
                 [{"partner_id": partner_id, "day": day, "slug": slug[:64], "count": n}
                  for (partner_id, day, slug), n in sorted(counts.items())])


def count(session: Session, partner_id: str, day: date, slug: str) -> None:
    """One more answer with `slug` for the partner on `day`, in the current transaction."""
    add(session, {(partner_id, day, slug): 1})


class Tally:
    """Refusals counted in this process until they are due to be written (thread-safe)."""

    def __init__(self, every_s: float = FLUSH_EVERY_S) -> None:
        self.every_s = every_s
        self._counts: Counter[Key] = Counter()
        self._lock = threading.Lock()
        self._written = float("-inf")

    def add(self, key: Key) -> None:
        with self._lock:
            self._counts[key] += 1

    def due(self) -> dict[Key, int]:
        """What to write now (and forget here), or {} while the last write is recent."""
        with self._lock:
            if not self._counts or time.monotonic() - self._written < self.every_s:
                return {}
            self._written = time.monotonic()
            counts, self._counts = dict(self._counts), Counter()
            return counts


def per_day(session: Session, first: date, last: date, *,
            partner_id: str | None = None) -> dict[date, dict[str, int]]:
    """{day: {slug: answers}} from `first` to `last` inclusive, days with any only; all
    partners' (unauthenticated requests included) unless `partner_id` names one."""
    query = (select(ClaimRejectCount.day, ClaimRejectCount.slug, func.sum(ClaimRejectCount.count))
             .where(ClaimRejectCount.day >= first, ClaimRejectCount.day <= last)
             .group_by(ClaimRejectCount.day, ClaimRejectCount.slug))
    if partner_id is not None:
        query = query.where(ClaimRejectCount.partner_id == partner_id)
    out: dict[date, dict[str, int]] = defaultdict(dict)
    for day, slug, answers in session.execute(query):
        out[day][slug] = int(answers)
    return dict(out)
