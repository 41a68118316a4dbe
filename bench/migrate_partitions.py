"""Migration 0026 (the journal partitioned by month, issue 13 item 4), or with `--to 0027` migration
0027 (lots partitioned by the month they were used up in), on a database that holds data: how
long `flask db upgrade` from the revision before takes per 10^6 journal entries.

`--to 0026` (the default): from 0025, as below. `--to 0027`: the database is upgraded to 0026
instead (the journal partitioned, lots not), each history month's journal partitions made
first (by SQL: this code's `ledger partitions ensure` knows lots partitioned, which 0026 does
not have), then loaded (lots without last_period and spent_period, which 0027 computes), and
`flask db upgrade 0027` timed; afterwards lots must hold the same rows, none in lots_default,
each with the last_period and spent_period the journal gives it (checked by SQL over every
lot), and a partition per month besides lots_open.

1. A database of our own, bench_migrate_<pid>, on the server of DATABASE_URL (or
   127.0.0.1:5432 as postgres), `flask db upgrade 0025` (the unpartitioned journal); partners
   bench-shop and bench-p1 .. bench-p4 and --members members (`members import`), through the
   operator CLI.
2. --entries claims spread over the --months months before the current one's previous month
   (the same months as bench/partitions.py's history), loaded by COPY
   (bench.month_close.load_claims, which writes the unpartitioned shape at 0025: earns, burns,
   reversals with their postings, lots, consumptions); then VACUUM (ANALYZE) and a CHECKPOINT,
   as autovacuum and the checkpointer would have had time to do in production. Rows counted.
3. `flask db upgrade 0026` (from 0025), timed from the start of the process to its exit
   (beside it, the best of 3 `flask db current`: what the process costs before migrating).
   The rows counted again: the same in journal_entries, postings and consumptions, none in
   DEFAULT, a claim key per entry with a claim id, every month in a partition of its own.
4. With --rounds N > 1: `flask db downgrade 0025` (timed too), VACUUM (ANALYZE), CHECKPOINT,
   and the upgrade again, N times in all.

Prints a summary and one JSON document (also written to bench/results/); exits 1 when
anything did not add up. The database is always dropped.

    .venv/bin/python -m bench.migrate_partitions                   # 10^6 entries
    .venv/bin/python -m bench.migrate_partitions --entries 100000  # a quick try
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from bench import enrol_import, month_close, partitions, run
from bench.run import log

ROOT = Path(__file__).resolve().parent.parent
TABLES = ("journal_entries", "postings", "consumptions", "lots", "claim_keys")
JOURNAL = ("journal_entries", "postings", "consumptions")
BEFORE = {"0026": "0025", "0027": "0026"}  # the revision each measured migration starts from
# Lots whose last_period or spent_period is not what the journal says (migration 0027's docstring).
WRONG_LOT_PERIODS = """
    SELECT count(*) FROM lots l JOIN journal_entries e ON e.id = l.entry_id
        LEFT JOIN (SELECT lot_id, max(period) AS period FROM consumptions GROUP BY lot_id) c
        ON c.lot_id = l.id
    WHERE l.last_period <> GREATEST(e.period, c.period)
        OR l.spent_period <> CASE WHEN l.remaining > 0 THEN 'open' ELSE l.last_period END"""


def options(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=1_000_000, help="journal entries to migrate")
    p.add_argument("--months", type=int, default=24, help="months they spread over")
    p.add_argument("--members", type=int, default=200_000, help="members they spread over")
    p.add_argument("--rounds", type=int, default=1,
                   help="upgrades (each after the first preceded by a downgrade)")
    p.add_argument("--to", choices=sorted(BEFORE), default="0026",
                   help="the migration to time: 0026 (from 0025) or 0027 (from 0026)")
    args = p.parse_args(argv)
    if args.entries < 1 or args.months < 1 or args.members < 1 or args.rounds < 1:
        p.error("--entries, --months, --members and --rounds must be at least 1")
    return args


class Database(run.Scratch):
    def __init__(self) -> None:  # noqa: super().__init__ would pick its own name
        self.name = f"bench_migrate_{os.getpid()}"
        self.url = run.server_url().set(database=self.name)
        self._admin = run.libpq(run.server_url().set(database="postgres"))
        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')


def timed_flask(env: dict, *args: str) -> float:
    began = time.perf_counter()
    done = subprocess.run([str(run.BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr[-3000:]}")
    return seconds


def revision(conninfo: str) -> str:
    with psycopg.connect(conninfo) as conn:
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def counts(conninfo: str) -> dict:
    """Exact rows per table (claim_keys only once it exists), partitions and DEFAULT's rows;
    lots by partition once partitioned, and whether every lot's periods are the journal's."""
    out: dict = {}
    with psycopg.connect(conninfo) as conn:
        present = {r[0] for r in conn.execute(
            "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') "
            "AND relnamespace = current_schema()::regnamespace")}
        for table in TABLES:
            if table in present:
                out[table] = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        out["claimed_entries"] = conn.execute(
            "SELECT count(*) FROM journal_entries "
            "WHERE partner_id IS NOT NULL AND claim_id IS NOT NULL").fetchone()[0]
        out["periods"] = conn.execute(
            "SELECT count(DISTINCT period) FROM journal_entries").fetchone()[0]
        out["partitions"] = {t: conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = CAST(%s AS regclass)",
            (t,)).fetchone()[0] for t in partitions.PARTITIONED}
        out["default_rows"] = {t: conn.execute(f'SELECT count(*) FROM "{t}_default"').fetchone()[0]
                               for t in partitions.PARTITIONED if f"{t}_default" in present}
        if out["partitions"]["lots"]:
            out["lots_by_partition"] = dict(conn.execute(
                "SELECT tableoid::regclass::text, count(*) FROM lots GROUP BY 1 ORDER BY 1"))
            out["lots_wrong_periods"] = conn.execute(WRONG_LOT_PERIODS).fetchone()[0]
        out["database_bytes"] = conn.execute(
            "SELECT pg_database_size(current_database())").fetchone()[0]
    return out


def settle(conninfo: str) -> dict:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        began = time.perf_counter()
        conn.execute("VACUUM (ANALYZE)")
        vacuum = time.perf_counter() - began
        began = time.perf_counter()
        conn.execute("CHECKPOINT")
        return {"vacuum_analyze_s": round(vacuum, 1),
                "checkpoint_s": round(time.perf_counter() - began, 1)}


def bench(args, db: Database, workdir: Path) -> int:
    problems: list[str] = []
    load_before = os.getloadavg()
    began_all = time.perf_counter()
    conninfo = db.conninfo
    url = db.url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    env = {**os.environ, "DATABASE_URL": url, "COALITION_OPERATOR": "bench",
           "COALITION_SIGNING_KEY_FILE": str(workdir / "coalition-signing-key.pem")}
    os.environ["DATABASE_URL"] = url
    from coalition import clock, create_app
    app = create_app()
    tz, expire = app.config["COALITION_TIMEZONE"], app.config["POINTS_EXPIRE_MONTHS"]

    base, target = BEFORE[args.to], args.to
    partitioned = JOURNAL + (("lots",) if target == "0027" else ())
    log(f"database {db.name}: flask db upgrade {base}, partners, {args.members:,} members")
    run.flask(env, "db", "upgrade", base)
    if revision(conninfo) != base:
        raise RuntimeError(f"at revision {revision(conninfo)}, not {base}")
    for partner in month_close.PARTNERS:
        run.flask(env, "partners", "add", partner, "--name", partner)
    cards = workdir / "cards.csv"
    enrol_import.write_csv(cards, args.members)
    imported = run.flask(env, "members", "import", str(cards))
    if imported.get("created") != args.members:
        raise RuntimeError(f"members import: {imported}")

    _, history = partitions._periods(clock.now(), tz, args.months)
    if base == "0026":  # the journal's partitions of the history's months, else it loads into DEFAULT
        with psycopg.connect(conninfo) as conn:
            for period, _, _ in history:
                for table in JOURNAL:
                    conn.execute(f"CREATE TABLE IF NOT EXISTS {table}_{period[:4]}_{period[5:]} "
                                 f"PARTITION OF {table} FOR VALUES IN ('{period}')")
    per_month, extra = divmod(args.entries, args.months)
    loads, began = [], time.perf_counter()
    for i, (period, start, end) in enumerate(history):
        claims = per_month + (1 if i < extra else 0)
        if not claims:
            continue
        loads.append(month_close.load_claims(conninfo, period=period, claims=claims, start=start,
                                             end=end, tz=tz, expire_months=expire, seed=100 + i,
                                             tag=f"h{period}", analyze=False))
    loaded = partitions._sum_loads(loads)
    log(f"{loaded['claims']:,} claims over {len(loads)} months loaded in "
        f"{time.perf_counter() - began:.0f} s ({loaded['postings']:,} postings, "
        f"{loaded['lots']:,} lots, {loaded['consumptions']:,} consumptions)")
    settled = settle(conninfo)
    before = counts(conninfo)
    if before["journal_entries"] != args.entries:
        problems.append(f"{before['journal_entries']} journal entries loaded, not {args.entries}")

    # What a flask process costs before it migrates anything (app, CLI, alembic): in every
    # upgrade's time below.
    startup = round(min(timed_flask(env, "db", "current") for _ in range(3)), 1)
    rounds = []
    for number in range(args.rounds):
        entry: dict = {}
        if number:
            entry["downgrade_s"] = round(timed_flask(env, "db", "downgrade", base), 1)
            if revision(conninfo) != base:
                problems.append(f"round {number + 1}: downgrade left revision {revision(conninfo)}")
            entry["settle_after_downgrade"] = settle(conninfo)
            log(f"round {number + 1}: downgraded to {base} in {entry['downgrade_s']:.1f} s")
        seconds = timed_flask(env, "db", "upgrade", target)
        entry["upgrade_s"] = round(seconds, 1)
        entry["upgrade_s_per_million_entries"] = round(seconds * 1e6 / args.entries, 1)
        entry["revision"] = revision(conninfo)
        entry["after"] = after = counts(conninfo)
        log(f"round {number + 1}: {base} -> {entry['revision']} in {seconds:.1f} s "
            f"({entry['upgrade_s_per_million_entries']:.1f} s per 10^6 entries)")
        for table in ("journal_entries", "postings", "consumptions", "lots"):
            if after.get(table) != before.get(table):
                problems.append(f"round {number + 1}: {table} {before.get(table)} rows before, "
                                f"{after.get(table)} after")
        if after.get("claim_keys") != before["claimed_entries"]:
            problems.append(f"round {number + 1}: {after.get('claim_keys')} claim keys, "
                            f"{before['claimed_entries']} entries with a claim id")
        if entry["revision"] != target:
            problems.append(f"round {number + 1}: at revision {entry['revision']}, not {target}")
        if (any(after["default_rows"].values())
                or len(after["default_rows"]) != len(partitioned)):
            problems.append(f"round {number + 1}: DEFAULT partitions {after['default_rows']}")
        for table in partitioned:
            n = after["partitions"][table] - (table == "lots")  # lots_open besides the months
            if n < before["periods"] + 1:  # a partition per month, and DEFAULT
                problems.append(f"round {number + 1}: {table} has {n} partitions for "
                                f"{before['periods']} months")
        if target == "0027" and after.get("lots_wrong_periods") != 0:
            problems.append(f"round {number + 1}: {after.get('lots_wrong_periods')} lots whose "
                            "last_period or spent_period is not the journal's")
        rounds.append(entry)

    load_after = os.getloadavg()
    wall = time.perf_counter() - began_all
    with psycopg.connect(conninfo) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]
    host = run.machine()
    version = run.code_version()
    print()
    print(f"service code: {version}; PostgreSQL {pg_version}; {host['nproc']} CPUs, "
          f"{host['ram_gib']} GiB; load average {load_before[0]:.2f} / {load_before[1]:.2f} / "
          f"{load_before[2]:.2f} before, {load_after[0]:.2f} / {load_after[1]:.2f} / "
          f"{load_after[2]:.2f} after; {wall / 60:.1f} min in all")
    print(f"at {base}: {before['journal_entries']:,} journal entries over {before['periods']} "
          f"months, {before['postings']:,} postings, {before['consumptions']:,} consumptions, "
          f"{before['lots']:,} lots, {args.members:,} members; "
          f"{before['database_bytes'] / 2**30:.2f} GiB; loaded in {loaded['load_s']:.0f} s, "
          f"VACUUM (ANALYZE) {settled['vacuum_analyze_s']:.0f} s; `flask db current` {startup:.1f} s "
          "(a flask process's own cost, in every time below)")
    for number, entry in enumerate(rounds, 1):
        after = entry["after"]
        print(f"round {number}: " + (f"downgrade {entry['downgrade_s']:.1f} s, "
                                     if "downgrade_s" in entry else "")
              + f"upgrade {base} -> {entry['revision']} {entry['upgrade_s']:.1f} s = "
              f"{entry['upgrade_s_per_million_entries']:.1f} s per 10^6 entries; after: "
              f"partitions " + ", ".join(f"{t} {n}" for t, n in after["partitions"].items())
              + ", DEFAULT rows " + ", ".join(str(n) for n in after["default_rows"].values())
              + f", {after.get('claim_keys', 0):,} claim keys, "
              f"{after['database_bytes'] / 2**30:.2f} GiB")
        if "lots_by_partition" in after:
            lots = after["lots_by_partition"]
            months = sum(v for k, v in lots.items() if k not in ("lots_open", "lots_default"))
            print(f"  lots: lots_open {lots.get('lots_open', 0):,}, month partitions {months:,}, "
                  f"lots_default {lots.get('lots_default', 0):,}; lots whose periods are not "
                  f"the journal's: {after['lots_wrong_periods']}")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("FAILED" if problems else "OK")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    report = {"settings": vars(args), "machine": host, "postgres": pg_version, "code": version,
              "loadavg_before": load_before, "loadavg_after": load_after,
              "wall_s": round(wall, 1), "loaded": loaded, "settle": settled, "before": before,
              "flask_startup_s": startup,
              "rounds": rounds, "problems": problems}
    (out / f"migrate-partitions-{target}-{stamp}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # unwind through the finally below
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    db = None
    try:
        db = Database()
        return bench(args, db, workdir)
    except KeyboardInterrupt:
        log("interrupted: dropping the database")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if db is not None:
            db.drop()
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
