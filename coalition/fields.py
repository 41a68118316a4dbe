"""Marshmallow fields as strict as the contract: no coercion, ever."""
from __future__ import annotations

import re
from datetime import datetime, timezone

from marshmallow import ValidationError, fields, validate

from .clock import iso_utc
from .jsonbody import HugeInteger
from .vocabulary import ID_PATTERN, MAX_POINTS

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII)
_ID = re.compile(ID_PATTERN)
_ID_ERROR = f"Must match {ID_PATTERN}."
_SURROGATE = re.compile("[\ud800-\udfff]")


class StrictInteger(fields.Integer):
    """A JSON integer and nothing else: not a string, float, bool, 1e3 or NaN."""

    def _deserialize(self, value, attr, data, **kwargs):
        if type(value) is not int:  # bool and our HugeInteger marker are int subclasses
            if isinstance(value, HugeInteger):
                raise ValidationError("Number out of range.")
            raise ValidationError("Must be a JSON integer.")
        return value


class StrictBoolean(fields.Boolean):
    """JSON true or false and nothing else: not "true", 1 or "yes"."""

    def _deserialize(self, value, attr, data, **kwargs):
        if type(value) is not bool:
            raise ValidationError("Must be true or false.")
        return value


def Points(**kwargs) -> StrictInteger:
    return StrictInteger(validate=validate.Range(1, MAX_POINTS), **kwargs)


class Identifier(fields.String):
    def __init__(self, **kwargs) -> None:
        # The Regexp validator puts the pattern into OpenAPI; _deserialize does the real check.
        # Its error is a str.format template: the braces of {0,63} must be doubled, or a
        # mismatch raised KeyError('0,63') and answered 500 instead of 422.
        template = _ID_ERROR.replace("{", "{{").replace("}", "}}")
        super().__init__(validate=validate.Regexp(ID_PATTERN, error=template), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise ValidationError("Must be a string.")
        # fullmatch: with re.match, "$" also matches before a trailing newline ("c1\n").
        if not _ID.fullmatch(value):
            raise ValidationError(_ID_ERROR)
        return value


class Text(fields.String):
    """Free text: no NUL (PostgreSQL cannot store it) and no lone surrogates (not UTF-8)."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in value or _SURROGATE.search(value):
            raise ValidationError("Must not contain NUL characters or unpaired surrogates.")
        return value


class Rfc3339(fields.DateTime):
    """RFC 3339 date-time with an explicit offset; loaded as an aware UTC datetime."""

    def __init__(self, **kwargs) -> None:
        super().__init__(format="iso", **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, str):
            raise ValidationError("Must be an RFC 3339 date-time string.")
        m = _RFC3339.fullmatch(value)  # not .match: "$" would allow a trailing newline
        if not m:
            raise ValidationError("Must be an RFC 3339 date-time with an offset, e.g. 2026-05-01T12:00:00Z.")
        fraction = (m.group(7) or "")[:7]  # Python parses at most microseconds
        offset = m.group(8).upper().replace("Z", "+00:00")
        try:
            parsed = datetime.fromisoformat(
                f"{m.group(1)}-{m.group(2)}-{m.group(3)}T{m.group(4)}:{m.group(5)}:{m.group(6)}{fraction}{offset}")
            return parsed.astimezone(timezone.utc)
        except (ValueError, OverflowError):
            raise ValidationError("Not a valid date-time.") from None

    def _serialize(self, value, attr, obj, **kwargs):
        if value is None:
            return None
        return iso_utc(value)
