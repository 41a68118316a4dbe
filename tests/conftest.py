"""Fixtures: a migrated database per test (SQLite file, or PostgreSQL when DATABASE_URL is set),
the Flask app, and partners that sign their requests with the reference client."""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from datetime import datetime, timedelta, timezone

import flask_migrate
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from sqlalchemy import text

from coalition import create_app
from coalition.database import db
from partners import service as partner_service
from partners.client import PartnerClient, Response

PG_URL = os.environ.get("DATABASE_URL", "")
ON_POSTGRES = PG_URL.startswith("postgresql")

postgres_only = pytest.mark.skipif(not ON_POSTGRES, reason="needs PostgreSQL (set DATABASE_URL)")


def pytest_report_header(config):
    if ON_POSTGRES:
        return "database: PostgreSQL (DATABASE_URL)"
    return ("database: SQLite; PostgreSQL-only tests are skipped "
            "(set DATABASE_URL=postgresql+psycopg://... to run them)")


@pytest.fixture(scope="session")
def signing_key_file(tmp_path_factory):
    return str(tmp_path_factory.mktemp("keys") / "coalition-signing-key.pem")


@pytest.fixture(scope="session")
def migrated(tmp_path_factory):
    """Run the Alembic migrations once: into PostgreSQL, or into an SQLite template file."""
    uri = PG_URL if ON_POSTGRES else "sqlite:///" + str(tmp_path_factory.mktemp("db") / "template.db")
    app = create_app({"SQLALCHEMY_DATABASE_URI": uri, "TESTING": True})
    with app.app_context():
        flask_migrate.upgrade()
        db.engine.dispose()
    return uri


# The tables the reset empties, found in the catalog at every reset (migrations, and tests that
# downgrade and upgrade again, may change them): those the models map, and every table that
# references one of them, however indirectly (what TRUNCATE ... CASCADE would empty too), with
# the sequences they own (what RESTART IDENTITY would restart).
_RESET_TABLES = text("""
    WITH RECURSIVE mapped(oid) AS (
        SELECT c.oid FROM pg_class c
        WHERE c.relname = ANY(:names) AND c.relnamespace = to_regnamespace(current_schema())
            AND c.relkind IN ('r', 'p')
      UNION
        SELECT con.conrelid FROM pg_constraint con JOIN mapped ON con.confrelid = mapped.oid
        WHERE con.contype = 'f' AND con.conparentid = 0
    )
    SELECT c.oid::regclass::text,
           ARRAY(SELECT d.objid::regclass::text FROM pg_depend d
                 JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
                 WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                     AND d.refobjid = c.oid AND d.deptype IN ('a', 'i'))
    FROM mapped JOIN pg_class c ON c.oid = mapped.oid
    WHERE NOT c.relispartition""")


def _reset_postgres(session) -> None:
    """Every mapped table emptied and its sequences restarted, as TRUNCATE <all of them> RESTART
    IDENTITY CASCADE does, but touching only what the test wrote: TRUNCATE makes new files for
    every table, partition and index (about 160 ms a test for the partitioned journal), while
    a test writes to a few tables. A table holding rows is emptied with DELETE, as superuser
    with session_replication_role = replica, so that neither the audit log's append-only
    trigger nor the order of the foreign keys stands in the way (every table that could hold a
    reference is emptied in the same transaction); without superuser, with TRUNCATE. A sequence
    that was used (also by an insert that was rolled back) is set back to its start."""
    names = [t.name for t in db.metadata.sorted_tables]
    found = session.execute(_RESET_TABLES, {"names": names}).all()
    tables = [table for table, _ in found]
    holding = [table for (table,) in session.execute(text(" UNION ALL ".join(
        f"SELECT CAST(:t{i} AS text) WHERE EXISTS (SELECT FROM {table})"
        for i, table in enumerate(tables))), {f"t{i}": table for i, table in enumerate(tables)})]
    if holding:
        if session.scalar(text("SELECT current_setting('is_superuser') = 'on'")):
            session.execute(text("SET LOCAL session_replication_role = replica"))
            for table in holding:
                session.execute(text(f"DELETE FROM {table}"))
        else:
            session.execute(text(f"TRUNCATE {', '.join(holding)} CASCADE"))
    sequences = [sequence for _, owned in found for sequence in owned]
    if sequences:
        session.execute(text(
            "SELECT setval(s.seqrelid, s.seqstart, false) FROM pg_sequence s "
            "WHERE s.seqrelid = ANY(CAST(:sequences AS regclass[])) "
            "AND pg_sequence_last_value(s.seqrelid) IS NOT NULL"), {"sequences": sequences})
    session.commit()


def fresh_database(app, template: str) -> None:
    """Back to the freshly migrated schema (needs an app context). PostgreSQL: every table the
    models map emptied and their sequences restarted (_reset_postgres); SQLite: the migrated
    template file copied over the app's database. Property tests call it once per example."""
    db.session.remove()
    if ON_POSTGRES:
        _reset_postgres(db.session)
        return
    db.engine.dispose()
    path = Path(app.config["SQLALCHEMY_DATABASE_URI"].removeprefix("sqlite:///"))
    for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    shutil.copy(template.removeprefix("sqlite:///"), path)


@pytest.fixture
def app(migrated, tmp_path, signing_key_file):
    uri = migrated if ON_POSTGRES else "sqlite:///" + str(tmp_path / "coalition.db")
    app = create_app({"SQLALCHEMY_DATABASE_URI": uri, "TESTING": True,
                      "COALITION_SIGNING_KEY_FILE": signing_key_file})
    with app.app_context():
        fresh_database(app, migrated)
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


def transport_for(app):
    def send(method, path, headers, body):
        with app.test_client() as client:
            r = client.open(path, method=method, headers=headers, data=body)
            return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.get_data())
    return send


@dataclass
class Partner:
    id: str
    key: object
    kid: str
    client: PartnerClient


def new_key(alg: str):
    return ed25519.Ed25519PrivateKey.generate() if alg == "EdDSA" else ec.generate_private_key(ec.SECP256R1())


def public_pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def make_partner(app):
    def make(partner_id: str, alg: str = "EdDSA", **terms) -> Partner:
        key = new_key(alg)
        with app.app_context():
            now = datetime.now(timezone.utc)
            partner_service.add_partner(db.session, partner_id, partner_id.title(), now=now, terms=terms)
            kid = partner_service.add_key(db.session, partner_id, public_pem(key), now=now).kid
            db.session.commit()
        return Partner(partner_id, key, kid, PartnerClient("", partner_id, key, transport=transport_for(app)))
    return make


@pytest.fixture
def acme(make_partner):
    return make_partner("acme")


@pytest.fixture
def bolt(make_partner):
    return make_partner("bolt", alg="ES256")


def await_lock_wait(engine, *, still_running=lambda: True, timeout: float = 20.0) -> None:
    """Return once a session of the test database waits on a lock (PostgreSQL). Each look is a
    transaction of its own: pg_stat_activity is read once per transaction and then kept, so a
    look repeated inside one transaction would never see a wait that began after the first.
    Fails if `still_running()` turns false first (what should wait finished instead) or after
    `timeout` seconds, so that the caller can release what it holds rather than hang."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as watcher:
            if watcher.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type "
                                   "= 'Lock' AND datname = current_database()")):
                return
        assert still_running(), "it finished without waiting on a lock"
        assert time.monotonic() < deadline, f"nothing waited on a lock within {timeout} s"
        time.sleep(0.05)


def ago(**delta) -> str:
    return (datetime.now(timezone.utc) - timedelta(**delta)).isoformat().replace("+00:00", "Z")


@pytest.fixture
def verify_clean(app):
    """Call at the end of a test: the ledger's invariants all hold."""
    def check():
        from flask import has_app_context

        from coalition.verify import verify
        if has_app_context():  # a test holding a session: reuse it (SQLite has one writer)
            db.session.commit()
            report = verify(db.session)
            db.session.rollback()
        else:
            with app.app_context():
                report = verify(db.session)
        assert report["ok"], report["violations"]
        return report
    return check
