"""Canonical JSON, SHA-256 and base64url: what every hash and signature in the service is taken
over, and how binary values are written."""
from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable


def canonical(doc) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per value, in any language."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entries_digest(entry_hashes: Iterable[str]) -> str:
    """SHA-256 over a run of journal entries' hashes (hex), in the order given: what a sealed
    block (its entries_hash) and a month's statements (their ledger_anchor) commit to."""
    digest = hashlib.sha256()
    for entry_hash in entry_hashes:
        digest.update(bytes.fromhex(entry_hash))
    return digest.hexdigest()


def b64url_encode(data: bytes) -> str:
    """base64url without padding (RFC 7515): JWS segments, JWK members, signatures, salts."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """The inverse of b64url_encode. Lenient, as base64 decoding is by default: characters
    outside the alphabet are skipped, so a caller that must refuse them checks first."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
