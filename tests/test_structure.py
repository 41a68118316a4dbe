"""Layout and schema rules: one-way imports, and migrations that match the models."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import flask_migrate
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from coalition.database import db

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_coalition_imports_neither_partners_nor_settlement():
    offenders = {str(p.relative_to(ROOT)): imported_modules(p) & {"partners", "settlement"}
                 for p in (ROOT / "coalition").rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_reference_client_is_standalone():
    assert imported_modules(ROOT / "partners" / "client.py") & {"coalition", "partners", "settlement"} == set()


def test_migrations_match_the_models(app):
    with app.app_context():
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
    assert diff == []


def test_migrations_downgrade_and_upgrade_again(app):
    with app.app_context():
        flask_migrate.downgrade(revision="base")
        flask_migrate.upgrade()
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []


def test_flask_db_upgrade_creates_an_empty_database(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/fresh.db"}
    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
    subprocess.run(flask + ["db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True)
    verify = subprocess.run(flask + ["ledger", "verify"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert verify.returncode == 0 and '"ok": true' in verify.stdout


def test_no_tracked_file_holds_key_material():
    """Private keys live with partners and under instance/ (git-ignored), never in the repository."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    # A PEM private key block, or a JWK carrying its private member "d".
    secret = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\s*[A-Za-z0-9+/=]{16}"
                        rb'|"d"\s*:\s*"[A-Za-z0-9_-]{20,}"')
    files = [ROOT / name.decode() for name in listed.stdout.split(b"\0") if name]
    assert len(files) > 50
    assert [str(f.relative_to(ROOT)) for f in files if f.is_file() and secret.search(f.read_bytes())] == []
