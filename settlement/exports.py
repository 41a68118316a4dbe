"""Statements as CSV for a partner's finance team: one `field,value` row per line item,
then one row per counterparty (a v4 statement, `coalition-statement/v3`, also has rows for
its bonus_points_issued and bonus_issuance_charge_cents). The coalition report likewise: its `field,value` rows, then
one row per statement and one per issuer x redeemer cell, and (from v3, in a month with
breakage) one per issuer whose points expired, with their price in cents.

Every export writes its rows through `writer()`, which keeps any cell from reading as a formula
when the file is opened in a spreadsheet (OWASP, CSV injection): a text cell that starts with
`=`, `+`, `-`, `@`, a tab or a carriage return gets a leading `'`, unless it is a plain number
such as `-120` or `-0.5` (net amounts are negative often). Numbers (int, Decimal) pass as they
are. No exported value can start that way yet; descriptions and campaign names will.
"""
from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

SCALARS = ("period", "partner_id", "currency", "closed_at", "claims", "late_claims",
           "points_issued", "points_redeemed", "points_expired", "points_funded",
           "points_debt_recovered", "issuance_charge_cents", "redemption_funding_charge_cents",
           "redemption_reimbursement_cents", "fees_cents", "debt_recovery_credit_cents",
           "net_cents", "ledger_anchor")
# A v4 statement's bonus fields, each written after the field named here; earlier
# statements export the rows they always did.
BONUS_AFTER = {"points_debt_recovered": "bonus_points_issued",
               "debt_recovery_credit_cents": "bonus_issuance_charge_cents"}

# Tab and carriage return too: some spreadsheets drop them and then read what follows.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?", re.ASCII)


def safe_cell(value):
    """`value` as a CSV cell that a spreadsheet shows and never evaluates."""
    if value is None or (isinstance(value, (int, Decimal)) and not isinstance(value, bool)):
        return value
    text = str(value)
    if text.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


class _SafeWriter:
    def __init__(self, out: io.StringIO) -> None:
        self._out = out
        self._row = io.StringIO()
        # With "\r\n" as its line end, csv quotes every cell holding a \r or a \n; with "\n" it
        # left a \r bare, and a spreadsheet started a new row there, whose first cell (the rest
        # of the value) could be a formula again. The row then ends in "\n" as exports always did.
        self._rows = csv.writer(self._row, lineterminator="\r\n")

    def writerow(self, row) -> None:
        self._row.seek(0)
        self._row.truncate()
        self._rows.writerow([safe_cell(value) for value in row])
        self._out.write(self._row.getvalue()[:-2] + "\n")


def writer(out: io.StringIO) -> _SafeWriter:
    """The one CSV writer of every export."""
    return _SafeWriter(out)


def statement_csv(doc: dict, digest: str) -> str:
    out = io.StringIO()
    rows = writer(out)
    rows.writerow(["field", "value"])
    for name in SCALARS:
        rows.writerow([name, doc[name]])
        if (extra := BONUS_AFTER.get(name)) in doc:
            rows.writerow([extra, doc[extra]])
    for name, value in sorted(doc["terms"].items()):
        rows.writerow([f"terms.{name}", value])
    rows.writerow(["digest", digest])
    rows.writerow([])
    rows.writerow(["counterparty", "issued_by_them_redeemed_here", "issued_here_redeemed_there"])
    for row in doc["counterparties"]:
        rows.writerow([row["partner_id"], row["issued_by_them_redeemed_here"],
                       row["issued_here_redeemed_there"]])
    return out.getvalue()


def _breakage(doc: dict) -> dict | None:
    """A v3 report's breakage, if any points expired: a month without breakage exports the
    rows it always did."""
    breakage = doc.get("breakage")
    return breakage if breakage and breakage["by_issuer"] else None


def report_csv(doc: dict, digest: str) -> str:
    """The coalition report of a month: `digest` is the SHA-256 of the signed report, the
    rest comes from the report itself (a v1 report has no netting in cents, v1 and v2 no
    breakage)."""
    out = io.StringIO()
    rows = writer(out)
    rows.writerow(["field", "value"])
    for name in ("period", "currency", "closed_at"):
        rows.writerow([name, doc[name]])
    for name, value in sorted(doc["totals"].items()):
        rows.writerow([f"totals.{name}", value])
    rows.writerow(["operator_margin_cents", doc["operator_margin_cents"]])
    breakage = _breakage(doc)
    if breakage:
        rows.writerow(["breakage.points", breakage["points"]])
        rows.writerow(["breakage.breakage_cents", breakage["breakage_cents"]])
    for name, value in sorted(doc["payments"].items()):
        rows.writerow([f"payments.{name}", value])
    for name in ("ledger_anchor", "ledger_head"):
        rows.writerow([name, doc[name]])
    rows.writerow(["digest", digest])
    rows.writerow([])
    rows.writerow(["partner_id", "net_cents", "digest"])
    for row in doc["statements"]:
        rows.writerow([row["partner_id"], row["net_cents"], row["digest"]])
    rows.writerow([])
    rows.writerow(["issuer", "redeemer", "points"])
    for row in doc["matrix"]:
        rows.writerow([row["issuer"], row["redeemer"], row["points"]])
    if breakage:
        rows.writerow([])
        rows.writerow(["issuer", "points_expired", "issue_price", "breakage_cents"])
        for row in breakage["by_issuer"]:
            rows.writerow([row["partner_id"], row["points"], row["issue_price"],
                           row["breakage_cents"]])
    return out.getvalue()
