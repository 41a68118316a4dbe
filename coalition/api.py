"""OpenAPI plumbing: flask-smorest with a request parser as strict as the contract."""
from __future__ import annotations

import flask_smorest
import marshmallow as ma
from flask import current_app, request
from webargs.flaskparser import FlaskParser

from .errors import MAX_LISTED_ERRORS, MAX_TEXT, PROBLEM_JSON, Problem, SLUGS, pointers
from .jsonbody import parse_object


class StrictParser(FlaskParser):
    """Bodies go through our own JSON reader (duplicate keys, depth, content type)."""

    def load_json(self, req, schema):
        return require_json_object()

    def handle_error(self, error, req, schema, *, error_status_code, error_headers):
        messages = error.messages
        if isinstance(messages, dict) and len(messages) == 1 and "json" in messages:
            messages = messages["json"]  # webargs nests by location; the pointer is the body's
        raise Problem("validation-error", "The request has invalid fields.",
                      errors=pointers(messages))


def require_json_object() -> dict:
    if request.mimetype != "application/json":
        raise Problem("unsupported-media-type", "Send the body as application/json.")
    return parse_object(request.get_data(cache=True), current_app.config["MAX_JSON_DEPTH"])


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictParser()

    def route(self, rule, *, parameters=None, tags=None, **options):
        """Every route of these blueprints is rate limited (coalition/limits.py: a partner's quota,
        or the address budget of failed authentication and public documents), so every
        operation documents `429 rate-limited`, also where the view does not list it."""
        register = super().route(rule, parameters=parameters, tags=tags, **options)

        def decorator(view):
            responses = getattr(view, "_apidoc", {}).get("response", {}).get("responses", {})
            if SLUGS["rate-limited"][0] not in responses:
                view = problems(self, "rate-limited")(view)
            return register(view)
        return decorator


class ProblemSchema(ma.Schema):
    type = ma.fields.String(required=True, metadata={"example": "/problems/validation-error"})
    title = ma.fields.String(required=True)
    status = ma.fields.Integer(required=True)
    detail = ma.fields.String(required=True)
    errors = ma.fields.List(ma.fields.Dict(), metadata={
        "description": "For validation errors: [{pointer, detail}] with RFC 6901 pointers, the "
                       f"first {MAX_LISTED_ERRORS} errors found at most (`errors_total` counts them "
                       f"all). A pointer or detail longer than {MAX_TEXT} characters is cut and "
                       "ends in `...`."})
    errors_total = ma.fields.Integer(metadata={
        "description": "Present with `errors`: how many errors were found. When it exceeds the "
                       "length of `errors`, the list is truncated and `detail` says so."})
    request_id = ma.fields.String(metadata={
        "description": "The request's id, as in the `X-Request-Id` response header: quote it "
                       "when asking the operator about this answer.",
        "example": "4f1c0d2a9b8e4e55a1c3d7f6e2b90a11"})


def problems(blp: Blueprint, *slugs: str):
    """Document the problem+json answers an endpoint can give."""
    def decorate(view):
        by_status: dict[int, list[str]] = {}
        for slug in slugs:
            by_status.setdefault(SLUGS[slug][0], []).append(slug)
        for status, names in sorted(by_status.items()):
            view = blp.alt_response(status, schema=ProblemSchema, content_type=PROBLEM_JSON,
                                    description=" or ".join(f"`{n}`" for n in names))(view)
        return view
    return decorate


class Api(flask_smorest.Api):
    # Errors are documented per operation by @problems (problem+json); flask-smorest's own
    # "default" response would document a {"code", "status"} body that is never sent.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def _register_error_handlers(self):
        """flask-smorest would answer every HTTPException (404, 405, 413...) with its own
        {"code", "status"} JSON, replacing the problem+json handler of errors.py: keep ours."""


api = Api()
