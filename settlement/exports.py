"""Statements as CSV for a partner's finance team: one `field,value` row per line item,
then one row per counterparty."""
from __future__ import annotations

import csv
import io

SCALARS = ("period", "partner_id", "currency", "closed_at", "claims", "late_claims",
           "points_issued", "points_redeemed", "points_expired", "points_funded",
           "points_debt_recovered", "issuance_charge_cents", "redemption_funding_charge_cents",
           "redemption_reimbursement_cents", "fees_cents", "debt_recovery_credit_cents",
           "net_cents", "ledger_anchor")


def statement_csv(doc: dict, digest: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["field", "value"])
    for name in SCALARS:
        writer.writerow([name, doc[name]])
    for name, value in sorted(doc["terms"].items()):
        writer.writerow([f"terms.{name}", value])
    writer.writerow(["digest", digest])
    writer.writerow([])
    writer.writerow(["counterparty", "issued_by_them_redeemed_here", "issued_here_redeemed_there"])
    for row in doc["counterparties"]:
        writer.writerow([row["partner_id"], row["issued_by_them_redeemed_here"],
                         row["issued_here_redeemed_there"]])
    return out.getvalue()


def report_csv(doc: dict) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["partner_id", "net_cents", "digest"])
    for row in doc["statements"]:
        writer.writerow([row["partner_id"], row["net_cents"], row["digest"]])
    writer.writerow([])
    writer.writerow(["issuer", "redeemer", "points"])
    for row in doc["matrix"]:
        writer.writerow([row["issuer"], row["redeemer"], row["points"]])
    writer.writerow([])
    writer.writerow(["operator_margin_cents", doc["operator_margin_cents"]])
    for name, value in doc["payments"].items():
        writer.writerow([f"payments.{name}", value])
    return out.getvalue()
