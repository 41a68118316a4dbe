"""The restore drill: a ledger backed up, damaged by a "mistake", and restored to the moment
before it, on PostgreSQL servers of the test's own (5450 the source, 5451 the restored copy).

Phase 1 claims, sealed and anchored; a base backup (deploy/backup); phase 2, sealed and
anchored; the moment T (and a restore point); phase 3, the mistake, sealed and anchored too;
the WAL switched so the archive holds it. deploy/restore to T must give a ledger of exactly the
phase 1 and 2 claims that `ledger verify` passes when held to the anchors written up to T,
and that the later anchor, naming a block the copy never had, fails. The same again to the
named restore point; then retention (deploy/backup --prune 1). Skipped unless
COALITION_BACKUP_DRILL=1 (tests/backup/conftest.py). `make backup-drill`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import new_key, public_pem
from tests.crash.server import BIN, ROOT, free_port, wait_until

from .conftest import REPORT

PGBIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
SOURCE, TARGET = 5450, 5451
DATABASE = "coalition"
PARTNER = "drill-partner"
MEMBERS = [f"DRILL-{n:02d}" for n in range(6)]
PER_PHASE = 30
RESTORE_POINT = "drill-before-mistake"


def as_postgres(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True,
                          capture_output=True, text=True, timeout=120, **kw)


def port_free(port: int) -> bool:
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def sql(port: int, query: str, dbname: str = "postgres", autocommit: bool = True) -> list[tuple]:
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=dbname,
                         autocommit=autocommit, connect_timeout=5) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else []


def stop(datadir: Path) -> None:
    if (datadir / "postmaster.pid").exists():
        subprocess.run(["runuser", "-u", "postgres", "--", str(PGBIN / "pg_ctl"), "-D", str(datadir),
                        "-m", "fast", "-w", "stop"], capture_output=True, timeout=60)


@pytest.fixture
def work():
    if os.geteuid() != 0:
        pytest.fail("the drill runs PostgreSQL as postgres through runuser: run it as root")
    for port in (SOURCE, TARGET):
        if not port_free(port):
            pytest.fail(f"port {port} is in use: the drill needs 5450 and 5451 for its own servers")
    # Not pytest's tmp_path: the postgres user must reach it (/tmp/pytest-of-root is 0700).
    directory = Path(tempfile.mkdtemp(prefix="backup-dev-drill-", dir="/var/tmp"))
    directory.chmod(0o755)
    yield directory
    for datadir in directory.glob("pg-*"):
        stop(datadir)
    if os.environ.get("BACKUP_DRILL_KEEP") != "1":
        shutil.rmtree(directory, ignore_errors=True)


def make_source(work: Path) -> Path:
    datadir, archive = work / "pg-source", work / "archive"
    for d in (datadir, archive, work / "log"):
        d.mkdir(mode=0o700)
        shutil.chown(d, "postgres", "postgres")
    as_postgres(str(PGBIN / "initdb"), "-D", str(datadir), "-U", "postgres", "-E", "UTF8",
                "--locale=C.UTF-8", "-k", "--auth=trust")
    # The archive settings of make cluster (deploy/cluster/lib.sh, cluster.conf).
    with open(datadir / "postgresql.conf", "a") as conf:
        conf.write(f"port = {SOURCE}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
                   f"archive_mode = always\n"
                   f"archive_command = '{ROOT}/deploy/archive-wal %p %f {archive}'\n")
    as_postgres(str(PGBIN / "pg_ctl"), "-D", str(datadir), "-l", str(work / "log" / "source.log"), "-w",
                "start")
    sql(SOURCE, f"CREATE DATABASE {DATABASE}")
    return archive


def serve(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """The app under gunicorn, one worker: the drill needs real signed HTTP, not throughput."""
    port = free_port()
    with open(log, "ab") as out:
        process = subprocess.Popen([str(BIN / "gunicorn"), "-w", "1", "--threads", "2", "-b",
                                    f"127.0.0.1:{port}", "--no-control-socket", "wsgi:app"],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return process.poll() is not None  # exited: fail below, not after the timeout

    wait_until(ready, 60, "gunicorn to answer /readyz")
    assert process.poll() is None, f"gunicorn exited: {log}"
    return process, url


def claim_ids(port: int) -> set[str]:
    rows = sql(port, f"SELECT claim_id FROM journal_entries WHERE partner_id = '{PARTNER}'",
               dbname=DATABASE)
    return {r[0] for r in rows}


def test_restore_to_a_point_in_time(work):
    started = time.monotonic()
    steps: list[tuple[str, float]] = []

    def step(name: str) -> None:
        steps.append((name, time.monotonic()))
    archive = make_source(work)
    backups = work / "backups"
    tools_env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(SOURCE),
                 "BACKUP_DIR": str(backups), "ARCHIVE_DIR": str(archive), "PGBIN": str(PGBIN)}
    app_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # limits in memory
    app_env.update(DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{SOURCE}/{DATABASE}",
                   COALITION_SIGNING_KEY_FILE=str(work / "signing.pem"),
                   COALITION_OPERATOR="backup-drill", LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")

    def flask(*args: str, port: int = SOURCE, check: bool = True) -> subprocess.CompletedProcess:
        env = {**app_env,
               "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{port}/{DATABASE}"}
        return subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120, check=check)

    step("initdb and start")
    flask("db", "upgrade")
    step("flask db upgrade")
    # The source's operator commands in this process (a flask process each costs seconds of
    # imports); the checks of the restored copy below run the real `flask` command.
    from coalition import create_app
    operator = create_app({"SQLALCHEMY_DATABASE_URI": app_env["DATABASE_URL"]}).test_cli_runner()

    def command(*args: str) -> str:
        result = operator.invoke(args=list(args))
        assert result.exit_code == 0, (args, result.output)
        return result.output

    key = new_key("EdDSA")
    private, public = work / "partner.pem", work / "partner.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(public_pem(key))
    command("partners", "add", PARTNER, "--name", "Drill Partner")
    command("partners", "add-key", PARTNER, "--public-key", str(public))

    from partners.client import PartnerClient, load_private_key
    server, url = serve(app_env, work / "gunicorn.log")
    step("partner, key, gunicorn")
    anchors = work / "anchors.jsonl"
    try:
        client = PartnerClient(url, PARTNER, load_private_key(private))
        for member in MEMBERS:
            assert client.enrol(member).status in (200, 201)

        def phase(name: str) -> set[str]:
            ids = set()
            for n in range(PER_PHASE):
                claim_id = f"drill-{name}-{n:03d}"
                response = client.earn(claim_id, MEMBERS[n % len(MEMBERS)], 10 + n)
                assert response.status == 201, (claim_id, response.status, response.json())
                ids.add(claim_id)
            return ids

        def seal_and_anchor() -> dict:
            """A sealing run, then the head as one more anchor line (ledger seal --anchor-file
            writes one per UTC day; the drill needs one per phase)."""
            sealed = json.loads(command("ledger", "seal"))  # ends with the head, as `ledger anchor`
            head = {k: sealed[k] for k in ("head", "block", "last_entry_id", "sealed_at")}
            assert head["head"] is not None and sealed["entries"] == PER_PHASE
            line = {"date": datetime.now(timezone.utc).date().isoformat(), **head}
            with open(anchors, "a") as f:
                f.write(json.dumps(line) + "\n")
            return head

        phase1 = phase("p1")
        step("phase 1 (enrolments, earns)")
        seal_and_anchor()
        step("seal and anchor")

        t0 = time.monotonic()
        out = subprocess.run([str(ROOT / "deploy" / "backup"), "--label", "restore drill"],
                             env=tools_env, capture_output=True, text=True, timeout=120)
        backup_seconds = time.monotonic() - t0
        assert out.returncode == 0, out.stderr
        backup = Path(out.stdout.strip().splitlines()[-1])
        info = dict(line.split("=", 1) for line in (backup / "info").read_text().splitlines())
        assert info["verified"] == "pg_verifybackup" and (backup / "backup_manifest").exists()

        phase2 = phase("p2")
        head_at_t = seal_and_anchor()
        # T: after every phase 2 commit (the anchor's seal included), before any of phase 3.
        target_time = sql(SOURCE, "SELECT clock_timestamp()::text")[0][0]
        sql(SOURCE, f"SELECT pg_create_restore_point('{RESTORE_POINT}')")
        anchors_to_t = work / "anchors-to-T.jsonl"
        shutil.copyfile(anchors, anchors_to_t)
        time.sleep(0.05)

        phase3 = phase("p3")  # the mistake
        head_after = seal_and_anchor()
        assert head_after["block"] != head_at_t["block"]
    finally:
        server.terminate()
        server.wait(30)

    assert claim_ids(SOURCE) == phase1 | phase2 | phase3
    switch = sql(SOURCE, "SELECT pg_walfile_name(pg_switch_wal())")[0][0]
    wait_until(lambda: (sql(SOURCE, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "")
               >= switch, 30, f"{switch} in the archive")

    def restore(datadir: Path, *target: str) -> dict:
        t0 = time.monotonic()
        out = subprocess.run([str(ROOT / "deploy" / "restore"), "--datadir", str(datadir),
                              "--port", str(TARGET), "--backup", str(backup), *target],
                             env=tools_env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["wall_seconds"] = time.monotonic() - t0
        assert sql(TARGET, "SELECT pg_is_in_recovery()")[0][0] is False  # promoted: takes writes
        assert result["timeline"] == 2
        return result

    step("phases 2 and 3, switch and archive")
    by_time = restore(work / "pg-restored-time", "--target-time", target_time)
    restored = claim_ids(TARGET)
    assert restored == phase1 | phase2, (
        f"missing {sorted(phase1 | phase2 - restored)[:5]}, extra {sorted(restored & phase3)[:5]}")
    assert by_time["stopped"].startswith("recovery stopping before commit")

    # Held to the anchors written up to T, the restored chain must pass...
    checked = flask("ledger", "verify", "--anchors", str(anchors_to_t), port=TARGET, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert json.loads(checked.stdout)["ok"] is True
    # ...and the anchor written after T names a block this copy never had: that failure is
    # what a restore to before the last anchor looks like, not tampering.
    later = flask("ledger", "verify", "--anchors", str(anchors), port=TARGET, check=False)
    assert later.returncode == 1 and "anchor-mismatch" in later.stdout, later.stdout
    stop(work / "pg-restored-time")
    step("restore to T, checks")

    by_name = restore(work / "pg-restored-name", "--target-name", RESTORE_POINT)
    assert claim_ids(TARGET) == phase1 | phase2
    assert by_name["stopped"].startswith("recovery stopping at restore point")
    stop(work / "pg-restored-name")
    step("restore to the restore point")

    # Retention: a second backup, then keep one; the archive loses the WAL only the first needed.
    out = subprocess.run([str(ROOT / "deploy" / "backup")], env=tools_env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    second = Path(out.stdout.strip().splitlines()[-1])
    oldest_wal_before = min(p.name for p in archive.iterdir() if len(p.name) == 24)
    out = subprocess.run([str(ROOT / "deploy" / "backup"), "--prune", "1"], env=tools_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in backups.iterdir() if not p.name.startswith(".")) == [second.name]
    kept_start = dict(line.split("=", 1) for line in (second / "info").read_text().splitlines())["start_wal"]
    segments = sorted(p.name for p in archive.iterdir() if len(p.name) == 24)
    assert segments[0][8:] == kept_start[8:] and oldest_wal_before < kept_start
    step("second backup, --prune 1")

    REPORT.extend([
        ("claims booked", f"phase 1: {len(phase1)}, phase 2: {len(phase2)}, "
                          f"phase 3 (the mistake): {len(phase3)}"),
        ("restored to T", f"{len(restored)} claims (phases 1+2 exactly; 0 of phase 3)"),
        ("restored to restore point", f"'{RESTORE_POINT}': the same {len(phase1 | phase2)} claims"),
        ("ledger verify --anchors", "passes on the copy with the anchors up to T; the later "
                                    "anchor fails (anchor-mismatch), as it must"),
        ("base backup", f"{int(info['bytes']) / 1e6:.1f} MB (base.tar.gz + pg_wal.tar.gz + "
                        f"manifest), {backup_seconds:.1f} s with pg_verifybackup"),
        ("restore to T", f"{by_time['wall_seconds']:.1f} s (deploy/restore, "
                         f"{by_time['seconds']} s by its own count); last replayed "
                         f"transaction {by_time['last_replayed_transaction']}, T {target_time}"),
        ("restore to restore point", f"{by_name['wall_seconds']:.1f} s"),
        ("archive after --prune 1", f"{len(segments)} WAL segments, from {segments[0]}"),
        ("drill", f"{time.monotonic() - started:.0f} s in all: " + ", ".join(
            f"{name} {end - begin:.1f} s" for (name, end), begin in
            zip(steps, [started] + [t for _, t in steps]))),
    ])
