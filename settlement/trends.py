"""The operator console's trends: the coalition month by month and day by day, as plain data
(dataclasses of int points and Decimal EUR) that a page draws and serves as JSON and CSV.

Where the figures come from:

- A closed month's issuance, redemption, bonus points, issuer x redeemer matrix and breakage
  are read from what the close signed (the partners' statements and the coalition report), so
  the console never shows a figure for a closed month other than the statements do. An open
  month is computed as a close would compute it now: `service.month_flows`, priced with
  `statements.breakage` at each issuer's terms in force for the month. Breakage of a month
  closed before the report priced it (v1, v2) is priced the same way from the statements'
  points_expired.
- Liability is what members hold at a month's end: the points still in their lots (pending
  points included; lots past their expiry until the expiry is booked, as the books hold
  them), by the month each change was booked into, as statements count months. In EUR each
  issuer's points at its issue price in force for the month, rounded once per issuer half up,
  like breakage (the value that turns into breakage if the points expire unspent).
- Active members and tiers: see `active_members` and `tier_distribution`.
- Claims per day: accepted claims from the journal by local day in the coalition's time zone,
  beside the refusals the partner API counted (partners/rejects.py, `per_day`), which the
  caller reads and passes in: settlement uses partners through partners.service only.

Months are periods (YYYY-MM, the coalition's time zone), `months()` the default range: the
last 12, the current one included.
"""
from __future__ import annotations

import dataclasses
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import Date, cast, func, select
from sqlalchemy.orm import Session

from coalition import tiers as tiering
from coalition.activities import REFERRAL
from coalition.clock import as_utc
from coalition.database import is_sqlite
from coalition.models import ClosedPeriod, Consumption, Entry, Lot, Member
from coalition.periods import add_months, day_of, day_start_utc, month_start_utc, period_of
from coalition.vocabulary import CLAIM_KINDS, EntryKind
from partners.service import terms_in_force

from . import exports, service, statements
from .models import CoalitionReport, Statement
from .statements import Flows

DEFAULT_MONTHS = 12
DEFAULT_DAYS = 30
ACTIVE_DAYS = 90  # the window of `active_members`


# --- months ------------------------------------------------------------------------------

def months(*, now: datetime, tz: str, count: int = DEFAULT_MONTHS, last: str | None = None) -> list[str]:
    """`count` periods, oldest first, ending with `last` (default: the current month)."""
    year, month = map(int, (last or period_of(now, tz)).split("-"))
    return [f"{y:04d}-{m:02d}" for y, m in (add_months(year, month, -back)
                                             for back in range(count - 1, -1, -1))]


def month_end(period: str, tz: str) -> datetime:
    """The instant the month ends (the next month's local midnight), UTC."""
    year, month = map(int, period.split("-"))
    return month_start_utc(*add_months(year, month, 1), tz)


def _as_of(period: str, now: datetime, tz: str) -> datetime:
    """The month's end, or now while it runs."""
    return min(month_end(period, tz), as_utc(now))


def _cents_to_eur(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


# --- what a month's close says (or would say now) ----------------------------------------

@dataclass
class MonthFigures:
    """One month's figures by partner, as the statements and report state them."""
    period: str
    closed: bool
    issued: dict[str, int] = field(default_factory=dict)
    bonus: dict[str, int] = field(default_factory=dict)
    redeemed: dict[str, int] = field(default_factory=dict)
    matrix: dict[tuple[str, str], int] = field(default_factory=dict)
    breakage: dict = field(default_factory=dict)  # as the report's: points, breakage_cents, by_issuer


def month_figures(session: Session, period: str) -> MonthFigures:
    """A closed month from its signed documents, an open one from the journal as a close
    would derive it now."""
    report_row = session.get(CoalitionReport, period)
    if report_row is not None:
        return _closed_figures(session, period, json.loads(report_row.document))
    flows = service.month_flows(session, period)
    figures = MonthFigures(period, False, dict(flows.issued), dict(flows.bonus),
                           dict(flows.redeemed), {k: v for k, v in flows.matrix.items() if v})
    figures.breakage = _priced_breakage(session, period, flows)
    return figures


def figures_for(session: Session, periods: list[str]) -> dict[str, MonthFigures]:
    """Each month's figures once, for a page that draws several series of the same months:
    pass them as `figures=` (an open month costs a pass over its journal, as a close does)."""
    return {period: month_figures(session, period) for period in periods}


def _figures(session: Session, period: str, figures: dict[str, MonthFigures] | None) -> MonthFigures:
    if figures is not None and period in figures:
        return figures[period]
    return month_figures(session, period)


def _closed_figures(session: Session, period: str, report: dict) -> MonthFigures:
    figures = MonthFigures(period, True)
    expired = Flows()
    for document in session.scalars(select(Statement.document).where(Statement.period == period)):
        doc = json.loads(document)
        partner = doc["partner_id"]
        figures.issued[partner] = doc["points_issued"]
        figures.redeemed[partner] = doc["points_redeemed"]
        figures.bonus[partner] = doc.get("bonus_points_issued", 0)  # v4 on
        expired.expired[partner] = doc["points_expired"]
    figures.matrix = {(m["issuer"], m["redeemer"]): m["points"] for m in report["matrix"]}
    figures.breakage = report.get("breakage") or _priced_breakage(session, period, expired)
    return figures


def _priced_breakage(session: Session, period: str, flows: Flows) -> dict:
    prices = {issuer: terms_in_force(session, issuer, period)["issue_price"]
              for issuer, points in flows.expired.items() if points}
    return statements.breakage(flows, prices)


# --- the series --------------------------------------------------------------------------

@dataclass(frozen=True)
class PartnerMonth:
    """A partner's issuance against its redemption in one month. points_issued: its own
    points issued (earns less reversals of earns); bonus_points_issued: bonus points it funded;
    points_redeemed: points redeemed at it (burns less reversals of burns)."""
    period: str
    partner_id: str
    points_issued: int
    bonus_points_issued: int
    points_redeemed: int
    closed: bool


def issuance_and_redemption(session: Session, periods: list[str], *,
                            figures: dict[str, MonthFigures] | None = None) -> list[PartnerMonth]:
    """Per month and partner (those with any of the three figures), by month then partner."""
    rows = []
    for period in periods:
        f = _figures(session, period, figures)
        for partner in sorted({*f.issued, *f.bonus, *f.redeemed}):
            numbers = (f.issued.get(partner, 0), f.bonus.get(partner, 0), f.redeemed.get(partner, 0))
            if any(numbers):
                rows.append(PartnerMonth(period, partner, *numbers, f.closed))
    return rows


@dataclass(frozen=True)
class Breakage:
    """Points that expired unspent in a month (expiries booked into it, less expired points a
    reversal gave back) and their price: each issuer's at its issue price, rounded per issuer."""
    period: str
    points: int
    eur: Decimal
    closed: bool


def breakage(session: Session, periods: list[str], *,
             figures: dict[str, MonthFigures] | None = None) -> list[Breakage]:
    rows = []
    for period in periods:
        f = _figures(session, period, figures)
        rows.append(Breakage(period, f.breakage["points"],
                             _cents_to_eur(f.breakage["breakage_cents"]), f.closed))
    return rows


@dataclass(frozen=True)
class MatrixCell:
    """Points issued by `issuer` and redeemed at `redeemer` in the month (a debt fill is no
    redemption: the report's matrix)."""
    period: str
    issuer: str
    redeemer: str
    points: int


def flow_matrix(session: Session, period: str, *,
                figures: dict[str, MonthFigures] | None = None) -> list[MatrixCell]:
    """The month's issuer x redeemer cells with points, by issuer then redeemer."""
    f = _figures(session, period, figures)
    return [MatrixCell(period, i, r, n) for (i, r), n in sorted(f.matrix.items()) if n]


@dataclass(frozen=True)
class Liability:
    """What members hold at the month's end (or now, for the running month)."""
    period: str
    points: int
    eur: Decimal
    closed: bool


def liability(session: Session, periods: list[str]) -> list[Liability]:
    """Per month: the points in members' lots after every entry booked into it and the months
    before (lots made less what consumptions took or gave back), by issuer, priced at each
    issuer's issue price in force for the month."""
    if not periods:
        return []
    last = max(periods)
    made = (select(Entry.period, Lot.issuer_id, func.sum(Lot.points))
            .join(Entry, Entry.id == Lot.entry_id).where(Entry.period <= last)
            .group_by(Entry.period, Lot.issuer_id))
    taken = (select(Entry.period, Lot.issuer_id, -func.sum(Consumption.points))
             .select_from(Consumption)
             .join(Entry, (Entry.id == Consumption.entry_id) & (Entry.period == Consumption.period))
             .join(Lot, Lot.id == Consumption.lot_id).where(Entry.period <= last)
             .group_by(Entry.period, Lot.issuer_id))
    changes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for query in (made, taken):
        for period, issuer, points in session.execute(query):
            changes[period][issuer] += int(points)
    closed = set(session.scalars(select(ClosedPeriod.period).where(ClosedPeriod.period.in_(periods))))
    held: dict[str, int] = defaultdict(int)
    pending = sorted(changes)
    rows = []
    for period in sorted(periods):
        while pending and pending[0] <= period:
            for issuer, points in changes[pending.pop(0)].items():
                held[issuer] += points
        cents = sum(statements.cents(points, terms_in_force(session, issuer, period)["issue_price"])
                    for issuer, points in sorted(held.items()) if points)
        rows.append(Liability(period, sum(held.values()), _cents_to_eur(cents), period in closed))
    return rows


@dataclass(frozen=True)
class ActiveMembers:
    """active_members: see `active_members`; enrolled_members: enrolled by the month's end
    and not erased by then."""
    period: str
    active_members: int
    enrolled_members: int


def active_members(session: Session, periods: list[str], *, now: datetime, tz: str) -> list[ActiveMembers]:
    """An active member at a month's end (now, for the running month) is one with at least one
    earn or burn at a partner that occurred in the ACTIVE_DAYS (90) days up to that instant and
    was booked by then. Reversals do not count (they undo activity), nor referral points (a gift
    the member did nothing for at that moment) or expiries. Booked by then: a month's figure
    does not change once the month is over; a late claim counts in the months whose window
    holds its occurred_at and that end after it was booked."""
    rows = []
    for period in periods:
        end = _as_of(period, now, tz)
        start = end - timedelta(days=ACTIVE_DAYS)
        active = session.scalar(
            select(func.count(func.distinct(Entry.member_id)))
            # A claim books into the month it occurred in or a later one, and never into a
            # month after the one it was booked in: the periods bound the scan.
            .where(Entry.period >= period_of(start, tz), Entry.period <= period_of(end, tz),
                   Entry.kind.in_((EntryKind.EARN, EntryKind.BURN)),
                   Entry.partner_id.is_not(None), Entry.activity != REFERRAL,
                   Entry.occurred_at > start, Entry.occurred_at <= end, Entry.recorded_at <= end))
        rows.append(ActiveMembers(period, int(active or 0), _enrolled(session, end)))
    return rows


def _enrolled(session: Session, at: datetime) -> int:
    return int(session.scalar(select(func.count(Member.id)).where(
        Member.created_at <= at, Member.erased_at.is_(None) | (Member.erased_at > at))) or 0)


@dataclass(frozen=True)
class TierCount:
    tier: str
    threshold: int
    members: int


def tier_distribution(session: Session, tiers: tuple[tiering.Tier, ...], *, at: datetime,
                      tz: str) -> list[TierCount]:
    """How many members (enrolled by `at`, not erased by then) are in each tier at `at`, lowest
    tier first; [] without tiers. Each member's tier is coalition/tiers.py's: the points that
    count at `at` (tiers.points_counted, the selection tiers.earned makes, summed for all
    members in one query) against the thresholds (tiers.status). tests/test_trends.py holds
    the result to tiers.of_member member by member."""
    if not tiers:
        return []
    at = as_utc(at)
    enrolled = select(Member.id).where(
        Member.created_at <= at, Member.erased_at.is_(None) | (Member.erased_at > at))
    counted = tiering.points_counted(session, at=at, tz=tz, members=enrolled)
    # The tier's name depends on the points counted alone; tiers.status is given them as one
    # earn (the instant beside it only ever says how long the tier lasts, not asked for here).
    names = Counter(tiering.status(tiers, [(at, points)], tz)["name"] for points in counted.values())
    names[tiers[0].name] += _enrolled(session, at) - sum(names.values())
    return [TierCount(t.name, t.threshold, names[t.name]) for t in tiers]


@dataclass(frozen=True)
class ClaimDay:
    """One local day: claims the journal accepted (booked that day, by kind) and the problem
    answers the partner API gave, by slug. A referral's operator earn is no partner's claim
    and is left out."""
    day: date
    earns: int
    burns: int
    reversals: int
    rejected: dict[str, int]

    @property
    def accepted(self) -> int:
        return self.earns + self.burns + self.reversals

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def days(*, now: datetime, tz: str, count: int = DEFAULT_DAYS) -> tuple[date, date]:
    """The last `count` local days, today included: (first, last)."""
    today = day_of(now, tz)[0]
    return today - timedelta(days=count - 1), today


def claims_per_day(session: Session, first: date, last: date, *, tz: str,
                   partner_id: str | None = None,
                   rejected: dict[date, dict[str, int]] | None = None) -> list[ClaimDay]:
    """Every day from `first` to `last` (inclusive), days without claims too. `partner_id`:
    one partner's claims only. `rejected`: the problem answers by day and slug, as
    partners.rejects.per_day gives them for the same days (and partner)."""
    counts: dict[date, Counter] = defaultdict(Counter)
    for day, kind, count in _accepted(session, first, last, tz, partner_id):
        counts[day][kind] += count
    rejected = rejected or {}
    out, day = [], first
    while day <= last:
        c = counts.get(day, Counter())
        out.append(ClaimDay(day, c[EntryKind.EARN], c[EntryKind.BURN], c[EntryKind.REVERSAL],
                            dict(sorted(rejected.get(day, {}).items()))))
        day += timedelta(days=1)
    return out


def _accepted(session, first: date, last: date, tz: str, partner_id: str | None):
    """(local day, kind, count) of the claims booked from `first` through `last`."""
    conditions = [Entry.recorded_at >= day_start_utc(first, tz),
                  Entry.recorded_at < day_start_utc(last + timedelta(days=1), tz),
                  Entry.partner_id.is_not(None), Entry.kind.in_(CLAIM_KINDS),
                  Entry.activity != REFERRAL]
    if partner_id is not None:
        conditions.append(Entry.partner_id == partner_id)
    if not is_sqlite(session):
        local_day = cast(func.timezone(tz, Entry.recorded_at), Date)
        for day, kind, count in session.execute(
                select(local_day, Entry.kind, func.count()).where(*conditions)
                .group_by(local_day, Entry.kind)):
            yield day, kind, int(count)
        return
    # SQLite knows no time zones: the day is taken here, row by row (SQLite is the small
    # embedded database; PostgreSQL counts in the query).
    for recorded_at, kind in session.execute(select(Entry.recorded_at, Entry.kind).where(*conditions)):
        yield day_of(recorded_at, tz)[0], kind, 1


# --- JSON and CSV ------------------------------------------------------------------------

def _value(value):
    if isinstance(value, Decimal):
        return format(value, "f")  # a plain string: JSON numbers would be floats to a reader
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    return value


def _record(row) -> dict:
    """A dataclass row's fields and properties as JSON-able values (dicts kept as dicts)."""
    record = {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}
    for name in ("accepted", "rejected_total"):
        if hasattr(type(row), name):
            record[name] = getattr(row, name)
    return {name: ({k: _value(v) for k, v in value.items()} if isinstance(value, dict)
                   else _value(value)) for name, value in record.items()}


def as_json(rows: list) -> list[dict]:
    """A series as JSON-able dicts: ints as numbers, Decimal EUR and dates as strings."""
    return [_record(row) for row in rows]


def as_csv(rows: list, columns: list[str] | None = None) -> str:
    """A series as CSV text: a header row, then one row per item. A dict field (rejects by
    slug) becomes one column per key, `rejected.<slug>`, over every row's keys, sorted.
    `columns`: the header when there are no rows (default: none at all). Written through
    settlement/exports.writer, so no cell reads as a formula in a spreadsheet."""
    records = as_json(rows)
    if records:
        columns = []
        for name, value in records[0].items():
            if isinstance(value, dict):
                keys = sorted({k for r in records for k in r[name]})
                columns += [f"{name}.{k}" for k in keys]
            else:
                columns.append(name)
    out = io.StringIO()
    writer = exports.writer(out)
    writer.writerow(columns or [])
    for record in records:
        flat = {}
        for name, value in record.items():
            if isinstance(value, dict):
                flat.update({f"{name}.{k}": v for k, v in value.items()})
            else:
                flat[name] = "true" if value is True else "false" if value is False else value
        writer.writerow([flat.get(c, 0 if "." in c else "") for c in columns])
    return out.getvalue()
