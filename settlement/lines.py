"""The line items behind a partner's closed statement, derived from the journal.

Five kinds of line, in this order, each in booking order (the fifth from v4 statements on):

- `claim`: every claim of the partner booked into the month (earn, burn, reversal). A late
  claim (its own month was closed when it arrived) says so, with its own month (`own_period`,
  the month of occurred_at). Carries claims, late_claims, points_issued (earns, less reversals
  of earns) and points_redeemed (burns, less reversals of burns).
- `funding`: every consumption of the partner's points in the month: by a burn (of any
  partner, the partner's own included), given back by a burn reversal (negative points) or
  taken by a debt fill. `claim_id` names the partner's earn whose points were used,
  `counterparty` the partner that redeemed them (for a debt fill: the partner whose debt they
  paid). Carries points_funded.
- `debt_recovery`: every debt fill of a debt owed to the partner. `claim_id` names the
  partner's reversal that left the debt, `counterparty` the partner whose new points paid it.
  Carries points_debt_recovered.
- `breakage`: every expiry of the partner's points in the month (breakage), as `flask points
  expire` booked it (kind `expiry`), or given back to the lot by the partner's reversal of the
  earn (kind `reversal`, negative points). `claim_id` names the partner's earn whose lot
  expired. Carries points_expired, and no money: the statement prices no breakage.
- `bonus` (statements of v4 months): every entry with a posting on the partner's bonus
  account, the partner as funder of bonus points (campaigns, coupons, tier multipliers): an
  earn's bonus (positive points), or what a reversal of that earn took back (kind `reversal`,
  negative points). Another partner's earns the partner funds are lines too: `counterparty` is
  the partner whose claim booked the bonus; `claim_id` (and `reverses`, the earn a reversal
  takes back) name the claim only when it is the partner's own, and are null for another
  partner's (its receipt numbers are its own business). Carries
  bonus_points_issued and bonus_issuance_charge_cents. A statement of an earlier month has
  neither column nor section: its lines are what they always were.

Each points column sums exactly to the statement's field of the same name. Each money column
sums exactly to the statement's money line: the statement rounds a money line once, over the
month's total, so each line's exact amount (its points times the same terms) is rounded down,
and the cents the column is still short of go one each to the lines with the largest
remainders, ties to the earlier line (largest remainder method). No line is off its exact
amount by a cent or more. Lines are derived with their own queries and checked against the
signed statement: if they disagree (the journal changed after the close), LinesDisagree is
raised rather than lines served that do not add up.
"""
from __future__ import annotations

import io
import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

from sqlalchemy import case, func, literal, null, select
from sqlalchemy.orm import Session, aliased

from coalition.clock import as_utc, iso_utc
from coalition.hashing import sha256_hex
from coalition.models import Consumption, DebtLot, Entry, Lot, Member, Posting
from coalition.periods import period_of
from coalition.vocabulary import FUNDING, ConsumptionKind, EntryKind, bonus_account, lot_since

from . import exports, service, statements
from .statements import BONUS_CHARGE, BONUS_FROM, CREDITS, charges, money_lines

# A cursor names a section by its index: bonus, the newest, comes last so that the others
# keep theirs.
SECTIONS = ("claim", "funding", "debt_recovery", "breakage", "bonus")
POINTS = ("claims", "late_claims", "points_issued", "points_redeemed", "points_funded",
          "points_debt_recovered", "points_expired")  # of every version
BONUS_POINTS = "bonus_points_issued"  # from v4
# The points column of each section but claim (which has several).
CONSUMED = {"funding": "points_funded", "debt_recovery": "points_debt_recovered",
            "breakage": "points_expired", "bonus": BONUS_POINTS}
HEAD = ("line", "claim_id", "kind", "reverses", "member_id", "counterparty", "occurred_at",
        "recorded_at", "late", "own_period")


def totals_of(version: int) -> tuple[str, ...]:
    """The statement's fields that the lines of a statement of `version` sum to."""
    bonus = (BONUS_POINTS,) if version >= BONUS_FROM else ()
    return (*POINTS, *bonus, *money_lines(version), "net_cents")


def columns_of(version: int) -> tuple[str, ...]:
    """Every column of a line of a statement of `version`."""
    return (*HEAD, *totals_of(version))


MONEY = money_lines(statements.CURRENT)
TOTALS = totals_of(statements.CURRENT)
COLUMNS = columns_of(statements.CURRENT)
SCAN = 5000  # lines read at a time while looking for a money column's last line rounded up


class LinesDisagree(RuntimeError):
    """The journal no longer adds up to the signed statement (`ledger verify` says where)."""


@dataclass(frozen=True)
class Allocation:
    """How one money column rounds: `factor` cents per point; a line rounds up when its
    remainder is above the boundary's, or equal to it and the line is not later than it."""
    factor: Decimal
    boundary: tuple[Decimal, int] | None  # (remainder, line id) of the last line rounded up

    def cents(self, points: int, line_id: int) -> int:
        exact = Decimal(points) * self.factor
        low = exact.to_integral_value(rounding=ROUND_FLOOR)
        if self.boundary is None:
            return int(low)
        remainder, last = self.boundary
        return int(low) + ((exact - low, -line_id) >= (remainder, -last))


class MonthLines:
    """The lines of one partner's statement for one closed month (not-found without one)."""

    def __init__(self, session: Session, partner_id: str, period: str, *, tz: str) -> None:
        row = service.statement(session, partner_id, period)
        self.session, self.tz, self.partner_id = session, tz, partner_id
        self.document = json.loads(row.document)
        self.digest = sha256_hex(row.document.encode())  # of the document, as the listing
        # The statement's own version: a month's lines have the columns of its statement.
        self.version = statements.version_of(self.document) or statements.CURRENT
        self.money = money_lines(self.version)
        self.charges = charges(self.version)
        self.columns = columns_of(self.version)
        self.totals = {name: self.document[name] for name in totals_of(self.version)}
        self._queries(partner_id, period)
        self._check_points()
        self.allocations = {name: self._allocate(name) for name in self.money}

    # --- the sections as queries -----------------------------------------------------------

    def _queries(self, partner_id: str, period: str) -> None:
        target, earn, made = aliased(Entry), aliased(Entry), aliased(Entry)
        issued = case((Entry.kind == EntryKind.EARN, Entry.points),
                      (target.kind == EntryKind.EARN, -Entry.points), else_=0)
        redeemed = case((Entry.kind == EntryKind.BURN, Entry.points),
                        (target.kind == EntryKind.BURN, -Entry.points), else_=0)
        claims = (select(Entry.id.label("id")).select_from(Entry)
                  .outerjoin(target, target.id == Entry.reverses_id)
                  .where(Entry.partner_id == partner_id, Entry.period == period))
        funding = (select(Consumption.id.label("id")).select_from(Consumption)
                   .join(Entry, Entry.id == Consumption.entry_id)
                   .join(Lot, (Lot.id == Consumption.lot_id) & lot_since(Lot, period))
                   .where(Entry.period == period, Consumption.period == period,
                          Lot.issuer_id == partner_id,
                          Consumption.kind.in_(FUNDING)))
        recovery = (select(Consumption.id.label("id")).select_from(Consumption)
                    .join(Entry, Entry.id == Consumption.entry_id)
                    .join(DebtLot, DebtLot.id == Consumption.debt_lot_id)
                    .where(Entry.period == period, Consumption.period == period,
                           DebtLot.creditor_id == partner_id,
                           Consumption.kind == ConsumptionKind.DEBT_FILL))
        expired = (select(Consumption.id.label("id")).select_from(Consumption)
                   .join(Entry, Entry.id == Consumption.entry_id)
                   .join(Lot, (Lot.id == Consumption.lot_id) & lot_since(Lot, period))
                   .where(Entry.period == period, Consumption.period == period,
                          Lot.issuer_id == partner_id,
                          Consumption.kind == ConsumptionKind.EXPIRY))
        self.sections = {"claim": claims, "funding": funding, "debt_recovery": recovery,
                         "breakage": expired}
        self.ids = {"claim": Entry.id, "funding": Consumption.id, "debt_recovery": Consumption.id,
                    "breakage": Consumption.id, "bonus": Posting.id}
        # money column -> (section, points of a line (None: 1 each), the statement's field)
        self.amounts = {
            "issuance_charge_cents": ("claim", issued, "points_issued"),
            "redemption_reimbursement_cents": ("claim", redeemed, "points_redeemed"),
            "fees_cents": ("claim", None, "claims"),
            "redemption_funding_charge_cents": ("funding", Consumption.points, "points_funded"),
            "debt_recovery_credit_cents": ("debt_recovery", Consumption.points,
                                           "points_debt_recovered"),
        }
        counterparty = case((Consumption.kind == ConsumptionKind.DEBT_FILL, DebtLot.creditor_id),
                            else_=Entry.partner_id)
        # Each: the line id, claim_id, kind, member, counterparty or reverses, occurred_at,
        # recorded_at, then its section's own columns.
        self.details = {
            "claim": claims.join(Member, Member.id == Entry.member_id).add_columns(
                Entry.claim_id, Entry.kind, Member.external_id, target.claim_id,
                Entry.occurred_at, Entry.recorded_at, Entry.late, issued, redeemed),
            "funding": funding.join(earn, earn.id == Lot.entry_id)
            .join(Member, Member.id == Lot.member_id)
            .outerjoin(DebtLot, DebtLot.id == Consumption.debt_lot_id).add_columns(
                earn.claim_id, Consumption.kind, Member.external_id, counterparty,
                Entry.occurred_at, Entry.recorded_at, Consumption.points),
            "debt_recovery": recovery.join(made, made.id == DebtLot.entry_id)
            .join(Member, Member.id == DebtLot.member_id)
            .join(Lot, (Lot.id == Consumption.lot_id) & lot_since(Lot, period)).add_columns(
                made.claim_id, Consumption.kind, Member.external_id, Lot.issuer_id,
                Entry.occurred_at, Entry.recorded_at, Consumption.points),
            # The entry's kind, not the consumption's (always expiry): an expiry booked, or
            # expired points a reversal of the earn gave back. No counterparty: no partner
            # took these points.
            "breakage": expired.join(earn, earn.id == Lot.entry_id)
            .join(Member, Member.id == Lot.member_id).add_columns(
                earn.claim_id, Entry.kind, Member.external_id, null(),
                Entry.occurred_at, Entry.recorded_at, Consumption.points),
        }
        if self.version >= BONUS_FROM:
            self._bonus_queries(partner_id, period)

    def _bonus_queries(self, partner_id: str, period: str) -> None:
        """The bonus section: the postings on the partner's bonus account in the month's
        entries, whoever's claim booked them. A funder's bonus points are minus the posting."""
        target = aliased(Entry)
        bonus = (select(Posting.id.label("id")).select_from(Posting)
                 .join(Entry, Entry.id == Posting.entry_id)
                 .where(Entry.period == period, Posting.period == period,
                        Posting.account == bonus_account(partner_id)))
        funded = -Posting.points
        self.sections["bonus"] = bonus
        self.amounts[BONUS_CHARGE] = ("bonus", funded, BONUS_POINTS)
        # counterparty: the partner whose claim booked the bonus (the funder's own too).
        self.details["bonus"] = (
            bonus.join(Member, Member.id == Entry.member_id)
            .outerjoin(target, target.id == Entry.reverses_id).add_columns(
                Entry.claim_id, Entry.kind, Member.external_id, Entry.partner_id,
                Entry.occurred_at, Entry.recorded_at, funded, target.claim_id))

    def _groups(self, column: str) -> list[tuple[int, int]]:
        """(points, number of lines) for every points value of a money column's lines."""
        section, amount, _ = self.amounts[column]
        if amount is None:
            count = self.session.scalar(self.sections[section].with_only_columns(func.count()))
            return [(1, count)] if count else []
        query = self.sections[section].with_only_columns(amount, func.count()).group_by(amount)
        return [(int(points), int(count)) for points, count in self.session.execute(query)]

    def _check_points(self) -> None:
        self.groups = {column: self._groups(column) for column in self.money}
        derived = {field: sum(p * n for p, n in self.groups[column])
                   for column, (_, _, field) in self.amounts.items()}
        derived["late_claims"] = self.session.scalar(
            self.sections["claim"].with_only_columns(func.count()).where(Entry.late.is_(True)))
        expired = func.coalesce(func.sum(Consumption.points), 0)
        derived["points_expired"] = int(self.session.scalar(
            self.sections["breakage"].with_only_columns(expired)))
        for field, value in derived.items():
            if value != self.document[field]:
                raise LinesDisagree(f"{field}: the journal gives {value}, the statement "
                                    f"{self.document[field]}")

    # --- largest remainders -----------------------------------------------------------------

    def _factor(self, column: str) -> Decimal:
        terms = {name: Decimal(value) for name, value in self.document["terms"].items()}
        price, share = terms["issue_price"], terms["issuance_share"]
        return 100 * {"issuance_charge_cents": price * share,
                      "redemption_funding_charge_cents": price * (1 - share),
                      "redemption_reimbursement_cents": terms["redemption_rate"],
                      "fees_cents": terms["claim_fee"],
                      "debt_recovery_credit_cents": price * (1 - share),
                      BONUS_CHARGE: price * share}[column]

    def _allocate(self, column: str) -> Allocation:
        factor = self._factor(column)
        exact = sum((Decimal(p) * factor * n for p, n in self.groups[column]), Decimal(0))
        total = int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))  # as the statement does
        if total != self.document[column]:
            raise LinesDisagree(f"{column}: the journal gives {total}, the statement "
                                f"{self.document[column]}")
        by_remainder: dict[Decimal, list[tuple[int, int]]] = defaultdict(list)
        short = total
        for points, count in self.groups[column]:
            value = Decimal(points) * factor
            low = value.to_integral_value(rounding=ROUND_FLOOR)
            short -= int(low) * count
            if value != low:
                by_remainder[value - low].append((points, count))
        for remainder in sorted(by_remainder, reverse=True):
            if short <= 0:
                break
            values = by_remainder[remainder]
            count = sum(n for _, n in values)
            if short > count:
                short -= count
                continue
            return Allocation(factor, (remainder, self._nth_line(column, {p for p, _ in values}, short)))
        return Allocation(factor, None)

    def _nth_line(self, column: str, points: set[int], n: int) -> int:
        """The id of the n-th line (from 1, in booking order) whose points are in `points`."""
        section, amount, _ = self.amounts[column]
        line = self.ids[section]
        query = (self.sections[section].add_columns(literal(1) if amount is None else amount)
                 .order_by(line).limit(SCAN))
        last = -1
        while chunk := self.session.execute(query.where(line > last)).all():
            for last, value in chunk:
                if int(value) in points:
                    n -= 1
                    if n == 0:
                        return last
        raise LinesDisagree(f"{column}: fewer lines than their counts")

    # --- pages ------------------------------------------------------------------------------

    def page(self, after: tuple[int, int] | None, limit: int) -> tuple[list[dict], tuple[int, int] | None]:
        """Up to `limit` lines after the key `after` ((section index, line id), as a previous
        page returned it), and the key to continue from (None after the last line)."""
        start, after_id = after if after is not None else (0, 0)
        rows: list[tuple[int, tuple]] = []
        for index in range(start, len(SECTIONS)):
            section = SECTIONS[index]
            if section not in self.details:  # bonus, in a statement before v4
                continue
            query = self.details[section].order_by(self.ids[section]).limit(limit + 1 - len(rows))
            if index == start:
                query = query.where(self.ids[section] > after_id)
            rows += [(index, tuple(row)) for row in self.session.execute(query)]
            if len(rows) > limit:
                break
        more = len(rows) > limit
        rows = rows[:limit]
        lines = [self._line(index, row) for index, row in rows]
        return lines, (rows[-1][0], rows[-1][1][0]) if more else None

    def _line(self, index: int, row: tuple) -> dict:
        section = SECTIONS[index]
        line_id, claim_id, kind, member, other, occurred_at, recorded_at, *own = row
        line = dict.fromkeys(self.columns, 0)
        line.update(line=section, claim_id=claim_id, kind=kind, reverses=None, member_id=member,
                    counterparty=None, occurred_at=as_utc(occurred_at),
                    recorded_at=as_utc(recorded_at), late=False, own_period=None)
        if section == "claim":
            late, issued, redeemed = own
            line.update(reverses=other, late=bool(late), own_period=period_of(occurred_at, self.tz),
                        claims=1, late_claims=int(bool(late)), points_issued=int(issued),
                        points_redeemed=int(redeemed))
        else:
            line["counterparty"] = other
            line[CONSUMED[section]] = int(own[0])
            if section == "bonus":
                line["reverses"] = own[1]
                if other != self.partner_id:
                    # Another partner's receipt numbers are its own business: the funder
                    # learns whose claim it paid a bonus on, when, for which member, not which.
                    line["claim_id"] = line["reverses"] = None
        for column, (in_section, _, field) in self.amounts.items():
            if in_section == section:
                line[column] = self.allocations[column].cents(line[field], line_id)
        line["net_cents"] = sum(line[c] for c in CREDITS) - sum(line[c] for c in self.charges)
        return line


CSV_PAGE = 1000


def csv_chunks(month: MonthLines, *, commit) -> Iterator[str]:
    """Every line as CSV (a header row, then the statement's columns), a page at a time. `commit` ends each
    page's transaction, so a slow reader holds no transaction (SQLite has one writer). A
    failure midway ends the stream without its last chunk: the client sees a broken transfer,
    never a short file that looks whole."""
    out = io.StringIO()
    rows = exports.writer(out)
    rows.writerow(month.columns)
    after = None
    while True:
        page, after = month.page(after, CSV_PAGE)
        commit()
        for line in page:
            rows.writerow([_cell(line[name]) for name in month.columns])
        yield out.getvalue()
        out.seek(0)
        out.truncate()
        if after is None:
            return


def _cell(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return iso_utc(value) if isinstance(value, datetime) else value
