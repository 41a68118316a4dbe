"""Reference client for the coalition partner API (v1). One standalone file: stdlib + PyJWT + cryptography.

How a request is signed (everything needed to reimplement it in another language):

1. Serialise the body once and keep the exact bytes; those bytes are both hashed and sent.
   A GET (or a POST without body) uses the empty body b"".
2. Build a JWT (JWS compact serialisation) signed with the partner's private key:
     header  {"alg": "ES256" (EC P-256) | "EdDSA" (Ed25519), "typ": "partner+jwt", "kid": KID}
     claims  iss  partner id               aud  audience (default "coalition")
             iat  now, integer seconds     exp  iat + lifetime (at most 300 s)
             jti  fresh random id per token (<= 64 chars; a reused jti is rejected as a replay)
             htm  HTTP method, upper case  htu  request path with query string, exactly as sent
             bsh  base64url, no padding, of SHA-256(body bytes)
   KID is the RFC 7638 JWK thumbprint of the public key: SHA-256 over the JWK with only its
   required members, in lexicographic order, no whitespace, then base64url without padding:
     P-256:   {"crv":"P-256","kty":"EC","x":B64(x),"y":B64(y)}   (x, y: 32 bytes big-endian)
     Ed25519: {"crv":"Ed25519","kty":"OKP","x":B64(raw 32-byte public key)}
   ES256 signatures are the raw 64-byte r||s form (JWS), not DER.
3. Send `Authorization: Bearer <jwt>` (plus `Content-Type: application/json` when there is a body).
   A retry signs a new token (new jti) over the same body; the body's claim_id makes it idempotent.

Checking a statement offline (GET /v1/statements/PERIOD gives {document, digest, signature}): the
canonical JSON of `document` (keys sorted, separators "," and ":", UTF-8, no ASCII escaping) must
hash (SHA-256 hex) to `digest`, and `signature.value` (base64url) must be an Ed25519 signature over
those bytes by the key with kid `signature.kid` in GET /.well-known/jwks.json: `verify_statement`.

Usage:
    python -m partners.client keygen --alg EdDSA --out partner.pem   # give partner.pem.pub to the operator
    export COALITION_URL=https://coalition.example COALITION_PARTNER=acme COALITION_KEY=partner.pem
    python -m partners.client earn --member M-1 --points 100 --description "receipt 42"

    client = PartnerClient("https://coalition.example", "acme", load_private_key("partner.pem"))
    client.earn("order-42", "M-1", 100).json()

    python -m partners.client statement 2026-05 --out may.json      # also: statements; --format csv|pdf
    python -m partners.client verify-statement may.json --jwks https://coalition.example
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Union

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

PrivateKey = Union[ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey]
PublicKey = Union[ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey]


@dataclass
class Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


Transport = Callable[[str, str, dict[str, str], bytes], Response]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url (padding optional): a character outside the alphabet is an error."""
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def load_private_key(pem_bytes_or_path: Union[bytes, str, os.PathLike[str]]) -> PrivateKey:
    """Load an unencrypted PEM private key from PEM bytes or from a file path."""
    if isinstance(pem_bytes_or_path, bytes) and pem_bytes_or_path.lstrip().startswith(b"-----BEGIN"):
        pem = pem_bytes_or_path
    else:
        pem = Path(os.fsdecode(pem_bytes_or_path)).read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    algorithm_for(key)  # rejects unsupported key types early
    return key  # type: ignore[return-value]


def algorithm_for(key: Any) -> str:
    """The JWS algorithm for a private or public key: ES256 (P-256) or EdDSA (Ed25519)."""
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        if isinstance(key.curve, ec.SECP256R1):
            return "ES256"
        raise ValueError(f"unsupported EC curve {key.curve.name}; only P-256 is accepted")
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey)):
        return "EdDSA"
    raise ValueError(f"unsupported key type {type(key).__name__}; use EC P-256 or Ed25519")


def jwk_thumbprint(public_key: PublicKey) -> str:
    """RFC 7638 JWK SHA-256 thumbprint, base64url without padding (the key's `kid`)."""
    alg = algorithm_for(public_key)
    if alg == "ES256":
        numbers = public_key.public_numbers()  # type: ignore[union-attr]
        jwk = {"crv": "P-256", "kty": "EC",
               "x": b64url(numbers.x.to_bytes(32, "big")), "y": b64url(numbers.y.to_bytes(32, "big"))}
    else:
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"crv": "Ed25519", "kty": "OKP", "x": b64url(raw)}
    canonical = json.dumps(jwk, sort_keys=True, separators=(",", ":"))
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def rfc3339(value: Union[str, datetime, None]) -> str:
    """RFC 3339 timestamp; None means now. Naive datetimes are taken as UTC."""
    if isinstance(value, str):
        return value
    moment = value or datetime.now(timezone.utc)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _seg(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def canonical_json(document: Any) -> bytes:
    """The bytes a statement's digest and signature cover."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def verify_statement(signed: dict, jwks: dict) -> dict:
    """Check a signed statement offline against the coalition's JWKS; return its document.
    Raises ValueError saying what failed: the shape, the digest, the key or the signature."""
    try:
        document, digest = signed["document"], signed["digest"]
        kid, value = signed["signature"]["kid"], signed["signature"]["value"]
        alg = signed["signature"].get("alg", "EdDSA")
    except (KeyError, TypeError, AttributeError):
        raise ValueError("not a signed statement: expected document, digest and "
                         "signature {alg, kid, value}") from None
    if not isinstance(document, dict) or not all(isinstance(v, str) for v in (digest, kid, value)):
        raise ValueError("not a signed statement: document must be an object, digest and kid strings")
    body = canonical_json(document)
    actual = hashlib.sha256(body).hexdigest()
    if actual != digest:
        raise ValueError(f"digest mismatch: the document hashes to {actual}, the statement says {digest}")
    if alg != "EdDSA":
        raise ValueError(f"unsupported signature alg {alg!r}; statements are signed with EdDSA")
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    jwk = next((k for k in keys or [] if isinstance(k, dict) and k.get("kid") == kid), None)
    if jwk is None or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError(f"no Ed25519 (OKP) key with kid {kid} in the JWKS")
    try:
        public = ed25519.Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    except (KeyError, TypeError, ValueError):  # binascii.Error is a ValueError
        raise ValueError(f"key {kid} in the JWKS is malformed") from None
    try:
        public.verify(b64url_decode(value), body)
    except (InvalidSignature, ValueError):
        raise ValueError(f"signature does not verify with key {kid}") from None
    return document


class PartnerClient:
    def __init__(self, base_url: str, partner_id: str, private_key: PrivateKey, *,
                 audience: str = "coalition", kid: Optional[str] = None, lifetime: int = 120,
                 timeout: float = 10, transport: Optional[Transport] = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.partner_id = partner_id
        self.private_key = private_key
        self.algorithm = algorithm_for(private_key)
        self.audience = audience
        self.kid = kid or jwk_thumbprint(private_key.public_key())
        self.lifetime = lifetime
        self.timeout = timeout
        self.transport = transport

    def sign(self, method: str, path_with_query: str, body: bytes) -> dict[str, str]:
        """Headers authorising one request. `path_with_query` must be the path exactly as sent."""
        iat = int(time.time())
        claims = {
            "iss": self.partner_id, "aud": self.audience, "iat": iat, "exp": iat + self.lifetime,
            "jti": uuid.uuid4().hex, "htm": method.upper(), "htu": path_with_query,
            "bsh": b64url(hashlib.sha256(body).digest()),
        }
        token = jwt.encode(claims, self.private_key, algorithm=self.algorithm,
                           headers={"typ": "partner+jwt", "kid": self.kid})
        headers = {"Authorization": f"Bearer {token}"}
        if body:
            headers["Content-Type"] = "application/json"
        return headers

    @staticmethod
    def encode_body(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def request(self, method: str, path: str, json_body: Any = None) -> Response:
        """Sign and send one request. The base URL should be the bare origin: `path` is what the
        server sees and what `htu` covers. 4xx/5xx come back as a Response, never raised."""
        method = method.upper()
        body = b"" if json_body is None else self.encode_body(json_body)
        headers = self.sign(method, path, body)  # a fresh token (new jti) on every call, retries too
        if self.transport is not None:
            return self.transport(method, path, headers, body)
        req = urllib.request.Request(self.base_url + path, data=body or None, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return Response(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())

    # Convenience wrappers for the section 3 endpoints. Optional fields are omitted when None.

    def enrol(self, member_id: str, referred_by: Optional[str] = None) -> Response:
        """`referred_by`: the enrolled member who referred this one (kept only if enrolled now)."""
        body = {"member_id": member_id}
        if referred_by is not None:
            body["referred_by"] = referred_by
        return self.request("POST", "/v1/members", body)

    def balance(self, member_id: str) -> Response:
        return self.request("GET", f"/v1/members/{_seg(member_id)}/balance")

    def expiry_notices(self, member_id: str, within_days: Optional[int] = None) -> Response:
        """The member's coming expiries within `within_days` days (the service's default: 30)."""
        query = "" if within_days is None else f"?within_days={int(within_days)}"
        return self.request("GET", f"/v1/members/{_seg(member_id)}/expiry-notices{query}")

    def earn(self, claim_id: str, member_id: str, points: int, occurred_at: Union[str, datetime, None] = None,
             pending_until: Union[str, datetime, None] = None, description: Optional[str] = None,
             activity: Optional[str] = None) -> Response:
        """`activity`: purchase (the default), review, signup or newsletter."""
        body: dict[str, Any] = {"claim_id": claim_id, "member_id": member_id, "points": points,
                                "occurred_at": rfc3339(occurred_at)}
        if activity is not None:
            body["activity"] = activity
        if pending_until is not None:
            body["pending_until"] = rfc3339(pending_until)
        if description is not None:
            body["description"] = description
        return self.request("POST", "/v1/earn", body)

    def burn(self, claim_id: str, member_id: str, points: int, occurred_at: Union[str, datetime, None] = None,
             description: Optional[str] = None, member_pin: Optional[str] = None) -> Response:
        """`member_pin`: the PIN from the till's PIN pad, where the partner's policy asks for one
        (403 member-auth-required without it). Never part of the claim: a retry may omit it."""
        body: dict[str, Any] = {"claim_id": claim_id, "member_id": member_id, "points": points,
                                "occurred_at": rfc3339(occurred_at)}
        if description is not None:
            body["description"] = description
        if member_pin is not None:
            body["member_pin"] = member_pin
        return self.request("POST", "/v1/burn", body)

    def hold(self, hold_id: str, member_id: str, points: int,
             occurred_at: Union[str, datetime, None] = None, expires_in: Optional[int] = None,
             member_pin: Optional[str] = None) -> Response:
        """Reserve points for a redemption captured later (201). They are not available until
        the hold is captured, voided, or lapses after `expires_in` seconds (default 900)."""
        body: dict[str, Any] = {"hold_id": hold_id, "member_id": member_id, "points": points,
                                "occurred_at": rfc3339(occurred_at)}
        if expires_in is not None:
            body["expires_in"] = expires_in
        if member_pin is not None:
            body["member_pin"] = member_pin
        return self.request("POST", "/v1/holds", body)

    def capture(self, hold_id: str, claim_id: str, points: Optional[int] = None) -> Response:
        """Redeem all (or `points`) of an open hold as a burn under `claim_id` (201); the rest
        is released. A retry with the same claim id replays; a closed hold is 409 hold-closed."""
        body: dict[str, Any] = {"claim_id": claim_id}
        if points is not None:
            body["points"] = points
        return self.request("POST", f"/v1/holds/{_seg(hold_id)}/capture", body)

    def void(self, hold_id: str) -> Response:
        """Release an open hold's points (200); a closed hold is 409 hold-closed."""
        return self.request("POST", f"/v1/holds/{_seg(hold_id)}/void")

    def get_hold(self, hold_id: str) -> Response:
        return self.request("GET", f"/v1/holds/{_seg(hold_id)}")

    def offers(self, member_id: str) -> Response:
        """The campaigns and coupons the member can use now."""
        return self.request("GET", f"/v1/members/{_seg(member_id)}/offers")

    def activate_coupon(self, member_id: str, coupon_id: str) -> Response:
        """Activate a coupon for the member: 201 the first time, 200 after; 409 coupon-ended."""
        return self.request(
            "POST", f"/v1/members/{_seg(member_id)}/coupons/{_seg(coupon_id)}/activation")

    def invite(self, member_id: str) -> Response:
        """A one-time code for the member portal (201: {"member_id", "code", "expires_at"}),
        valid 72 hours; hand it to the member, who sets a password with it."""
        return self.request("POST", f"/v1/members/{_seg(member_id)}/invitation")

    def set_pin(self, member_id: str, pin: str, current_pin: Optional[str] = None) -> Response:
        """Set the member's first PIN, or change it (current_pin). 204 on success."""
        body = {"pin": pin} if current_pin is None else {"pin": pin, "current_pin": current_pin}
        return self.request("PUT", f"/v1/members/{_seg(member_id)}/pin", body)

    def set_consent(self, member_id: str, marketing: bool, channel: Optional[str] = None) -> Response:
        """Record the member's marketing consent (or its withdrawal), for one channel or, without
        one, marketing in general. 200 with the consent as recorded."""
        body: dict[str, Any] = {"marketing": marketing}
        if channel is not None:
            body["channel"] = channel
        return self.request("PUT", f"/v1/members/{_seg(member_id)}/consents", body)

    def reverse(self, claim_id: str, reversal_id: str, points: int,
                occurred_at: Union[str, datetime, None] = None) -> Response:
        body = {"reversal_id": reversal_id, "points": points, "occurred_at": rfc3339(occurred_at)}
        return self.request("POST", f"/v1/claims/{_seg(claim_id)}/reversals", body)

    def claim(self, claim_id: str) -> Response:
        return self.request("GET", f"/v1/claims/{_seg(claim_id)}")

    def batch(self, items: list) -> Response:
        """Up to 1000 items, each {"kind": "earn"|"burn"|"reversal"|"enrolment", ...} with the
        fields of that endpoint's body (a reversal also names its claim_id). 200 with one
        result per item, in order: {"status", "replayed", "body"}. Resending a batch is safe:
        every claim keeps its own claim_id idempotency."""
        return self.request("POST", "/v1/batches", {"claims": items})

    # Closed monthly statements and the coalition's public keys.

    def statements(self) -> Response:
        return self.request("GET", "/v1/statements")

    def statement(self, period: str, format: str = "json") -> Response:
        """The signed statement (JSON: check it with verify_statement), or its CSV or PDF bytes."""
        query = "" if format == "json" else "?format=" + _seg(format)
        return self.request("GET", f"/v1/statements/{_seg(period)}{query}")

    def jwks(self) -> Response:
        return self.request("GET", "/.well-known/jwks.json")  # the endpoint ignores the token


def keygen(alg: str, out: str) -> dict[str, str]:
    """Write a new private key (PKCS#8 PEM, mode 0600) to `out` and its public key to `out.pub`."""
    key: PrivateKey = ec.generate_private_key(ec.SECP256R1()) if alg == "ES256" else ed25519.Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    # O_EXCL: never overwrite an existing key; the mode is set at creation, so no window where it is readable.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    Path(out + ".pub").write_bytes(public_pem)
    return {"kid": jwk_thumbprint(key.public_key()), "alg": alg, "public_key": out + ".pub"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m partners.client", description="Coalition partner API client.")
    p.add_argument("--base-url", default=os.environ.get("COALITION_URL"), help="env COALITION_URL")
    p.add_argument("--partner", default=os.environ.get("COALITION_PARTNER"), help="env COALITION_PARTNER")
    p.add_argument("--key", default=os.environ.get("COALITION_KEY"), help="private key PEM file; env COALITION_KEY")
    p.add_argument("--audience", default="coalition")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("enrol").add_argument("member")
    sub.add_parser("balance").add_argument("member")
    n = sub.add_parser("expiry-notices")
    n.add_argument("member")
    n.add_argument("--within-days", type=int, default=None, help="default: 30")
    for name in ("earn", "burn"):
        c = sub.add_parser(name)
        c.add_argument("--claim-id", default=None, help="default: a fresh uuid4")
        c.add_argument("--member", required=True)
        c.add_argument("--points", type=int, required=True)
        c.add_argument("--occurred-at", default=None, help="RFC 3339; default: now")
        if name == "earn":
            c.add_argument("--pending-until", default=None)
        c.add_argument("--description", default=None)
    r = sub.add_parser("reverse")
    r.add_argument("claim_id")
    r.add_argument("--reversal-id", required=True)
    r.add_argument("--points", type=int, required=True)
    r.add_argument("--occurred-at", default=None)
    sub.add_parser("claim").add_argument("claim_id")
    k = sub.add_parser("keygen")
    k.add_argument("--alg", choices=("ES256", "EdDSA"), required=True)
    k.add_argument("--out", required=True)
    sub.add_parser("statements")
    s = sub.add_parser("statement")
    s.add_argument("period", help="YYYY-MM")
    s.add_argument("--format", choices=("json", "csv", "pdf"), default="json")
    s.add_argument("--out", default=None, help="write the body exactly as received (needed for pdf)")
    v = sub.add_parser("verify-statement")
    v.add_argument("file", help="a signed statement saved with: statement PERIOD --out FILE")
    v.add_argument("--jwks", required=True, help="JWKS file or URL (a bare origin: its /.well-known/jwks.json)")
    return p


def _verify_cli(path: str, source: str) -> int:
    try:
        signed = json.loads(Path(path).read_bytes())
        if source.startswith(("http://", "https://")):
            if urllib.parse.urlsplit(source).path in ("", "/"):
                source = source.rstrip("/") + "/.well-known/jwks.json"
            with urllib.request.urlopen(source, timeout=10) as resp:  # no auth: the keys are public
                jwks = json.loads(resp.read())
        else:
            jwks = json.loads(Path(source).read_bytes())
    except (OSError, ValueError) as err:  # unreadable file or URL, not JSON
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        doc = verify_statement(signed, jwks)
    except ValueError as err:
        print(f"error: statement does not verify: {err}", file=sys.stderr)
        return 1
    print(json.dumps({"ok": True, "partner_id": doc.get("partner_id"), "period": doc.get("period"),
                      "net_cents": doc.get("net_cents"), "digest": signed["digest"],
                      "kid": signed["signature"]["kid"]}))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "keygen":
        try:
            print(json.dumps(keygen(args.alg, args.out)))
        except FileExistsError:
            print(f"error: {args.out} exists; not overwriting a key", file=sys.stderr)
            return 1
        return 0
    if args.command == "verify-statement":
        return _verify_cli(args.file, args.jwks)
    if args.command == "statement" and args.format == "pdf" and not args.out:
        parser.error("statement --format pdf needs --out FILE")
    missing = [opt for opt, val in (("--base-url", args.base_url), ("--partner", args.partner),
                                    ("--key", args.key)) if not val]
    if missing:
        parser.error("missing " + ", ".join(missing) + " (or COALITION_URL/COALITION_PARTNER/COALITION_KEY)")
    try:
        client = PartnerClient(args.base_url, args.partner, load_private_key(args.key), audience=args.audience)
        if args.command == "enrol":
            resp = client.enrol(args.member)
        elif args.command == "balance":
            resp = client.balance(args.member)
        elif args.command == "expiry-notices":
            resp = client.expiry_notices(args.member, args.within_days)
        elif args.command in ("earn", "burn"):
            claim_id = args.claim_id or uuid.uuid4().hex
            if not args.claim_id:  # shown so a failed call can be retried idempotently with --claim-id
                print(f"claim_id {claim_id}", file=sys.stderr)
            if args.command == "earn":
                resp = client.earn(claim_id, args.member, args.points, args.occurred_at,
                                   args.pending_until, args.description)
            else:
                resp = client.burn(claim_id, args.member, args.points, args.occurred_at, args.description)
        elif args.command == "reverse":
            resp = client.reverse(args.claim_id, args.reversal_id, args.points, args.occurred_at)
        elif args.command == "statements":
            resp = client.statements()
        elif args.command == "statement":
            resp = client.statement(args.period, args.format)
        else:
            resp = client.claim(args.claim_id)
        if args.command == "statement" and args.out and 200 <= resp.status < 300:
            Path(args.out).write_bytes(resp.body)  # exactly as received: verify-statement reads it
            print(f"HTTP {resp.status}\nwrote {args.out} ({len(resp.body)} bytes)")
            return 0
    except (OSError, ValueError) as err:  # unreadable key, bad key type, network failure (URLError is OSError)
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"HTTP {resp.status}")
    try:
        print(json.dumps(resp.json(), indent=2, ensure_ascii=False))
    except ValueError:  # not JSON (e.g. a proxy's HTML error page): show it as text
        print(resp.body.decode("utf-8", "replace"))
    return 0 if 200 <= resp.status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
