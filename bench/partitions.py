"""The journal partitioned by month (migration 0026, issue 13 item 4) and lots by the month they
were used up in (migration 0027) at size: the single-claim rates (earns and burns) and a
month's close over 10^7 journal entries spread over 24 months, against the same over an empty
journal, in the same run.

The issue's target: "with 10^7 journal entries over 24 months, the single-claim rate and a
month's close within 1.2x of an empty database", i.e. full/empty close time at most 1.2 and
full/empty earn rate at least 0.83; the same 0.83 for single burns, the path migration 0027
is about (every burn reads the member's open lots, in lots_open, and updates them).

1. Two databases of our own on the server of DATABASE_URL (or 127.0.0.1:5432 as postgres),
   bench_part_empty_<pid> and bench_part_full_<pid>, both `flask db upgrade`d to head; in
   each, through the operator CLI, the partners bench-shop (with one ES256 key, the same in
   both), bench-p1 .. bench-p4 and the operator issuer `coalition`, and the same members
   (`members import` of one CSV: the 2,000 bench-m-* the HTTP load hits and --import-members
   more).
2. Each database is prepared by a child process (`--prepare`). "full" first gets its history:
   for each of the --months months before the month to close, that month's partitions
   (`ledger partitions ensure --month`), then --total / --months claims loaded by COPY
   (bench.month_close.load_claims: earns, burns, reversals with their postings, lots,
   consumptions, claim keys and hashes, over every member), sealed month by month; then those
   months are closed in order (settlement.service.close, as production would have at each
   month's end: months close in order, so the month to close needs them closed). Both
   databases then get the same month to close (the month before the current one,
   --close-claims claims, the same seed: the same claims), sealed (timed apart, as in
   bench/month_close.py: in production the sealer keeps up), then VACUUM (ANALYZE) and a
   CHECKPOINT, so that neither autovacuum nor a checkpoint of the load runs into the
   measurements. Rows in each partition are counted (lots too: lots_open, the months, DEFAULT);
   DEFAULT must hold none.
3. The plans: in a child per database (`--explain`), the statements of the close's month_flows
   (EXPLAIN ANALYZE: time, and which partitions each reads) and of one single earn
   (coalition.ledger.book_earn, rolled back; plain EXPLAIN: the partitions each may touch),
   and of one single burn of 1 point (coalition.ledger.book_burn, rolled back, of the bench
   member with the most open points; plain EXPLAIN).
4. The close: bench.month_close.run_close (settlement.service.close + commit in a child, what
   `flask settlement close` runs, timed from the call to the commit), --close-rounds times per
   database, empty and full taking turns (the first of each pair alternating); every round
   but the last rolls its close back, so that the same month can be closed again.
5. The single-claim rate: the service under gunicorn against each database (bench/run.py's
   Server: deploy/gunicorn.conf.py, 2 workers x 8 threads, rate limits off), signed single
   earns from 8 client processes (bench/load.py): a warm-up of each, then --rounds rounds of
   --duration seconds, empty and full taking turns, so that other work on this shared machine
   hits both alike. Every 2xx earn must be a journal row afterwards, in the current month's
   partition.
6. The single-burn rate, on the same servers after the earns: signed single burns (POST
   /v1/burn, bench.load.burn_bodies) of 1 to BURN_MAX_POINTS points of the bench-m-* members,
   each client process drawing on its own eighth of them and never on more points than a
   member has (read from the database before each run: burn_budgets), so that every burn
   should answer 201: a warm-up of each, then --rounds rounds of --duration seconds, empty
   and full taking turns. Every 2xx burn must be a journal row afterwards; the lots the burns
   emptied leave lots_open for the current month's partition of lots; DEFAULT stays empty.

Prints a table and one JSON document (also written to bench/results/); exits 1 when anything
failed or did not add up. The databases are always dropped, the servers always stopped.

    .venv/bin/python -m bench.partitions                     # 10^7 entries: 33-45 minutes here
    .venv/bin/python -m bench.partitions --total 200000      # a quick try: about 7-9 minutes
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from bench import enrol_import, load, month_close, run
from bench.run import log

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("empty", "full")
# lots: LIST-partitioned by spent_period since migration 0027 (lots_open, one per month, DEFAULT)
PARTITIONED = ("journal_entries", "postings", "consumptions", "lots")
_PARTITION = re.compile(r"^(journal_entries|postings|consumptions|lots)_(\d{4}_\d{2}|default)$"
                        r"|^lots_open$")
TARGET_TIME_RATIO = 1.2
BURN_MAX_POINTS = 10  # points per single burn at most (1 to 10, within what the member has)


def options(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--total", type=int, default=10_000_000,
                   help="journal entries of the full database's history")
    p.add_argument("--months", type=int, default=24, help="months the history spreads over")
    p.add_argument("--close-claims", type=int, default=200_000,
                   help="claims of the month to close, the same in both databases")
    p.add_argument("--close-rounds", type=int, default=5,
                   help="closes per database, taking turns (all but the last rolled back)")
    p.add_argument("--rounds", type=int, default=2, help="measured single-earn runs per database")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per single-earn run")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--members", type=int, default=2000, help="members the HTTP load hits")
    p.add_argument("--import-members", type=int, default=200_000,
                   help="more members, imported; the history spreads over all of them")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--keep-logs", action="store_true")
    p.add_argument("--prepare", choices=ROLES, help=argparse.SUPPRESS)
    p.add_argument("--explain", metavar="PERIOD", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.close_rounds < 1 or args.rounds < 1 or args.months < 1:
        p.error("--close-rounds, --rounds and --months must be at least 1")
    return args


# --- in a child, on the database DATABASE_URL names ----------------------------------------------

def _cli(runner, *args: str) -> dict:
    result = runner.invoke(args=list(args))
    if result.exit_code != 0:
        raise RuntimeError(f"flask {' '.join(args)} exited {result.exit_code}: "
                           f"{result.output[-1000:]}")
    return json.loads(result.output) if result.output.strip().startswith("{") else {}


def _periods(now: datetime, tz: str, months: int) -> tuple[str, list[tuple[str, datetime, datetime]]]:
    """The month to close (the month before now's), and the `months` months before it, oldest
    first, each with the UTC instants it starts and ends at."""
    from coalition.periods import add_months, month_of, month_start_utc
    close, _, _ = month_close.previous_period(now, tz)
    year, month = month_of(now, tz)
    history = []
    for back in range(months + 1, 1, -1):
        y, m = add_months(year, month, -back)
        history.append((f"{y:04d}-{m:02d}", month_start_utc(y, m, tz),
                        month_start_utc(*add_months(y, m, 1), tz)))
    return close, history


def _partition_rows(conninfo: str) -> dict[str, dict[str, int]]:
    """Exact rows in every attached partition of the partitioned tables."""
    with psycopg.connect(conninfo) as conn:
        names = conn.execute(
            "SELECT parent.relname, child.relname FROM pg_inherits "
            "JOIN pg_class parent ON parent.oid = inhparent JOIN pg_class child ON child.oid = inhrelid "
            "WHERE parent.relname = ANY(%s) ORDER BY 1, 2", (list(PARTITIONED),)).fetchall()
        rows: dict[str, dict[str, int]] = {t: {} for t in PARTITIONED}
        for table, name in names:
            rows[table][name] = conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
    return rows


def _sum_loads(loads: list[dict]) -> dict:
    keys = ("claims", "postings", "lots", "consumptions")
    total = {k: sum(x[k] for x in loads) for k in keys}
    total["kinds"] = {k: sum(x["kinds"][k] for x in loads) for k in loads[0]["kinds"]}
    total["load_s"] = round(sum(x["load_s"] for x in loads), 1)
    rows = total["claims"] + total["postings"] + total["lots"] + total["consumptions"]
    total["rows_per_s"] = round(rows / total["load_s"]) if total["load_s"] else None
    return total


def prepare(args) -> int:
    """`--prepare ROLE`: step 2 of the docstring on DATABASE_URL's database; one JSON document."""
    from coalition import clock, create_app, sealer
    from coalition.database import db
    from settlement import service, signing

    app = create_app()
    tz, expire = app.config["COALITION_TIMEZONE"], app.config["POINTS_EXPIRE_MONTHS"]
    conninfo = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    runner = app.test_cli_runner()
    role = args.prepare
    report: dict = {"role": role, "problems": []}
    for partner in month_close.PARTNERS[1:]:
        _cli(runner, "partners", "add", partner, "--name", partner)
    with tempfile.TemporaryDirectory(prefix="bench-part-") as tmp:
        cards = Path(tmp) / "cards.csv"
        enrol_import.write_csv(cards, args.import_members)
        with open(cards, "a", encoding="utf-8") as out:  # the members the HTTP load hits
            out.write("".join(f"{m}\n" for m in load.member_ids(args.members)))
        imported = _cli(runner, "members", "import", str(cards))
    report["members"] = imported
    if imported.get("created") != args.members + args.import_members:
        raise RuntimeError(f"members import: {imported}")
    close, history = _periods(clock.now(), tz, args.months)
    wanted = [close] + ([p for p, _, _ in history] if role == "full" else [])
    ensure_args = [a for p in wanted for a in ("--month", p)]
    report["partitions_ensure"] = ensured = _cli(runner, "ledger", "partitions", "ensure",
                                                 *ensure_args)
    if not ensured.get("partitioned"):
        raise RuntimeError(f"the journal is not partitioned (migration 0026?): {ensured}")

    if role == "full":
        loads, seal_s = [], 0.0
        per_month, extra = divmod(args.total, args.months)
        began = time.perf_counter()
        for i, (period, start, end) in enumerate(history):
            claims = per_month + (1 if i < extra else 0)
            loaded = month_close.load_claims(conninfo, period=period, claims=claims, start=start,
                                             end=end, tz=tz, expire_months=expire,
                                             seed=100 + i, tag=f"h{period}", analyze=False)
            loads.append(loaded)
            # Sealed month by month, as the sealer keeps up in production; the close of the
            # month to close then finds only that month unsealed, as in month_close.py.
            sealed_began = time.perf_counter()
            with app.app_context():
                sealer.seal(db.session, now=clock.now(),
                            upto=loaded["first_entry_id"] + claims - 1)
                db.session.commit()
                db.session.remove()
            seal_s += time.perf_counter() - sealed_began
            log(f"full: {period} {claims:,} claims loaded in {loaded['load_s']:.0f} s, "
                f"{sum(x['claims'] for x in loads):,} in all after "
                f"{time.perf_counter() - began:.0f} s")
        report["history"] = {**_sum_loads(loads), "months": len(loads),
                             "first": history[0][0], "last": history[-1][0],
                             "seal_s": round(seal_s, 1),
                             "wall_s": round(time.perf_counter() - began, 1)}
        # Months close in order from the first with claims (coalition.books.close_books).
        closes = []
        with app.app_context():
            key = signing.signing_key(app.config["COALITION_SIGNING_KEY_FILE"])
            for period, _, _ in history:
                close_began = time.perf_counter()
                service.close(db.session, period, now=clock.now(), tz=tz, key=key, actor="bench")
                db.session.commit()
                closes.append(round(time.perf_counter() - close_began, 2))
            db.session.remove()
        report["history_closes_s"] = closes
        log(f"full: {len(closes)} months closed in {sum(closes):.0f} s "
            f"(each {min(closes):.2f}-{max(closes):.2f} s)")

    _, start, end = month_close.previous_period(clock.now(), tz)
    loaded = month_close.load_claims(conninfo, period=close, claims=args.close_claims,
                                     start=start, end=end, tz=tz, expire_months=expire,
                                     analyze=False)
    report["close_month"] = {k: loaded[k] for k in ("period", "claims", "kinds", "issued",
                                                     "redeemed", "load_s", "rows_per_s")}
    with app.app_context():
        began = time.perf_counter()
        blocks = sealer.seal(db.session, now=clock.now())
        db.session.commit()
        report["close_month"]["seal_s"] = round(time.perf_counter() - began, 2)
        report["close_month"]["sealed"] = sum(b.entry_count for b in blocks)
        db.session.remove()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        began = time.perf_counter()
        conn.execute("VACUUM (ANALYZE)")
        report["vacuum_analyze_s"] = round(time.perf_counter() - began, 1)
        began = time.perf_counter()
        conn.execute("CHECKPOINT")
        report["checkpoint_s"] = round(time.perf_counter() - began, 1)
        report["database_bytes"] = conn.execute(
            "SELECT pg_database_size(current_database())").fetchone()[0]
    report["partition_rows"] = rows = _partition_rows(conninfo)
    for table in PARTITIONED:
        stray = rows[table].get(f"{table}_default", 0)
        if stray:
            report["problems"].append(f"{table}_default holds {stray} rows")
    report["journal_entries"] = sum(rows["journal_entries"].values())
    print(json.dumps(report))
    return 0


def _partitions_in(plan) -> set[str]:
    """The partitions a plan (EXPLAIN's JSON) reads: with ANALYZE, only the nodes that ran
    (run-time pruning leaves the others at 0 loops)."""
    found = set()
    if isinstance(plan, dict):
        if plan.get("Actual Loops") == 0:
            return found
        name = plan.get("Relation Name")
        if name and _PARTITION.match(name):
            found.add(name)
        for value in plan.values():
            found |= _partitions_in(value)
    elif isinstance(plan, list):
        for value in plan:
            found |= _partitions_in(value)
    return found


def _outline(plan, depth: int = 0) -> list[str]:
    """A plan (EXPLAIN's JSON) as one short line per node: type, relation, rows, loops."""
    lines = []
    if isinstance(plan, list):
        for node in plan:
            lines += _outline(node.get("Plan", node), depth)
        return lines
    if plan.get("Actual Loops") == 0:
        return lines
    rows = plan.get("Actual Rows", plan.get("Plan Rows"))
    lines.append("  " * depth + f"{plan.get('Node Type')} {plan.get('Relation Name', '')} "
                 f"rows={rows} loops={plan.get('Actual Loops', '-')}".replace("  rows", " rows"))
    for child in plan.get("Plans", []):
        lines += _outline(child, depth + 1)
    return lines


def explain(period: str) -> int:
    """`--explain PERIOD`: the statements of the close's month_flows, EXPLAIN ANALYZEd, and of
    one single earn (rolled back), EXPLAINed, each with the partitions its plan reads."""
    from sqlalchemy import event

    from coalition import clock, create_app
    from coalition.database import db
    from coalition.ledger import Rules, book_burn, book_earn
    from settlement import service

    app = create_app()
    captured: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, executemany):
        if not executemany:
            captured.append((statement, parameters))

    def explained(statements, analyze: bool) -> list[dict]:
        out = []
        for statement, parameters in statements:
            if statement.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK", "SET")):
                continue
            option = "ANALYZE, " if analyze else ""
            plan = db.session.connection().exec_driver_sql(
                f"EXPLAIN ({option}FORMAT JSON) {statement}", parameters).scalar()
            plan = plan if isinstance(plan, list) else json.loads(plan)
            partitions = sorted(_partitions_in(plan))
            out.append({"sql": " ".join(statement.split())[:160],
                        "partitions": len(partitions),
                        "which": partitions if len(partitions) <= 6 else
                        partitions[:3] + ["..."] + partitions[-2:],
                        **({"ms": round(plan[0]["Execution Time"], 1)} if analyze else {}),
                        "plan": _outline(plan)[:60]})
            db.session.rollback()
        return out

    with app.app_context():
        engine = db.engine
        event.listen(engine, "before_cursor_execute", capture)
        service.month_flows(db.session, period)
        db.session.rollback()
        flows = list(captured)
        captured.clear()
        now = clock.now()
        book_earn(db.session, partner_id=month_close.PARTNERS[0],
                  claim_id=f"explain-{time.time_ns()}", member_id=load.member_ids(1)[0],
                  points=10, occurred_at=now, now=now, rules=Rules.from_config(app.config))
        db.session.flush()
        earn = list(captured)
        db.session.rollback()
        captured.clear()
        # A single burn of 1 point of the bench member with the most points (its oldest lot
        # may run out: then the UPDATE moves it from lots_open to the month's partition).
        burner = db.session.execute(db.text(
            "SELECT m.external_id FROM members m JOIN lots l ON l.member_id = m.id "
            "WHERE m.external_id LIKE :like AND l.spent_period = 'open' "
            "GROUP BY 1 ORDER BY sum(l.remaining) DESC, 1 LIMIT 1"),
            {"like": load.MEMBER_PREFIX + "%"}).scalar()
        db.session.rollback()
        captured.clear()
        burn = []
        if burner is not None:
            now = clock.now()
            book_burn(db.session, partner_id=month_close.PARTNERS[0],
                      claim_id=f"explain-burn-{time.time_ns()}", member_id=burner, points=1,
                      occurred_at=now, now=now, rules=Rules.from_config(app.config))
            db.session.flush()
            burn = list(captured)
            db.session.rollback()
        event.remove(engine, "before_cursor_execute", capture)
        report = {"month_flows": explained(flows, analyze=True),
                  "single_earn": explained(earn, analyze=False),
                  "single_burn": explained(burn, analyze=False)}
        if burner is None:
            report["problems"] = ["no bench member with an open lot to EXPLAIN a burn of"]
        db.session.remove()
    print(json.dumps(report))
    return 0


# --- the run -------------------------------------------------------------------------------------

class Database(run.Scratch):
    """run.Scratch under a name that says which of the two it is."""

    def __init__(self, role: str) -> None:  # noqa: super().__init__ would pick its own name
        self.role = role
        self.name = f"bench_part_{role}_{os.getpid()}"
        self.url = run.server_url().set(database=self.name)
        self._admin = run.libpq(run.server_url().set(database="postgres"))
        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')


def child(env: dict, *args: str) -> dict:
    """This module in a child process on env's database; its stderr (progress) passes through."""
    done = subprocess.run([sys.executable, "-m", "bench.partitions", *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, text=True)
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"problems": [f"bench.partitions {' '.join(args)} exited {done.returncode}: "
                             f"{done.stdout[-1500:]}"]}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def burn_budgets(conninfo: str, members: int) -> dict[str, int]:
    """The points each bench-m-* member can burn now (its spendable lots, as
    vocabulary.spendable has them, less its debt and open holds): what single_burns may take."""
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT m.external_id, coalesce(sum(l.remaining) FILTER (WHERE l.remaining > 0 "
            "  AND l.spent_period = 'open' AND l.expires_at > now() "
            "  AND (l.available_at IS NULL OR l.available_at <= now())), 0) - m.debt "
            "  - coalesce((SELECT sum(h.points) FROM holds h WHERE h.member_id = m.id "
            "              AND h.status = 'open' AND h.expires_at > now()), 0) "
            "FROM members m LEFT JOIN lots l ON l.member_id = m.id AND l.spent_period = 'open' "
            "WHERE m.external_id = ANY(%s) GROUP BY m.id, m.external_id, m.debt",
            (load.member_ids(members),)).fetchall()
    return {member: max(0, int(points)) for member, points in rows}


def single_burns(name: str, server, signer, args, duration: float, max_rate: float,
                 budgets: dict[str, int]) -> load.Result:
    """Single signed burns (POST /v1/burn) from args.clients processes, of the bench-m-*
    members' points as `budgets` has them; tokens for `max_rate` burns per second."""
    per_client = int(max_rate * duration / args.clients) + 1
    return load.run(name, server.url, "/v1/burn", signer,
                    load.burn_bodies(budgets, args.clients, per_client, BURN_MAX_POINTS),
                    clients=args.clients, duration=duration)


def lots_rows(conninfo: str) -> dict[str, int]:
    """Exact rows in each partition of lots that holds any, by partition."""
    with psycopg.connect(conninfo) as conn:
        return dict(conn.execute("SELECT tableoid::regclass::text, count(*) FROM lots "
                                 "GROUP BY 1 ORDER BY 1").fetchall())


def open_and_spent(rows: dict[str, int]) -> str:
    months = {k: v for k, v in rows.items() if k not in ("lots_open", "lots_default")}
    return (f"lots_open {rows.get('lots_open', 0):,}, month partitions {sum(months.values()):,} "
            f"(in {len(months)}), lots_default {rows.get('lots_default', 0):,}")


def bench(args, workdir: Path, servers: list, dbs: dict) -> int:
    problems: list[str] = []
    load_before = os.getloadavg()
    began_all = time.perf_counter()
    version = run.code_version()
    private, public, kid = run.new_partner_key(workdir)
    signer = load.Signer(run.PARTNER, private)
    envs = {}
    for role, database in dbs.items():
        envs[role] = env = {
            **os.environ,
            "DATABASE_URL": database.url.set(drivername="postgresql+psycopg")
            .render_as_string(hide_password=False),
            "RATELIMIT_ENABLED": "false", "COALITION_OPERATOR": "bench",
            "COALITION_SIGNING_KEY_FILE": str(workdir / f"coalition-signing-key-{role}.pem")}
        log(f"{role}: database {database.name}; migrating, registering {run.PARTNER}")
        run.flask(env, "db", "upgrade")
        run.flask(env, "partners", "add", run.PARTNER, "--name", "Bench shop")
        run.flask(env, "partners", "add", "coalition", "--name", "Coalition", "--kind", "operator")
        registered = run.flask(env, "partners", "add-key", run.PARTNER, "--public-key", str(public))
        if registered.get("kid") != kid:
            raise RuntimeError(f"{role}: the service registered kid {registered.get('kid')}")
    with psycopg.connect(dbs["empty"].conninfo) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]

    prepared = {}
    common = ["--months", str(args.months), "--total", str(args.total),
              "--close-claims", str(args.close_claims), "--members", str(args.members),
              "--import-members", str(args.import_members)]
    for role in ("full", "empty"):
        log(f"{role}: preparing" + (f" ({args.total:,} entries over {args.months} months, then "
                                    if role == "full" else " (")
            + f"{args.close_claims:,} claims of the month to close)")
        began = time.perf_counter()
        prepared[role] = child(envs[role], "--prepare", role, *common)
        prepared[role]["prepare_wall_s"] = round(time.perf_counter() - began, 1)
        problems += [f"{role}: {p}" for p in prepared[role].get("problems", [])]
    if problems:
        raise RuntimeError("; ".join(problems))
    period = prepared["empty"]["close_month"]["period"]
    for role in ROLES:
        if prepared[role]["close_month"]["issued"] != prepared["empty"]["close_month"]["issued"]:
            problems.append(f"{role}: the month to close was loaded unlike the other database's")

    explained = {}
    for role in ROLES:
        log(f"{role}: EXPLAIN of the close's month_flows and of a single earn")
        explained[role] = child(envs[role], "--explain", period)
        problems += [f"{role} explain: {p}" for p in explained[role].get("problems", [])]

    closes: dict[str, list[dict]] = {role: [] for role in ROLES}
    for number in range(args.close_rounds):
        last = number == args.close_rounds - 1
        for role in (ROLES if number % 2 == 0 else ROLES[::-1]):
            result = month_close.run_close(period, envs[role], lambda: None, rollback=not last)
            closes[role].append(result)
            if "error" in result:
                problems.append(f"{role} close: {result['error']}")
                continue
            log(f"{role}: close {period} {'committed' if last else 'rolled back'} in "
                f"{result['seconds']:.2f} s (the month's flows {result.get('flows_s', 0):.2f} s)")
    for role in ROLES:
        final = closes[role][-1]
        if "totals" not in final:
            continue
        loaded = prepared[role]["close_month"]
        issued, redeemed = sum(loaded["issued"].values()), sum(loaded["redeemed"].values())
        totals = final["totals"]
        if (totals["points_issued"], totals["points_redeemed"]) != (issued, redeemed):
            problems.append(f"{role} close: statements say issued {totals['points_issued']}, "
                            f"redeemed {totals['points_redeemed']}; the load booked {issued}, "
                            f"{redeemed}")
    close_s = {role: [c["seconds"] for c in closes[role] if "seconds" in c] for role in ROLES}

    for role in ROLES:
        with psycopg.connect(dbs[role].conninfo, autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # the closes' writes flushed before the earns, not during
    log(f"service: gunicorn {args.workers} workers x {args.threads} threads per database, "
        "rate limits off")
    targets = {}
    for role in ROLES:
        targets[role] = run.Server(f"service-{role}", "wsgi:app", envs[role], workdir, args)
        servers.append(targets[role])
        targets[role].wait_ready("/readyz")  # bound before the next one looks for a free port
    answered = dict.fromkeys(ROLES, 0)
    warm_rates = []
    for role, server in targets.items():
        warm = run.single_earns(f"{role} warm-up", server, signer, args, args.warmup, 3000)
        answered[role] += warm.ok
        warm_rates.append(warm.rate)
        if warm.failed:
            problems.append(f"{warm.name}: {json.dumps(warm.summary())}")
    # Tokens enough, little signing: one budget for both databases, from the faster warm-up
    # (a cold one may run at a third of the rounds' rate) and at least 600/s, since the
    # per-client share is even but the clients are not (one client of "full" ran out at the
    # former max(3 x its own warm-up rate, 300/s) in the run of 2026-12-06 21:06).
    max_rate = dict.fromkeys(ROLES, max(3 * max(warm_rates), 600))
    earn_runs: dict[str, list[load.Result]] = {role: [] for role in ROLES}
    log(f"single earns: {args.rounds} rounds of {args.duration:.0f} s per database, taking turns")
    for number in range(args.rounds):
        for role in (ROLES if number % 2 == 0 else ROLES[::-1]):
            result = run.single_earns(f"single earn, {role}", targets[role], signer, args,
                                      args.duration, max_rate[role])
            answered[role] += result.ok
            earn_runs[role].append(result)
        e, f = earn_runs["empty"][-1], earn_runs["full"][-1]
        log(f"round {number + 1}: empty {e.rate:.0f}/s, full {f.rate:.0f}/s, "
            f"ratio {ratio(f.rate, e.rate):.2f}")

    # Single burns, after the earns: of the bench-m-* members' points (each round reads what
    # each member has, and burns at most that: every burn should answer 201). A burn reads the
    # member's open lots (lots_open only) and updates the oldest; a lot it empties moves to
    # the current month's partition of lots.
    lots_before_burns = {role: lots_rows(dbs[role].conninfo) for role in ROLES}
    burned = dict.fromkeys(ROLES, 0)
    warm_burns = []
    for role, server in targets.items():
        budgets = burn_budgets(dbs[role].conninfo, args.members)
        warm = single_burns(f"{role} burn warm-up", server, signer, args, args.warmup, 3000,
                            budgets)
        burned[role] += warm.ok
        warm_burns.append(warm.rate)
        if warm.failed:
            problems.append(f"{warm.name}: {json.dumps(warm.summary())}")
    burn_rate = dict.fromkeys(ROLES, max(3 * max(warm_burns), 600))
    burn_runs: dict[str, list[load.Result]] = {role: [] for role in ROLES}
    budget_points: dict[str, list[int]] = {role: [] for role in ROLES}
    log(f"single burns: {args.rounds} rounds of {args.duration:.0f} s per database, taking turns")
    for number in range(args.rounds):
        for role in (ROLES if number % 2 == 0 else ROLES[::-1]):
            budgets = burn_budgets(dbs[role].conninfo, args.members)
            budget_points[role].append(sum(budgets.values()))
            result = single_burns(f"single burn, {role}", targets[role], signer, args,
                                  args.duration, burn_rate[role], budgets)
            burned[role] += result.ok
            burn_runs[role].append(result)
        e, f = burn_runs["empty"][-1], burn_runs["full"][-1]
        log(f"burn round {number + 1}: empty {e.rate:.0f}/s, full {f.rate:.0f}/s, "
            f"ratio {ratio(f.rate, e.rate):.2f}")
    for server in targets.values():
        server.stop()
        if server.log_problems():
            problems.append(f"{server.name} log: {server.log_problems()} error lines")
    earns = {role: load.merge(f"single earn, {role}", earn_runs[role]) for role in ROLES}
    burns = {role: load.merge(f"single burn, {role}", burn_runs[role]) for role in ROLES}
    for role in ROLES:
        for result in (earns[role], burns[role]):
            if result.failed:
                problems.append(f"{result.name}: {json.dumps(result.summary())}")

    # Every 2xx earn and every 2xx burn a row, in the months after the closed one (the current
    # month's partition), and DEFAULT still empty; the lots the burns emptied moved out of
    # lots_open into a month's partition.
    after = {}
    for role in ROLES:
        with psycopg.connect(dbs[role].conninfo) as conn:
            kinds = dict(conn.execute("SELECT kind, count(*) FROM journal_entries "
                                      "WHERE period > %s GROUP BY 1", (period,)).fetchall())
            where = conn.execute(
                "SELECT tableoid::regclass::text, kind, count(*) FROM journal_entries "
                "WHERE period > %s GROUP BY 1, 2 ORDER BY 1, 2", (period,)).fetchall()
            defaults = {t: conn.execute(f"SELECT count(*) FROM {t}_default").fetchone()[0]
                        for t in PARTITIONED}
            burn_consumptions = conn.execute(
                "SELECT count(*), count(DISTINCT c.lot_id) FROM consumptions c "
                "JOIN journal_entries e ON e.id = c.entry_id AND e.period = c.period "
                "WHERE c.period > %s AND e.kind = 'burn'", (period,)).fetchone()
        lots_after = lots_rows(dbs[role].conninfo)
        after[role] = {"earn_rows": kinds.get("earn", 0), "burn_rows": kinds.get("burn", 0),
                       "other_rows": {k: v for k, v in kinds.items() if k not in ("earn", "burn")},
                       "partitions": [list(r) for r in where], "default_rows": defaults,
                       "burn_consumptions": burn_consumptions[0],
                       "lots_burned_from": burn_consumptions[1],
                       "lots_before_burns": lots_before_burns[role], "lots_after": lots_after}
        if kinds.get("earn", 0) != answered[role]:
            problems.append(f"{role}: {answered[role]} earns answered 2xx, "
                            f"{kinds.get('earn', 0)} earn rows")
        if kinds.get("burn", 0) != burned[role]:
            problems.append(f"{role}: {burned[role]} burns answered 2xx, "
                            f"{kinds.get('burn', 0)} burn rows")
        if after[role]["other_rows"]:
            problems.append(f"{role}: unexpected entries: {after[role]['other_rows']}")
        if any(defaults.values()):
            problems.append(f"{role}: rows in DEFAULT after the earns and burns: {defaults}")

    load_after = os.getloadavg()
    host = run.machine()
    full = prepared["full"]
    median = {role: statistics.median(close_s[role]) if close_s[role] else float("nan")
              for role in ROLES}
    best = {role: min(close_s[role]) if close_s[role] else float("nan") for role in ROLES}
    flows = {role: statistics.median([c["flows_s"] for c in closes[role] if "flows_s" in c] or
                                     [float("nan")]) for role in ROLES}
    close_ratio = ratio(median["full"], median["empty"])
    rate = {role: earns[role].rate for role in ROLES}
    rate_ratio = ratio(rate["full"], rate["empty"])
    round_ratios = [ratio(f.rate, e.rate) for e, f in zip(earn_runs["empty"], earn_runs["full"])]
    brate = {role: burns[role].rate for role in ROLES}
    burn_ratio = ratio(brate["full"], brate["empty"])
    burn_round_ratios = [ratio(f.rate, e.rate)
                         for e, f in zip(burn_runs["empty"], burn_runs["full"])]
    history = full.get("history", {})
    partitions = {role: {t: len(prepared[role]["partition_rows"][t]) for t in PARTITIONED}
                  for role in ROLES}
    wall = time.perf_counter() - began_all

    print()
    print(f"service code: {version}")
    print(f"PostgreSQL {pg_version}; {host['nproc']} CPUs, {host['ram_gib']} GiB; gunicorn gthread "
          f"{args.workers} x {args.threads}, {args.clients} client processes, {args.members} "
          f"members hit of {args.members + args.import_members:,}; load average "
          f"{load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f} before, "
          f"{load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f} after; "
          f"{wall / 60:.1f} min in all")
    print(f"full: {full['journal_entries']:,} journal entries ({history.get('claims', 0):,} over "
          f"{history.get('months', 0)} months {history.get('first', '')} .. "
          f"{history.get('last', '')}, then {args.close_claims:,} of {period}), "
          f"{history.get('postings', 0):,} postings, {history.get('lots', 0):,} lots, "
          f"{history.get('consumptions', 0):,} consumptions of history; "
          f"{full['database_bytes'] / 2**30:.1f} GiB")
    print(f"loading the history: {history.get('load_s', 0):,.0f} s by COPY "
          f"({history.get('rows_per_s') or 0:,} rows/s), sealing it month by month "
          f"{history.get('seal_s', 0):,.0f} s, closing its {len(full.get('history_closes_s', []))} "
          f"months {sum(full.get('history_closes_s', [])):,.0f} s, VACUUM (ANALYZE) "
          f"{full['vacuum_analyze_s']:,.0f} s; the full database's preparation "
          f"{full['prepare_wall_s'] / 60:.1f} min")
    for role in ROLES:
        rows = prepared[role]["partition_rows"]
        print(f"{role}: partitions " + ", ".join(f"{t} {partitions[role][t]}" for t in PARTITIONED)
              + "; rows in DEFAULT: " + ", ".join(
                  f"{t}_default {rows[t].get(f'{t}_default', 0)}" for t in PARTITIONED)
              + f" (after the earns and burns: "
              f"{', '.join(str(v) for v in after[role]['default_rows'].values())})")
        print(f"{role}: lots before the burns: {open_and_spent(after[role]['lots_before_burns'])}; "
              f"after: {open_and_spent(after[role]['lots_after'])}; the burns' "
              f"{after[role]['burn_consumptions']:,} consumptions drew on "
              f"{after[role]['lots_burned_from']:,} lots")
    print()
    head = f"{'':<34} {'empty':>10} {'full':>10} {'full/empty':>11}  target"
    print(head)
    print(f"{'month close ' + period + ' (s, median)':<34} {median['empty']:>10.2f} "
          f"{median['full']:>10.2f} {close_ratio:>10.2f}x  time <= {TARGET_TIME_RATIO}x  "
          f"{'met' if close_ratio <= TARGET_TIME_RATIO else 'NOT met'}")
    print(f"{'  best of ' + str(args.close_rounds) + ' (s)':<34} {best['empty']:>10.2f} "
          f"{best['full']:>10.2f} {ratio(best['full'], best['empty']):>10.2f}x")
    print(f"{'  the month flows (s, median)':<34} {flows['empty']:>10.2f} {flows['full']:>10.2f} "
          f"{ratio(flows['full'], flows['empty']):>10.2f}x")
    print(f"{'single earns (earns/s)':<34} {rate['empty']:>10.0f} {rate['full']:>10.0f} "
          f"{rate_ratio:>10.2f}x  rate >= {1 / TARGET_TIME_RATIO:.2f}x  "
          f"{'met' if rate_ratio >= 1 / TARGET_TIME_RATIO else 'NOT met'}")
    for label, q in (("  p50 (ms)", 0.5), ("  p99 (ms)", 0.99)):
        a, b = earns["empty"].percentile(q), earns["full"].percentile(q)
        print(f"{label:<34} {a:>10.1f} {b:>10.1f} {ratio(b, a):>10.2f}x")
    print(f"{'single burns (burns/s)':<34} {brate['empty']:>10.0f} {brate['full']:>10.0f} "
          f"{burn_ratio:>10.2f}x  rate >= {1 / TARGET_TIME_RATIO:.2f}x  "
          f"{'met' if burn_ratio >= 1 / TARGET_TIME_RATIO else 'NOT met'}")
    for label, q in (("  p50 (ms)", 0.5), ("  p99 (ms)", 0.99)):
        a, b = burns["empty"].percentile(q), burns["full"].percentile(q)
        print(f"{label:<34} {a:>10.1f} {b:>10.1f} {ratio(b, a):>10.2f}x")
    print("close runs (s): " + "; ".join(
        f"{role} " + ", ".join(f"{s:.2f}" for s in close_s[role]) for role in ROLES))
    print("earn rounds (/s): " + "; ".join(
        f"{role} " + ", ".join(f"{r.rate:.0f}" for r in earn_runs[role]) for role in ROLES)
          + "; full/empty by round " + ", ".join(f"{x:.2f}" for x in round_ratios)
          + f" (median {statistics.median(round_ratios):.2f})")
    print("burn rounds (/s): " + "; ".join(
        f"{role} " + ", ".join(f"{r.rate:.0f}" for r in burn_runs[role]) for role in ROLES)
          + "; full/empty by round " + ", ".join(f"{x:.2f}" for x in burn_round_ratios)
          + f" (median {statistics.median(burn_round_ratios):.2f}); points the members had "
          "before each round: " + "; ".join(
              f"{role} " + ", ".join(f"{p:,}" for p in budget_points[role]) for role in ROLES))
    for role in ROLES:
        plan = explained[role]
        if "month_flows" in plan:
            print(f"{role} month_flows plans: " + "; ".join(
                f"{s['ms']:.0f} ms over {s['partitions']} partitions" for s in plan["month_flows"]))
            print(f"{role} single-earn plans: partitions per statement "
                  + ", ".join(str(s["partitions"]) for s in plan["single_earn"]))
            print(f"{role} single-burn plans: partitions per statement " + ", ".join(
                f"{s['partitions']} {s['which']}" for s in plan.get("single_burn", [])))
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("FAILED" if problems else "OK")

    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (out / f"partitions-{stamp}.json").write_text(json.dumps(
        {"settings": vars(args), "machine": host, "postgres": pg_version, "code": version,
         "loadavg_before": load_before, "loadavg_after": load_after, "wall_s": round(wall, 1),
         "prepared": prepared, "explain": explained, "closes": closes,
         "close_median_s": median, "close_ratio": close_ratio,
         "earns": {role: earns[role].summary() for role in ROLES},
         "earn_rounds": {role: [r.summary() for r in earn_runs[role]] for role in ROLES},
         "earn_ratio": rate_ratio, "earn_round_ratios": round_ratios,
         "burns": {role: burns[role].summary() for role in ROLES},
         "burn_rounds": {role: [r.summary() for r in burn_runs[role]] for role in ROLES},
         "burn_ratio": burn_ratio, "burn_round_ratios": burn_round_ratios,
         "burn_budget_points": budget_points,
         "after": after, "problems": problems}, indent=2))
    if problems or args.keep_logs:
        for server in servers:
            shutil.copy(server.log_path, out / f"partitions-{stamp}-{server.name}.log")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    if args.prepare:
        return prepare(args)
    if args.explain:
        return explain(args.explain)
    for sig in (signal.SIGTERM, signal.SIGHUP):  # unwind through the finally below
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="bench-part-"))
    servers: list[run.Server] = []
    dbs: dict[str, Database] = {}
    try:
        for role in ROLES:
            dbs[role] = Database(role)
        return bench(args, workdir, servers, dbs)
    except KeyboardInterrupt:
        log("interrupted: stopping the servers, dropping the databases")
        return 130
    except SystemExit:
        log("stopped by a signal: stopping the servers, dropping the databases")
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        for server in servers:
            server.stop()
        for database in dbs.values():
            database.drop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
