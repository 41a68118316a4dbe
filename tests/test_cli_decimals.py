"""coalition.decimals.plain: the one way amounts are printed."""
from decimal import Decimal

import pytest

from coalition.decimals import plain


@pytest.mark.parametrize("value, text", [
    ("0.010000", "0.01"), ("1E+1", "10"), ("10", "10"), ("100.00", "100"), ("0", "0"),
    ("0E-6", "0"), ("-0.000", "0"), ("0.000001", "0.000001"), ("1E-7", "0.0000001"),
    ("-1.50", "-1.5"), ("123456.7890", "123456.789"), ("1.000000", "1"),
    ("12345678901234567890123456789.1", "12345678901234567890123456789.1"),
])
def test_plain(value, text):
    assert plain(Decimal(value)) == text
    assert Decimal(plain(Decimal(value))) == Decimal(value)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_plain_refuses_what_is_no_amount(value):
    with pytest.raises(ValueError):
        plain(Decimal(value))
