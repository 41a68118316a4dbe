"""Partner public keys: which ones we accept. Their kid is the RFC 7638 thumbprint, computed in
coalition/jwk.py (statement signing keys are named the same way)."""
from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from coalition.jwk import PublicKey, canonical_pem, thumbprint  # noqa: F401  (partners' names)
from coalition.problems import Problem


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
