"""Body checks: the issue-14 earn (a description of \\" never closed) at 20, 40, 80, 150 KB and 1 MiB.

Each size is one signed POST /v1/earn through the app's own request handling (the Flask test
client, an SQLite file), and beside it json.loads of an ordinary JSON document of the same size,
measured in the same run: the machine is shared and noisy, so the ratio is the figure to compare,
the seconds are beside it. Median of --repeat runs (a fresh token each).

    .venv/bin/python -m bench.body_checks            # the service as it is
    .venv/bin/python -m bench.body_checks --before   # with the depth check it replaced (quadratic)

`--before` puts the pre-fix depth check back in place for this run only; sizes whose first run
took longer than --give-up seconds are not repeated, and the next sizes are estimated from the
last measured one (quadratic) instead of run: 1 MiB would take hours.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone

import flask_migrate
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from coalition import create_app, jsonbody
from coalition.database import db
from partners import service as partners
from partners.client import PartnerClient

SIZES = {"20 KB": 20_000, "40 KB": 40_000, "80 KB": 80_000, "150 KB": 150_000, "1 MiB": 1024 * 1024}

# The depth check before the fix, for --before: a string had to end in its closing quote; an
# unterminated one failed after reading to the end and was tried again from every later quote.
_OLD_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def old_depth_of(text: str) -> int:
    brackets = "".join(ch for ch in _OLD_STRINGS.sub("", text) if ch in "[]{}")
    depth = deepest = 0
    for ch in brackets:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def issue_body(size: int) -> bytes:
    occurred = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    head = json.dumps({"claim_id": "bench", "member_id": "M1", "points": 5, "occurred_at": occurred,
                       "description": ""})[:-2].encode()
    return head + b'\\"' * ((size - len(head)) // 2)


def ordinary_body(size: int) -> bytes:
    claims, total = [], 20
    while total < size:
        claims.append({"claim_id": f"order-{len(claims)}", "kind": "earn", "points": 120,
                       "member_id": f"card-{len(claims) % 977}", "occurred_at": "2026-05-03T12:00:00Z"})
        total += len(json.dumps(claims[-1])) + 1
    return json.dumps({"claims": claims}).encode()


def service(directory: str) -> tuple[object, PartnerClient]:
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{directory}/bench.db", "TESTING": True,
                      "RATELIMIT_ENABLED": False, "LOG_LEVEL": "WARNING",
                      "COALITION_SIGNING_KEY_FILE": f"{directory}/signing-key.pem"})
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    with app.app_context():
        flask_migrate.upgrade()
        now = datetime.now(timezone.utc)
        partners.add_partner(db.session, "bench", "Bench", now=now, terms={})
        partners.add_key(db.session, "bench", pem, now=now)
        db.session.commit()
    return app, PartnerClient("", "bench", key)


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", action="store_true", help="with the quadratic depth check")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--give-up", type=float, default=120.0, metavar="SECONDS")
    args = parser.parse_args()
    if args.before:
        jsonbody.too_deep = lambda text, max_depth: old_depth_of(text) > max_depth
    app, client = service(tempfile.mkdtemp(prefix="bench-"))
    test_client = app.test_client()

    def earn(body: bytes):
        headers = {**client.sign("POST", "/v1/earn", body), "Content-Type": "application/json"}
        return lambda: test_client.post("/v1/earn", data=body, headers=headers)

    print(f"{'size':>7} {'earn s':>10} {'json.loads s':>13} {'ratio':>9}  status  "
          f"({'before the fix' if args.before else 'as it is'}; median of {args.repeat})")
    last = None
    for name, size in SIZES.items():
        ordinary = ordinary_body(size).decode()
        baseline = statistics.median(timed(lambda: json.loads(ordinary)) for _ in range(args.repeat))
        if last is not None and last[1] > args.give_up:
            estimate = last[1] * (size / last[0]) ** 2
            print(f"{name:>7} {'~%.0f' % estimate:>10} {baseline:13.5f} {'~%.0f' % (estimate / baseline):>9}"
                  f"  -       (not run: estimated, quadratic from {last[0] // 1000} KB)")
            continue
        body = issue_body(size)
        first = earn(body)
        started = time.perf_counter()
        status = first().status_code
        runs = [time.perf_counter() - started]
        if runs[0] <= args.give_up:
            runs += [timed(earn(body)) for _ in range(args.repeat - 1)]
        seconds = statistics.median(runs)
        last = (size, seconds)
        print(f"{name:>7} {seconds:10.5f} {baseline:13.5f} {seconds / baseline:9.1f}  {status}")


if __name__ == "__main__":
    main()
