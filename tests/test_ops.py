"""Operations: health and readiness, request ids, security headers, JSON logs without secrets."""
from __future__ import annotations

import io
import json
import logging
import re

import pytest

from coalition import create_app
from coalition.database import db
from coalition.errors import PROBLEM_JSON
from coalition.ops import configure_logging
from tests.conftest import ago, postgres_only

HEX_ID = re.compile(r"^[0-9a-f]{32}$")
UNREACHABLE_DB = "postgresql+psycopg://postgres@127.0.0.1:1/x"


def slug_of(r) -> str:
    assert r.mimetype == PROBLEM_JSON
    return json.loads(r.get_data())["type"].rsplit("/", 1)[-1]


def signed(app, partner, method: str, path: str, body: bytes = b"", **headers):
    h = partner.client.sign(method, path, body)
    h.update(headers)
    return app.test_client().open(path, method=method, data=body, headers=h)


def earn_bytes(**fields) -> bytes:
    doc = {"claim_id": "c1", "member_id": "M1", "points": 100, "occurred_at": ago(minutes=1), **fields}
    return json.dumps(doc).encode()


@pytest.fixture
def shop(app, acme):
    assert acme.client.enrol("M1").status == 201
    return acme


@pytest.fixture
def boom(app):
    """A route that fails with an unexpected exception (registered before the first request)."""
    def fail():
        raise RuntimeError("kaboom: postgresql://user:hunter2@db/secret")
    app.add_url_rule("/boom", "boom", fail, methods=["GET", "POST"])
    return app


@pytest.fixture
def logs():
    """What the service's own JSON log handler (root logger, stderr) writes during the test."""
    configure_logging("INFO")  # a no-op once an app has been created, as in every test here
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "coalition", False))
    buffer = io.StringIO()
    previous = handler.setStream(buffer)

    class Logs:
        @staticmethod
        def text() -> str:
            return buffer.getvalue()

        @staticmethod
        def records() -> list[dict]:
            return [json.loads(line) for line in buffer.getvalue().splitlines()]  # JSON lines, all

        @classmethod
        def access(cls) -> list[dict]:
            return [r for r in cls.records() if r["name"] == "coalition.access"]

    yield Logs
    handler.setStream(previous)


# --- health and readiness -----------------------------------------------------------------

def test_healthz(app):
    r = app.test_client().get("/healthz")
    assert r.status_code == 200 and r.get_json() == {"status": "alive"}


def test_readyz_when_the_database_answers(app):
    r = app.test_client().get("/readyz")
    assert r.status_code == 200 and r.get_json() == {"status": "ready"}


@pytest.fixture
def app_without_db():
    app = create_app({"SQLALCHEMY_DATABASE_URI": UNREACHABLE_DB, "TESTING": True,
                      "SQLALCHEMY_ENGINE_OPTIONS": {"connect_args": {"connect_timeout": 1}}})
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def test_readyz_is_503_when_the_database_is_unreachable(app_without_db, logs):
    client = app_without_db.test_client()
    r = client.get("/readyz", headers={"X-Request-Id": "ready-probe-1"})
    assert r.status_code == 503 and slug_of(r) == "unavailable"
    doc = r.get_json(force=True)
    assert doc["status"] == 503 and doc["detail"]
    body = r.get_data(as_text=True)
    for leak in ("psycopg", "127.0.0.1", "OperationalError", "Traceback", "connection"):
        assert leak not in body
    assert r.headers["X-Request-Id"] == "ready-probe-1"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Retry-After"] == "1"  # as every 503 unavailable of the service
    warning = [x for x in logs.records() if x["name"] == "coalition.ops"]
    assert warning and warning[0]["level"] == "WARNING" and warning[0]["request_id"] == "ready-probe-1"
    # Liveness does not depend on the database: the process is alive, just not ready.
    assert client.get("/healthz").status_code == 200
    # A second probe fails the same way (the failed connection left no broken session behind).
    assert client.get("/readyz").status_code == 503



def test_a_signed_claim_is_503_with_retry_after_when_the_database_is_unreachable(app_without_db, logs):
    """A partner retries on 503 + Retry-After; a 500 would say the request itself was at fault."""
    from partners.client import PartnerClient
    from tests.conftest import new_key, transport_for
    client = PartnerClient("", "acme", new_key("EdDSA"), transport=transport_for(app_without_db))
    r = client.earn("c1", "M1", 100)
    assert r.status == 503 and r.json()["type"] == "/problems/unavailable"
    assert r.headers["retry-after"] == "1"
    assert not [x for x in logs.records() if x["level"] == "ERROR"]


def test_a_connection_lost_mid_claim_is_503_books_nothing_and_a_retry_books_once(app, shop, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from coalition import ledger
    real = ledger.book_earn

    def connection_lost(session, **kwargs):
        real(session, **kwargs)  # the work is done, then the server goes away before commit
        raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(ledger, "book_earn", connection_lost)
    body = earn_bytes(claim_id="lost-1")
    headers = shop.client.sign("POST", "/v1/earn", body)
    r = app.test_client().post("/v1/earn", data=body, headers=headers)
    assert r.status_code == 503 and slug_of(r) == "unavailable" and r.headers["Retry-After"] == "1"
    assert shop.client.claim("lost-1").status == 404  # rolled back: nothing half-booked

    monkeypatch.setattr(ledger, "book_earn", real)
    # The database was reachable for the failure path, so the token was spent: no replay.
    assert app.test_client().post("/v1/earn", data=body, headers=headers).status_code == 401
    retried = app.test_client().post("/v1/earn", data=body, headers=shop.client.sign("POST", "/v1/earn", body))
    assert retried.status_code == 201
    assert shop.client.balance("M1").json()["available"] == 100

@postgres_only
def test_a_pooled_connection_the_server_dropped_while_idle_is_replaced_before_use(app, shop, monkeypatch):
    """Connections idle past PING_IDLE_AFTER_S are pinged at checkout; a dead one is replaced."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from coalition import database
    with app.app_context():
        with db.engine.connect() as connection:
            backend = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        outside = create_engine(db.engine.url, poolclass=NullPool)
        with outside.connect() as other:  # the server drops the idle pooled connection
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend})
        outside.dispose()
        monkeypatch.setattr(database, "PING_IDLE_AFTER_S", 0.0)
        assert shop.client.earn("idle-1", "M1", 10).status == 201
        with db.engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != backend


# --- request ids --------------------------------------------------------------------------

def test_request_id_is_generated_when_absent(app):
    client = app.test_client()
    first, second = client.get("/healthz"), client.get("/healthz")
    assert HEX_ID.match(first.headers["X-Request-Id"])
    assert HEX_ID.match(second.headers["X-Request-Id"])
    assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]


@pytest.mark.parametrize("incoming", ["abc-123_x.y", "0", "a" * 64, "7f3c2a9e-2b1d-4c8e-9a51-0f6d3b2c1e44"])
def test_a_safe_caller_request_id_is_kept(app, incoming):
    r = app.test_client().get("/healthz", headers={"X-Request-Id": incoming})
    assert r.headers["X-Request-Id"] == incoming


@pytest.mark.parametrize("incoming", [
    pytest.param("abc\ndef", id="newline"),
    pytest.param("abc\r\nSet-Cookie: x=1", id="crlf-header-injection"),
    pytest.param("a" * 65, id="65-chars"),
    pytest.param("a" * 200, id="200-chars"),
    pytest.param("", id="empty"),
    pytest.param("a b", id="space"),
    pytest.param("<script>alert(1)</script>", id="markup"),
    pytest.param('x","level":"CRITICAL', id="json-injection"),
    pytest.param("caf\u00e9", id="non-ascii"),
    pytest.param("abc\n", id="trailing-newline"),
])
def test_a_hostile_request_id_is_replaced(app, logs, incoming):
    # Set in the WSGI environ directly: the test client itself refuses newlines in headers.
    r = app.test_client().get("/healthz", environ_overrides={"HTTP_X_REQUEST_ID": incoming})
    assert r.status_code == 200
    assert HEX_ID.match(r.headers["X-Request-Id"])
    if incoming:
        assert incoming not in logs.text()
    assert logs.access()[-1]["request_id"] == r.headers["X-Request-Id"]


def requests_of_every_kind(app, partner):
    """name -> a response; successes and every kind of error the service can answer."""
    client = app.test_client()
    return {
        "healthz": client.get("/healthz"),
        "openapi": client.get("/openapi.json"),
        "balance-200": signed(app, partner, "GET", "/v1/members/M1/balance"),
        "earn-201": signed(app, partner, "POST", "/v1/earn", earn_bytes()),
        "malformed-400": signed(app, partner, "POST", "/v1/earn", b"[]"),
        "unsigned-401": client.post("/v1/earn", data=earn_bytes(), content_type="application/json"),
        "unknown-member-404": signed(app, partner, "GET", "/v1/members/nobody/balance"),
        "unknown-route-404": client.get("/nope"),
        "method-405": client.get("/v1/earn"),
        "conflict-409": signed(app, partner, "POST", "/v1/earn", earn_bytes(points=7)),
        "too-large-413": signed(app, partner, "POST", "/v1/earn", b" " * (1024 * 1024 + 1)),
        "media-type-415": signed(app, partner, "POST", "/v1/earn", earn_bytes(claim_id="c2"),
                                 **{"Content-Type": "text/plain"}),
        "invalid-422": signed(app, partner, "POST", "/v1/earn", earn_bytes(claim_id="c3", points="1")),
        "unexpected-500": client.get("/boom"),
    }


EXPECTED_STATUS = {"healthz": 200, "openapi": 200, "balance-200": 200, "earn-201": 201,
                   "malformed-400": 400, "unsigned-401": 401, "unknown-member-404": 404,
                   "unknown-route-404": 404, "method-405": 405, "conflict-409": 409,
                   "too-large-413": 413, "media-type-415": 415, "invalid-422": 422,
                   "unexpected-500": 500}


def test_every_response_carries_a_request_id_that_its_log_line_shares(boom, shop, logs):
    responses = requests_of_every_kind(boom, shop)
    assert {name: r.status_code for name, r in responses.items()} == EXPECTED_STATUS
    ids = [r.headers["X-Request-Id"] for r in responses.values()]
    assert all(HEX_ID.match(i) for i in ids) and len(set(ids)) == len(ids)
    access = logs.access()
    assert [line["request_id"] for line in access] == ids  # one access line per request, in order
    assert [line["status"] for line in access] == list(EXPECTED_STATUS.values())


def test_a_caller_request_id_is_echoed_on_errors_too(app, shop):
    r = signed(app, shop, "POST", "/v1/earn", b"{", **{"X-Request-Id": "till-7.receipt-42"})
    assert r.status_code == 400 and r.headers["X-Request-Id"] == "till-7.receipt-42"
    r = app.test_client().get("/nope", headers={"X-Request-Id": "till-7.receipt-43"})
    assert r.status_code == 404 and r.headers["X-Request-Id"] == "till-7.receipt-43"


# --- security headers ---------------------------------------------------------------------

@pytest.mark.parametrize("name", list(EXPECTED_STATUS))
def test_security_headers_on_api_responses_and_errors(boom, shop, name):
    r = requests_of_every_kind(boom, shop)[name]
    assert r.status_code == EXPECTED_STATUS[name]
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    csp = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    if r.status_code >= 400:
        assert r.mimetype == PROBLEM_JSON
        assert "Traceback" not in r.get_data(as_text=True)


def test_docs_page_gets_a_page_csp_that_still_forbids_framing(app):
    r = app.test_client().get("/docs")
    assert r.status_code == 200
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]


def test_unexpected_error_hides_its_cause_from_the_caller_but_logs_it(boom, logs):
    r = boom.test_client().get("/boom", headers={"X-Request-Id": "boom-1"})
    assert r.status_code == 500 and slug_of(r) == "internal-error"
    assert "kaboom" not in r.get_data(as_text=True) and "hunter2" not in r.get_data(as_text=True)
    errors = [x for x in logs.records() if x["level"] == "ERROR"]
    assert len(errors) == 1
    assert errors[0]["request_id"] == "boom-1"
    assert "RuntimeError" in errors[0]["exc_info"]


# --- logs ---------------------------------------------------------------------------------

def test_logs_are_json_lines_with_request_fields(app, shop, logs):
    r = signed(app, shop, "POST", "/v1/earn", earn_bytes(), **{"X-Request-Id": "earn-req-1"})
    assert r.status_code == 201
    (line,) = [x for x in logs.access() if x["request_id"] == "earn-req-1"]
    assert line["level"] == "INFO" and line["time"]
    assert (line["method"], line["path"], line["status"]) == ("POST", "/v1/earn", 201)
    assert line["partner_id"] == "acme"
    assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0
    unsigned = app.test_client().get("/healthz", headers={"X-Request-Id": "probe-1"})
    assert unsigned.status_code == 200
    (line,) = [x for x in logs.access() if x["request_id"] == "probe-1"]
    assert line["partner_id"] is None


def test_logs_contain_neither_tokens_nor_bodies_nor_query_strings(boom, shop, logs):
    secret = "SECRET-4111111111111111"
    body = earn_bytes(description=secret)
    token_headers = shop.client.sign("POST", "/v1/earn", body)
    token = token_headers["Authorization"].split()[1]
    client = boom.test_client()
    sent = [
        client.post("/v1/earn", data=body, headers=token_headers),  # 201
        signed(boom, shop, "POST", "/v1/earn", earn_bytes(claim_id="c9", **{secret: secret})),  # 422
        signed(boom, shop, "POST", "/v1/earn", b'{"a":"' + secret.encode() + b'","a":1}'),  # 400
        client.post("/v1/earn", data=earn_bytes(description=secret),  # 401, a garbage token
                    headers={"Authorization": f"Bearer {secret}.{secret}.{secret}",
                             "Content-Type": "application/json"}),
        client.post("/v1/earn", data=body, headers=token_headers),  # 401, the real token replayed
        client.get(f"/healthz?card={secret}"),
        client.post("/boom", data=body, headers={"Authorization": f"Bearer {secret}"}),  # 500
    ]
    assert [r.status_code for r in sent] == [201, 422, 400, 401, 401, 200, 500]
    text = logs.text()
    assert len(logs.access()) == len(sent)
    assert secret not in text
    for part in token.split("."):
        assert part not in text
    assert "Bearer" not in text and "Authorization" not in text
    assert all(x["path"] in ("/v1/earn", "/healthz", "/boom") for x in logs.access())


def test_access_logs_carry_the_route_not_the_card_number(app, logs):
    with app.test_client() as c:
        c.get("/v1/members/CARD-4242-4242/balance")  # 401, but routed
        c.get("/no/such/CARD-4242-4242")
    lines = logs.access()
    assert [line["path"] for line in lines[-2:]] == ["/v1/members/<member_id>/balance", "(no route)"]
    assert "CARD-4242" not in json.dumps(lines)


def test_a_request_that_finds_every_pooled_connection_busy_is_503_not_500(app, shop, logs):
    """The pool's own timeout (every connection of this process in use for pool_timeout) is
    no fault of the request: 503 with Retry-After, like a database that is away."""
    busy = create_app({"SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
                       "TESTING": True, "COALITION_SIGNING_KEY_FILE":
                       app.config["COALITION_SIGNING_KEY_FILE"],
                       "SQLALCHEMY_ENGINE_OPTIONS": {"pool_size": 1, "max_overflow": 0,
                                                     "pool_timeout": 0.2}})
    body = earn_bytes(claim_id="pooled-1")
    with busy.app_context():
        held = db.engine.connect()  # the pool's one connection
        try:
            r = busy.test_client().post("/v1/earn", data=body,
                                        headers=shop.client.sign("POST", "/v1/earn", body))
        finally:
            held.close()
        db.engine.dispose()
    assert r.status_code == 503 and slug_of(r) == "unavailable" and r.headers["Retry-After"] == "1"
    assert not [x for x in logs.records() if x["level"] == "ERROR"]
    assert shop.client.claim("pooled-1").status == 404


@pytest.fixture
def pings_keep_failing(app):
    """Every checkout's ping fails, as behind a bouncer that still takes logins for a server
    that is gone (a failover under way): SQLAlchemy reconnects, pings, fails, and after its
    last attempt raises InvalidRequestError("This connection is closed"), no DBAPIError."""
    from sqlalchemy import event
    from sqlalchemy.exc import DisconnectionError

    def fail(*_args):
        raise DisconnectionError("server closed the connection unexpectedly")

    with app.app_context():
        engine = db.engine
        db.session.remove()
        engine.dispose()
    event.listen(engine.pool, "checkout", fail)
    yield
    event.remove(engine.pool, "checkout", fail)


def test_reconnections_that_all_fail_are_503_not_500(app, shop, pings_keep_failing, logs):
    r = shop.client.earn("gone-1", "M1", 10)
    assert r.status == 503 and r.json()["type"] == "/problems/unavailable"
    assert r.headers["retry-after"] == "1"
    assert app.test_client().get("/readyz").status_code == 503
    assert not [x for x in logs.records() if x["level"] == "ERROR"]


def test_the_sealer_outlives_reconnections_that_all_fail(app, pings_keep_failing):
    import threading
    from datetime import timedelta

    from coalition import leases, sealer
    errors, lines = [], []
    with app.app_context():
        runs = sealer.run_sealer(db.session, every=0.01, stop=threading.Event(), max_runs=3,
                                 report=lines.append, on_error=errors.append,
                                 lease=leases.Lease("sealer", "me", timedelta(seconds=15)))
    assert runs == 3 and lines == []
    # One per run: the lease could not be renewed, so nothing was sealed, and the loop went on.
    assert len(errors) == 3 and all("connection is closed" in str(e) for e in errors)
