"""Prometheus metrics of the service at GET /metrics (docs/monitoring.md).

What is counted, and where:

* every request's latency, by route template, method and status class: `before_request` /
  `after_request` hooks. The route is `request.url_rule.rule`, never the path, which can carry
  a card number (/v1/members/<member_id>/balance);
* every problem+json answer by slug and status, read from the answer the hooks see, so that
  every refusal counts whichever handler rendered it (coalition/errors.py, partners/auth.py,
  coalition/limits.py);
* claims by kind and outcome, from the answers of the partner API's claim endpoints
  (CLAIM_ENDPOINTS): the status and Idempotent-Replayed say booked, replayed or rejected once
  the request's transaction has committed or rolled back, which no hook inside the ledger can
  know. A batch's items are counted from its answer, item by item;
* the SQLAlchemy pool of each process, sampled after every request and at each scrape;
* at each scrape: entries not yet sealed into a block (the sealer's lag, from the database)
  and the read replica's state (coalition/replica.py's cached check).

Processes. Under gunicorn, prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR,
which prometheus_client reads from the environment itself, and coalition/config.py for us):
each process writes its values to files there, and a scrape of any worker sums them all. The
directory must be empty when the workers start (deploy/serve.sh), and gunicorn's child_exit
hook marks a dead worker's pool gauges gone (deploy/gunicorn.conf.py). Without the variable
(`make demo`, tests, the command line) the process's own registry answers, which is the whole
story only for a single process.

Access (the volumes are business figures): with METRICS_TOKEN set, `Authorization: Bearer
<token>` is required (401 invalid-token otherwise); unset, only loopback peers are answered
(403 forbidden otherwise). Behind nginx, TRUSTED_PROXIES makes remote_addr the client's, so a
client outside is refused through the proxy too.
"""
from __future__ import annotations

import hmac
import importlib
import ipaddress
import json
import logging
import math
import time

from flask import Flask, Response, current_app, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge,
                               Histogram, disable_created_metrics, generate_latest, multiprocess)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.pool import QueuePool

from . import partitions, sealer
from .api import documented, problem_doc
from .database import db
from .errors import PROBLEM_JSON, SLUGS, Problem
from .vocabulary import CLAIM_KINDS, ENROLMENT, EntryKind

log = logging.getLogger("coalition.metrics")

ENDPOINT = "metrics"  # coalition/limits.py exempts it from the rate limits, like the probes
NO_ROUTE = "(no route)"  # the access log's word for a request that matched no route
OTHER = "other"
# Anything else a client may send as a method is one label value: each distinct value would
# otherwise be a series of its own, kept for the life of the process (and its file).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Up to gunicorn's 30 s timeout; claims take milliseconds, reconciliations seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The partner API's claim endpoints (partners/views.py) and the kind of entry each books; a
# hold's capture books a burn. tests/test_metrics.py checks that each names a served endpoint.
CLAIM_ENDPOINTS = {"partner_api.earn": EntryKind.EARN, "partner_api.burn": EntryKind.BURN,
                   "partner_api.reverse": EntryKind.REVERSAL,
                   "partner_api.capture_hold": EntryKind.BURN}
BATCH_ENDPOINT = "partner_api.batch"
BOOKED, REPLAYED, REJECTED, FAILED = "booked", "replayed", "rejected", "failed"
UNKNOWN_KIND = "unknown"  # a batch item whose kind is missing or not a claim's (refused)
_CLAIM_KINDS = frozenset(str(kind) for kind in CLAIM_KINDS)

# A `_created` series beside every counter and histogram series doubles what a scrape carries
# for a start time that the multiprocess mode does not report anyway: one format in both modes.
disable_created_metrics()

REQUESTS = Histogram(
    "coalition_http_request_duration_seconds",
    "Time from the first request hook to the answer, by route template, method and status "
    "class.", ["route", "method", "status_class"], buckets=LATENCY_BUCKETS)
CLAIMS = Counter(
    "coalition_claims",
    "Claims answered by the partner API (single and batch items), by the kind of entry they "
    "book and outcome: booked, replayed (same claim id and content), rejected (a 4xx "
    "problem), failed (5xx: nothing booked).", ["kind", "outcome"])
PROBLEMS = Counter(
    "coalition_problems",
    "problem+json answers of the service, by slug and HTTP status.", ["slug", "status"])
# Per process; 'livesum' in multiprocess mode: the sum over the instance's live workers, which
# is what the connection arithmetic of docs/operations.md counts against max_connections.
POOL_SIZE = Gauge("coalition_db_pool_size", "Connections each pool keeps (pool_size), summed "
                  "over the live processes.", multiprocess_mode="livesum")
POOL_MAX_OVERFLOW = Gauge("coalition_db_pool_max_overflow", "Connections a pool may open beyond "
                          "its size (max_overflow), summed over the live processes.",
                          multiprocess_mode="livesum")
POOL_CHECKED_OUT = Gauge("coalition_db_pool_checked_out", "Connections in use by requests, "
                         "summed over the live processes.", multiprocess_mode="livesum")
POOL_OVERFLOW = Gauge("coalition_db_pool_overflow", "Connections open beyond the pool size, "
                      "summed over the live processes.", multiprocess_mode="livesum")

_STARTED = "_metrics_started"
_children: dict[tuple, object] = {}  # labels -> histogram child: labels() takes a lock
_last_pool: list = [None]  # the values last written: a change only costs a write


def init_app(app: Flask) -> None:
    """Call before the other request hooks are registered (create_app), so that the latency
    covers them too, and before api.init_app, which documents the route."""
    app.before_request(_start)
    app.after_request(_finish)
    app.add_url_rule("/metrics", ENDPOINT, metrics_view, methods=["GET"])
    with app.app_context():
        engine = db.engine
    inner = app.wsgi_app

    def sampled(environ, start_response):
        try:
            return inner(environ, start_response)
        finally:
            # Here the request's connection is back in the pool: Flask has removed the session
            # with the app context (a streamed answer keeps it until its last chunk, and the
            # next request's sample sees it returned). Sampled per request so that every
            # process's gauges stay current, not only the one a scrape reaches.
            try:
                sample_pool(engine)
            except Exception:
                log.warning("pool not sampled", exc_info=True)
    app.wsgi_app = sampled


def _start() -> None:
    setattr(g, _STARTED, time.perf_counter())


def _finish(response: Response) -> Response:
    try:
        observe(response)
    except Exception:  # a metric is never worth an answer
        log.warning("request not counted in the metrics", exc_info=True)
    return response


def observe(response: Response) -> None:
    started = g.get(_STARTED)
    req = request._get_current_object()  # once: each look through the proxy costs
    status, rule, method, endpoint = response.status_code, req.url_rule, req.method, req.endpoint
    key = (rule.rule if rule is not None else NO_ROUTE,
           method if method in METHODS else OTHER, status // 100)
    child = _children.get(key)
    if child is None:
        child = _children.setdefault(key, REQUESTS.labels(key[0], key[1], f"{key[2]}xx"))
    if started is not None:
        child.observe(time.perf_counter() - started)
    if response.mimetype == PROBLEM_JSON:
        PROBLEMS.labels(_slug(response), str(status)).inc()
    kind = CLAIM_ENDPOINTS.get(endpoint)
    if kind is not None:
        replayed = response.headers.get("Idempotent-Replayed")
        CLAIMS.labels(str(kind), _outcome(status, replayed)).inc()
    elif endpoint == BATCH_ENDPOINT and status == 200:
        _count_batch(req, response)


def _slug(response: Response) -> str:
    if response.is_streamed:
        return OTHER
    try:
        slug = json.loads(response.get_data())["type"].rpartition("/")[2]
    except (ValueError, KeyError, TypeError, AttributeError):
        return OTHER
    return slug if slug in SLUGS else OTHER


def _outcome(status: int, replayed) -> str:
    if status >= 500:
        return FAILED
    if status >= 400:
        return REJECTED
    return REPLAYED if replayed in ("true", True) else BOOKED


def _count_batch(req, response: Response) -> None:
    """Each claim of a batch as if sent alone: its kind from the request, its outcome from its
    result. Enrolments are no claims."""
    items = json.loads(req.get_data(cache=True))["claims"]
    results = json.loads(response.get_data())["results"]
    for item, result in zip(items, results):
        kind = item.get("kind") if isinstance(item, dict) else None
        if kind == ENROLMENT:
            continue
        CLAIMS.labels(kind if kind in _CLAIM_KINDS else UNKNOWN_KIND,
                      _outcome(result["status"], result.get("replayed"))).inc()


# --- the pool ---------------------------------------------------------------------------------

def sample_pool(engine) -> None:
    pool = engine.pool
    if not isinstance(pool, QueuePool):  # SQLite in memory: one connection, nothing to watch
        return
    values = (pool.size(), getattr(pool, "_max_overflow", 0), pool.checkedout(),
              max(0, pool.overflow()))  # overflow() counts up from -pool_size
    if values == _last_pool[0]:
        return
    _last_pool[0] = values
    for gauge, value in zip((POOL_SIZE, POOL_MAX_OVERFLOW, POOL_CHECKED_OUT, POOL_OVERFLOW),
                            values):
        gauge.set(max(0, value))


# --- the scrape -------------------------------------------------------------------------------

METRICS_DOC = {
    "tags": ["operations"],
    "summary": "Prometheus metrics of this instance (for the operator's monitoring)",
    "description": "The text exposition format of Prometheus: requests, claims, problem answers, "
                   "the database pools and the sealer's lag (docs/monitoring.md). Not public: "
                   "with METRICS_TOKEN set, send `Authorization: Bearer <token>`; unset, only "
                   "the local host is answered. Not rate limited.",
    "responses": {
        "200": {"description": "The metrics, in the Prometheus text format.",
                "content": {"text/plain": {"schema": {"type": "string"}}}},
        "401": problem_doc("invalid-token"),
        "403": problem_doc("forbidden"),
    },
}
_CHALLENGE = 'Bearer error="invalid_token", error_description="{}"'


@documented(**METRICS_DOC)
def metrics_view():
    authorise()
    return Response(render(current_app._get_current_object()), status=200,
                    content_type=CONTENT_TYPE_LATEST)


def authorise() -> None:
    token = current_app.config.get("METRICS_TOKEN") or ""
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), token.encode()):
            detail = "The metrics need the bearer token the operator configured."
            raise Problem("invalid-token", detail,
                          headers={"WWW-Authenticate": _CHALLENGE.format(detail)})
    elif not loopback(request.remote_addr):
        raise Problem("forbidden", "The metrics are served to the local host only.")


def loopback(address: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:  # a unix socket's peer has no address: refused, as anything unknown
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def render(app: Flask) -> bytes:
    sample_pool(db.engine)
    directory = app.config.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        registry = REGISTRY
    # Read from the database once per scrape, by the process scraped: one value for the
    # instance, whichever worker answers.
    database = CollectorRegistry(auto_describe=False)
    database.register(DatabaseCollector(app))
    return generate_latest(registry) + generate_latest(database)


class DatabaseCollector:
    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self):
        unsealed = unsealed_entries()
        if unsealed is not None:
            yield GaugeMetricFamily(
                "coalition_ledger_unsealed_entries",
                "Journal entries above the last one sealed into a block (entry ids: an upper "
                "bound). Grows when the sealer (ledger seal --every) is not running.",
                value=unsealed)
        yield from partition_families()
        yield from replica_families(self.app)


def unsealed_entries() -> int | None:
    """Two index lookups (the journal's highest id, the last block's): cheap at any size."""
    try:
        block = sealer.head(db.session)
        return max(0, sealer.last_entry_id(db.session)
                   - (block.last_entry_id if block is not None else 0))
    except Exception:
        log.warning("sealer lag not read", exc_info=True)
        return None
    finally:
        db.session.rollback()


def partition_families():
    """PostgreSQL's monthly partitions (coalition/partitions.py): absent on SQLite, or when the
    query fails (logged as `partitions not read`)."""
    try:
        state = partitions.health(db.session)
    except Exception:
        log.warning("partitions not read", exc_info=True)
        return
    finally:
        db.session.rollback()
    if state is None:
        return
    yield GaugeMetricFamily(
        "coalition_ledger_default_partition_rows",
        "Rows in the journal's DEFAULT partitions (capped at 100000): 0 unless a month was "
        "booked without its partition (ledger partitions ensure --month moves them).",
        value=state.default_rows)
    yield GaugeMetricFamily(
        "coalition_ledger_partition_months_ahead",
        "Months after the current one whose partitions exist (the leading sealer keeps 3; "
        "-1: not even the current month's).", value=state.months_ahead)


# ---- replication lag ---------------------------------------------------------------------
# coalition/replica.py: replica_status(app) -> {"configured", "healthy", "lag_s", "reason",
# "max_lag_s", ...}, from the process's cached check (no query of its own). Looked up by name
# at each scrape and guarded: without the module, or if it fails, these gauges are absent and
# the rest of the scrape stands. `reason` is left out: a label per reason would be a series
# per message; the log and /readyz say why.
REPLICA_MODULE = "coalition.replica"


def replica_families(app: Flask):
    try:
        status = importlib.import_module(REPLICA_MODULE).replica_status(app)
    except ModuleNotFoundError as exc:
        if exc.name != REPLICA_MODULE:
            log.warning("replica status not read", exc_info=True)
        return
    except Exception:
        log.warning("replica status not read", exc_info=True)
        return
    yield GaugeMetricFamily("coalition_db_replica_configured",
                            "1 if a read replica is configured, else 0.",
                            value=1 if status.get("configured") else 0)
    yield GaugeMetricFamily("coalition_db_replica_healthy",
                            "1 if the replica answers and is within its lag limit, else 0.",
                            value=1 if status.get("healthy") else 0)
    yield GaugeMetricFamily("coalition_db_replica_lag_seconds",
                            "How far the replica's replay is behind the primary (NaN: unknown).",
                            value=_seconds(status.get("lag_s")))
    yield GaugeMetricFamily("coalition_db_replica_max_lag_seconds",
                            "The lag beyond which reads leave the replica "
                            "(DATABASE_REPLICA_MAX_LAG_S; NaN: no replica).",
                            value=_seconds(status.get("max_lag_s")))


def _seconds(value) -> float:
    return float(value) if value is not None else math.nan
