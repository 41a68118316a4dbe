"""Operator accounts: the people who sign in to the operator console, each with a role.

An admin may change things, an analyst only reads (the console enforces it). An operator is
added with `flask operators add NAME --role ...`, which prints a one-time code the operator
sets a password with (coalition/credentials.py); `flask operators invite NAME` prints a new one,
after a forgotten password say; `flask operators remove NAME` ends the account. Names are lower case (a-z, 0-9, . _ @ -), so that "Anna" and
"anna" cannot be two operators; they are the audit subject operator:<name>.
"""
from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from . import audit, credentials
from .clock import iso_utc
from .database import is_sqlite
from .models import Credential, Operator
from .problems import Problem

ROLES = ("admin", "analyst")
NAME_PATTERN = r"^[a-z0-9][a-z0-9._@-]{0,63}$"


def _check(name, role) -> None:
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise Problem("validation-error", f"An operator's name must match {NAME_PATTERN}.",
                      errors=[{"pointer": "/name", "detail": f"Must match {NAME_PATTERN}."}])
    if role not in ROLES:
        raise Problem("validation-error", f"An operator's role is one of {', '.join(ROLES)}.",
                      errors=[{"pointer": "/role", "detail": f"One of {', '.join(ROLES)}."}])


def add(session: Session, name: str, role: str, *, now: datetime, actor: str) -> str:
    """Add an operator and return its first one-time code (printed once, stored hashed).
    Audited as operator.add, and the code as credential.code-issued."""
    _check(name, role)
    insert = sqlite_insert if is_sqlite(session) else postgresql_insert
    # ON CONFLICT DO NOTHING: the same name added twice at once is refused, not an error.
    added = session.scalar(insert(Operator).values(name=name, role=role, created_at=now)
                           .on_conflict_do_nothing(index_elements=[Operator.name])
                           .returning(Operator.name))
    if added is None:
        raise Problem("validation-error", f"Operator {name!r} exists already.")
    audit.record(session, actor=actor, action="operator.add", subject=credentials.operator_key(name),
                 before=None, after={"role": role}, now=now)
    return credentials.issue_code(session, credentials.principal(credentials.OPERATOR, name),
                                  now=now, actor=actor)


def get(session: Session, name: str) -> Operator | None:
    return session.get(Operator, name) if isinstance(name, str) else None


def invite(session: Session, name: str, *, now: datetime, actor: str) -> str:
    """A new one-time code for an operator (the older one stops working); the password, if
    any, keeps working until the code sets a new one."""
    if get(session, name) is None:
        raise Problem("not-found", f"No operator {name!r}.")
    return credentials.issue_code(session, credentials.principal(credentials.OPERATOR, name),
                                  now=now, actor=actor)


def remove(session: Session, name: str, *, now: datetime, actor: str) -> None:
    """Remove an operator and its credential: it cannot sign in any more, and a console session
    it holds ends at its next request (the console looks the operator up on each). Audited as
    operator.remove; the audit events naming it stay."""
    operator = session.scalars(select(Operator).where(Operator.name == name)
                               .with_for_update()).one_or_none() if isinstance(name, str) else None
    if operator is None:
        raise Problem("not-found", f"No operator {name!r}.")
    role = operator.role
    session.execute(delete(Credential).where(Credential.principal == credentials.operator_key(name))
                    .execution_options(synchronize_session=False))
    session.delete(operator)
    session.flush()
    audit.record(session, actor=actor, action="operator.remove",
                 subject=credentials.operator_key(name), before={"role": role}, after=None, now=now)


def listed(session: Session, now: datetime) -> list[dict]:
    """Every operator by name, with the state of its sign-in (never a hash)."""
    rows = session.execute(select(Operator, Credential).outerjoin(
        Credential, Credential.principal == credentials.OPERATOR + ":" + Operator.name)
        .order_by(Operator.name))
    return [view(operator, credential, now) for operator, credential in rows]


def view(operator: Operator, credential: Credential | None, now: datetime) -> dict:
    return {"name": operator.name, "role": operator.role,
            "created_at": iso_utc(operator.created_at), **credentials.state(credential, now)}
