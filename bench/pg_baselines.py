"""Raw PostgreSQL baselines: what the database alone does at the benchmark's concurrency.

Each runs in N processes (default 8, as many as the load generator's clients), one psycopg
connection each, into a table shaped like the floor app's claim row (bench/floor_app.py):

* insert+commit: one INSERT and one COMMIT per row, for a fixed duration: the ceiling of any
  design that commits each claim on its own;
* COPY: pre-built rows in batches (one COPY and one COMMIT per batch), a fixed number of rows:
  the ceiling of batching.

And `time_group_by`, the month-close baseline: one plain GROUP BY over the journal.

    .venv/bin/python -m bench.pg_baselines postgresql://postgres@127.0.0.1:5432/bench_x
"""
from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import signal
import sys
import time
from datetime import datetime, timezone

import psycopg

from bench.floor_app import CLAIM_COLUMNS, claim_table_ddl
from bench.load import Result

INSERT_TABLE = "bench_raw_insert"
COPY_TABLE = "bench_raw_copy"
COPY_BATCH = 5000


def _row(client: int, i: int, now: datetime) -> tuple:
    return ("earn", "bench-shop", f"{client}-{i}", f"bench-m-{i % 2000:06d}", 1 + i % 100, now,
            now, now.strftime("%Y-%m"), None)


def _insert_worker(conninfo: str, client: int, duration: float, barrier, queue) -> None:
    sql = (f"INSERT INTO {INSERT_TABLE} ({', '.join(CLAIM_COLUMNS)}) "
           f"VALUES ({', '.join(['%s'] * len(CLAIM_COLUMNS))})")
    with psycopg.connect(conninfo) as conn:
        barrier.wait(timeout=120)
        latencies = []
        start = time.monotonic()
        deadline = start + duration
        i = 0
        while time.monotonic() < deadline:
            began = time.perf_counter()
            conn.execute(sql, _row(client, i, datetime.now(timezone.utc)))
            conn.commit()
            latencies.append(time.perf_counter() - began)
            i += 1
        queue.put({"rows": i, "latencies": latencies, "start": start, "end": time.monotonic()})


def _copy_worker(conninfo: str, client: int, rows: int, barrier, queue) -> None:
    now = datetime.now(timezone.utc)
    # COPY's text format built before the clock starts: the server's work is measured, not
    # Python's formatting.
    batches = []
    for first in range(0, rows, COPY_BATCH):
        buf = io.StringIO()
        for i in range(first, min(rows, first + COPY_BATCH)):
            buf.write("\t".join(r"\N" if v is None else str(v) for v in _row(client, i, now)))
            buf.write("\n")
        batches.append(buf.getvalue().encode())
    sql = f"COPY {COPY_TABLE} ({', '.join(CLAIM_COLUMNS)}) FROM STDIN"
    with psycopg.connect(conninfo) as conn:
        barrier.wait(timeout=120)
        latencies = []
        start = time.monotonic()
        for data in batches:
            began = time.perf_counter()
            with conn.cursor().copy(sql) as copy:
                copy.write(data)
            conn.commit()
            latencies.append(time.perf_counter() - began)
        queue.put({"rows": rows, "latencies": latencies, "start": start, "end": time.monotonic()})


def _guarded(worker, conninfo: str, client: int, arg, barrier, queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it kills us
    try:
        worker(conninfo, client, arg, barrier, queue)
    except BaseException as err:  # the others must not wait at the barrier for this one
        barrier.abort()
        queue.put({"crashed": f"client {client}: {err!r}"})


def _parallel(name: str, conninfo: str, table: str, worker, arg, clients: int) -> Result:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(claim_table_ddl(table))
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(clients), ctx.Queue()
    procs = [ctx.Process(target=_guarded, args=(worker, conninfo, i, arg, barrier, queue),
                         daemon=True) for i in range(clients)]
    for p in procs:
        p.start()
    result = Result(name, clients)
    starts, ends = [], []
    try:
        for _ in procs:
            report = queue.get(timeout=600)
            if "crashed" in report:
                result.crashed.append(report["crashed"])
                continue
            result.ok += report["rows"]
            result.latencies.extend(report["latencies"])
            starts.append(report["start"])
            ends.append(report["end"])
    except BaseException:  # interrupted, or a worker lost: the others must not run on
        for p in procs:
            p.kill()
        raise
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
    result.statuses[200] = result.ok  # rows, so that `failed` reads as for HTTP runs
    result.seconds = max(ends) - min(starts) if starts else 0.0
    return result


def insert_commit(conninfo: str, *, clients: int = 8, duration: float = 10.0) -> Result:
    return _parallel("raw INSERT+COMMIT", conninfo, INSERT_TABLE, _insert_worker, duration, clients)


def copy_rows(conninfo: str, *, clients: int = 8, rows_per_client: int = 50_000) -> Result:
    """Latencies are per batch of COPY_BATCH rows."""
    return _parallel("raw COPY", conninfo, COPY_TABLE, _copy_worker, rows_per_client, clients)


def time_group_by(conninfo: str, table: str = "journal_entries", repeat: int = 3) -> dict:
    """The month-close baseline: the best of `repeat` runs of one plain GROUP BY over the
    journal, the least a close must read."""
    sql = f"SELECT partner_id, period, kind, sum(points) FROM {table} GROUP BY 1, 2, 3"
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        best = math.inf
        for _ in range(repeat):
            began = time.perf_counter()
            groups = len(conn.execute(sql).fetchall())
            best = min(best, time.perf_counter() - began)
    return {"table": table, "rows": rows, "groups": groups, "ms": round(1000 * best, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("conninfo", help="postgresql://... of a scratch database")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--copy-rows", type=int, default=50_000, help="per client")
    args = parser.parse_args(argv)
    for result in (insert_commit(args.conninfo, clients=args.clients, duration=args.duration),
                   copy_rows(args.conninfo, clients=args.clients, rows_per_client=args.copy_rows)):
        print(json.dumps(result.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
