"""Crash suite (issue 4): claims under load survive killed workers, a killed master, a restarted
PostgreSQL and a graceful shutdown, each acknowledged claim booked exactly once.

Per fault: six client processes (two per partner) post earns, burns and reversals for a few
seconds, the fault strikes, the load goes on while the service recovers, then the clients stop
and finish the claim in hand. Then every acknowledged claim must be in the journal exactly once
with what was sent, nothing else of this phase may be there (no phantom, no half-booked claim),
and `flask ledger verify` must re-derive every balance from the journal.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import time
import zlib
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from . import load
from .conftest import PARTNERS, REPORT
from .server import WORKERS, wait_until

CLIENTS_PER_PARTNER = 2
WARMUP_S = float(os.environ.get("CRASH_WARMUP_S", "3"))
AFTER_S = float(os.environ.get("CRASH_AFTER_S", "5"))


def restart_postgres() -> str:
    command = os.environ.get("CRASH_PG_RESTART")
    if command is None:
        versions = sorted(os.listdir("/etc/postgresql")) if os.path.isdir("/etc/postgresql") else []
        if not versions:
            pytest.skip("no local PostgreSQL cluster to restart (set CRASH_PG_RESTART)")
        command = f"pg_ctlcluster --skip-systemctl-redirect {versions[-1]} main restart"
    subprocess.run(command, shell=True, check=True, timeout=120, capture_output=True)
    return command


def kill_workers(service) -> str:
    """First the worker inside a claim (its body half sent): nothing may be booked, and the retry
    books it once. Then workers picked blindly, whatever they are doing."""
    server = service.server
    before = set(server.workers())
    with InFlightClaim(service, "inflight-worker-1") as in_flight:
        victim = in_flight.worker(server)
        os.kill(victim, signal.SIGKILL)
        assert in_flight.finish() is None, "a killed worker answered"
    assert not journal(service.database_url, "inflight-worker"), "a killed request left a booking"
    assert in_flight.retry().status == 201
    assert len(journal(service.database_url, "inflight-worker")) == 1
    killed = [victim]
    for _ in range(4):
        killed.append(server.kill_worker(spare=killed))
        time.sleep(0.75)
    wait_until(lambda: len(server.workers()) == WORKERS and not set(killed) & set(server.workers()),
               30, "the master to replace its workers")
    return (f"SIGKILL to workers {killed} of {sorted(before)}, the first inside a claim (its "
            "connection reset, nothing booked, the retry booked once); the master replaced them")


def kill_master(service) -> str:
    server = service.server
    old = server.master
    server.kill_master()
    started = time.monotonic()
    server.start()  # at once, as a supervisor would; the orphaned workers still hold the old socket
    return (f"SIGKILL to master {old} (workers {server.orphans} orphaned); a new master served "
            f"again after {time.monotonic() - started:.1f} s")


def restart_database(service) -> str:
    before = postmaster_started(service.database_url)
    started = time.monotonic()
    command = restart_postgres()
    took = time.monotonic() - started
    assert postmaster_started(service.database_url) != before, "PostgreSQL did not restart"
    return f"`{command}` took {took:.1f} s"


def postmaster_started(database_url: str):
    return scalar(database_url, "SELECT pg_postmaster_start_time()")


def sealed_up_to(database_url: str) -> int:
    return scalar(database_url, "SELECT coalesce(max(last_entry_id), 0) FROM ledger_blocks")


@contextmanager
def connected(database_url: str):
    """A connection of its own, not pooled: the server may have restarted since the last one."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def scalar(database_url: str, sql: str):
    with connected(database_url) as connection:
        return connection.scalar(text(sql))


def terminate(service) -> str:
    """SIGTERM while a claim is mid-upload: that request must still be booked and answered."""
    server = service.server
    with InFlightClaim(service, "inflight-sigterm-1") as in_flight:
        in_flight.worker(server)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        status = in_flight.finish()
        code = server.process.wait(60)
    stopped = time.monotonic() - started
    assert status == 201, f"the request in flight at SIGTERM got {status}"
    assert code == 0, f"gunicorn exited {code} on SIGTERM"
    assert len(journal(service.database_url, "inflight-sigterm")) == 1
    server.start()
    return (f"SIGTERM with a claim mid-upload: it was answered 201 and booked; gunicorn drained and "
            f"exited 0 after {stopped:.1f} s; serving again {time.monotonic() - started:.1f} s after "
            f"the signal")


class InFlightClaim:
    """A signed earn whose body is sent in two halves, so a worker is inside the request."""

    def __init__(self, service, claim_id: str) -> None:
        from partners.client import PartnerClient, load_private_key, rfc3339
        partner = next(iter(PARTNERS))
        self.client = client = PartnerClient(service.server.url, partner,
                                             load_private_key(service.keys[partner]))
        self.body = client.encode_body({"claim_id": claim_id, "member_id": service.members[0],
                                        "points": 7, "occurred_at": rfc3339(None)})
        headers = client.sign("POST", "/v1/earn", self.body)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = (f"POST /v1/earn HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
                     f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n").encode()
        self.port = service.server.port

    def __enter__(self):
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.sock.sendall(self.head + self.body[:10])
        return self

    def worker(self, server) -> int:
        """The worker inside this request; under load it may wait in the backlog a while."""
        port, found = self.sock.getsockname()[1], []

        def accepted() -> bool:
            try:
                found.append(server.worker_serving(port))
            except LookupError:
                return False
            return True

        wait_until(accepted, 30, "a worker to accept the half-sent claim")
        return found[-1]

    def finish(self) -> int | None:
        """The answer's status, or None when the connection died without one."""
        try:
            self.sock.sendall(self.body[10:])
            reply = b""
            while chunk := self.sock.recv(65536):
                reply += chunk
        except OSError:
            return None
        return int(reply.split(b" ", 2)[1]) if reply else None

    def retry(self):
        """The same body under a fresh token, as a partner retries."""
        return self.client.request("POST", "/v1/earn", json.loads(self.body))

    def __exit__(self, *exc) -> None:
        self.sock.close()


def lose_answers(service) -> str:
    """The network drops the answer: the client hangs up right after sending. The claim is booked
    anyway, and the retry is told so (201 with Idempotent-Replayed) instead of booking twice."""
    replayed = 0
    for n in range(5):
        claim_id = f"inflight-lost-{n}"
        with InFlightClaim(service, claim_id) as in_flight:
            in_flight.sock.sendall(in_flight.body[10:])
        wait_until(lambda: any(key[1] == claim_id for key in journal(service.database_url, "inflight-lost")),
                   30, f"{claim_id} to be booked")
        answer = in_flight.retry()
        assert answer.status == 201 and answer.headers.get("idempotent-replayed") == "true", answer
        replayed += 1
    assert len(journal(service.database_url, "inflight-lost")) == 5
    return (f"{replayed} claims whose answer was lost (the client hung up after sending): each "
            "booked once, each retry answered 201 Idempotent-Replayed")


FAULTS = {"worker-sigkill": kill_workers, "master-sigkill": kill_master,
          "postgres-restart": restart_database, "sigterm": terminate, "answer-lost": lose_answers}


def run_load(service, fault: str) -> list[dict]:
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    configs = [load.LoadConfig(client=f"{fault}-{p.split('-')[1]}-{n}", base_url=service.server.url,
                               partner_id=p, key_path=str(service.keys[p]), members=service.members,
                               out_path=str(service.work / f"{fault}-{p}-{n}.json"), 
                               seed=zlib.crc32(f"{fault}/{p}/{n}".encode()))
               for p in PARTNERS for n in range(CLIENTS_PER_PARTNER)]
    processes = [context.Process(target=load.run, args=(c, stop)) for c in configs]
    for process in processes:
        process.start()
    try:
        time.sleep(WARMUP_S)
        detail = FAULTS[fault](service)
        time.sleep(AFTER_S)
    finally:
        stop.set()
        for process in processes:
            process.join(180)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    claims = []
    for config in configs:
        for claim in json.loads(Path(config.out_path).read_text()):
            claims.append({**claim, "partner_id": config.partner_id})
    return claims, detail


def journal(database_url: str, fault: str) -> dict[tuple[str, str], list[dict]]:
    with connected(database_url) as connection:
        rows = connection.execute(text(
            "SELECT e.id, e.partner_id, e.claim_id, e.kind, e.points, m.external_id AS member_id, "
            "       r.claim_id AS reverses "
            "FROM journal_entries e JOIN members m ON m.id = e.member_id "
            "LEFT JOIN journal_entries r ON r.id = e.reverses_id "
            "WHERE e.claim_id LIKE :prefix"), {"prefix": f"{fault}-%"}).mappings().all()
    found: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        found.setdefault((row["partner_id"], row["claim_id"]), []).append(dict(row))
    return found


@pytest.mark.parametrize("fault", list(FAULTS))
def test_every_acknowledged_claim_survives_exactly_once(service, fault):
    claims, detail = run_load(service, fault)
    if fault == "master-sigkill":
        wait_until(service.server.orphans_gone, 60, "the orphaned workers to exit")
    booked = journal(service.database_url, fault)

    unanswered = [c["claim_id"] for c in claims if c["outcome"] == "unanswered"]
    acknowledged = {(c["partner_id"], c["claim_id"]): c for c in claims if c["outcome"] == "acknowledged"}
    rejected = {(c["partner_id"], c["claim_id"]) for c in claims if c["outcome"] == "rejected"}
    errors = Counter(e.split(":")[0] if e[0].isdigit() else e for c in claims for e in c["errors"])
    REPORT.append({
        "fault": fault, "detail": detail, "sent": len(claims), "acknowledged": len(acknowledged),
        "rejected": len(rejected), "retried": sum(c["attempts"] > 1 for c in claims),
        "retries": sum(c["attempts"] - 1 for c in claims),
        "replayed": sum(c["replayed"] for c in acknowledged.values()),
        "found": sum(1 for key in acknowledged if len(booked.get(key, [])) == 1),
        "unanswered": len(unanswered), "errors": dict(errors)})

    assert not unanswered, f"claims the service never answered: {unanswered[:10]}"
    for key, claim in acknowledged.items():
        rows = booked.get(key, [])
        assert len(rows) == 1, f"acknowledged claim {key} is in the journal {len(rows)} times"
        row = rows[0]
        assert (row["kind"], row["points"]) == (claim["kind"], claim["points"]), (key, row, claim)
        if claim["kind"] == "reversal":
            assert row["reverses"] == claim["reverses"], (key, row, claim)
        else:
            assert row["member_id"] == claim["member_id"], (key, row, claim)
    phantoms = set(booked) - set(acknowledged)
    assert not phantoms, f"booked but never acknowledged: {sorted(phantoms)[:10]}"
    assert not rejected & set(booked)

    assert service.sealer.poll() is None, "the sealer sidecar died"
    # Everything this phase booked gets sealed by the sidecar: a fault must not stall it.
    last = max(row["id"] for rows in booked.values() for row in rows)
    wait_until(lambda: sealed_up_to(service.database_url) >= last, 60, "the sidecar to seal the phase")
    verified = service.flask("ledger", "verify", "--anchors", str(service.work / "anchors.jsonl"),
                             check=False)
    report = json.loads(verified.stdout)
    assert verified.returncode == 0 and report["ok"], report
