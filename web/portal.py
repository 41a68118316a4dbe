"""The member portal (/portal): a member's balance, history, offers, consent and data.

Each page reads through the functions the partner API and the operator's commands use
(members.balance, expiry_notices.for_member, history.page_of, offers.for_member,
coupons.activate, consents, member_export.export), for the member signed in and nobody else.
"""
from __future__ import annotations

import json
from decimal import Decimal

from flask import current_app, flash, redirect, render_template, request, url_for
from coalition import clock, consents, coupons, members, member_export
from coalition.clock import as_utc, iso_utc
from coalition.database import db
from coalition.replica import standby_ok
from coalition.expiry_notices import NOTICE_DAYS, for_member as expiry_notices_of
from coalition.history import KINDS, page_of
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
@standby_ok
def balance():
    now = clock.now()
    view = members.balance(db.session, _card(), now=now, tiers=_tiers(), **_settings())
    soon = expiry_notices_of(db.session, _card(), now=now, within_days=NOTICE_DAYS, **_settings())
    return render_template("web/portal/balance.html", title=i18n.gettext("Balance"),
                           balance=view, expiring=view["expiring"][:6],
                           soon=sum(n["points"] for n in soon["notices"]), soon_days=NOTICE_DAYS)


@bp.route("/history")
@login_required(MEMBER)
@standby_ok
def history():
    partner = request.args.get("partner") or None
    kind = request.args.get("kind") if request.args.get("kind") in KINDS else None
    claim = request.args.get("claim") or None
    member = members.find(db.session, _card())
    page = page_of(db.session, member.id, partner_id=partner, kind=kind, claim_id=claim,
                   before=_cursor("before"), after=_cursor("after"), limit=PAGE_SIZE)
    names = {p.id: p.name for p in list_partners(db.session)}
    filters = {"partner": partner, "kind": kind, "claim": claim}
    return render_template("web/portal/history.html", title=i18n.gettext("History"),
                           rows=[{**row, "sign": _sign(row)} for row in page.rows],
                           partners=sorted(names.items(), key=lambda item: item[1].lower()),
                           kinds=KINDS, filters=filters,
                           newer_url=_page_url(".history", filters, after=page.newer),
                           older_url=_page_url(".history", filters, before=page.older))


def _sign(row: dict) -> str:
    """How the entry moved the member's points: a reversal the other way of what it reverses."""
    kind = row["kind"]
    if kind == EntryKind.REVERSAL:
        kind = EntryKind.BURN if (row["reverses"] or {}).get("kind") == EntryKind.EARN \
            else EntryKind.EARN
    return "+" if kind == EntryKind.EARN else "\u2212"


def _cursor(name: str) -> int | None:
    """A page's cursor from the query string (an entry id); anything else: the newest page."""
    raw = request.args.get(name)
    return int(raw) if raw and raw.isascii() and raw.isdigit() and len(raw) < 19 else None


def _page_url(endpoint: str, filters: dict, **cursor_value) -> str | None:
    """The link to the next page one way, with the filters; None when there is none."""
    (name, value), = cursor_value.items()
    if value is None:
        return None
    return url_for(endpoint, **{k: v for k, v in filters.items() if v}, **{name: value})


def _int(raw: str | None, default: int) -> int:
    return int(raw) if raw and raw.isdigit() and len(raw) < 9 else default


@bp.route("/offers")
@login_required(MEMBER)
@standby_ok
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
@standby_ok
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
