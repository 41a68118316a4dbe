"""The arithmetic of a closed month: from what happened (Flows, in points) and each partner's
terms to the statement and coalition report documents that get signed. Pure: no database, no
web framework; settlement/service.py gathers the flows and stores what these functions build.

Documents are versioned by their `type`. A month keeps the version it was closed with, and
`ledger verify` rebuilds it in that version, so a change of format never breaks the byte for
byte re-derivation of a month closed before it:
- v1: terms with six decimal places (`0.010000`); netting counts payments only.
- v2: terms as few digits as they need (`0.01`); netting also in cents.
- v3: the report also prices breakage (points that expired unspent) per issuer in EUR, at the
  issue price in force for the month. Statements are as in v2, type included: a v3 month's
  statements are byte for byte what v2 wrote, so only the report says the month is v3.
- v4: bonus points (campaigns, coupons, tier multipliers), charged to whoever funds them. A
  statement (`coalition-statement/v3`) adds `bonus_points_issued`, the partner's bonus points
  as funder (minus its `bonus:<id>` postings in the month: reversals lower it, it may be
  negative) and `bonus_issuance_charge_cents`, one more charge in net_cents; the report
  (`coalition-report/v4`) adds `bonus_points_issued` to its totals. Their redemption is
  charged through lots like any points (a bonus lot's issuer is its funder).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from coalition.decimals import plain

STATEMENT_TYPES = {1: "coalition-statement/v1", 2: "coalition-statement/v2",
                   3: "coalition-statement/v2", 4: "coalition-statement/v3"}
REPORT_TYPES = {1: "coalition-report/v1", 2: "coalition-report/v2", 3: "coalition-report/v3",
                4: "coalition-report/v4"}
CURRENT = 4  # what a close writes now

CREDITS = ("redemption_reimbursement_cents", "debt_recovery_credit_cents")
# The charges of a v1 to v3 statement; from v4 also BONUS_CHARGE (charges(version)).
CHARGES = ("issuance_charge_cents", "redemption_funding_charge_cents", "fees_cents")
MONEY_LINES = CHARGES + CREDITS
BONUS_CHARGE = "bonus_issuance_charge_cents"
BONUS_FROM = 4  # the first version with bonus points


def charges(version: int) -> tuple[str, ...]:
    """The charge lines of a statement of `version`."""
    return CHARGES + (BONUS_CHARGE,) if version >= BONUS_FROM else CHARGES


def money_lines(version: int) -> tuple[str, ...]:
    """Every money line of a statement of `version` (charges, then credits)."""
    return charges(version) + CREDITS

# A type names the first version that wrote it: a v2 statement under a v3 report re-derives
# the same bytes either way, and the report, read first, says which the month is.
_VERSIONS = {name: v for types in (STATEMENT_TYPES, REPORT_TYPES)
             for v, name in sorted(types.items(), reverse=True)}
_V1_PLACES = Decimal("0.000001")


def cents(points: int, *factors: Decimal) -> int:
    """Points times EUR factors, in cents, rounded once, half up."""
    amount = Decimal(points) * 100
    for factor in factors:
        amount *= factor
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def version_of(document) -> int | None:
    """The version of a stored statement or report, None if its type is none of ours."""
    kind = document.get("type") if isinstance(document, dict) else None
    return _VERSIONS.get(kind) if isinstance(kind, str) else None


@dataclass
class Flows:
    """What happened in one month, per partner, in points."""
    claims: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    late: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    issued: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    redeemed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    funded: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by issuer
    recovered: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by creditor
    expired: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by issuer
    bonus: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # by funder
    matrix: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    anchor: str = ""


def _term(value: Decimal, version: int) -> str:
    # v1 printed what the database held, six places; rebuilt from the value so that a change
    # in how terms are read can never change the bytes of a month closed as v1.
    return format(value.quantize(_V1_PLACES), "f") if version == 1 else plain(value)


def statement_of(partner: str, period: str, closed_at: str, terms: dict[str, Decimal],
                 flows: Flows, partners: list[str], ledger_head: str | None,
                 version: int = CURRENT) -> dict:
    price, share = terms["issue_price"], terms["issuance_share"]
    doc = {
        "type": STATEMENT_TYPES[version], "period": period, "partner_id": partner,
        "currency": "EUR", "closed_at": closed_at,
        "terms": {name: _term(value, version) for name, value in terms.items()},
        "claims": flows.claims[partner], "late_claims": flows.late[partner],
        "points_issued": flows.issued[partner], "points_redeemed": flows.redeemed[partner],
        "points_expired": flows.expired[partner],
        "points_funded": flows.funded[partner], "points_debt_recovered": flows.recovered[partner],
        "issuance_charge_cents": cents(flows.issued[partner], price, share),
        "redemption_funding_charge_cents": cents(flows.funded[partner], price, 1 - share),
        "redemption_reimbursement_cents": cents(flows.redeemed[partner], terms["redemption_rate"]),
        "fees_cents": cents(flows.claims[partner], terms["claim_fee"]),
        "debt_recovery_credit_cents": cents(flows.recovered[partner], price, 1 - share),
        "counterparties": [
            {"partner_id": other,
             "issued_by_them_redeemed_here": flows.matrix[other, partner],
             "issued_here_redeemed_there": flows.matrix[partner, other]}
            for other in partners
            if other != partner and (flows.matrix[other, partner] or flows.matrix[partner, other])],
        "ledger_anchor": flows.anchor, "ledger_head": ledger_head,
    }
    if version >= BONUS_FROM:
        doc["bonus_points_issued"] = flows.bonus[partner]
        doc[BONUS_CHARGE] = cents(flows.bonus[partner], price, share)
    doc["net_cents"] = (sum(doc[line] for line in CREDITS)
                        - sum(doc[line] for line in charges(version)))
    return doc


def netting(statements: dict[str, dict], version: int = CURRENT) -> dict:
    """What netting saved: every money line paid one by one (gross obligations) against one
    net payment per partner, as counts and (from v2) in cents."""
    lines = [s[line] for s in statements.values() for line in money_lines(version)]
    nets = [s["net_cents"] for s in statements.values()]
    gross, net = sum(1 for c in lines if c), sum(1 for c in nets if c)
    payments = {"gross_obligations": gross, "net_payments": net, "saved": gross - net}
    if version >= 2:
        gross_cents, net_cents = sum(abs(c) for c in lines), sum(abs(c) for c in nets)
        payments.update(gross_obligations_cents=gross_cents, net_payments_cents=net_cents,
                        saved_cents=gross_cents - net_cents)
    return payments


def breakage(flows: Flows, prices: dict[str, Decimal], version: int = CURRENT) -> dict:
    """Points that expired unspent, per issuer (those with any, by id) and in all, priced at
    each issuer's issue price: rounded once per issuer, half up, and the total is the sum of
    those cents (what each issuer's own figure says, never rounded again)."""
    by_issuer = [{"partner_id": issuer, "points": points,
                  "issue_price": _term(prices[issuer], version),
                  "breakage_cents": cents(points, prices[issuer])}
                 for issuer, points in sorted(flows.expired.items()) if points]
    return {"by_issuer": by_issuer, "points": sum(row["points"] for row in by_issuer),
            "breakage_cents": sum(row["breakage_cents"] for row in by_issuer)}


def report_of(period: str, closed_at: str, statements: dict[str, dict], digests: dict[str, str],
              flows: Flows, ledger_head: str | None, version: int = CURRENT,
              prices: dict[str, Decimal] | None = None) -> dict:
    """The coalition report. `prices`: each issuer's issue price for the month, which a v3
    report needs for every issuer with points expired (v1 and v2 read none)."""
    nets = {p: s["net_cents"] for p, s in statements.items()}
    report = {
        "type": REPORT_TYPES[version], "period": period, "currency": "EUR", "closed_at": closed_at,
        "statements": [{"partner_id": p, "net_cents": nets[p], "digest": digests[p]}
                       for p in sorted(statements)],
        "matrix": [{"issuer": i, "redeemer": r, "points": n}
                   for (i, r), n in sorted(flows.matrix.items()) if n],
        "totals": {"points_issued": sum(flows.issued.values()),
                   "points_redeemed": sum(flows.redeemed.values()),
                   "points_expired": sum(flows.expired.values())},
        "operator_margin_cents": -sum(nets.values()),
        "payments": netting(statements, version),
        "ledger_anchor": flows.anchor, "ledger_head": ledger_head,
    }
    if version >= 3:
        report["breakage"] = breakage(flows, prices or {}, version)
    if version >= BONUS_FROM:
        report["totals"]["bonus_points_issued"] = sum(flows.bonus.values())
    return report
