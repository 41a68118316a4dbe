"""The member portal (/portal): a member's balance, history, offers, consent and data.

Each page reads through the functions the partner API and the operator's commands use
(members.balance, expiry_notices.for_member, history.member_history, offers.for_member,
coupons.activate, consents, member_export.export), for the member signed in and nobody else.
"""
from __future__ import annotations

import json
import math
from decimal import Decimal

from flask import current_app, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from coalition import bonuses, clock, consents, coupons, members, member_export
from coalition.clock import as_utc, iso_utc
from coalition.database import db
from coalition.expiry_notices import NOTICE_DAYS, for_member as expiry_notices_of
from coalition.history import member_history
from coalition.models import Entry
from coalition.offers import for_member as offers_of, marketing_consent
from coalition.periods import day_of, last_day_before
from coalition.problems import Problem
from coalition.vocabulary import EntryKind
from partners.service import list_partners

from . import auth, faces, i18n
from .auth import MEMBER, login_required

bp = faces.face("portal", "/portal", "Member portal")
PAGE_SIZE = 20
# Who recorded a consent the member gave here: the consent's recorder, as a partner's id
# names the partner that recorded one through the API.
PORTAL = "portal"
# Coupon activations made here, beside "partner:<id>" and "operator" (coalition/coupons.py).
CHANNEL = "portal"
KINDS = tuple(kind.value for kind in EntryKind)


def _card() -> str:
    return auth.current().name


def _settings() -> dict:
    return {"tz": current_app.config["COALITION_TIMEZONE"]}


def _tiers():
    return current_app.config["LEDGER_RULES"].tiers


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    return faces.sign_in_page(MEMBER, "member_id", "Member number", "Member sign-in")


@bp.route("/set-password", methods=["GET", "POST"])
def set_password():
    return faces.set_password_page(MEMBER, "member_id", "Member number")


@bp.route("/sign-out", methods=["POST"])
def sign_out():
    auth.sign_out()
    flash(i18n.gettext("You are signed out."), "ok")
    return redirect(url_for(".sign_in"))


@bp.route("/")
@login_required(MEMBER)
def balance():
    now = clock.now()
    view = members.balance(db.session, _card(), now=now, tiers=_tiers(), **_settings())
    soon = expiry_notices_of(db.session, _card(), now=now, within_days=NOTICE_DAYS, **_settings())
    return render_template("web/portal/balance.html", title=i18n.gettext("Balance"),
                           balance=view, expiring=view["expiring"][:6],
                           soon=sum(n["points"] for n in soon["notices"]), soon_days=NOTICE_DAYS)


@bp.route("/history")
@login_required(MEMBER)
def history():
    partner = request.args.get("partner") or None
    kind = request.args.get("kind") if request.args.get("kind") in KINDS else None
    claim = request.args.get("claim") or None
    entries = member_history(db.session, _card())
    kinds = {(e["partner_id"], e["claim_id"]): e["kind"] for e in entries}
    if partner:
        entries = [e for e in entries if e["partner_id"] == partner]
    if kind:
        entries = [e for e in entries if e["kind"] == kind]
    if claim:
        entries = [e for e in entries if claim in (e["claim_id"], e["reverses"])]
    pages = max(1, math.ceil(len(entries) / PAGE_SIZE))
    page = min(max(_int(request.args.get("page"), 1), 1), pages)
    shown = entries[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
    bonus = _bonus_points(shown)
    names = {p.id: p.name for p in list_partners(db.session)}
    rows = [{**e, "partner_name": names.get(e["partner_id"], e["partner_id"]),
             "bonus_points": bonus.get((e["partner_id"], e["claim_id"]), 0),
             "sign": _sign(e, kinds)} for e in shown]
    filters = {"partner": partner, "kind": kind, "claim": claim}
    return render_template("web/portal/history.html", title=i18n.gettext("History"), rows=rows,
                           partners=sorted(names.items(), key=lambda item: item[1].lower()),
                           kinds=KINDS, filters=filters, page=page, pages=pages,
                           page_url=lambda n: url_for(".history", page=n,
                                                      **{k: v for k, v in filters.items() if v}))


def _sign(entry: dict, kinds: dict) -> str:
    """How the entry moved the member's points: a reversal the other way of what it reverses."""
    kind = entry["kind"]
    if kind == EntryKind.REVERSAL:
        kind = EntryKind.BURN if kinds.get((entry["partner_id"], entry["reverses"])) \
            == EntryKind.EARN else EntryKind.EARN
    return "+" if kind == EntryKind.EARN else "\u2212"


def _bonus_points(shown: list[dict]) -> dict[tuple[str, str], int]:
    """Bonus points of the earns on the page, by (partner, claim id): the bonus lots each booked."""
    earns = [e["claim_id"] for e in shown if e["kind"] == EntryKind.EARN]
    if not earns:
        return {}
    member = members.find(db.session, _card())
    ids = {entry_id: (partner_id, claim_id) for entry_id, partner_id, claim_id in db.session.execute(
        select(Entry.id, Entry.partner_id, Entry.claim_id)
        .where(Entry.member_id == member.id, Entry.kind == EntryKind.EARN,
               Entry.claim_id.in_(earns)))}
    return {ids[entry_id]: sum(b.points for b in given)
            for entry_id, given in bonuses.of_entries(db.session, list(ids)).items()}


def _int(raw: str | None, default: int) -> int:
    return int(raw) if raw and raw.isdigit() and len(raw) < 9 else default


@bp.route("/offers")
@login_required(MEMBER)
def offers():
    tz = current_app.config["COALITION_TIMEZONE"]
    view = offers_of(db.session, _card(), now=clock.now(), tiers=_tiers(), tz=tz)
    names = {p.id: p.name for p in list_partners(db.session)}

    def shown(offer: dict, partners: list[str] | None) -> dict:
        # ends_at is the first instant after the window: its last day is the day before.
        return {**offer, "factor": Decimal(offer["factor"]) if offer["factor"] else None,
                "first_day": day_of(as_utc(offer["starts_at"]), tz)[0],
                "last_day": last_day_before(as_utc(offer["ends_at"]), tz),
                "partner_names": ", ".join(names.get(p, p) for p in partners or ())}

    return render_template(
        "web/portal/offers.html", title=i18n.gettext("Offers"),
        coupons=[shown(c, [c["partner_id"]]) for c in view["coupons"]],
        campaigns=[shown(c, c["partners"]) for c in view["campaigns"]])


@bp.route("/coupons/<coupon_id>/activation", methods=["POST"])
@login_required(MEMBER)
def activate_coupon(coupon_id: str):
    try:
        _, created = coupons.activate(db.session, coupon_id, _card(), channel=CHANNEL,
                                      now=clock.now())
    except Problem as problem:
        db.session.rollback()
        if problem.slug != "coupon-ended":
            raise
        flash(i18n.gettext("This coupon has ended."), "error")
        return redirect(url_for(".offers"))
    name = coupons.get(db.session, coupon_id).name
    db.session.commit()
    flash(i18n.gettext("Coupon {name} is activated." if created
                       else "Coupon {name} was activated already.", name=name), "ok")
    return redirect(url_for(".offers") + f"#coupon-{coupon_id}")


@bp.route("/consent", methods=["GET", "POST"])
@login_required(MEMBER)
def consent():
    member = members.find(db.session, _card())
    if request.method == "POST":
        consents.record(db.session, _card(), marketing=request.form.get("marketing") == "yes",
                        channel=None, partner_id=PORTAL, now=clock.now())
        db.session.commit()
        flash(i18n.gettext("Your consent is saved."), "ok")
        return redirect(url_for(".consent"))
    return render_template("web/portal/consent.html", title=i18n.gettext("Consent and data"),
                           consented=marketing_consent(db.session, member),
                           history=list(reversed(consents.history(db.session, member))),
                           portal=PORTAL, names={p.id: p.name for p in list_partners(db.session)})


@bp.route("/export", methods=["POST"])
@login_required(MEMBER)
def export():
    who = auth.current()
    document = member_export.export(
        db.session, who.name, now=clock.now(), actor=who.principal,
        more=current_app.extensions.get("member_data"), tiers=_tiers(), **_settings())
    db.session.commit()  # the export is audited
    body = json.dumps(document, ensure_ascii=False, indent=1, default=_json_default)
    return current_app.response_class(body, mimetype="application/json", headers={
        "Content-Disposition": f'attachment; filename="member-data-{_file_safe(who.name)}.json"'})


def _json_default(value):
    if hasattr(value, "isoformat"):
        return iso_utc(value) if hasattr(value, "hour") else value.isoformat()
    return str(value)


def _file_safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:64]
