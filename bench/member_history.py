"""Members with 100,000 journal entries: how long one page of history.page_of takes (the
member portal's and the console's history), newest and deep, filtered and not, against a plain
`SELECT * FROM journal_entries WHERE member_id = ... ORDER BY id DESC LIMIT 20` in the same run,
and against reading the whole history (history.member_history, what the pages did before).

It needs an empty PostgreSQL database (the one DATABASE_URL names): it migrates it and loads by
SQL 500,000 entries. Two members have 100,000 each: the active one every fifth entry of the
journal, the dormant one two in five of the first half only (its newest entry lies behind
250,000 later entries of others); the rest are earns of 2,000 other members. The two members'
entries: a reversal every 100th (of the entry before), an expiry every 1,000th, a burn every
4th, else earns, each earn with its lot and every fifth of them with a bonus lot. It leaves the
data there. Prints one JSON document: medians of `--repeat` runs in milliseconds, each page
also as a ratio to the baseline of the same shape, taken in turns with it; beside them the
baseline written as page_of writes the member's condition (a range: see history.page_of).
`--without-index` measures again without the index of migration 0024 (dropped, then made
again), to show what it is for.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/<empty db> \\
        .venv/bin/python -m bench.member_history
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import flask_migrate
from sqlalchemy import event, text

from coalition import create_app
from coalition.database import db
from coalition.history import MEMBER_ENTRIES, member_history, page_of

ENTRIES, DORMANT_UNTIL, OTHERS = 500_000, 250_000, 2_000
ACTIVE, DORMANT = 1, 2  # members.id of the two members with 100,000 entries each

LOAD = """
INSERT INTO partners (id, name, status, kind, created_at)
SELECT 'p' || n, 'Partner ' || n, 'active', 'partner', now() FROM generate_series(1, 5) n;
INSERT INTO members (id, external_id, created_at)
SELECT n, 'M-' || n, now() FROM generate_series(1, :others + 2) n;
CREATE TEMPORARY TABLE bench_entries AS
SELECT n, n / 5 AS k,
       CASE WHEN n % 5 = 0 THEN 1 WHEN n <= :dormant_until AND n % 5 IN (1, 2) THEN 2
            ELSE 3 + n % :others END AS owner
FROM generate_series(1, :entries) n;
INSERT INTO journal_entries (id, kind, partner_id, claim_id, member_id, points, occurred_at,
                             recorded_at, period, reverses_id, fingerprint, status,
                             balance_after, entry_hash)
SELECT n,
       CASE WHEN owner > 2 THEN 'earn' WHEN k % 1000 = 7 THEN 'expiry'
            WHEN k % 100 = 5 THEN 'reversal' WHEN k % 4 = 3 THEN 'burn' ELSE 'earn' END,
       CASE WHEN owner <= 2 AND k % 1000 = 7 THEN NULL ELSE 'p' || (1 + k % 5) END,
       CASE WHEN owner <= 2 AND k % 1000 = 7 THEN NULL ELSE 'c-' || n END,
       owner, 1 + n % 50,
       timestamptz '2022-01-01' + n * interval '3 minutes',
       timestamptz '2022-01-01' + n * interval '3 minutes' + interval '1 second',
       to_char(timestamptz '2022-01-01' + n * interval '3 minutes', 'YYYY-MM'),
       CASE WHEN owner <= 2 AND k % 1000 <> 7 AND k % 100 = 5 THEN n - 5 END,
       md5(n::text) || md5(n::text), 'booked', 0, md5(n::text) || md5(n::text)
FROM bench_entries;
SELECT setval(pg_get_serial_sequence('journal_entries', 'id'), :entries);
INSERT INTO lots (member_id, entry_id, issuer_id, points, remaining, occurred_at, expires_at,
                  source, last_period, spent_period)
SELECT member_id, id, partner_id, points, points, occurred_at, occurred_at + interval '3 years',
       NULL, period, 'open' FROM journal_entries WHERE kind = 'earn' AND member_id <= 2
UNION ALL
SELECT member_id, id, 'p1', 7, 7, occurred_at, occurred_at + interval '3 years', 'campaign:x',
       period, 'open'
FROM journal_entries WHERE kind = 'earn' AND member_id <= 2 AND id % 25 = 0;
ANALYZE;
"""


def timed(runs: dict, repeat: int) -> dict:
    """The median of `repeat` runs of each, in milliseconds: taken in turns, so that the shared
    machine's noise falls on all alike (each run once first, unmeasured, to warm up)."""
    samples = {name: [] for name in runs}
    for run in runs.values():
        run()
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - start) * 1000)
    return {name: round(statistics.median(values), 2) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--without-index", action="store_true",
                   help="measure again without ix_journal_entries_member_id_id (what it is for)")
    args = p.parse_args(argv)
    app = create_app()
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        sys.exit("DATABASE_URL must name an empty PostgreSQL database")
    with app.app_context():
        flask_migrate.upgrade()
        session = db.session
        if session.execute(text("SELECT count(*) FROM journal_entries")).scalar():
            sys.exit("the database holds journal entries already: give an empty one")
        start = time.perf_counter()
        values = {"entries": ENTRIES, "dormant_until": DORMANT_UNTIL, "others": OTHERS}
        for statement in LOAD.split(";\n"):
            if statement.strip():
                session.execute(text(statement), {k: v for k, v in values.items()
                                                  if f":{k}" in statement})
        session.commit()
        loaded_s = round(time.perf_counter() - start, 1)
        statements = []
        event.listen(db.engine, "before_cursor_execute",
                     lambda *a, **k: statements.append(1))

        def plain(member, before=None, where="", ranged=False):
            cursor = "AND id < :before" if before else ""
            if ranged:  # the member as page_of asks for it (see there why)
                return lambda: session.execute(text(
                    f"SELECT * FROM journal_entries WHERE member_id BETWEEN :m AND :m {where} "
                    f"{cursor} ORDER BY member_id DESC, id DESC LIMIT 20"),
                    {"m": member, "before": before}).all()
            return lambda: session.execute(text(
                f"SELECT * FROM journal_entries WHERE member_id = :m {where} {cursor} "
                "ORDER BY id DESC LIMIT 20"), {"m": member, "before": before}).all()

        def page(member, **kw):
            return lambda: page_of(session, member, limit=20, **kw)

        counts: dict[str, int] = {}

        def measure() -> dict:
            pages = {}
            for label, member in (("active", ACTIVE), ("dormant", DORMANT)):
                counts[label] = session.execute(text(
                    "SELECT count(*) FROM journal_entries WHERE member_id = :m"), {"m": member}
                ).scalar()
                deep = session.execute(text(
                    "SELECT id FROM journal_entries WHERE member_id = :m ORDER BY id DESC "
                    "OFFSET 99000 LIMIT 1"), {"m": member}).scalar()
                shapes = {
                    "first page": ({}, {}),
                    "deep page (99,000 entries in)": ({"before": deep}, {"before": deep}),
                    "newer page from the deep one (after=)": ({"after": deep}, {"before": deep}),
                    "first page, partner p3": ({"partner_id": "p3"},
                                               {"where": "AND partner_id = 'p3'"}),
                    "deep page, partner p3": ({"partner_id": "p3", "before": deep},
                                              {"before": deep, "where": "AND partner_id = 'p3'"}),
                    "first page, kind reversal (1 in 100)": ({"kind": "reversal"},
                                                             {"where": "AND kind = 'reversal'"}),
                    "first page, kind expiry (1 in 1,000)": ({"kind": "expiry"},
                                                             {"where": "AND kind = 'expiry'"}),
                }
                for name, (ours, baseline) in shapes.items():
                    statements.clear()
                    rows, _, _ = page(member, **ours)()
                    per_page = len(statements)
                    ms = timed({"page_of": page(member, **ours), "plain": plain(member, **baseline),
                                "ranged": plain(member, ranged=True, **baseline)}, args.repeat)
                    pages[f"{label}: {name}"] = {
                        "page_of_ms": ms["page_of"], "baseline_ms": ms["plain"],
                        "ratio": round(ms["page_of"] / ms["plain"], 2),
                        "baseline_as_page_of_asks_ms": ms["ranged"], "rows": len(rows),
                        "statements": per_page}
            return pages

        pages = measure()
        without = None
        if args.without_index:
            session.execute(text(f"DROP INDEX {MEMBER_ENTRIES.name}"))
            session.commit()
            without = measure()
            MEMBER_ENTRIES.create(session.connection())
            session.commit()
        whole_ms = timed({"whole": lambda: member_history(session, f"M-{ACTIVE}")}, 3)["whole"]
        session.rollback()
    print(json.dumps({"entries": ENTRIES, "member_entries": counts, "load_s": loaded_s,
                      "repeat": args.repeat, "pages": pages,
                      "pages_without_index": without,
                      "whole history (member_history, the pages before)": {
                          "ms": whole_ms, "ratio_to_first_page":
                              round(whole_ms / pages["active: first page"]["page_of_ms"], 1)}},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
