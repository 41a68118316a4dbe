"""Passwords for the member portal and the operator console, and the one-time codes that set them.

A principal is "member:<card number>" or "operator:<name>" (`principal`). Its credential row is
stored under the member's internal id (member-id:<id>, the subject every member event of the
audit log uses) or under the operator's name, so the card number stays in `members` alone;
erasing a member deletes the row (`forget_member`).

Passwords are 10 to 256 characters (NFKC-normalised first, so the same password typed on another
keyboard matches) and are stored only as an scrypt hash (cryptography's Scrypt KDF) with a random
16-byte salt and the cost parameters it was hashed with, "scrypt$ln=15,r=8,p=1$<salt>$<key>"
(base64url), so the cost can be raised: a password hashed at other parameters is hashed again at
the current ones on its next successful sign-in. Checking derives the key again and compares in
constant time (Scrypt.verify). A sign-in that cannot succeed (unknown principal, no password
set yet, erased member) derives a key all the same, against a hash of nothing anyone knows, so
its answer takes as long as a wrong password's.

Nobody chooses a first password without a one-time code from an operator (`issue_code`:
`flask members invite`, `flask operators add|invite`): 12 characters of Crockford's base32
(60 random bits from `secrets`), printed once as XXXX-XXXX-XXXX, valid 72 hours, single use, and
replaced by any newer code. Typing it is forgiving (case, dashes, spaces, O for 0, I and L for 1).
Only an HMAC-SHA256 of it is stored, keyed by the principal it was issued to: a fast hash is
enough for 60 random bits that live 3 days, and no code matches another principal's row.

Lock-out: wrong passwords are counted; the fifth in a row locks sign-in for 60 s, each further
wrong one (once the lock has passed) locks it for twice as long as the one before, up to an
hour. While locked, sign-in is refused without looking at the password, and nothing is
counted. A right password, or a password set with a code, clears the count. The credential row
is locked (SELECT ... FOR UPDATE) while the password is checked and the count written, so
parallel guesses queue on it and each sees the count the one before left: no more than five
guesses are ever checked before the first lock-out. The caller commits the transaction whatever
the verdict, so that the count sticks.

Audited (coalition/audit.py, subject the stored principal, never a secret):
credential.code-issued, credential.password-set, credential.locked-out. A sign-in itself is
not: the audit chain takes one lock per write, and portal sign-ins are frequent.

Nothing here imports Flask; nothing here logs, returns or stores a password in clear.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from . import audit
from .clock import as_utc, iso_utc
from .database import is_sqlite
from .hashing import b64url_decode, b64url_encode
from .models import Credential, Member, Operator
from .problems import Problem

MEMBER, OPERATOR = "member", "operator"
KINDS = (MEMBER, OPERATOR)

MIN_PASSWORD, MAX_PASSWORD = 10, 256
LOG_N = 15  # n = 2**15, r = 8, p = 1: 32 MiB and ~0.13 s per hash on one core
R, P = 8, 1
SALT_BYTES, KEY_BYTES = 16, 32
_STORED = re.compile(r"scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]+)")

MAX_FAILURES = 5  # the fifth wrong password in a row locks
FIRST_LOCK = timedelta(seconds=60)
LONGEST_LOCK = timedelta(hours=1)

CODE_LIFETIME = timedelta(hours=72)
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32: no I, L, O, U
CODE_LENGTH, CODE_GROUP = 12, 4
_TYPED_ALIKE = str.maketrans({"O": "0", "I": "1", "L": "1"})
_CODE = re.compile(f"[{CODE_ALPHABET}]{{{CODE_LENGTH}}}")

BAD_CODE = "The code is wrong, was used already, or has expired; ask an operator for a new one."


@dataclass(frozen=True)
class Verdict:
    ok: bool
    # Set when refused because the sign-in is locked out, now or by this very failure.
    locked_until: datetime | None = None


# --- principals ---------------------------------------------------------------------------

def principal(kind: str, name: str) -> str:
    """"member:<card number>" or "operator:<name>": whom a sign-in, code or password is for.
    Any name is taken (an empty or unknown one is simply nobody's), so that a sign-in form can
    pass what was typed without answering differently for names that cannot exist."""
    if kind not in KINDS:
        raise ValueError(f"A principal's kind is {MEMBER} or {OPERATOR}, not {kind!r}.")
    if not isinstance(name, str):
        raise Problem("validation-error", "A principal's name is text.")
    return f"{kind}:{name}"


def member_key(member_id: int) -> str:
    """The stored principal of a member: its internal id, as audit events name members."""
    return f"member-id:{member_id}"


def operator_key(name: str) -> str:
    return f"{OPERATOR}:{name}"


def _stored_key(session: Session, given: str, *, hold_member: bool = False) -> str | None:
    """The credential key of an enrolled, unerased member or of an operator; None for anyone
    else. `hold_member`: keep the member row from being erased until the caller commits (FOR KEY
    SHARE on PostgreSQL), for a writer that may insert the credential row."""
    kind, colon, name = given.partition(":") if isinstance(given, str) else ("", "", "")
    if not colon or not name or len(name) > 64 or "\x00" in name:
        return None  # no card number nor operator name is like that (and PostgreSQL refuses NUL)
    if kind == MEMBER:
        query = select(Member.id).where(Member.external_id == name, Member.erased_at.is_(None))
        if hold_member:
            query = query.with_for_update(read=True, key_share=True)
        pk = session.scalar(query)
        return None if pk is None else member_key(pk)
    if kind == OPERATOR:
        return operator_key(name) if session.get(Operator, name) is not None else None
    return None


def _locked_row(session: Session, key: str) -> Credential | None:
    # populate_existing: counts read before the lock would be stale (see ledger.lock_member).
    return session.scalars(select(Credential).where(Credential.principal == key)
                           .with_for_update().execution_options(populate_existing=True)
                           ).one_or_none()


def _row_for_writing(session: Session, key: str, now: datetime) -> Credential:
    """The row, created if missing, locked. INSERT ... ON CONFLICT DO NOTHING first, so two
    writers creating it at once do not fail: the second waits for the first and finds its row."""
    insert = sqlite_insert if is_sqlite(session) else postgresql_insert
    session.execute(insert(Credential).values(principal=key, failures=0, updated_at=now)
                    .on_conflict_do_nothing(index_elements=[Credential.principal]))
    return _locked_row(session, key)


# --- hashing ------------------------------------------------------------------------------

def _normalised(password: str) -> bytes:
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def _kdf(salt: bytes, log_n: int, r: int, p: int, length: int) -> Scrypt:
    return Scrypt(salt=salt, length=length, n=2 ** log_n, r=r, p=p)


def hash_password(password: str, log_n: int = LOG_N) -> str:
    salt = os.urandom(SALT_BYTES)
    key = _kdf(salt, log_n, R, P, KEY_BYTES).derive(_normalised(password))
    return f"scrypt$ln={log_n},r={R},p={P}${b64url_encode(salt)}${b64url_encode(key)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    m = _STORED.fullmatch(stored)
    if m is None:
        raise ValueError("not a stored password hash")
    return int(m[1]), int(m[2]), int(m[3]), b64url_decode(m[4]), b64url_decode(m[5])


def password_matches(stored: str, password: str) -> bool:
    """Derive the key again with the stored salt and parameters; compare in constant time."""
    log_n, r, p, salt, key = _parse(stored)
    try:
        _kdf(salt, log_n, r, p, len(key)).verify(_normalised(password), key)
    except InvalidKey:
        return False
    return True


def needs_rehash(stored: str, log_n: int = LOG_N) -> bool:
    stored_log_n, r, p, _, key = _parse(stored)
    return (stored_log_n, r, p, len(key)) != (log_n, R, P, KEY_BYTES)


# A hash of a password nobody knows (random, thrown away once hashed), at LOG_N: what a sign-in
# that cannot succeed checks against, so that it costs what a wrong password costs.
DECOY = "scrypt$ln=15,r=8,p=1$fdoOZ0Sfp1bpEdMdR3-qSw$u3U3Gn72UgWWzQIsaTOedmtrqCqAcBz8YkofxWaKpKE"


@lru_cache(maxsize=4)
def _decoy(log_n: int) -> str:
    return DECOY if not needs_rehash(DECOY, log_n) else hash_password(secrets.token_urlsafe(32), log_n)


def _checkable(password) -> str:
    """What a sign-in derives a key from: the password, or (not a string, too long to have been
    set) a stand-in that cannot match, so that the work and the answer stay the same."""
    if isinstance(password, str) and len(password) <= MAX_PASSWORD:
        return password
    return "\x00" * MIN_PASSWORD


# --- signing in ---------------------------------------------------------------------------

def lock_for(failures: int) -> timedelta | None:
    """How long the `failures`-th wrong password in a row locks sign-in (None: not at all)."""
    if failures < MAX_FAILURES:
        return None
    doublings = min(failures - MAX_FAILURES, 12)  # 60 s * 2**6 passes the hour already
    return min(FIRST_LOCK * 2 ** doublings, LONGEST_LOCK)


def sign_in(session: Session, principal: str, password: str, *, now: datetime) -> Verdict:
    """Check a password, in the caller's transaction, which it must commit whatever the verdict
    (a failure is counted in it). Unknown principals, principals without a password and erased
    members are refused after the same work as a wrong password. While locked out, refused
    with `locked_until` and the password is not looked at."""
    key = _stored_key(session, principal)
    row = _locked_row(session, key) if key is not None else None
    if row is None or row.password_hash is None:
        password_matches(_decoy(LOG_N), _checkable(password))
        return Verdict(False)
    if row.locked_until is not None and as_utc(row.locked_until) > now:
        return Verdict(False, as_utc(row.locked_until))
    if password_matches(row.password_hash, _checkable(password)):
        if row.failures or row.locked_until is not None:
            row.failures, row.locked_until, row.updated_at = 0, None, now
        if needs_rehash(row.password_hash):
            row.password_hash, row.updated_at = hash_password(password), now
        session.flush()
        return Verdict(True)
    row.failures += 1
    row.updated_at = now
    lock = lock_for(row.failures)
    if lock is None:
        session.flush()
        return Verdict(False)
    row.locked_until = now + lock
    audit.record(session, actor=audit.SYSTEM, action="credential.locked-out", subject=key,
                 before=None, after={"failures": row.failures, "seconds": int(lock.total_seconds()),
                                     "locked_until": iso_utc(row.locked_until)}, now=now)
    return Verdict(False, row.locked_until)


def has_password(session: Session, principal: str) -> bool:
    key = _stored_key(session, principal)
    return key is not None and session.scalar(
        select(Credential.password_hash.is_not(None)).where(Credential.principal == key)) is True


# --- one-time codes and setting the password ----------------------------------------------

def _code_hash(key: str, code: str) -> str:
    return hmac.new(f"coalition.credential-code/1:{key}".encode(), code.encode("ascii"),
                    hashlib.sha256).hexdigest()


def _typed(code) -> str | None:
    """The code as issued from what someone typed, or None if it cannot be one."""
    if not isinstance(code, str) or len(code) > 4 * CODE_LENGTH:
        return None
    plain = re.sub(r"[\s-]", "", code).upper().translate(_TYPED_ALIKE)
    return plain if _CODE.fullmatch(plain) else None


def issue_code(session: Session, principal: str, *, now: datetime, actor: str) -> str:
    """A fresh one-time code for the principal, returned once (XXXX-XXXX-XXXX) and stored only
    hashed, valid for CODE_LIFETIME; any older code stops working. Audited as
    credential.code-issued. not-found for anyone but an enrolled member or an operator."""
    key = _stored_key(session, principal, hold_member=True)
    if key is None:
        raise Problem("not-found", "No such operator." if principal.startswith(OPERATOR + ":")
                      else "No such member: the card number is not enrolled, or was erased.")
    row = _row_for_writing(session, key, now)
    replaced = row.code_hash is not None and as_utc(row.code_expires_at) > now
    code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    row.code_hash, row.code_expires_at, row.updated_at = _code_hash(key, code), now + CODE_LIFETIME, now
    session.flush()
    audit.record(session, actor=actor, action="credential.code-issued", subject=key,
                 before=None, after={"expires_at": iso_utc(row.code_expires_at),
                                     "replaced_code": replaced,
                                     "password_set": row.password_hash is not None}, now=now)
    return "-".join(code[i:i + CODE_GROUP] for i in range(0, CODE_LENGTH, CODE_GROUP))


def check_password_rules(password) -> None:
    if not isinstance(password, str):
        raise Problem("validation-error", "A password is text.",
                      errors=[{"pointer": "/password", "detail": "Must be a string."}])
    length = len(unicodedata.normalize("NFKC", password))
    if not MIN_PASSWORD <= length <= MAX_PASSWORD:
        raise Problem("validation-error",
                      f"A password is {MIN_PASSWORD} to {MAX_PASSWORD} characters long.",
                      errors=[{"pointer": "/password",
                               "detail": f"Must be {MIN_PASSWORD} to {MAX_PASSWORD} characters."}])


def set_password(session: Session, principal: str, code: str, password: str, *,
                 now: datetime) -> None:
    """Redeem the principal's one-time code and set its password (the code is used up, the
    failure count and any lock-out cleared). validation-error for a password too short or too
    long, and for a code that is wrong, used, expired or not the principal's (one message for
    all: it does not tell whether the principal exists). Audited as credential.password-set."""
    check_password_rules(password)
    key = _stored_key(session, principal)
    row = _locked_row(session, key) if key is not None else None
    typed = _typed(code)
    valid = (row is not None and row.code_hash is not None and typed is not None
             and as_utc(row.code_expires_at) > now
             and hmac.compare_digest(row.code_hash, _code_hash(key, typed)))
    if not valid:
        raise Problem("validation-error", BAD_CODE,
                      errors=[{"pointer": "/code", "detail": "Wrong, used or expired."}])
    had_password = row.password_hash is not None
    row.password_hash = hash_password(password)
    row.code_hash = row.code_expires_at = None
    row.failures, row.locked_until, row.updated_at = 0, None, now
    session.flush()
    audit.record(session, actor=key, action="credential.password-set", subject=key,
                 before={"password_set": had_password}, after={"password_set": True}, now=now)


# --- what others show or erase ------------------------------------------------------------

def state(row: Credential | None, now: datetime) -> dict:
    """What may be shown about a credential: never a hash."""
    locked = row is not None and row.locked_until is not None and as_utc(row.locked_until) > now
    return {"password_set": row is not None and row.password_hash is not None,
            "code_pending": row is not None and row.code_hash is not None
                            and as_utc(row.code_expires_at) > now,
            "failures": row.failures if row is not None else 0,
            "locked_until": iso_utc(row.locked_until) if locked else None}


def stored(session: Session, key: str) -> Credential | None:
    return session.get(Credential, key)


def forget_member(session: Session, member_id: int) -> int:
    """Delete the member's credential (member erasure); returns the rows deleted (0 or 1)."""
    return session.execute(delete(Credential).where(Credential.principal == member_key(member_id))
                           .execution_options(synchronize_session=False)).rowcount
