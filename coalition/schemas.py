"""Marshmallow helpers every API package shares: strict request schemas, query-string numbers
and months, and the opaque keyset cursor of a listing."""
from __future__ import annotations

import binascii
import json
import re

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from .fields import Rfc3339
from .hashing import b64url_decode, b64url_encode, canonical


class StrictSchema(Schema):
    """A request schema. Its EXAMPLE, when set, is the example of every request body it
    describes in the OpenAPI document (coalition/api.py); the examples are those of
    docs/partner-api.md, and tests/test_openapi.py checks them against the schema and the app."""

    class Meta:
        unknown = RAISE


MAX_CURSOR = 200  # characters; every cursor this service issues is far shorter
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,%d}" % MAX_CURSOR, re.ASCII)
_PERIOD = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])", re.ASCII)
PERIOD_PATTERN = f"^{_PERIOD.pattern}$"
MAX_ROW_ID = 2**63 - 1  # BIGINT: a larger id in a query would fail in the database, not here


def cursor_of(key: list) -> str:
    """The opaque cursor for a page that ends at the row with sort key `key` (strings and
    integers): base64url, unpadded, of its canonical JSON. Partners pass it back unchanged."""
    return b64url_encode(canonical(key))


class Cursor(fields.String):
    """A cursor this service issued (`cursor_of`), loaded as the sort key it holds; `parts`
    names the type of each part (str for an RFC 3339 time, loaded as a datetime; int for a row
    id or another count from 0), `check` what else the key must satisfy. Anything else, a
    tampered cursor included, is a validation error."""

    def __init__(self, *parts: type, check=lambda key: True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.parts, self.check = parts, check

    def _deserialize(self, value, attr, data, **kwargs):
        try:
            if not (isinstance(value, str) and _CURSOR.fullmatch(value)):
                raise ValueError
            key = json.loads(b64url_decode(value))  # the alphabet was checked above
            if not (isinstance(key, list) and len(key) == len(self.parts)):
                raise ValueError
            key = tuple(self._part(kind, part) for kind, part in zip(self.parts, key))
            if not self.check(key):
                raise ValueError
            return key
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, ValidationError):
            raise ValidationError("Not a cursor of this listing: pass next_cursor back "
                                  "exactly as answered.") from None

    @staticmethod
    def _part(kind: type, part):
        if kind is int:
            if type(part) is not int or not 0 <= part <= MAX_ROW_ID:
                raise ValueError
            return part
        return Rfc3339()._deserialize(part, None, None)


class QueryInteger(fields.Integer):
    """A whole number in a query string: ASCII digits only (int() would also take " 5", "+5",
    "1_000" and other scripts' digits)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not (isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9):
            raise ValidationError("Must be a whole number, in ASCII digits.")
        return int(value)


class Period(fields.String):
    """A settlement month, YYYY-MM."""

    def __init__(self, **kwargs) -> None:
        super().__init__(validate=validate.Regexp(PERIOD_PATTERN), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not (isinstance(value, str) and _PERIOD.fullmatch(value)):
            raise ValidationError("Must be a month, YYYY-MM.")
        return value
