"""The OpenAPI document and its Swagger UI: every partner endpoint, its bodies, its problems."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from coalition.errors import PROBLEM_JSON, SLUGS
from coalition.fields import ID_PATTERN, MAX_POINTS

# (path, method) -> problem slugs the operation must document (docs/partner-api.md, section 9)
OPERATIONS = {
    ("/v1/members", "post"): {"malformed-request", "invalid-token", "validation-error",
                              "payload-too-large", "unsupported-media-type"},
    ("/v1/members/{member_id}/balance", "get"): {"invalid-token", "not-found"},
    ("/v1/earn", "post"): {"malformed-request", "invalid-token", "validation-error", "not-found",
                           "claim-id-conflict", "payload-too-large", "unsupported-media-type"},
    ("/v1/burn", "post"): {"malformed-request", "invalid-token", "validation-error", "not-found",
                           "claim-id-conflict", "insufficient-points", "member-locked",
                           "member-auth-required", "member-auth-invalid", "limit-exceeded",
                           "payload-too-large", "unsupported-media-type"},
    ("/v1/members/{member_id}/pin", "put"): {
        "malformed-request", "invalid-token", "validation-error", "not-found", "member-locked",
        "member-auth-required", "member-auth-invalid", "payload-too-large",
        "unsupported-media-type"},
    ("/v1/claims/{claim_id}/reversals", "post"): {
        "malformed-request", "invalid-token", "validation-error", "not-found", "claim-id-conflict",
        "reversal-exceeds-claim", "payload-too-large", "unsupported-media-type"},
    ("/v1/claims/{claim_id}", "get"): {"invalid-token", "not-found"},
}

REQUEST_BODIES = {  # POST path -> (required fields, all fields)
    "/v1/members": ({"member_id"}, {"member_id"}),
    "/v1/earn": ({"claim_id", "member_id", "points", "occurred_at"},
                 {"claim_id", "member_id", "points", "occurred_at", "pending_until", "description"}),
    "/v1/burn": ({"claim_id", "member_id", "points", "occurred_at"},
                 {"claim_id", "member_id", "points", "occurred_at", "description", "member_pin"}),
    "/v1/claims/{claim_id}/reversals": ({"reversal_id", "points", "occurred_at"},
                                        {"reversal_id", "points", "occurred_at"}),
}

CLAIM_FIELDS = {"claim_id", "kind", "member_id", "partner_id", "points", "occurred_at",
                "recorded_at", "period", "status", "reversed_points", "balance_after"}
SUCCESS = {  # (path, method) -> {status: fields the contract promises}
    ("/v1/members", "post"): {"201": {"member_id"}, "200": {"member_id"}},
    ("/v1/members/{member_id}/balance", "get"): {
        "200": {"member_id", "available", "pending", "expiring"}},
    ("/v1/earn", "post"): {"201": CLAIM_FIELDS},
    ("/v1/burn", "post"): {"201": CLAIM_FIELDS},
    ("/v1/claims/{claim_id}/reversals", "post"): {"201": CLAIM_FIELDS},
    ("/v1/claims/{claim_id}", "get"): {"200": CLAIM_FIELDS},
}


@pytest.fixture
def spec(app):
    r = app.test_client().get("/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    return r.get_json()


def resolve(spec: dict, node: dict) -> dict:
    """Follow local $refs ("#/components/schemas/Claim") to the object they name."""
    while "$ref" in node:
        assert node["$ref"].startswith("#/"), node
        target = spec
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def operation(spec: dict, path: str, method: str) -> dict:
    return spec["paths"][path][method]


def test_is_openapi_3_with_info(spec):
    assert re.fullmatch(r"3\.\d+\.\d+", spec["openapi"])
    assert spec["info"]["title"] and spec["info"]["version"]


def test_documents_every_partner_operation(spec):
    documented = {(p, m) for p, item in spec["paths"].items() for m in item
                  if m in {"get", "post", "put", "patch", "delete"}}
    assert set(OPERATIONS) <= documented


def test_every_v1_route_of_the_app_is_documented(app, spec):
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in spec["paths"].get(path, {}), (path, method)


@pytest.mark.parametrize("path, method", list(OPERATIONS))
def test_path_parameters_are_declared(spec, path, method):
    names = set(re.findall(r"{([^}]+)}", path))
    declared = spec["paths"][path].get("parameters", []) + operation(spec, path, method).get("parameters", [])
    assert {p["name"] for p in declared if p["in"] == "path"} == names
    assert all(p["required"] for p in declared if p["in"] == "path")


@pytest.mark.parametrize("path", list(REQUEST_BODIES))
def test_post_request_bodies_are_strict_schemas(spec, path):
    required, fields = REQUEST_BODIES[path]
    body = operation(spec, path, "post")["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == {"application/json"}
    schema = resolve(spec, body["content"]["application/json"]["schema"])
    assert schema["type"] == "object"
    assert set(schema["properties"]) == fields
    assert set(schema["required"]) == required
    assert schema["additionalProperties"] is False  # unknown fields are 422
    props = schema["properties"]
    for name in fields & {"claim_id", "member_id", "reversal_id"}:
        assert props[name] == {"type": "string", "pattern": ID_PATTERN}
    if "points" in props:
        assert props["points"] == {"type": "integer", "minimum": 1, "maximum": MAX_POINTS}
    for name in fields & {"occurred_at", "pending_until"}:
        assert props[name]["type"] == "string" and props[name]["format"] == "date-time"
    if "description" in props:
        assert props["description"]["maxLength"] == 500 and props["description"]["nullable"] is True


@pytest.mark.parametrize("path, method", [(p, "get") for p, m in OPERATIONS if m == "get"])
def test_gets_take_no_body(spec, path, method):
    assert "requestBody" not in operation(spec, path, method)


@pytest.mark.parametrize("path, method", list(SUCCESS))
def test_success_responses_have_schemas_with_the_contract_fields(spec, path, method):
    responses = operation(spec, path, method)["responses"]
    for status, fields in SUCCESS[(path, method)].items():
        content = responses[status]["content"]
        assert set(content) == {"application/json"}
        schema = resolve(spec, content["application/json"]["schema"])
        assert fields <= set(schema["properties"]), (status, fields - set(schema["properties"]))
        assert fields <= set(schema["required"])


def test_claim_and_balance_schemas_detail(spec):
    claim = resolve(spec, operation(spec, "/v1/earn", "post")["responses"]["201"]["content"]
                    ["application/json"]["schema"])
    assert set(claim["properties"]["kind"]["enum"]) == {"earn", "burn", "reversal"}
    assert claim["properties"]["points"]["type"] == "integer"
    assert claim["properties"]["occurred_at"]["format"] == "date-time"
    balance = resolve(spec, operation(spec, "/v1/members/{member_id}/balance", "get")["responses"]["200"]
                      ["content"]["application/json"]["schema"])
    expiring = resolve(spec, balance["properties"]["expiring"]["items"])
    assert {"points", "expires_on"} <= set(expiring["required"])
    assert expiring["properties"]["expires_on"]["format"] == "date"


@pytest.mark.parametrize("path, method", list(OPERATIONS))
def test_problem_responses_document_the_contract_slugs(spec, path, method):
    responses = operation(spec, path, method)["responses"]
    documented: set[str] = set()
    for status, response in responses.items():
        if not status.startswith(("4", "5")):
            continue
        assert set(response["content"]) == {PROBLEM_JSON}, (status, response)
        schema = resolve(spec, response["content"][PROBLEM_JSON]["schema"])
        assert {"type", "title", "status", "detail"} <= set(schema["required"])
        slugs = set(re.findall(r"`([a-z-]+)`", response["description"]))
        assert slugs, response["description"]
        for slug in slugs:
            assert SLUGS[slug][0] == int(status), (slug, status)
        documented |= slugs
    assert OPERATIONS[(path, method)] <= documented, OPERATIONS[(path, method)] - documented


def test_burn_documents_422_and_409_with_their_slugs(spec):
    responses = operation(spec, "/v1/burn", "post")["responses"]
    assert "`insufficient-points`" in responses["422"]["description"]
    assert "`validation-error`" in responses["422"]["description"]
    assert "`claim-id-conflict`" in responses["409"]["description"]
    assert "`member-locked`" in responses["403"]["description"]


def test_no_operation_documents_an_error_body_the_service_never_sends(spec):
    # flask-smorest's own "default" error ({"code", "status"} as application/json) is not ours.
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert "default" not in op["responses"], (path, method)


def test_problem_schema(spec):
    schema = spec["components"]["schemas"]["Problem"]
    assert set(schema["properties"]) == {"type", "title", "status", "detail", "errors", "errors_total",
                                         "request_id"}
    assert schema["properties"]["errors"]["type"] == "array"
    assert schema["properties"]["errors_total"]["type"] == "integer"


@pytest.mark.parametrize("slug", sorted(SLUGS))
def test_problem_types_are_dereferenceable(app, slug):
    r = app.test_client().get(f"/problems/{slug}")
    assert r.status_code == 200
    assert r.get_json() == {"type": f"/problems/{slug}", "title": SLUGS[slug][1], "status": SLUGS[slug][0]}


def test_bearer_security_scheme_is_referenced_by_every_operation(spec):
    schemes = spec["components"]["securitySchemes"]
    bearer = {name for name, s in schemes.items() if s["type"] == "http" and s["scheme"] == "bearer"}
    assert bearer
    for path, method in OPERATIONS:
        security = operation(spec, path, method)["security"]
        assert security and all(set(req) <= bearer for req in security), (path, method)
        assert any(req for req in security), "an empty requirement would make auth optional"


# --- Swagger UI ---------------------------------------------------------------------------

class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def test_docs_is_an_html_page_with_local_assets_only(app):
    r = app.test_client().get("/docs")
    assert r.status_code == 200 and r.mimetype == "text/html"
    page = r.get_data(as_text=True)
    assert "SwaggerUIBundle" in page and "/openapi.json" in page
    parser = _Assets()
    parser.feed(page)
    assert "/docs/static/swagger-ui-bundle.js" in parser.urls
    assert parser.urls and all(u.startswith("/docs/static/") for u in parser.urls), parser.urls
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", page)  # no CDN
    # The page's CSP must let it load its own scripts and styles.
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp


@pytest.mark.parametrize("asset, mimetype", [
    ("swagger-ui-bundle.js", "text/javascript"),
    ("swagger-ui-standalone-preset.js", "text/javascript"),
    ("swagger-ui.css", "text/css"),
])
def test_swagger_ui_assets_are_served_locally(app, asset, mimetype):
    r = app.test_client().get(f"/docs/static/{asset}")
    assert r.status_code == 200
    assert r.mimetype in (mimetype, "application/javascript")
    assert len(r.get_data()) > 10_000


@pytest.mark.parametrize("path", ["/docs/static/../../coalition/config.py", "/docs/static/%2e%2e/__init__.py",
                                  "/docs/static/..%2f..%2f__init__.py", "/docs/static/nope.js"])
def test_docs_static_does_not_leave_its_directory(app, path):
    r = app.test_client().get(path)
    assert r.status_code == 404
    assert r.mimetype == PROBLEM_JSON
