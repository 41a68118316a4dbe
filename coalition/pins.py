"""Member PINs: set and changed by the member (at a till's PIN pad now, in the portal later),
checked before a redemption that the partner's policy says needs one (coalition/redemption.py).

A PIN is 4 to 6 ASCII digits. It is stored only as an scrypt hash (cryptography's Scrypt KDF)
with a random 16-byte salt of its own and the cost parameters it was hashed with,
"scrypt$ln=14,r=8,p=1$<salt>$<key>" (base64url), so the cost can be raised later: a PIN hashed
at other parameters is hashed again at the current ones the next time it is entered correctly.
Verification derives the key again and compares in constant time (Scrypt.verify).

Five wrong PINs in a row lock redemption for the member (`pin_locked_at`, audited as
`member.pin.lock`) at every partner until an operator runs `members unlock-pin` or
`members reset-pin`; a correct PIN resets the count. A PIN is checked with the member's row
locked (SELECT ... FOR UPDATE), and a wrong one is counted in the same transaction, which the
caller commits although the request fails (problems.Refusal): parallel guesses queue on the row
and each sees the count the one before it left, so no more than five are ever tried.

Nothing here imports Flask; nothing here logs, returns or stores a PIN in clear.
"""
from __future__ import annotations

import os
import re
from datetime import datetime

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import audit
from .hashing import b64url_decode, b64url_encode
from .models import Member
from .problems import Problem, Refusal

PIN_PATTERN = r"^[0-9]{4,6}$"
_PIN = re.compile(r"[0-9]{4,6}")  # fullmatch; [0-9], not \d: ASCII digits only
MAX_FAILURES = 5
DEFAULT_LOG_N = 14  # n = 2**14, r = 8, p = 1: 16 MiB and ~45 ms per hash on one core
R, P = 8, 1
SALT_BYTES, KEY_BYTES = 16, 32
_STORED = re.compile(r"scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([A-Za-z0-9_-]+)\$([A-Za-z0-9_-]+)")

PIN_LOCKED = ("Redemption is locked for this member after 5 wrong PINs in a row; "
              "an operator must unlock it.")


def subject(member: Member) -> str:
    """The audit subject of a member's PIN events: the internal id, as the journal names members,
    so the card number stays in the member row only and never enters the append-only log."""
    return f"member-id:{member.id}"


def _kdf(salt: bytes, log_n: int, r: int, p: int, length: int) -> Scrypt:
    return Scrypt(salt=salt, length=length, n=2 ** log_n, r=r, p=p)


def valid_pin(pin) -> bool:
    return isinstance(pin, str) and _PIN.fullmatch(pin) is not None


def hash_pin(pin: str, log_n: int = DEFAULT_LOG_N) -> str:
    salt = os.urandom(SALT_BYTES)
    key = _kdf(salt, log_n, R, P, KEY_BYTES).derive(pin.encode("ascii"))
    return f"scrypt$ln={log_n},r={R},p={P}${b64url_encode(salt)}${b64url_encode(key)}"


def _parse(stored: str) -> tuple[int, int, int, bytes, bytes]:
    m = _STORED.fullmatch(stored)
    if m is None:
        raise ValueError("not a stored PIN hash")
    return int(m[1]), int(m[2]), int(m[3]), b64url_decode(m[4]), b64url_decode(m[5])


def pin_matches(stored: str, pin: str) -> bool:
    """Derive the key again with the stored salt and parameters; compare in constant time."""
    log_n, r, p, salt, key = _parse(stored)
    try:
        _kdf(salt, log_n, r, p, len(key)).verify(pin.encode("ascii"), key)
    except InvalidKey:
        return False
    return True


def needs_rehash(stored: str, log_n: int) -> bool:
    stored_log_n, r, p, _, key = _parse(stored)
    return (stored_log_n, r, p, len(key)) != (log_n, R, P, KEY_BYTES)


def _check_format(pin, pointer: str) -> None:
    if not valid_pin(pin):
        raise Problem("validation-error", "A PIN is 4 to 6 digits.",
                      errors=[{"pointer": pointer, "detail": "Must be 4 to 6 digits (0-9)."}])


def _lock(session: Session, external_id: str) -> Member | None:
    # populate_existing: counts read before the lock would be stale (see ledger.lock_member).
    return session.scalars(select(Member).where(Member.external_id == external_id)
                           .with_for_update().execution_options(populate_existing=True)
                           ).one_or_none()


# --- checking -----------------------------------------------------------------------------

def check_pin(session: Session, member: Member, pin: str | None, *, partner_id: str,
              now: datetime) -> None:
    """Check a PIN the member entered, with `member` locked FOR UPDATE by the caller.

    No PIN set, or none given: member-auth-required (nothing counted). A wrong PIN counts a
    failure and raises Refusal: member-auth-invalid, or member-locked (audited) when it is the
    fifth in a row. A correct PIN returns; the caller resets the count with `confirmed` once
    what the PIN authorised is done (a burn that is refused after all leaves the count as is).
    """
    if member.pin_locked_at is not None:
        raise Problem("member-locked", PIN_LOCKED)
    if member.pin_hash is None:
        raise Problem("member-auth-required",
                      "This redemption needs the member's PIN, and the member has not set one "
                      "yet.")
    if pin is None:
        raise Problem("member-auth-required", "This redemption needs the member's PIN "
                      "(member_pin, from the PIN pad).")
    if not pin_matches(member.pin_hash, pin):
        _count_failure(session, member, partner_id=partner_id, now=now)


def _count_failure(session: Session, member: Member, *, partner_id: str | None,
                   now: datetime) -> None:
    member.pin_failures += 1
    if member.pin_failures >= MAX_FAILURES:
        member.pin_locked_at = now
        audit.record(session, actor=audit.SYSTEM, action="member.pin.lock",
                     subject=subject(member), before={"pin_locked": False},
                     after={"pin_locked": True, "pin_failures": member.pin_failures,
                            "partner": partner_id}, now=now)
        session.flush()
        raise Refusal("member-locked", PIN_LOCKED)
    session.flush()
    # How many tries remain is not said: the count is shared by every partner, and would tell
    # one partner of the member's attempts at another.
    raise Refusal("member-auth-invalid",
                  f"Wrong PIN. Redemption locks after {MAX_FAILURES} wrong PINs in a row.")


def confirmed(member: Member, pin: str, *, log_n: int) -> None:
    """After a correct PIN authorised something that is now done: reset the count, and hash the
    PIN again if it was hashed at other cost parameters than the current ones."""
    member.pin_failures = 0
    if needs_rehash(member.pin_hash, log_n):
        member.pin_hash = hash_pin(pin, log_n)


# --- setting ------------------------------------------------------------------------------

def set_pin(session: Session, external_id: str, pin: str, *, current_pin: str | None,
            now: datetime, log_n: int = DEFAULT_LOG_N, partner_id: str | None = None) -> bool:
    """Set a member's first PIN (`pin` alone), or change it (`current_pin` too). Returns True
    if the member had no PIN before. The till's PIN pad calls this through the partner API
    today, the member portal will call it directly.

    With a PIN set, `current_pin` is required (member-auth-required without it, nothing
    counted) and a wrong one counts as a failure like a burn's. Without one, `current_pin`
    must not be sent. A PIN lock refuses changes too (member-locked).

    Not idempotent in the usual sense: after a first set, repeating it needs `current_pin`
    (the PIN just set); after a change whose answer was lost, retry with the new PIN as
    `current_pin`. Treating "the same PIN again" as success without it would let anyone test
    PIN guesses for free.
    """
    _check_format(pin, "/pin")
    if current_pin is not None:
        _check_format(current_pin, "/current_pin")
    member = _lock(session, external_id)
    if member is None:
        raise Problem("not-found", "No such member.")
    if member.pin_locked_at is not None:
        raise Problem("member-locked", PIN_LOCKED)
    first = member.pin_hash is None
    if first and current_pin is not None:
        raise Problem("validation-error", "This member has no PIN yet: send pin alone.",
                      errors=[{"pointer": "/current_pin", "detail": "No PIN is set yet."}])
    if not first:
        if current_pin is None:
            raise Problem("member-auth-required",
                          "This member has a PIN: send current_pin to change it.")
        if not pin_matches(member.pin_hash, current_pin):
            _count_failure(session, member, partner_id=partner_id, now=now)
    member.pin_hash = hash_pin(pin, log_n)
    member.pin_failures = 0
    session.flush()
    return first


# --- operator -----------------------------------------------------------------------------

def _find(session: Session, external_id: str) -> Member:
    member = _lock(session, external_id)
    if member is None:
        raise Problem("not-found", "No such member.")
    return member


def pin_state(member: Member) -> dict:
    return {"pin_set": member.pin_hash is not None, "pin_failures": member.pin_failures,
            "pin_locked": member.pin_locked_at is not None}


def unlock(session: Session, external_id: str, *, now: datetime, actor: str) -> tuple[Member, bool]:
    """Lift a PIN lock and clear the failure count; the PIN stays. Audited when it changed
    anything (`member.pin.unlock`). The operator's own `locked` flag is left alone."""
    member = _find(session, external_id)
    if member.pin_locked_at is None and member.pin_failures == 0:
        return member, False
    before = pin_state(member)
    member.pin_locked_at, member.pin_failures = None, 0
    audit.record(session, actor=actor, action="member.pin.unlock", subject=subject(member),
                 before=before, after=pin_state(member), now=now)
    return member, True


def reset(session: Session, external_id: str, *, now: datetime, actor: str) -> tuple[Member, bool]:
    """Remove a forgotten PIN (and any PIN lock), so that the member can set a new one at a
    till. Audited when it changed anything (`member.pin.reset`)."""
    member = _find(session, external_id)
    if member.pin_hash is None and member.pin_locked_at is None and member.pin_failures == 0:
        return member, False
    before = pin_state(member)
    member.pin_hash, member.pin_locked_at, member.pin_failures = None, None, 0
    audit.record(session, actor=actor, action="member.pin.reset", subject=subject(member),
                 before=before, after=pin_state(member), now=now)
    return member, True
