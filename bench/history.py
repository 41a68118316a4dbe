"""History for the single-earn rate to run against: journal entries loaded in bulk until the
journal holds `--total` of them, on the database DATABASE_URL names.

The entries (bench.month_close.load_claims: earns, burns, full reversals, with their postings,
lots, consumptions, hashes, and the members' balances brought up to date) are booked into the
current month, occurring between its start and a minute ago, spread evenly over every member
in the database: the members the HTTP load hits (bench-m-*) carry their share like the rest.
Nothing is sealed: the claim path reads no seals. Prints one JSON document.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/bench_x \\
        .venv/bin/python -m bench.history --total 10000000

bench/run.py (`make bench`) measures the service's single earns after the month close, with the
close's month as history (about 10^6 entries); BENCH_HISTORY=1 first tops the journal up to
10^7 entries with this module (BENCH_HISTORY=N: to N).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import timedelta

import psycopg

from bench.month_close import load_claims
from coalition import clock
from coalition.periods import add_months, month_of, month_start_utc

TEN_MILLION = 10_000_000


def target(setting: str) -> int:
    """BENCH_HISTORY: empty or 0 for none, 1 for 10^7, or the number of entries."""
    value = int(setting or 0)
    return TEN_MILLION if value == 1 else value


def load_history(conninfo: str, total: int, *, tz: str = "Europe/Berlin",
                 expire_months: int = 36) -> dict:
    with psycopg.connect(conninfo) as conn:
        present = conn.execute("SELECT count(*) FROM journal_entries").fetchone()[0]
    missing = total - present
    if missing <= 0:
        return {"present": present, "loaded": 0}
    now = clock.now()
    year, month = month_of(now, tz)
    start = month_start_utc(year, month, tz)
    end = max(now - timedelta(minutes=1), start + timedelta(seconds=1))
    assert end <= month_start_utc(*add_months(year, month, 1), tz)
    loaded = load_claims(conninfo, period=f"{year:04d}-{month:02d}", claims=missing, start=start,
                         end=end, tz=tz, expire_months=expire_months, seed=2, tag="hist")
    return {"present": present, "loaded": missing, "load": loaded}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--total", type=int, default=TEN_MILLION,
                   help="journal entries wanted in all (those present count)")
    args = p.parse_args(argv)
    conninfo = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    print(json.dumps(load_history(conninfo, args.total,
                                  tz=os.environ.get("COALITION_TIMEZONE", "Europe/Berlin"),
                                  expire_months=int(os.environ.get("POINTS_EXPIRE_MONTHS", 36)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
