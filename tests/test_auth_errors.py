"""Precise authentication errors: every way a partner's token can be wrong has its own answer.

Before the signature verifies, slug `invalid-token` with a detail naming the structural rule the
token broke. An unknown kid, an alg other than the key's and a bad signature share one answer,
as do a revoked key or a suspended partner whose signature does not verify. Once the signature
verifies the answer names the problem with its own slug. Every answer is a 401 whose RFC 6750
challenge repeats the detail, and every problem body of the service carries the request id.

The wording is spelled out here, not imported from the service: a change of what a partner
reads must show up in this file.
"""
from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from datetime import datetime, timezone

import jwt
import pytest
from jwt.algorithms import get_default_algorithms

from coalition import create_app
from coalition.database import db
from coalition.errors import SLUGS
from partners import service as partner_service
from partners.client import jwk_thumbprint
from tests.conftest import ago, new_key

MEMBER = "M-1"
SAME_ID = "trace-0001"  # sent as X-Request-Id where two answers are compared byte for byte

DETAILS = {
    "no-authorization": "The request has no Authorization header; send Authorization: Bearer <token>.",
    "not-bearer": "The Authorization header must be the Bearer scheme, one space, then the token "
                  "and nothing else.",
    "not-a-jwt": "The token is not a JWT: it must be three base64url segments separated by dots, "
                 "the first two encoding JSON objects.",
    "duplicate-header": "The token header has a duplicate name; every name may appear only once.",
    "duplicate-payload": "The token payload has a duplicate name; every name may appear only once.",
    "typ": "The token header must have typ partner+jwt.",
    "alg": "The token alg must be ES256 or EdDSA.",
    "kid": "The token header must have a kid: the RFC 7638 thumbprint of the signing key, "
           "43 base64url characters.",
    "crit": "The token header must not have crit: this service supports no header extension.",
    "key-in-header": "The token header must not carry jwk, jku, x5u, x5c: the key is found by kid "
                     "alone.",
    "signature": "The token signature does not verify with a usable key registered under its kid "
                 "for its alg.",
    "key-revoked": "The key named by kid is revoked; sign with an active key of the partner.",
    "partner-suspended": "The partner owning this key is suspended; its requests are refused "
                         "until the operator activates it.",
    "wrong-issuer": "The iss claim must be the id of the partner that owns the key named by kid.",
    "wrong-audience": "The aud claim must be coalition, the audience of this service.",
    "lifetime": "The token lives too long: exp - iat must be at most 300 seconds.",
    "not-yet-valid": "The token is not valid yet: its iat (or nbf) lies more than 30 seconds in "
                     "the future; check the signer's clock.",
    "expired": "The token has expired: its exp lies more than 30 seconds in the past; sign a "
               "fresh token for every request.",
    "htm-post": "The htm claim must be the request method in upper case, here POST.",
    "htm-get": "The htm claim must be the request method in upper case, here GET.",
    "htu": "The htu claim must be the request path with its query string, e.g. /v1/earn, not a "
           "full URL.",
    "bsh": "The bsh claim must be the base64url SHA-256 of the exact body bytes, without padding "
           "(of no bytes for a request without a body).",
    "replayed": "This token was used already: every request, retries included, needs a fresh "
                "token with a new jti.",
}
# What each claim must be (token-claims-invalid names the claim and this).
CLAIM_RULES = {"iss": "a string", "aud": "a single string",
               "iat": "an integer, seconds since the epoch",
               "exp": "an integer, seconds since the epoch",
               "nbf": "an integer, seconds since the epoch",
               "jti": "a string of 1 to 64 characters",
               "htm": "a string", "htu": "a string", "bsh": "a string"}


def missing_claim(name: str) -> str:
    return f"The token has no {name} claim; it must be {CLAIM_RULES[name]}."


def wrong_claim(name: str) -> str:
    return f"The {name} claim must be {CLAIM_RULES[name]}."


DETAILS |= {"no-jti": missing_claim("jti"), "no-bsh": missing_claim("bsh"),
            "iat-type": wrong_claim("iat"), "exp-type": wrong_claim("exp"),
            "nbf-type": wrong_claim("nbf"), "iss-type": wrong_claim("iss"),
            "aud-type": wrong_claim("aud"), "jti-length": wrong_claim("jti"),
            "exp-after-iat": "The exp claim must be later than iat."}


# --- tokens built by hand ----------------------------------------------------------------------

def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def earn_body(claim_id: str | None = None) -> bytes:
    return compact({"claim_id": claim_id or "c-" + uuid.uuid4().hex, "member_id": MEMBER,
                    "points": 10, "occurred_at": ago(minutes=1)})


def token(partner, *, method="POST", path="/v1/earn", body=b"", header=None, claims=None,
          key=None, alg=None, header_json: bytes | None = None, payload_json: bytes | None = None) -> str:
    """A token as `partner` would sign it, with `header` and `claims` merged in (None removes
    a name); `key` and `alg` sign it otherwise; `*_json` replace the encoded text outright."""
    alg = alg or partner.client.algorithm
    iat = int(time.time())
    base_claims = {"iss": partner.id, "aud": "coalition", "iat": iat, "exp": iat + 120,
                   "jti": uuid.uuid4().hex, "htm": method, "htu": path,
                   "bsh": b64u(hashlib.sha256(body).digest())}
    base_header = {"alg": alg, "typ": "partner+jwt", "kid": partner.kid}
    merged_header = {k: v for k, v in (base_header | (header or {})).items() if v is not None}
    merged_claims = {k: v for k, v in (base_claims | (claims or {})).items() if v is not None}
    signing_input = (b64u(header_json or compact(merged_header)) + "."
                     + b64u(payload_json or compact(merged_claims))).encode()
    signer = get_default_algorithms()[alg if alg in ("ES256", "EdDSA") else "HS256"]
    signature = signer.sign(signing_input, key or partner.key)
    return f"{signing_input.decode()}.{b64u(signature)}"


def send(app, *, method="POST", path="/v1/earn", body=b"", authorization: str | None = None,
         request_id: str | None = None):
    headers = {"Content-Type": "application/json"} if body else {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if request_id is not None:
        headers["X-Request-Id"] = request_id
    with app.test_client() as client:
        return client.open(path, method=method, data=body, headers=headers)


def send_token(app, partner, *, method="POST", path="/v1/earn", body=None, request_id=None,
               **token_args):
    body = earn_body() if body is None and method == "POST" else (body or b"")
    signed = token(partner, method=method, path=path, body=body, **token_args)
    return send(app, method=method, path=path, body=body, authorization=f"Bearer {signed}",
                request_id=request_id)


def assert_refused(response, slug: str, detail: str) -> dict:
    """401 `slug` with exactly `detail`, repeated in the RFC 6750 challenge."""
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    doc = response.get_json()
    assert doc["type"] == f"/problems/{slug}", doc
    assert (doc["status"], doc["title"]) == SLUGS[slug] and SLUGS[slug][0] == 401
    assert doc["detail"] == detail
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer error="invalid_token", error_description="{detail}"')
    assert doc["request_id"] == response.headers["X-Request-Id"]
    return doc


@pytest.fixture
def member(acme):
    assert acme.client.enrol(MEMBER).status == 201
    return MEMBER


def set_state(app, partner, *, revoke=False, suspend=False):
    now = datetime.now(timezone.utc)
    with app.app_context():
        if revoke:
            partner_service.revoke_key(db.session, partner.id, partner.kid, now=now)
        if suspend:
            partner_service.set_status(db.session, partner.id, "suspended", now=now)
        db.session.commit()


# --- before the signature: the structural rule that broke ---------------------------------------

def test_no_authorization_header(app, acme):
    assert_refused(send(app, body=earn_body()), "invalid-token", DETAILS["no-authorization"])


@pytest.mark.parametrize("authorization", [
    "", "Basic YWNtZTpzZWNyZXQ=", "Bearer", "Bearer ", "Bearer  x.y.z", "Bearer a.b.c d", "DPoP x.y.z",
    "x.y.z", "Bearer\tx.y.z"])
def test_not_the_bearer_scheme(app, acme, authorization):
    assert_refused(send(app, body=earn_body(), authorization=authorization), "invalid-token",
                   DETAILS["not-bearer"])


@pytest.mark.parametrize("value", [
    "not-a-token", "a.b.c", "e30.e30.e30.e30", "eyJ!.e30.AA", b64u(b"[]") + ".e30.AA",
    b64u(b"{") + ".e30.AA", "\u00e9.\u00e9.\u00e9"])
def test_not_a_jwt(app, acme, value):
    """Not three base64url segments, or header and payload not JSON objects."""
    assert_refused(send(app, body=earn_body(), authorization=f"Bearer {value}"), "invalid-token",
                   DETAILS["not-a-jwt"])


def test_payload_that_is_no_json_object_is_not_a_jwt(app, acme):
    response = send_token(app, acme, payload_json=b"[1]")
    assert_refused(response, "invalid-token", DETAILS["not-a-jwt"])


def test_duplicate_names(app, acme):
    header = b'{"kid":"' + b"A" * 43 + b'",' + compact({"alg": "EdDSA", "typ": "partner+jwt",
                                                         "kid": acme.kid})[1:]
    assert_refused(send_token(app, acme, header_json=header), "invalid-token",
                   DETAILS["duplicate-header"])
    body = earn_body()
    claims = compact({"iss": acme.id, "aud": "coalition", "iat": int(time.time()),
                      "exp": int(time.time()) + 60, "jti": "j1", "htm": "POST", "htu": "/v1/earn",
                      "bsh": b64u(hashlib.sha256(body).digest())})
    payload = b'{"iss":"bolt",' + claims[1:]
    assert_refused(send_token(app, acme, body=body, payload_json=payload), "invalid-token",
                   DETAILS["duplicate-payload"])


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt", 1])
def test_typ(app, acme, typ):
    assert_refused(send_token(app, acme, header={"typ": typ}), "invalid-token", DETAILS["typ"])


@pytest.mark.parametrize("alg", ["none", "HS256", "eddsa", "RS256", None])
def test_algorithm_not_allowed(app, acme, alg):
    if alg == "HS256":
        response = send_token(app, acme, alg="HS256", key=b"k" * 32)
    else:
        response = send_token(app, acme, header={"alg": alg})
    assert_refused(response, "invalid-token", DETAILS["alg"])


@pytest.mark.parametrize("kid", [None, "", "short", 12345, "A" * 44, "../../etc/passwd",
                                 "A" * 42 + "\n"])
def test_no_or_malformed_kid(app, acme, kid):
    assert_refused(send_token(app, acme, header={"kid": kid}), "invalid-token", DETAILS["kid"])


def test_crit_header(app, acme):
    assert_refused(send_token(app, acme, header={"crit": ["exp"]}), "invalid-token",
                   DETAILS["crit"])


@pytest.mark.parametrize("name, value", [
    ("jwk", {"kty": "OKP", "crv": "Ed25519", "x": "AA"}), ("jku", "https://attacker.example/jwks"),
    ("x5u", "https://attacker.example/cert.pem"), ("x5c", ["MIIB"])])
def test_key_in_the_header(app, acme, name, value):
    assert_refused(send_token(app, acme, header={name: value}), "invalid-token",
                   DETAILS["key-in-header"])


# --- the signature: one answer whether or not the kid exists -------------------------------------

def test_unknown_kid_alg_mismatch_and_bad_signature_answer_byte_for_byte_alike(app, acme, member):
    stranger = new_key("EdDSA")
    other_family = new_key("ES256")
    answers = [
        # an unknown kid, signed by the key it names
        send_token(app, acme, header={"kid": jwk_thumbprint(stranger.public_key())}, key=stranger,
                   request_id=SAME_ID),
        # acme's kid, the other algorithm
        send_token(app, acme, alg="ES256", key=other_family, request_id=SAME_ID),
        # acme's kid and algorithm, another key's signature
        send_token(app, acme, key=new_key("EdDSA"), request_id=SAME_ID),
    ]
    for response in answers:
        assert_refused(response, "invalid-token", DETAILS["signature"])
    assert len({r.get_data() for r in answers}) == 1
    assert len({r.headers["WWW-Authenticate"] for r in answers}) == 1
    assert answers[0].get_json()["request_id"] == SAME_ID


@pytest.mark.parametrize("state", ["revoked", "suspended", "revoked-and-suspended"])
def test_revoked_or_suspended_with_a_wrong_signature_looks_like_a_bad_signature(app, acme, member,
                                                                               state):
    reference = send_token(app, acme, key=new_key("EdDSA"), request_id=SAME_ID)
    set_state(app, acme, revoke="revoked" in state, suspend="suspended" in state)
    for response in (send_token(app, acme, key=new_key("EdDSA"), request_id=SAME_ID),
                     send_token(app, acme, alg="ES256", key=new_key("ES256"), request_id=SAME_ID)):
        assert_refused(response, "invalid-token", DETAILS["signature"])
        assert response.get_data() == reference.get_data()


def test_a_revoked_key_with_its_own_signature_is_named(app, acme, member):
    set_state(app, acme, revoke=True)
    assert_refused(send_token(app, acme), "key-revoked", DETAILS["key-revoked"])
    assert_refused(acme_get(app, acme), "key-revoked", DETAILS["key-revoked"])


def test_a_suspended_partner_with_its_own_signature_is_named(app, acme, member):
    set_state(app, acme, suspend=True)
    assert_refused(send_token(app, acme), "partner-suspended", DETAILS["partner-suspended"])


def test_a_revoked_key_of_a_suspended_partner_learns_only_that_the_key_is_revoked(app, acme, member):
    set_state(app, acme, revoke=True, suspend=True)
    assert_refused(send_token(app, acme), "key-revoked", DETAILS["key-revoked"])


def acme_get(app, partner):
    return send_token(app, partner, method="GET", path=f"/v1/members/{MEMBER}/balance", body=b"")


# --- after the signature: each problem by name ---------------------------------------------------

def now() -> int:
    return int(time.time())


@pytest.mark.parametrize("claims, detail", [
    pytest.param({"jti": None}, "no-jti", id="jti-missing"),
    pytest.param({"bsh": None}, "no-bsh", id="bsh-missing"),
    pytest.param({"iat": "1700000000"}, "iat-type", id="iat-string"),
    pytest.param({"iat": True}, "iat-type", id="iat-boolean"),
    pytest.param({"exp": 1.5e9}, "exp-type", id="exp-float"),
    pytest.param({"nbf": "now"}, "nbf-type", id="nbf-string"),
    pytest.param({"iss": ["acme"]}, "iss-type", id="iss-list"),
    pytest.param({"aud": ["coalition"]}, "aud-type", id="aud-list"),
    pytest.param({"jti": ""}, "jti-length", id="jti-empty"),
    pytest.param({"jti": "j" * 65}, "jti-length", id="jti-65"),
    pytest.param({"jti": 7}, "jti-length", id="jti-integer"),
    pytest.param({"exp": "iat"}, "exp-type", id="exp-string"),
])
def test_claims_invalid(app, acme, member, claims, detail):
    assert_refused(send_token(app, acme, claims=claims), "token-claims-invalid", DETAILS[detail])


def test_exp_not_after_iat(app, acme, member):
    t = now()
    assert_refused(send_token(app, acme, claims={"iat": t, "exp": t}), "token-claims-invalid",
                   DETAILS["exp-after-iat"])


@pytest.mark.parametrize("claims", [
    pytest.param(lambda t: {"iat": t - 180, "exp": t - 60}, id="exp-passed"),
    pytest.param(lambda t: {"iat": t - 3700, "exp": t - 3600}, id="long-ago"),
])
def test_expired(app, acme, member, claims):
    assert_refused(send_token(app, acme, claims=claims(now())), "token-expired", DETAILS["expired"])


@pytest.mark.parametrize("claims", [
    pytest.param(lambda t: {"iat": t + 60, "exp": t + 180}, id="iat-future"),
    pytest.param(lambda t: {"nbf": t + 120}, id="nbf-future"),
])
def test_not_yet_valid(app, acme, member, claims):
    assert_refused(send_token(app, acme, claims=claims(now())), "token-not-yet-valid",
                   DETAILS["not-yet-valid"])


def test_lifetime_too_long(app, acme, member):
    t = now()
    assert_refused(send_token(app, acme, claims={"iat": t, "exp": t + 301}),
                   "token-lifetime-too-long", DETAILS["lifetime"])


def test_wrong_issuer(app, acme, bolt, member):
    assert_refused(send_token(app, acme, claims={"iss": bolt.id}), "token-wrong-issuer",
                   DETAILS["wrong-issuer"])


def test_wrong_audience(app, acme, member):
    assert_refused(send_token(app, acme, claims={"aud": "other-coalition"}),
                   "token-wrong-audience", DETAILS["wrong-audience"])


def test_htm_mismatch_names_the_request_method(app, acme, member):
    assert_refused(send_token(app, acme, claims={"htm": "post"}), "token-htm-mismatch",
                   DETAILS["htm-post"])
    get = send_token(app, acme, method="GET", path=f"/v1/members/{MEMBER}/balance", body=b"",
                     claims={"htm": "POST"})
    assert_refused(get, "token-htm-mismatch", DETAILS["htm-get"])


@pytest.mark.parametrize("htu", ["http://localhost/v1/earn", "/v1/burn", "/v1/earn?x=1",
                                 "/v1/earn/"])
def test_htu_mismatch(app, acme, member, htu):
    assert_refused(send_token(app, acme, claims={"htu": htu}), "token-htu-mismatch",
                   DETAILS["htu"])


def test_bsh_mismatch(app, acme, member):
    signed_body, sent_body = earn_body("c-1"), earn_body("c-2")
    signed = token(acme, body=signed_body)
    response = send(app, body=sent_body, authorization=f"Bearer {signed}")
    assert_refused(response, "token-bsh-mismatch", DETAILS["bsh"])
    padded = send_token(app, acme, claims={"bsh": b64u(hashlib.sha256(b"").digest()) + "="},
                        method="GET", path=f"/v1/members/{MEMBER}/balance", body=b"")
    assert_refused(padded, "token-bsh-mismatch", DETAILS["bsh"])


def test_replayed(app, acme, member):
    body = earn_body()
    signed = f"Bearer {token(acme, body=body)}"
    assert send(app, body=body, authorization=signed).status_code == 201
    assert_refused(send(app, body=body, authorization=signed), "token-replayed",
                   DETAILS["replayed"])


def test_every_authentication_slug_is_a_documented_401(app, acme):
    from partners.auth import COMMON
    from partners.tokens import SLUGS as AUTH_SLUGS
    assert set(AUTH_SLUGS) == {s for s, (status, _) in SLUGS.items() if status == 401}
    assert set(AUTH_SLUGS) <= set(COMMON)
    spec = app.test_client().get("/openapi.json").get_json()
    described = spec["paths"]["/v1/earn"]["post"]["responses"]["401"]["description"]
    assert all(f"`{slug}`" in described for slug in AUTH_SLUGS)


# --- the request id in every problem -------------------------------------------------------------

@pytest.mark.parametrize("case", ["no-token", "bad-signature", "not-found-route", "validation",
                                  "method-not-allowed", "unknown-member", "statement-not-found",
                                  "problem-of-the-app"])
def test_every_problem_carries_the_request_id_of_its_header(app, acme, case):
    if case == "no-token":
        response = send(app, body=earn_body())
    elif case == "bad-signature":
        response = send_token(app, acme, key=new_key("EdDSA"))
    elif case == "not-found-route":
        response = send(app, method="GET", path="/v1/nothing-here")
    elif case == "validation":
        response = send_token(app, acme, body=compact({"claim_id": "c", "member_id": MEMBER,
                                                        "points": "ten", "occurred_at": ago()}))
    elif case == "method-not-allowed":
        response = send(app, method="DELETE", path="/v1/earn")
    elif case == "unknown-member":
        response = send_token(app, acme, method="GET", path="/v1/members/nobody/balance", body=b"")
    elif case == "statement-not-found":
        response = send_token(app, acme, method="GET", path="/v1/statements/2020-01", body=b"")
    else:
        response = send(app, method="GET", path="/problems/no-such-slug")
    assert response.status_code >= 400 and response.mimetype == "application/problem+json"
    doc = response.get_json()
    assert doc["request_id"] == response.headers["X-Request-Id"] != ""


def test_the_request_id_a_client_sends_comes_back_in_the_problem(app, acme):
    response = send(app, body=earn_body(), request_id="till-7.req-42")
    assert response.headers["X-Request-Id"] == "till-7.req-42"
    assert response.get_json()["request_id"] == "till-7.req-42"
    # An id the service would not keep (too long) is replaced, in the header and the body alike.
    response = send(app, body=earn_body(), request_id="x" * 65)
    assert response.get_json()["request_id"] == response.headers["X-Request-Id"] != "x" * 65


def test_a_rate_limited_answer_carries_the_request_id(app):
    """Past the address's budget for failed authentication, the 401 becomes a 429."""
    limited = create_app({"SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
                          "TESTING": True, "RATELIMIT_ANONYMOUS": "2 per minute"})
    try:
        responses = [send(limited, body=earn_body()) for _ in range(3)]
    finally:
        with limited.app_context():
            db.session.remove()
            db.engine.dispose()
    assert [r.status_code for r in responses] == [401, 401, 429]
    doc = responses[-1].get_json()
    assert doc["type"] == "/problems/rate-limited"
    assert doc["request_id"] == responses[-1].headers["X-Request-Id"] != ""
