"""Operator commands of the core: `members add`, `ledger verify`, `audit list`. Every command
prints JSON. Commands that change state record who asked (`operator()`) in the audit log."""
from __future__ import annotations

import functools
import getpass
import json
import os
import re
import sys
from datetime import datetime, timezone

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from . import audit, sealer
from . import members as member_service
from .database import db
from .errors import Problem
from .fields import ID_PATTERN
from .verify import verify


def emit(doc) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def json_command(fn):
    """Run an operator command in one transaction; a Problem becomes a JSON error and exit 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
            db.session.commit()
        except Problem as problem:
            db.session.rollback()
            click.echo(json.dumps({"error": problem.slug, "detail": problem.detail,
                                   **({"errors": problem.errors} if problem.errors else {})}))
            sys.exit(1)
        if result is not None:
            emit(result)
    return wrapper


def operator() -> str:
    """The actor of an operator command: $COALITION_OPERATOR if set, else the OS user."""
    name = os.environ.get("COALITION_OPERATOR", "").strip()
    if not name:
        try:
            name = getpass.getuser()
        except Exception:  # no user name in the environment nor the password database
            name = f"uid:{os.getuid()}"
    if len(name) > 128:
        raise Problem("validation-error", "COALITION_OPERATOR is longer than 128 characters.")
    return name


def check_id(value: str, what: str) -> str:
    if not re.fullmatch(ID_PATTERN, value):
        raise Problem("validation-error", f"{what} must match {ID_PATTERN}.")
    return value


members_cli = AppGroup("members", help="Enrol and inspect members.")
ledger_cli = AppGroup("ledger", help="The ledger of record.")
audit_cli = AppGroup("audit", help="The audit log of operator actions (append-only).")


@members_cli.command("add")
@click.argument("member_id")
@json_command
def members_add(member_id: str):
    now = datetime.now(timezone.utc)
    member, created = member_service.enrol(db.session, check_id(member_id, "MEMBER_ID"), now=now)
    if created:  # enrolment is recorded here, not in enrol(): partners enrol members over the API
        # Personal data: the external id appears in this event only (erasure: see audit.py).
        audit.record(db.session, actor=operator(), action="member.add",
                     subject=f"member:{member.external_id}", before=None,
                     after={"member": member.id}, now=now)
    return {"member_id": member.external_id, "created": created}


@ledger_cli.command("verify")
def ledger_verify():
    """Re-derive every balance, lot and consumption from the journal; exit 1 on any violation."""
    report = verify(db.session, current_app.extensions.get("ledger_checks"))
    db.session.rollback()
    emit(report)
    if not report["ok"]:
        sys.exit(1)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise Problem("validation-error", "--since must be an ISO 8601 date or date-time.") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@audit_cli.command("list")
@click.option("--since", default=None, help="ISO date or date-time (UTC unless it says otherwise)")
@click.option("--subject", default=None, help="e.g. partner:acme, member:CARD-1, period:2026-05")
@click.option("--action", default=None, help="e.g. partner.suspend; partner.key matches partner.key.*")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000),
              help="the newest N matching events (printed oldest first)")
@json_command
def audit_list(since, subject, action, limit):
    """Print audit events as JSON, oldest first, with their before and after values."""
    return [audit.event_view(e) for e in audit.events(db.session, since=_since(since), subject=subject,
                                                       action=action, limit=limit)]


@ledger_cli.command("seal")
@json_command
def ledger_seal():
    """Chain committed entries into blocks (run it every few seconds, or from cron)."""
    blocks = sealer.seal(db.session, now=datetime.now(timezone.utc))
    return {"blocks": len(blocks), "entries": sum(b.entry_count for b in blocks),
            **sealer.anchor(db.session)}


@ledger_cli.command("anchor")
@json_command
def ledger_anchor():
    """The head block's hash: keep it somewhere outside this database."""
    return sealer.anchor(db.session)


def init_app(app: Flask) -> None:
    app.cli.add_command(members_cli)
    app.cli.add_command(ledger_cli)
    app.cli.add_command(audit_cli)
