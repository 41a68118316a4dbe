"""Who is signed in to a page, signing in and out, and the decorator that guards a page.

Passwords, one-time codes and the lock-out after failed attempts are the domain's
(coalition/credentials.py), shared by both faces. A page is opened only by the web session:
a partner's bearer token is never looked at here, and the partner API never reads the session.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import timedelta

from flask import abort, g, redirect, request, session, url_for

from coalition import clock, credentials, members, operators
from coalition.database import db

from . import i18n

MEMBER, OPERATOR = "member", "operator"
SIGN_IN = {MEMBER: "portal.sign_in", OPERATOR: "console.sign_in"}
HOME = {MEMBER: "portal.balance", OPERATOR: "console.home"}
# A signed-in session unused this long is over (a shared or lost device).
IDLE_LIMIT = timedelta(minutes=30)


@dataclass(frozen=True)
class Who:
    kind: str  # member | operator
    name: str  # the member's card number, or the operator's name
    role: str | None = None  # an operator's: admin | analyst

    @property
    def principal(self) -> str:
        return credentials.principal(self.kind, self.name)


def current() -> Who | None:
    """The member or operator this session belongs to, looked up afresh on every request: an
    erased member or a removed operator is signed out at once, a changed role applies at once.
    A session left unused for IDLE_LIMIT is over."""
    if "who" not in g:
        g.who = _lookup(session.get("who")) if _still_active() else None
    return g.who


def _still_active() -> bool:
    if "who" not in session:
        return False
    now = int(clock.now().timestamp())
    seen = session.get("seen")
    if not isinstance(seen, int) or now - seen > IDLE_LIMIT.total_seconds():
        sign_out()
        return False
    if now - seen >= 60:  # rewrite the cookie at most once a minute
        session["seen"] = now
    return True


def _lookup(stored) -> Who | None:
    if not isinstance(stored, list) or len(stored) != 2:
        return None
    kind, name = stored
    if kind == MEMBER:
        return Who(MEMBER, name) if members.find(db.session, name) is not None else None
    if kind == OPERATOR:
        operator = operators.get(db.session, name)
        return Who(OPERATOR, name, operator.role) if operator is not None else None
    return None


def login_required(kind: str, roles: tuple[str, ...] | None = None):
    """Guard a page: signed in as `kind` (and, for operators, in one of `roles`), else to the
    sign-in page (then back here), or 403 for an operator of another role."""
    def decorate(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            who = current()
            if who is None or who.kind != kind:
                back = request.full_path.rstrip("?") if request.method == "GET" else None
                return redirect(url_for(SIGN_IN[kind], next=back))
            if roles is not None and who.role not in roles:
                abort(403)
            return view(*args, **kwargs)
        return guarded
    return decorate


def sign_in(kind: str, name: str, password: str) -> str | None:
    """Check the password; None once signed in, else what to tell the person."""
    now = clock.now()
    verdict = credentials.sign_in(db.session, credentials.principal(kind, name), password, now=now)
    db.session.commit()  # failed attempts count even when this one fails
    if verdict.ok:
        _start_session(Who(kind, name))
        return None
    if verdict.locked_until is not None:
        # Rounded up to the minute: "after 10:05" must not name a moment still locked.
        until = verdict.locked_until
        if until.second or until.microsecond:
            until = until.replace(second=0, microsecond=0) + timedelta(minutes=1)
        return i18n.gettext("Too many failed attempts. Try again after {time}.",
                            time=i18n.clock_time(until))
    return i18n.gettext("The member number or the password is wrong." if kind == MEMBER
                        else "The name or the password is wrong.")


def set_password(kind: str, name: str, code: str, password: str) -> None:
    """Redeem a one-time code for a password; a validation-error Problem says what is wrong."""
    credentials.set_password(db.session, credentials.principal(kind, name), code, password,
                             now=clock.now())
    db.session.commit()


def _start_session(who: Who) -> None:
    # A new session (and so a new CSRF token) at sign-in: nothing from before it carries over
    # into the signed-in session but the language.
    language = session.get("lang")
    session.clear()
    if language:
        session["lang"] = language
    session["who"] = [who.kind, who.name]
    session["seen"] = int(clock.now().timestamp())
    g.who = who


def sign_out() -> None:
    language = session.get("lang")
    session.clear()
    if language:
        session["lang"] = language
    g.who = None


def safe_next(target: str | None, kind: str) -> str:
    """Where to go after signing in: a page of the same face, never another site."""
    prefix = "/portal/" if kind == MEMBER else "/console/"
    if target and target.startswith(prefix) and "//" not in target and "\\" not in target:
        return target
    return url_for(HOME[kind])
