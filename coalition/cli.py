"""Operator commands of the core: `members add`, `ledger verify`. Every command prints JSON."""
from __future__ import annotations

import functools
import json
import re
import sys
from datetime import datetime, timezone

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from .database import db
from .errors import Problem
from .fields import ID_PATTERN
from . import members as member_service
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


def check_id(value: str, what: str) -> str:
    if not re.fullmatch(ID_PATTERN, value):
        raise Problem("validation-error", f"{what} must match {ID_PATTERN}.")
    return value


members_cli = AppGroup("members", help="Enrol and inspect members.")
ledger_cli = AppGroup("ledger", help="The ledger of record.")


@members_cli.command("add")
@click.argument("member_id")
@json_command
def members_add(member_id: str):
    member, created = member_service.enrol(db.session, check_id(member_id, "MEMBER_ID"),
                                           now=datetime.now(timezone.utc))
    return {"member_id": member.external_id, "created": created}


@ledger_cli.command("verify")
def ledger_verify():
    """Re-derive every balance, lot and consumption from the journal; exit 1 on any violation."""
    report = verify(db.session, current_app.extensions.get("ledger_checks"))
    db.session.rollback()
    emit(report)
    if not report["ok"]:
        sys.exit(1)


def init_app(app: Flask) -> None:
    app.cli.add_command(members_cli)
    app.cli.add_command(ledger_cli)
