"""Operations: request ids, structured JSON logs, security headers, health and readiness."""
from __future__ import annotations

import functools
import logging
import re
import sys
import time
import uuid

from flask import Flask, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter
from sqlalchemy import text

from . import bodylimit, replica
from .api import documented, problem_doc
from .database import db
from .errors import UNAVAILABLE_RETRY_AFTER_S, Problem

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
access_log = logging.getLogger("coalition.access")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Strict-Transport-Security": "max-age=63072000; includeSubDomains",
}
API_CSP = "default-src 'none'; frame-ancestors 'none'"
PAGE_CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; " \
           "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'"


def _status(value: str, meaning: str) -> dict:
    return {"description": meaning, "content": {"application/json": {"schema": {
        "type": "object", "required": ["status"], "additionalProperties": False,
        "properties": {"status": {"type": "string", "enum": [value]}}}}}}


# OpenAPI documentation of the probes (coalition/api.py adds X-Request-Id to every answer).
HEALTHZ_DOC = {"tags": ["operations"], "summary": "Liveness: the process serves requests",
               "responses": {"200": _status("alive", "The process is alive.")}}
READY_OR_DEGRADED = {
    "description": "The database answered: the service can take requests. `degraded`: a read "
                   "replica is configured but away or behind (`replica` says why); every read "
                   "goes to the primary meanwhile, and the service answers as usual.",
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["status"], "additionalProperties": False,
        "properties": {
            "status": {"type": "string", "enum": ["ready", "degraded"]},
            "replica": {"type": "object", "additionalProperties": False,
                        "required": ["reason", "lag_s", "max_lag_s", "checked_at"],
                        "properties": {
                            "reason": {"type": "string",
                                       "enum": ["unreachable", "lagging", "lag-unknown"]},
                            "lag_s": {"type": "number", "nullable": True,
                                      "description": "Replay lag in seconds (null: unknown)"},
                            "max_lag_s": {"type": "number"},
                            "checked_at": {"type": "string", "format": "date-time"}}}}}}}}
READYZ_DOC = {"tags": ["operations"], "summary": "Readiness: the database is reachable",
              "responses": {"200": READY_OR_DEGRADED, "503": problem_doc("unavailable")}}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = g.get("request_id") if has_request_context() else None
        return True


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if any(getattr(h, "coalition", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.coalition = True
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                                       rename_fields={"asctime": "time", "levelname": "level"}))
    root.addHandler(handler)
    root.setLevel(level)


def init_app(app: Flask) -> None:
    configure_logging(app.config["LOG_LEVEL"])

    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-Id", "")
        # fullmatch: with .match, "$" lets a trailing newline through into the response header.
        g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.started = time.perf_counter()

    bodylimit.init_app(app)  # after the request id, before the rate limits and any token work

    @app.after_request
    def _finish(response):
        response.headers["X-Request-Id"] = g.get("request_id", "")
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        is_page = response.mimetype == "text/html" or request.path.startswith("/docs")
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP if is_page else API_CSP)
        response.headers.setdefault("Cache-Control", "no-store")
        # The route's template, not the path: a path can carry a card number
        # (/v1/members/<member_id>/balance). Never the query, headers or bodies either.
        rule = request.url_rule.rule if request.url_rule is not None else "(no route)"
        access_log.info("request", extra={
            "method": request.method, "path": rule, "status": response.status_code,
            "duration_ms": round((time.perf_counter() - g.get("started", time.perf_counter())) * 1000, 2),
            "partner_id": g.get("partner_id")})
        return response

    @app.get("/healthz")
    @documented(**HEALTHZ_DOC)
    def healthz():
        return {"status": "alive"}

    @app.get("/readyz")
    @documented(**READYZ_DOC)
    def readyz():
        try:
            db.session.execute(text("SELECT 1"))
            db.session.rollback()
        except Exception:
            db.session.rollback()
            logging.getLogger("coalition.ops").warning("database not reachable", exc_info=True)
            raise Problem("unavailable", "The database is not reachable.",
                          headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})
        standby = replica.replica_status(app)
        if standby["configured"] and not standby["healthy"]:
            return {"status": "degraded", "replica": {
                name: standby[name] for name in ("reason", "lag_s", "max_lag_s", "checked_at")}}
        return {"status": "ready"}


def route_reads(app: Flask) -> None:
    """After every blueprint is registered: with a read replica configured, a GET or HEAD of
    a view marked @standby_ok (or named in replica.STANDBY_ENDPOINTS) opens a standby scope
    when its view is entered, after the request's hooks (the partner's token is verified and
    its jti spent on the primary), and the scope ends with the request."""
    with app.app_context():
        engine = db.engines.get(replica.BIND)
    if engine is None:
        return
    health = replica.Health(engine, float(app.config["DATABASE_REPLICA_MAX_LAG_S"]),
                            every_s=app.config.get("DATABASE_REPLICA_CHECK_EVERY_S",
                                                   replica.CHECK_EVERY_S))
    app.extensions[replica.EXTENSION] = health
    for endpoint, view in list(app.view_functions.items()):
        if getattr(view, "standby_ok", False) or endpoint in replica.STANDBY_ENDPOINTS:
            app.view_functions[endpoint] = _in_standby_scope(view, health)

    # A gthread worker's thread keeps its context between requests: a scope must never
    # outlive its request, whatever ended it.
    @app.before_request
    def _no_scope_yet() -> None:
        replica.close_scope()

    @app.teardown_request
    def _end_scope(_exc) -> None:
        replica.close_scope()


def _in_standby_scope(view, health: replica.Health):
    @functools.wraps(view)
    def scoped(*args, **kwargs):
        if request.method in ("GET", "HEAD"):
            replica.open_scope(health)
        return view(*args, **kwargs)
    return scoped
