"""Scale-out figures on `make cluster`: earns through a balancer over two app instances against
one, with the CPU each claim costs, and balance reads with the standby serving them against
the primary alone, while claims flow.

It uses the cluster's database tier as `make cluster` left it (the primary, the synchronous
standby, both pgbouncers: CLUSTER_DIR/app.env), and starts its own app instances and
balancers beside the cluster's, so that the cluster's own instances and its rate limits stay
as they are:

- R1, R2: gunicorn as the cluster runs it (app.env: 1 process x 4 threads, reads routed to the
  standby), rate limits off (one partner sends everything, far past its quota);
- P1, P2: the same without DATABASE_REPLICA_URL: every read goes to the primary;
- HAProxy, leastconn, one per set: {R1, R2}, {R1} alone, {P1, P2}.

Rounds, each scenario once per round in turn (whatever else loads the machine hits them alike):
1. "earn, 2 instances": signed single earns through the {R1, R2} balancer;
2. "earn, 1 instance": the same through the {R1} balancer;
3. "balance, standby": signed balance reads through {R1, R2} while two clients book earns;
4. "balance, primary": the same through {P1, P2}.

CPU per claim: the machine's busy CPU time (/proc/stat) over the run, less the load clients'
own, per answered earn: everything the service side spent (gunicorn, pgbouncer, HAProxy, both
PostgreSQL servers, WAL shipping) on one claim. Prints one JSON document, and a table.

    make cluster
    .venv/bin/python -m bench.cluster --rounds 2 --duration 20
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from bench import load
from bench.run import BIN, ROOT, Server, free_port, new_partner_key

PARTNER = "bench-cluster"
CLUSTER_DIR = Path(os.environ.get("CLUSTER_DIR", "/var/tmp/coalition-cluster"))
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def log(message: str) -> None:
    print(f"[bench.cluster {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cluster_env() -> dict:
    """The environment of the cluster's app processes, as its own shell reads app.env."""
    app_env = CLUSTER_DIR / "app.env"
    if not app_env.exists():
        raise SystemExit(f"no {app_env}: run make cluster first")
    dump = subprocess.run(["bash", "-c", f"set -a; . {app_env}; env -0"], capture_output=True,
                          check=True, env={"PATH": os.environ["PATH"]}).stdout
    env = dict(item.split("=", 1) for item in dump.decode().split("\0") if "=" in item)
    return {**os.environ, **env, "RATELIMIT_ENABLED": "false", "COALITION_OPERATOR": "bench"}


def flask(env: dict, *args: str) -> dict:
    done = subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


class Balancer:
    """HAProxy in front of the given instances, leastconn, as the cluster's does it."""

    def __init__(self, name: str, servers: list[Server], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        lines = "\n".join(f"    server s{i} 127.0.0.1:{s.port}" for i, s in enumerate(servers))
        config = workdir / f"{name}.cfg"
        config.write_text(f"""global
    maxconn 512
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
frontend in
    bind 127.0.0.1:{self.port}
    default_backend apps
backend apps
    balance leastconn
    http-reuse safe
{lines}
""")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], cwd=workdir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                http.client.HTTPConnection("127.0.0.1", self.port, timeout=1).connect()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"HAProxy {name} did not start")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores, idle and iowait out)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds so far) of every live process."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        found[int(entry.name)] = (int(fields[1]), comm, (int(fields[11]) + int(fields[12])) / tick)
    return found


def postmasters() -> dict[int, str]:
    """The cluster's postmaster pids -> "primary" or "standby" (as they are now)."""
    roles = {}
    for pidfile in CLUSTER_DIR.glob("pg/*/postmaster.pid"):
        lines = pidfile.read_text().splitlines()
        standby = (pidfile.parent / "standby.signal").exists()
        roles[int(lines[0])] = "PostgreSQL standby" if standby else "PostgreSQL primary"
    return roles


def components(processes: dict, roles: dict[int, str]) -> dict[str, float]:
    """CPU seconds by part of the service: PostgreSQL primary and standby (a backend by its
    postmaster), pgbouncer, HAProxy, gunicorn (the app), the rest."""
    totals: dict[str, float] = Counter()
    for pid, (ppid, comm, cpu) in processes.items():
        if pid in roles:
            name = roles[pid]
        elif ppid in roles:
            name = roles[ppid]
        elif comm == "pgbouncer":
            name = "pgbouncer"
        elif comm.startswith("haproxy"):
            name = "HAProxy"
        elif comm.startswith("gunicorn") or "gunicorn" in comm:
            name = "gunicorn"
        else:
            name = "other"
        totals[name] += cpu
    return totals


def measured(run):
    """(result, service-side CPU seconds, CPU seconds by component) of `run()`. Components are
    live processes' own CPU time: a process that ends during the run is missed (few do: the
    pools keep their connections)."""
    roles = postmasters()
    before, parts_before = busy_cpu_s(), components(_processes(), roles)
    result = run()
    parts_after = components(_processes(), roles)
    parts = {name: round(parts_after[name] - parts_before.get(name, 0.0), 2)
             for name in parts_after}
    return result, max(0.0, busy_cpu_s() - before - result.client_cpu), parts


def _reader(index: int, base_url: str, signer: load.Signer, members: list[str], count: int,
            duration: float, barrier, queue) -> None:
    """Signed GET /v1/members/{id}/balance, tokens made before the clock starts."""
    from urllib.parse import urlsplit
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rng = random.Random(1000 + index)
    paths = [f"/v1/members/{rng.choice(members)}/balance" for _ in range(count)]
    heads = [load.sign_all(signer, "GET", path, [b""])[0] for path in paths]
    for head in heads:
        head.pop("Content-Type", None)
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    barrier.wait(timeout=300)
    statuses, latencies = Counter(), []
    start, cpu = time.monotonic(), time.process_time()
    deadline = start + duration
    for path, head in zip(paths, heads):
        if time.monotonic() >= deadline:
            break
        began = time.perf_counter()
        try:
            conn.request("GET", path, headers=head)
            answer = conn.getresponse()
            answer.read()
            status = answer.status
        except (OSError, http.client.HTTPException):
            status = 0
            conn.close()
        latencies.append(time.perf_counter() - began)
        statuses[status] += 1
    queue.put({"statuses": dict(statuses), "latencies": latencies, "start": start,
               "end": time.monotonic(), "cpu": time.process_time() - cpu})


def reads(name: str, base_url: str, signer: load.Signer, members: list[str], *, clients: int,
          duration: float, per_client: int) -> load.Result:
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(clients), ctx.Queue()
    procs = [ctx.Process(target=_reader, daemon=True, args=(
        i, base_url, signer, members, per_client, duration, barrier, queue))
        for i in range(clients)]
    for p in procs:
        p.start()
    result, starts, ends = load.Result(name, clients), [], []
    for _ in procs:
        report = queue.get(timeout=load.LIFETIME)
        result.statuses.update({int(k): v for k, v in report["statuses"].items()})
        result.latencies.extend(report["latencies"])
        result.client_cpu += report["cpu"]
        starts.append(report["start"])
        ends.append(report["end"])
    for p in procs:
        p.join(timeout=10)
    result.ok = sum(n for s, n in result.statuses.items() if 200 <= s < 300)
    result.seconds = max(ends) - min(starts)
    return result


def earns(name: str, url: str, signer: load.Signer, members: list[str], *, clients: int,
          duration: float, max_rate: float) -> load.Result:
    per_client = int(max_rate * duration / clients) + 1
    return load.run(name, url, "/v1/earn", signer, load.earn_bodies(members, per_client),
                    clients=clients, duration=duration)


def reads_while_claims_flow(name: str, url: str, signer, members, args) -> load.Result:
    """Balance reads for `duration`, while two clients book earns through the same balancer."""
    ctx = multiprocessing.get_context("fork")
    # Not a daemon: it starts load processes of its own.
    background = ctx.Process(target=lambda: earns(
        "background", url, signer, members, clients=2, duration=args.duration + 2, max_rate=400))
    background.start()
    time.sleep(1.0)
    try:
        return reads(name, url, signer, members, clients=args.clients, duration=args.duration,
                     per_client=int(3000 * args.duration / args.clients) + 1)
    finally:
        background.join(timeout=args.duration + 60)


def replica_served(env: dict) -> int:
    """Transactions the standby has ended so far: the app ends its read-only transactions on the
    standby with a rollback (coalition/replica.py), so both counters."""
    url = env.get("DATABASE_REPLICA_URL", "")
    if not url:
        return -1
    import psycopg
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, prepare_threshold=None, autocommit=True) as conn:
        return conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database "
                            "WHERE datname = current_database()").fetchone()[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--members", type=int, default=2000)
    args = p.parse_args(argv)

    env = cluster_env()
    if not env.get("DATABASE_REPLICA_URL"):
        raise SystemExit("app.env sets no DATABASE_REPLICA_URL: the standby cannot serve reads")
    primary_env = {k: v for k, v in env.items() if k != "DATABASE_REPLICA_URL"}
    workdir = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    servers: list = []
    balancers: list[Balancer] = []
    problems: list[str] = []
    try:
        tag = uuid.uuid4().hex[:6]  # a partner and members of this run's own
        partner = f"{PARTNER}-{tag}"
        flask(env, "partners", "add", partner, "--name", "Bench cluster")
        private, public, _kid = new_partner_key(workdir)
        flask(env, "partners", "add-key", partner, "--public-key", str(public))
        signer = load.Signer(partner, private)
        shape = argparse.Namespace(workers=int(env.get("WEB_CONCURRENCY", "1")),
                                   threads=int(env.get("GUNICORN_THREADS", "4")))
        for name, server_env in (("R1", env), ("R2", env), ("P1", primary_env),
                                 ("P2", primary_env)):
            server = Server(name, "wsgi:app", server_env, workdir, shape)
            servers.append(server)
            # Ready before the next one is made: free_port() hands out the first port no one
            # has bound yet, which would be this one's again.
            server.wait_ready("/readyz")
        r1, r2, p1, p2 = servers
        both, one, primary_only = (Balancer("both", [r1, r2], workdir),
                                   Balancer("one", [r1], workdir),
                                   Balancer("primary", [p1, p2], workdir))
        balancers += [both, one, primary_only]
        members = [f"bench-cl-{tag}-{i:06d}" for i in range(args.members)]
        log(f"enrolling {args.members} members")
        enrol = load.run("enrol", both.url, "/v1/members", signer,
                         lambda i: [load.compact({"member_id": m})
                                    for m in members[i::args.clients]], clients=args.clients)
        if enrol.failed:
            problems.append(f"enrol: {enrol.summary()}")
        warm = earns("warm-up", both.url, signer, members, clients=args.clients, duration=5,
                     max_rate=3000)
        max_rate = max(3 * warm.rate, 300)
        runs: dict[str, list] = {}
        for round_no in range(1, args.rounds + 1):
            for name, run in (
                    ("earn, 2 instances", lambda: earns("earn, 2 instances", both.url, signer,
                                                        members, clients=args.clients,
                                                        duration=args.duration,
                                                        max_rate=max_rate)),
                    ("earn, 1 instance", lambda: earns("earn, 1 instance", one.url, signer,
                                                       members, clients=args.clients,
                                                       duration=args.duration,
                                                       max_rate=max_rate)),
                    ("balance, standby", lambda: reads_while_claims_flow(
                        "balance, standby", both.url, signer, members, args)),
                    ("balance, primary", lambda: reads_while_claims_flow(
                        "balance, primary", primary_only.url, signer, members, args))):
                standby_before = replica_served(env)
                result, cpu, parts = measured(run)
                standby_xacts = replica_served(env) - standby_before
                runs.setdefault(name, []).append((result, cpu, standby_xacts, parts))
                if result.failures:
                    problems.append(f"{name}, round {round_no}: {result.summary()}")
                log(f"round {round_no} {name}: {result.rate:.0f}/s, p50 "
                    f"{result.percentile(0.5):.1f} ms, {1000 * cpu / max(1, result.ok):.2f} "
                    f"CPU ms each, standby transactions {standby_xacts}, CPU s by part {parts}")
        report = summarise(runs)
        report["problems"] = problems
        report["load_average"] = os.getloadavg()
        for server in servers:
            if server.log_problems():
                problems.append(f"{server.name}: errors in its log:\n{server.log_tail()}")
        print(json.dumps(report, indent=2))
        print(table_of(report), file=sys.stderr)
        return 1 if problems else 0
    finally:
        for balancer in balancers:
            balancer.stop()
        for server in servers:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def summarise(runs: dict) -> dict:
    merged = {}
    for name, results in runs.items():
        result = load.merge(name, [r for r, *_ in results])
        cpu = sum(c for _, c, _, _ in results)
        parts: dict[str, float] = Counter()
        for *_, round_parts in results:
            parts.update(round_parts)
        merged[name] = {**result.summary(), "cpu_ms_per_answer": round(1000 * cpu / max(1, result.ok), 2),
                        "cpu_ms_per_answer_by_part": {
                            part: round(1000 * seconds / max(1, result.ok), 2)
                            for part, seconds in sorted(parts.items())},
                        "standby_transactions": sum(s for _, _, s, _ in results),
                        "per_round": [round(r.rate, 1) for r, *_ in results]}
    two, one = merged["earn, 2 instances"], merged["earn, 1 instance"]
    standby, primary = merged["balance, standby"], merged["balance, primary"]
    return {"scenarios": merged,
            "earn_2_vs_1": round(two["rate"] / one["rate"], 2) if one["rate"] else None,
            "balance_standby_vs_primary": (round(standby["rate"] / primary["rate"], 2)
                                           if primary["rate"] else None)}


def table_of(report: dict) -> str:
    rows = [("scenario", "rate/s", "p50 ms", "p99 ms", "CPU ms each", "per round")]
    for name, s in report["scenarios"].items():
        rows.append((name, f"{s['rate']:,.0f}", f"{s['p50_ms']:.1f}", f"{s['p99_ms']:.1f}",
                     f"{s['cpu_ms_per_answer']:.2f}", ", ".join(f"{r:.0f}" for r in s["per_round"])))
    lines = [f"{r[0]:<20} {r[1]:>8} {r[2]:>8} {r[3]:>8} {r[4]:>12}  {r[5]}" for r in rows]
    return ("\n".join(lines) + f"\nearn, 2 instances / 1 instance: {report['earn_2_vs_1']}x (target 1.6x)"
            f"\nbalance reads, standby serving / primary alone: "
            f"{report['balance_standby_vs_primary']}x (target 2x)\n")


if __name__ == "__main__":
    sys.exit(main())
