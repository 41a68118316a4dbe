"""The coalition's own Ed25519 signing keys. The current key signs every closed statement;
partners check statements offline against the JWKS served at /.well-known/jwks.json.

Where keys live, and why:
- Only the *current* private key exists, in COALITION_SIGNING_KEY_FILE (default
  instance/coalition-signing-key.pem, mode 0600, generated at first use, never committed). A
  rotation destroys the replaced private key: nothing is ever signed with it again, so keeping
  it would only leave one more secret to steal.
- The public half of every key that ever signed is a row of `signing_keys` (never a private
  key). Every process reads the same JWKS from it, and `ledger verify` checks each statement
  against the key its kid names, on whichever host it runs.
- A deployment from before rotation existed has only the file. Its key is published straight
  from the file, and the next close or rotation registers it: it becomes the first key.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from coalition import audit
from coalition.clock import as_utc, iso_utc
from coalition.database import is_sqlite
from coalition.hashing import b64url_decode, b64url_encode
from coalition.jwk import canonical_pem, thumbprint
from coalition.problems import Problem

from .models import CoalitionReport, SigningKey, Statement

# PostgreSQL advisory lock key (BOOKS_LOCK and AUDIT_LOCK differ): a close holds it shared while
# it signs, a rotation exclusively while it swaps keys.
SIGNING_LOCK = 0x5369676E
ROTATE = "coalition.key.rotate"  # audit action
SUBJECT = "coalition:signing-key"  # audit subject

_lock = threading.Lock()
_cache: dict[str, tuple[tuple[int, int, int], ed25519.Ed25519PrivateKey]] = {}


def _write_new(file: Path, key: ed25519.Ed25519PrivateKey) -> None:
    """Write a private key to a file that must not exist yet, readable by its owner only."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself must survive a power cut, not only the file's bytes
    finally:
        os.close(fd)


def signing_key(path: str) -> ed25519.Ed25519PrivateKey:
    """The current key, from `path`, generated (mode 0600) the first time. Re-read whenever the
    file changes, so a process that outlives a rotation (a web worker) publishes the new key."""
    with _lock:
        file = Path(path)
        if not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            staged = file.with_name(f"{file.name}.{os.getpid()}.new")
            staged.unlink(missing_ok=True)
            _write_new(staged, ed25519.Ed25519PrivateKey.generate())
            try:  # link, not rename: a key another process generated meanwhile is never replaced
                os.link(staged, file)
            except FileExistsError:
                pass
            finally:
                staged.unlink()
        stat = file.stat()
        identity = (stat.st_dev, stat.st_ino, stat.st_mtime_ns)
        cached = _cache.get(path)
        if cached is not None and cached[0] == identity:
            return cached[1]
        key = serialization.load_pem_private_key(file.read_bytes(), password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError("The coalition signing key must be an Ed25519 private key.")
        _cache[path] = (identity, key)
        return key


def existing_key(path: str) -> ed25519.Ed25519PrivateKey | None:
    """The current key if this host has the key file; never generates one. A host that only
    serves the JWKS needs no private key: every public key is in `signing_keys`."""
    return signing_key(path) if Path(path).exists() else None


def _public(key) -> ed25519.Ed25519PublicKey:
    return key.public_key() if isinstance(key, ed25519.Ed25519PrivateKey) else key


def kid_of(key) -> str:
    return thumbprint(_public(key))


def sign(key: ed25519.Ed25519PrivateKey, document: bytes) -> tuple[str, str]:
    return kid_of(key), b64url_encode(key.sign(document))


def verify(key, document: bytes, signature: str) -> bool:
    """`key`: the public key (or a private key, whose public half is used)."""
    try:
        _public(key).verify(b64url_decode(signature), document)
        return True
    except (InvalidSignature, ValueError):
        return False


def public_jwk(kid: str, key) -> dict:
    """The public members only: a JWK built here can never carry the private scalar "d"."""
    raw = _public(key).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw), "kid": kid, "alg": "EdDSA", "use": "sig"}


@dataclass(frozen=True)
class Key:
    kid: str
    public: ed25519.Ed25519PublicKey
    current: bool
    registered_at: datetime | None  # None: the key file's key, not registered yet
    retired_at: datetime | None

    @property
    def state(self) -> str:
        return "retired" if self.retired_at else "current" if self.current else "published"


def _load_public(pem: str) -> ed25519.Ed25519PublicKey | None:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except (ValueError, TypeError):
        return None
    return key if isinstance(key, ed25519.Ed25519PublicKey) else None


def keys(session: Session, current: ed25519.Ed25519PrivateKey | None) -> list[Key]:
    """Every key the coalition signs or signed with: the key file's first, then newest first
    (without the key file, the newest registered key is the current one)."""
    current_kid = kid_of(current) if current is not None else None
    found: dict[str, Key] = {}
    for row in session.scalars(select(SigningKey)):
        public = _load_public(row.public_key_pem)
        if public is None or thumbprint(public) != row.kid:
            continue  # a row whose key is not the one its kid names is neither published nor trusted
        found[row.kid] = Key(row.kid, public, row.kid == current_kid, row.registered_at, row.retired_at)
    rest = sorted(found.values(), key=lambda k: (as_utc(k.registered_at), k.kid), reverse=True)
    if current is None:
        return rest
    first = found.get(current_kid) or Key(current_kid, current.public_key(), True, None, None)
    return [first, *(k for k in rest if k.kid != current_kid)]


def jwks(session: Session, current: ed25519.Ed25519PrivateKey | None) -> dict:
    """The JWKS: every key not retired, the current one first."""
    return {"keys": [public_jwk(k.kid, k.public) for k in keys(session, current) if not k.retired_at]}


def check(by_kid: dict[str, Key], kid: str, document: bytes, signature: str) -> tuple[str, str] | None:
    """For `ledger verify`: (check, what is wrong) with one signature, or None if it holds."""
    key = by_kid.get(kid)
    if key is None:
        return "statement-key-unknown", f"is signed by key {kid}, which the coalition never published"
    if key.retired_at is not None:
        return ("statement-key-retired", f"is signed by key {kid}, retired at {iso_utc(key.retired_at)}: "
                "it is out of the JWKS, so partners can no longer verify it")
    if not verify(key.public, document, signature):
        return "statement-signature", f"has an invalid signature (key {kid})"
    return None


def lock(session: Session, *, shared: bool = False) -> None:
    """Held until commit. A close holds it shared while it signs, a rotation exclusively, so no
    close signs with a key that a concurrent rotation is retiring."""
    if is_sqlite(session):
        session.execute(select(literal(1)))  # begins the transaction: BEGIN IMMEDIATE, the one writer
    else:
        locking = func.pg_advisory_xact_lock_shared if shared else func.pg_advisory_xact_lock
        session.execute(select(locking(SIGNING_LOCK)))


def register(session: Session, key, *, now: datetime) -> SigningKey:
    """The registry row of `key`, added if missing (the key file of an older deployment)."""
    kid = kid_of(key)
    row = session.get(SigningKey, kid)
    if row is None:
        row = SigningKey(kid=kid, public_key_pem=canonical_pem(_public(key)), registered_at=now)
        session.add(row)
        session.flush()
    return row


def for_signing(session: Session, key: ed25519.Ed25519PrivateKey, *, now: datetime) -> None:
    """A close calls this before it signs: the key is published and stays so until it commits."""
    lock(session, shared=True)
    row = register(session, key, now=now)
    if row.retired_at is not None:  # a rotation retired it but crashed before replacing the file
        raise Problem("unavailable", f"The coalition signing key {row.kid} is retired; "
                                     "run `flask settlement rotate-signing-key`, then close again.")


def signed_with(session: Session, kids: list[str]) -> dict[str, int]:
    """How many statements and coalition reports each key signed."""
    counts = dict.fromkeys(kids, 0)
    for model in (Statement, CoalitionReport):
        for kid, n in session.execute(select(model.kid, func.count()).where(model.kid.in_(kids))
                                      .group_by(model.kid)):
            counts[kid] += n
    return counts


def key_view(key: Key, signed: int) -> dict:
    return {"kid": key.kid, "state": key.state, "signed": signed,
            "registered_at": key.registered_at and iso_utc(key.registered_at),
            "retired_at": key.retired_at and iso_utc(key.retired_at)}


def listing(session: Session, current: ed25519.Ed25519PrivateKey) -> list[dict]:
    found = keys(session, current)
    signed = signed_with(session, [k.kid for k in found])
    return [key_view(k, signed[k.kid]) for k in found]


def rotate(session: Session, path: str, *, now: datetime, actor: str,
           retire: tuple[str, ...] = ()) -> dict:
    """Make a new key the current one. The replaced key stays published, so what it signed
    still verifies, unless it is in `retire` (a compromise): then it leaves the JWKS and
    everything it signed fails verification.

    This commits. The key file and the database cannot commit together, so the order is what
    keeps every signature verifiable: the new private key is staged beside the file, the
    database publishes its public half (keeping every older one) and commits, and only then
    does the staged file replace the current one. A crash before the rename leaves the old key
    current and published; the next rotation discards the staged file."""
    lock(session)
    file = Path(path)
    old = signing_key(path)
    register(session, old, now=now)
    rows = {row.kid: row for row in session.scalars(select(SigningKey))}
    for kid in retire:
        if kid not in rows:
            raise Problem("not-found", f"No coalition signing key {kid}.")
    before = {"current": kid_of(old),
              "published": [kid for kid, row in sorted(rows.items()) if row.retired_at is None]}
    staged = file.with_name(file.name + ".next")
    staged.unlink(missing_ok=True)  # left by a rotation that crashed: that key never signed
    new = ed25519.Ed25519PrivateKey.generate()
    _write_new(staged, new)
    try:
        rows[kid_of(new)] = register(session, new, now=now)
        for kid in retire:
            if rows[kid].retired_at is None:
                rows[kid].retired_at = now
        session.flush()
        after = {"current": kid_of(new),
                 "published": [kid for kid, row in sorted(rows.items()) if row.retired_at is None],
                 "retired": sorted(set(retire))}
        audit.record(session, actor=actor, action=ROTATE, subject=SUBJECT, before=before,
                     after=after, now=now)
        result = {"kid": after["current"], "previous": before["current"],
                  "published": [k.kid for k in keys(session, new) if not k.retired_at],
                  "retired": after["retired"],
                  "unverifiable": sum(signed_with(session, after["retired"]).values())}
        session.commit()
        os.replace(staged, file)
        _sync_dir(file.parent)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return result
