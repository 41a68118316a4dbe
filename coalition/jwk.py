"""Public keys as JWKs name them: the RFC 7638 thumbprint (a key's kid, for partner keys and the
coalition's statement signing keys alike) and one PEM text per key."""
from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .hashing import b64url_encode, canonical

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def thumbprint(key: PublicKey) -> str:
    """RFC 7638: SHA-256 over the required JWK members in lexicographic order, base64url.
    Ed25519 (OKP) or EC P-256."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        jwk = {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw)}
    else:
        numbers = key.public_numbers()
        jwk = {"crv": "P-256", "kty": "EC", "x": b64url_encode(numbers.x.to_bytes(32, "big")),
               "y": b64url_encode(numbers.y.to_bytes(32, "big"))}
    return b64url_encode(hashlib.sha256(canonical(jwk)).digest())


def canonical_pem(key: PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
