"""Failover drills on `make cluster`: signed claims through HAProxy while a piece of the cluster
is killed and repaired; every acknowledged claim booked exactly once, nothing booked that no
client sent, the ledger verified, and the claims counted per phase (printed at the end of the
run: tests/cluster/conftest.py).

1. The primary's postmaster gets SIGKILL, then deploy/cluster/promote makes the standby the
   primary; measured: from the kill to the first acknowledged claim sent after it. Then
   deploy/cluster/rebuild-standby makes the old primary the new standby.
2. One app instance (gunicorn's master and workers) gets SIGKILL: HAProxy's check takes it out,
   the other carries the load; deploy/cluster/restart-instance brings it back.
3. Redis gets SIGKILL: the rate limits fail open (coalition/limits.py), every claim is answered
   as before, no 5xx; deploy/cluster/up starts Redis again.
4. deploy/cluster/rolling-restart (an upgrade's last step) restarts every instance and sealer in
   turn under load: not one attempt fails, not one needs a retry.

COALITION_CLUSTER=1 only (tests/cluster/conftest.py). They run after the smoke test, which
stops the cluster at its end: the first drill starts it again, and each drill leaves it healthy
(deploy/cluster/status) for the next. Phase lengths (seconds): CLUSTER_DRILL_WARMUP_S (6),
CLUSTER_DRILL_FAULT_S (8: how long a lost instance or Redis stays lost under load),
CLUSTER_DRILL_AFTER_S (8). docs/operations.md, "Failover drills".
"""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import requests

from partners.client import PartnerClient, keygen, load_private_key

from .conftest import HAPROXY, PG_PORTS, REPORT, STATS, Cluster
from .drill import (TRANSIENT, Load, counts, first_acknowledged_after, journal, ledger_problems,
                    unexpected)

WARMUP_S = float(os.environ.get("CLUSTER_DRILL_WARMUP_S", "6"))
FAULT_S = float(os.environ.get("CLUSTER_DRILL_FAULT_S", "8"))
AFTER_S = float(os.environ.get("CLUSTER_DRILL_AFTER_S", "8"))
PARTNERS = 3
MEMBERS = [f"DRILL-{n:03d}" for n in range(24)]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return value


def role(port: int) -> str:
    try:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                             autocommit=True, connect_timeout=3) as conn:
            return "standby" if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0] else "primary"
    except psycopg.OperationalError:
        return "down"


def primary() -> int:
    found = [port for port in PG_PORTS if role(port) == "primary"]
    assert len(found) == 1, {port: role(port) for port in PG_PORTS}
    return found[0]


def sealed_up_to(port: int) -> int:
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="coalition",
                         autocommit=True, connect_timeout=5) as conn:
        return conn.execute("SELECT coalesce(max(last_entry_id), 0) FROM ledger_blocks").fetchone()[0]


def haproxy_status(server: str) -> str:
    try:
        text = requests.get(STATS, timeout=3).text.lstrip("# ")
    except requests.RequestException:
        return "unknown"
    for row in csv.DictReader(io.StringIO(text)):
        if row["pxname"] == "app" and row["svname"] == server:
            return row["status"]
    return "missing"


def healthy(cluster: Cluster) -> bool:
    return cluster.script("status", check=False).returncode == 0


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def log_lines(path: Path, needle: str) -> int:
    try:
        return sum(needle in line for line in path.read_text(errors="replace").splitlines())
    except OSError:
        return 0


@pytest.fixture(scope="module")
def drills(cluster: Cluster, tmp_path_factory):
    """The cluster up and healthy (the smoke test stopped it), and partners of the drills with
    their keys and enrolled members."""
    if not healthy(cluster):
        up = cluster.make("cluster")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    for port in PG_PORTS:  # a former primary fenced by a drill that failed before it rebuilt it
        if (cluster.directory / "pg" / str(port) / "FENCED").exists():
            rebuild = cluster.script("rebuild-standby", str(port), check=False)
            assert rebuild.returncode == 0, rebuild.stdout + rebuild.stderr
    wait_until(lambda: healthy(cluster), 60, "deploy/cluster/status to report healthy")
    work = tmp_path_factory.mktemp("drills")
    partners = {}
    run = uuid.uuid4().hex[:6]
    for n in range(PARTNERS):
        partner, key = f"drill{run}-{n}", work / f"drill-{n}.pem"
        keygen("EdDSA", str(key))
        cluster.flask("partners", "add", partner, "--name", f"Failover Drill {n}")
        cluster.flask("partners", "add-key", partner, "--public-key", f"{key}.pub")
        partners[partner] = str(key)
    first = next(iter(partners))
    client = PartnerClient(HAPROXY, first, load_private_key(partners[first]))
    for member in MEMBERS:
        assert client.enrol(member).status in (200, 201)
    return partners


def settle_and_verify(cluster: Cluster, load: Load, drill: str, phases, detail: str,
                      allowed: set[str]) -> dict:
    """The checks every drill makes once its load has stopped, on the current primary."""
    rows = counts(load.claims, phases)
    REPORT.append({"drill": drill, "detail": detail, "rows": rows})
    port = primary()
    booked = journal(port, list(load.partners), drill)
    problems = ledger_problems(load.claims, booked)
    assert not problems, f"{len(problems)} claims wrong in the ledger: {problems[:10]}"
    odd = unexpected(load.claims, allowed)
    assert not odd, f"{len(odd)} answers no client may get during this drill: {odd[:10]}"
    assert rows[-1]["acknowledged"] > 0
    # The sealer (restarted by its supervisor if the fault ended it) seals what the drill booked.
    last = max(row["id"] for entries in booked.values() for row in entries)
    wait_until(lambda: sealed_up_to(port) >= last, 60, "the sealer to seal the drill's claims")
    verified = cluster.flask("ledger", "verify", "--anchors",
                             str(cluster.directory / "anchors.jsonl"), check=False)
    report = json.loads(verified.stdout or "{}")
    assert verified.returncode == 0 and report.get("ok"), (verified.stdout[-2000:],
                                                            verified.stderr[-2000:])
    return rows[-1]


def test_primary_killed_then_promoted(cluster: Cluster, drills):
    """SIGKILL to the primary's postmaster under load, deploy/cluster/promote at once (the
    detection an operator or a watchdog would add is not part of the figure)."""
    old = primary()
    sealer_logs = list((cluster.directory / "log").glob("sealer-*.log"))
    restarts_before = sum(log_lines(path, '"supervisor-restart"') for path in sealer_logs)
    load = Load(HAPROXY, drills, MEMBERS, "primary-kill")
    started = load.start()
    time.sleep(WARMUP_S)
    pid = int((cluster.directory / "pg" / str(old) / "postmaster.pid").read_text().split()[0])
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 10, "the postmaster to die")
    promote = cluster.script("promote", check=False)
    promoted = time.monotonic()
    assert promote.returncode == 0, promote.stdout + promote.stderr
    time.sleep(AFTER_S)
    load.stop()
    first = first_acknowledged_after(load.claims, killed)
    new = primary()
    detail = (f"SIGKILL to the postmaster of {old} (pid {pid}) {killed - started:.1f} s into the "
              f"load; deploy/cluster/promote made {new} the primary in {promoted - killed:.1f} s "
              f"({promote.stdout.strip()}); first claim sent after the kill acknowledged "
              + (f"{first - killed:.2f} s after the kill" if first else "never"))
    phases = [("before", started), ("failover", killed), ("after", promoted)]
    try:
        settle_and_verify(cluster, load, "primary-kill", phases, detail, TRANSIENT)
    finally:
        restarts = sum(log_lines(path, '"supervisor-restart"') for path in sealer_logs)
        REPORT[-1]["detail"] += (f"; sealers restarted by their supervisor: "
                                 f"{restarts - restarts_before}")
    assert new != old
    assert first is not None

    rebuild = cluster.script("rebuild-standby", check=False)
    assert rebuild.returncode == 0, rebuild.stdout + rebuild.stderr
    wait_until(lambda: healthy(cluster), 60, "deploy/cluster/status to report healthy again")
    assert role(old) == "standby"
    REPORT[-1]["detail"] += f"; rebuild-standby: {rebuild.stderr.strip().splitlines()[-1]}"


def test_app_instance_killed_then_restarted(cluster: Cluster, drills):
    """SIGKILL to instance 1's whole process group (master and workers) under load."""
    pidfile = cluster.directory / "run" / "app-1.pid"
    load = Load(HAPROXY, drills, MEMBERS, "instance-kill")
    started = load.start()
    time.sleep(WARMUP_S)
    master = int(pidfile.read_text())
    killed = time.monotonic()
    os.killpg(master, signal.SIGKILL)
    wait_until(lambda: haproxy_status("app1").startswith("DOWN"), 15, "HAProxy to take app1 out")
    down = time.monotonic()
    time.sleep(max(0.0, FAULT_S - (down - killed)))
    restarting = time.monotonic()
    restart = cluster.script("restart-instance", "1", check=False)
    back = time.monotonic()
    assert restart.returncode == 0, restart.stdout + restart.stderr
    time.sleep(AFTER_S)
    load.stop()
    detail = (f"SIGKILL to instance 1 (master {master} and its workers) {killed - started:.1f} s "
              f"into the load; HAProxy took it out after {down - killed:.1f} s; "
              f"deploy/cluster/restart-instance 1 had it UP again in {back - restarting:.1f} s")
    phases = [("before", started), ("instance lost", killed), ("restarting", restarting),
              ("after", back)]
    total = settle_and_verify(cluster, load, "instance-kill", phases, detail, TRANSIENT)
    lost = next(row for row in REPORT[-1]["rows"] if row["phase"] == "instance lost")
    assert lost["acknowledged"] > 0, "nothing was acknowledged while one instance was left"
    assert total["acknowledged"] > 0
    assert haproxy_status("app1").startswith("UP")
    wait_until(lambda: healthy(cluster), 30, "deploy/cluster/status to report healthy again")


def test_redis_killed_then_restarted(cluster: Cluster, drills):
    """SIGKILL to Redis under load: the rate limits fail open; nothing else notices."""
    logs = [cluster.directory / "log" / f"app-{n}.log" for n in (1, 2)]
    needle = "rate limit storage failed"
    failed_open_before = sum(log_lines(path, needle) for path in logs)
    pidfile = cluster.directory / "run" / "redis.pid"
    load = Load(HAPROXY, drills, MEMBERS, "redis-kill")
    started = load.start()
    time.sleep(WARMUP_S)
    pid = int(pidfile.read_text())
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 10, "Redis to die")
    time.sleep(FAULT_S)
    restarting = time.monotonic()
    up = cluster.script("up", check=False)
    back = time.monotonic()
    assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
    time.sleep(AFTER_S)
    load.stop()
    failed_open = sum(log_lines(path, needle) for path in logs) - failed_open_before
    detail = (f"SIGKILL to Redis (pid {pid}) {killed - started:.1f} s into the load, restarted "
              f"{restarting - killed:.1f} s later by deploy/cluster/up ({back - restarting:.1f} s); "
              f"requests let through unlimited meanwhile (\"{needle}\" logged): {failed_open}")
    phases = [("before", started), ("redis lost", killed), ("restarting", restarting),
              ("after", back)]
    settle_and_verify(cluster, load, "redis-kill", phases, detail, TRANSIENT)
    rows = {row["phase"]: row for row in REPORT[-1]["rows"]}
    # While Redis is away nothing but bookings and definitive rejections: no 5xx, no 429, no
    # retry at all (the instances and the database are all there).
    assert rows["redis lost"]["acknowledged"] > 0
    assert not rows["redis lost"]["errors"], rows["redis lost"]["errors"]
    assert failed_open > 0, "no request met the dead Redis: the drill did not test the fail-open"
    wait_until(lambda: healthy(cluster), 30, "deploy/cluster/status to report healthy again")


def test_rolling_restart_under_load(cluster: Cluster, drills):
    """deploy/cluster/rolling-restart under load: each instance drained by HAProxy, stopped
    gracefully, started again and taken back, its sealer restarted; no request may fail."""
    masters = {n: int((cluster.directory / "run" / f"app-{n}.pid").read_text()) for n in (1, 2)}
    load = Load(HAPROXY, drills, MEMBERS, "rolling-restart")
    started = load.start()
    time.sleep(WARMUP_S)
    restarting = time.monotonic()
    restart = cluster.script("rolling-restart", check=False)
    done = time.monotonic()
    assert restart.returncode == 0, restart.stdout + restart.stderr
    time.sleep(AFTER_S)
    load.stop()
    renewed = {n: int((cluster.directory / "run" / f"app-{n}.pid").read_text()) for n in (1, 2)}
    detail = (f"deploy/cluster/rolling-restart {restarting - started:.1f} s into the load took "
              f"{done - restarting:.1f} s for both instances and their sealers")
    phases = [("before", started), ("restarting", restarting), ("after", done)]
    total = settle_and_verify(cluster, load, "rolling-restart", phases, detail, allowed=set())
    assert all(renewed[n] != masters[n] for n in masters), (masters, renewed)
    rows = {row["phase"]: row for row in REPORT[-1]["rows"]}
    assert rows["restarting"]["acknowledged"] > 0
    assert total["retries"] == 0 and not total["errors"], total
    assert all(haproxy_status(f"app{n}").startswith("UP") for n in (1, 2))
