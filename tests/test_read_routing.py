"""Read routing to a hot standby (coalition/replica.py), simulated on the test database.

The "standby" is a second engine on the same PostgreSQL database whose sessions start
read-only (default_transaction_read_only=on): a write sent there fails exactly as on a real
standby ("cannot execute ... in a read-only transaction"). Which engine ran each statement is
counted with SQLAlchemy's before_cursor_execute event.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from urllib.parse import quote

import psycopg
import pytest
from sqlalchemy import create_engine, event, func, insert, select, text
from sqlalchemy.engine import Engine, make_url

from coalition import config, create_app, replica
from coalition.database import db
from coalition.ops import READYZ_DOC
from partners import service as partner_service
from partners.client import PartnerClient
from partners.models import MemberLookup, UsedToken
from tests.browser.support import give_password, sign_in
from tests.conftest import (ON_POSTGRES, PG_URL, Partner, ago, fresh_database, new_key,
                            postgres_only, public_pem, transport_for)

READ_ONLY = "options=" + quote("-c default_transaction_read_only=on")
DEAD_PORT = 1  # nothing listens on 127.0.0.1:1: connections are refused at once


def with_query(url: str, query: str) -> str:
    return url + ("&" if "?" in url else "?") + query


def make_app(migrated, tmp_path, signing_key_file, replica_url, **more):
    uri = migrated if ON_POSTGRES else "sqlite:///" + str(tmp_path / "coalition.db")
    app = create_app({"SQLALCHEMY_DATABASE_URI": uri, "TESTING": True,
                      "COALITION_SIGNING_KEY_FILE": signing_key_file,
                      "DATABASE_REPLICA_URL": replica_url,
                      # Checks only when a test asks (Health.refresh): no background thread
                      # changes the routing under a test.
                      "DATABASE_REPLICA_CHECK_EVERY_S": 3600.0, **more})
    with app.app_context():
        fresh_database(app, migrated)
    return app


def dispose(app) -> None:
    with app.app_context():
        db.session.remove()
        for engine in db.engines.values():
            engine.dispose()


@pytest.fixture
def app(migrated, tmp_path, signing_key_file):
    """The conftest app, with a read-only "standby" on the same database (PostgreSQL), or
    with the setting given and ignored (SQLite)."""
    standby = with_query(PG_URL, READ_ONLY) if ON_POSTGRES else \
        "postgresql://postgres@127.0.0.1:5432/nowhere"
    app = make_app(migrated, tmp_path, signing_key_file, standby)
    yield app
    dispose(app)


def partner_of(app, partner_id: str) -> Partner:
    key = new_key("EdDSA")
    with app.app_context():
        now = datetime.now(timezone.utc)
        partner_service.add_partner(db.session, partner_id, partner_id.title(), now=now, terms={})
        kid = partner_service.add_key(db.session, partner_id, public_pem(key), now=now).kid
        db.session.commit()
    return Partner(partner_id, key, kid,
                   PartnerClient("", partner_id, key, transport=transport_for(app)))


class Served:
    """The statements each engine ran since the last reset: .replica and .primary."""

    def __init__(self, app) -> None:
        with app.app_context():
            self.standby = db.engines.get(replica.BIND)
        self.replica: list[str] = []
        self.primary: list[str] = []
        event.listen(Engine, "before_cursor_execute", self._seen)

    def _seen(self, connection, _cursor, statement, *_args) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # a background check
        (self.replica if connection.engine is self.standby else self.primary).append(statement)

    def reset(self) -> None:
        self.replica.clear()
        self.primary.clear()

    def close(self) -> None:
        event.remove(Engine, "before_cursor_execute", self._seen)


@pytest.fixture
def served(app):
    watch = Served(app)
    yield watch
    watch.close()


def health(app) -> replica.Health:
    return app.extensions[replica.EXTENSION]


def writes(statements: list[str]) -> list[str]:
    return [s for s in statements if not replica.plain_select_sql(s)]


def refused_reads(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("standby refused a read")]


# --- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["0", "-1", "soon", "nan", "inf"])
def test_a_bad_lag_bound_stops_the_start_naming_the_setting(monkeypatch, tmp_path, raw):
    monkeypatch.setenv("DATABASE_REPLICA_MAX_LAG_S", raw)
    with pytest.raises(ValueError, match="DATABASE_REPLICA_MAX_LAG_S"):
        config.from_environment(str(tmp_path))


def test_replica_settings_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_REPLICA_URL", "postgresql://app@standby:6432/coalition")
    monkeypatch.setenv("DATABASE_REPLICA_MAX_LAG_S", "2.5")
    monkeypatch.setenv("DATABASE_PGBOUNCER", "yes")
    settings = config.from_environment(str(tmp_path))
    assert settings["DATABASE_REPLICA_URL"] == "postgresql+psycopg://app@standby:6432/coalition"
    assert settings["DATABASE_REPLICA_MAX_LAG_S"] == 2.5
    assert settings["DATABASE_PGBOUNCER"] is True
    for name in ("DATABASE_REPLICA_URL", "DATABASE_REPLICA_MAX_LAG_S", "DATABASE_PGBOUNCER"):
        monkeypatch.delenv(name)
    settings = config.from_environment(str(tmp_path))
    assert (settings["DATABASE_REPLICA_URL"], settings["DATABASE_REPLICA_MAX_LAG_S"],
            settings["DATABASE_PGBOUNCER"]) == (None, 5.0, False)


def test_pgbouncer_turns_off_server_side_prepared_statements():
    uri = "postgresql+psycopg://app@db/coalition"
    assert config.engine_options(uri, pgbouncer=True)["connect_args"] == {"prepare_threshold": None}
    assert "connect_args" not in config.engine_options(uri)
    assert config.engine_options("sqlite:///x.db", pgbouncer=True) == {}


def test_libpq_multi_host_form_is_rewritten_into_one_sqlalchemy_splits():
    url = config.database_url("postgresql://postgres@/coalition?host=10.0.0.1:6440,"
                              "10.0.0.2:6441&target_session_attrs=read-write")
    parsed = make_url(url)
    assert parsed.drivername == "postgresql+psycopg"
    assert parsed.query["host"] == ("10.0.0.1:6440", "10.0.0.2:6441")
    assert parsed.query["target_session_attrs"] == "read-write"
    same = "postgresql+psycopg://u@/c?host=a:1&host=b:2"
    assert config.database_url(same) == same


def test_sqlite_ignores_the_replica_setting(app, acme_like):
    if ON_POSTGRES:
        pytest.skip("the SQLite side of the setting")
    assert replica.EXTENSION not in app.extensions
    assert replica.replica_status(app)["configured"] is False
    with app.app_context():
        assert list(db.engines) == [None]
    acme_like.client.enrol("M1")
    assert acme_like.client.earn("e1", "M1", 40, occurred_at=ago(minutes=1)).status == 201
    assert acme_like.client.balance("M1").json()["available"] == 40
    assert app.test_client().get("/readyz").get_json() == {"status": "ready"}


@pytest.fixture
def acme_like(app):
    return partner_of(app, "acme")


@pytest.fixture
def bolt_like(app):
    return partner_of(app, "bolt")


def test_a_replica_that_is_not_postgresql_is_refused(tmp_path, signing_key_file):
    if not ON_POSTGRES:
        pytest.skip("only a PostgreSQL primary takes a replica")
    with pytest.raises(ValueError, match="DATABASE_REPLICA_URL"):
        create_app({"SQLALCHEMY_DATABASE_URI": PG_URL, "TESTING": True,
                    "DATABASE_REPLICA_URL": "sqlite:///" + str(tmp_path / "r.db")})


# --- a primary found among several hosts ---------------------------------------------------------

@postgres_only
@pytest.mark.parametrize("form", ["repeated", "libpq"])
def test_a_two_host_primary_url_whose_first_host_is_dead(migrated, tmp_path, signing_key_file,
                                                         form):
    real = make_url(PG_URL)
    hosts = (f"host=127.0.0.1:{DEAD_PORT}&host={real.host}:{real.port or 5432}"
             if form == "repeated" else
             f"host=127.0.0.1:{DEAD_PORT},{real.host}:{real.port or 5432}")
    url = (f"postgresql://{real.username}@/{real.database}?{hosts}"
           "&target_session_attrs=read-write")
    app = create_app({"SQLALCHEMY_DATABASE_URI": config.database_url(url), "TESTING": True,
                      "COALITION_SIGNING_KEY_FILE": signing_key_file})
    try:
        with app.app_context():
            fresh_database(app, migrated)
            assert db.session.scalar(text("SELECT inet_server_port()")) == (real.port or 5432)
            db.session.rollback()
        acme = partner_of(app, "acme")
        assert acme.client.enrol("M1").status == 201
        assert acme.client.earn("e1", "M1", 70, occurred_at=ago(minutes=1)).status == 201
        assert acme.client.balance("M1").json()["available"] == 70
        assert app.test_client().get("/readyz").get_json() == {"status": "ready"}
    finally:
        dispose(app)


@postgres_only
def test_pgbouncer_mode_connects_both_engines_without_prepared_statements(migrated, tmp_path,
                                                                          signing_key_file):
    bouncing = make_app(migrated, tmp_path, signing_key_file, with_query(PG_URL, READ_ONLY),
                        DATABASE_PGBOUNCER=True)
    try:
        with bouncing.app_context():
            for engine in (db.engines[None], db.engines[replica.BIND]):
                with engine.connect() as connection:
                    assert connection.connection.dbapi_connection.prepare_threshold is None
        acme = partner_of(bouncing, "acme")
        acme.client.enrol("M1")
        for _ in range(8):  # past psycopg's default threshold of 5 executions
            assert acme.client.balance("M1").status == 200
    finally:
        dispose(bouncing)


# --- what goes where ---------------------------------------------------------------------------------

@postgres_only
def test_claims_and_their_replays_run_on_the_primary(app, served, acme_like, bolt_like):
    acme, bolt = acme_like, bolt_like
    assert health(app).refresh().healthy
    acme.client.enrol("M1")
    when = ago(minutes=5)
    served.reset()
    first = acme.client.earn("e1", "M1", 100, occurred_at=when)
    again = acme.client.earn("e1", "M1", 100, occurred_at=when)
    assert (first.status, again.status) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    assert bolt.client.burn("b1", "M1", 30, occurred_at=ago(minutes=4)).status == 201
    assert acme.client.reverse("e1", "r1", 10, occurred_at=ago(minutes=3)).status == 201
    assert bolt.client.hold("h1", "M1", 20).status == 201
    assert bolt.client.get_hold("h1").status == 200
    assert bolt.client.capture("h1", "b2", 5).status == 201
    batch = acme.client.batch([{"kind": "earn", "claim_id": "e2", "member_id": "M1",
                                "points": 5, "occurred_at": ago(minutes=2)}])
    assert batch.status == 200 and batch.json()["summary"]["booked"] == 1
    assert served.replica == [] and served.primary


@postgres_only
def test_read_endpoints_run_on_the_standby_and_answer_as_the_primary(app, served, caplog,
                                                                     acme_like, bolt_like):
    acme = acme_like
    acme.client.enrol("M1")
    acme.client.earn("e1", "M1", 120, occurred_at=ago(minutes=3))
    bolt_like.client.burn("b1", "M1", 20, occurred_at=ago(minutes=2))
    reads = {
        "balance": lambda: acme.client.balance("M1"),
        "expiry-notices": lambda: acme.client.expiry_notices("M1"),
        "offers": lambda: acme.client.offers("M1"),
        "claim": lambda: acme.client.claim("e1"),
        "claims listing": lambda: acme.client.request("GET", "/v1/claims?limit=10"),
        "statements": lambda: acme.client.statements(),
        "reconciliations": lambda: acme.client.request("GET", "/v1/statements/2026-01/"
                                                              "reconciliations"),
    }
    assert health(app).refresh().healthy
    from_standby = {}
    with caplog.at_level(logging.WARNING, logger="coalition"):
        for name, read in reads.items():
            served.reset()
            answer = read()
            assert answer.status == 200, (name, answer.body)
            assert served.replica, f"{name}: nothing read on the standby"
            assert writes(served.replica) == [], name
            from_standby[name] = answer.json()
    assert refused_reads(caplog) == []  # no write was ever sent to the standby
    with app.app_context():  # each balance-like read left its harvesting lookup on the primary
        assert db.session.scalar(select(func.count()).select_from(MemberLookup)) == 3
    health(app).lag = lambda _connection: 3600.0
    assert health(app).refresh().reason == "lagging"
    for name, read in reads.items():
        served.reset()
        assert read().json() == from_standby[name], name
        assert served.replica == [], name


@postgres_only
def test_the_partner_token_is_spent_on_the_primary_by_a_read(app, served, acme_like):
    acme_like.client.enrol("M1")
    assert health(app).refresh().healthy
    with app.app_context():
        before = db.session.scalar(select(func.count()).select_from(UsedToken))
        db.session.rollback()
    served.reset()
    assert acme_like.client.balance("M1").status == 200
    assert acme_like.client.balance("nobody").status == 404  # the error handlers: primary too
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(UsedToken)) == before + 2
    assert any("INSERT INTO used_tokens" in s for s in served.primary)
    assert writes(served.replica) == []


@postgres_only
def test_portal_pages_read_the_standby_and_a_post_stays_on_the_primary(app, served, acme_like):
    acme_like.client.enrol("M-1")
    acme_like.client.earn("e1", "M-1", 55, occurred_at=ago(minutes=2))
    give_password(app, "member", "M-1")
    client = app.test_client()
    assert sign_in(client, "portal", "M-1").status_code == 302
    assert health(app).refresh().healthy
    for page in ("/portal/", "/portal/history", "/portal/offers", "/portal/consent"):
        served.reset()
        answer = client.get(page)
        assert answer.status_code == 200, page
        assert served.replica and writes(served.replica) == [], page
    assert "55" in client.get("/portal/").get_data(as_text=True)
    served.reset()
    form = client.get("/portal/consent").get_data(as_text=True)
    token = form.split('name="csrf_token" value="')[1].split('"')[0]
    served.reset()
    saved = client.post("/portal/consent", data={"csrf_token": token, "marketing": "yes"})
    assert saved.status_code == 302
    assert served.replica == []


# --- falling back ------------------------------------------------------------------------------------

@postgres_only
def test_a_dead_standby_sends_reads_to_the_primary_and_readyz_says_degraded(
        migrated, tmp_path, signing_key_file, caplog):
    real = make_url(PG_URL)
    dead = f"postgresql://{real.username}@127.0.0.1:{DEAD_PORT}/{real.database}"
    app = make_app(migrated, tmp_path, signing_key_file, dead)
    watch = Served(app)
    try:
        acme = partner_of(app, "acme")
        acme.client.enrol("M1")
        acme.client.earn("e1", "M1", 10, occurred_at=ago(minutes=1))
        with caplog.at_level(logging.WARNING, logger="coalition.replica"):
            watch.reset()
            assert acme.client.balance("M1").json()["available"] == 10
            assert watch.replica == []
            ready = app.test_client().get("/readyz")
            health(app).refresh()
        assert ready.status_code == 200
        body = ready.get_json()
        assert body["status"] == "degraded" and body["replica"]["reason"] == "unreachable"
        assert body["replica"]["lag_s"] is None and body["replica"]["max_lag_s"] == 5.0
        state = replica.replica_status(app)
        assert (state["configured"], state["healthy"], state["reason"]) == \
            (True, False, "unreachable")
        # One warning for the change of state, none for the same state found again.
        assert [r.getMessage() for r in caplog.records if r.name == "coalition.replica"] == \
            ["read replica not used: reads go to the primary"]
    finally:
        watch.close()
        dispose(app)


@postgres_only
def test_a_lag_above_the_bound_falls_back_until_the_standby_catches_up(app, served, acme_like):
    acme_like.client.enrol("M1")
    acme_like.client.earn("e1", "M1", 25, occurred_at=ago(minutes=1))
    lag = [12.5]
    health(app).lag = lambda _connection: lag[0]
    assert health(app).refresh().reason == "lagging"
    served.reset()
    assert acme_like.client.balance("M1").json()["available"] == 25
    assert served.replica == []
    ready = app.test_client().get("/readyz").get_json()
    assert ready["status"] == "degraded"
    assert (ready["replica"]["reason"], ready["replica"]["lag_s"]) == ("lagging", 12.5)
    lag[0] = 0.2
    assert health(app).refresh().healthy
    served.reset()
    assert acme_like.client.balance("M1").json()["available"] == 25
    assert served.replica
    assert app.test_client().get("/readyz").get_json() == {"status": "ready"}
    assert replica.replica_status(app)["lag_s"] == 0.2


@postgres_only
def test_the_lag_of_a_server_not_in_recovery_is_zero(app):
    with app.app_context():
        with db.engines[replica.BIND].connect() as connection, connection.begin():
            assert replica.lag_of(connection) == 0.0


@postgres_only
def test_a_standby_dropping_the_connection_mid_request_costs_the_partner_nothing(
        app, served, acme_like, caplog):
    acme_like.client.enrol("M1")
    acme_like.client.earn("e1", "M1", 60, occurred_at=ago(minutes=1))
    assert health(app).refresh().healthy
    standby = served.standby
    failures = []

    def drop(connection, *_args):
        if connection.engine is standby and not failures:
            failures.append(1)
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    event.listen(Engine, "before_cursor_execute", drop)
    try:
        with caplog.at_level(logging.WARNING, logger="coalition.replica"):
            answer = acme_like.client.balance("M1")
    finally:
        event.remove(Engine, "before_cursor_execute", drop)
    assert failures and answer.status == 200 and answer.json()["available"] == 60
    assert health(app).status().reason == "unreachable"
    served.reset()
    assert acme_like.client.balance("M1").status == 200 and served.replica == []


def terminate(engine, pid: int) -> None:
    with engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        other.commit()


@postgres_only
def test_a_standby_connection_killed_inside_a_transaction_is_left_for_the_primary(app):
    """Two reads on the standby in one transaction, its backend terminated between them: the
    second read runs on the primary, and the session commits."""
    assert health(app).refresh().healthy
    with app.app_context():
        token = replica.open_scope(health(app))
        try:
            assert db.session.scalar(select(func.pg_backend_pid())) is not None
            standby_pid = db.session.scalar(select(func.pg_backend_pid()))
            primary_pid = db.session.connection().scalar(text("SELECT pg_backend_pid()"))
            assert standby_pid != primary_pid
            kill = threading.Thread(target=terminate, args=(db.engines[None], standby_pid))
            kill.start()  # a thread of its own: outside this scope (a write there would pin it)
            kill.join()
            assert db.session.scalar(select(func.pg_backend_pid())) == primary_pid
            assert replica.current_scope().pinned
            db.session.commit()
        finally:
            replica.close_scope(token)
        assert health(app).status().reason == "unreachable"


@postgres_only
def test_a_write_taken_for_a_read_is_retried_on_the_primary(app, caplog):
    """A SELECT over a data-modifying CTE looks like a read: the standby refuses it, and the
    primary runs it, once."""
    assert health(app).refresh().healthy
    now = datetime.now(timezone.utc)
    spent = insert(UsedToken).values(partner_id="acme", jti="cte-1", expires_at=now) \
        .returning(UsedToken.jti).cte("spent")
    with app.app_context():
        partner_service.add_partner(db.session, "acme", "Acme", now=now, terms={})
        db.session.commit()
        token = replica.open_scope(health(app))
        try:
            with caplog.at_level(logging.WARNING, logger="coalition.database"):
                assert db.session.scalar(select(spent.c.jti)) == "cte-1"
            db.session.commit()
        finally:
            replica.close_scope(token)
        assert db.session.scalar(select(func.count()).select_from(UsedToken)
                                 .where(UsedToken.jti == "cte-1")) == 1
    assert refused_reads(caplog) == ["standby refused a read: retried on the primary"]
    assert health(app).status().healthy  # a refused write is not the standby's fault


def test_readyz_documents_degraded():
    schema = READYZ_DOC["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["properties"]["status"]["enum"] == ["ready", "degraded"]
    assert set(schema["properties"]["replica"]["properties"]) == \
        {"reason", "lag_s", "max_lag_s", "checked_at"}


@postgres_only
def test_replica_status_is_cached(app):
    checks = []

    def lag(connection):
        checks.append(1)
        return 0.0

    health(app).lag = lag
    health(app).refresh()
    for _ in range(50):
        status = replica.replica_status(app)
    assert len(checks) == 1
    assert status["configured"] and status["healthy"] and status["lag_s"] == 0.0
    assert status["checked_at"].endswith("Z")


@postgres_only
def test_a_standby_gone_after_the_last_read_does_not_fail_the_commit(app):
    """The primary's work commits though the standby's connection died after the request's
    last read there: its read-only transaction is ended quietly, not committed."""
    assert health(app).refresh().healthy
    now = datetime.now(timezone.utc)
    with app.app_context():
        partner_service.add_partner(db.session, "acme", "Acme", now=now, terms={})
        db.session.commit()
        token = replica.open_scope(health(app))
        try:
            standby_pid = db.session.scalar(select(func.pg_backend_pid()))
            db.session.execute(insert(UsedToken).values(partner_id="acme", jti="after-read",
                                                        expires_at=now))
            kill = threading.Thread(target=terminate, args=(db.engines[None], standby_pid))
            kill.start()
            kill.join()
            db.session.commit()
        finally:
            replica.close_scope(token)
        assert db.session.scalar(select(func.count()).select_from(UsedToken)) == 1


# --- statements, reports and the console --------------------------------------------------------

from tests.browser.support import add_operator  # noqa: E402
from coalition.members import enrol  # noqa: E402
from tests.test_settlement import TERMS, Book, close, day  # noqa: E402


def closed_may(app) -> None:
    """May 2026 of docs/settlement.md (tests/test_settlement.py), closed, in an app context of
    its own: each request must have its own (the console's operator is kept in flask.g)."""
    with app.app_context():
        s = db.session
        for partner, terms in TERMS.items():
            partner_service.add_partner(s, partner, partner.title(), now=day(1), terms=terms)
        for member in ("M1", "M2"):
            enrol(s, member, now=day(1))
        s.commit()
        b = Book(s)
        b.earn("bakery", "e1", "M1", 1000, day(2))
        b.earn("fuel", "f1", "M1", 500, day(3))
        b.burn("fuel", "f2", "M1", 900, day(11))
        b.reverse("fuel", "f1", "rf1", 500, day(13))
        close(s, "2026-05", datetime(2026, 6, 2, tzinfo=timezone.utc))


@postgres_only
def test_statements_and_console_pages_read_the_standby_and_answer_as_the_primary(
        app, served, caplog):
    closed_may(app)
    key = new_key("EdDSA")
    with app.app_context():
        partner_service.add_key(db.session, "fuel", public_pem(key), now=day(2, month=6))
        db.session.commit()
    fuel = PartnerClient("", "fuel", key, transport=transport_for(app))
    add_operator(app, "ana", "admin")
    console = app.test_client()
    assert sign_in(console, "console", "ana").status_code == 302
    api = {
        "statements": "/v1/statements", "statement": "/v1/statements/2026-05",
        "statement csv": "/v1/statements/2026-05?format=csv",
        "lines": "/v1/statements/2026-05/lines?limit=3",
        "lines csv": "/v1/statements/2026-05/lines?format=csv",
    }
    pages = ["/console/settlement", "/console/settlement/2026-05",
             "/console/settlement/2026-05/statements/fuel",
             "/console/settlement/2026-05/report.csv",
             "/console/settlement/2026-05/statements/fuel.csv",
             "/console/settlement/2026-05/statements/fuel/lines.csv",
             "/console/dashboard", "/console/members/M1", "/console/partners",
             "/console/partners/fuel", "/console/audit", "/console/campaigns"]

    def read_all() -> dict:
        bodies = {}
        for name, path in api.items():
            served.reset()
            answer = fuel.request("GET", path)
            assert answer.status == 200, (name, answer.body[:300])
            bodies[name] = (answer.body, bool(served.replica), writes(served.replica))
        for path in pages:
            served.reset()
            answer = console.get(path)
            assert answer.status_code == 200, (path, answer.get_data(as_text=True)[-1500:])
            # HTML pages carry a fresh CSRF token each time: only downloads are compared.
            bodies[path] = (answer.get_data() if path.endswith(".csv") else None,
                            bool(served.replica), writes(served.replica))
        return bodies

    assert health(app).refresh().healthy
    with caplog.at_level(logging.WARNING, logger="coalition"):
        from_standby = read_all()
    assert refused_reads(caplog) == []
    assert [name for name, (_, on_standby, _) in from_standby.items() if not on_standby] == []
    assert [name for name, (_, _, wrote) in from_standby.items() if wrote] == []
    health(app).lag = lambda _connection: 3600.0
    assert not health(app).refresh().healthy
    from_primary = read_all()
    assert [name for name, (_, on_standby, _) in from_primary.items() if on_standby] == []
    for name in [*api, *pages]:
        assert from_primary[name][0] == from_standby[name][0], name


# --- the cached check -----------------------------------------------------------------------------

def test_the_check_runs_at_most_once_an_interval_whatever_the_threads(caplog):
    """Eight threads asking all the time: about one check per interval, in the background,
    and a change of state seen within an interval or two, logged once."""
    engine = create_engine("sqlite://")
    calls, lag = [], [0.0]

    def measured(_connection):
        calls.append(time.monotonic())
        time.sleep(0.01)
        return lag[0]

    health = replica.Health(engine, 5.0, every_s=0.2, lag=measured)
    stop = time.monotonic() + 1.0

    def ask():
        while time.monotonic() < stop:
            assert health.status() is not None

    with caplog.at_level(logging.WARNING, logger="coalition.replica"):
        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        lag[0] = 9.0  # behind from now on
        for thread in threads:
            thread.join()
        deadline = time.monotonic() + 2
        while health.status().reason != "lagging" and time.monotonic() < deadline:
            time.sleep(0.05)
    assert health.status().reason == "lagging" and health.status().lag_s == 9.0
    assert 3 <= len(calls) <= 8, len(calls)  # 1.0 s at one check per 0.2 s, give or take
    assert all(b - a >= 0.19 for a, b in zip(calls, calls[1:]))
    assert [r.getMessage() for r in caplog.records] == [
        "read replica in use", "read replica not used: reads go to the primary"]
    engine.dispose()
