"""The console's partners (/console/partners): the registry, each partner's terms history and
usage, and the operator's changes to it (admin only), each through the function the command
line calls (`flask partners set-terms|add-key|revoke-key|suspend|activate`, partners/service.py)
and audited under the operator's principal (operator:<name>).

A terms change is shown before it is made: the form's values are run through
service.set_terms in a transaction that is rolled back, so the confirmation shows the terms
exactly as the domain would set them (or the domain's refusal), then the confirmed form sets
them for good."""
from __future__ import annotations

from decimal import Decimal, InvalidOperation

from babel import numbers
from flask import abort, current_app, flash, redirect, render_template, request, url_for

from coalition import books, clock
from coalition.database import db
from coalition.replica import standby_ok
from coalition.periods import period_of
from coalition.problems import Problem
from partners import service, usage

from . import auth, i18n
from .console import ADMINS, READERS, bp, tab
from .auth import OPERATOR as OPERATOR_FACE, login_required

TERMS = tuple(service.DEFAULT_TERMS)  # issue_price, redemption_rate, issuance_share, claim_fee
TERM_LABELS = {"issue_price": "Issue price (EUR per point issued)",
               "redemption_rate": "Redemption rate (EUR per point redeemed)",
               "issuance_share": "Issuance share (0 to 1, charged at issue)",
               "claim_fee": "Claim fee (EUR per accepted claim)"}
TERM_SHORT = {"issue_price": "Issue price", "redemption_rate": "Redemption rate",
              "issuance_share": "Issuance share", "claim_fee": "Claim fee"}
STATUS_CHANGES = {"suspended": "Suspend", "active": "Activate"}

tab(20, "partners", "Partners")


def _actor() -> str:
    return auth.current().principal


def _now():
    return clock.now()


def _tz() -> str:
    return current_app.config["COALITION_TIMEZONE"]


def rate(value) -> str:
    """A term (EUR per point, a share) with every place it has, up to the 6 the terms keep:
    money rounded to cents would show 0.0095 as 0.01."""
    return numbers.format_decimal(Decimal(str(value)), format="#,##0.######", locale=i18n.locale())


@bp.context_processor
def partner_helpers() -> dict:
    return {"rate": rate, "term_labels": TERM_LABELS, "term_short": TERM_SHORT, "term_names": TERMS}


def _is_admin() -> bool:
    who = auth.current()
    return who is not None and who.role in ADMINS


@bp.route("/partners")
@login_required(OPERATOR_FACE, roles=READERS)
@standby_ok
def partners():
    period = period_of(_now(), _tz())
    rows = [{"partner": p, "terms": service.terms_in_force(db.session, p.id, period),
             "active_keys": sum(1 for k in p.keys if k.status == "active")}
            for p in service.list_partners(db.session)]
    return render_template("web/console/partners.html", title=i18n.gettext("Partners"),
                           rows=rows, period=period)


def _partner_page(partner_id: str, *, terms_form: dict | None = None, terms_error: str | None = None,
                  key_error: str | None = None, pem: str = "", status: int = 200):
    partner = service.get_partner(db.session, partner_id)
    period = period_of(_now(), _tz())
    closed = books.closed_through(db.session)
    first_open = books.next_period(closed) if closed else period
    months = usage.by_month(db.session, partner_id)[-12:]
    view = service.partner_view(partner)
    return render_template(
        "web/console/partners_show.html", title=i18n.gettext("Partner {name}", name=partner.name),
        partner=partner, view=view, terms_now=service.terms_in_force(db.session, partner_id, period),
        history=list(reversed(view["terms"])), usage=list(reversed(months)), admin=_is_admin(),
        first_open=first_open, closed=closed,
        terms_form=terms_form or {"starts": max(first_open, period)}, terms_error=terms_error,
        key_error=key_error, pem=pem), status


@bp.route("/partners/<partner_id>")
@login_required(OPERATOR_FACE, roles=READERS)
@standby_ok
def partner(partner_id: str):
    return _partner_page(partner_id)


def _terms_form() -> dict:
    form = {"starts": request.form.get("starts", "").strip(), "force": request.form.get("force") == "yes"}
    for name in TERMS:
        value = request.form.get(name, "").strip()
        # A decimal comma as German is typed: "0,012" is 0.012 (no grouping in a price per point).
        form[name] = value.replace(",", ".") if value.count(",") == 1 and "." not in value else value
    return form


@bp.route("/partners/<partner_id>/terms", methods=["POST"])
@login_required(OPERATOR_FACE, roles=ADMINS)
def set_terms(partner_id: str):
    service.get_partner(db.session, partner_id)
    form = _terms_form()
    raw = {name: form[name] or None for name in TERMS}
    before = None
    try:
        if form["starts"]:
            books.parse_period(form["starts"])
            before = service.terms_in_force(db.session, partner_id, form["starts"])
        row = service.set_terms(db.session, partner_id, form["starts"], raw, force=form["force"],
                                now=_now(), actor=_actor())
        after = service.terms_view(row)
    except Problem as problem:
        db.session.rollback()
        return _partner_page(partner_id, terms_form=form, terms_error=i18n.gettext(problem.detail),
                             status=422)
    if request.form.get("confirmed") != "yes":
        db.session.rollback()  # only shown: set when the confirmation is sent
        return render_template("web/console/partners_terms_confirm.html",
                               title=i18n.gettext("Change the terms of {name}?", name=partner_name(partner_id)),
                               partner_id=partner_id, form=form, before=before,
                               after={name: Decimal(after[name]) for name in TERMS})
    db.session.commit()
    flash(i18n.gettext("The terms of {partner} from {month} on are set.", partner=partner_id,
                       month=form["starts"]), "ok")
    return redirect(url_for(".partner", partner_id=partner_id) + "#terms")


def partner_name(partner_id: str) -> str:
    return service.get_partner(db.session, partner_id).name


@bp.route("/partners/<partner_id>/keys", methods=["POST"])
@login_required(OPERATOR_FACE, roles=ADMINS)
def add_key(partner_id: str):
    pem = request.form.get("public_key", "").strip()
    try:
        if not pem:
            raise Problem("validation-error", "Paste the partner's public key (PEM).")
        key = service.add_key(db.session, partner_id, pem.encode(), now=_now(), actor=_actor())
        kid = key.kid
    except Problem as problem:
        db.session.rollback()
        return _partner_page(partner_id, key_error=i18n.gettext(problem.detail), pem=pem, status=422)
    db.session.commit()
    flash(i18n.gettext("Key {kid} is added.", kid=kid), "ok")
    return redirect(url_for(".partner", partner_id=partner_id) + "#keys")


@bp.route("/partners/<partner_id>/keys/<kid>/revoke", methods=["GET", "POST"])
@login_required(OPERATOR_FACE, roles=ADMINS)
def revoke_key(partner_id: str, kid: str):
    partner = service.get_partner(db.session, partner_id)
    key = next((k for k in partner.keys if k.kid == kid), None)
    if key is None:
        abort(404)
    if request.method == "GET":
        return render_template("web/console/partners_confirm.html",
                               title=i18n.gettext("Revoke key {kid}?", kid=kid), partner=partner,
                               question=i18n.gettext(
                                   "Requests signed with this key are refused at once, and the "
                                   "key can never be registered again."),
                               action=url_for(".revoke_key", partner_id=partner_id, kid=kid),
                               button=i18n.gettext("Revoke the key"), facts=[
                                   (i18n.gettext("Key"), kid), (i18n.gettext("Algorithm"), key.alg),
                                   (i18n.gettext("Added"), i18n.moment(key.created_at))])
    service.revoke_key(db.session, partner_id, kid, now=_now(), actor=_actor())
    db.session.commit()
    flash(i18n.gettext("Key {kid} is revoked.", kid=kid), "ok")
    return redirect(url_for(".partner", partner_id=partner_id) + "#keys")


@bp.route("/partners/<partner_id>/status", methods=["GET", "POST"])
@login_required(OPERATOR_FACE, roles=ADMINS)
def set_status(partner_id: str):
    partner = service.get_partner(db.session, partner_id)
    to = request.values.get("to")
    if to not in STATUS_CHANGES:
        abort(400)
    if request.method == "GET":
        question = ("Every request the partner signs is refused until it is activated again."
                    if to == "suspended" else "The partner's signed requests are accepted again.")
        return render_template("web/console/partners_confirm.html",
                               title=i18n.gettext(
                                   "Suspend {name}?" if to == "suspended" else "Activate {name}?",
                                   name=partner.name),
                               partner=partner, question=i18n.gettext(question),
                               action=url_for(".set_status", partner_id=partner_id), to=to,
                               button=i18n.gettext(STATUS_CHANGES[to]), facts=[
                                   (i18n.gettext("Partner"), f"{partner.name} ({partner.id})"),
                                   (i18n.gettext("Status"), f"{i18n.gettext(partner.status)} "
                                                            f"\u2192 {i18n.gettext(to)}")])
    service.set_status(db.session, partner_id, to, now=_now(), actor=_actor())
    db.session.commit()
    flash(i18n.gettext("{name} is suspended." if to == "suspended" else "{name} is active again.",
                       name=partner.name), "ok")
    return redirect(url_for(".partner", partner_id=partner_id))


i18n.extend({
    "Partners": "Partner",
    "Partner {name}": "Partner {name}",
    "Name": "Name",
    "Kind": "Art",
    "Status": "Status",
    "Terms now": "Aktuelle Konditionen",
    "Active keys": "Aktive Schlüssel",
    "active": "aktiv",
    "suspended": "gesperrt",
    "revoked": "widerrufen",
    "partner": "Partner",
    "operator": "Betreiber",
    "No partners are registered.": "Es sind keine Partner registriert.",
    "Issue price": "Ausgabepreis",
    "Redemption rate": "Einlösesatz",
    "Issuance share": "Ausgabeanteil",
    "Claim fee": "Vorgangsgebühr",
    "EUR per point": "EUR je Punkt",
    "Terms in force for {month}, in EUR per point (the share of the price charged at issue).":
        "Konditionen für {month}, in EUR je Punkt (Anteil des Preises, der bei Ausgabe berechnet wird).",
    "Issue price (EUR per point issued)": "Ausgabepreis (EUR je ausgegebenem Punkt)",
    "Redemption rate (EUR per point redeemed)": "Einlösesatz (EUR je eingelöstem Punkt)",
    "Issuance share (0 to 1, charged at issue)": "Ausgabeanteil (0 bis 1, bei Ausgabe berechnet)",
    "Claim fee (EUR per accepted claim)": "Vorgangsgebühr (EUR je angenommenem Vorgang)",
    "Terms history": "Verlauf der Konditionen",
    "From": "Ab",
    "the beginning": "Beginn",
    "Change the terms": "Konditionen ändern",
    "First month (YYYY-MM)": "Erster Monat (JJJJ-MM)",
    "Months up to {month} are closed: terms can change from {next} on.":
        "Die Monate bis {month} sind abgeschlossen: Konditionen können ab {next} geändert werden.",
    "Terms left empty carry over from the terms in force for that month.":
        "Leere Felder übernehmen die Konditionen, die für diesen Monat gelten.",
    "Accept a redemption rate above the issue price (audited as forced)":
        "Einlösesatz über dem Ausgabepreis zulassen (als erzwungen protokolliert)",
    "Show the change": "Änderung anzeigen",
    "Change the terms of {name}?": "Konditionen von {name} ändern?",
    "From {month} on": "Ab {month}",
    "Term": "Kondition",
    "Before": "Bisher",
    "After": "Neu",
    "Set these terms": "Diese Konditionen festlegen",
    "Cancel": "Abbrechen",
    "The terms of {partner} from {month} on are set.":
        "Die Konditionen von {partner} ab {month} sind festgelegt.",
    "Keys": "Schlüssel",
    "Key": "Schlüssel",
    "Algorithm": "Verfahren",
    "Added": "Hinzugefügt",
    "Revoked at": "Widerrufen am",
    "State": "Zustand",
    "No keys.": "Keine Schlüssel.",
    "Revoke": "Widerrufen",
    "Revoke key {kid}?": "Schlüssel {kid} widerrufen?",
    "Revoke the key": "Schlüssel widerrufen",
    "Requests signed with this key are refused at once, and the key can never be registered again.":
        "Mit diesem Schlüssel signierte Anfragen werden sofort abgelehnt, und der Schlüssel kann "
        "nie wieder registriert werden.",
    "Key {kid} is revoked.": "Schlüssel {kid} ist widerrufen.",
    "Add a key": "Schlüssel hinzufügen",
    "Public key (PEM, EC P-256 or Ed25519)": "Öffentlicher Schlüssel (PEM, EC P-256 oder Ed25519)",
    "Add the key": "Schlüssel hinzufügen",
    "Paste the partner's public key (PEM).":
        "Fügen Sie den öffentlichen Schlüssel des Partners ein (PEM).",
    "Key {kid} is added.": "Schlüssel {kid} ist hinzugefügt.",
    "Suspend": "Sperren",
    "Activate": "Aktivieren",
    "Suspend {name}?": "{name} sperren?",
    "Activate {name}?": "{name} aktivieren?",
    "Every request the partner signs is refused until it is activated again.":
        "Jede signierte Anfrage des Partners wird abgelehnt, bis er wieder aktiviert ist.",
    "The partner's signed requests are accepted again.":
        "Die signierten Anfragen des Partners werden wieder angenommen.",
    "{name} is suspended.": "{name} ist gesperrt.",
    "{name} is active again.": "{name} ist wieder aktiv.",
    "Usage": "Nutzung",
    "Month": "Monat",
    "Claims": "Vorgänge",
    "Late claims": "Verspätete Vorgänge",
    "Points issued": "Ausgegebene Punkte",
    "Points redeemed": "Eingelöste Punkte",
    "Claims booked into each month (the last 12 with any), as the month's statement counts them.":
        "Vorgänge je Buchungsmonat (die letzten 12 mit Vorgängen), wie die Monatsabrechnung sie zählt.",
    "No claims yet.": "Noch keine Vorgänge.",
    "Registered": "Registriert",
    "Redemption policy": "Einlöseregeln",
    "PIN above {points}": "PIN über {points}",
    "no PIN": "keine PIN",
    "daily limit {points}": "Tageslimit {points}",
    "no daily limit": "kein Tageslimit",
    "Only an administrator changes terms, keys and the status.":
        "Nur die Administration ändert Konditionen, Schlüssel und den Status.",
    "Details of {name}": "Details zu {name}",
    "Partner list": "Partnerliste",
})
