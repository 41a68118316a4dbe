"""Every endpoint that takes a body, and bodies built to make body checks do more than linear work.

`ENDPOINTS` lists the endpoints; a new one (a future POST /v1/batches, say) is one more entry,
and every shape of its media type is then tried on it. A shape turns (endpoint, size) into a
body of at most `size` bytes, the adversarial part repeated to fill it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

MARK = "@@mark@@"


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    media_type: str
    ordinary: dict | str        # a valid body (a JSON document or CSV text)
    text_field: str = ""        # JSON: where long strings and long lists go
    number_field: str = ""      # JSON: where long numbers go
    record: dict | None = None  # JSON: one record, if the text field is a list of records
    method: str = "POST"


# Inside the claim window, so that an ordinary earn, burn or reversal books.
RECENT = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
RECORD = {"claim_id": "c0", "kind": "earn", "points": 1000, "member_id": "M1"}
ENDPOINTS = [
    Endpoint("earn", "/v1/earn", "application/json",
             {"claim_id": "e1", "member_id": "M1", "points": 5,
              "occurred_at": RECENT, "description": "receipt 42"},
             "description", "points"),
    Endpoint("burn", "/v1/burn", "application/json",
             {"claim_id": "b1", "member_id": "M1", "points": 5,
              "occurred_at": RECENT, "description": "receipt 43"},
             "description", "points"),
    Endpoint("reversal", "/v1/claims/c0/reversals", "application/json",
             {"reversal_id": "r1", "points": 1, "occurred_at": RECENT},
             "reversal_id", "points"),
    Endpoint("enrol", "/v1/members", "application/json", {"member_id": "M2"}, "member_id", "member_id"),
    Endpoint("pin", "/v1/members/M1/pin", "application/json", {"pin": "1234"}, "pin", "pin",
             method="PUT"),
    Endpoint("reconciliation-json", "/v1/statements/2026-05/reconciliation", "application/json",
             {"claims": [RECORD]}, "claims", "points", RECORD),
    Endpoint("reconciliation-csv", "/v1/statements/2026-05/reconciliation", "text/csv",
             "claim_id,kind,points,member_id\nc0,earn,1000,M1\n"),
    # Endpoint("batches", "/v1/batches", "application/json", {...}, ...) once batches exist:
    # every JSON shape below is then tried on it too.
]


def encode(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def fill(head: bytes, unit: bytes, tail: bytes, size: int) -> bytes:
    return head + unit * max(0, (size - len(head) - len(tail)) // len(unit)) + tail


def split_at(endpoint: Endpoint, field: str, in_record: bool) -> tuple[bytes, bytes]:
    """The ordinary body cut around the value of `field` (of the first record, if `in_record`
    and the endpoint takes records): what comes before the value and what comes after it."""
    doc = dict(endpoint.ordinary)
    if endpoint.record and in_record:
        doc[endpoint.text_field] = [{**endpoint.record, field: MARK}]
    else:
        doc[field] = MARK
    head, tail = encode(doc).split(b'"' + MARK.encode() + b'"')
    return head, tail


def in_string(unit: bytes, closed: bool = True) -> Callable[[Endpoint, int], bytes]:
    """A long string value: `"unit unit ... unit"`, or never closed."""
    def shape(endpoint: Endpoint, size: int) -> bytes:
        field = "claim_id" if endpoint.record else endpoint.text_field
        head, tail = split_at(endpoint, field, in_record=True)
        return fill(head + b'"', unit, b'"' + tail if closed else b"", size)
    return shape


def in_list(unit: bytes, last: bytes) -> Callable[[Endpoint, int], bytes]:
    """The text field as a long list `[unit unit ... last]` (the records, where it holds them)."""
    def shape(endpoint: Endpoint, size: int) -> bytes:
        head, tail = split_at(endpoint, endpoint.text_field, in_record=False)
        return fill(head + b"[", unit, last + b"]" + tail, size)
    return shape


def records(make: Callable[[int], dict]) -> Callable[[Endpoint, int], bytes]:
    """The text field as a list of distinct JSON records, as many as fit."""
    def shape(endpoint: Endpoint, size: int) -> bytes:
        head, tail = split_at(endpoint, endpoint.text_field, in_record=False)
        items, total, i = [], len(head) + len(tail) + 2, 0
        while total + len(item := encode(make(i))) + 1 <= size:
            items.append(item)
            total += len(item) + 1
            i += 1
        return head + b"[" + b",".join(items) + b"]" + tail
    return shape


def in_number(digits: bytes, after: bytes = b"") -> Callable[[Endpoint, int], bytes]:
    def shape(endpoint: Endpoint, size: int) -> bytes:
        head, tail = split_at(endpoint, endpoint.number_field, in_record=True)
        return fill(head, digits, after + tail, size)
    return shape


def many_keys(endpoint: Endpoint, size: int) -> bytes:
    head = encode(endpoint.ordinary)[:-1]
    keys, total = [], len(head) + 1
    while total + len(key := b',"k%d":0' % len(keys)) <= size:
        keys.append(key)
        total += len(key)
    return head + b"".join(keys) + b"}"


def late_duplicate(endpoint: Endpoint, size: int) -> bytes:
    return many_keys(endpoint, size - 16)[:-1] + b',"k0":0}'


def whole(unit: bytes) -> Callable[[Endpoint, int], bytes]:
    return lambda endpoint, size: fill(b"", unit, b"", size)


JSON_SHAPES: dict[str, Callable[[Endpoint, int], bytes]] = {
    # The issue's body: a string of \" that never ends.
    "escaped-quotes-unterminated": in_string(b'\\"', closed=False),
    "escaped-quotes": in_string(b'\\"'),
    "quotes": in_string(b'"', closed=False),
    "backslashes": in_string(b"\\\\"),
    "backslashes-unterminated": in_string(b"\\", closed=False),
    "surrogate-escapes": in_string(b"\\ud800"),
    "unicode": in_string("é€😀".encode()),
    "brackets-in-string": in_string(b"[{"),
    "deep-arrays": whole(b"["),
    "deep-objects": whole(b'{"a":'),
    "short-strings": in_list(b'"",', b'""'),
    "empty-objects": in_list(b"{},", b"{}"),
    "distinct-records": records(lambda i: {**RECORD, "claim_id": f"c{i}"}),
    "duplicate-records": records(lambda i: RECORD),
    "huge-integer": in_number(b"9"),
    "huge-fraction": in_number(b"1", b".5"),
    "many-keys": many_keys,
    "late-duplicate-key": late_duplicate,
    "whitespace": lambda endpoint, size: fill(encode(endpoint.ordinary)[:-1], b" ", b"}", size),
}


def csv_rows(endpoint: Endpoint, size: int, row: Callable[[int], bytes]) -> bytes:
    head, rows = b"claim_id,kind,points,member_id\n", []
    total = len(head)
    while total + len(line := row(len(rows))) <= size:
        rows.append(line)
        total += len(line)
    return head + b"".join(rows)


CSV_SHAPES: dict[str, Callable[[Endpoint, int], bytes]] = {
    "quoted-quotes": lambda e, size: fill(b'claim_id,kind,points,member_id\n"', b'""', b'",earn,1,M1\n', size),
    "unterminated-quote": lambda e, size: fill(b'claim_id,kind,points,member_id\n"', b"x", b"", size),
    "many-columns": lambda e, size: fill(b"claim_id,kind,points,member_id\nc1,earn,1,M1", b",", b"\n", size),
    "many-header-columns": lambda e, size: fill(b"claim_id,kind,points", b",x", b"\n", size),
    "ragged-rows": lambda e, size: fill(b"claim_id,kind,points,member_id\n", b"a\n", b"", size),
    "quoted-empty-rows": lambda e, size: fill(b"claim_id,kind,points,member_id\n", b'"","","",""\n', b"", size),
    "blank-lines": lambda e, size: fill(b"claim_id,kind,points,member_id\n", b"\r\n", b"", size),
    "bad-points": lambda e, size: csv_rows(e, size, lambda i: b"c%d,earn,1e3,M1\n" % i),
    "duplicate-claims": lambda e, size: csv_rows(e, size, lambda i: b"c0,earn,1,M1\n"),
    "valid-claims": lambda e, size: csv_rows(e, size, lambda i: b"c%d,earn,1,M1\n" % i),
}


def shapes_for(endpoint: Endpoint) -> dict[str, Callable[[Endpoint, int], bytes]]:
    return CSV_SHAPES if endpoint.media_type == "text/csv" else JSON_SHAPES
