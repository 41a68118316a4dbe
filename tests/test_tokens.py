"""Signed partner requests (docs/partner-api.md, the token): every way a token can be wrong is
a 401.

Tokens are forged here with `cryptography` alone (not PyJWT, which the service verifies with),
so the forger shares no code with the verifier. A `Forge` starts as a well-formed earn request
for a member who already holds points; each case changes one thing (a header parameter, a
claim, the body, the URL, the Authorization header, the signature). Every rejected request must

* answer 401 with `WWW-Authenticate: Bearer error="invalid_token", error_description="..."`
  repeating the problem's detail,
* with the problem+json slug and detail that case expects (the wording is spelled out in
  tests/test_auth_errors.py): before the signature verifies `invalid-token` naming the broken
  rule, and one and the same answer for every token whose signature does not verify with a
  usable key (unknown kid, alg other than the key's, bad signature),
* and book nothing: no journal entry, the member's balance unchanged, the claim unknown (404)
  to its partner.

Positive controls prove that the forger produces tokens the service accepts, so a 401 below is
caused by the one thing that case changed.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select

from coalition import create_app
from coalition.database import db
from coalition.models import Entry, Member
from partners import service as partner_service
from partners.client import PartnerClient, jwk_thumbprint
from tests.conftest import ago, new_key, public_pem, transport_for
from tests.test_auth_errors import DETAILS, missing_claim, wrong_claim

MEMBER = "M-1"
SEED_POINTS = 50
TYP = "partner+jwt"


def pre(reason: str) -> tuple[str, str]:
    """A refusal before the signature verifies: `invalid-token`, naming the rule."""
    return "invalid-token", DETAILS[reason]


def wrong(claim: str) -> tuple[str, str]:
    return "token-claims-invalid", wrong_claim(claim)


BAD_SIGNATURE = pre("signature")
REPLAYED = ("token-replayed", DETAILS["replayed"])


# --- forging tokens without PyJWT ----------------------------------------------------------

def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def body_hash(body: bytes) -> str:
    return b64u(hashlib.sha256(body).digest())


def sign(alg: str, key: Any, data: bytes) -> bytes:
    """The signature bytes `alg` would produce; `key` is a private key or an HMAC secret."""
    if alg == "none":
        return b""
    if alg == "HS256":
        return hmac.new(key, data, hashlib.sha256).digest()
    if alg == "EdDSA":
        return key.sign(data)
    if alg in ("ES256", "ES256-DER"):
        der = key.sign(data, ec.ECDSA(hashes.SHA256()))
        if alg == "ES256-DER":
            return der
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS: raw r||s
    if alg == "RS256":
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    raise AssertionError(alg)


def public_jwk(private_key) -> dict:
    public = private_key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw)}
    numbers = public.public_numbers()
    return {"kty": "EC", "crv": "P-256", "x": b64u(numbers.x.to_bytes(32, "big")),
            "y": b64u(numbers.y.to_bytes(32, "big"))}


def earn_body(claim_id: str, points: int = 100) -> bytes:
    return compact_json({"claim_id": claim_id, "member_id": MEMBER, "points": points,
                         "occurred_at": ago(minutes=1)})


@dataclass
class Forge:
    """One request: its token's header and claims, how the token is signed, what is sent.

    The claims are computed from the original method, URL and body; a case that changes
    `method`, `url` or `body` afterwards sends something other than what was signed."""
    header: dict
    claims: dict
    key: Any
    alg: str  # how the signature is really computed, whatever header["alg"] says
    method: str
    url: str
    body: bytes
    claim_id: str
    authorization: Callable[[str], str | None] = field(default=lambda token: f"Bearer {token}")
    transform: Callable[[str], str] = field(default=lambda token: token)
    # Edits the JSON text of header and payload before signing (what a dict cannot hold).
    edit_json: Callable[[bytes, bytes], tuple[bytes, bytes]] = field(
        default=lambda header, payload: (header, payload))

    def token(self) -> str:
        header_json, payload = self.edit_json(compact_json(self.header), compact_json(self.claims))
        header = b64u(header_json)
        if self.header.get("b64") is False:  # RFC 7797 unencoded, detached payload
            signature = sign(self.alg, self.key, header.encode() + b"." + payload)
            return self.transform(f"{header}..{b64u(signature)}")
        signing_input = f"{header}.{b64u(payload)}"
        signature = sign(self.alg, self.key, signing_input.encode())
        return self.transform(f"{signing_input}.{b64u(signature)}")

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        authorization = self.authorization(self.token())
        if authorization is not None:
            headers["Authorization"] = authorization
        return headers


# --- the world every case runs in -----------------------------------------------------------

class World:
    def __init__(self, app, partner, other):
        self.app = app
        self.partner = partner  # the legitimate signer whose token each case corrupts
        self.other = other      # another partner, with the other algorithm
        self.partners = (partner, other)
        assert partner.client.enrol(MEMBER).status == 201
        seeded = partner.client.earn("seed", MEMBER, SEED_POINTS, occurred_at=ago(minutes=5))
        assert seeded.status == 201, seeded.json()

    def forge(self, partner=None, *, method="POST", path="/v1/earn", body=None,
              lifetime=120, now=None) -> Forge:
        partner = partner or self.partner
        claim_id = "c-" + uuid.uuid4().hex
        body = earn_body(claim_id) if body is None else body
        iat = int(time.time()) if now is None else now
        claims = {"iss": partner.id, "aud": "coalition", "iat": iat, "exp": iat + lifetime,
                  "jti": uuid.uuid4().hex, "htm": method, "htu": path, "bsh": body_hash(body)}
        header = {"alg": partner.client.algorithm, "typ": TYP, "kid": partner.kid}
        return Forge(header, claims, partner.key, partner.client.algorithm, method, path, body,
                     claim_id)

    def send_raw(self, method, url, body, headers):
        with self.app.test_client() as client:
            return client.open(url, method=method, data=body, headers=headers)

    def send(self, forge: Forge, headers: dict | None = None):
        return self.send_raw(forge.method, forge.url, forge.body, headers or forge.headers())

    def snapshot(self) -> tuple[int, int]:
        with self.app.app_context():
            entries = db.session.scalar(select(func.count()).select_from(Entry))
            balance = db.session.scalar(select(Member.balance).where(Member.external_id == MEMBER))
            db.session.rollback()
        return entries, balance

    @staticmethod
    def assert_refused(response, expected: tuple[str, str]) -> None:
        slug, detail = expected
        assert response.status_code == 401, response.get_data(as_text=True)
        assert response.headers.get("WWW-Authenticate") == (
            f'Bearer error="invalid_token", error_description="{detail}"')
        assert response.mimetype == "application/problem+json"
        problem = response.get_json()
        assert (problem["type"], problem["status"], problem["detail"]) == (
            f"/problems/{slug}", 401, detail), problem
        assert problem["request_id"] == response.headers["X-Request-Id"]

    def assert_nothing_booked(self, before: tuple[int, int], claim_id: str,
                              readers=None) -> None:
        """`readers`: partners still able to ask (default both); none of them knows the claim."""
        readers = readers or self.partners
        assert self.snapshot() == before
        with self.app.app_context():
            assert db.session.scalar(select(func.count()).select_from(Entry)
                                     .where(Entry.claim_id == claim_id)) == 0
            db.session.rollback()
        for partner in readers:
            assert partner.client.claim(claim_id).status == 404
        balance = readers[0].client.balance(MEMBER)
        assert balance.status == 200 and balance.json()["available"] == before[1]

    def assert_booked(self, response, forge: Forge, partner=None) -> None:
        partner = partner or self.partner
        assert response.status_code == 201, response.get_data(as_text=True)
        assert response.get_json()["claim_id"] == forge.claim_id
        assert response.get_json()["partner_id"] == partner.id
        assert partner.client.claim(forge.claim_id).status == 200


@pytest.fixture(params=["EdDSA", "ES256"])
def world(request, app, acme, bolt):
    """acme signs with EdDSA, bolt with ES256: every case runs once for each algorithm."""
    partner, other = (acme, bolt) if request.param == "EdDSA" else (bolt, acme)
    return World(app, partner, other)


def other_alg(alg: str) -> str:
    return "ES256" if alg == "EdDSA" else "EdDSA"


# --- the cases: each changes one thing of a well-formed request -----------------------------

def auth(value: Callable[[str], str | None]):
    def mutate(f: Forge, w: World):
        f.authorization = value
    return mutate


def set_header(**values):
    def mutate(f: Forge, w: World):
        f.header.update(values)
    return mutate


def drop_header(name):
    def mutate(f: Forge, w: World):
        del f.header[name]
    return mutate


def set_claims(**values):
    def mutate(f: Forge, w: World):
        f.claims.update({k: (v(f.claims) if callable(v) else v) for k, v in values.items()})
    return mutate


def drop_claim(name):
    def mutate(f: Forge, w: World):
        del f.claims[name]
    return mutate


def sign_with_alg(alg: str, *, header_alg: str | None = None):
    """Sign with a fresh key of `alg`, keeping the victim's kid."""
    def mutate(f: Forge, w: World):
        if alg == "RS256":
            f.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            f.key = new_key(alg)
        f.alg = alg
        f.header["alg"] = header_alg or alg
    return mutate


def other_algorithm_fresh_key(f: Forge, w: World):
    sign_with_alg(other_alg(f.alg))(f, w)


def other_algorithm_registered_key(f: Forge, w: World):
    """The victim's kid, but the other partner's (registered, valid) key and its algorithm."""
    f.key, f.alg = w.other.key, w.other.client.algorithm
    f.header["alg"] = f.alg


def hmac_with_public_pem(f: Forge, w: World):
    f.header["alg"], f.alg, f.key = "HS256", "HS256", public_pem(w.partner.key)


def alg_none(header_alg: str, keep_signature: bool = False):
    def mutate(f: Forge, w: World):
        f.header["alg"] = header_alg
        if not keep_signature:
            f.alg = "none"
    return mutate


def lowercase_alg(f: Forge, w: World):
    f.header["alg"] = f.alg.lower()


def unknown_kid(f: Forge, w: World):
    """A well-formed token of a key that was never registered."""
    f.key = new_key(f.alg)
    f.header["kid"] = jwk_thumbprint(f.key.public_key())


def kid_of_other_partner_same_signature(f: Forge, w: World):
    f.header["kid"] = w.other.kid


def kid_with_newline(f: Forge, w: World):
    f.header["kid"] = w.partner.kid + "\n"


def kid_swapcase(f: Forge, w: World):
    f.header["kid"] = w.partner.kid.swapcase()


def different_key_right_kid(f: Forge, w: World):
    f.key = new_key(f.alg)


def legit_jwk(f: Forge, w: World):
    f.header["jwk"] = public_jwk(f.key)


def attacker_embedded_jwk(f: Forge, w: World):
    """CVE-2018-0114 style: sign with our own key and ship it in the header."""
    f.key = new_key(f.alg)
    f.header["jwk"] = public_jwk(f.key)


def attacker_jku(f: Forge, w: World):
    f.key = new_key(f.alg)
    f.header["jku"] = "https://attacker.example/jwks.json"
    f.header["kid"] = jwk_thumbprint(f.key.public_key())


def unencoded_payload(f: Forge, w: World):
    f.header.update({"b64": False, "crit": ["b64"]})


def empty_signature(f: Forge, w: World):
    f.transform = lambda t: t.rsplit(".", 1)[0] + "."


def truncated_signature(f: Forge, w: World):
    f.transform = lambda t: t[:-4]


def spliced_signature(f: Forge, w: World):
    """The signature of another (valid) token of the same partner."""
    donor = w.forge()
    donor_signature = donor.token().rsplit(".", 1)[1]
    f.transform = lambda t: t.rsplit(".", 1)[0] + "." + donor_signature


def tampered_payload(f: Forge, w: World):
    """Signed as it was, then the payload is swapped for one with more lifetime."""
    forged = dict(f.claims, exp=f.claims["exp"] + 100)

    def swap(token: str) -> str:
        header, _, signature = token.split(".")
        return f"{header}.{b64u(compact_json(forged))}.{signature}"
    f.transform = swap


def header_not_object(f: Forge, w: World):
    f.transform = lambda t: b64u(b"[]") + t[t.index("."):]


def header_not_json(f: Forge, w: World):
    f.transform = lambda t: b64u(b'{"alg":"EdDSA",') + t[t.index("."):]


def changed_body(f: Forge, w: World):
    f.body = earn_body(f.claim_id, points=100_000)


def duplicate_in_header(name: str, first_value):
    """`name` twice in the header: first `first_value`, then the right value (last wins in
    a lax parser, so the token would pass)."""
    def mutate(f: Forge, w: World):
        def edit(header: bytes, payload: bytes):
            return b"{" + compact_json({name: first_value})[1:-1] + b"," + header[1:], payload
        f.edit_json = edit
    return mutate


def duplicate_in_payload(name: str, first_value):
    def mutate(f: Forge, w: World):
        def edit(header: bytes, payload: bytes):
            return header, b"{" + compact_json({name: first_value})[1:-1] + b"," + payload[1:]
        f.edit_json = edit
    return mutate


def send_to(url: str, method: str | None = None):
    def mutate(f: Forge, w: World):
        f.url = url
        if method:
            f.method = method
    return mutate


def now() -> int:
    return int(time.time())


# (id, mutation, fails before the signature is verified)
CASES: list[tuple[str, Callable[[Forge, World], None], bool]] = [
    # Authorization header
    ("no-authorization", auth(lambda t: None), pre("no-authorization")),
    ("empty-authorization", auth(lambda t: ""), pre("not-bearer")),
    ("basic-scheme", auth(lambda t: "Basic " + base64.b64encode(b"acme:secret").decode()), pre("not-bearer")),
    ("basic-scheme-with-token", auth(lambda t: f"Basic {t}"), pre("not-bearer")),
    ("dpop-scheme", auth(lambda t: f"DPoP {t}"), pre("not-bearer")),
    ("token-without-scheme", auth(lambda t: t), pre("not-bearer")),
    ("bearer-without-token", auth(lambda t: "Bearer"), pre("not-bearer")),
    ("bearer-empty-token", auth(lambda t: "Bearer "), pre("not-bearer")),
    ("two-spaces", auth(lambda t: f"Bearer  {t}"), pre("not-bearer")),
    ("space-inside-token", auth(lambda t: f"Bearer {t[:20]} {t[20:]}"), pre("not-bearer")),
    ("tab-separator", auth(lambda t: f"Bearer\t{t}"), pre("not-bearer")),
    ("two-tokens", auth(lambda t: f"Bearer {t}, Bearer {t}"), pre("not-bearer")),
    # not a JWS at all
    ("garbage", auth(lambda t: "Bearer not-a-token"), pre("not-a-jwt")),
    ("garbage-three-segments", auth(lambda t: "Bearer a.b.c"), pre("not-a-jwt")),
    ("empty-header-and-payload", auth(lambda t: "Bearer e30.e30."), pre("typ")),
    ("jwe-five-segments", auth(lambda t: f"Bearer {t}.AAAA.BBBB"), pre("not-a-jwt")),
    ("two-segments", auth(lambda t: "Bearer " + t.rsplit(".", 1)[0]), pre("not-a-jwt")),
    ("invalid-base64", auth(lambda t: "Bearer " + t.replace(".", "!.", 1)), pre("not-a-jwt")),
    ("header-not-object", header_not_object, pre("not-a-jwt")),
    ("header-not-json", header_not_json, pre("not-a-jwt")),
    ("header-deeply-nested", lambda f, w: setattr(
        f, "transform", lambda t: b64u(b"[" * 100_000 + b"]" * 100_000) + t[t.index("."):]), pre("not-a-jwt")),
    ("non-ascii-token", auth(lambda t: f"Bearer {t[:-2]}\u00e9\u00e9"), pre("not-a-jwt")),
    # alg
    ("alg-none", alg_none("none"), pre("alg")),
    ("alg-None", alg_none("None"), pre("alg")),
    ("alg-NONE", alg_none("NONE"), pre("alg")),
    ("alg-none-with-signature", alg_none("none", keep_signature=True), pre("alg")),
    ("alg-missing", drop_header("alg"), pre("alg")),
    ("alg-null", set_header(alg=None), pre("alg")),
    ("alg-lowercase", lowercase_alg, pre("alg")),
    ("alg-list", lambda f, w: f.header.update(alg=[f.alg]), pre("alg")),
    ("hs256-public-pem-secret", hmac_with_public_pem, pre("alg")),
    ("other-alg-fresh-key", other_algorithm_fresh_key, BAD_SIGNATURE),
    ("other-alg-registered-key", other_algorithm_registered_key, BAD_SIGNATURE),
    ("rs256", sign_with_alg("RS256"), pre("alg")),
    # kid
    ("unknown-kid", unknown_kid, BAD_SIGNATURE),
    ("kid-missing", drop_header("kid"), pre("kid")),
    ("kid-null", set_header(kid=None), pre("kid")),
    ("kid-integer", set_header(kid=12345), pre("kid")),
    ("kid-list", lambda f, w: f.header.update(kid=[w.partner.kid]), pre("kid")),
    ("kid-object", lambda f, w: f.header.update(kid={"kid": w.partner.kid}), pre("kid")),
    ("kid-empty", set_header(kid=""), pre("kid")),
    ("kid-path-traversal", set_header(kid="../../etc/passwd"), pre("kid")),
    ("kid-path-traversal-43", set_header(kid="../../../../../../../../../../../etc/passwd"), pre("kid")),
    ("kid-sql-injection", set_header(kid="' OR 1=1--"), pre("kid")),
    ("kid-sql-union", set_header(kid="x' UNION SELECT kid FROM partner_keys--"), pre("kid")),
    ("kid-like-wildcards", set_header(kid="_" * 43), BAD_SIGNATURE),
    ("kid-very-long", set_header(kid="A" * 10_000), pre("kid")),
    ("kid-trailing-newline", kid_with_newline, pre("kid")),
    ("kid-swapcase", kid_swapcase, BAD_SIGNATURE),
    ("kid-of-other-partner", kid_of_other_partner_same_signature, BAD_SIGNATURE),
    # header parameters that would let the token choose its own key, or that we do not honour
    ("jwk-legit-key", legit_jwk, pre("key-in-header")),
    ("jwk-attacker-key", attacker_embedded_jwk, pre("key-in-header")),
    ("jku", set_header(jku="https://attacker.example/jwks.json"), pre("key-in-header")),
    ("jku-attacker-key", attacker_jku, pre("key-in-header")),
    ("x5u", set_header(x5u="https://attacker.example/cert.pem"), pre("key-in-header")),
    ("x5c", set_header(x5c=["MIIBszCCAVmgAwIBAgIUQ3"]), pre("key-in-header")),
    ("crit-unknown", set_header(crit=["urn:example:policy"], **{"urn:example:policy": 1}), pre("crit")),
    ("crit-registered-claim", lambda f, w: f.header.update(crit=["exp"], exp=f.claims["exp"]), pre("crit")),
    ("crit-b64-unencoded-payload", unencoded_payload, pre("crit")),
    # duplicate names: whichever value a parser keeps, the token is refused
    ("header-duplicate-kid", duplicate_in_header("kid", "A" * 43), pre("duplicate-header")),
    ("header-duplicate-alg", duplicate_in_header("alg", "none"), pre("duplicate-header")),
    ("header-duplicate-typ", duplicate_in_header("typ", "JWT"), pre("duplicate-header")),
    ("payload-duplicate-iss", lambda f, w: duplicate_in_payload("iss", w.other.id)(f, w), pre("duplicate-payload")),
    ("payload-duplicate-aud", duplicate_in_payload("aud", "other-coalition"), pre("duplicate-payload")),
    ("payload-duplicate-bsh", duplicate_in_payload("bsh", body_hash(b"{}")), pre("duplicate-payload")),
    ("payload-duplicate-jti", duplicate_in_payload("jti", "an-earlier-jti"), pre("duplicate-payload")),
    ("payload-not-object", lambda f, w: setattr(
        f, "edit_json", lambda header, payload: (header, b"[" + payload + b"]")), pre("not-a-jwt")),
    # typ
    ("typ-missing", drop_header("typ"), pre("typ")),
    ("typ-jwt", set_header(typ="JWT"), pre("typ")),
    ("typ-access-token", set_header(typ="at+jwt"), pre("typ")),
    ("typ-null", set_header(typ=None), pre("typ")),
    ("typ-integer", set_header(typ=1), pre("typ")),
    # signature
    ("different-key-right-kid", different_key_right_kid, BAD_SIGNATURE),
    ("empty-signature", empty_signature, BAD_SIGNATURE),
    ("truncated-signature", truncated_signature, BAD_SIGNATURE),
    ("spliced-signature", spliced_signature, BAD_SIGNATURE),
    ("payload-tampered-after-signing", tampered_payload, BAD_SIGNATURE),
    # iss
    ("iss-other-partner", lambda f, w: f.claims.update(iss=w.other.id), ("token-wrong-issuer", DETAILS["wrong-issuer"])),
    ("iss-unknown", set_claims(iss="nobody"), ("token-wrong-issuer", DETAILS["wrong-issuer"])),
    ("iss-uppercase", set_claims(iss=lambda c: c["iss"].upper()), ("token-wrong-issuer", DETAILS["wrong-issuer"])),
    ("iss-prefix", set_claims(iss=lambda c: c["iss"][:2]), ("token-wrong-issuer", DETAILS["wrong-issuer"])),
    ("iss-empty", set_claims(iss=""), ("token-wrong-issuer", DETAILS["wrong-issuer"])),
    ("iss-list", set_claims(iss=lambda c: [c["iss"]]), wrong("iss")),
    # times
    ("expired", set_claims(iat=lambda c: now() - 180, exp=lambda c: now() - 60), ("token-expired", DETAILS["expired"])),
    ("expired-long-ago", set_claims(iat=lambda c: now() - 3700, exp=lambda c: now() - 3600), ("token-expired", DETAILS["expired"])),
    ("lifetime-301", set_claims(exp=lambda c: c["iat"] + 301), ("token-lifetime-too-long", DETAILS["lifetime"])),
    ("lifetime-one-day", set_claims(exp=lambda c: c["iat"] + 86_400), ("token-lifetime-too-long", DETAILS["lifetime"])),
    ("exp-equals-iat", set_claims(exp=lambda c: c["iat"]), ("token-claims-invalid", DETAILS["exp-after-iat"])),
    ("exp-before-iat", set_claims(iat=lambda c: now(), exp=lambda c: now() - 1), ("token-claims-invalid", DETAILS["exp-after-iat"])),
    ("iat-future-beyond-leeway", set_claims(iat=lambda c: now() + 60, exp=lambda c: now() + 180), ("token-not-yet-valid", DETAILS["not-yet-valid"])),
    ("iat-far-future", set_claims(iat=lambda c: now() + 86_400, exp=lambda c: now() + 86_500), ("token-not-yet-valid", DETAILS["not-yet-valid"])),
    ("exp-string", set_claims(exp=lambda c: str(c["exp"])), wrong("exp")),
    ("iat-string", set_claims(iat=lambda c: str(c["iat"])), wrong("iat")),
    ("iat-float", set_claims(iat=lambda c: c["iat"] + 0.5), wrong("iat")),
    ("exp-float", set_claims(exp=lambda c: c["exp"] + 0.5), wrong("exp")),
    ("iat-boolean", set_claims(iat=True), wrong("iat")),
    ("exp-list", set_claims(exp=lambda c: [c["exp"]]), wrong("exp")),
    ("exp-NaN", set_claims(exp=float("nan")), wrong("exp")),
    ("exp-Infinity", set_claims(exp=float("inf")), wrong("exp")),
    ("iat-minus-Infinity", set_claims(iat=float("-inf")), wrong("iat")),
    ("exp-huge-integer", set_claims(exp=10 ** 400), ("token-lifetime-too-long", DETAILS["lifetime"])),
    ("iat-huge-negative-integer", set_claims(iat=-(10 ** 400)), ("token-lifetime-too-long", DETAILS["lifetime"])),
    # aud
    ("aud-wrong", set_claims(aud="other-coalition"), ("token-wrong-audience", DETAILS["wrong-audience"])),
    ("aud-case", set_claims(aud="Coalition"), ("token-wrong-audience", DETAILS["wrong-audience"])),
    ("aud-empty", set_claims(aud=""), ("token-wrong-audience", DETAILS["wrong-audience"])),
    ("aud-list-with-right-audience", set_claims(aud=["coalition"]), wrong("aud")),
    ("aud-list-with-right-and-other", set_claims(aud=["coalition", "other"]), wrong("aud")),
    # every claim is required
    *[(f"missing-{name}", drop_claim(name), ("token-claims-invalid", missing_claim(name)))
      for name in ("iss", "aud", "iat", "exp", "jti", "htm", "htu", "bsh")],
    *[(f"null-{name}", set_claims(**{name: None}), wrong(name)) for name in ("iss", "jti", "bsh")],
    # jti
    ("jti-65-chars", set_claims(jti="j" * 65), wrong("jti")),
    ("jti-very-long", set_claims(jti="j" * 5000), wrong("jti")),
    ("jti-empty", set_claims(jti=""), wrong("jti")),
    ("jti-integer", set_claims(jti=12345), wrong("jti")),
    ("jti-list", set_claims(jti=["a"]), wrong("jti")),
    # htm / htu / bsh bind the token to this one request
    ("body-changed-after-signing", changed_body, ("token-bsh-mismatch", DETAILS["bsh"])),
    ("bsh-with-padding", set_claims(bsh=lambda c: c["bsh"] + "="), ("token-bsh-mismatch", DETAILS["bsh"])),
    ("bsh-hex", set_claims(bsh=lambda c: base64.urlsafe_b64decode(c["bsh"] + "=").hex()), ("token-bsh-mismatch", DETAILS["bsh"])),
    ("bsh-of-empty-body", set_claims(bsh=body_hash(b"")), ("token-bsh-mismatch", DETAILS["bsh"])),
    ("htu-other-path", set_claims(htu="/v1/burn"), ("token-htu-mismatch", DETAILS["htu"])),
    ("query-added", send_to("/v1/earn?x=1"), ("token-htu-mismatch", DETAILS["htu"])),
    ("query-removed", lambda f, w: (f.claims.update(htu="/v1/earn?x=1")), ("token-htu-mismatch", DETAILS["htu"])),
    ("query-changed", lambda f, w: (f.claims.update(htu="/v1/earn?x=1"), send_to("/v1/earn?x=2")(f, w)), ("token-htu-mismatch", DETAILS["htu"])),
    ("htu-absolute-url", set_claims(htu="http://localhost/v1/earn"), ("token-htu-mismatch", DETAILS["htu"])),
    ("htu-trailing-slash", set_claims(htu="/v1/earn/"), ("token-htu-mismatch", DETAILS["htu"])),
    ("htu-list", set_claims(htu=["/v1/earn"]), wrong("htu")),
    ("htm-get-on-post", set_claims(htm="GET"), ("token-htm-mismatch", DETAILS["htm-post"])),
    ("htm-lowercase", set_claims(htm="post"), ("token-htm-mismatch", DETAILS["htm-post"])),
    ("htm-list", set_claims(htm=["POST"]), wrong("htm")),
]


@pytest.mark.parametrize("mutate,expected", [pytest.param(m, e, id=i) for i, m, e in CASES])
def test_rejected(world, mutate, expected):
    forge = world.forge()
    mutate(forge, world)
    before = world.snapshot()
    response = world.send(forge)
    world.assert_refused(response, expected)
    world.assert_nothing_booked(before, forge.claim_id)


# --- positive controls: the forger's tokens are accepted when nothing is wrong --------------

def test_well_formed_token_is_accepted(world):
    forge = world.forge()
    before = world.snapshot()
    response = world.send(forge)
    world.assert_booked(response, forge)
    assert world.snapshot() == (before[0] + 1, before[1] + 100)
    with pytest.raises(AssertionError):  # the check the rejections rely on does see a booking
        world.assert_nothing_booked(before, forge.claim_id)


def test_reference_client_token_is_accepted(world):
    forge = world.forge()
    response = world.send(forge, world.partner.client.sign("POST", "/v1/earn", forge.body)
                          | {"Content-Type": "application/json"})
    world.assert_booked(response, forge)


@pytest.mark.parametrize("mutate", [
    pytest.param(set_claims(iat=lambda c: now() - 130, exp=lambda c: now() - 10),
                 id="exp-passed-within-leeway"),
    pytest.param(set_claims(iat=lambda c: now() + 15, exp=lambda c: now() + 135),
                 id="iat-future-within-leeway"),
    pytest.param(set_claims(exp=lambda c: c["iat"] + 300), id="lifetime-exactly-300"),
    pytest.param(set_claims(exp=lambda c: c["iat"] + 1), id="lifetime-1"),
    pytest.param(set_claims(jti="j" * 64), id="jti-64-chars"),
    pytest.param(set_claims(jti="j"), id="jti-1-char"),
    pytest.param(lambda f, w: (f.claims.update(htu="/v1/earn?x=1&y=a%20b"),
                               send_to("/v1/earn?x=1&y=a%20b")(f, w)), id="htu-with-query"),
    pytest.param(lambda f, w: f.header.update(extra="ignored"), id="unknown-non-crit-header"),
    # RFC 9110 11.1: the auth-scheme name is case-insensitive.
    pytest.param(auth(lambda t: f"bearer {t}"), id="lowercase-bearer"),
    pytest.param(auth(lambda t: f"BEARER {t}"), id="uppercase-bearer"),
    pytest.param(lambda f, w: f.claims.update(sub="till-7", nbf=f.claims["iat"]),
                 id="extra-claims"),
])
def test_accepted_at_the_edges(world, mutate):
    forge = world.forge()
    mutate(forge, world)
    world.assert_booked(world.send(forge), forge)


def test_get_is_signed_over_the_empty_body(world):
    claim_id = "seed"
    good = world.forge(method="GET", path=f"/v1/claims/{claim_id}", body=b"")
    assert world.send(good).status_code == 200
    wrong = world.forge(method="GET", path=f"/v1/claims/{claim_id}", body=b"")
    wrong.claims["bsh"] = body_hash(b"{}")
    world.assert_refused(world.send(wrong), ("token-bsh-mismatch", DETAILS["bsh"]))


def test_es256_signature_must_be_raw_not_der(app, bolt, acme):
    w = World(app, bolt, acme)
    raw = w.forge()
    w.assert_booked(w.send(raw), raw)
    der = w.forge()
    der.alg = "ES256-DER"
    before = w.snapshot()
    w.assert_refused(w.send(der), BAD_SIGNATURE)
    w.assert_nothing_booked(before, der.claim_id)


# --- replay ---------------------------------------------------------------------------------

def test_replayed_token_is_rejected_and_books_once(world, runner, verify_clean):
    forge = world.forge()
    headers = forge.headers()  # one token, sent twice
    world.assert_booked(world.send(forge, headers), forge)
    after_first = world.snapshot()
    second = world.send(forge, headers)
    world.assert_refused(second, REPLAYED)
    assert "Idempotent-Replayed" not in second.headers
    assert world.snapshot() == after_first
    # pruning only removes dead tokens: the jti of a live one stays spent
    assert runner.invoke(args=["partners", "prune-tokens"]).exit_code == 0
    world.assert_refused(world.send(forge, headers), REPLAYED)
    assert world.snapshot() == after_first
    # the same body under a fresh token is an idempotent retry, not a second booking
    retry = world.forge(body=forge.body)
    retry.claim_id = forge.claim_id
    response = world.send(retry)
    assert response.status_code == 201 and response.headers.get("Idempotent-Replayed") == "true"
    assert world.snapshot() == after_first
    verify_clean()


def test_jti_stays_spent_while_the_token_is_within_the_leeway(world, runner):
    """exp has passed but the 30 s leeway still accepts the token: pruning must keep its jti."""
    forge = world.forge(now=now() - 130)  # exp = now - 10
    headers = forge.headers()
    world.assert_booked(world.send(forge, headers), forge)
    after_first = world.snapshot()
    assert cli(runner, "partners", "prune-tokens")["pruned"] == 0
    replay = world.send(forge, headers)
    world.assert_refused(replay, REPLAYED)
    assert "Idempotent-Replayed" not in replay.headers
    assert world.snapshot() == after_first


def test_replay_of_a_token_whose_first_use_failed_validation(world):
    body = compact_json({"claim_id": "c-bad", "member_id": MEMBER, "points": "100",
                         "occurred_at": ago(minutes=1)})
    forge = world.forge(body=body)
    forge.claim_id = "c-bad"
    headers = forge.headers()
    before = world.snapshot()
    first = world.send(forge, headers)
    assert first.status_code == 422, first.get_data(as_text=True)
    assert first.get_json()["type"].endswith("/validation-error")
    again = world.send(forge, headers)
    world.assert_refused(again, REPLAYED)
    # a fresh token over the same body is evaluated afresh: the 401 was the replay
    assert world.send(world.forge(body=body)).status_code == 422
    world.assert_nothing_booked(before, "c-bad")


def test_replay_of_a_token_whose_first_use_was_not_found(world):
    body = compact_json({"claim_id": "c-x", "member_id": "M-nobody", "points": 5,
                         "occurred_at": ago(minutes=1)})
    forge = world.forge(body=body)
    headers = forge.headers()
    assert world.send(forge, headers).status_code == 404
    world.assert_refused(world.send(forge, headers), REPLAYED)


def test_replay_across_app_instances_sharing_the_database(world):
    other = create_app({"SQLALCHEMY_DATABASE_URI": world.app.config["SQLALCHEMY_DATABASE_URI"],
                        "TESTING": True})
    try:
        forge = world.forge()
        headers = forge.headers()
        world.assert_booked(world.send(forge, headers), forge)
        after_first = world.snapshot()
        with other.test_client() as client:
            replay = client.open(forge.url, method="POST", data=forge.body, headers=headers)
            world.assert_refused(replay, REPLAYED)
            assert world.snapshot() == after_first
            # the second instance does accept fresh tokens: the 401 above was the replay
            fresh = world.forge()
            accepted = client.open(fresh.url, method="POST", data=fresh.body,
                                   headers=fresh.headers())
            assert accepted.status_code == 201, accepted.get_data(as_text=True)
        # and the other way round: a token first used on the second instance
        forge = world.forge()
        headers = forge.headers()
        with other.test_client() as client:
            assert client.open(forge.url, method="POST", data=forge.body,
                               headers=headers).status_code == 201
        world.assert_refused(world.send(forge, headers), REPLAYED)
    finally:
        with other.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.mark.timeout(120)
def test_concurrent_replay_books_once(world, verify_clean):
    forge = world.forge()
    headers = forge.headers()
    before = world.snapshot()
    threads_n = 8
    barrier = threading.Barrier(threads_n)
    statuses: list[int] = []
    lock = threading.Lock()

    def fire():
        with world.app.test_client() as client:
            barrier.wait()
            response = client.open(forge.url, method="POST", data=forge.body, headers=headers)
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=fire) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=100)
    assert sorted(statuses) == [201] + [401] * (threads_n - 1)
    assert world.snapshot() == (before[0] + 1, before[1] + 100)
    verify_clean()


# --- operator actions: revocation, rotation, suspension --------------------------------------

def cli(runner, *args):
    result = runner.invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_revoked_key_is_rejected_and_a_rotated_key_still_works(world, runner, tmp_path):
    partner = world.partner
    new = new_key(partner.client.algorithm)
    (tmp_path / "new.pub").write_bytes(public_pem(new))
    added = cli(runner, "partners", "add-key", partner.id, "--public-key", str(tmp_path / "new.pub"))
    assert added["kid"] == jwk_thumbprint(new.public_key())
    rotated = type(partner)(partner.id, new, added["kid"],
                            PartnerClient("", partner.id, new, transport=transport_for(world.app)))
    # both keys work while both are active
    for signer in (partner, rotated):
        forge = world.forge(signer)
        world.assert_booked(world.send(forge), forge, signer)
    signed_before_revocation = world.forge(partner)
    assert cli(runner, "partners", "revoke-key", partner.id, "--", partner.kid)["state"] == "revoked"
    before = world.snapshot()
    # takes effect on the very next request, also for a token signed before the revocation
    for forge in (signed_before_revocation, world.forge(partner)):
        world.assert_refused(world.send(forge), ("key-revoked", DETAILS["key-revoked"]))
        world.assert_nothing_booked(before, forge.claim_id, readers=(rotated, world.other))
    # the rotated key of the same partner still works
    forge = world.forge(rotated)
    world.assert_booked(world.send(forge), forge, rotated)
    assert world.snapshot() == (before[0] + 1, before[1] + 100)
    # the revoked key stays revoked in the registry
    shown = cli(runner, "partners", "show", partner.id)
    states = {key["kid"]: key["state"] for key in shown["keys"]}
    assert states == {partner.kid: "revoked", rotated.kid: "active"}


def test_suspended_partner_is_rejected_until_activated(world, runner):
    partner = world.partner
    signed_before = world.forge()
    assert cli(runner, "partners", "suspend", partner.id)["status"] == "suspended"
    before = world.snapshot()
    suspended = ("partner-suspended", DETAILS["partner-suspended"])
    for forge in (signed_before, world.forge()):
        world.assert_refused(world.send(forge), suspended)
        world.assert_nothing_booked(before, forge.claim_id, readers=(world.other,))
    # GETs too, and the suspension is the partner's alone
    world.assert_refused(
        world.send(world.forge(method="GET", path="/v1/members/M-1/balance", body=b"")), suspended)
    other = world.forge(world.other)
    world.assert_booked(world.send(other), other, world.other)
    assert cli(runner, "partners", "activate", partner.id)["status"] == "active"
    forge = world.forge()
    world.assert_booked(world.send(forge), forge)


# --- a rejection's cost does not tell which keys exist ---------------------------------------

@pytest.fixture
def verifications(monkeypatch):
    """Every signature verification PyJWT runs, as (algorithm family, key is registered)."""
    import jwt.algorithms as algorithms
    calls: list[str] = []
    for cls in (algorithms.ECAlgorithm, algorithms.OKPAlgorithm):
        original = cls.verify

        def verify(self, msg, key, sig, _original=original, _name=cls.__name__):
            calls.append(_name)
            return _original(self, msg, key, sig)
        monkeypatch.setattr(cls, "verify", verify)
    return calls


def unusable_kid(how: str):
    def mutate(f: Forge, w: World):
        now_ = datetime.now(timezone.utc)
        with w.app.app_context():
            if how == "revoked":
                partner_service.revoke_key(db.session, w.partner.id, w.partner.kid, now=now_)
            elif how == "suspended":
                partner_service.set_status(db.session, w.partner.id, "suspended", now=now_)
            db.session.commit()
    return mutate


FAMILY = {"EdDSA": "OKPAlgorithm", "ES256": "ECAlgorithm"}


@pytest.mark.parametrize("case", [
    "active-kid-bad-signature", "unknown-kid", "alg-of-other-family", "revoked-kid-bad-signature",
    "suspended-partner-bad-signature", "revoked-kid-alg-of-other-family", "revoked-kid",
    "suspended-partner"])
def test_every_unusable_kid_costs_one_signature_verification(world, verifications, case):
    """An unknown kid, a revoked kid and an active kid with a bad signature must take the same
    time: each runs exactly one signature verification of the token's algorithm (against a
    dummy key where no usable key exists), so timing cannot tell a caller whether a key is
    active. A revoked key or a suspended partner is verified against its own key: only a
    signature that holds names the reason. Counted, not timed: bench/token_rejection_timing.py
    measures the medians."""
    forge = world.forge()
    header_alg = forge.header["alg"]
    expected = BAD_SIGNATURE
    if case.endswith("bad-signature"):
        different_key_right_kid(forge, world)
    elif case == "unknown-kid":
        unknown_kid(forge, world)
    elif case.endswith("alg-of-other-family"):  # a registered kid, the other algorithm in the header
        header_alg = other_alg(forge.alg)
        forge.key, forge.alg = new_key(header_alg), header_alg
        forge.header["alg"] = header_alg
    else:
        expected = {"revoked": ("key-revoked", DETAILS["key-revoked"]),
                    "suspended": ("partner-suspended", DETAILS["partner-suspended"])}[
                        case.split("-")[0]]
    if case.startswith(("revoked", "suspended")):
        unusable_kid(case.split("-")[0])(forge, world)
    response = world.send(forge)
    world.assert_refused(response, expected)
    assert verifications == [FAMILY[header_alg]]


def test_an_accepted_token_costs_one_signature_verification(world, verifications):
    forge = world.forge()
    world.assert_booked(world.send(forge), forge)
    assert verifications[0] == FAMILY[forge.alg]
