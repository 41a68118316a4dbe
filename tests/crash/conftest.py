"""The crash suite's service: a fresh PostgreSQL database, three partners, members, gunicorn.

Run with `make crash` (DATABASE_URL must name an empty PostgreSQL database). The suite restarts
the PostgreSQL server, so nothing else may use that server meanwhile; `.ci/run` runs it as a
stage of its own after the other tests.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import new_key, public_pem

from .server import BIN, ROOT, Gunicorn

PARTNERS = {"crash-eddsa": "EdDSA", "crash-es256": "ES256", "crash-third": "EdDSA"}
MEMBERS = [f"CRASH-{n:03d}" for n in range(24)]
REPORT: list[dict] = []


@dataclass
class Service:
    server: Gunicorn
    env: dict[str, str]
    keys: dict[str, Path]
    members: list[str]
    database_url: str
    work: Path
    sealer: subprocess.Popen | None = None

    def flask(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "flask"), "--app", "wsgi", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=300, check=check)


def pytest_collection_modifyitems(config, items):
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgresql"):
        skip = pytest.mark.skip(reason="the crash suite needs DATABASE_URL=postgresql+psycopg://... "
                                       "(an empty database it may own; it restarts the server)")
        for item in items:
            item.add_marker(skip)


def _write_key(alg: str, directory: Path, name: str) -> tuple[Path, Path]:
    key = new_key(alg)
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(public_pem(key))
    return private, public


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    work = tmp_path_factory.mktemp("crash")
    database_url = os.environ["DATABASE_URL"]
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}  # limits in memory: one fault less
    env.update(DATABASE_URL=database_url, COALITION_SIGNING_KEY_FILE=str(work / "signing.pem"),
               COALITION_OPERATOR="crash-suite", LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
    service = Service(Gunicorn(env, work / "gunicorn.log"), env, {}, MEMBERS, database_url, work)
    service.flask("db", "upgrade")
    for partner_id, alg in PARTNERS.items():
        private, public = _write_key(alg, work, partner_id)
        service.keys[partner_id] = private
        service.flask("partners", "add", partner_id, "--name", partner_id.title())
        service.flask("partners", "add-key", partner_id, "--public-key", str(public))
    service.server.start()
    # The sealer as a sidecar, as in production: it must ride out every fault too.
    sealer_log = open(work / "sealer.log", "wb")
    service.sealer = subprocess.Popen(
        [str(BIN / "flask"), "--app", "wsgi", "ledger", "seal", "--every", "1",
         "--anchor-file", str(work / "anchors.jsonl")],
        cwd=ROOT, env=env, stdout=sealer_log, stderr=subprocess.STDOUT)
    from partners.client import PartnerClient, load_private_key
    first = next(iter(PARTNERS))
    client = PartnerClient(service.server.url, first, load_private_key(service.keys[first]))
    for member in MEMBERS:
        assert client.enrol(member).status in (200, 201)
    yield service
    service.server.stop()
    if service.sealer.poll() is None:
        service.sealer.terminate()
        service.sealer.wait(30)
    sealer_log.close()


def pytest_terminal_summary(terminalreporter):
    if not REPORT:
        return
    write = terminalreporter.write_line
    terminalreporter.section("crash suite: claims per fault")
    columns = ("fault", "sent", "acknowledged", "rejected", "retried", "retries", "replayed",
               "found", "unanswered")
    write("  ".join(f"{c:>12}" if i else f"{c:18}" for i, c in enumerate(columns)) + "  errors seen by clients")
    for row in REPORT:
        cells = [f"{row[c]:>12}" if i else f"{row[c]:18}" for i, c in enumerate(columns)]
        write("  ".join(cells) + "  " + json.dumps(row["errors"], sort_keys=True))
    for row in REPORT:
        write(f"{row['fault']}: {row['detail']}")
    if os.environ.get("CRASH_REPORT"):
        Path(os.environ["CRASH_REPORT"]).write_text(json.dumps(
            {"at": datetime.now(timezone.utc).isoformat(), "faults": REPORT}, indent=2))
