"""`flask settlement close|show|signing-keys|rotate-signing-key`: close a month into statements,
print them, manage the coalition key that signs them."""
from __future__ import annotations

from pathlib import Path

import click
from flask import current_app

from coalition import books, clock
from coalition.cli import JsonGroup, json_command, operator
from coalition.database import db
from coalition.errors import Problem

from . import exports, pdf, service, signing

settlement_cli = JsonGroup("settlement", help="Monthly settlement: close months, show statements, "
                                                "rotate the statement signing key.")


@settlement_cli.command("close")
@click.argument("period")
@json_command
def close(period):
    """Close month YYYY-MM (it must have ended, after every earlier month) and write statements."""
    key = signing.signing_key(current_app.config["COALITION_SIGNING_KEY_FILE"])
    return service.close(db.session, period, now=clock.now(),
                         tz=current_app.config["COALITION_TIMEZONE"], key=key, actor=operator())


def _require_closed(period: str) -> None:
    if not books.is_closed(db.session, period):
        raise Problem("period-open", f"{period} is not closed.")


@settlement_cli.command("show")
@click.argument("period")
@click.option("--partner", "partner_id", default=None, help="one partner's statement")
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "pdf"]), default="json")
@click.option("--out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="with --format pdf: the file to write")
@json_command
def show(period, partner_id, fmt, out):
    """Print a closed month: the coalition report with every statement, or one partner's
    statement (--partner); as JSON, CSV, or a PDF written to --out."""
    _require_closed(period)
    if (fmt == "pdf") != (out is not None):
        raise Problem("validation-error", "--format pdf needs --out FILE, and --out is for PDF only.")
    row = (service.report(db.session, period) if partner_id is None
           else service.statement(db.session, partner_id, period))
    signed = service.signed(row)
    if fmt == "pdf":
        Path(out).write_bytes(pdf.statement_pdf(signed) if partner_id else pdf.report_pdf(signed))
        return {"written": out, "partner_id": partner_id, "period": period, "digest": row.digest}
    if fmt == "csv":
        click.echo(exports.statement_csv(signed["document"], row.digest) if partner_id
                   else exports.report_csv(signed["document"], row.digest), nl=False)
        return None
    if partner_id is None:
        signed["partners"] = [service.signed(service.statement(db.session, s["partner_id"], period))
                              for s in signed["document"]["statements"]]
    return signed


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
                          now=clock.now(), actor=operator(), retire=tuple(retire))
