"""Verification of signed partner requests (docs/partner-api.md, section 3).

The algorithm comes from the stored key, never from the token. Every refusal is a 401 whose
detail says what is wrong, with the same text as the RFC 6750 error_description:

* Before the signature verifies, slug `invalid-token`, naming the structural rule the token
  broke (the scheme, not a JWT, a duplicate name, typ, alg, kid, crit, a key in the header).
  These depend on the token alone, never on which keys exist.
* An unknown kid, an alg other than the key's, and a signature that does not verify all get
  one answer, and each costs one signature verification (against a dummy key of the token's
  algorithm where no usable key exists): neither the answer nor its time tells a caller
  whether a kid is registered. A revoked key or a suspended partner is verified against its
  real key, and answers like a bad signature unless the signature holds.
* Once the signature verifies, the caller holds that private key: the answer names what is
  wrong (key-revoked, partner-suspended, token-claims-invalid, token-expired, ...).

What this costs the database: a kid's key is parsed once per process and kept (KeyCache: a kid
is its key's thumbprint, so nothing kept can go stale). Every request then reads the key's and
its partner's status and spends the jti in one statement (on PostgreSQL; two on SQLite), in the
request's own transaction; a refused signature reads the key's standing instead, so that every
refusal costs one read and one verification.

Header and payload are JSON objects without duplicate names (as request bodies are): with
duplicates, which value counts would depend on the parser. The claims are checked here, not by
PyJWT, whose checks neither name the claim nor hold iat/exp to integers; PyJWT only supplies
the signature algorithms.
"""
from __future__ import annotations

import binascii
import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import unquote

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import get_default_algorithms
from sqlalchemy import bindparam, delete, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from coalition.hashing import b64url_decode, b64url_encode
from coalition.database import is_sqlite
from coalition.models import UtcDateTime
from coalition.problems import Problem

from .keys import PublicKey, load_public_key
from .models import PARTNER, Partner, PartnerKey, UsedToken

log = logging.getLogger("partners.tokens")

TYP = "partner+jwt"
ALGORITHMS = ("ES256", "EdDSA")
KEY_HEADER_PARAMS = ("jwk", "jku", "x5u", "x5c")  # the key is chosen by kid alone
MAX_LIFETIME = 300
LEEWAY = 30
MAX_JTI = 64
KID = re.compile(r"^[A-Za-z0-9_-]{43}$")  # base64url of a SHA-256 digest
_SEGMENT = re.compile(r"^[A-Za-z0-9_-]*$")
# RFC 6750 section 3: error_description is %x20-21 / %x23-5B / %x5D-7E (no quote, no backslash).
_NOT_IN_DESCRIPTION = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')
_VERIFIERS = {alg: get_default_algorithms()[alg] for alg in ALGORITHMS}
# Stand-ins for keys that cannot be used: verifying against one costs what a real key costs.
# Their private halves are dropped at once, so nothing ever verifies against them.
DUMMY_KEYS: dict[str, PublicKey] = {
    "EdDSA": ed25519.Ed25519PrivateKey.generate().public_key(),
    "ES256": ec.generate_private_key(ec.SECP256R1()).public_key(),
}

# Every slug authentication answers with (all 401): the partner API documents them all.
SLUGS = ("invalid-token", "key-revoked", "partner-suspended", "token-claims-invalid",
         "token-expired", "token-not-yet-valid", "token-lifetime-too-long", "token-wrong-issuer",
         "token-wrong-audience", "token-htm-mismatch", "token-htu-mismatch", "token-bsh-mismatch",
         "token-replayed")

NO_AUTHORIZATION = "The request has no Authorization header; send Authorization: Bearer <token>."
NOT_BEARER = ("The Authorization header must be the Bearer scheme, one space, then the token "
              "and nothing else.")
NOT_A_JWT = ("The token is not a JWT: it must be three base64url segments separated by dots, "
             "the first two encoding JSON objects.")
DUPLICATE_NAME = "The token {part} has a duplicate name; every name may appear only once."
WRONG_TYP = f"The token header must have typ {TYP}."
ALG_NOT_ALLOWED = f"The token alg must be {' or '.join(ALGORITHMS)}."
BAD_KID = ("The token header must have a kid: the RFC 7638 thumbprint of the signing key, "
           "43 base64url characters.")
CRIT = "The token header must not have crit: this service supports no header extension."
KEY_IN_HEADER = (f"The token header must not carry {', '.join(KEY_HEADER_PARAMS)}: the key is "
                 "found by kid alone.")
# One answer for an unknown kid, an alg other than the key's and a bad signature.
BAD_SIGNATURE = ("The token signature does not verify with a usable key registered under its "
                 "kid for its alg.")


@dataclass(frozen=True)
class Caller:
    partner_id: str
    kid: str
    jti: str
    expires_at: datetime  # after this the token is dead anyway: its jti row can be pruned
    kind: str = PARTNER  # the caller's kind: OPERATOR for the coalition's own operator


def refused(slug: str, detail: str) -> Problem:
    """A 401 whose RFC 6750 challenge repeats the detail."""
    description = _NOT_IN_DESCRIPTION.sub("?", detail)
    return Problem(slug, detail, headers={
        "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{description}"'})


@dataclass(frozen=True)
class KeyFacts:
    """What never changes about a registered key: a kid is the key's own thumbprint (and a
    partner's kind is fixed when it is added)."""
    alg: str
    key: PublicKey
    partner_id: str
    kind: str = PARTNER  # the partner's: partner, or the coalition's operator


class KeyCache:
    """Registered keys by kid, parsed once. Only what cannot change is kept (a kid is the key's
    own thumbprint, so its material, alg and partner are fixed); whether the key and its partner
    may still be used is read from the database on every request, in the statement that spends
    the token's jti. Unknown kids are not kept: each costs a read, as every refusal does."""

    def __init__(self) -> None:
        self._keys: dict[str, KeyFacts] = {}
        self._lock = threading.Lock()

    def cached(self, kid: str) -> KeyFacts | None:
        return self._keys.get(kid)

    def lookup(self, session: Session, kid: str) -> KeyFacts | None:
        """The key's facts, read (one statement) when not cached yet; None if unknown."""
        facts = self._keys.get(kid)
        if facts is not None:
            return facts
        row = session.execute(_KEY_FACTS, {"kid": kid}).one_or_none()
        if row is None:
            return None
        facts = KeyFacts(row.alg, load_public_key(row.public_key_pem.encode())[0], row.partner_id,
                         row.kind)
        with self._lock:
            self._keys[kid] = facts
        return facts

    def forget(self, kid: str) -> None:
        with self._lock:
            self._keys.pop(kid, None)


_KEY_FACTS = (select(PartnerKey.alg, PartnerKey.public_key_pem, PartnerKey.partner_id, Partner.kind)
              .join(Partner, Partner.id == PartnerKey.partner_id)
              .where(PartnerKey.kid == bindparam("kid")))
_STANDING = (select(PartnerKey.status, Partner.status)
             .join(Partner, Partner.id == PartnerKey.partner_id)
             .where(PartnerKey.kid == bindparam("kid")))


def body_hash(body: bytes) -> str:
    return b64url_encode(hashlib.sha256(body).digest())


def authenticate(session: Session, keys: KeyCache, *, authorization: str | None, method: str,
                 path: str, query: str, body: bytes, audience: str,
                 now: float | None = None) -> Caller:
    """The verified caller, or a 401 Problem. `now`: seconds since the epoch (default: the
    clock)."""
    try:
        return _verify(session, keys, authorization, method, path, query, body, audience,
                       time.time() if now is None else now)
    except Problem as problem:
        log.info("token rejected", extra={"slug": problem.slug, "reason": problem.detail})
        raise


def _b64decode(segment: str) -> bytes:
    if not _SEGMENT.fullmatch(segment):  # the lenient decoder would skip stray characters
        raise refused("invalid-token", NOT_A_JWT)
    try:
        return b64url_decode(segment)
    except (ValueError, binascii.Error):  # a length of 4n+1
        raise refused("invalid-token", NOT_A_JWT) from None


class _DuplicateName(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise _DuplicateName
    return doc


def _object(segment: str, part: str) -> dict:
    """One base64url JSON object of a compact JWS, decoded strictly."""
    raw = _b64decode(segment)
    try:
        doc = json.loads(raw, object_pairs_hook=_no_duplicates)
    except _DuplicateName:
        raise refused("invalid-token", DUPLICATE_NAME.format(part=part)) from None
    except (ValueError, RecursionError):
        raise refused("invalid-token", NOT_A_JWT) from None
    if not isinstance(doc, dict):
        raise refused("invalid-token", NOT_A_JWT)
    return doc


def _structure(authorization: str | None) -> tuple[dict, dict, bytes, bytes]:
    """Header, claims, signing input and signature of a well-formed token: the rules that
    depend on the token alone."""
    if authorization is None:
        raise refused("invalid-token", NO_AUTHORIZATION)
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token or " " in token:  # RFC 9110: scheme is case-insensitive
        raise refused("invalid-token", NOT_BEARER)
    segments = token.split(".")
    if len(segments) != 3:
        raise refused("invalid-token", NOT_A_JWT)
    header = _object(segments[0], "header")
    if header.get("typ") != TYP:
        raise refused("invalid-token", WRONG_TYP)
    if "crit" in header:
        raise refused("invalid-token", CRIT)
    if any(name in header for name in KEY_HEADER_PARAMS):
        raise refused("invalid-token", KEY_IN_HEADER)
    if header.get("alg") not in ALGORITHMS:
        raise refused("invalid-token", ALG_NOT_ALLOWED)
    kid = header.get("kid")
    if not isinstance(kid, str) or not KID.fullmatch(kid):
        raise refused("invalid-token", BAD_KID)
    claims = _object(segments[1], "payload")
    signature = _b64decode(segments[2])
    return header, claims, f"{segments[0]}.{segments[1]}".encode(), signature


def _verify(session, keys, authorization, method, path, query, body, audience, now) -> Caller:
    header, claims, signing_input, signature = _structure(authorization)
    alg, kid = header["alg"], header["kid"]
    facts = keys.cached(kid)
    read = facts is None  # a refusal costs one read, whichever it is (see _refuse_equally)
    if read:
        facts = keys.lookup(session, kid)
    # One verification whatever the kid: against its key if its alg is the token's, else
    # against a dummy key, whose outcome does not matter.
    usable = facts is not None and facts.alg == alg
    if not _VERIFIERS[alg].verify(signing_input, facts.key if usable else DUMMY_KEYS[alg],
                                  signature) or not usable:
        if not read:
            _refuse_equally(session, kid)
        raise refused("invalid-token", BAD_SIGNATURE)
    # --- signature verified from here on: the caller holds this key ---
    partner_id = facts.partner_id
    expires_at = _expiry(claims)
    standing = _spend_if_standing(session, kid, partner_id, claims.get("jti"), expires_at)
    if standing is None:  # the key was deleted since it was cached
        keys.forget(kid)
        raise refused("invalid-token", BAD_SIGNATURE)
    key_status, partner_status, spent = standing
    if key_status != "active":  # before the partner's status: a revoked key learns no more
        raise refused("key-revoked", "The key named by kid is revoked; sign with an active key "
                                     "of the partner.")
    if partner_status != "active":
        raise refused("partner-suspended", "The partner owning this key is suspended; its "
                                           "requests are refused until the operator activates it.")
    exp = _check_claims(claims, partner_id=partner_id, audience=audience, now=now)
    _check_binding(claims, method=method, path=path, query=query, body=body)
    if not spent:
        raise _replayed(partner_id)
    return Caller(partner_id, kid, claims["jti"], datetime.fromtimestamp(exp + LEEWAY, timezone.utc),
                  facts.kind)


def _refuse_equally(session: Session, kid: str) -> None:
    """A bad signature under a cached kid reads the key's standing, as an unknown kid reads
    the keys: neither the answer nor its time tells whether a kid is registered."""
    session.execute(_STANDING, {"kid": kid}).first()


def _expiry(claims: dict) -> datetime | None:
    """When the token's jti row may be pruned (None while exp is malformed: the claims check
    refuses such a token before its jti counts)."""
    exp = claims.get("exp")
    if type(exp) is not int or not 0 <= exp < 2 ** 40:
        return None
    return datetime.fromtimestamp(exp + LEEWAY, timezone.utc)


_TYPES = {"iss": (str, "a string"), "aud": (str, "a single string"),
          "iat": (int, "an integer, seconds since the epoch"),
          "exp": (int, "an integer, seconds since the epoch"),
          "jti": (str, f"a string of 1 to {MAX_JTI} characters"),
          "htm": (str, "a string"), "htu": (str, "a string"), "bsh": (str, "a string")}
_OPTIONAL = {"nbf": _TYPES["iat"]}


def _invalid_claim(name: str, what: str) -> Problem:
    return refused("token-claims-invalid", f"The {name} claim must be {what}.")


def _check_claims(claims: dict, *, partner_id: str, audience: str, now: float) -> int:
    """The claims of a verified token, in the order a partner's engineer would fix them: their
    types, whose they are, then time. Returns exp."""
    for name, (kind, what) in (_TYPES | _OPTIONAL).items():
        if name not in claims:
            if name in _OPTIONAL:
                continue
            raise refused("token-claims-invalid", f"The token has no {name} claim; it must be "
                                                  f"{what}.")
        value = claims[name]
        if type(value) is not kind:  # bool is no int here, and "1700000000" no integer
            raise _invalid_claim(name, what)
    if not 1 <= len(claims["jti"]) <= MAX_JTI:
        raise _invalid_claim("jti", _TYPES["jti"][1])
    iat, exp = claims["iat"], claims["exp"]
    if exp <= iat:
        raise _invalid_claim("exp", "later than iat")
    if claims["iss"] != partner_id:
        raise refused("token-wrong-issuer", "The iss claim must be the id of the partner that "
                                            "owns the key named by kid.")
    if claims["aud"] != audience:
        raise refused("token-wrong-audience", f"The aud claim must be {audience}, the audience "
                                              "of this service.")
    if exp - iat > MAX_LIFETIME:
        raise refused("token-lifetime-too-long", f"The token lives too long: exp - iat must be "
                                                 f"at most {MAX_LIFETIME} seconds.")
    if iat > now + LEEWAY or claims.get("nbf", iat) > now + LEEWAY:
        raise refused("token-not-yet-valid", f"The token is not valid yet: its iat (or nbf) "
                      f"lies more than {LEEWAY} seconds in the future; check the signer's clock.")
    if exp <= now - LEEWAY:
        raise refused("token-expired", f"The token has expired: its exp lies more than "
                      f"{LEEWAY} seconds in the past; sign a fresh token for every request.")
    return exp


def _check_binding(claims: dict, *, method: str, path: str, query: str, body: bytes) -> None:
    """htm, htu and bsh bind the token to this one request."""
    if claims["htm"] != method:
        raise refused("token-htm-mismatch", f"The htm claim must be the request method in "
                                            f"upper case, here {_printable(method)}.")
    signed_path, _, signed_query = claims["htu"].partition("?")
    if unquote(signed_path) != path or signed_query != query:
        raise refused("token-htu-mismatch", "The htu claim must be the request path with its "
                                            "query string, e.g. /v1/earn, not a full URL.")
    if claims["bsh"] != body_hash(body):
        raise refused("token-bsh-mismatch", "The bsh claim must be the base64url SHA-256 of the "
                      "exact body bytes, without padding (of no bytes for a request without a "
                      "body).")


def _printable(text: str) -> str:
    return _NOT_IN_DESCRIPTION.sub("?", text)[:16]


def _replayed(partner_id: str) -> Problem:
    log.info("token replayed", extra={"partner_id": partner_id})
    return refused("token-replayed", "This token was used already: every request, retries "
                                     "included, needs a fresh token with a new jti.")


# PostgreSQL: the key's and partner's standing and the jti spent in one round trip. The jti
# is inserted only under an active key of an active partner, and only while its claims are
# well-formed enough to name it; ON CONFLICT leaves the transaction usable, and a row
# inserted concurrently by a transaction still open is waited for, as a plain insert would.
_SPEND_IF_STANDING = text("""
WITH standing AS (
    SELECT k.status AS key_status, p.status AS partner_status
    FROM partner_keys k JOIN partners p ON p.id = k.partner_id WHERE k.kid = :kid),
spent AS (
    INSERT INTO used_tokens (partner_id, jti, expires_at)
    SELECT :partner_id, :jti, :expires_at FROM standing
    WHERE key_status = 'active' AND partner_status = 'active'
      AND CAST(:jti AS varchar) IS NOT NULL AND CAST(:expires_at AS timestamptz) IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING 1)
SELECT key_status, partner_status, EXISTS (SELECT 1 FROM spent) FROM standing
""").bindparams(bindparam("expires_at", type_=UtcDateTime))
_SPEND = (sqlite_insert(UsedToken).values(partner_id=bindparam("partner_id"),
                                          jti=bindparam("jti"),
                                          expires_at=bindparam("expires_at"))
          .on_conflict_do_nothing().returning(UsedToken.jti))


def _spend_if_standing(session: Session, kid: str, partner_id: str, jti, expires_at):
    """(key status, partner status, whether the jti was spent now), or None for no such key.
    The jti is spent (in the current transaction) only under an active key and partner, and
    only if it is a string of at most MAX_JTI characters with a usable exp."""
    jti = jti if isinstance(jti, str) and 1 <= len(jti) <= MAX_JTI else None
    params = {"kid": kid, "partner_id": partner_id, "jti": jti, "expires_at": expires_at}
    if not is_sqlite(session):
        row = session.connection().execute(_SPEND_IF_STANDING, params).first()
        return None if row is None else tuple(row)
    row = session.execute(_STANDING, params).first()
    if row is None:
        return None
    key_status, partner_status = row
    spent = False
    if key_status == partner_status == "active" and jti is not None and expires_at is not None:
        spent = session.connection().execute(_SPEND, params).first() is not None
    return key_status, partner_status, spent


def spend(session: Session, caller: Caller) -> None:
    """Record the jti in the current transaction once more (after its transaction was rolled
    back); a second use anywhere is a replay (401)."""
    params = {"partner_id": caller.partner_id, "jti": caller.jti,
              "expires_at": caller.expires_at}
    if not is_sqlite(session):
        spent = session.connection().execute(_SPEND_PG, params).first() is not None
    else:
        spent = session.connection().execute(_SPEND, params).first() is not None
    if not spent:
        raise _replayed(caller.partner_id)


_SPEND_PG = (pg_insert(UsedToken).values(partner_id=bindparam("partner_id"),
                                         jti=bindparam("jti"),
                                         expires_at=bindparam("expires_at"))
             .on_conflict_do_nothing().returning(UsedToken.jti))


def prune(session: Session, now: datetime) -> int:
    return session.execute(delete(UsedToken).where(UsedToken.expires_at < now)).rowcount
