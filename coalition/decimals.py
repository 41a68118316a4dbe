"""One way to print a decimal amount, in every CLI and API answer: as few digits as the value
needs, never an exponent (`0.01`, not `0.010000`; `10`, not `1E+1`), so the same terms read
the same wherever they are shown."""
from __future__ import annotations

from decimal import Decimal


def plain(value: Decimal) -> str:
    """`Decimal("0.010000")` -> `0.01`, `Decimal("1E+1")` -> `10`, `Decimal("-0")` -> `0`.
    Exact at any precision: trailing zeros are cut from the text, the value is never rounded
    (Decimal.normalize would round to the context's 28 digits)."""
    if not value.is_finite():
        raise ValueError(f"not a finite amount: {value}")
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
