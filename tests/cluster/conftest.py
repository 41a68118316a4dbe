"""The setting of the cluster smoke test and the failover drills: `make cluster`
(deploy/cluster/), run by the tests themselves.

Skipped unless COALITION_CLUSTER=1: the test starts PostgreSQL servers of its own on 5440 and
5441, pgbouncers, Redis on 6390, HAProxy and the app on 8100-8102, 8199, needs root (it runs
PostgreSQL as postgres through runuser) and the Debian packages make cluster installs when they
are missing, and ends with `make cluster-down`. Run it with
    COALITION_CLUSTER=1 .venv/bin/pytest -q tests/cluster      (make cluster-test)
It uses CLUSTER_DIR as make cluster does (default /var/tmp/coalition-cluster): a cluster already
up there is used as it is, and stopped at the end (its data kept). docs/operations.md,
"A highly available cluster on one machine".
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = Path(os.environ.get("CLUSTER_DIR", "/var/tmp/coalition-cluster"))
PG_PORTS = (5440, 5441)
APP_PORTS = (8101, 8102)
HAPROXY = "http://127.0.0.1:8100"
STATS = "http://127.0.0.1:8199/;csv"
# The failover drills' counts (tests/cluster/test_failover.py), printed at the end of the run.
REPORT: list[dict] = []


def pytest_collection_modifyitems(config, items):
    if os.environ.get("COALITION_CLUSTER") == "1":
        return
    skip = pytest.mark.skip(reason="the cluster tests run only with COALITION_CLUSTER=1 (they "
                                   "start make cluster: PostgreSQL on 5440/5441, pgbouncer, "
                                   "Redis, HAProxy; need root)")
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(skip)


@dataclass
class Cluster:
    directory: Path
    app_env: dict[str, str]

    def make(self, target: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", target], cwd=ROOT, capture_output=True, text=True,
                              timeout=600, env={**os.environ, "CLUSTER_DIR": str(self.directory)})

    def script(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([str(ROOT / "deploy" / "cluster" / name), *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=300, check=check,
                              env={**os.environ, "CLUSTER_DIR": str(self.directory)})

    def flask(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """An operator command in the app's environment (deploy/cluster/with-env)."""
        return self.script("with-env", str(ROOT / ".venv" / "bin" / "flask"), "--app", "wsgi",
                           *args, check=check)


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            name, value = line.split("=", 1)
            values[name] = value.strip("'")
    return values


@pytest.fixture(scope="session")
def cluster():
    if os.geteuid() != 0:
        pytest.fail("make cluster needs root (PostgreSQL runs as postgres through runuser)")
    cluster = Cluster(CLUSTER_DIR, {})
    up = cluster.make("cluster")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    cluster.app_env = read_env(CLUSTER_DIR / "app.env")
    yield cluster
    # Whatever a failed test left running: stopped (make cluster-down is idempotent).
    cluster.make("cluster-down")


def pytest_terminal_summary(terminalreporter):
    """The drills' claims per phase, as the crash suite prints its claims per fault: shown
    with -q too, and whether a drill passed or failed."""
    if not REPORT:
        return
    write = terminalreporter.write_line
    terminalreporter.section("cluster failover drills: claims per phase")
    columns = ("phase", "sent", "acknowledged", "replayed", "rejected", "retried", "retries")
    for drill in REPORT:
        write(f"{drill['drill']}: {drill['detail']}")
        write("  " + "  ".join(f"{c:>12}" if i else f"{c:16}" for i, c in enumerate(columns))
              + "  failed attempts by answer")
        for row in drill["rows"]:
            cells = [f"{row[c]:>12}" if i else f"{row[c]:16}" for i, c in enumerate(columns)]
            write("  " + "  ".join(cells) + "  " + json.dumps(dict(row["errors"]), sort_keys=True))
    if os.environ.get("CLUSTER_REPORT"):
        Path(os.environ["CLUSTER_REPORT"]).write_text(json.dumps(REPORT, indent=2, default=dict))
