"""Canonical JSON and SHA-256: what every hash and signature in the service is taken over."""
from __future__ import annotations

import hashlib
import json


def canonical(doc) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per value, in any language."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
