"""Abuse limits (coalition/limits.py): 429 `rate-limited` with `Retry-After`, per partner once
authenticated and per source address otherwise; in memory, and in the real Redis at REDIS_URL.

The Redis tests skip when Redis is unreachable, except under CI (CI set), where they fail.
Each uses a key prefix of its own and deletes its keys afterwards."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select, text

from coalition import create_app
from coalition.database import db
from coalition.errors import PROBLEM_JSON
from coalition.models import Entry
from partners import service as partner_service
from partners.client import PartnerClient, b64url_decode
from partners.models import UsedToken
from tests.conftest import ON_POSTGRES, Partner, ago, new_key, public_pem, transport_for

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/15"
TINY = {"RATELIMIT_PARTNER": "3 per minute", "RATELIMIT_ANONYMOUS": "2 per minute"}
OTHER_ADDRESS = {"REMOTE_ADDR": "192.0.2.7"}


# --- fixtures and helpers -----------------------------------------------------------------

@pytest.fixture
def make_app(migrated, tmp_path, signing_key_file, monkeypatch):
    """create_app() as conftest's `app` fixture calls it, with extra config. Every app made in
    one test shares that test's database (as processes behind one load balancer would). The
    counts are kept in memory unless the test passes REDIS_URL itself."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    if ON_POSTGRES:
        uri = migrated
    else:
        uri = "sqlite:///" + str(tmp_path / "coalition.db")
        shutil.copy(migrated.removeprefix("sqlite:///"), tmp_path / "coalition.db")
    made = []

    def make(**config):
        app = create_app({"SQLALCHEMY_DATABASE_URI": uri, "TESTING": True,
                          "COALITION_SIGNING_KEY_FILE": signing_key_file, **config})
        if ON_POSTGRES and not made:
            with app.app_context():
                tables = ", ".join(t.name for t in db.metadata.sorted_tables)
                db.session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
                db.session.commit()
        made.append(app)
        return app

    yield make
    for app in made:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def register(app, partner_id: str, alg: str = "EdDSA") -> Partner:
    key = new_key(alg)
    with app.app_context():
        now = datetime.now(timezone.utc)
        partner_service.add_partner(db.session, partner_id, partner_id.title(), now=now)
        kid = partner_service.add_key(db.session, partner_id, public_pem(key), now=now).kid
        db.session.commit()
    return Partner(partner_id, key, kid, client_for(app, partner_id, key))


def client_for(app, partner_id: str, key) -> PartnerClient:
    return PartnerClient("", partner_id, key, transport=transport_for(app))


def earn_body(claim_id: str, member_id: str = "M1", points: int = 100) -> bytes:
    return json.dumps({"claim_id": claim_id, "member_id": member_id, "points": points,
                       "occurred_at": ago(minutes=1)}).encode()


def entries(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(Entry))


def jti_spent(app, partner_id: str, headers: dict) -> bool:
    claims = json.loads(b64url_decode(headers["Authorization"].split()[1].split(".")[1]))
    with app.app_context():
        return db.session.get(UsedToken, (partner_id, claims["jti"])) is not None


def unsigned_earn(app, environ=None):
    return app.test_client().post("/v1/earn", data=earn_body("x"), content_type="application/json",
                                  environ_overrides=environ or {})


def assert_rate_limited(r, window: int = 60) -> int:
    """A 429 as docs/partner-api.md says; returns Retry-After (whole seconds)."""
    status = r.status_code if hasattr(r, "status_code") else r.status
    headers = {name.lower(): value for name, value in r.headers.items()}
    body = r.get_json(force=True) if hasattr(r, "get_json") else r.json()
    assert status == 429
    assert headers["content-type"].startswith(PROBLEM_JSON)
    assert body["type"].endswith("/problems/rate-limited") and body["status"] == 429
    assert body["title"] == "Rate limited" and body["detail"]
    retry_after = headers["retry-after"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= window
    return int(retry_after)


# --- in memory ----------------------------------------------------------------------------

def test_a_partners_fourth_request_in_a_minute_is_429_books_nothing_and_keeps_the_token(make_app):
    app = make_app(**TINY)
    assert app.config["REDIS_URL"] is None  # memory:// unless REDIS_URL is configured
    acme = register(app, "acme")
    client = app.test_client()
    assert acme.client.enrol("M1").status == 201
    assert acme.client.earn("c1", "M1", 100).status == 201
    assert acme.client.earn("c2", "M1", 100).status == 201
    booked = entries(app)

    body = earn_body("c3")
    headers = acme.client.sign("POST", "/v1/earn", body)
    r = client.post("/v1/earn", data=body, headers=headers)
    assert_rate_limited(r)
    assert r.headers["X-Request-Id"] and r.headers["X-Content-Type-Options"] == "nosniff"
    assert "WWW-Authenticate" not in r.headers  # the token was fine: not a 401 in disguise
    assert entries(app) == booked  # nothing booked
    assert not jti_spent(app, "acme", headers)  # the token may be sent again
    assert acme.client.balance("M1").status == 429  # GETs count too

    # The same partner behind another address is still the same partner.
    body4 = earn_body("c4")
    r = client.post("/v1/earn", data=body4, headers=acme.client.sign("POST", "/v1/earn", body4),
                    environ_overrides=OTHER_ADDRESS)
    assert_rate_limited(r)

    # Another partner has its own quota; unauthenticated callers their own budget (401, not 429).
    bolt = register(app, "bolt", "ES256")
    assert bolt.client.enrol("M1").status == 200
    assert bolt.client.balance("M1").status == 200
    assert unsigned_earn(app).status_code == 401

    # Once the window is over, the refused request goes through with its very token.
    app.extensions["coalition_limits"].limiter.reset()
    r = client.post("/v1/earn", data=body, headers=headers)
    assert r.status_code == 201 and r.get_json()["claim_id"] == "c3"
    assert entries(app) == booked + 1 and jti_spent(app, "acme", headers)


def test_statements_count_against_the_partners_quota(make_app):
    app = make_app(**TINY)
    acme = register(app, "acme")
    assert [acme.client.statements().status for _ in range(4)] == [200, 200, 200, 429]
    assert acme.client.enrol("M1").status == 429  # one quota for the partner, every route


def test_unauthenticated_requests_are_limited_per_address(make_app):
    app = make_app(**TINY)
    acme = register(app, "acme")
    client = app.test_client()
    garbage = {"Authorization": "Bearer not.a.token", "Content-Type": "application/json"}
    assert unsigned_earn(app).status_code == 401
    assert client.post("/v1/earn", data=b"{}", headers=garbage).status_code == 401
    r = unsigned_earn(app)
    assert_rate_limited(r)
    assert "WWW-Authenticate" not in r.headers
    assert_rate_limited(client.get("/v1/statements", headers={"Authorization": "Bearer x"}))
    # One budget per address for everything unauthenticated: the public documents too.
    assert_rate_limited(client.get("/openapi.json"))
    assert_rate_limited(client.get("/problems/rate-limited"))
    # Another address has a budget of its own.
    assert unsigned_earn(app, OTHER_ADDRESS).status_code == 401
    assert client.get("/openapi.json", environ_overrides=OTHER_ADDRESS).status_code == 200
    # A valid partner token is never refused because of its address's failures.
    assert acme.client.enrol("M1").status == 201
    assert acme.client.balance("M1").status == 200
    assert entries(app) == 0


def test_replayed_tokens_count_as_failures_of_the_address(make_app):
    app = make_app(RATELIMIT_PARTNER="100 per minute", RATELIMIT_ANONYMOUS="2 per minute")
    acme = register(app, "acme")
    client = app.test_client()
    body = json.dumps({"member_id": "M1"}).encode()
    headers = acme.client.sign("POST", "/v1/members", body)
    assert client.post("/v1/members", data=body, headers=headers).status_code == 201
    assert client.post("/v1/members", data=body, headers=headers).status_code == 401
    assert client.post("/v1/members", data=body, headers=headers).status_code == 401
    assert_rate_limited(client.post("/v1/members", data=body, headers=headers))


def test_a_replayed_token_never_counts_against_its_partners_quota(make_app):
    """Whoever holds one leaked, already used token cannot use up its partner's quota: the
    jti is checked before the partner is counted."""
    app = make_app(RATELIMIT_PARTNER="3 per minute", RATELIMIT_ANONYMOUS="1000 per minute")
    acme = register(app, "acme")
    client = app.test_client()
    body = json.dumps({"member_id": "M1"}).encode()
    leaked = acme.client.sign("POST", "/v1/members", body)
    assert client.post("/v1/members", data=body, headers=leaked).status_code == 201
    replays = [client.post("/v1/members", data=body, headers=leaked) for _ in range(20)]
    assert {r.status_code for r in replays} == {401}
    assert all(r.get_json()["type"] == "/problems/token-replayed" for r in replays)
    assert all(r.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"') for r in replays)
    # The partner has used one request of three: two more go through, the fourth is refused.
    assert acme.client.earn("c1", "M1", 100).status == 201
    assert acme.client.balance("M1").status == 200
    assert_rate_limited(acme.client.balance("M1"))


def test_a_request_refused_for_its_quota_leaves_its_jti_unspent_after_the_replay_check(make_app):
    """The jti is recorded before the quota is counted, in the request's transaction: a 429
    rolls it back, so the very token works once the window has passed, and only once."""
    app = make_app(RATELIMIT_PARTNER="1 per minute", RATELIMIT_ANONYMOUS="1000 per minute")
    acme = register(app, "acme")
    client = app.test_client()
    assert acme.client.enrol("M1").status == 201
    body = earn_body("c1")
    headers = acme.client.sign("POST", "/v1/earn", body)
    assert_rate_limited(client.post("/v1/earn", data=body, headers=headers))
    assert not jti_spent(app, "acme", headers) and entries(app) == 0
    app.extensions["coalition_limits"].limiter.reset()
    assert client.post("/v1/earn", data=body, headers=headers).status_code == 201
    assert client.post("/v1/earn", data=body, headers=headers).status_code == 401
    assert entries(app) == 1


def test_reconciliation_has_a_quota_of_its_own(make_app):
    app = make_app(RATELIMIT_PARTNER="100 per minute", RATELIMIT_RECONCILIATION="2 per minute")
    acme, bolt = register(app, "acme"), register(app, "bolt", "ES256")
    client = app.test_client()

    def reconcile(partner):
        body = json.dumps({"claims": []}).encode()
        path = "/v1/statements/2026-01/reconciliation"
        headers = partner.client.sign("POST", path, body) | {"Content-Type": "application/json"}
        return client.post(path, data=body, headers=headers), headers

    # 2026-01 was never closed: 409 period-open, counted all the same.
    assert [reconcile(acme)[0].status_code for _ in range(2)] == [409, 409]
    refused, headers = reconcile(acme)
    assert_rate_limited(refused)
    assert not jti_spent(app, "acme", headers)
    # The partner's other requests and another partner's reconciliations are not affected.
    assert acme.client.enrol("M1").status == 201
    assert acme.client.statements().status == 200
    assert reconcile(bolt)[0].status_code == 409
    assert app.config["RATELIMIT_RECONCILIATION"] == "2 per minute"
    assert make_app().config["RATELIMIT_RECONCILIATION"] == "10 per minute;60 per hour"


def test_public_documents_are_limited_per_address(make_app):
    app = make_app(**TINY)
    client = app.test_client()
    assert client.get("/.well-known/jwks.json").status_code == 200
    assert client.get("/docs").status_code == 200
    r = client.get("/problems/not-found")
    assert_rate_limited(r)
    assert r.headers["X-Request-Id"] and r.headers["Cache-Control"] == "no-store"
    assert client.get("/openapi.json", environ_overrides=OTHER_ADDRESS).status_code == 200


def test_health_probes_are_never_limited(make_app):
    app = make_app(RATELIMIT_PARTNER="1 per minute", RATELIMIT_ANONYMOUS="1 per minute")
    client = app.test_client()
    assert [client.get("/healthz").status_code for _ in range(10)] == [200] * 10
    assert [client.get("/readyz").status_code for _ in range(10)] == [200] * 10
    assert client.get("/openapi.json").status_code == 200
    assert_rate_limited(client.get("/openapi.json"))
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


@pytest.mark.parametrize("enabled", [False, "false", "0"])
def test_limits_can_be_switched_off(make_app, enabled):
    app = make_app(RATELIMIT_ENABLED=enabled, RATELIMIT_PARTNER="1 per minute",
                   RATELIMIT_ANONYMOUS="1 per minute")
    assert app.config["RATELIMIT_ENABLED"] is False
    acme = register(app, "acme")
    client = app.test_client()
    assert acme.client.enrol("M1").status == 201
    assert [acme.client.balance("M1").status for _ in range(5)] == [200] * 5
    assert [unsigned_earn(app).status_code for _ in range(5)] == [401] * 5
    assert [client.get("/openapi.json").status_code for _ in range(5)] == [200] * 5


def test_x_forwarded_for_is_ignored_unless_proxies_are_trusted(make_app):
    app = make_app(**TINY)
    forwarded = [{"X-Forwarded-For": f"198.51.100.{n}"} for n in range(3)]
    client = app.test_client()
    assert client.get("/openapi.json", headers=forwarded[0]).status_code == 200
    assert client.get("/openapi.json", headers=forwarded[1]).status_code == 200
    assert_rate_limited(client.get("/openapi.json", headers=forwarded[2]))

    behind_proxy = make_app(TRUSTED_PROXIES=1, **TINY)
    client = behind_proxy.test_client()
    for headers in forwarded:  # each client address its own budget
        assert client.get("/openapi.json", headers=headers).status_code == 200
        assert client.get("/openapi.json", headers=headers).status_code == 200
    assert_rate_limited(client.get("/openapi.json", headers=forwarded[0]))


def test_defaults_are_generous_and_test_apps_do_not_share_counters(make_app):
    app, other = make_app(), make_app()
    assert app.config["RATELIMIT_PARTNER"] == "6000 per minute"
    assert app.config["RATELIMIT_ANONYMOUS"] == "120 per minute"
    assert app.config["RATELIMIT_ENABLED"] is True
    assert app.config["RATELIMIT_KEY_PREFIX"] != other.config["RATELIMIT_KEY_PREFIX"]
    assert make_app(RATELIMIT_KEY_PREFIX="mine").config["RATELIMIT_KEY_PREFIX"] == "mine"


def test_an_unreachable_redis_lets_requests_through(make_app):
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0", **TINY)
    acme = register(app, "acme")
    assert acme.client.enrol("M1").status == 201
    assert [acme.client.balance("M1").status for _ in range(4)] == [200] * 4
    assert [unsigned_earn(app).status_code for _ in range(3)] == [401] * 3
    assert [app.test_client().get("/openapi.json").status_code for _ in range(3)] == [200] * 3


# --- the real Redis -----------------------------------------------------------------------

@pytest.fixture
def shared_redis():
    """(client, key prefix): Redis at REDIS_URL, keys of this test only, deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is unreachable, and CI needs it: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    prefix = f"coalition-test-{uuid.uuid4().hex}"
    yield client, prefix
    keys = list(client.scan_iter(match=f"LIMITS:LIMITER/{prefix}/*"))
    if keys:
        client.delete(*keys)
    client.close()


def test_app_instances_sharing_redis_share_a_partners_quota(make_app, shared_redis):
    store, prefix = shared_redis
    config = {"REDIS_URL": REDIS_URL, "RATELIMIT_KEY_PREFIX": prefix, **TINY}
    first, second = make_app(**config), make_app(**config)
    acme = register(first, "acme")
    via_second = client_for(second, "acme", acme.key)
    assert acme.client.enrol("M1").status == 201
    assert via_second.earn("c1", "M1", 100).status == 201
    assert acme.client.earn("c2", "M1", 100).status == 201
    booked = entries(first)
    assert_rate_limited(via_second.earn("c3", "M1", 100))
    assert_rate_limited(acme.client.earn("c3", "M1", 100))
    assert entries(second) == booked

    key = f"LIMITS:LIMITER/{prefix}/partner:acme/partner/3/1/minute"
    assert int(store.get(key)) == 5 and 0 < store.ttl(key) <= 60

    bolt = register(second, "bolt", "ES256")
    assert bolt.client.enrol("M2").status == 201
    assert client_for(first, "bolt", bolt.key).balance("M2").status == 200


def test_the_address_budget_holds_across_processes(make_app, shared_redis):
    store, prefix = shared_redis
    app = make_app(REDIS_URL=REDIS_URL, RATELIMIT_KEY_PREFIX=prefix, **TINY)
    client = app.test_client()
    assert client.get("/openapi.json").status_code == 200
    script = ("import sys; from coalition import create_app; "
              "app = create_app({'SQLALCHEMY_DATABASE_URI': 'sqlite://', 'TESTING': True, "
              "'REDIS_URL': sys.argv[1], 'RATELIMIT_KEY_PREFIX': sys.argv[2], "
              "'RATELIMIT_ANONYMOUS': '2 per minute'}); "
              "print(app.test_client().get('/openapi.json').status_code)")
    other = subprocess.run([sys.executable, "-c", script, REDIS_URL, prefix], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stderr
    assert other.stdout.split() == ["200"]
    assert_rate_limited(client.get("/openapi.json"))
    assert_rate_limited(app.test_client().post("/v1/earn", data=b"{}",
                                               content_type="application/json"))
    assert int(store.get(f"LIMITS:LIMITER/{prefix}/addr:127.0.0.1/anonymous/2/1/minute")) == 4
