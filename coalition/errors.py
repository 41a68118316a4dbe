"""RFC 9457 problem+json errors. Every error leaves the service through here."""
from __future__ import annotations

import logging

from flask import Flask, Response, json
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("coalition.errors")

PROBLEM_JSON = "application/problem+json"

# slug -> (status, title). The slugs are part of the partner contract (API.md section 2).
SLUGS: dict[str, tuple[int, str]] = {
    "malformed-request": (400, "Malformed request"),
    "invalid-token": (401, "Invalid token"),
    "forbidden": (403, "Forbidden"),
    "member-locked": (403, "Member locked"),
    "member-auth-required": (403, "Member authentication required"),
    "member-auth-invalid": (403, "Member authentication invalid"),
    "not-found": (404, "Not found"),
    "method-not-allowed": (405, "Method not allowed"),
    "claim-id-conflict": (409, "Claim id conflict"),
    "period-open": (409, "Period open"),
    "period-closed": (409, "Period closed"),
    "hold-closed": (409, "Hold closed"),
    "payload-too-large": (413, "Payload too large"),
    "unsupported-media-type": (415, "Unsupported media type"),
    "validation-error": (422, "Validation error"),
    "insufficient-points": (422, "Insufficient points"),
    "reversal-exceeds-claim": (422, "Reversal exceeds claim"),
    "limit-exceeded": (422, "Limit exceeded"),
    "rate-limited": (429, "Rate limited"),
    "internal-error": (500, "Internal error"),
    "unavailable": (503, "Service unavailable"),
    # Answered by the serving edge (deploy/: nginx, gunicorn), never by the app itself.
    "uri-too-long": (414, "URI too long"),
    "headers-too-large": (431, "Request headers too large"),
    "bad-gateway": (502, "Bad gateway"),
    "gateway-timeout": (504, "Gateway timeout"),
}


# A problem's size is bounded whatever the input: a 300 KB upload of empty records once
# answered a 25 MB list. At most MAX_LISTED_ERRORS errors are listed, `errors_total` counts them
# all, and no text taken from the input (a pointer naming a 500 KB key, say) runs longer than
# MAX_TEXT characters.
MAX_LISTED_ERRORS = 100
MAX_TEXT = 200
_CLIPPED = "..."


def problem_type(slug: str) -> str:
    return f"/problems/{slug}"


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit - len(_CLIPPED)] + _CLIPPED


class Problem(Exception):
    """A domain or request error that maps to one problem+json response."""

    def __init__(self, slug: str, detail: str, *, errors: list[dict] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.slug = slug
        self.status, self.title = SLUGS[slug]
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict:
        doc = {"type": problem_type(self.slug), "title": self.title,
               "status": self.status, "detail": clip(self.detail, 4 * MAX_TEXT)}
        if self.errors is not None:
            doc["errors"] = [{name: clip(str(value)) for name, value in error.items()}
                             for error in self.errors[:MAX_LISTED_ERRORS]]
            doc["errors_total"] = len(self.errors)
            if len(self.errors) > MAX_LISTED_ERRORS:
                doc["detail"] += f" The first {MAX_LISTED_ERRORS} of {len(self.errors)} errors are listed."
        return doc


class Refusal(Problem):
    """A refusal that leaves a record: a wrong PIN counted under the member's row lock, the lock
    that the fifth one sets, the day's first hit of a redemption limit (with its audit event).
    It is raised before anything is booked, so the request's transaction holds that record and
    nothing else: the partner API commits it, with the token's jti, where any other Problem is
    rolled back."""


def validation_problem(messages, detail: str = "The request has invalid fields.") -> Problem:
    return Problem("validation-error", detail, errors=pointers(messages))


def pointers(messages, prefix: str = "") -> list[dict]:
    """Flatten marshmallow's nested error dict into RFC 6901 pointers."""
    out: list[dict] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if key == "_schema":
                out.extend(pointers(value, prefix))
            else:
                token = str(key).replace("~", "~0").replace("/", "~1")
                out.extend(pointers(value, f"{prefix}/{token}"))
    elif isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        out.extend({"pointer": prefix or "/", "detail": m} for m in messages)
    elif isinstance(messages, list):
        for m in messages:
            out.extend(pointers(m, prefix))
    else:
        out.append({"pointer": prefix or "/", "detail": str(messages)})
    return out


def problem_response(problem: Problem) -> Response:
    response = Response(json.dumps(problem.body()), status=problem.status, mimetype=PROBLEM_JSON)
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


def database_unavailable(exc: BaseException) -> bool:
    """The database went away or refused the work for now (a restart, a dropped connection, a
    lock or serialisation timeout): nothing was booked, and the same request may be retried."""
    return isinstance(exc, (OperationalError, InterfaceError)) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


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

    app.register_error_handler(HTTPException, http_problem)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return problem_response(Problem("internal-error", "The request could not be processed."))

    @app.get("/problems/<slug>")
    def _problem_doc(slug: str):
        if slug not in SLUGS:
            raise Problem("not-found", "No such problem type.")
        status, title = SLUGS[slug]
        return {"type": problem_type(slug), "title": title, "status": status}
