"""Strict JSON request bodies: one object, UTF-8, no duplicate keys, bounded depth.

Values that JSON allows but the contract does not (floats where integers belong, NaN, huge
numbers) are parsed into markers that the schemas then reject as 422, so that `"points": 1e3`
is a validation error and not a malformed request.
"""
from __future__ import annotations

import json
import re

from .errors import Problem

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


class NonFinite(float):
    """NaN or Infinity as written in a body; never a valid value for any field."""


class HugeInteger(int):
    """An integer literal too long to be a sensible value; never valid either."""


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    doc: dict = {}
    for key, value in pairs:
        if key in doc:
            raise Problem("malformed-request", f"Duplicate key {key!r} in JSON object.")
        doc[key] = value
    return doc


def _parse_int(text: str) -> int:
    return HugeInteger(0) if len(text.lstrip("-")) > 19 else int(text)


def depth_of(text: str) -> int:
    """Deepest nesting of arrays and objects, counted without parsing (strings removed first)."""
    brackets = "".join(ch for ch in _STRINGS.sub("", text) if ch in "[]{}")
    depth = deepest = 0
    for ch in brackets:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def parse_object(raw: bytes, max_depth: int) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem("malformed-request", "The body is not valid UTF-8.") from None
    if depth_of(text) > max_depth:
        raise Problem("malformed-request", f"The JSON body is nested deeper than {max_depth} levels.")
    try:
        doc = json.loads(text, object_pairs_hook=_reject_duplicates, parse_int=_parse_int,
                         parse_constant=lambda name: NonFinite("nan"))
    except Problem:
        raise
    except (ValueError, RecursionError):
        raise Problem("malformed-request", "The body is not valid JSON.") from None
    if not isinstance(doc, dict):
        raise Problem("malformed-request", "The body must be a JSON object.")
    return doc
