"""The coalition's own Ed25519 key: it signs every closed statement so partners can check
them offline against the JWKS served at /.well-known/jwks.json."""
from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from partners.keys import thumbprint

_lock = threading.Lock()
_cache: dict[str, ed25519.Ed25519PrivateKey] = {}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(path: str) -> ed25519.Ed25519PrivateKey:
    """Load the key from `path`, generating it (mode 0600) the first time. Never committed:
    it lives under instance/ unless COALITION_SIGNING_KEY_FILE points elsewhere."""
    with _lock:
        if path in _cache:
            return _cache[path]
        file = Path(path)
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            key = ed25519.Ed25519PrivateKey.generate()
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
        key = serialization.load_pem_private_key(file.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("The coalition signing key must be an Ed25519 private key.")
        _cache[path] = key
        return key


def kid_of(key: ed25519.Ed25519PrivateKey) -> str:
    return thumbprint(key.public_key())


def sign(key: ed25519.Ed25519PrivateKey, document: bytes) -> tuple[str, str]:
    return kid_of(key), _b64(key.sign(document))


def verify(key: ed25519.Ed25519PrivateKey, document: bytes, signature: str) -> bool:
    try:
        key.public_key().verify(_unb64(signature), document)
        return True
    except (InvalidSignature, ValueError):
        return False


def jwks(key: ed25519.Ed25519PrivateKey) -> dict:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": _b64(raw), "kid": kid_of(key),
                      "alg": "EdDSA", "use": "sig"}]}
