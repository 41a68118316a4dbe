"""OpenAPI plumbing: flask-smorest with a request parser as strict as the contract, and the
OpenAPI document completed in one place (ContractPlugin): the response headers the service
sends, path parameter patterns, request body examples, and the routes outside blueprints."""
from __future__ import annotations

import re
from copy import copy, deepcopy

import flask_smorest
import marshmallow as ma
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask, current_app, request
from flask_smorest.spec.plugins import FlaskPlugin
from webargs.flaskparser import FlaskParser

from .errors import MAX_LISTED_ERRORS, MAX_TEXT, PROBLEM_JSON, Problem, SLUGS, pointers
from .fields import ID_PATTERN
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
    hold_status = ma.fields.String(validate=ma.validate.OneOf(["captured", "voided", "lapsed"]),
                                   metadata={"description": "With `hold-closed`: what closed "
                                                            "the hold."})
    request_id = ma.fields.String(metadata={
        "description": "The request's id, as in the `X-Request-Id` response header: quote it "
                       "when asking the operator about this answer.",
        "example": "4f1c0d2a9b8e4e55a1c3d7f6e2b90a11"})


class ProblemTypeSchema(ma.Schema):
    type = ma.fields.String(required=True, metadata={"example": "/problems/rate-limited"})
    title = ma.fields.String(required=True, metadata={"example": "Rate limited"})
    status = ma.fields.Integer(required=True, metadata={"example": 429})


# --- response headers (components/headers) -------------------------------------------------

# The X-Request-Id the service accepts from a caller and echoes (coalition/ops.py, _REQUEST_ID).
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
# RFC 6750's error_description characters (partners/tokens.py replaces any other with "?").
CHALLENGE_PATTERN = (r'^Bearer error="invalid_token", '
                     r'error_description="[\x20\x21\x23-\x5b\x5d-\x7e]*"$')

HEADERS = {  # component id -> (header name, header object)
    "RequestId": ("X-Request-Id", {
        "description": "The request's id, on every answer: the caller's own `X-Request-Id` when "
                       "it was 1 to 64 characters of `A-Z a-z 0-9 . _ -`, else one the service "
                       "made up. Problem bodies repeat it as `request_id`; quote it to the "
                       "operator.",
        "required": True,
        "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
        "example": "4f1c0d2a9b8e4e55a1c3d7f6e2b90a11"}),
    "WwwAuthenticate": ("WWW-Authenticate", {
        "description": "The RFC 6750 challenge of every 401: `error_description` repeats the "
                       "problem's `detail` (a character RFC 6750 does not allow there becomes "
                       "`?`).",
        "required": True,
        "schema": {"type": "string", "pattern": CHALLENGE_PATTERN},
        "example": 'Bearer error="invalid_token", error_description="The token has expired: '
                   'its exp lies more than 30 seconds in the past."'}),
    "RetryAfter": ("Retry-After", {
        "description": "Whole seconds to wait before sending the same request again (under a "
                       "fresh token). Nothing was booked.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
        "example": 30}),
    "IdempotentReplayed": ("Idempotent-Replayed", {
        "description": "`true` when this claim id (or hold id) was booked before with the same "
                       "content: the answer is that booking, replayed, and nothing new was "
                       "booked. Absent on the first booking.",
        "schema": {"type": "string", "enum": ["true"]}}),
    "ContentDisposition": ("Content-Disposition", {
        "description": "CSV and PDF answers: an attachment, with a file name.",
        "schema": {"type": "string"},
        "example": 'attachment; filename="statement-example-shop-2026-05.csv"'}),
}
_HEADER_IDS = {name: component for component, (name, _) in HEADERS.items()}
# Headers a problem carries, by slug (coalition/limits.py, coalition/errors.py, partners/tokens.py).
PROBLEM_HEADERS = {
    "rate-limited": ("Retry-After",),
    "unavailable": ("Retry-After",),
    **{slug: ("WWW-Authenticate",) for slug, (status, _) in SLUGS.items() if status == 401},
}
ATTACHMENTS = ("text/csv", "application/pdf")
_SLUG_IN_DESCRIPTION = re.compile(r"`([a-z-]+)`")


def headers(*names: str) -> dict:
    """Response headers by name, as references to components/headers."""
    return {name: _HEADER_IDS[name] for name in names}


def problem_doc(*slugs: str) -> dict:
    """One problem+json response answering `slugs` (all of one status), with their headers."""
    response = {"description": " or ".join(f"`{slug}`" for slug in slugs),
                "content": {PROBLEM_JSON: {"schema": ProblemSchema}}}
    names = sorted({h for slug in slugs for h in PROBLEM_HEADERS.get(slug, ())})
    if names:
        response["headers"] = headers(*names)
    return response


def problems(blp: Blueprint, *slugs: str):
    """Document the problem+json answers an endpoint can give, with the headers they carry."""
    def decorate(view):
        by_status: dict[int, list[str]] = {}
        for slug in slugs:
            by_status.setdefault(SLUGS[slug][0], []).append(slug)
        for status, names in sorted(by_status.items()):
            doc = problem_doc(*names)
            view = blp.alt_response(status, schema=ProblemSchema, content_type=PROBLEM_JSON,
                                    description=doc["description"],
                                    headers=doc.get("headers"))(view)
        return view
    return decorate


# --- path parameters ------------------------------------------------------------------------

# name -> parameter fields: every path parameter of that name, on every route, gets them. The
# pattern is the one the app enforces (a value that cannot match is answered 404 or 422).
PATH_PARAMETERS: dict[str, dict] = {}


def path_parameter(name: str, pattern: str, description: str, **schema) -> None:
    PATH_PARAMETERS[name] = {"description": description,
                             "schema": {"type": "string", "pattern": pattern, **schema}}


path_parameter("member_id", ID_PATTERN, "The member's id (card number), as enrolled.")
path_parameter("claim_id", ID_PATTERN, "One of the caller's claims: the claim_id of an earn or "
               "burn, or the reversal_id of a reversal.")
path_parameter("coupon_id", ID_PATTERN, "A published coupon's id.")
path_parameter("hold_id", ID_PATTERN, "One of the caller's holds: the hold_id it was placed with.")
path_parameter("slug", r"^[a-z]+(-[a-z]+)*$", "A problem type's slug.", enum=sorted(SLUGS))


# --- the plugin -------------------------------------------------------------------------------

class ContractPlugin(MarshmallowPlugin):
    """The marshmallow plugin, plus what every operation of this service has in common."""

    def init_spec(self, spec) -> None:
        super().init_spec(spec)
        for component, (_, header) in HEADERS.items():
            spec.components.header(component, deepcopy(header), lazy=True)

    def path_helper(self, path=None, operations=None, parameters=None, **kwargs):
        for parameter in parameters or ():
            if isinstance(parameter, dict) and parameter.get("in") == "path":
                parameter.update(deepcopy(PATH_PARAMETERS.get(parameter["name"], {})))
        return None

    def operation_helper(self, path=None, operations=None, **kwargs) -> None:
        for operation in (operations or {}).values():
            body = operation.get("requestBody", {}) if isinstance(operation, dict) else {}
            for media in body.get("content", {}).values():
                # A request schema's EXAMPLE is the example of every body it describes.
                example = getattr(media.get("schema"), "EXAMPLE", None)
                if example is not None and "examples" not in media:
                    media.setdefault("example", deepcopy(example))
        super().operation_helper(path=path, operations=operations, **kwargs)
        for operation in (operations or {}).values():
            if isinstance(operation, dict) and "responses" in operation:
                add_headers(operation["responses"])


def add_headers(responses: dict) -> None:
    slugs = {slug for response in responses.values() if isinstance(response, dict)
             for slug in _SLUG_IN_DESCRIPTION.findall(response.get("description", ""))}
    for status, response in responses.items():
        if not isinstance(response, dict):
            continue
        sent = response.setdefault("headers", {})
        sent.setdefault("X-Request-Id", "RequestId")  # coalition/ops.py: on every answer
        if set(response.get("content", {})) & set(ATTACHMENTS):
            sent.setdefault("Content-Disposition", "ContentDisposition")
        if "claim-id-conflict" in slugs and str(status).startswith("2"):
            # A claim id makes a retry safe: the same content replays (partners/views.py, _book),
            # other content is `claim-id-conflict`.
            sent.setdefault("Idempotent-Replayed", "IdempotentReplayed")


# --- routes outside blueprints ----------------------------------------------------------------

class AppRoutesPlugin(FlaskPlugin):
    """flask-smorest's Flask plugin, for the app's own routes too (their rules have no
    defaults, where a blueprint's have an empty dict)."""

    def rule_to_params(self, rule):
        if rule.defaults is None:
            rule = copy(rule)
            rule.defaults = {}
        return super().rule_to_params(rule)


OPENAPI_OPERATION = "_openapi_operation"


def documented(**operation):
    """Put a view that no blueprint registers (a health probe) in the OpenAPI document."""
    def mark(view):
        setattr(view, OPENAPI_OPERATION, operation)
        return view
    return mark


# coalition/errors.py registers /problems/<slug> itself.
PROBLEM_TYPE_OPERATION = {
    "tags": ["problems"],
    "summary": "What a problem type means (`type` of every problem answer)",
    "responses": {
        "200": {"description": "The problem type's title and status.",
                "content": {"application/json": {"schema": ProblemTypeSchema}}},
        "404": problem_doc("not-found"),
        "429": problem_doc("rate-limited"),
    },
}
APP_ROUTE_DOCS = {"_problem_doc": PROBLEM_TYPE_OPERATION}
TAGS = [
    {"name": "operations", "description": "Liveness and readiness probes (no token needed)."},
    {"name": "problems", "description": "The problem types (RFC 9457) of the error answers."},
]
SERVERS = [{"url": "/", "description": "The origin that serves this document: every path "
                                       "starts at its root."}]


class Api(flask_smorest.Api):
    # Errors are documented per operation by @problems (problem+json); flask-smorest's own
    # "default" response would document a {"code", "status"} body that is never sent.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def init_app(self, app: Flask, *, spec_kwargs=None):
        super().init_app(app, spec_kwargs=spec_kwargs)
        for rule in app.url_map.iter_rules():
            operation = (getattr(app.view_functions[rule.endpoint], OPENAPI_OPERATION, None)
                         or APP_ROUTE_DOCS.get(rule.endpoint))
            if operation is not None:
                methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
                self.spec.path(rule=rule, operations={m.lower(): operation for m in methods})
        for tag in TAGS:
            self.spec.tag(tag)

    def _init_spec(self, **options):
        options.setdefault("flask_plugin", AppRoutesPlugin())
        options.setdefault("marshmallow_plugin", ContractPlugin())
        options.setdefault("servers", SERVERS)
        super()._init_spec(**options)

    def _register_responses(self):
        """flask-smorest registers a response per HTTP status with its own {"code", "status"}
        Error schema: this service answers problem+json (ProblemSchema) and refers to none.
        (@blp.arguments refers to one for its 422: @problems' `validation-error` replaces it.)"""

    def _register_pagination_header(self):
        """No flask-smorest pagination here: listings page by cursor in their bodies."""

    def _register_error_handlers(self):
        """flask-smorest would answer every HTTPException (404, 405, 413...) with its own
        {"code", "status"} JSON, replacing the problem+json handler of errors.py: keep ours."""


api = Api()
