"""Histories: a member's across every partner, for the operator (`flask members show`), the
same page by page with partner names and bonus points (the member portal, the console), and
a partner's own claims, page by page (GET /v1/claims).

A history says what was booked, not what the balance is: the balance comes from
`members.balance`, which knows about pending points, expiry and debt.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import bindparam, column, func, literal, or_, select, table, tuple_
from sqlalchemy.orm import Session, aliased, selectinload

from . import bonuses
from .clock import as_utc, iso_utc
from .members import find
from .models import Entry, Member
from .problems import Problem
from .vocabulary import EntryKind

# The partners package owns the table; a history only needs each partner's name.
_PARTNERS = table("partners", column("id"), column("name"))
KINDS = tuple(kind.value for kind in EntryKind)


def member_history(session: Session, external_id: str, *, limit: int | None = None) -> list[dict]:
    """Every journal entry of the member, newest first (by recorded_at, then id).

    Each entry: claim_id, kind (earn | burn | reversal), partner_id, points (positive; the kind
    says the direction), occurred_at and recorded_at (RFC 3339, UTC), period (the month it was
    booked into), late (booked after its own month closed), status (as first answered:
    booked | pending; a reversal is its own entry, naming the claim it reverses in `reverses`),
    reverses (the reversed claim's claim_id, else None), description.
    `limit` keeps the newest `limit` entries. An unknown member is a not-found Problem.
    """
    member = find(session, external_id)
    if member is None:
        raise Problem("not-found", "No such member.")
    target = aliased(Entry)
    query = (select(Entry, target.claim_id)
             .outerjoin(target, target.id == Entry.reverses_id)
             .where(Entry.member_id == member.id)
             .order_by(Entry.recorded_at.desc(), Entry.id.desc()))
    if limit is not None:
        query = query.limit(limit)
    return [{"claim_id": entry.claim_id, "kind": entry.kind, "partner_id": entry.partner_id,
             "points": entry.points, "occurred_at": iso_utc(entry.occurred_at),
             "recorded_at": iso_utc(entry.recorded_at), "period": entry.period,
             "late": entry.late, "status": entry.status, "reverses": reversed_claim,
             "description": entry.description}
            for entry, reversed_claim in session.execute(query)]


class Page(NamedTuple):
    rows: list[dict]
    older: int | None  # `before` for the next page (older entries); None: this is the oldest
    newer: int | None  # `after` for the previous page (newer entries); None: this is the newest


def page_of(session: Session, member_pk: int, *, partner_id: str | None = None,
            kind: str | None = None, claim_id: str | None = None, before: int | None = None,
            after: int | None = None, limit: int = 20) -> Page:
    """One page of the member's journal entries, newest first by id, in at most three
    statements whatever the member's history: the page (with partner names and the entries
    reversals undo), the bonus lots of its earns, and, on a page reached by a cursor, whether
    anything newer matches.

    Paged by the entry id (the order entries were booked in, which no later booking changes):
    `before` gives the entries older than that id, `after` those newer (the page just before
    a page, still newest first); an entry booked between pages sorts before the first page,
    so none is shown twice or skipped. ix_journal_entries_member_id_id serves both directions
    as one index range. Filters: partner_id, kind (an EntryKind), claim_id (the claim and the
    reversals of it).

    Each row: id, claim_id, partner_id, partner_name (None for the coalition's own bookings
    such as an expiry, or a partner no longer listed), kind, points (positive; the kind says
    the direction), bonus_points (the bonus lots an earn booked: campaigns, coupons, tiers),
    status (as first answered: booked | pending), pending_until, occurred_at, recorded_at
    (aware UTC datetimes), period, late, description, reverses (for a reversal: the reversed
    entry's id, claim_id and kind; else None).
    """
    if kind is not None and kind not in KINDS:
        raise Problem("validation-error", f"kind must be one of {', '.join(KINDS)}.")
    target = aliased(Entry)
    query = (select(Entry.id, Entry.claim_id, Entry.partner_id, _PARTNERS.c.name, Entry.kind,
                    Entry.points, Entry.status, Entry.pending_until, Entry.occurred_at,
                    Entry.recorded_at, Entry.period, Entry.late, Entry.description,
                    target.id, target.claim_id, target.kind)
             .outerjoin(target, target.id == Entry.reverses_id)
             .outerjoin(_PARTNERS, _PARTNERS.c.id == Entry.partner_id))
    # A range rather than `=`, with member_id in the ORDER BY: then only this index gives the
    # order. With `=`, PostgreSQL may walk the primary key back until it has found a page (it
    # assumes the member's entries are spread evenly): through every later entry of everyone
    # else when the member's own are old (a dormant member: 0.1 ms against 180 ms).
    matching = [Entry.member_id.between(member_pk, member_pk)]
    # The filters' values written into the statement: psycopg prepares a statement it runs
    # often, and PostgreSQL's generic plan for `kind = $n` sorts all the member's entries
    # (75 ms for 100,000 against 2 ms) where a known rare kind walks the index back.
    if partner_id is not None:
        matching.append(Entry.partner_id == bindparam(None, partner_id, Entry.partner_id.type,
                                                      literal_execute=True))
    if kind is not None:
        matching.append(Entry.kind == bindparam(None, kind, Entry.kind.type,
                                                literal_execute=True))
    if claim_id is not None:
        matching.append(or_(Entry.claim_id == claim_id, Entry.reverses_id.in_(
            select(Entry.id).where(Entry.member_id == member_pk, Entry.claim_id == claim_id)
            .scalar_subquery())))
    query = query.where(*matching)
    if after is not None:
        found = list(session.execute(query.where(Entry.id > after)
                                     .order_by(Entry.member_id.asc(), Entry.id.asc())
                                     .limit(limit + 1)))
        more_newer = len(found) > limit
        found = found[:limit][::-1]
        more_older = bool(found)  # the entry `after` names is older than this page
    else:
        if before is not None:
            query = query.where(Entry.id < before)
        found = list(session.execute(query.order_by(Entry.member_id.desc(), Entry.id.desc())
                                     .limit(limit + 1)))
        more_older = len(found) > limit
        found = found[:limit]
        more_newer = before is not None and bool(found) and session.scalar(
            select(select(Entry.id).where(*matching, Entry.id >= before).exists()))
    given = bonuses.of_entries(session, [r[0] for r in found if r[4] == EntryKind.EARN])
    rows = [{"id": entry_id, "claim_id": claim, "partner_id": partner, "partner_name": name,
             "kind": entry_kind, "points": points,
             "bonus_points": sum(b.points for b in given.get(entry_id, ())),
             "status": status, "pending_until": as_utc(pending_until) if pending_until else None,
             "occurred_at": as_utc(occurred_at), "recorded_at": as_utc(recorded_at),
             "period": period, "late": late, "description": description,
             "reverses": ({"id": reversed_id, "claim_id": reversed_claim, "kind": reversed_kind}
                          if reversed_id is not None else None)}
            for (entry_id, claim, partner, name, entry_kind, points, status, pending_until,
                 occurred_at, recorded_at, period, late, description, reversed_id,
                 reversed_claim, reversed_kind) in found]
    return Page(rows, rows[-1]["id"] if rows and more_older else None,
                rows[0]["id"] if rows and more_newer else None)


@dataclass(frozen=True)
class Listed:
    entry: Entry
    reversals_total: int
    reversed_points: int


def partner_claims(session: Session, partner_id: str, *, limit: int,
                   after: tuple[datetime, int] | None = None, member_id: str | None = None,
                   period: str | None = None, kind: str | None = None,
                   since: datetime | None = None,
                   until: datetime | None = None) -> tuple[list[Listed], tuple[datetime, int] | None]:
    """One page of the partner's own claims, newest first, and the key to continue after it.

    Ordered by (recorded_at, id) descending, a key no claim ever changes: `after` (the last
    key of the previous page) continues exactly where that page ended, so no claim shows up
    twice or is skipped when claims arrive between pages (those sort before the first page).
    `since` is inclusive, `until` exclusive, both on recorded_at. A member_id that names no
    member matches nothing (it is not an error: the answer says nothing about which cards
    exist). Each claim comes with the count and points of all its reversals. The next key is
    None on the last page.
    """
    query = select(Entry).where(Entry.partner_id == partner_id)
    if member_id is not None:
        query = query.where(Entry.member_id == select(Member.id)
                            .where(Member.external_id == member_id).scalar_subquery())
    if period is not None:
        query = query.where(Entry.period == period)
    if kind is not None:
        query = query.where(Entry.kind == kind)
    if since is not None:
        query = query.where(Entry.recorded_at >= since)
    if until is not None:
        query = query.where(Entry.recorded_at < until)
    if after is not None:
        recorded_at, entry_id = after
        query = query.where(tuple_(Entry.recorded_at, Entry.id)
                            < tuple_(literal(recorded_at, Entry.recorded_at.type),
                                     literal(entry_id, Entry.id.type)))
    entries = list(session.scalars(
        query.options(selectinload(Entry.reverses))
        .order_by(Entry.recorded_at.desc(), Entry.id.desc()).limit(limit + 1)))
    more = len(entries) > limit
    entries = entries[:limit]
    reversals = {target: (int(count), int(points)) for target, count, points in session.execute(
        select(Entry.reverses_id, func.count(), func.sum(Entry.points))
        .where(Entry.reverses_id.in_([e.id for e in entries if e.kind != EntryKind.REVERSAL]))
        .group_by(Entry.reverses_id))} if entries else {}
    page = [Listed(e, *reversals.get(e.id, (0, 0))) for e in entries]
    last = entries[-1] if more else None
    return page, (as_utc(last.recorded_at), last.id) if last is not None else None
