"""The month close over a month of bulk-loaded claims, against one plain GROUP BY of the same rows.

On the database DATABASE_URL names (bench/run.py runs it on its scratch database after the HTTP
scenarios, servers stopped):

1. Partners bench-p1 .. bench-p4 registered through the operator CLI (`partners add`, default
   terms), beside bench-shop: five partners claim.
2. `load_claims`: a month of claims (the month before the current one) loaded by COPY into
   journal_entries, postings, lots and consumptions, spread over every member in the database,
   with the members' balances brought up to date: earns, burns (from the member's loaded
   lots, the oldest first, one lot each) and full reversals of untouched earns, drawn 80/15/5
   (a burn for a member with nothing loaded becomes an earn: about 84/11/5 in the end), each
   entry with the postings, lot, consumptions, fingerprint, balance_after and entry_hash the
   ledger would have written (`entry_hash` below is coalition.ledger.hash_of spelled as string
   formatting, checked against it on the first entry of every kind). A burn takes only lots
   of this load (the oldest first), so it may leave an older lot of the member untouched;
   nothing the close or a claim reads depends on that. `flask ledger verify` passes over a
   loaded journal, the close's statements included. ANALYZE afterwards, as autovacuum would.
   On the journal partitioned by month (migration 0026) postings and consumptions also get
   their entry's period, and every entry its row in claim_keys (the trigger that writes it
   does not fire under COPY's session_replication_role = replica); the month's partitions must
   exist first (bench/partitions.py), or its rows land in DEFAULT. The lots are COPYed last,
   as the load's burns and reversals left them; with migration 0027 each gets last_period
   (the load's month: a burn or reversal of the load only consumes lots of the load) and
   spent_period ('open' while it holds points, else last_period), so that on PostgreSQL a
   used-up lot lands in its month's partition of lots and an open one in lots_open.
3. The sealer catches up (`sealer.seal`, timed): in production it seals every few seconds, so
   a close finds at most a few seconds of entries unsealed.
4. The baseline: the best of 3 of `SELECT partner_id, kind, sum(points) FROM journal_entries
   WHERE period = M GROUP BY 1, 2`.
5. Single earns booked by CLAIM_THREADS threads of this process (coalition.ledger.book_earn on
   sessions of their own, one commit each, members bench-m-*) for a few seconds: latency
   without a close. Then the close, `settlement.service.close` + commit in a child process
   (`--close PERIOD`, what `flask settlement close` runs, without click), while the same
   threads keep booking: their latency while the close holds the books lock. The child's
   peak RSS (VmHWM) beside its peak once the app was loaded and connected.
6. The close's statements must add up to what was loaded (points issued and redeemed, one
   statement per partner), or the run fails.

Prints one JSON document. Alone:

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/bench_x \\
        .venv/bin/python -m bench.month_close --claims 1000000
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import subprocess
import sys
import threading
import time
from array import array
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

from coalition.clock import iso_utc
from coalition.hashing import sha256_hex
from coalition.periods import add_months, expiry_of, month_start_utc

ROOT = Path(__file__).resolve().parent.parent
PARTNERS = ("bench-shop", "bench-p1", "bench-p2", "bench-p3", "bench-p4")
CLAIM_THREADS = 4
CHUNK = 50_000  # claims per COPY round
EARN, BURN, REVERSAL = "earn", "burn", "reversal"
NULL = "\\N"  # COPY's text format


# --- what the ledger writes, as text ------------------------------------------------------------

def _fingerprint(kind: str, external: str, points: int, occurred: str, target_claim: str = "") -> str:
    # coalition.ledger.fingerprint: canonical JSON, keys sorted
    if kind == EARN:
        doc = (f'{{"description":null,"kind":"earn","member_id":"{external}","occurred_at":'
               f'"{occurred}","pending_until":null,"points":{points}}}')
    elif kind == BURN:
        doc = (f'{{"description":null,"kind":"burn","member_id":"{external}","occurred_at":'
               f'"{occurred}","points":{points}}}')
    else:
        doc = (f'{{"claim_id":"{target_claim}","kind":"reversal","occurred_at":"{occurred}",'
               f'"points":{points}}}')
    return sha256_hex(doc.encode())


def entry_hash(kind: str, partner: str, claim: str, member: int, points: int, occurred: str,
               recorded: str, period: str, reverses: int | None, fp: str, balance_after: int,
               postings: list[tuple[str, int]]) -> str:
    """coalition.ledger.hash_of for an entry that is not late and not pending; `postings`
    sorted by account."""
    posted = ",".join(f'["{a}",{p}]' for a, p in postings)
    doc = (f'{{"balance_after":{balance_after},"claim_id":"{claim}","fingerprint":"{fp}",'
           f'"kind":"{kind}","late":false,"member_id":{member},"occurred_at":"{occurred}",'
           f'"partner_id":"{partner}","pending_until":null,"period":"{period}","points":{points},'
           f'"postings":[{posted}],"recorded_at":"{recorded}",'
           f'"reverses_id":{"null" if reverses is None else reverses}}}')
    return sha256_hex(doc.encode())


def _check_against_ledger(row: dict, postings: list[tuple[str, int]], external: str,
                          target_claim: str | None) -> None:
    """The string formatting above must give the ledger's own hashes."""
    from coalition.ledger import fingerprint, hash_of
    occurred = datetime.fromisoformat(row["occurred_at"].replace("Z", "+00:00"))
    if row["kind"] == EARN:
        fp = fingerprint(EARN, member_id=external, points=row["points"], occurred_at=occurred,
                         pending_until=None, description=None)
    elif row["kind"] == BURN:
        fp = fingerprint(BURN, member_id=external, points=row["points"], occurred_at=occurred,
                         description=None)
    else:
        fp = fingerprint(REVERSAL, claim_id=target_claim, points=row["points"], occurred_at=occurred)
    entry = {**row, "occurred_at": occurred,
             "recorded_at": datetime.fromisoformat(row["recorded_at"].replace("Z", "+00:00")),
             "late": False, "pending_until": None}
    if fp != row["fingerprint"] or hash_of(entry, dict(postings)) != row["entry_hash"]:
        raise AssertionError(f"bench loader hashes a {row['kind']} unlike coalition.ledger")


# --- the loader ---------------------------------------------------------------------------------

class _Member:
    """A member's lots loaded so far, oldest first (ids, remaining, points), and its balance."""
    __slots__ = ("ids", "left", "points", "head", "balance")

    def __init__(self, balance: int) -> None:
        self.ids, self.left, self.points = array("q"), array("q"), array("q")
        self.head, self.balance = 0, balance


def _journal_shape(conn) -> tuple[bool, bool]:
    """(postings and consumptions carry their entry's `period`, `claim_keys` exists): the
    journal partitioned by month (migration 0026) has both, the unpartitioned one neither. COPY
    must name the period column (it is NOT NULL, and the partition key), and claim keys are
    written by a trigger that COPY under session_replication_role = replica does not fire."""
    periodic = conn.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name IN ('postings', 'consumptions') AND column_name = 'period'").fetchone()[0]
    keyed = conn.execute("SELECT to_regclass('claim_keys') IS NOT NULL").fetchone()[0]
    return periodic == 2, bool(keyed)


def _lots_have_periods(conn) -> bool:
    """Whether lots carry last_period and spent_period (migration 0027; on PostgreSQL lots are
    then LIST-partitioned by spent_period): both are NOT NULL, COPY must write them."""
    return conn.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = 'lots' AND column_name IN ('last_period', 'spent_period')"
    ).fetchone()[0] == 2


def _next_ids(conn) -> dict[str, int]:
    return {t: conn.execute(f"SELECT coalesce(max(id), 0) FROM {t}").fetchone()[0] + 1
            for t in ("journal_entries", "postings", "lots", "consumptions")}


def load_claims(conninfo: str, *, period: str, claims: int, start: datetime, end: datetime,
                tz: str = "Europe/Berlin", expire_months: int = 36, partners=PARTNERS,
                seed: int = 1, tag: str = "mc", mix=(0.80, 0.15, 0.05),
                analyze: bool = True) -> dict:
    """`claims` entries booked into `period`, occurring evenly between `start` and `end` (which
    must lie in that month, in `tz`), over every member without debt. COPY in rounds of CHUNK
    claims, each round one transaction; foreign keys are not checked row by row during the
    COPY (session_replication_role = replica, as pg_restore does), the rows being built to
    satisfy them. On the partitioned journal (migration 0026) postings and consumptions get
    the period and every entry its claim key, as the ledger and its trigger would. `analyze`
    False leaves the ANALYZE to the caller (one for many loads). Returns counts, sums and
    seconds."""
    rng = random.Random(seed)
    began = time.perf_counter()
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute("SELECT id, external_id, balance FROM members "
                            "WHERE debt = 0 AND NOT locked ORDER BY id").fetchall()
        if not rows:
            raise RuntimeError("no members to book claims for")
        pks = [r[0] for r in rows]
        externals = [r[1] for r in rows]
        state: dict[int, _Member] = {}
        balances0 = {r[0]: r[2] for r in rows}
        del rows
        ids = _next_ids(conn)
        periodic, keyed = _journal_shape(conn)
        lot_periods = _lots_have_periods(conn)
        tail = f"\t{period}" if periodic else ""  # postings' and consumptions' period column
        first_entry = ids["journal_entries"]
        expires = iso_utc(expiry_of(start, tz, expire_months)[0])
        assert expiry_of(end - timedelta(seconds=1), tz, expire_months)[0] == expiry_of(start, tz, expire_months)[0]
        span = (end - start).total_seconds()
        t0 = start.timestamp()
        earn_cut, burn_cut = mix[0], mix[0] + mix[1]
        sums = {"by_partner": {p: 0 for p in partners}, "issued": {p: 0 for p in partners},
                "redeemed": {p: 0 for p in partners}, "kinds": {EARN: 0, BURN: 0, REVERSAL: 0},
                "postings": 0, "lots": 0, "consumptions": 0}
        checked = set()
        recent: list[tuple[int, int, int, str, str, int]] = []  # earns a reversal may undo
        # The load's lots, in id order: (member's index, its slot, the row's text up to
        # `remaining`, occurred_at); COPYed at the end, when their remaining is known.
        lot_rows: list[tuple[int, int, str, str]] = []
        conn.execute("SET session_replication_role = replica")
        done = 0
        while done < claims:
            n = min(CHUNK, claims - done)
            entries, postings, consumptions, keys = (io.StringIO() for _ in range(4))
            for i in range(done, done + n):
                moment = datetime.fromtimestamp(int(t0 + span * i / claims), timezone.utc)
                occurred = iso_utc(moment)
                recorded = iso_utc(moment + timedelta(seconds=2))
                entry_id = ids["journal_entries"]
                ids["journal_entries"] += 1
                claim = f"{tag}-{i}"
                draw = rng.random()
                kind = EARN if draw < earn_cut else BURN if draw < burn_cut else REVERSAL
                reverses, target_claim = None, None
                if kind == REVERSAL:
                    picked = None
                    while recent and picked is None:
                        candidate = recent.pop(rng.randrange(len(recent)))
                        m = state[candidate[0]]
                        slot = candidate[1]
                        if slot >= m.head and m.left[slot] == m.points[slot]:
                            picked = candidate
                    if picked is None:
                        kind = EARN
                if kind == BURN:
                    index = rng.randrange(len(pks))
                    m = state.get(index)
                    while m is not None and m.head < len(m.ids) and m.left[m.head] == 0:
                        m.head += 1  # a reversed lot
                    if m is None or m.head == len(m.ids):
                        kind = EARN  # nothing of this load to spend
                if kind == EARN:
                    index = rng.randrange(len(pks))
                    m = state.get(index)
                    if m is None:
                        m = state[index] = _Member(balances0[pks[index]])
                    partner = partners[rng.randrange(len(partners))]
                    points = rng.randint(1, 100)
                    member = pks[index]
                    m.balance += points
                    lot_id = ids["lots"]
                    ids["lots"] += 1
                    m.ids.append(lot_id)
                    m.left.append(points)
                    m.points.append(points)
                    recent.append((index, len(m.ids) - 1, entry_id, partner, claim, points))
                    if len(recent) > 5000:
                        recent.pop(0)
                    posts = sorted([(f"issued:{partner}", -points), (f"member:{member}", points)])
                    fp = _fingerprint(EARN, externals[index], points, occurred)
                    # Written once the load is done, with what its burns and reversals left.
                    lot_rows.append((index, len(m.ids) - 1,
                                     f"{lot_id}\t{member}\t{entry_id}\t{partner}\t{points}\t",
                                     occurred))
                    sums["issued"][partner] += points
                    sums["lots"] += 1
                elif kind == BURN:
                    partner = partners[rng.randrange(len(partners))]
                    slot = m.head
                    points = min(rng.randint(1, 50), m.left[slot])
                    member = pks[index]
                    m.left[slot] -= points
                    if m.left[slot] == 0:
                        m.head += 1
                    m.balance -= points
                    posts = sorted([(f"member:{member}", -points), (f"redeemed:{partner}", points)])
                    fp = _fingerprint(BURN, externals[index], points, occurred)
                    consumptions.write(f"{ids['consumptions']}\t{entry_id}\t{m.ids[slot]}\t\\N\t"
                                       f"burn\t{points}{tail}\n")
                    ids["consumptions"] += 1
                    sums["redeemed"][partner] += points
                    sums["consumptions"] += 1
                else:
                    index, slot, reverses, partner, target_claim, points = picked
                    m = state[index]
                    member = pks[index]
                    m.left[slot] = 0
                    m.balance -= points
                    posts = sorted([(f"issued:{partner}", points), (f"member:{member}", -points)])
                    fp = _fingerprint(REVERSAL, "", points, occurred, target_claim)
                    consumptions.write(f"{ids['consumptions']}\t{entry_id}\t{m.ids[slot]}\t\\N\t"
                                       f"earn_reversal\t{points}{tail}\n")
                    ids["consumptions"] += 1
                    sums["issued"][partner] -= points
                    sums["consumptions"] += 1
                balance_after = m.balance
                h = entry_hash(kind, partner, claim, member, points, occurred, recorded, period,
                               reverses, fp, balance_after, posts)
                if kind not in checked:
                    _check_against_ledger(
                        {"kind": kind, "partner_id": partner, "claim_id": claim, "member_id": member,
                         "points": points, "occurred_at": occurred, "recorded_at": recorded,
                         "period": period, "reverses_id": reverses, "fingerprint": fp,
                         "balance_after": balance_after, "entry_hash": h},
                        posts, externals[index], target_claim)
                    checked.add(kind)
                entries.write(f"{entry_id}\t{kind}\t{partner}\t{claim}\t{member}\t{points}\t"
                              f"{occurred}\t{recorded}\t{period}\tf\t\\N\t\\N\t"
                              f"{NULL if reverses is None else reverses}\t"
                              f"{fp}\tbooked\t{balance_after}\t{h}\n")
                if keyed:
                    keys.write(f"{partner}\t{claim}\t{entry_id}\t{period}\n")
                for account, value in posts:
                    postings.write(f"{ids['postings']}\t{entry_id}\t{account}\t{value}{tail}\n")
                    ids["postings"] += 1
                sums["postings"] += len(posts)
                sums["kinds"][kind] += 1
                sums["by_partner"][partner] += 1
            with conn.cursor() as cur:
                period_column = ", period" if periodic else ""
                for table, columns, buffer in (
                        ("journal_entries", "id, kind, partner_id, claim_id, member_id, points, "
                         "occurred_at, recorded_at, period, late, pending_until, description, "
                         "reverses_id, fingerprint, status, balance_after, entry_hash", entries),
                        ("postings", f"id, entry_id, account, points{period_column}", postings),
                        ("consumptions", f"id, entry_id, lot_id, debt_lot_id, kind, points"
                                         f"{period_column}", consumptions),
                        *((("claim_keys", "partner_id, claim_id, entry_id, period", keys),)
                          if keyed else ())):
                    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                        copy.write(buffer.getvalue())
            conn.commit()
            done += n
        # The lots, as the load's burns and reversals left them (in the order of their ids, as
        # the ledger inserts them), and the members' balances: one UPDATE.
        lot_columns = "id, member_id, entry_id, issuer_id, points, remaining, occurred_at, " \
                      "available_at, expires_at"
        if lot_periods:
            lot_columns += ", last_period, spent_period"
        with conn.cursor() as cur:
            with cur.copy(f"COPY lots ({lot_columns}) FROM STDIN") as copy:
                buffer = io.StringIO()
                for number, (index, slot, head, occurred) in enumerate(lot_rows, 1):
                    left = state[index].left[slot]
                    buffer.write(f"{head}{left}\t{occurred}\t\\N\t{expires}")
                    if lot_periods:
                        # last_period: the lot's earn's month and its consumptions' (a burn or
                        # reversal of this load only consumes lots of this load: `period`
                        # all); spent_period: 'open' while it holds points, else last_period.
                        buffer.write(f"\t{period}\t{'open' if left > 0 else period}")
                    buffer.write("\n")
                    if number % CHUNK == 0:
                        copy.write(buffer.getvalue())
                        buffer = io.StringIO()
                copy.write(buffer.getvalue())
            del lot_rows
            cur.execute("CREATE TEMP TABLE bench_balance (id bigint, balance bigint) ON COMMIT DROP")
            with cur.copy("COPY bench_balance FROM STDIN") as copy:
                for index, m in state.items():
                    copy.write(f"{pks[index]}\t{m.balance}\n")
            cur.execute("UPDATE members SET balance = b.balance FROM bench_balance b "
                        "WHERE members.id = b.id")
            for table, key in (("journal_entries", "journal_entries"), ("postings", "postings"),
                               ("lots", "lots"), ("consumptions", "consumptions")):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                            f"(SELECT max(id) FROM {table}))")
        conn.commit()
        loaded = time.perf_counter() - began
        conn.autocommit = True
        conn.execute("SET session_replication_role = DEFAULT")
        analyze_began = time.perf_counter()
        if analyze:
            for table in ("journal_entries", "postings", "lots", "consumptions", "members",
                          *(("claim_keys",) if keyed else ())):
                conn.execute(f"ANALYZE {table}")
        analyzed = time.perf_counter() - analyze_began
    return {"period": period, "claims": claims, "members": len(pks),
            "members_touched": len(state), "first_entry_id": first_entry, **sums,
            "load_s": round(loaded, 2), "analyze_s": round(analyzed, 2),
            "rows_per_s": round((claims + sums["postings"] + sums["lots"] + sums["consumptions"])
                                / loaded)}


# --- the scenario -------------------------------------------------------------------------------

def previous_period(now: datetime, tz: str) -> tuple[str, datetime, datetime]:
    """The month before `now`'s (in `tz`), with the UTC instants it starts and ends at."""
    from coalition.periods import month_of
    year, month = add_months(*month_of(now, tz), -1)
    return (f"{year:04d}-{month:02d}", month_start_utc(year, month, tz),
            month_start_utc(*add_months(year, month, 1), tz))


def group_by(conninfo: str, period: str, repeat: int = 3) -> dict:
    """The baseline: the least a close must read, one plain GROUP BY over the month's rows."""
    sql = ("SELECT partner_id, kind, sum(points) FROM journal_entries WHERE period = %s "
           "GROUP BY 1, 2")
    with psycopg.connect(conninfo) as conn:
        times, groups = [], 0
        for _ in range(repeat):
            began = time.perf_counter()
            groups = len(conn.execute(sql, (period,)).fetchall())
            times.append(time.perf_counter() - began)
    return {"s": round(min(times), 4), "runs_s": [round(t, 4) for t in times], "groups": groups}


class Claimers:
    """CLAIM_THREADS threads booking single earns (coalition.ledger.book_earn, one session and
    one commit per earn) for random bench members, recording each earn's latency."""

    def __init__(self, app, members: list[str], partner: str = PARTNERS[0]) -> None:
        self.app, self.members, self.partner = app, members, partner
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self.latencies, self.errors = [], []
        self._began = time.perf_counter()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                         for n in range(CLAIM_THREADS)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> dict:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        return {**latency_summary(self.latencies, self.errors),
                "window_s": round(time.perf_counter() - self._began, 3)}

    def _run(self, number: int) -> None:
        from coalition import clock
        from coalition.database import db
        from coalition.ledger import Rules, book_earn
        rng = random.Random(number)
        tag = f"{os.getpid()}-{time.time_ns()}-{number}"
        with self.app.app_context():
            rules = Rules.from_config(self.app.config)
            i = 0
            while not self._stop.is_set():
                i += 1
                began = time.perf_counter()
                try:
                    now = clock.now()
                    book_earn(db.session, partner_id=self.partner, claim_id=f"cl-{tag}-{i}",
                              member_id=rng.choice(self.members), points=rng.randint(1, 100),
                              occurred_at=now, now=now, rules=rules)
                    db.session.commit()
                except Exception as exc:  # reported, and the run fails
                    db.session.rollback()
                    self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                finally:
                    db.session.remove()
                self.latencies.append(time.perf_counter() - began)


def latency_summary(latencies: list[float], errors: list[str] | None = None) -> dict:
    ordered = sorted(latencies)

    def rank(q: float) -> float:  # nearest rank, as bench.load.Result.percentile
        if not ordered:
            return float("nan")
        return round(1000 * ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))], 1)
    return {"earns": len(ordered), "p50_ms": rank(0.5), "p99_ms": rank(0.99),
            "max_ms": round(1000 * ordered[-1], 1) if ordered else float("nan"),
            "errors": len(errors or []), "error_samples": (errors or [])[:3],
            "latencies_s": [round(x, 5) for x in latencies]}


def peak_rss_kb() -> int:
    """This process's peak RSS since its exec (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that over exec from the forked parent, here the loader with its hundreds of MB."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1])


def close_child(period: str, *, rollback: bool = False) -> int:
    """`--close PERIOD`: what `flask settlement close` runs (settlement.service.close, then the
    commit), timed from the call to the commit, with the time of its parts (sealing, the
    month's flows) and this process's RSS once the app is loaded. `rollback`: the same close
    rolled back instead of committed, so that a benchmark can time it again on the same month
    (bench/partitions.py)."""
    from coalition import clock, create_app, sealer
    from coalition.database import db
    from settlement import service, signing
    app = create_app()
    parts: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - began
        return wrapper

    sealer.seal = timed("seal_s", sealer.seal)  # this process only: what the close calls
    service.month_flows = timed("flows_s", service.month_flows)
    with app.app_context():
        key = signing.signing_key(app.config["COALITION_SIGNING_KEY_FILE"])
        db.session.execute(db.text("SELECT 1"))  # connected before the clock starts
        rss_ready = peak_rss_kb()
        print("ready", flush=True)  # the parent starts its claims now, not during our start-up
        time.sleep(0.5)
        began = time.perf_counter()
        report = service.close(db.session, period, now=clock.now(),
                               tz=app.config["COALITION_TIMEZONE"], key=key, actor="bench")
        if rollback:
            db.session.rollback()
        else:
            db.session.commit()
        seconds = time.perf_counter() - began
    print(json.dumps({"seconds": round(seconds, 3), "rss_ready_kb": rss_ready,
                      "rss_peak_kb": peak_rss_kb(),
                      **{k: round(v, 3) for k, v in parts.items()},
                      "totals": report["totals"], "statements": len(report["statements"]),
                      "committed": not rollback}))
    return 0


def run_close(period: str, env: dict, on_ready, *, rollback: bool = False) -> dict:
    """The close in a child process; `on_ready()` once the child has loaded the app and is
    about to close (half a second later). `rollback`: see close_child."""
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bench.month_close", "--close", period,
                             *(["--rollback"] if rollback else [])],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    if first.strip() == b"ready":
        on_ready()
        first = b""
    out, err = first + proc.stdout.read(), proc.stderr.read()
    proc.wait()
    wall = time.perf_counter() - began
    try:
        result = json.loads(out)
    except ValueError:
        return {"error": f"close exited {proc.returncode}: {(out + err).decode(errors='replace')[-1500:]}"}
    return {**result, "process_wall_s": round(wall, 3), "exit_code": proc.returncode}


def scenario(claims: int, *, baseline_s: float = 5.0) -> dict:
    from bench.load import member_ids
    from coalition import clock, create_app, sealer
    from coalition.database import db

    env = dict(os.environ)
    conninfo = env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    app = create_app()
    tz = app.config["COALITION_TIMEZONE"]
    runner = app.test_cli_runner()
    report: dict = {"problems": []}
    for partner in PARTNERS[1:]:
        result = runner.invoke(args=["partners", "add", partner, "--name", partner])
        if result.exit_code != 0:
            report["problems"].append(f"partners add {partner}: {result.output[-500:]}")
    period, start, end = previous_period(clock.now(), tz)
    report["load"] = loaded = load_claims(conninfo, period=period, claims=claims, start=start,
                                          end=end, tz=tz,
                                          expire_months=app.config["POINTS_EXPIRE_MONTHS"])
    with app.app_context():
        began = time.perf_counter()
        blocks = sealer.seal(db.session, now=clock.now())
        db.session.commit()
        report["seal"] = {"s": round(time.perf_counter() - began, 2),
                          "entries": sum(b.entry_count for b in blocks)}
        db.session.remove()
    report["group_by"] = group_by(conninfo, period)
    with psycopg.connect(conninfo) as conn:
        members = [r[0] for r in conn.execute(
            "SELECT external_id FROM members WHERE external_id LIKE 'bench-m-%'")]
    members = members or member_ids(1)
    claimers = Claimers(app, members)
    claimers.start()
    time.sleep(baseline_s)
    report["claims_without_close"] = claimers.stop()
    report["close"] = close = run_close(period, env, claimers.start)
    time.sleep(0.5)
    report["claims_during_close"] = claimers.stop()  # from half a second before to after
    if "error" in close:
        report["problems"].append(close["error"])
    else:
        totals = close["totals"]
        issued, redeemed = sum(loaded["issued"].values()), sum(loaded["redeemed"].values())
        if (totals["points_issued"], totals["points_redeemed"]) != (issued, redeemed):
            report["problems"].append(
                f"month close: statements say issued {totals['points_issued']}, redeemed "
                f"{totals['points_redeemed']}; the load booked {issued}, {redeemed}")
        with psycopg.connect(conninfo) as conn:  # one statement per party, the operator too
            parties = conn.execute("SELECT count(*) FROM partners").fetchone()[0]
        if close["statements"] != parties:
            report["problems"].append(f"month close: {close['statements']} statements, "
                                      f"expected {parties} (one per partner)")
    for name in ("claims_without_close", "claims_during_close"):
        if report[name]["errors"]:
            report["problems"].append(f"{name}: {report[name]['error_samples']}")
    report["ratio_close_to_group_by"] = (round(close["seconds"] / report["group_by"]["s"], 1)
                                         if "seconds" in close else None)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--claims", type=int, default=1_000_000)
    p.add_argument("--close", metavar="PERIOD", help=argparse.SUPPRESS)
    p.add_argument("--rollback", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.close:
        return close_child(args.close, rollback=args.rollback)
    report = scenario(args.claims)
    print(json.dumps(report, indent=2))
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
