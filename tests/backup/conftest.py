"""The restore drill's setting: PostgreSQL servers of its own, started and stopped by the test.

test_restore_drill.py is skipped unless COALITION_BACKUP_DRILL=1: it runs initdb and pg_ctl
(/usr/lib/postgresql/15/bin, or PGBIN) as the postgres OS user through runuser, so it needs
root, and it takes ports 5450 (the source) and 5451 (the restored copy), which must be free.
Its data lives in a temporary /var/tmp/backup-dev-* directory, deleted at the end unless
BACKUP_DRILL_KEEP=1. Run it with `make backup-drill` (docs/operations.md, "Backups and
point-in-time recovery"); it prints the claim counts and the measured times and sizes.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPORT: list[tuple[str, str]] = []


def pytest_collection_modifyitems(config, items):
    if os.environ.get("COALITION_BACKUP_DRILL") == "1":
        return
    skip = pytest.mark.skip(reason="the restore drill runs only with COALITION_BACKUP_DRILL=1 "
                                   "(make backup-drill: needs root; its own PostgreSQL servers "
                                   "on ports 5450 and 5451)")
    for item in items:
        if Path(str(item.fspath)).name == "test_restore_drill.py":
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if not REPORT:
        return
    terminalreporter.section("restore drill")
    width = max(len(k) for k, _ in REPORT)
    for key, value in REPORT:
        terminalreporter.write_line(f"{key:<{width}}  {value}")
