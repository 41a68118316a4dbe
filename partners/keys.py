"""Partner public keys: which ones we accept, and their RFC 7638 thumbprints (the kid)."""
from __future__ import annotations

import hashlib
import json

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from coalition.hashing import b64url_encode
from coalition.problems import Problem

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def load_public_key(pem: bytes) -> tuple[PublicKey, str]:
    """Parse a PEM public key; only P-256 (ES256) and Ed25519 (EdDSA) are accepted."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise Problem("validation-error", "Not a PEM-encoded public key.") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key, "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise Problem("validation-error", "Only EC P-256 (ES256) and Ed25519 (EdDSA) keys are accepted.")


def thumbprint(key: PublicKey) -> str:
    """RFC 7638: SHA-256 over the required JWK members in lexicographic order, base64url."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw)}
    else:
        numbers = key.public_numbers()
        jwk = {"crv": "P-256", "kty": "EC", "x": b64url_encode(numbers.x.to_bytes(32, "big")),
               "y": b64url_encode(numbers.y.to_bytes(32, "big"))}
    return b64url_encode(hashlib.sha256(json.dumps(jwk, sort_keys=True, separators=(",", ":")).encode()).digest())


def canonical_pem(key: PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
