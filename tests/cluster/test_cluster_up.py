"""Smoke test of `make cluster` (deploy/cluster/): the primary with its synchronous standby, a
write seen on the standby at once, both app instances and HAProxy ready, a signed earn through
HAProxy booked on both servers, and `make cluster-down` leaving nothing running.

COALITION_CLUSTER=1 only (tests/cluster/conftest.py). The tests run in this order and share one
cluster; the last one stops it.
"""
from __future__ import annotations

import csv
import io
import os
import uuid
from pathlib import Path

import psycopg
import pytest
import requests

from partners.client import PartnerClient, keygen, load_private_key

from .conftest import APP_PORTS, HAPROXY, PG_PORTS, STATS, Cluster


def connect(port: int, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=dbname,
                           autocommit=True, connect_timeout=5)


def roles() -> dict[str, int]:
    found = {}
    for port in PG_PORTS:
        with connect(port) as conn:
            standby = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        found["standby" if standby else "primary"] = port
    assert set(found) == {"primary", "standby"}, found
    return found


def test_the_standby_streams_synchronously(cluster: Cluster):
    servers = roles()
    with connect(servers["primary"]) as conn:
        rows = conn.execute("SELECT application_name, state, sync_state FROM pg_stat_replication"
                            ).fetchall()
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                    for name in ("synchronous_commit", "wal_level")}
    assert rows == [(f"coalition_{servers['standby']}", "streaming", "sync")]
    assert settings == {"synchronous_commit": "remote_apply", "wal_level": "replica"}


def test_a_write_on_the_primary_is_on_the_standby_at_once(cluster: Cluster):
    """remote_apply: the commit returns only once the standby has applied it, so the very first
    read there sees it, with no waiting."""
    servers = roles()
    marker = uuid.uuid4().hex
    with connect(servers["primary"]) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS cluster_smoke (marker text PRIMARY KEY)")
        conn.execute("INSERT INTO cluster_smoke VALUES (%s)", (marker,))
    with connect(servers["standby"]) as conn:
        seen = conn.execute("SELECT count(*) FROM cluster_smoke WHERE marker = %s",
                            (marker,)).fetchone()[0]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO cluster_smoke VALUES ('refused on a standby')")
    assert seen == 1


def test_both_pgbouncers_lead_to_their_server(cluster: Cluster):
    servers = roles()
    for pg, bouncer in ((5440, 6440), (5441, 6441)):
        with connect(bouncer, "coalition") as conn:
            port, standby = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
        assert port == pg
        assert standby == (servers["standby"] == pg)


def haproxy_servers() -> dict[str, dict[str, str]]:
    text = requests.get(STATS, timeout=5).text.lstrip("# ")
    return {row["svname"]: row for row in csv.DictReader(io.StringIO(text))
            if row["pxname"] == "app" and row["svname"].startswith("app")}


def test_every_instance_and_haproxy_are_ready(cluster: Cluster):
    for port in APP_PORTS:
        answer = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert (port, answer.status_code, answer.json()) == (port, 200, {"status": "ready"})
    before = {name: int(row["stot"]) for name, row in haproxy_servers().items()}
    for _ in range(10):
        assert requests.get(f"{HAPROXY}/readyz", timeout=5).status_code == 200
    after = haproxy_servers()
    assert sorted(after) == ["app1", "app2"]
    # "UP", or "UP 1/2" right after one slow check on a busy machine (still in rotation).
    statuses = {name: row["status"] for name, row in after.items()}
    assert all(status.startswith("UP") for status in statuses.values()), statuses
    # Both instances served some of the ten (leastconn: idle instances take turns).
    assert all(int(after[name]["stot"]) > before[name] for name in after), (before, after)


def test_a_signed_earn_through_haproxy_is_booked_on_both_servers(cluster: Cluster, tmp_path):
    partner = f"smoke-{uuid.uuid4().hex[:8]}"
    member = f"SMOKE-{uuid.uuid4().hex[:8]}"
    key = tmp_path / "partner.pem"
    keygen("EdDSA", str(key))
    cluster.flask("partners", "add", partner, "--name", "Cluster Smoke")
    cluster.flask("partners", "add-key", partner, "--public-key", f"{key}.pub")
    client = PartnerClient(HAPROXY, partner, load_private_key(key))
    assert client.enrol(member).status in (200, 201)
    claim = uuid.uuid4().hex
    earned = client.earn(claim, member, 120)
    assert earned.status == 201, earned.body
    assert earned.json()["balance_after"] == 120
    assert client.balance(member).json()["available"] == 120
    # Acknowledged means applied on the standby too (remote_apply).
    servers = roles()
    for port in (servers["primary"], servers["standby"]):
        with connect(port, "coalition") as conn:
            booked = conn.execute("SELECT count(*) FROM journal_entries WHERE partner_id = %s "
                                  "AND claim_id = %s", (partner, claim)).fetchone()[0]
        assert (port, booked) == (port, 1)


def test_status_reports_healthy(cluster: Cluster):
    status = cluster.script("status", check=False)
    assert status.returncode == 0, status.stdout
    assert "healthy" in status.stdout.splitlines()[-1]


def our_processes(directory: Path) -> list[str]:
    """Processes whose command line names the cluster's directory or its scripts."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (str(directory) in cmdline or "deploy/cluster/" in cmdline):
            found.append(f"{proc.name}: {cmdline}")
    return found


def listening(port: int) -> bool:
    import socket
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_cluster_down_leaves_no_process_behind(cluster: Cluster):
    assert our_processes(cluster.directory), "the cluster should be running before it is stopped"
    down = cluster.make("cluster-down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert our_processes(cluster.directory) == []
    ports = (*PG_PORTS, 6440, 6441, 6390, 8100, *APP_PORTS, 8199)
    assert [port for port in ports if listening(port)] == []
    # Data kept for the next make cluster (CLUSTER_WIPE=1 would delete it).
    assert (cluster.directory / "pg" / "5440" / "PG_VERSION").exists()
    assert list((cluster.directory / "run").glob("*.pid")) == []
