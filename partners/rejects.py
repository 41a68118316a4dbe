"""Problem answers of the partner API, counted per partner, local day and slug
(partners.models.ClaimRejectCount): a refused claim leaves no other trace, and the operator
console charts them beside the claims the journal accepted (settlement/trends.py).

partners/auth.py counts each answer with `count`, one upsert in the transaction that commits
the request's spent jti. Under a flood of refusals the table does not grow: each partner has
one row per day and slug, and concurrent refusals of one partner queue on that row's lock
for the rest of their (short) transactions, which is why the upsert is their last statement.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import date

from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from coalition.database import is_sqlite

from .models import UNAUTHENTICATED, ClaimRejectCount

__all__ = ["UNAUTHENTICATED", "count", "per_day"]


def _upsert(dialect_insert):
    statement = dialect_insert(ClaimRejectCount).values(
        partner_id=bindparam("partner_id"), day=bindparam("day"), slug=bindparam("slug"),
        count=1)
    return statement.on_conflict_do_update(
        index_elements=["partner_id", "day", "slug"],
        set_={"count": ClaimRejectCount.count + statement.excluded.count})


_COUNT_PG, _COUNT_SQLITE = _upsert(pg_insert), _upsert(sqlite_insert)


def count(session: Session, partner_id: str, day: date, slug: str) -> None:
    """One more answer with `slug` for the partner on `day`, in the current transaction."""
    session.execute(_COUNT_SQLITE if is_sqlite(session) else _COUNT_PG,
                    {"partner_id": partner_id, "day": day, "slug": slug[:64]})


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
