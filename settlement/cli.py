"""`flask settlement close|show|signing-keys|rotate-signing-key`: close a month into statements,
print them, manage the coalition key that signs them."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click
from flask import current_app
from flask.cli import AppGroup

from coalition.cli import json_command, operator
from coalition.database import db
from coalition.errors import Problem

from . import exports, service, signing
from .pdf import statement_pdf

settlement_cli = AppGroup("settlement", help="Monthly settlement: close months, show statements, "
                                               "rotate the statement signing key.")


@settlement_cli.command("close")
@click.argument("period")
@json_command
def close(period):
    """Close month YYYY-MM (it must have ended, after every earlier month) and write statements."""
    key = signing.signing_key(current_app.config["COALITION_SIGNING_KEY_FILE"])
    return service.close(db.session, period, now=datetime.now(timezone.utc),
                         tz=current_app.config["COALITION_TIMEZONE"], key=key, actor=operator())


@settlement_cli.command("show")
@click.argument("period")
@click.option("--partner", "partner_id", default=None, help="one partner's statement")
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "pdf"]), default="json")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="with --format pdf: the file to write")
@json_command
def show(period, partner_id, fmt, out):
    """Print a closed month: the coalition view, or one partner's statement (PDF to --out)."""
    if fmt == "pdf":
        if partner_id is None or out is None:
            raise Problem("validation-error", "--format pdf needs --partner ID and --out FILE.")
        service.report(db.session, period)
        row = service.statement(db.session, partner_id, period)
        Path(out).write_bytes(statement_pdf(service.signed(row)))
        return {"written": out, "partner_id": partner_id, "period": period, "digest": row.digest}
    if partner_id is None:
        signed = service.signed(service.report(db.session, period))
        if fmt == "csv":
            click.echo(exports.report_csv(signed["document"]), nl=False)
            return None
        signed["partners"] = [service.signed(service.statement(db.session, s["partner_id"], period))
                              for s in signed["document"]["statements"]]
        return signed
    service.report(db.session, period)  # period-open if the month is not closed
    row = service.statement(db.session, partner_id, period)
    if fmt == "csv":
        click.echo(exports.statement_csv(service.signed(row)["document"], row.digest), nl=False)
        return None
    return service.signed(row)


@settlement_cli.command("signing-keys")
@json_command
def signing_keys():
    """List the coalition's signing keys: current, published (replaced) or retired, and how
    many statements and reports each signed."""
    return signing.listing(db.session, signing.signing_key(current_app.config["COALITION_SIGNING_KEY_FILE"]))


@settlement_cli.command("rotate-signing-key")
@click.option("--retire", "retire", multiple=True, metavar="KID",
              help="also withdraw this key from the JWKS (compromised): what it signed stops verifying")
@json_command
def rotate_signing_key(retire):
    """Generate a new statement signing key that signs from now on. Replaced keys stay in the
    JWKS so what they signed still verifies, unless retired with --retire."""
    return signing.rotate(db.session, current_app.config["COALITION_SIGNING_KEY_FILE"],
                          now=datetime.now(timezone.utc), actor=operator(), retire=tuple(retire))
