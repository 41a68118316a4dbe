"""`flask partners ...`: the operator's commands for partners, their keys, terms and policies (README, "Operator command line")."""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import click

from coalition import clock
from coalition.cli import JsonGroup, check_id, json_command, operator, parse_since
from coalition.database import db

from . import harvest, service, tokens
from .models import OPERATOR, PARTNER

partners_cli = JsonGroup("partners", help="Partners, their keys and their terms.")


def _now() -> datetime:
    return clock.now()


FORCE_HELP = ("accept a redemption rate above the issue price (the coalition loses money on "
              "every point issued and redeemed here); audited as forced")


@partners_cli.command("add")
@click.argument("partner_id")
@click.option("--name", required=True)
@click.option("--issue-price", default=None, help="EUR per point issued (default 0.01)")
@click.option("--redemption-rate", default=None, help="EUR per point redeemed here (default 0.009)")
@click.option("--issuance-share", default=None, help="0..1, charged at issue (default 1)")
@click.option("--claim-fee", default=None, help="EUR per accepted claim (default 0)")
@click.option("--kind", type=click.Choice([PARTNER, OPERATOR]), default=PARTNER, show_default=True,
              help=f"{OPERATOR}: the coalition itself, the issuer of the points it funds (one; "
                   "no keys)")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@json_command
def add(partner_id, name, issue_price, redemption_rate, issuance_share, claim_fee, kind, force):
    """Register a partner with its first terms, which apply from the beginning."""
    partner = service.add_partner(
        db.session, check_id(partner_id, "ID"), name, now=_now(), actor=operator(), force=force,
        kind=kind,
        terms={"issue_price": issue_price, "redemption_rate": redemption_rate,
               "issuance_share": issuance_share, "claim_fee": claim_fee})
    return service.partner_view(partner)


@partners_cli.command("add-key")
@click.argument("partner_id")
@click.option("--public-key", "public_key", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_command
def add_key(partner_id, public_key: Path):
    key = service.add_key(db.session, partner_id, public_key.read_bytes(), now=_now(),
                          actor=operator())
    return {"partner_id": key.partner_id, "kid": key.kid, "alg": key.alg}


@partners_cli.command("revoke-key")
@click.argument("partner_id")
@click.argument("kid")
@json_command
def revoke_key(partner_id, kid):
    """Revoke a key at once. A kid may begin with "-": write `revoke-key ID -- KID`."""
    key = service.revoke_key(db.session, partner_id, kid, now=_now(), actor=operator())
    return {"partner_id": key.partner_id, "kid": key.kid, "state": key.status}


@partners_cli.command("suspend")
@click.argument("partner_id")
@json_command
def suspend(partner_id):
    return service.partner_view(service.set_status(db.session, partner_id, "suspended",
                                                   now=_now(), actor=operator()))


@partners_cli.command("activate")
@click.argument("partner_id")
@json_command
def activate(partner_id):
    return service.partner_view(service.set_status(db.session, partner_id, "active",
                                                   now=_now(), actor=operator()))


@partners_cli.command("list")
@json_command
def list_():
    return [service.partner_view(p) for p in service.list_partners(db.session)]


@partners_cli.command("show")
@click.argument("partner_id")
@json_command
def show(partner_id):
    return service.partner_view(service.get_partner(db.session, partner_id))


@partners_cli.command("prune-tokens")
@json_command
def prune_tokens():
    """Delete the jti records of tokens that have expired (the API also does this now and then)."""
    return {"pruned": tokens.prune(db.session, _now())}


@partners_cli.command("set-terms")
@click.argument("partner_id")
@click.option("--from", "starts", required=True, help="first month (YYYY-MM) the terms apply to")
@click.option("--issue-price", default=None, help="EUR per point issued")
@click.option("--redemption-rate", default=None, help="EUR per point redeemed here")
@click.option("--issuance-share", default=None, help="0..1, charged at issue")
@click.option("--claim-fee", default=None, help="EUR per accepted claim")
@click.option("--force", is_flag=True, help=FORCE_HELP)
@json_command
def set_terms(partner_id, starts, issue_price, redemption_rate, issuance_share, claim_fee, force):
    """New terms from month --from on (it must still be open). Terms not given carry over from
    the terms in force for that month."""
    service.set_terms(db.session, partner_id, starts,
                      {"issue_price": issue_price, "redemption_rate": redemption_rate,
                       "issuance_share": issuance_share, "claim_fee": claim_fee},
                      force=force, now=_now(), actor=operator())
    return service.partner_view(service.get_partner(db.session, partner_id))


@partners_cli.command("suspicious")
@click.option("--since", default=None,
              help="ISO date or date-time (UTC unless it says otherwise); default: 24 hours ago")
@json_command
def suspicious(since):
    """Partners flagged for card harvesting (many unknown cards, or many balances read without
    booking) since then, oldest first, with the rule, the count and the threshold."""
    start = parse_since(since) or _now() - timedelta(hours=24)
    return {"since": clock.iso_utc(start),
            "flags": harvest.suspicious(db.session, start)}


@partners_cli.command("set-policy")
@click.argument("partner_id")
@click.option("--redeem-auth", default=None, metavar="none|pin",
              help="pin: burns of more than --pin-above points need the member's PIN")
@click.option("--pin-above", default=None, metavar="POINTS",
              help="a burn of more than POINTS needs the PIN (0: every burn; default 0)")
@click.option("--daily-redeem-limit", default=None, metavar="POINTS|none",
              help="points burned here per calendar day (COALITION_TIMEZONE), all members")
@json_command
def set_policy(partner_id, redeem_auth, pin_above, daily_redeem_limit):
    """Change the partner's redemption policy; options not given keep their value."""
    partner = service.set_policy(db.session, partner_id, redeem_auth=redeem_auth,
                                 pin_above=pin_above, daily_redeem_limit=daily_redeem_limit,
                                 now=_now(), actor=operator())
    return service.partner_view(partner)
