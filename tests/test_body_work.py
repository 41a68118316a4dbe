"""Body checks do work linear in the body's size (issue 14, finding 1).

A signed 150 KB earn whose description was an unterminated string of \\" took 30 s: the depth
check's regex was quadratic. Every endpoint that takes a body (tests/adversarial_bodies.py,
ENDPOINTS) gets every adversarial shape of its media type, through the whole request (signature
check, body hash, parse, validation, the answer), and the work is counted in CPU instructions
(tests/workmeter.py, under valgrind), never in seconds. Two bounds:

* growth: n times the bytes may cost at most 1.5 n times the instructions. Linear work with a
  fixed cost per request grows by at most n; quadratic work by n squared.
* at the size limit (MAX_BODY_BYTES, 1 MiB), at most PER_BYTE times the instructions per byte
  that json.loads spends on an ordinary upload of the same size, measured in the same run.

Every case is measured at 2 and 16 KiB, where quadratic work shows already (x60 for the old
depth check); each case's sizes smallest first, and the test stops at the first case over a
bound rather than wait hours for a quadratic case at 1 MiB. At 1 MiB, by default, the shapes
whose cost is in the text itself; the shapes in MANY_ITEMS make tens of thousands of values,
keys, records or errors that the schemas check one by one (linear, but 1 to 25 billion
instructions each at 1 MiB, minutes under valgrind), and run at 16 KiB, 128 KiB and 1 MiB only
in the full matrix: BODY_WORK_FULL=1 make test PYTEST_ARGS=tests/test_body_work.py (about 15
minutes on two cores).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from datetime import datetime, timezone

import flask_migrate
import pytest

from tests.adversarial_bodies import ENDPOINTS, RECORD, encode, shapes_for
from tests.conftest import ON_POSTGRES
from tests.workmeter import Case, measure_parallel, unavailable

KIB = 1024
MAX_BODY_BYTES = 1024 * KIB
FULL = os.environ.get("BODY_WORK_FULL", "") not in ("", "0")
SIZES = (16 * KIB, 128 * KIB, MAX_BODY_BYTES) if FULL else (2 * KIB, 16 * KIB)
WARM_UP = 512  # bytes: each case runs once this small, unmeasured, before its first size
GROWTH = 1.5   # times the growth of the size
PER_BYTE = 250  # full matrix, worst measured: 185 (a CSV of 87,000 rows of empty quoted cells)
BASELINE = "baseline: json.loads of an ordinary upload"
MANY_ITEMS = {"short-strings", "empty-objects", "distinct-records", "duplicate-records", "many-keys",
              "late-duplicate-key", "quoted-empty-rows", "ragged-rows", "many-header-columns",
              "bad-points", "duplicate-claims", "valid-claims"}


def sizes_of(shape: str) -> tuple[int, ...]:
    return SIZES if FULL or shape in MANY_ITEMS else (*SIZES, MAX_BODY_BYTES)


def ordinary_upload(size: int) -> bytes:
    """A realistic reconciliation upload of about `size` bytes."""
    claims, total = [], 20
    while total < size - 80:
        claims.append({"claim_id": f"order-{len(claims)}", "kind": "earn", "points": 120,
                       "member_id": f"card-{len(claims) % 977}", "occurred_at": "2026-05-03T12:00:00Z"})
        total += len(encode(claims[-1])) + 1
    return encode({"claims": claims})


# --- in the measuring child -----------------------------------------------------------------

def _coalition(directory: str):
    """An app on its own SQLite file: partner acme, member M1 holding claim c0 of a closed May."""
    from coalition import create_app, ledger, members
    from coalition.database import db
    from partners import service as partners
    from partners.client import PartnerClient
    from settlement import service as settlement
    from settlement.signing import signing_key
    from tests.conftest import new_key, public_pem, transport_for

    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{directory}/coalition.db", "TESTING": True,
                      "RATELIMIT_ENABLED": False, "LOG_LEVEL": "WARNING",
                      "COALITION_SIGNING_KEY_FILE": f"{directory}/signing-key.pem"})
    # The cheapest scrypt the PIN code accepts: a PIN's hash is a fixed cost, not the body's.
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"], pin_log_n=4)
    key = new_key("EdDSA")
    may = datetime(2026, 5, 20, tzinfo=timezone.utc)
    with app.app_context():
        flask_migrate.upgrade()
        s = db.session
        partners.add_partner(s, "acme", "Acme", now=may, terms={})
        partners.add_key(s, "acme", public_pem(key), now=may)
        members.enrol(s, "M1", now=may)
        s.commit()
        ledger.book_earn(s, partner_id="acme", claim_id=RECORD["claim_id"], member_id="M1",
                         points=RECORD["points"], occurred_at=may, now=may,
                         rules=app.config["LEDGER_RULES"])
        s.commit()
        settlement.close(s, "2026-05", now=datetime(2026, 6, 2, tzinfo=timezone.utc), tz="Europe/Berlin",
                         key=signing_key(app.config["COALITION_SIGNING_KEY_FILE"]))
        s.commit()
    return app, PartnerClient("", "acme", key, transport=transport_for(app))


def _no_failure(response) -> None:
    assert response.status < 500, response.body[:2000]
    if response.status >= 400:
        assert response.headers["content-type"] == "application/problem+json", response.headers


def body_cases(shard: str):
    """The cases of shard "k/n": the k-th of every n endpoint and shape, each at its sizes."""
    index, count = map(int, shard.split("/"))
    directory = tempfile.mkdtemp(prefix="body-work-")
    app, client = _coalition(directory)
    upload = ordinary_upload(MAX_BODY_BYTES).decode()
    pairs = [(e, name, shape) for e in ENDPOINTS for name, shape in shapes_for(e).items()][index::count]
    # Every body is built before the first case: building runs uninstrumented, measuring does not.
    bodies = [(endpoint, name, size, shape(endpoint, size))
              for size in sorted({WARM_UP, *SIZES, MAX_BODY_BYTES}) for endpoint, name, shape in pairs
              if size == WARM_UP or size in sizes_of(name)]

    def request(endpoint, body):
        headers = client.sign(endpoint.method, endpoint.path, body)  # late: a token lives 2 minutes
        headers["Content-Type"] = endpoint.media_type
        return lambda: client.transport(endpoint.method, endpoint.path, headers, body)

    yield Case(BASELINE, lambda: lambda: json.loads(upload))
    warm_ups = {}
    for endpoint, name, size, body in bodies:
        assert len(body) <= size
        if size == WARM_UP:
            warm_ups[endpoint.name, name] = body
            continue
        tiny = warm_ups.pop((endpoint.name, name), None)
        yield Case(f"{endpoint.name} {name} {size}", lambda e=endpoint, b=body: request(e, b),
                   _no_failure, warm_up=tiny is not None and request(endpoint, tiny))


# --- in the test ----------------------------------------------------------------------------

@pytest.mark.skipif(unavailable() is not None, reason=f"cannot count instructions: {unavailable()}")
@pytest.mark.skipif(ON_POSTGRES, reason="the measuring child runs on its own SQLite file whatever "
                    "DATABASE_URL says: the SQLite pass of the suite measures the same work")
@pytest.mark.timeout(3600 if FULL else 900)
def test_every_body_check_is_linear_in_the_body_size(tmp_path):
    counts: dict[tuple[str, int], int] = {}
    baseline = None
    worst = {"growth": (0.0, ""), "per byte at the limit": (0.0, "")}
    for name, instructions in measure_parallel("tests.test_body_work:body_cases",
                                               jobs=min(4, os.cpu_count() or 1), log_dir=tmp_path):
        if name == BASELINE:  # one per child, equal but for noise: the least is the strictest
            baseline = min(baseline or instructions / MAX_BODY_BYTES, instructions / MAX_BODY_BYTES)
            continue
        case, size = name.rsplit(" ", 1)
        size = int(size)
        counts[case, size] = instructions
        sizes = sizes_of(case.rsplit(" ", 1)[1])
        if size != sizes[0]:
            smaller = sizes[sizes.index(size) - 1]
            growth = instructions / counts[case, smaller]
            worst["growth"] = max(worst["growth"], (round(growth * smaller / size, 2), name))
            assert growth < GROWTH * size / smaller, (
                f"{case}: {smaller} -> {size} bytes cost {counts[case, smaller]} -> {instructions} "
                f"instructions, x{growth:.1f}")
        if size == MAX_BODY_BYTES:
            per_byte = instructions / size / baseline
            worst["per byte at the limit"] = max(worst["per byte at the limit"], (round(per_byte, 1), name))
            assert per_byte < PER_BYTE, (
                f"{case}: {instructions / size:.0f} instructions per byte at the limit, "
                f"{per_byte:.1f} times json.loads of an ordinary upload ({baseline:.0f})")
    expected = sum(len(sizes_of(name)) for e in ENDPOINTS for name in shapes_for(e))
    assert len(counts) == expected
    print(f"json.loads: {baseline:.1f} instructions per byte; worst (growth per size ratio, "
          f"per byte in json.loads units): {worst}")
