"""Verification of signed partner requests, exactly as API.md section 1 says.

The algorithm comes from the stored key, never from the token. Until the signature has been
verified every failure is the same 401, so a caller learns nothing about which keys exist;
the precise reason goes to the log (never the token itself).

Nor does the time a rejection takes tell: an unknown kid, the kid of a revoked key or of a
suspended partner, and an algorithm other than the key's all run one signature verification,
against a dummy key of the token's algorithm, like an active kid with a bad signature does.
Header and payload are JSON objects without duplicate names (as request bodies are): with
duplicates, which value counts would depend on the parser.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import unquote

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from coalition.errors import Problem

from .keys import PublicKey, load_public_key
from .models import Partner, PartnerKey, UsedToken

log = logging.getLogger("partners.tokens")

TYP = "partner+jwt"
ALGORITHMS = ("ES256", "EdDSA")
FORBIDDEN_HEADER_PARAMS = frozenset({"jwk", "jku", "x5u", "x5c", "crit"})  # we honour no crit
REQUIRED_CLAIMS = ("iss", "aud", "iat", "exp", "jti", "htm", "htu", "bsh")
MAX_LIFETIME = 300
LEEWAY = 30
KID = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url of a SHA-256 digest
CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
# Stand-ins for keys that cannot be used: verifying against one costs what a real key costs.
# Their private halves are dropped at once, so nothing ever verifies against them.
DUMMY_KEYS: dict[str, PublicKey] = {
    "EdDSA": ed25519.Ed25519PrivateKey.generate().public_key(),
    "ES256": ec.generate_private_key(ec.SECP256R1()).public_key(),
}


@dataclass(frozen=True)
class Caller:
    partner_id: str
    kid: str
    jti: str
    expires_at: datetime  # after this the token is dead anyway: its jti row can be pruned


class InvalidToken(Exception):
    """Internal reason for a 401; never shown to the caller."""


def unauthorized() -> Problem:
    return Problem("invalid-token", "The bearer token is missing, malformed or not acceptable.",
                   headers=CHALLENGE)


class KeyCache:
    """Parsed public keys by kid. A kid is the key's own thumbprint, so an entry never goes
    stale; whether the key may still be used is read from the database on every request."""

    def __init__(self) -> None:
        self._keys: dict[str, PublicKey] = {}
        self._lock = threading.Lock()

    def get(self, kid: str, pem: str) -> PublicKey:
        key = self._keys.get(kid)
        if key is None:
            key, _ = load_public_key(pem.encode())
            with self._lock:
                self._keys[kid] = key
        return key


def body_hash(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()


def authenticate(session: Session, keys: KeyCache, *, authorization: str, method: str,
                 path: str, query: str, body: bytes, audience: str) -> Caller:
    try:
        return _verify(session, keys, authorization, method, path, query, body, audience)
    except (InvalidToken, jwt.PyJWTError) as exc:
        log.info("token rejected", extra={"reason": str(exc)[:200]})
        raise unauthorized() from None


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise InvalidToken("duplicate name in a JSON object")
    return doc


def _segment(encoded: str) -> dict:
    """One base64url JSON object of a compact JWS, decoded strictly."""
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        doc = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (ValueError, binascii.Error, RecursionError):
        raise InvalidToken("a segment is not base64url JSON") from None
    if not isinstance(doc, dict):
        raise InvalidToken("a segment is not a JSON object")
    return doc


def _verify(session, keys, authorization, method, path, query, body, audience) -> Caller:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token or " " in token:  # RFC 9110: scheme is case-insensitive
        raise InvalidToken("no Bearer token")
    segments = token.split(".")
    if len(segments) != 3:
        raise InvalidToken("not a compact JWS")
    header = _segment(segments[0])
    _segment(segments[1])  # duplicates only; PyJWT reads the claims once the signature holds
    if header.get("typ") != TYP:
        raise InvalidToken("typ")
    if FORBIDDEN_HEADER_PARAMS & header.keys():
        raise InvalidToken("forbidden header parameter")
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in ALGORITHMS or not isinstance(kid, str) or not KID.fullmatch(kid):
        raise InvalidToken("alg or kid")
    row = session.execute(
        select(PartnerKey.alg, PartnerKey.public_key_pem, PartnerKey.status,
               PartnerKey.partner_id, Partner.status)
        .join(Partner, Partner.id == PartnerKey.partner_id).where(PartnerKey.kid == kid)).one_or_none()
    unusable = _unusable(row, alg)
    if unusable:
        _verify_against_dummy(token, alg)
        raise InvalidToken(unusable)
    key_alg, pem, _, partner_id, _ = row
    claims = jwt.decode(token, keys.get(kid, pem), algorithms=[key_alg], audience=audience,
                        issuer=partner_id, leeway=LEEWAY,
                        options={"require": list(REQUIRED_CLAIMS), "strict_aud": True})
    # --- signature verified from here on ---
    iat, exp = claims["iat"], claims["exp"]
    if type(iat) is not int or type(exp) is not int:  # PyJWT would accept "1700000000"
        raise InvalidToken("iat and exp must be integers")
    if not 0 < exp - iat <= MAX_LIFETIME:
        raise InvalidToken("lifetime")
    jti = claims["jti"]
    if not isinstance(jti, str) or not 1 <= len(jti) <= 64:
        raise InvalidToken("jti")
    if claims["htm"] != method:
        raise InvalidToken("htm")
    htu = claims["htu"]
    signed_path, _, signed_query = htu.partition("?") if isinstance(htu, str) else ("", "", "")
    if unquote(signed_path) != path or signed_query != query:
        raise InvalidToken("htu")
    if claims["bsh"] != body_hash(body):
        raise InvalidToken("bsh")
    return Caller(partner_id, kid, jti,
                  datetime.fromtimestamp(exp + LEEWAY, timezone.utc))


def _unusable(row, alg: str) -> str | None:
    """Why the kid's key cannot verify this token, or None if it can."""
    if row is None:
        return "unknown kid"
    key_alg, _, key_status, _, partner_status = row
    if key_status != "active" or partner_status != "active":
        return "revoked key or suspended partner"
    if alg != key_alg:
        return "alg differs from the key's"
    return None


def _verify_against_dummy(token: str, alg: str) -> None:
    """The signature check a usable key would have cost; its outcome is ignored."""
    try:
        jwt.decode(token, DUMMY_KEYS[alg], algorithms=[alg], options={"verify_aud": False,
                   "verify_iss": False, "verify_exp": False, "verify_iat": False,
                   "verify_nbf": False})
    except jwt.PyJWTError:
        pass


def spend(session: Session, caller: Caller) -> None:
    """Record the jti in the current transaction; a second use anywhere is a replay (401)."""
    session.add(UsedToken(partner_id=caller.partner_id, jti=caller.jti,
                          expires_at=caller.expires_at))
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        log.info("token replayed", extra={"partner_id": caller.partner_id})
        raise unauthorized() from None


def prune(session: Session, now: datetime) -> int:
    return session.execute(delete(UsedToken).where(UsedToken.expires_at < now)).rowcount


