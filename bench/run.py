"""`make bench`: the throughput benchmark end to end, on a fresh PostgreSQL database.

1. Creates a database bench_<time>_<pid> on the server of DATABASE_URL (when it names a
   PostgreSQL one) or on 127.0.0.1:5432 as postgres; migrates it (`flask db upgrade`); registers
   the partner bench-shop with an ES256 key through the operator CLI.
2. The service under gunicorn (deploy/gunicorn.conf.py, gthread, 2 workers x 8 threads),
   rate limits off (RATELIMIT_ENABLED=false: one partner sends everything, far beyond its
   production quota); enrols the members through POST /v1/members.
3. The floor app (bench/floor_app.py) under the same gunicorn settings, on the same database.
   Single earns (bench/load.py: pre-signed tokens, 8 client processes, keep-alive) against
   each: a warm-up, then measured runs, the service and the floor taking turns round by round.
   Every earn answered 2xx must be a row in the database afterwards. Then batches of 1,000
   earns (POST /v1/batches) against the same service: claims per second, against the single
   earns and against raw COPY.
4. Raw PostgreSQL at the same concurrency: INSERT+COMMIT per row, COPY (bench/pg_baselines.py);
   and one GROUP BY over the service's journal.
   Bulk enrolment: `flask members import` of a CSV of new card numbers, then of the same file
   again (bench/enrol_import.py), against the COPY rate.
5. The month close (bench/month_close.py): last month's claims (10^6) loaded by COPY over every
   member, sealed, then closed (settlement.service.close in a process of its own) against one
   plain GROUP BY partner, kind of the same rows; its peak RSS; single earns booked by 4
   threads before and during the close (their wait for the books lock).
6. History (bench/history.py): BENCH_HISTORY=1 tops the journal up to 10^7 entries by COPY;
   then the service and the floor again, one warm-up and one run each: the single-earn rate
   over that journal against the near-empty one of step 3.
7. Prints one table, each rate beside its ratio to a baseline of the same run; writes the
   figures to bench/results/. Exits 1 if any request failed or any count does not add up.

Servers run in sessions of their own and are always stopped, the database always dropped, the
temporary directory always removed (Ctrl-C and SIGTERM included). Sizes: BENCH_SIZE=default
(about 7 minutes) or big; the options below (or BENCH_* variables) override single settings.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import make_url

from bench import floor_app, history, load, pg_baselines
from partners.client import jwk_thumbprint

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # .venv/bin: gunicorn and flask beside the interpreter
PORTS = range(18000, 18100)
PARTNER = "bench-shop"
BATCH_SIZE = 1000  # earns per batch (the most POST /v1/batches takes)
BATCH_MAX_RATE = 8000  # claims per second the pre-made batches last for
SIZES = {  # rounds of HTTP runs, seconds per run, seconds of raw inserts, COPY rows per client,
    # card numbers in the members import's CSV
    "default": {"rounds": 2, "duration": 30, "warmup": 5, "raw_duration": 10, "copy_rows": 50_000,
                "import_members": 200_000, "close_claims": 1_000_000},
    "big": {"rounds": 3, "duration": 60, "warmup": 10, "raw_duration": 30, "copy_rows": 200_000,
            "import_members": 1_000_000, "close_claims": 1_000_000},
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def options(argv: list[str] | None) -> argparse.Namespace:
    size = os.environ.get("BENCH_SIZE", "default")
    if size not in SIZES:
        raise SystemExit(f"BENCH_SIZE must be one of {', '.join(SIZES)}")
    preset = SIZES[size]

    def env(name: str, default):
        return type(default)(os.environ.get(f"BENCH_{name.upper()}", default))

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=env("workers", 2))
    p.add_argument("--threads", type=int, default=env("threads", 8))
    p.add_argument("--clients", type=int, default=env("clients", 8))
    p.add_argument("--members", type=int, default=env("members", 2000))
    p.add_argument("--rounds", type=int, default=env("rounds", preset["rounds"]),
                   help="measured runs per HTTP scenario, service and floor taking turns")
    p.add_argument("--duration", type=float, default=env("duration", float(preset["duration"])),
                   help="seconds per measured HTTP run")
    p.add_argument("--warmup", type=float, default=env("warmup", float(preset["warmup"])))
    p.add_argument("--raw-duration", type=float,
                   default=env("raw_duration", float(preset["raw_duration"])))
    p.add_argument("--copy-rows", type=int, default=env("copy_rows", preset["copy_rows"]),
                   help="COPY rows per client")
    p.add_argument("--import-members", type=int,
                   default=env("import_members", preset["import_members"]),
                   help="card numbers in the CSV file of the members import")
    p.add_argument("--close-claims", type=int,
                   default=env("close_claims", preset["close_claims"]),
                   help="claims of the month the month close closes (loaded by COPY)")
    p.add_argument("--history", type=history.target,
                   default=history.target(os.environ.get("BENCH_HISTORY", "0")),
                   help="journal entries to top the journal up to before the single earns "
                        "are measured again (1: 10^7; 0: the closed month's only)")
    p.add_argument("--campaigns", type=int, default=env("campaigns", 2), choices=(0, 2),
                   help="2: each round also runs the service's single earns with two active "
                        "campaigns that every earn qualifies for (0: not)")
    p.add_argument("--keep-logs", action="store_true",
                   help="copy the servers' logs to bench/results/ (done anyway when a run fails)")
    args = p.parse_args(argv)
    args.size = size
    return args


# --- the database -----------------------------------------------------------------------------

def server_url():
    """The PostgreSQL server to create the scratch database on."""
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgresql"):
        return make_url(url).set(drivername="postgresql")
    return make_url("postgresql://postgres@127.0.0.1:5432/postgres")


def libpq(url) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Scratch:
    """A database of our own, dropped at the end whatever happened."""

    def __init__(self) -> None:
        self.name = f"bench_{time.strftime('%Y%m%d%H%M%S')}_{os.getpid()}"
        self.url = server_url().set(database=self.name)
        self._admin = libpq(server_url().set(database="postgres"))
        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    @property
    def conninfo(self) -> str:
        return libpq(self.url)

    def drop(self) -> None:
        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# --- servers ----------------------------------------------------------------------------------

def free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


class Server:
    """gunicorn with the service's configuration, in a session of its own so that stopping it
    reaches its workers and a Ctrl-C meant for make does not."""

    def __init__(self, name: str, app: str, env: dict, workdir: Path, args) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        self.stopped = False
        env = {**env, "WEB_CONCURRENCY": str(args.workers), "GUNICORN_THREADS": str(args.threads)}
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "gunicorn"), "-c", "deploy/gunicorn.conf.py",
                 "-b", f"127.0.0.1:{self.port}", app],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, path: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see its log:\n"
                                   + self.log_tail())
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready within {timeout} s:\n" + self.log_tail())

    def stop(self) -> None:
        if self.stopped:  # its process group is gone: the number may belong to another by now
            return
        self.stopped = True
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)  # gunicorn's graceful stop: 25 s at most
            try:
                self.proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                pass
        self._signal(signal.SIGKILL)  # anything of its session left behind
        self.proc.wait()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_problems(self) -> int:
        """Lines of the server's log that report an error or a crash."""
        text = self.log_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines()
                   if "Traceback" in line or '"ERROR"' in line or "[ERROR]" in line
                   or "CRITICAL" in line)


# --- the run ----------------------------------------------------------------------------------

def flask(env: dict, *args: str) -> dict:
    done = subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


def new_partner_key(workdir: Path) -> tuple[bytes, Path, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = workdir / "bench-shop.pub.pem"
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public, jwk_thumbprint(key.public_key())


def single_earns(name: str, server: Server, signer: load.Signer, args, duration: float,
                 max_rate: float) -> load.Result:
    """`max_rate`: earns per second the pre-signed tokens must last for."""
    per_client = int(max_rate * duration / args.clients) + 1
    return load.run(name, server.url, "/v1/earn", signer,
                    load.earn_bodies(load.member_ids(args.members), per_client),
                    clients=args.clients, duration=duration)


CAMPAIGNS = "service earn, 2 campaigns"


@contextmanager
def campaigns_running(env: dict, target: str, label: str):
    """For the CAMPAIGNS target: two campaigns every earn qualifies for while it runs, ended
    after it (each run its own, so the runs without campaigns between them have none): double
    points funded by the partner, and 5 fixed points funded by the coalition. Every earn then
    books three lots, the bonus postings, and reads the campaigns and coupons."""
    if target != CAMPAIGNS:
        yield
        return
    start = (datetime.now(timezone.utc) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M+00:00")
    ids = [f"bench-double-{label}", f"bench-fixed-{label}"]
    flask(env, "campaigns", "add", ids[0], "--name", "Double points", "--kind", "multiplier",
          "--value", "2", "--from", start, "--until", "2099-12-31", "--funder", PARTNER)
    flask(env, "campaigns", "add", ids[1], "--name", "Five more", "--kind", "fixed",
          "--value", "5", "--from", start, "--until", "2099-12-31", "--funder", "coalition")
    try:
        yield
    finally:
        for campaign_id in ids:
            flask(env, "campaigns", "end", campaign_id)


def count_rows(conninfo: str, table: str) -> int:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def members_import(env: dict, members: int) -> tuple[load.Result, load.Result, dict]:
    """bench/enrol_import.py in a process of its own: a new file, then the same file again.
    Each a batch Result: its card numbers over the command's seconds."""
    done = subprocess.run([sys.executable, "-m", "bench.enrol_import", "--members", str(members)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {"problems": [f"bench.enrol_import exited {done.returncode}: "
                               f"{(done.stdout + done.stderr)[-1500:]}"]}
    results = []
    for key, name in (("new", "members import (CSV, new)"), ("rerun", "members import (rerun)")):
        result = load.Result(name, 1)
        part = report.get(key)
        if part is not None and part["exit_code"] == 0:
            result.ok = result.statuses[200] = members
            result.seconds = part["seconds"]
            result.latencies = [part["seconds"]]  # one batch: the whole file
        else:
            result.statuses[0] = 1
        results.append(result)
    return results[0], results[1], report


def month_close(env: dict, claims: int) -> tuple[dict, list[load.Result]]:
    """bench/month_close.py in a process of its own (the close in one more); the figures as
    batch Results (rows over seconds) and the claim threads' latencies as Results."""
    done = subprocess.run([sys.executable, "-m", "bench.month_close", "--claims", str(claims)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        report = {"problems": [f"bench.month_close exited {done.returncode}: "
                               f"{(done.stdout + done.stderr)[-1500:]}"]}
    close, base = load.Result("month close (claims/s)", 1), load.Result("GROUP BY partner, kind", 1)
    results = [close, base]
    if "seconds" in report.get("close", {}):
        for result, seconds in ((close, report["close"]["seconds"]),
                                (base, report["group_by"]["s"])):
            result.ok = result.statuses[200] = claims
            result.seconds = seconds
            result.latencies = [seconds]
    else:
        close.statuses[0] = base.statuses[0] = 1
    for key, name in (("claims_during_close", "earn during the close"),
                      ("claims_without_close", "earn, no close (threads)")):
        part = report.get(key, {})
        result = load.Result(name, 4)
        result.latencies = part.pop("latencies_s", [])
        result.ok = result.statuses[200] = len(result.latencies)
        result.statuses[0] = part.get("errors", 0)
        result.seconds = part.get("window_s", 0.0)
        results.append(result)
    return report, results


def load_history(env: dict, total: int) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.history", "--total", str(total)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    try:
        return json.loads(done.stdout)
    except ValueError:
        return {"problems": [f"bench.history exited {done.returncode}: "
                             f"{(done.stdout + done.stderr)[-1500:]}"]}


def code_version() -> str:
    """What the service ran: the commit, and whether the working tree had changes beyond it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip() or "unknown"
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                              "coalition", "partners", "settlement", "migrations", "wsgi.py"],
                             cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    return f"{head} + uncommitted changes in {len(changed)} files" if changed else head


def machine() -> dict:
    with open("/proc/meminfo") as fh:
        mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    return {"nproc": os.cpu_count(), "ram_gib": round(mem_kb / 2**20, 1),
            "loadavg": os.getloadavg()[0]}


def ratio(a: load.Result, b: load.Result) -> float:
    """Claims (or rows) per second against claims per second: a batch counts its items."""
    return a.claims_rate / b.claims_rate if b.claims_rate else float("nan")


def table(rows: list[tuple]) -> str:
    head = ("scenario", "rate/s", "p50 ms", "p99 ms", "ratio", "baseline (same run)")
    lines = [f"{head[0]:<30} {head[1]:>10} {head[2]:>8} {head[3]:>8} {head[4]:>7}  {head[5]}"]
    for name, result, base, note in rows:
        r = f"{ratio(result, base):.2f}x" if base is not None else "-"
        p50 = f"{result.percentile(0.5):.1f}" if note != "batch" else "-"
        p99 = f"{result.percentile(0.99):.1f}" if note != "batch" else "-"
        mark = "  FAILED" if result.failed else ""
        lines.append(f"{name:<30} {result.claims_rate:>10,.0f} {p50:>8} {p99:>8} {r:>7}  "
                     f"{base.name if base is not None else '-'}{mark}")
    return "\n".join(lines)


def bench(args, workdir: Path, servers: list, scratch: Scratch) -> int:
    problems = []
    load_before = os.getloadavg()[0]
    version = code_version()
    env = {**os.environ, "DATABASE_URL": scratch.url.set(drivername="postgresql+psycopg")
           .render_as_string(hide_password=False),
           "RATELIMIT_ENABLED": "false", "COALITION_OPERATOR": "bench",
           "COALITION_SIGNING_KEY_FILE": str(workdir / "coalition-signing-key.pem")}
    with psycopg.connect(scratch.conninfo) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]
    log(f"database {scratch.name} (PostgreSQL {pg_version}); migrating, registering {PARTNER}")
    flask(env, "db", "upgrade")
    flask(env, "partners", "add", PARTNER, "--name", "Bench shop")
    flask(env, "partners", "add", "coalition", "--name", "Coalition", "--kind", "operator")
    private, public, kid = new_partner_key(workdir)
    registered = flask(env, "partners", "add-key", PARTNER, "--public-key", str(public))
    if registered.get("kid") != kid:
        raise RuntimeError(f"the service registered kid {registered.get('kid')}, expected {kid}")
    signer = load.Signer(PARTNER, private)

    log(f"service: gunicorn {args.workers} workers x {args.threads} threads, rate limits off")
    service = Server("service", "wsgi:app", env, workdir, args)
    servers.append(service)
    service.wait_ready("/readyz")
    log(f"enrolling {args.members} members through POST /v1/members")
    enrol = load.run("service enrol (setup)", service.url, "/v1/members", signer,
                     load.enrol_bodies(load.member_ids(args.members), args.clients),
                     clients=args.clients)
    if enrol.failed:
        problems.append(f"enrolment failed: {enrol.summary()}")

    floor_app.create_tables(scratch.conninfo)
    keys_file = workdir / "floor-keys.json"
    keys_file.write_text(json.dumps({kid: {"partner_id": PARTNER,
                                           "public_key_pem": public.read_text()}}))
    floor_env = {**os.environ, "FLOOR_DATABASE_URL": scratch.conninfo,
                 "FLOOR_KEYS": str(keys_file)}
    floor = Server("floor", "bench.floor_app:app", floor_env, workdir, args)
    servers.append(floor)
    floor.wait_ready("/healthz")

    # Both servers stay up (an idle one costs nothing) and take turns, round by round, so that
    # whatever else loads this shared machine meanwhile hits both alike.
    targets = {"service single earn": service, "floor single earn": floor}
    if args.campaigns:
        targets = {"service single earn": service, CAMPAIGNS: service, "floor single earn": floor}
    runs: dict[str, list[load.Result]] = {name: [] for name in targets}
    answered = dict.fromkeys(targets, 0)  # 2xx earns, warm-ups included: each must be a row
    max_rate = {}
    log(f"single earns: {args.warmup:.0f} s warm-up each, then {args.rounds} rounds of "
        f"{args.duration:.0f} s service, {args.duration:.0f} s floor")
    for name, server in targets.items():
        with campaigns_running(env, name, "warm-up"):
            warm = single_earns(f"{name} warm-up", server, signer, args, args.warmup, 3000)
        answered[name] += warm.ok
        if warm.failed:
            problems.append(f"{warm.name}: {json.dumps(warm.summary())}")
        # Tokens for three times the warm-up's rate: no client runs dry, little signing.
        max_rate[name] = max(3 * warm.rate, 300)
    for round_no in range(1, args.rounds + 1):
        for name, server in targets.items():
            with campaigns_running(env, name, f"round-{round_no}"):
                result = single_earns(name, server, signer, args, args.duration, max_rate[name])
            answered[name] += result.ok
            runs[name].append(result)
        service_run, floor_run = runs["service single earn"][-1], runs["floor single earn"][-1]
        with_campaigns = (f", with campaigns {runs[CAMPAIGNS][-1].rate:.0f}/s "
                          f"({ratio(runs[CAMPAIGNS][-1], service_run):.2f} of without)"
                          if args.campaigns else "")
        log(f"round {round_no}: service {service_run.rate:.0f}/s, floor {floor_run.rate:.0f}/s, "
            f"ratio {ratio(service_run, floor_run):.2f}{with_campaigns}")
    # Batches of earns, against the same service after its single earns: claims per second,
    # tokens and bodies made before the clock starts, for up to BATCH_MAX_RATE claims/s.
    per_client = math.ceil(BATCH_MAX_RATE * args.duration / BATCH_SIZE / args.clients)
    log(f"batches of {BATCH_SIZE} earns: {args.duration:.0f} s "
        f"({per_client} batches per client made beforehand)")
    batches = load.run(f"service batch earn ({BATCH_SIZE}/batch)", service.url, "/v1/batches",
                       signer, load.batch_bodies(load.member_ids(args.members), per_client,
                                                 BATCH_SIZE),
                       clients=args.clients, duration=args.duration, per_request=BATCH_SIZE)
    answered["service single earn"] += batches.ok * BATCH_SIZE  # every item must be a row
    answered["service single earn"] += answered.pop(CAMPAIGNS, 0)  # the same journal
    log(f"batches: {batches.claims_rate:,.0f} claims/s, p50 {batches.percentile(0.5):.0f} ms "
        "per batch")
    for server in (service, floor):
        server.stop()
    earns, floor_earns = (load.merge(name, runs[name])
                          for name in ("service single earn", "floor single earn"))
    campaign_earns = load.merge(CAMPAIGNS, runs[CAMPAIGNS]) if args.campaigns else None
    for name, table_name in (("service single earn", "journal_entries"),
                             ("floor single earn", floor_app.CLAIMS_TABLE)):
        booked = count_rows(scratch.conninfo, table_name)
        if booked != answered[name]:
            problems.append(f"{name}: {answered[name]} earns answered 2xx, {booked} rows in "
                            f"{table_name}")
    for server in (service, floor):
        if server.log_problems():
            problems.append(f"{server.name} log: {server.log_problems()} error lines")

    log(f"raw PostgreSQL: INSERT+COMMIT for {args.raw_duration:.0f} s, "
        f"COPY of {args.clients} x {args.copy_rows} rows")
    insert = pg_baselines.insert_commit(scratch.conninfo, clients=args.clients,
                                        duration=args.raw_duration)
    copy = pg_baselines.copy_rows(scratch.conninfo, clients=args.clients,
                                  rows_per_client=args.copy_rows)
    log(f"members import: {args.import_members} card numbers from CSV, then the same file again")
    imported, reimported, import_report = members_import(env, args.import_members)
    problems += import_report.get("problems", [])
    if not import_report.get("problems"):
        members_now = count_rows(scratch.conninfo, "members")
        if members_now != enrol.ok + args.import_members:
            problems.append(f"members import: {members_now} members afterwards, expected "
                            f"{enrol.ok} enrolled over the API + {args.import_members} imported")
    group_by = pg_baselines.time_group_by(scratch.conninfo)

    log(f"month close: {args.close_claims:,} claims of last month loaded by COPY, sealed, "
        f"then closed while {4} threads book earns")
    close_report, close_results = month_close(env, args.close_claims)
    problems += close_report.get("problems", [])
    history_report = {}
    if args.history:
        log(f"history: topping the journal up to {args.history:,} entries by COPY")
        history_report = load_history(env, args.history)
        problems += history_report.get("problems", [])
    journal = count_rows(scratch.conninfo, "journal_entries")
    history_name = f"service earn, {journal / 1e6:.2g}M entries"
    log(f"single earns again over {journal:,} journal entries: warm-up, then "
        f"{args.duration:.0f} s service, {args.duration:.0f} s floor")
    again = {}
    for name, (server_name, app, server_env, ready) in {
            history_name: ("service-history", "wsgi:app", env, "/readyz"),
            "floor single earn (again)": ("floor-history", "bench.floor_app:app", floor_env,
                                          "/healthz")}.items():
        again[name] = Server(server_name, app, server_env, workdir, args)
        servers.append(again[name])
        again[name].wait_ready(ready)  # bound before the next one looks for a free port
    answered_again = 0
    later: dict[str, load.Result] = {}
    for name, server in again.items():
        warm = single_earns(f"{name} warm-up", server, signer, args, args.warmup, 3000)
        answered_again += warm.ok if name == history_name else 0
        if warm.failed:
            problems.append(f"{warm.name}: {json.dumps(warm.summary())}")
        max_rate[name] = max(3 * warm.rate, 300)
    for name, server in again.items():
        later[name] = single_earns(name, server, signer, args, args.duration, max_rate[name])
        answered_again += later[name].ok if name == history_name else 0
    for server in again.values():
        server.stop()
        if server.log_problems():
            problems.append(f"{server.name} log: {server.log_problems()} error lines")
    booked_again = count_rows(scratch.conninfo, "journal_entries") - journal
    if booked_again != answered_again:
        problems.append(f"{history_name}: {answered_again} earns answered 2xx, "
                        f"{booked_again} new journal rows")
    history_earns, floor_again = later[history_name], later["floor single earn (again)"]

    results = [earns, floor_earns, batches, insert, copy, enrol, imported, reimported, *close_results,
               history_earns, floor_again, *([campaign_earns] if campaign_earns else [])]
    for result in results:
        if result.failed:
            problems.append(f"{result.name}: {json.dumps(result.summary())}")
    rows = [("service single earn", earns, floor_earns, ""),
            *([(CAMPAIGNS, campaign_earns, earns, "")] if campaign_earns else []),
            ("floor single earn", floor_earns, insert, ""),
            (f"service batch earn ({BATCH_SIZE}/b)", batches, earns, ""),
            ("  the same, against COPY", batches, copy, ""),
            ("raw INSERT+COMMIT (rows/s)", insert, copy, ""),
            (f"raw COPY (rows/s, {pg_baselines.COPY_BATCH}/batch)", copy, None, "batch"),
            ("service enrol (setup)", enrol, None, ""),
            ("members import (CSV, new)", imported, copy, "batch"),
            ("members import (rerun)", reimported, copy, "batch"),
            ("month close (claims/s)", close_results[0], close_results[1], "batch"),
            ("GROUP BY partner, kind", close_results[1], None, "batch"),
            ("earn during the close", close_results[2], close_results[3], ""),
            ("earn, no close (4 threads)", close_results[3], None, ""),
            (history_name, history_earns, earns, ""),
            ("floor single earn (again)", floor_again, floor_earns, "")]
    host = machine()
    settings = (f"gunicorn gthread {args.workers} workers x {args.threads} threads, "
                f"{args.clients} client processes, {args.members} members, "
                f"{args.rounds} x {args.duration:.0f} s per HTTP scenario (taking turns) after "
                f"{args.warmup:.0f} s warm-up, "
                f"rate limits off; PostgreSQL {pg_version}; {host['nproc']} CPUs, "
                f"{host['ram_gib']} GiB; load average {load_before:.2f} before, "
                f"{host['loadavg']:.2f} after")
    print()
    print(f"service code: {version}")
    print(settings)
    print(table(rows))
    for result in (earns, floor_earns):
        share = result.client_cpu / (result.seconds * host["nproc"]) if result.seconds else 0
        print(f"load generator during {result.name}: {result.client_cpu:.1f} CPU-s in "
              f"{result.seconds:.1f} s ({share:.0%} of the machine)")
    if "new" in import_report:
        print(f"members import: {args.import_members:,} card numbers, a "
              f"{import_report['file_bytes'] / 2**20:.1f} MiB CSV, one transaction each: new "
              f"{import_report['new']['seconds']:.2f} s, rerun {import_report['rerun']['seconds']:.2f} s "
              f"(the command in process; a flask process's start, "
              f"{import_report['startup_s']:.1f} s here, not counted)")
    print(f"month-close baseline: GROUP BY partner, period, kind over {group_by['rows']} "
          f"journal rows ({group_by['groups']} groups): {group_by['ms']} ms")
    if "seconds" in close_report.get("close", {}):
        c, g, ld = close_report["close"], close_report["group_by"], close_report["load"]
        during = close_report["claims_during_close"]
        print(f"month close {ld['period']}: {ld['claims']:,} claims ({ld['kinds']['earn']:,} earns, "
              f"{ld['kinds']['burn']:,} burns, {ld['kinds']['reversal']:,} reversals; 5 partners, "
              f"{ld['members_touched']:,} members) loaded in {ld['load_s']:.0f} s "
              f"({ld['rows_per_s']:,} rows/s), sealed in {close_report['seal']['s']:.0f} s; "
              f"close {c['seconds']:.2f} s (sealing {c.get('seal_s', 0):.2f} s, the month's flows "
              f"{c.get('flows_s', 0):.2f} s) = {close_report['ratio_close_to_group_by']}x the "
              f"GROUP BY's {g['s']:.3f} s (target 5x); peak RSS {c['rss_peak_kb'] / 1024:.0f} MB "
              f"({c['rss_ready_kb'] / 1024:.0f} MB with the app loaded); earns waited at most "
              f"{during['max_ms']:.0f} ms during it")
    journal_ratio = ratio(history_earns, earns) / ratio(floor_again, floor_earns) \
        if floor_again.rate and floor_earns.rate and earns.rate else float("nan")
    print(f"history: {journal:,} journal entries; single earns {ratio(history_earns, earns):.2f}x "
          f"the rate of the near-empty journal, {journal_ratio:.2f}x after the floor's own "
          f"drift between the two runs (target: at least 0.67, i.e. within 1.5x)")
    for problem in problems:
        print(f"PROBLEM: {problem}")
    print("FAILED" if problems else "OK")

    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (out / f"bench-{stamp}.json").write_text(json.dumps(
        {"settings": vars(args), "machine": host, "loadavg_before": load_before,
         "postgres": pg_version, "code": version,
         "results": [r.summary() for r in results], "group_by": group_by,
         "members_import": import_report,
         "month_close": close_report, "history": {**history_report, "journal": journal},
         "problems": problems}, indent=2))
    if problems or args.keep_logs:
        for server in servers:
            shutil.copy(server.log_path, out / f"bench-{stamp}-{server.name}.log")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = options(argv)
    # SIGTERM and SIGHUP unwind like Ctrl-C, through the finally below.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    servers: list[Server] = []
    scratch = None
    try:
        scratch = Scratch()
        return bench(args, workdir, servers, scratch)
    except KeyboardInterrupt:
        log("interrupted: stopping the servers, dropping the database")
        return 130
    except SystemExit:  # SIGTERM or SIGHUP
        log("stopped by a signal: stopping the servers, dropping the database")
        raise
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip cleanup
        for server in servers:
            server.stop()
        if scratch is not None:
            scratch.drop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
