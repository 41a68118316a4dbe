"""settlement/statements.py: the statement arithmetic, pure (no database, no web framework), and
the versions of the documents it builds."""
from __future__ import annotations

import ast
from decimal import Decimal
from pathlib import Path

import pytest

from settlement import statements
from settlement.statements import Flows, cents, netting, statement_of, version_of

SOURCE = Path(statements.__file__)
TERMS = {"issue_price": Decimal("0.012000"), "redemption_rate": Decimal("0.009500"),
         "issuance_share": Decimal("0.500000"), "claim_fee": Decimal("0.005000")}


def test_the_arithmetic_needs_no_database_and_no_web_framework():
    imported = set()
    for node in ast.walk(ast.parse(SOURCE.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= {"__future__", "collections", "dataclasses", "decimal", "coalition"}, imported
    assert not imported & {"sqlalchemy", "flask", "marshmallow"}


@pytest.mark.parametrize("points, factors, expected", [
    (3, ("0.005",), 2),            # 1.5 cents: half up
    (101, ("0.009",), 91),         # 90.9
    (-3, ("0.005",), -2),          # half away from zero: a reversal mirrors its claim
    (1, ("0.004999",), 0),
    (200, ("0.012", "0.5"), 120),
    (0, ("1",), 0),
])
def test_cents_round_once_half_up(points, factors, expected):
    assert cents(points, *(Decimal(f) for f in factors)) == expected


def test_a_statement_in_each_version():
    flows = Flows()
    flows.claims["fuel"], flows.redeemed["fuel"] = 3, 900
    flows.funded["fuel"] = flows.recovered["fuel"] = 200
    flows.matrix["bakery", "fuel"] = 700
    v1 = statement_of("fuel", "2026-05", "2026-06-02T00:00:00Z", TERMS, flows, ["bakery", "fuel"], None, 1)
    v2 = statement_of("fuel", "2026-05", "2026-06-02T00:00:00Z", TERMS, flows, ["bakery", "fuel"], None, 2)
    v4 = statement_of("fuel", "2026-05", "2026-06-02T00:00:00Z", TERMS, flows, ["bakery", "fuel"], None)
    assert (v1["type"], v2["type"], v4["type"]) == (
        "coalition-statement/v1", "coalition-statement/v2", "coalition-statement/v3")
    assert set(v4) - set(v2) == {"bonus_points_issued", "bonus_issuance_charge_cents"}
    assert (v4["bonus_points_issued"], v4["bonus_issuance_charge_cents"]) == (0, 0)
    assert {k: v for k, v in v4.items() if not k.startswith("bonus_") and k != "type"} == \
        {k: v for k, v in v2.items() if k != "type"}
    assert v1["terms"] == {"issue_price": "0.012000", "redemption_rate": "0.009500",
                           "issuance_share": "0.500000", "claim_fee": "0.005000"}
    assert v2["terms"] == {"issue_price": "0.012", "redemption_rate": "0.0095",
                           "issuance_share": "0.5", "claim_fee": "0.005"}
    assert {k: v for k, v in v1.items() if k not in ("type", "terms")} == \
        {k: v for k, v in v2.items() if k not in ("type", "terms")}
    assert v2["net_cents"] == 855 + 120 - 120 - 2
    assert [version_of(d) for d in (v1, v2, {"type": "coalition-report/v2"}, {"type": "other"},
                                    {"type": ["coalition-report/v1"]}, [], None)] == [1, 2, 2, None, None, None, None]


def test_netting_counts_in_v1_and_adds_cents_in_v2():
    lines = dict.fromkeys(statements.MONEY_LINES, 0)
    docs = {"a": {**lines, "issuance_charge_cents": 1000, "redemption_reimbursement_cents": 91,
                  "net_cents": -909},
            "b": {**lines, "issuance_charge_cents": -50, "net_cents": 50},  # earns reversed: a credit
            "c": {**lines, "net_cents": 0}}
    assert netting(docs, 1) == {"gross_obligations": 3, "net_payments": 2, "saved": 1}
    assert netting(docs, 2) == {"gross_obligations": 3, "net_payments": 2, "saved": 1,
                             "gross_obligations_cents": 1141, "net_payments_cents": 959,
                             "saved_cents": 182}
