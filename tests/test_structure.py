"""Layout and schema rules: one-way imports, the ledger's words and other things defined once, and
migrations that match the models. Each rule names the offending file and line."""
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

from coalition import vocabulary
from coalition.database import db

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("coalition", "partners", "settlement")
# The reference client partners copy: it imports nothing from the project, by design.
STANDALONE = "partners/client.py"


def package_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def strings(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, value) of every string constant but docstrings (f-strings' literal parts too)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings]


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


# --- (d) the ledger's words are written in coalition/vocabulary.py only ------------------------

WORDS = {str(word) for enum in (vocabulary.EntryKind, vocabulary.ConsumptionKind, vocabulary.Account)
         for word in enum}
# A kind quoted inside a longer string: SQL text such as "kind = 'burn'".
QUOTED_KIND = re.compile("'(" + "|".join(sorted(
    {str(k) for k in (*vocabulary.EntryKind, *vocabulary.ConsumptionKind)})) + ")'")
# Words of the vocabulary that also name something else, where they do (file, word): why.
OTHER_MEANINGS = {
    ("coalition/members.py", "debt"): "the balance answer's field debt (partner contract)",
    ("coalition/cli.py", "member:"): "the audit subject member:<card> of `members add`",
}
# Marshmallow schemas under a concurrent change: their OneOf lists and OpenAPI examples still
# spell the claim kinds out; they should take vocabulary.CLAIM_KINDS.
NOT_YET_SWEPT = {"partners/schemas.py", "settlement/schemas.py"}


def test_ledger_words_are_not_spelled_out_outside_the_vocabulary():
    skip = {"coalition/vocabulary.py", STANDALONE, *NOT_YET_SWEPT}
    offenders = []
    for path in package_files():
        name = rel(path)
        if name in skip:
            continue
        for line, value in strings(parsed(path)):
            word = value if value in WORDS else (m.group(1) if (m := QUOTED_KIND.search(value)) else None)
            if word is not None and (name, word) not in OTHER_MEANINGS:
                offenders.append(f"{name}:{line}: {value!r} (use coalition.vocabulary)")
    assert offenders == []


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
