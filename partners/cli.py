"""`flask partners ...`: the operator's commands for partners, their keys, terms and policies (README, "Operator command line")."""
from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import click
from flask import current_app

from coalition import campaigns, clock, coupons, segments
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
                   "its key signs the operator's API calls, never a burn)")
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


# --- campaigns (coalition/campaigns.py): here, beside the registry, because a campaign's funder
# and targeted partners must be registered parties --------------------------------------------

campaigns_cli = JsonGroup("campaigns", help="Bonus campaigns and who funds them.")


def _ids(text: str | None, what: str) -> list[str] | None:
    if text is None:
        return None
    return [check_id(part.strip(), what) for part in text.split(",") if part.strip()] or None


@campaigns_cli.command("add")
@click.argument("campaign_id")
@click.option("--name", required=True)
@click.option("--kind", type=click.Choice([campaigns.MULTIPLIER, campaigns.FIXED]), required=True)
@click.option("--value", required=True,
              help="multiplier: the factor, e.g. 2 for double points; fixed: bonus points per earn")
@click.option("--from", "starts", required=True,
              help="YYYY-MM-DD (the start of that day) or YYYY-MM-DDTHH:MM, coalition time zone")
@click.option("--until", "ends", required=True,
              help="YYYY-MM-DD (through the end of that day) or YYYY-MM-DDTHH:MM (exclusive)")
@click.option("--funder", required=True, help="who pays for the bonus: a partner id, or the "
                                              "operator's (partners add ... --kind operator)")
@click.option("--partners", "partner_ids", default=None,
              help="comma-separated: whose earns qualify (default: every partner's)")
@click.option("--tiers", default=None, help="comma-separated tier names (default: every tier)")
@click.option("--segment", default=None, help="a segment's id (default: every member)")
@click.option("--cap-per-member", type=int, default=None, help="bonus points per member, at most")
@click.option("--cap-total", type=int, default=None, help="bonus points in all, at most")
@json_command
def add(campaign_id, name, kind, value, starts, ends, funder, partner_ids, tiers, segment,
        cap_per_member, cap_total):
    """Add a campaign; its terms are fixed from then on (it can only be ended early)."""
    campaign = campaigns.add(
        db.session, check_id(campaign_id, "ID"), name=name, kind=kind, value=value,
        starts=starts, ends=ends, funder=funder, issuers=set(service.partner_ids(db.session)),
        now=_now(), tz=current_app.config["COALITION_TIMEZONE"],
        partners=_ids(partner_ids, "--partners"), tiers=_ids(tiers, "--tiers"),
        segment=segment and check_id(segment, "--segment"), cap_per_member=cap_per_member,
        cap_total=cap_total, known_tiers=_tier_names(), actor=operator())
    return campaigns.view(campaign)


def _tier_names() -> tuple[str, ...]:
    return tuple(t.name for t in current_app.config["LEDGER_RULES"].tiers)


def _window_commands(group, module, noun: str, ended: str) -> None:
    """`list [--active]`, `show ID` and `end ID`, the same for campaigns and coupons."""
    @group.command("list", help=f"{noun.title()}s by start.")
    @click.option("--active", is_flag=True, help="only those running now")
    @json_command
    def list_(active):
        return [module.view(x) for x in module.listed(db.session, active_at=_now() if active else None)]

    @group.command("show", help=f"One {noun}.")
    @click.argument("row_id", metavar="ID")
    @json_command
    def show(row_id):
        return module.view(module.get(db.session, row_id))

    @group.command("end", help=f"End a {noun} now: {ended}")
    @click.argument("row_id", metavar="ID")
    @json_command
    def end(row_id):
        row, changed = module.end(db.session, row_id, now=_now(), actor=operator())
        return {**module.view(row), "changed": changed}


_window_commands(campaigns_cli, campaigns, "campaign",
                 "earns after this moment no longer qualify.")


# --- coupons (coalition/coupons.py) ------------------------------------------------------------

coupons_cli = JsonGroup("coupons", help="Coupons members activate, then earn once.")


@coupons_cli.command("add")
@click.argument("coupon_id")
@click.option("--partner", "partner_id", required=True, help="earns at this partner qualify")
@click.option("--name", required=True)
@click.option("--kind", type=click.Choice([campaigns.MULTIPLIER, campaigns.FIXED]), required=True)
@click.option("--value", required=True, help="multiplier: the factor; fixed: bonus points")
@click.option("--from", "starts", required=True, help="YYYY-MM-DD or YYYY-MM-DDTHH:MM (coalition time)")
@click.option("--until", "ends", required=True, help="YYYY-MM-DD (through that day) or a date-time")
@click.option("--funder", default=None, help="who pays for the bonus (default: the partner)")
@json_command
def coupon_add(coupon_id, partner_id, name, kind, value, starts, ends, funder):
    """Publish a coupon (as the operator); its terms are fixed from then on."""
    coupon = coupons.publish(
        db.session, check_id(coupon_id, "ID"), partner_id=partner_id, name=name, kind=kind,
        value=value, starts=starts, ends=ends, issuers=set(service.partner_ids(db.session)),
        funder=funder, now=_now(), tz=current_app.config["COALITION_TIMEZONE"],
        actor=operator())
    return coupons.view(coupon)


_window_commands(coupons_cli, coupons, "coupon", "no activation and no bonus after this moment.")


@coupons_cli.command("activate")
@click.argument("coupon_id")
@click.argument("member_id")
@json_command
def coupon_activate(coupon_id, member_id):
    """Activate a coupon for a member (as the operator, e.g. for the service desk)."""
    activation, created = coupons.activate(db.session, coupon_id, member_id,
                                           channel=coupons.OPERATOR_CHANNEL, now=_now())
    return {"coupon_id": coupon_id, "member_id": member_id, "created": created,
            "activated_at": clock.iso_utc(activation.activated_at), "channel": activation.channel}


# --- segments (coalition/segments.py) ----------------------------------------------------------

segments_cli = JsonGroup("segments", help="Groups of members by the operator's rules.")


@segments_cli.command("add")
@click.argument("segment_id")
@click.option("--name", required=True)
@click.option("--rule", type=click.Choice(segments.RULES), required=True)
@click.option("--days", type=int, required=True, help="the rule's look-back window in days")
@click.option("--partner", "partner_id", default=None, help="active-at: the partner")
@click.option("--points", type=int, default=None, help="earned-at-least: the points")
@json_command
def segment_add(segment_id, name, rule, days, partner_id, points):
    """Define a segment by one of the documented rules; fixed from then on."""
    segment = segments.add(db.session, check_id(segment_id, "ID"), name=name, rule=rule,
                           days=days, partner_id=partner_id, points=points,
                           issuers=set(service.partner_ids(db.session)), now=_now(),
                           actor=operator())
    return segments.view(segment)


@segments_cli.command("list")
@json_command
def segment_list():
    return [segments.view(s) for s in segments.listed(db.session)]


@segments_cli.command("show")
@click.argument("segment_id")
@json_command
def segment_show(segment_id):
    return segments.view(segments.get(db.session, segment_id))
