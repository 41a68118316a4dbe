"""The OpenAPI document and its Swagger UI: every route the app serves, its bodies and their
examples, its path patterns, its problems and the headers of every answer."""
from __future__ import annotations

import http
import json
import re
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
from openapi_schema_validator import OAS30ReadValidator, OAS30WriteValidator, oas30_format_checker

from coalition.errors import PROBLEM_JSON, SLUGS
from coalition.fields import ID_PATTERN, MAX_POINTS
from partners.client import PartnerClient

ROOT = Path(__file__).resolve().parent.parent

# (path, method) -> problem slugs the operation must document (docs/partner-api.md, section 9)
OPERATIONS = {
    ("/v1/members", "post"): {"malformed-request", "invalid-token", "validation-error",
                              "payload-too-large", "unsupported-media-type"},
    ("/v1/members/{member_id}/balance", "get"): {"invalid-token", "not-found"},
    ("/v1/members/{member_id}/expiry-notices", "get"): {"invalid-token", "not-found",
                                                        "validation-error"},
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
    # Campaigns and coupons (partners/bonus_api.py): the operator's writes are `forbidden` to
    # every other partner; what a partner may not read is `not-found`.
    ("/v1/campaigns", "post"): {"malformed-request", "invalid-token", "validation-error",
                                "forbidden", "payload-too-large", "unsupported-media-type"},
    ("/v1/campaigns", "get"): {"invalid-token", "validation-error"},
    ("/v1/campaigns/{campaign_id}", "get"): {"invalid-token", "not-found"},
    ("/v1/campaigns/{campaign_id}/end", "post"): {"invalid-token", "forbidden", "not-found"},
    ("/v1/coupons", "post"): {"malformed-request", "invalid-token", "validation-error",
                              "forbidden", "payload-too-large", "unsupported-media-type"},
    ("/v1/coupons", "get"): {"invalid-token", "validation-error"},
    ("/v1/coupons/{coupon_id}", "get"): {"invalid-token", "not-found"},
    ("/v1/coupons/{coupon_id}/end", "post"): {"invalid-token", "forbidden", "not-found"},
    ("/v1/segments", "post"): {"malformed-request", "invalid-token", "validation-error",
                               "forbidden", "payload-too-large", "unsupported-media-type"},
    ("/v1/segments", "get"): {"invalid-token", "forbidden"},
    ("/v1/segments/{segment_id}", "get"): {"invalid-token", "forbidden", "not-found"},
}

REQUEST_BODIES = {  # POST path -> (required fields, all fields)
    "/v1/members": ({"member_id"}, {"member_id", "referred_by"}),
    "/v1/earn": ({"claim_id", "member_id", "points", "occurred_at"},
                 {"claim_id", "member_id", "points", "occurred_at", "pending_until", "description",
                  "activity"}),
    "/v1/burn": ({"claim_id", "member_id", "points", "occurred_at"},
                 {"claim_id", "member_id", "points", "occurred_at", "description", "member_pin"}),
    "/v1/claims/{claim_id}/reversals": ({"reversal_id", "points", "occurred_at"},
                                        {"reversal_id", "points", "occurred_at"}),
    "/v1/campaigns": ({"id", "name", "kind", "value", "starts", "ends", "funder"},
                      {"id", "name", "kind", "value", "starts", "ends", "funder", "partners",
                       "tiers", "segment", "cap_per_member", "cap_total"}),
    "/v1/coupons": ({"id", "name", "kind", "value", "starts", "ends"},
                    {"id", "name", "kind", "value", "starts", "ends", "partner_id", "funder"}),
    "/v1/segments": ({"id", "name", "rule", "days"},
                     {"id", "name", "rule", "days", "partner_id", "points"}),
}

CLAIM_FIELDS = {"claim_id", "kind", "member_id", "partner_id", "points", "occurred_at",
                "recorded_at", "period", "status", "reversed_points", "balance_after"}
_BONUS_FIELDS = {"id", "name", "kind", "factor", "bonus_points", "starts_at", "ends_at", "funder",
                 "created_at", "ended_at"}
CAMPAIGN_FIELDS = _BONUS_FIELDS | {"partners", "tiers", "segment", "cap_per_member", "cap_total"}
COUPON_FIELDS = _BONUS_FIELDS | {"partner_id", "published_by"}
SEGMENT_FIELDS = {"id", "name", "rule", "partner_id", "days", "points", "created_at"}
SUCCESS = {  # (path, method) -> {status: fields the contract promises}
    ("/v1/members", "post"): {"201": {"member_id"}, "200": {"member_id"}},
    ("/v1/members/{member_id}/balance", "get"): {
        "200": {"member_id", "available", "pending", "expiring"}},
    ("/v1/members/{member_id}/expiry-notices", "get"): {
        "200": {"member_id", "within_days", "notices"}},
    ("/v1/earn", "post"): {"201": CLAIM_FIELDS},
    ("/v1/burn", "post"): {"201": CLAIM_FIELDS},
    ("/v1/claims/{claim_id}/reversals", "post"): {"201": CLAIM_FIELDS},
    ("/v1/claims/{claim_id}", "get"): {"200": CLAIM_FIELDS},
    ("/v1/campaigns", "post"): {"201": CAMPAIGN_FIELDS},
    ("/v1/campaigns", "get"): {"200": {"campaigns"}},
    ("/v1/campaigns/{campaign_id}", "get"): {"200": CAMPAIGN_FIELDS},
    ("/v1/campaigns/{campaign_id}/end", "post"): {"200": CAMPAIGN_FIELDS},
    ("/v1/coupons", "post"): {"201": COUPON_FIELDS},
    ("/v1/coupons", "get"): {"200": {"coupons"}},
    ("/v1/coupons/{coupon_id}", "get"): {"200": COUPON_FIELDS},
    ("/v1/coupons/{coupon_id}/end", "post"): {"200": COUPON_FIELDS},
    ("/v1/segments", "post"): {"201": SEGMENT_FIELDS},
    ("/v1/segments", "get"): {"200": {"segments"}},
    ("/v1/segments/{segment_id}", "get"): {"200": SEGMENT_FIELDS},
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


def all_subclasses(cls) -> list:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *all_subclasses(direct))]


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
                                         "request_id", "hold_status"}
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


# --- completeness: every route, header, example, pattern and schema ---------------------------

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Served but not part of the API they describe: the document itself, its Swagger UI page and
# the page's assets, and Flask's own static files.
NOT_IN_THE_DOCUMENT = {"api-docs.openapi_json", "api-docs.openapi_swagger_ui", "swagger_static",
                       "static"}
WEB_FACES = {"portal", "console", "web"}
IDEMPOTENT_CLAIMS = {("/v1/earn", "post"), ("/v1/burn", "post"),
                     ("/v1/claims/{claim_id}/reversals", "post"), ("/v1/holds", "post"),
                     ("/v1/holds/{hold_id}/capture", "post")}


def operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield path, method, op


def responses(spec: dict):
    for path, method, op in operations(spec):
        for status, response in op["responses"].items():
            yield path, method, status, resolve(spec, response)


def inline(spec: dict, node):
    """`node` with every local $ref replaced by what it names (the schemas are not recursive)."""
    if isinstance(node, dict):
        if "$ref" in node:
            return inline(spec, resolve(spec, node))
        return {key: inline(spec, value) for key, value in node.items()}
    if isinstance(node, list):
        return [inline(spec, value) for value in node]
    return node


def header(spec: dict, response: dict, name: str) -> dict | None:
    found = response.get("headers", {}).get(name)
    return None if found is None else resolve(spec, found)


def test_the_document_is_valid_openapi(spec):
    from openapi_spec_validator import validate
    validate(spec)


def test_every_route_the_app_serves_is_in_the_document_with_its_methods(app, spec):
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert NOT_IN_THE_DOCUMENT <= endpoints  # the exclusions name real routes
    served: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        # The web faces' pages (web/: portal, console, their stylesheet) are no API.
        if (rule.endpoint not in NOT_IN_THE_DOCUMENT
                and rule.endpoint.partition(".")[0] not in WEB_FACES):
            path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
            methods = rule.methods - {"HEAD", "OPTIONS"}
            served.setdefault(path, set()).update(m.lower() for m in methods)
    documented: dict[str, set[str]] = {}
    for path, method, _ in operations(spec):
        documented.setdefault(path, set()).add(method)
    assert documented == served
    assert {"/healthz", "/readyz", "/problems/{slug}", "/.well-known/jwks.json"} <= set(documented)


def test_servers_is_the_origin_that_serves_the_document(spec):
    assert [server["url"] for server in spec["servers"]] == ["/"]
    assert all(path.startswith("/") for path in spec["paths"])


REASON_PHRASES = {status.phrase for status in http.HTTPStatus}


def test_every_response_has_a_description_and_the_request_id_header(spec):
    from coalition.ops import _REQUEST_ID
    count = 0
    for path, method, status, response in responses(spec):
        assert response.get("description", "").strip(), (path, method, status)
        # flask-smorest's default is the bare reason phrase, which tells a reader nothing.
        assert response["description"] not in REASON_PHRASES, (path, method, status)
        request_id = header(spec, response, "X-Request-Id")
        assert request_id and request_id["required"] is True, (path, method, status)
        assert request_id["schema"]["pattern"] == _REQUEST_ID.pattern
        count += 1
    assert count > 100


def test_every_401_has_the_bearer_challenge(spec):
    from partners.tokens import refused
    challenges = [header(spec, response, "WWW-Authenticate")
                  for _, _, status, response in responses(spec) if status == "401"]
    assert len(challenges) >= 12 and all(c and c["required"] for c in challenges)
    pattern = challenges[0]["schema"]["pattern"]
    sent = refused("token-expired", 'A "quoted" detail, with \\ and é.').headers["WWW-Authenticate"]
    assert re.fullmatch(pattern, sent) and re.fullmatch(pattern, challenges[0]["example"])
    assert all(c == challenges[0] for c in challenges)


def test_every_429_and_503_has_retry_after(spec):
    checked = 0
    for path, method, status, response in responses(spec):
        if status not in ("429", "503"):
            continue
        retry_after = header(spec, response, "Retry-After")
        assert retry_after and retry_after["required"], (path, method, status)
        assert retry_after["schema"] == {"type": "integer", "minimum": 1}
        checked += 1
    assert checked >= 15


def test_idempotent_replayed_is_documented_on_the_claims_answers(spec):
    documented = {(path, method, status) for path, method, status, response in responses(spec)
                  if header(spec, response, "Idempotent-Replayed")}
    assert documented == {(path, method, "201") for path, method in IDEMPOTENT_CLAIMS}


def test_the_claims_answers_send_idempotent_replayed_on_a_replay(app, acme):
    client, then = acme.client, datetime.now(timezone.utc) - timedelta(minutes=5)
    assert client.enrol("M-1001").status == 201
    calls = {  # a replay is the same content: the same occurred_at too
        ("/v1/earn", "post"): lambda: client.earn("order-1", "M-1001", 100, then),
        ("/v1/burn", "post"): lambda: client.burn("till-1", "M-1001", 30, then),
        ("/v1/claims/{claim_id}/reversals", "post"):
            lambda: client.reverse("order-1", "ret-1", 10, then),
        ("/v1/holds", "post"): lambda: client.hold("auth-1", "M-1001", 20, then),
        ("/v1/holds/{hold_id}/capture", "post"): lambda: client.capture("auth-1", "till-2"),
    }
    assert set(calls) == IDEMPOTENT_CLAIMS
    for call in calls.values():
        first, again = call(), call()
        assert first.status == again.status == 201
        assert "idempotent-replayed" not in first.headers
        assert again.headers["idempotent-replayed"] == "true"


def test_every_header_is_a_component_with_a_schema_and_a_description(spec):
    names = set()
    for _, _, _, response in responses(spec):
        for name, value in response.get("headers", {}).items():
            assert set(value) == {"$ref"} and value["$ref"].startswith("#/components/headers/")
            names.add(name)
    assert names == {"X-Request-Id", "WWW-Authenticate", "Retry-After", "Idempotent-Replayed",
                     "Content-Disposition"}
    for component in spec["components"]["headers"].values():
        assert component["description"] and component["schema"]["type"]


def test_answers_carry_the_headers_documented_for_them(app, spec):
    client = app.test_client()
    unsigned = client.post("/v1/earn", json={}, headers={"X-Request-Id": "till-7.req_1"})
    assert unsigned.status_code == 401
    documented = spec["paths"]["/v1/earn"]["post"]["responses"]["401"]
    challenge = header(spec, documented, "WWW-Authenticate")["schema"]["pattern"]
    assert re.fullmatch(challenge, unsigned.headers["WWW-Authenticate"])
    assert unsigned.headers["X-Request-Id"] == "till-7.req_1"
    for path in ("/healthz", "/readyz", "/problems/rate-limited", "/problems/nope"):
        answer = client.get(path)
        response = spec["paths"][path if path.count("/") == 1 else "/problems/{slug}"]["get"][
            "responses"][str(answer.status_code)]
        assert re.fullmatch(header(spec, response, "X-Request-Id")["schema"]["pattern"],
                            answer.headers["X-Request-Id"])
        (mimetype, media), = response["content"].items()
        assert answer.mimetype == mimetype
        OAS30ReadValidator(inline(spec, media["schema"])).validate(answer.get_json())


def test_every_path_parameter_has_the_pattern_the_app_enforces(spec):
    from partners.schemas import PERIOD_PATTERN
    expected = {"member_id": ID_PATTERN, "claim_id": ID_PATTERN, "hold_id": ID_PATTERN,
                "coupon_id": ID_PATTERN, "campaign_id": ID_PATTERN, "segment_id": ID_PATTERN,
                "period": PERIOD_PATTERN}
    seen = set()
    for path, item in spec["paths"].items():
        declared = item.get("parameters", []) + [p for m, op in item.items() if m in HTTP_METHODS
                                                 for p in op.get("parameters", [])]
        for parameter in (resolve(spec, p) for p in declared):
            if parameter["in"] != "path":
                continue
            pattern = parameter["schema"]["pattern"]
            assert pattern.startswith("^") and pattern.endswith("$"), (path, parameter)
            assert parameter.get("description"), (path, parameter)
            if parameter["name"] in expected:
                assert pattern == expected[parameter["name"]], (path, parameter["name"])
            seen.add(parameter["name"])
    assert seen == set(expected) | {"slug"}


@pytest.mark.parametrize("path, name, value", [
    ("/v1/members/{member_id}/balance", "member_id", "-starts-with-a-dash"),
    ("/v1/claims/{claim_id}", "claim_id", "x" * 65),
    ("/v1/statements/{period}", "period", "2026-13"),
    ("/v1/statements/{period}/reconciliations", "period", "2026-5"),
])
def test_a_path_value_outside_its_pattern_is_not_found(app, acme, spec, path, name, value):
    parameter = next(p for p in spec["paths"][path]["parameters"] if p["name"] == name)
    assert not re.search(parameter["schema"]["pattern"], value)
    answer = acme.client.request("GET", path.replace("{" + name + "}", value))
    assert answer.status == 404 and answer.json()["type"] == "/problems/not-found"


def test_every_request_body_has_an_example_valid_against_its_schema(spec):
    checked = 0
    for path, method, op in operations(spec):
        for mimetype, media in op.get("requestBody", {}).get("content", {}).items():
            assert "example" in media, (path, method, mimetype)
            validator = OAS30WriteValidator(inline(spec, media["schema"]),
                                            format_checker=oas30_format_checker)
            validator.validate(media["example"])
            if isinstance(media["example"], dict):  # the validator does refuse: an unknown field
                assert not validator.is_valid({**media["example"], "colour": "x"})
            checked += 1
    # 12 JSON bodies, and the reconciliation upload as JSON and as CSV
    assert checked == 14


def test_request_examples_are_those_of_the_partner_guide_and_load(spec):
    """The marshmallow schema that parses the body loads its example; the guide shows it."""
    from partners.schemas import StrictSchema
    guide = (ROOT / "docs" / "partner-api.md").read_text(encoding="utf-8")
    examples = [media["example"] for _, _, op in operations(spec)
                for media in op.get("requestBody", {}).get("content", {}).values()]
    for example in examples:
        text = example.strip() if isinstance(example, str) else json.dumps(
            example, separators=(",", ":"), ensure_ascii=False)
        assert text in guide, text
    # A schema with an example of its own (a batch's reversal item inherits the reversal's).
    with_examples = [cls for cls in all_subclasses(StrictSchema) if "EXAMPLE" in vars(cls)]
    assert len(with_examples) == 13
    for cls in with_examples:
        cls().load(cls.EXAMPLE)
        assert cls.EXAMPLE in examples, cls


def test_the_reconciliation_examples_pass_the_apps_validation(app, acme, spec):
    """Uploaded to a month that is still open, a valid body is refused for the month alone."""
    body = spec["paths"]["/v1/statements/{period}/reconciliation"]["post"]["requestBody"]
    path = f"/v1/statements/{datetime.now(timezone.utc):%Y-%m}/reconciliation"
    for mimetype, media in body["content"].items():
        data = media["example"].encode() if mimetype == "text/csv" else \
            PartnerClient.encode_body(media["example"])
        headers = {**acme.client.sign("POST", path, data), "Content-Type": mimetype}
        answer = app.test_client().post(path, data=data, headers=headers)
        assert (answer.status_code, answer.get_json()["type"]) == (409, "/problems/period-open")


def test_every_component_schema_is_used_and_flask_smorests_own_are_gone(spec):
    schemas = spec["components"]["schemas"]
    assert not {"Error", "PaginationMetadata"} & set(schemas)
    reached: set[str] = set()
    pending = [spec["paths"]]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/components/") and ref not in reached:
                reached.add(ref)
                pending.append(resolve(spec, node))
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    for kind in ("schemas", "headers"):
        assert {f"#/components/{kind}/{name}" for name in spec["components"][kind]} <= reached, kind
    assert "responses" not in spec["components"] and "parameters" not in spec["components"]


def test_every_problem_answer_is_problem_json_with_the_one_problem_schema(spec):
    count = 0
    for path, method, status, response in responses(spec):
        if status.startswith(("4", "5")):
            assert response["content"] == {
                PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}, (path, status)
            count += 1
        else:
            assert PROBLEM_JSON not in response.get("content", {}), (path, status)
    assert count > 80
