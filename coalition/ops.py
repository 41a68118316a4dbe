"""Operations: request ids, structured JSON logs, security headers, health and readiness."""
from __future__ import annotations

import logging
import re
import sys
import time
import uuid

from flask import Flask, g, has_request_context, request
from pythonjsonlogger.json import JsonFormatter
from sqlalchemy import text

from . import bodylimit
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
READYZ_DOC = {"tags": ["operations"], "summary": "Readiness: the database is reachable",
              "responses": {
                  "200": _status("ready", "The database answered: the service can take requests."),
                  "503": problem_doc("unavailable")}}


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
        return {"status": "ready"}
