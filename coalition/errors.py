"""The Flask side of RFC 9457 problems: every error leaves the service through here.

Problems themselves (the slug table, Problem, Refusal) live in coalition/problems.py, free of
Flask; they are re-exported here for the modules that import them from this one.
"""
from __future__ import annotations

import logging

from flask import Flask, Response, g, has_request_context, json
from sqlalchemy.exc import DBAPIError, InvalidRequestError
from werkzeug.exceptions import HTTPException

from .outages import database_unavailable  # noqa: F401  (re-exported)
from .problems import (MAX_LISTED_ERRORS, MAX_TEXT, PROBLEM_JSON, SLUGS, Problem,  # noqa: F401
                       Refusal, clip, pointers, problem_type, validation_problem)

log = logging.getLogger("coalition.errors")


def problem_response(problem: Problem) -> Response:
    body = problem.body()
    if has_request_context() and g.get("request_id"):
        # The id a partner quotes to the operator; the same as the X-Request-Id header
        # (coalition/ops.py), which is the one in the service's log lines.
        body["request_id"] = g.request_id
    response = Response(json.dumps(body), status=problem.status, mimetype=PROBLEM_JSON)
    for name, value in problem.headers.items():
        response.headers[name] = value
    return response


_HTTP_SLUGS = {400: "malformed-request", 401: "invalid-token", 403: "forbidden",
               404: "not-found", 405: "method-not-allowed", 413: "payload-too-large",
               415: "unsupported-media-type", 422: "validation-error", 429: "rate-limited"}


def http_problem(exc: HTTPException) -> Response:
    slug = _HTTP_SLUGS.get(exc.code or 500, "internal-error")
    detail = {
        "not-found": "No such resource.",
        "payload-too-large": "The request body is larger than this service accepts.",
    }.get(slug, exc.description or SLUGS[slug][1])
    response = problem_response(Problem(slug, detail))
    if exc.code == 405 and getattr(exc, "valid_methods", None):
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


# Whole seconds a client should wait before retrying while the database is away.
UNAVAILABLE_RETRY_AFTER_S = 1


def unavailable_response() -> Response:
    return problem_response(Problem(
        "unavailable", "The database is not reachable just now; retry the same request.",
        headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)}))


def init_app(app: Flask) -> None:
    app.register_error_handler(Problem, problem_response)

    @app.errorhandler(DBAPIError)
    def _database(exc: DBAPIError):
        if not database_unavailable(exc):
            return _unexpected(exc)
        log.warning("database unavailable: %s", type(exc.orig).__name__ if exc.orig else exc)
        return unavailable_response()

    @app.errorhandler(InvalidRequestError)
    def _checkout(exc: InvalidRequestError):
        if not database_unavailable(exc):
            return _unexpected(exc)
        log.warning("database unavailable: %s", exc)
        return unavailable_response()

    app.register_error_handler(HTTPException, http_problem)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        if database_unavailable(exc):  # the pool's timeout: no DBAPIError
            log.warning("database unavailable: %s", type(exc).__name__)
            return unavailable_response()
        log.exception("unhandled error")
        return problem_response(Problem("internal-error", "The request could not be processed."))

    @app.get("/problems/<slug>")
    def _problem_doc(slug: str):
        if slug not in SLUGS:
            raise Problem("not-found", "No such problem type.")
        status, title = SLUGS[slug]
        return {"type": problem_type(slug), "title": title, "status": status}
