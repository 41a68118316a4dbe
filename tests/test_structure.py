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

from coalition import partitions, vocabulary
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


def listed(offenders: list[str]) -> str:
    return "\n" + "\n".join(offenders)


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


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def submodule(folder: Path, name: str) -> bool:
    return (folder / f"{name}.py").exists() or (folder / name / "__init__.py").exists()


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every module an import statement names, relative ones resolved.
    `from package import name` names package.name if that is a submodule, else the package (its
    __init__); `from module import name` names the module."""
    package = module_of(path) if path.name == "__init__.py" else module_of(path).rpartition(".")[0]
    found = []
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            folder = ROOT / base.replace(".", "/")
            if (folder / "__init__.py").exists():
                found += [(node.lineno, f"{base}.{alias.name}" if submodule(folder, alias.name)
                           else base) for alias in node.names]
            else:
                found.append((node.lineno, base))
    return found


# --- (a) the domain imports neither Flask nor marshmallow ----------------------------------

# The HTTP and command line side: request handling, schemas, error answers, the app factory.
HTTP_SIDE = {"coalition.api", "coalition.cli", "coalition.errors", "coalition.ops",
             "coalition.limits", "coalition.fields", "coalition.jsonbody", "coalition.bodylimit",
             "settlement.reconciliation_input", "coalition.metrics"}
HTTP_SIDE_NAMES = {"views", "auth", "listings", "bonus_api", "cli", "schemas", "demo"}
# The data layer the domain may use: coalition/database.py (the Flask-SQLAlchemy `db` object,
# is_sqlite) and the models.py files declaring tables on it. It reaches Flask-SQLAlchemy,
# whose session the domain works on; requests and schemas it does not reach.
DATA_LAYER = {"coalition.database"}
WEB_PACKAGES = {"flask", "flask_smorest", "flask_limiter", "flask_migrate", "flask_sqlalchemy",
                "marshmallow", "webargs", "werkzeug", "apispec"}


def http_side(module: str) -> bool:
    package, _, name = module.rpartition(".")
    return (module in HTTP_SIDE or module in PACKAGES
            or (package in PACKAGES and name in HTTP_SIDE_NAMES))


def domain_modules() -> list[Path]:
    """Everything but the HTTP side, package __init__ files and the data layer's plumbing."""
    return [p for p in package_files()
            if not http_side(module_of(p)) and module_of(p) not in DATA_LAYER]


def test_the_domain_imports_neither_flask_nor_marshmallow():
    names = {rel(p) for p in domain_modules()}
    assert {"coalition/ledger.py", "coalition/models.py", "settlement/reconciliation.py"} <= names
    assert not names & {"coalition/errors.py", "coalition/database.py", "settlement/views.py"}
    offenders = []
    for path in domain_modules():
        for line, module in imports_of(path):
            if module.split(".")[0] in WEB_PACKAGES:
                offenders.append(f"{rel(path)}:{line}: imports {module}")
            elif http_side(module):
                offenders.append(f"{rel(path)}:{line}: imports {module}, on the HTTP side")
    assert not offenders, listed(offenders)


# --- (b) settlement uses partners through partners.service only -----------------------------

SETTLEMENT_MAY_IMPORT = {"partners.service"}
# settlement/views.py authenticates partners as the partner API does.
SETTLEMENT_ALSO = {"settlement/views.py": {"partners.auth"}}


def test_settlement_uses_partners_through_its_service():
    offenders = []
    for path in sorted((ROOT / "settlement").rglob("*.py")):
        allowed = (SETTLEMENT_MAY_IMPORT | SETTLEMENT_ALSO.get(rel(path), set()))
        for line, module in imports_of(path):
            if module.split(".")[0] != "partners":
                continue
            if not any(module == m or module.startswith(m + ".") for m in allowed):
                offenders.append(f"{rel(path)}:{line}: imports {module}")
    assert not offenders, listed(offenders)


# --- (c) imports point one way: the core never imports the parts that plug into it -----------

def importing(paths, packages: set[str]) -> list[str]:
    return [f"{rel(path)}:{line}: imports {module}" for path in paths
            for line, module in imports_of(path) if module.split(".")[0] in packages]


def test_coalition_imports_neither_partners_nor_settlement():
    offenders = importing(sorted((ROOT / "coalition").rglob("*.py")), {"partners", "settlement"})
    assert not offenders, listed(offenders)


def test_reference_client_is_standalone():
    offenders = importing([ROOT / STANDALONE], set(PACKAGES))
    assert not offenders, listed(offenders)


# --- (d) the ledger's words are written in coalition/vocabulary.py only ------------------------

WORDS = {str(word) for enum in (vocabulary.EntryKind, vocabulary.ConsumptionKind,
                                vocabulary.Account) for word in enum}
# A kind quoted inside a longer string: SQL text such as "kind = 'burn'".
QUOTED_KIND = re.compile("'(" + "|".join(sorted(
    {str(k) for k in (*vocabulary.EntryKind, *vocabulary.ConsumptionKind)})) + ")'")
# Words of the vocabulary that also name something else, where they do (file, word): why.
OTHER_MEANINGS = {
    ("coalition/members.py", "debt"): "the balance answer's field debt (partner contract)",
    ("coalition/audit.py", "member:"): "the audit subject member:<card> of `members add`",
}


def test_ledger_words_are_not_spelled_out_outside_the_vocabulary():
    skip = {"coalition/vocabulary.py", STANDALONE}
    offenders = []
    for path in package_files():
        name = rel(path)
        if name in skip:
            continue
        for line, value in strings(parsed(path)):
            quoted = QUOTED_KIND.search(value)
            word = value if value in WORDS else quoted.group(1) if quoted else None
            if word is not None and (name, word) not in OTHER_MEANINGS:
                offenders.append(f"{name}:{line}: {value!r} (use coalition.vocabulary)")
    assert not offenders, listed(offenders)


# --- (e) the environment is read in coalition/config.py only ---------------------------------

ENVIRONMENT = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def test_only_config_reads_the_environment():
    offenders = []
    for path in [*package_files(), ROOT / "wsgi.py"]:
        if rel(path) in ("coalition/config.py", STANDALONE):
            continue
        for node in ast.walk(parsed(path)):
            named = (isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT
                     and isinstance(node.value, ast.Name) and node.value.id == "os")
            imported = (isinstance(node, ast.ImportFrom) and node.module == "os"
                        and any(alias.name in ENVIRONMENT for alias in node.names))
            if named or imported:
                offenders.append(f"{rel(path)}:{node.lineno}: reads the environment "
                                 "(settings belong in coalition/config.py)")
    assert not offenders, listed(offenders)


# --- (f) every table in a models.py, every instant of one type --------------------------------

def called(node: ast.Call) -> str | None:
    return getattr(node.func, "id", None) or getattr(node.func, "attr", None)


def declares_table(node: ast.AST) -> bool:
    """A declarative model (`__tablename__ = ...`) or a `Table(name, db.metadata, ...)`."""
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == "__tablename__" for t in node.targets)
    return (isinstance(node, ast.Call) and called(node) == "Table"
            and any(isinstance(a, ast.Attribute) and a.attr == "metadata" for a in node.args))


def defines_utc_datetime(node: ast.AST) -> bool:
    return (isinstance(node, ast.ClassDef) and node.name == "UtcDateTime") or (
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "UtcDateTime" for t in node.targets))


def test_tables_are_declared_in_models_modules_with_one_utc_datetime_type():
    offenders, definitions = [], []
    for path in package_files():
        for node in ast.walk(parsed(path)):
            where = f"{rel(path)}:{getattr(node, 'lineno', 0)}"
            if defines_utc_datetime(node):
                definitions.append(where)
            if declares_table(node) and path.name != "models.py":
                offenders.append(f"{where}: a table outside a models.py")
            if (isinstance(node, ast.Call) and called(node) == "DateTime"
                    and rel(path) != "coalition/models.py"):
                offenders.append(f"{where}: DateTime(...); use coalition.models.UtcDateTime")
    if len(definitions) != 1 or not definitions[0].startswith("coalition/models.py:"):
        offenders += [f"{where}: defines UtcDateTime (once, in coalition/models.py)"
                      for where in definitions]
    assert not offenders, listed(offenders)


# --- (g) base64url through coalition.hashing only ---------------------------------------------



def base64url_by_hand(node: ast.AST) -> bool:
    name = getattr(node, "attr", None) if isinstance(node, ast.Attribute) else (
        node.id if isinstance(node, ast.Name) else None)
    if name in ("urlsafe_b64encode", "urlsafe_b64decode"):
        return True
    return (isinstance(node, ast.Call) and called(node) in ("b64encode", "b64decode")
            and (len(node.args) > 1 or any(k.arg == "altchars" for k in node.keywords)))


def test_base64url_only_through_the_helper():
    skip = {"coalition/hashing.py", STANDALONE}
    offenders = [f"{rel(path)}:{node.lineno}: base64url by hand (use coalition.hashing."
                 "b64url_encode/b64url_decode)"
                 for path in package_files() if rel(path) not in skip
                 for node in ast.walk(parsed(path)) if base64url_by_hand(node)]
    assert not offenders, listed(offenders)


def schema_differences(conn) -> list:
    """What the database's schema has other than the models. On PostgreSQL the journal's
    monthly partitions are tables of their own, and the partitioning drops a few constraints
    on purpose (coalition.partitions.expected_schema_difference); everything else counts."""
    context = MigrationContext.configure(conn, opts={
        "include_name": lambda name, kind, _parent: not (kind == "table"
                                                          and partitions.is_partition(name))})
    return [d for d in compare_metadata(context, db.metadata)
            if not (conn.dialect.name == "postgresql"
                    and partitions.expected_schema_difference(d))]


def test_migrations_match_the_models(app):
    with app.app_context():
        with db.engine.connect() as conn:
            diff = schema_differences(conn)
    assert diff == []


def test_migrations_downgrade_and_upgrade_again(app):
    with app.app_context():
        flask_migrate.downgrade(revision="base")
        flask_migrate.upgrade()
        with db.engine.connect() as conn:
            assert schema_differences(conn) == []


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
