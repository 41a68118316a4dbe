"""Strict JSON request bodies: one object, UTF-8, no duplicate keys, bounded depth.

Values that JSON allows but the contract does not (floats where integers belong, NaN, huge
numbers) are parsed into markers that the schemas then reject as 422, so that `"points": 1e3`
is a validation error and not a malformed request.
"""
from __future__ import annotations

import json
import re
from itertools import accumulate

from .errors import Problem

# A string runs to its closing quote or, unterminated, to the end of the body: the pattern matches
# wherever a quote starts one and never backtracks, so each character is read once. The pattern it
# replaces required the closing quote; on an unterminated string it failed after reading to the
# end, and was tried again from every later quote: quadratic (a 150 KB body of \" took 30 s).
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*+"?', re.DOTALL)
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_NESTING = {"[": 1, "{": 1, "]": -1, "}": -1}


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


def too_deep(text: str, max_depth: int) -> bool:
    """Whether arrays and objects nest deeper than `max_depth`, found without parsing and in
    time linear in the text.

    Strings are removed first (their brackets are not structure); the running sum of +1 per
    opening and -1 per closing bracket is the depth at each bracket. Regular expressions,
    str.count, map, accumulate and any do the work in C, and any stops at the first bracket too
    deep: no Python-level loop per character."""
    brackets = _NOT_BRACKETS.sub("", _STRINGS.sub("", text))
    if brackets.count("[") + brackets.count("{") <= max_depth:
        return False  # cannot nest deeper than it has opening brackets
    return any(map(max_depth.__lt__, accumulate(map(_NESTING.__getitem__, brackets))))


def parse_object(raw: bytes, max_depth: int) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem("malformed-request", "The body is not valid UTF-8.") from None
    if too_deep(text, max_depth):
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
