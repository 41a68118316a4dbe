"""GET /metrics (coalition/metrics.py, docs/monitoring.md): what it counts, who may read it, and
the multiprocess mode gunicorn workers use. The counters live in the process's registry, shared
by every app a test session makes, so tests compare a scrape before and after."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from coalition import create_app, metrics, sealer
from coalition.api import CHALLENGE_PATTERN
from coalition.database import db
from tests.conftest import ago, postgres_only

ROOT = Path(__file__).resolve().parent.parent
LATENCY = "coalition_http_request_duration_seconds"
OUTSIDE = {"REMOTE_ADDR": "192.0.2.7"}


def scrape_text(app, **kwargs) -> str:
    answer = app.test_client().get("/metrics", **kwargs)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return answer.get_data(as_text=True)


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of a scrape, through prometheus_client's parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(app, **kwargs) -> dict[tuple, float]:
    return samples(scrape_text(app, **kwargs))


def value(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: dict, after: dict, name: str, **labels) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def claims(kind: str, outcome: str) -> dict:
    return {"kind": kind, "outcome": outcome}


def requests(route: str, method: str, status_class: str) -> dict:
    return {"route": route, "method": method, "status_class": status_class}


# --- what is counted ----------------------------------------------------------------------------

def test_claims_problems_and_latency_move_by_exactly_what_was_answered(app, acme):
    assert acme.client.enrol("M-1001").status == 201
    when = ago(minutes=5)
    before = scrape(app)
    first = acme.client.earn("order-1", "M-1001", 100, when)
    again = acme.client.earn("order-1", "M-1001", 100, when)
    conflict = acme.client.earn("order-1", "M-1001", 101, when)
    assert (first.status, again.status, conflict.status) == (201, 201, 409)
    assert again.headers["idempotent-replayed"] == "true"
    after = scrape(app)

    total = "coalition_claims_total"
    assert moved(before, after, total, **claims("earn", "booked")) == 1
    assert moved(before, after, total, **claims("earn", "replayed")) == 1
    assert moved(before, after, total, **claims("earn", "rejected")) == 1
    assert moved(before, after, "coalition_problems_total",
                 slug="claim-id-conflict", status="409") == 1
    count = LATENCY + "_count"
    assert moved(before, after, count, **requests("/v1/earn", "POST", "2xx")) == 2
    assert moved(before, after, count, **requests("/v1/earn", "POST", "4xx")) == 1
    # The enrolment before the first scrape was no claim; the scrape before this one is counted.
    assert moved(before, after, count, **requests("/metrics", "GET", "2xx")) == 1
    assert not [k for k in after if k[0] == total and dict(k[1])["kind"] == "enrolment"]
    # Every bucket of the histogram holds at most the count, +Inf exactly the count.
    assert value(after, LATENCY + "_bucket", le="+Inf", **requests("/v1/earn", "POST", "2xx")) \
        == value(after, count, **requests("/v1/earn", "POST", "2xx"))
    assert value(after, LATENCY + "_sum", **requests("/v1/earn", "POST", "2xx")) > 0


def test_reversals_captures_and_their_refusals_are_counted_by_kind(app, acme):
    acme.client.enrol("M-1001")
    acme.client.earn("order-1", "M-1001", 100, ago(minutes=5))
    before = scrape(app)
    assert acme.client.reverse("order-1", "ret-1", 10, ago(minutes=1)).status == 201
    assert acme.client.reverse("order-1", "ret-2", 1000, ago(minutes=1)).status == 422
    assert acme.client.hold("auth-1", "M-1001", 20, ago(minutes=1)).status == 201
    assert acme.client.capture("auth-1", "till-1").status == 201  # a burn
    assert acme.client.capture("auth-1", "till-1").status == 201  # the same, replayed
    assert acme.client.burn("till-2", "M-1001", 10_000, ago(minutes=1)).status == 422
    after = scrape(app)
    total = "coalition_claims_total"
    assert moved(before, after, total, **claims("reversal", "booked")) == 1
    assert moved(before, after, total, **claims("reversal", "rejected")) == 1
    assert moved(before, after, total, **claims("burn", "booked")) == 1
    assert moved(before, after, total, **claims("burn", "replayed")) == 1
    assert moved(before, after, total, **claims("burn", "rejected")) == 1
    assert moved(before, after, "coalition_problems_total",
                 slug="reversal-exceeds-claim", status="422") == 1
    assert moved(before, after, "coalition_problems_total",
                 slug="insufficient-points", status="422") == 1


def test_a_batchs_items_are_counted_one_by_one_and_its_answer_is_no_problem(app, acme):
    acme.client.enrol("M-1001")
    when = ago(minutes=5)
    acme.client.earn("order-1", "M-1001", 100, when)
    before = scrape(app)
    answer = acme.client.batch([
        {"kind": "enrolment", "member_id": "M-1002"},
        {"kind": "earn", "claim_id": "order-1", "member_id": "M-1001", "points": 100,
         "occurred_at": when},                                              # replayed
        {"kind": "earn", "claim_id": "order-2", "member_id": "M-1002", "points": 5,
         "occurred_at": when},                                              # booked
        {"kind": "burn", "claim_id": "till-1", "member_id": "M-1001", "points": 10_000,
         "occurred_at": when},                                              # insufficient
        {"kind": "gift", "claim_id": "x", "member_id": "M-1001"},           # no such kind
    ])
    assert answer.status == 200
    assert [r["status"] for r in answer.json()["results"]] == [201, 201, 201, 422, 422]
    after = scrape(app)
    total = "coalition_claims_total"
    assert moved(before, after, total, **claims("earn", "replayed")) == 1
    assert moved(before, after, total, **claims("earn", "booked")) == 1
    assert moved(before, after, total, **claims("burn", "rejected")) == 1
    assert moved(before, after, total, **claims("unknown", "rejected")) == 1
    assert sum(moved(before, after, *key[:1], **dict(key[1])) for key in after
               if key[0] == total) == 4
    assert not [key for key in after if key[0] == "coalition_problems_total"
                and moved(before, after, key[0], **dict(key[1]))]


def test_the_claim_endpoints_named_are_the_ones_the_app_serves(app):
    served = set(app.view_functions)
    assert set(metrics.CLAIM_ENDPOINTS) | {metrics.BATCH_ENDPOINT} <= served


def test_the_latency_is_labelled_by_route_template_never_by_path(app, acme):
    acme.client.enrol("M-4929123456")
    assert acme.client.balance("M-4929123456").status == 200
    assert acme.client.balance("M-4929000000").status == 404
    client = app.test_client()
    assert client.open("/v1/nowhere/M-4929777777", method="BREW").status_code == 404
    text = scrape_text(app)
    # "M-4929", not the digits alone: those can turn up in a latency sum's decimals.
    assert "M-4929" not in text and "BREW" not in text and "nowhere" not in text
    scraped = samples(text)
    count = LATENCY + "_count"
    assert value(scraped, count, **requests("/v1/members/<member_id>/balance", "GET", "2xx")) >= 1
    assert value(scraped, count, **requests("/v1/members/<member_id>/balance", "GET", "4xx")) >= 1
    assert value(scraped, count, **requests("(no route)", "other", "4xx")) >= 1


def test_the_scrape_parses_and_names_follow_the_conventions(app):
    families = list(text_string_to_metric_families(scrape_text(app)))
    ours = {f.name: f for f in families if f.name.startswith("coalition_")}
    assert ours["coalition_claims"].type == "counter"
    assert ours["coalition_problems"].type == "counter"
    assert ours[LATENCY].type == "histogram"
    for name in ("coalition_db_pool_size", "coalition_db_pool_checked_out",
                 "coalition_db_pool_overflow", "coalition_db_pool_max_overflow",
                 "coalition_ledger_unsealed_entries"):
        assert ours[name].type == "gauge", name
    assert all(re.fullmatch(r"[a-z_]+", name) for name in ours)
    assert not [s for f in families for s in f.samples if s.name.endswith("_created")]


def test_the_pool_gauges_are_read_at_scrape_time(app):
    with app.app_context():
        pool = db.engine.pool
        held = db.engine.connect()
        try:
            during = scrape(app)
        finally:
            held.close()
    after = scrape(app)
    assert value(during, "coalition_db_pool_checked_out") == 1
    assert value(after, "coalition_db_pool_checked_out") == 0
    assert value(after, "coalition_db_pool_size") == pool.size()


@postgres_only
def test_the_pool_gauges_on_postgresql_count_overflow_and_the_configured_sizes(app):
    options = app.config["SQLALCHEMY_ENGINE_OPTIONS"]
    size, max_overflow = options["pool_size"], options["max_overflow"]
    assert max_overflow >= 1
    with app.app_context():
        held = [db.engine.connect() for _ in range(size + 1)]
        try:
            during = scrape(app)
        finally:
            for connection in held:
                connection.close()
    after = scrape(app)
    assert value(during, "coalition_db_pool_size") == size
    assert value(during, "coalition_db_pool_max_overflow") == max_overflow
    assert value(during, "coalition_db_pool_checked_out") == size + 1
    assert value(during, "coalition_db_pool_overflow") == 1
    # The overflow connection was closed when returned; the pool's own ones stay open.
    assert value(after, "coalition_db_pool_checked_out") == 0
    assert value(after, "coalition_db_pool_overflow") == 0


def test_a_request_leaves_the_pool_gauges_current_without_a_scrape(app, acme):
    """Each process samples its pool after every request: in multiprocess mode a scrape reaches
    one worker, and the others' gauges must not wait for it."""
    acme.client.enrol("M-1001")
    metrics._last_pool[0] = None
    metrics.POOL_SIZE.set(0)
    assert acme.client.balance("M-1001").status == 200
    with app.app_context():
        assert metrics.POOL_SIZE._value.get() == db.engine.pool.size()
        assert metrics.POOL_CHECKED_OUT._value.get() == 0


def test_unsealed_entries_count_the_sealers_lag(app, acme):
    acme.client.enrol("M-1001")
    for n in range(3):
        acme.client.earn(f"order-{n}", "M-1001", 10, ago(minutes=5))
    assert value(scrape(app), "coalition_ledger_unsealed_entries") == 3
    with app.app_context():
        sealer.seal(db.session, now=datetime.now(timezone.utc))
        db.session.commit()
    assert value(scrape(app), "coalition_ledger_unsealed_entries") == 0


# --- replication (coalition/replica.py, when it exists) ---------------------------------------

def test_without_the_replica_module_the_scrape_has_no_replica_gauges(app, monkeypatch):
    monkeypatch.setitem(sys.modules, metrics.REPLICA_MODULE, None)  # as if absent
    assert not [k for k in scrape(app) if k[0].startswith("coalition_db_replica")]


@pytest.mark.parametrize("status, expected", [
    ({"configured": True, "healthy": True, "lag_s": 1.5, "reason": None}, (1, 1, 1.5)),
    ({"configured": True, "healthy": False, "lag_s": None, "reason": "refused"}, (1, 0, None)),
    ({"configured": False, "healthy": False, "lag_s": None, "reason": "not configured"},
     (0, 0, None)),
])
def test_the_replica_status_becomes_three_gauges(app, monkeypatch, status, expected):
    seen = []
    fake = types.ModuleType(metrics.REPLICA_MODULE)
    fake.replica_status = lambda given: seen.append(given) or status
    monkeypatch.setitem(sys.modules, metrics.REPLICA_MODULE, fake)
    scraped = scrape(app)
    assert seen == [app]
    configured, healthy, lag = expected
    assert value(scraped, "coalition_db_replica_configured") == configured
    assert value(scraped, "coalition_db_replica_healthy") == healthy
    got = value(scraped, "coalition_db_replica_lag_seconds")
    assert math.isnan(got) if lag is None else got == lag
    assert math.isnan(value(scraped, "coalition_db_replica_max_lag_seconds"))


def test_without_a_replica_configured_the_gauges_say_so(app):
    scraped = scrape(app)  # coalition/replica.py itself, no DATABASE_REPLICA_URL
    assert value(scraped, "coalition_db_replica_configured") == 0
    assert value(scraped, "coalition_db_replica_healthy") == 0
    assert math.isnan(value(scraped, "coalition_db_replica_lag_seconds"))


@postgres_only
@pytest.mark.parametrize("reachable", [True, False])
def test_a_configured_replica_reports_its_health_and_lag(make_app, reachable):
    from tests.conftest import PG_URL
    standby = (PG_URL + ("&" if "?" in PG_URL else "?")
               + "options=-c%20default_transaction_read_only%3Don") if reachable else \
        re.sub(r"@[^/]+/", "@127.0.0.1:1/", PG_URL)  # nothing listens on port 1
    scraped = scrape(make_app(DATABASE_REPLICA_URL=standby, DATABASE_REPLICA_MAX_LAG_S=2.5))
    assert value(scraped, "coalition_db_replica_configured") == 1
    assert value(scraped, "coalition_db_replica_max_lag_seconds") == 2.5
    if reachable:  # the same server: no lag
        assert value(scraped, "coalition_db_replica_healthy") == 1
        assert value(scraped, "coalition_db_replica_lag_seconds") == 0
    else:
        assert value(scraped, "coalition_db_replica_healthy") == 0
        assert math.isnan(value(scraped, "coalition_db_replica_lag_seconds"))


def test_a_failing_replica_status_leaves_the_rest_of_the_scrape(app, monkeypatch):
    fake = types.ModuleType(metrics.REPLICA_MODULE)

    def broken(_app):
        raise RuntimeError("replica probe failed")
    fake.replica_status = broken
    monkeypatch.setitem(sys.modules, metrics.REPLICA_MODULE, fake)
    scraped = scrape(app)
    assert not [k for k in scraped if k[0].startswith("coalition_db_replica")]
    assert ("coalition_db_pool_size", ()) in scraped


# --- who may read it ------------------------------------------------------------------------------

@pytest.fixture
def make_app(app):
    """Another app on the test's database, with more configuration."""
    made = []

    def make(**config):
        other = create_app({"SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
                            "TESTING": True, **config})
        made.append(other)
        return other
    yield make
    for other in made:
        with other.app_context():
            db.engine.dispose()


def problem(answer) -> tuple[int, str]:
    assert answer.mimetype == "application/problem+json"
    return answer.status_code, answer.get_json()["type"].rpartition("/")[2]


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
def test_without_a_token_loopback_peers_are_answered(app, address):
    assert app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": address}) \
        .status_code == 200


@pytest.mark.parametrize("address", ["192.0.2.7", "10.0.0.1", "::ffff:192.0.2.7", "2001:db8::1",
                                     "", "localhost"])
def test_without_a_token_anyone_else_is_forbidden(app, address):
    answer = app.test_client().get("/metrics", environ_base={"REMOTE_ADDR": address})
    assert problem(answer) == (403, "forbidden")
    assert "coalition_" not in answer.get_data(as_text=True)


def test_behind_the_proxy_the_client_address_decides(make_app):
    proxied = make_app(TRUSTED_PROXIES=1).test_client()
    outside = proxied.get("/metrics", headers={"X-Forwarded-For": "192.0.2.7"})
    assert problem(outside) == (403, "forbidden")
    assert proxied.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 200


def test_with_a_token_every_caller_needs_it(make_app):
    token = "m3trics-" + "x" * 32
    client = make_app(METRICS_TOKEN=token).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {token}"},
                    {"Authorization": f"Bearer {token}x"}, {"Authorization": "Bearer"}):
        refused = client.get("/metrics", headers=headers)  # from loopback, too
        assert problem(refused) == (401, "invalid-token"), headers
        assert re.fullmatch(CHALLENGE_PATTERN, refused.headers["WWW-Authenticate"])
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {token}"},
                        environ_base=OUTSIDE)
    assert answer.status_code == 200 and "coalition_claims" in answer.get_data(as_text=True)
    assert client.get("/metrics", headers={"Authorization": f"bearer {token}"}).status_code == 200


def test_the_scrape_is_not_rate_limited(make_app):
    client = make_app(RATELIMIT_ANONYMOUS="2 per minute").test_client()
    assert [client.get("/metrics").status_code for _ in range(5)] == [200] * 5
    assert [client.get("/metrics", environ_base=OUTSIDE).status_code for _ in range(5)] == [403] * 5
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/openapi.json").status_code == 429  # the limit itself is on


def test_the_route_is_documented_with_the_probes(app):
    operation = app.test_client().get("/openapi.json").get_json()["paths"]["/metrics"]["get"]
    assert operation["tags"] == ["operations"]
    assert set(operation["responses"]) == {"200", "401", "403"}


# --- several processes ----------------------------------------------------------------------------

WORKER = """
import json, sys
from prometheus_client import multiprocess
from coalition import create_app
uri, requests, dead = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
app = create_app({"SQLALCHEMY_DATABASE_URI": uri, "TESTING": True})
client = app.test_client()
for _ in range(requests):
    assert client.get("/healthz").status_code == 200
scrapes = [client.get("/metrics").get_data(as_text=True)]
for pid in dead:  # what gunicorn's child_exit does (deploy/gunicorn.conf.py)
    multiprocess.mark_process_dead(int(pid))
    scrapes.append(client.get("/metrics").get_data(as_text=True))
print(json.dumps({"pid": __import__("os").getpid(), "scrapes": scrapes}))
"""


def run_worker(app, directory: Path, requests: int, *dead: int) -> dict:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    done = subprocess.run([sys.executable, "-c", WORKER, app.config["SQLALCHEMY_DATABASE_URI"],
                           str(requests), *map(str, dead)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_in_multiprocess_mode_a_scrape_of_one_process_sums_them_all(app, tmp_path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    first = run_worker(app, directory, 3)
    second = run_worker(app, directory, 2, first["pid"])
    healthz = requests("/healthz", "GET", "2xx")
    summed, without_first = (samples(text) for text in second["scrapes"])
    own = samples(first["scrapes"][0])
    assert value(own, LATENCY + "_count", **healthz) == 3
    # The counts of both processes, the one that ended included.
    assert value(summed, LATENCY + "_count", **healthz) == 5
    assert value(without_first, LATENCY + "_count", **healthz) == 5
    # Pool gauges sum the live processes: the ended one's until it is marked dead.
    size = value(own, "coalition_db_pool_size")
    assert size >= 1
    assert value(summed, "coalition_db_pool_size") == 2 * size
    assert value(without_first, "coalition_db_pool_size") == size
    assert any(name.startswith("histogram_") for name in os.listdir(directory))
    shutil.rmtree(directory)


def test_the_multiprocess_directory_is_a_setting(monkeypatch, tmp_path):
    from coalition.config import from_environment
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("METRICS_TOKEN", " t0ken ")
    settings = from_environment(str(tmp_path))
    assert (settings["PROMETHEUS_MULTIPROC_DIR"], settings["METRICS_TOKEN"]) == (str(tmp_path),
                                                                                 "t0ken")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.delenv("METRICS_TOKEN")
    settings = from_environment(str(tmp_path))
    assert (settings["PROMETHEUS_MULTIPROC_DIR"], settings["METRICS_TOKEN"]) == ("", "")


def test_gunicorn_marks_a_dead_worker_only_in_multiprocess_mode(monkeypatch, tmp_path):
    import runpy
    conf = runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))
    worker = types.SimpleNamespace(pid=4242)
    gone = tmp_path / "gauge_livesum_4242.db"
    gone.write_bytes(b"")
    kept = tmp_path / "counter_4242.db"
    kept.write_bytes(b"")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    conf["child_exit"](None, worker)  # no directory: nothing to do, no error
    assert gone.exists()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    conf["child_exit"](None, worker)
    assert not gone.exists() and kept.exists()

