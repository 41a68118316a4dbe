"""The console's campaigns, coupons and tiers (/console/campaigns): what runs, what is to come
and what has ended; a campaign added and a coupon published through a form; one ended early;
the tiers as configured with how many members are in each; and how each bonus performed.

Adding, publishing and ending call what `flask campaigns add|end` and `flask coupons add|end`
call (coalition/campaigns.py, coalition/coupons.py), with the registered parties as issuers
(partners.service.partner_ids) and the signed-in operator (operator:<name>) as the audit
log's actor; admins only, every operator reads. Performance comes from the bonus lots
(coalition/bonus_performance.py); its cost is priced as a month's statement prices the funder's
bonus issuance (settlement/statements.py, statement_of: bonus points x issue price x issuance
share, at the funder's terms in force for the month of each posting), per campaign and month.
"""
from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from flask import current_app, flash, redirect, render_template, request, url_for

from coalition import bonus_performance, campaigns, clock, coupons, segments
from coalition.bonuses import CAMPAIGN, COUPON, TIER
from coalition.clock import as_utc
from coalition.database import db
from coalition.replica import standby_ok
from coalition.periods import day_of, last_day_before
from coalition.problems import Problem
from coalition.vocabulary import ID_PATTERN
from partners.service import list_partners, partner_ids, terms_in_force
from settlement import statements
from settlement.trends import tier_distribution

from . import auth, i18n
from .auth import OPERATOR, login_required
from .console import ADMINS, READERS, bp, tab

KINDS = (campaigns.MULTIPLIER, campaigns.FIXED)
RUNNING, UPCOMING, ENDED = "running", "upcoming", "ended"

tab(50, "bonuses", "Campaigns")


def _tz() -> str:
    return current_app.config["COALITION_TIMEZONE"]


def _actor() -> str:
    return auth.current().principal


def _state(row, now: datetime) -> str:
    if as_utc(row.ends_at) <= now:
        return ENDED
    return UPCOMING if as_utc(row.starts_at) > now else RUNNING


def _charge():
    """charge(funder, period, points): the funder's bonus issuance charge in cents, as the
    month's statement computes it (statements.statement_of), at the terms in force then."""
    terms: dict[tuple[str, str], dict] = {}

    def charge(funder: str, period: str, points: int) -> int:
        if (funder, period) not in terms:
            terms[funder, period] = terms_in_force(db.session, funder, period)
        held = terms[funder, period]
        return statements.cents(points, held["issue_price"], held["issuance_share"])
    return charge


def _shown(row, noun: str, now: datetime, names: dict, perf, charge) -> dict:
    tz = _tz()
    view = (campaigns.view if noun == "campaign" else coupons.view)(row)
    if noun == "campaign":
        targets = view["partners"]
    else:
        targets = [view["partner_id"]]
    return {**view, "noun": noun, "state": _state(row, now),
            "factor": Decimal(view["factor"]) if view["factor"] else None,
            "first_day": day_of(as_utc(row.starts_at), tz)[0],
            "last_day": last_day_before(as_utc(row.ends_at), tz),
            "partner_names": ", ".join(names.get(p, p) for p in targets or ()),
            "funder_name": names.get(row.funder_id, row.funder_id),
            "perf": perf, "cost_cents": perf.cost_cents(charge)}


def _listing(now: datetime):
    names = {p.id: p.name for p in list_partners(db.session)}
    rows = [(c, "campaign") for c in campaigns.listed(db.session)] + \
        [(c, "coupon") for c in coupons.listed(db.session)]
    sources = [f"{CAMPAIGN if noun == 'campaign' else COUPON}{row.id}" for row, noun in rows]
    perf = bonus_performance.performance(db.session, sources)
    charge = _charge()
    return [_shown(row, noun, now, names, perf[source], charge)
            for (row, noun), source in zip(rows, sources)]


@bp.route("/campaigns")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def bonuses():
    now = clock.now()
    shown = _listing(now)
    grouped = {noun: {state: [r for r in shown if r["noun"] == noun and r["state"] == state]
                      for state in (RUNNING, UPCOMING, ENDED)} for noun in ("campaign", "coupon")}
    tiers = current_app.config["LEDGER_RULES"].tiers
    counts = {t.tier: t.members for t in tier_distribution(db.session, tiers, at=now, tz=_tz())}
    perf = bonus_performance.performance(db.session, [f"{TIER}{t.name}" for t in tiers])
    charge = _charge()
    tier_rows = [{"name": t.name, "threshold": t.threshold, "multiplier": t.multiplier,
                  "members": counts.get(t.name, 0), "perf": perf[f"{TIER}{t.name}"],
                  "cost_cents": perf[f"{TIER}{t.name}"].cost_cents(charge)} for t in tiers]
    return render_template("web/console/bonuses.html", title=i18n.gettext("Campaigns"),
                           grouped=grouped, tiers=tier_rows,
                           can_change=auth.current().role in ADMINS)


@bp.route("/campaigns/<campaign_id>")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def campaign(campaign_id: str):
    return _detail("campaign", campaigns.get(db.session, campaign_id))


@bp.route("/coupons/<coupon_id>")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def coupon(coupon_id: str):
    return _detail("coupon", coupons.get(db.session, coupon_id))


def _detail(noun: str, row):
    now = clock.now()
    names = {p.id: p.name for p in list_partners(db.session)}
    source = f"{CAMPAIGN if noun == 'campaign' else COUPON}{row.id}"
    perf = bonus_performance.performance(db.session, [source])[source]
    return render_template("web/console/bonuses_detail.html",
                           title=i18n.gettext("Campaign {name}" if noun == "campaign"
                                              else "Coupon {name}", name=row.name),
                           item=_shown(row, noun, now, names, perf, _charge()),
                           can_change=auth.current().role in ADMINS)


# --- ending ------------------------------------------------------------------------------

@bp.route("/campaigns/<campaign_id>/end", methods=["GET", "POST"])
@login_required(OPERATOR, roles=ADMINS)
def campaign_end(campaign_id: str):
    return _end_page("campaign", campaigns, campaign_id)


@bp.route("/coupons/<coupon_id>/end", methods=["GET", "POST"])
@login_required(OPERATOR, roles=ADMINS)
def coupon_end(coupon_id: str):
    return _end_page("coupon", coupons, coupon_id)


def _end_page(noun: str, module, row_id: str):
    row = module.get(db.session, row_id)
    back = url_for(f".{noun}", **{f"{noun}_id": row_id})
    if request.method == "POST":
        _, changed = module.end(db.session, row_id, now=clock.now(), actor=_actor())
        db.session.commit()
        flash(i18n.gettext("{name} is ended." if changed else "{name} had ended already.",
                           name=row.name), "ok")
        return redirect(back)
    return render_template("web/console/bonuses_end.html",
                           title=i18n.gettext("End {name}", name=row.name), item=row, noun=noun,
                           state=_state(row, clock.now()), back=back,
                           action=url_for(f".{noun}_end", **{f"{noun}_id": row_id}))


# --- adding ------------------------------------------------------------------------------

def _cap(field: str, label: str) -> int | None:
    raw = request.form.get(field, "").strip()
    if not raw:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise Problem("validation-error", f"{label}: a whole number of points.")
    return int(raw)


def _checked_id(raw: str) -> str:
    if not re.fullmatch(ID_PATTERN, raw):
        raise Problem("validation-error", "The id is 1 to 64 letters, digits and . _ : - "
                                          "(starting with a letter or digit).")
    return raw


def _form_error(problem: Problem) -> str:
    db.session.rollback()
    return i18n.gettext(problem.detail)


@bp.route("/campaigns/new", methods=["GET", "POST"])
@login_required(OPERATOR, roles=ADMINS)
def campaign_new():
    form = request.form
    error = None
    if request.method == "POST":
        try:
            row = campaigns.add(
                db.session, _checked_id(form.get("id", "").strip()), name=form.get("name", ""),
                kind=form.get("kind", ""), value=form.get("value", "").strip(),
                starts=form.get("starts", "").strip(), ends=form.get("ends", "").strip(),
                funder=form.get("funder", ""), issuers=set(partner_ids(db.session)),
                now=clock.now(), tz=_tz(), partners=form.getlist("partners") or None,
                tiers=form.getlist("tiers") or None, segment=form.get("segment") or None,
                cap_per_member=_cap("cap_per_member", "Cap per member"),
                cap_total=_cap("cap_total", "Cap in all"), actor=_actor(),
                known_tiers=tuple(t.name for t in current_app.config["LEDGER_RULES"].tiers))
        except Problem as problem:
            error = _form_error(problem)
        else:
            db.session.commit()
            flash(i18n.gettext("Campaign {name} is added.", name=row.name), "ok")
            return redirect(url_for(".campaign", campaign_id=row.id))
    return render_template(
        "web/console/bonuses_campaign_form.html", title=i18n.gettext("New campaign"),
        form=form, error=error, kinds=KINDS, parties=_parties(),
        tiers=current_app.config["LEDGER_RULES"].tiers,
        segments=segments.listed(db.session)), 422 if error else 200


@bp.route("/coupons/new", methods=["GET", "POST"])
@login_required(OPERATOR, roles=ADMINS)
def coupon_new():
    form = request.form
    error = None
    if request.method == "POST":
        try:
            row = coupons.publish(
                db.session, _checked_id(form.get("id", "").strip()),
                partner_id=form.get("partner", ""), name=form.get("name", ""),
                kind=form.get("kind", ""), value=form.get("value", "").strip(),
                starts=form.get("starts", "").strip(), ends=form.get("ends", "").strip(),
                issuers=set(partner_ids(db.session)), funder=form.get("funder") or None,
                now=clock.now(), tz=_tz(), actor=_actor())
        except Problem as problem:
            error = _form_error(problem)
        else:
            db.session.commit()
            flash(i18n.gettext("Coupon {name} is published.", name=row.name), "ok")
            return redirect(url_for(".coupon", coupon_id=row.id))
    return render_template("web/console/bonuses_coupon_form.html",
                           title=i18n.gettext("New coupon"), form=form, error=error, kinds=KINDS,
                           parties=_parties()), 422 if error else 200


def _parties() -> list[tuple[str, str]]:
    return [(p.id, p.name) for p in list_partners(db.session)]


i18n.extend({
    "Campaigns": "Aktionen",
    "Coupons": "Coupons",
    "Running": "Laufend",
    "Upcoming": "Geplant",
    "Ended": "Beendet",
    "New campaign": "Neue Aktion",
    "New coupon": "Neuer Coupon",
    "None.": "Keine.",
    "Name": "Name",
    "Terms": "Bedingungen",
    "Window": "Zeitraum",
    "Funder": "Finanziert von",
    "Bonus points issued": "Ausgegebene Bonuspunkte",
    "Cost to the funder": "Kosten für den Finanzierer",
    "Redeemed": "Eingelöst",
    "Campaign {name}": "Aktion {name}",
    "Coupon {name}": "Coupon {name}",
    "End {name}": "{name} beenden",
    "{name} is ended.": "{name} ist beendet.",
    "{name} had ended already.": "{name} war schon beendet.",
    "End now": "Jetzt beenden",
    "End": "Beenden",
    "Ending is at once and for good: earns from this moment get no bonus from it, and a "
    "coupon can no longer be activated. The bonus points given so far stay.":
        "Das Beenden gilt sofort und endgültig: Gutschriften ab jetzt erhalten keinen Bonus "
        "mehr daraus, und ein Coupon kann nicht mehr aktiviert werden. Die bisher vergebenen "
        "Bonuspunkte bleiben.",
    "It has ended already: nothing to do.": "Sie ist schon beendet: Es gibt nichts zu tun.",
    "Performance": "Wirkung",
    "Qualifying earns": "Begünstigte Gutschriften",
    "Issued": "Ausgegeben",
    "Taken back by reversals": "Durch Stornos zurückgenommen",
    "Issued, net of reversals": "Ausgegeben abzüglich Stornos",
    "Used to pay off debt": "Zur Tilgung von Schulden verwendet",
    "Expired": "Verfallen",
    "Still held by members": "Noch bei Mitgliedern",
    "Cost: bonus points times the funder's issue price and issuance share in force in each "
    "month, as the month's statement charges them.":
        "Kosten: Bonuspunkte mal Ausgabepreis und Ausgabeanteil des Finanzierers, die im "
        "jeweiligen Monat gelten, wie die Monatsabrechnung sie berechnet.",
    "Id": "Kennung",
    "Kind of bonus": "Art des Bonus",
    "multiplier": "Multiplikator",
    "fixed": "fester Bonus",
    "Value (multiplier: the factor, e.g. 2; fixed: bonus points per earn)":
        "Wert (Multiplikator: der Faktor, z. B. 2; fester Bonus: Bonuspunkte je Gutschrift)",
    "First day": "Erster Tag",
    "Last day (included)": "Letzter Tag (einschließlich)",
    "Partners whose earns qualify (none ticked: every partner)":
        "Partner, deren Gutschriften zählen (keiner angekreuzt: alle Partner)",
    "Tiers (none ticked: every tier)": "Stufen (keine angekreuzt: alle Stufen)",
    "Segment": "Segment",
    "Every member": "Alle Mitglieder",
    "Cap per member (bonus points, optional)": "Obergrenze je Mitglied (Bonuspunkte, optional)",
    "Cap in all (bonus points, optional)": "Obergrenze insgesamt (Bonuspunkte, optional)",
    "Add campaign": "Aktion anlegen",
    "Publish coupon": "Coupon veröffentlichen",
    "Partner whose earns qualify": "Partner, dessen Gutschriften zählen",
    "Funder (empty: the partner)": "Finanziert von (leer: der Partner)",
    "The partner": "Der Partner",
    "Campaign {name} is added.": "Aktion {name} ist angelegt.",
    "Coupon {name} is published.": "Coupon {name} ist veröffentlicht.",
    "Terms are fixed once saved: a campaign or coupon can be ended early, never changed.":
        "Die Bedingungen stehen nach dem Speichern fest: Eine Aktion oder ein Coupon kann "
        "vorzeitig beendet, aber nie geändert werden.",
    "Tiers": "Stufen",
    "Threshold": "Schwelle",
    "Multiplier": "Multiplikator",
    "Members now": "Mitglieder jetzt",
    "The programme has no tiers.": "Das Programm hat keine Stufen.",
    "Caps": "Obergrenzen",
    "{points} per member": "{points} je Mitglied",
    "{points} in all": "{points} insgesamt",
    "Targets": "Zielgruppe",
    "every tier": "alle Stufen",
    "tiers {tiers}": "Stufen {tiers}",
    "segment {segment}": "Segment {segment}",
    "Status": "Status",
    "Details": "Details",
    "A campaign needs a name of 1 to 200 characters.":
        "Eine Aktion braucht einen Namen mit 1 bis 200 Zeichen.",
    "A coupon needs a name of 1 to 200 characters.":
        "Ein Coupon braucht einen Namen mit 1 bis 200 Zeichen.",
    "A campaign's kind is multiplier or fixed.": "Die Art einer Aktion ist Multiplikator oder "
                                                 "fester Bonus.",
    "A fixed bonus's --value is 1 to 1000000000 points.":
        "Der Wert eines festen Bonus ist 1 bis 1000000000 Punkte.",
    "A multiplier's --value is a decimal above 1 and at most 100, with at most 4 places (e.g. 2).":
        "Der Wert eines Multiplikators ist eine Dezimalzahl über 1 und höchstens 100 mit "
        "höchstens 4 Nachkommastellen (z. B. 2).",
    "The campaign's window is empty: --until must lie after --from.":
        "Der Zeitraum der Aktion ist leer: Der letzte Tag muss nach dem ersten liegen.",
    "The coupon's window is empty: --until must lie after --from.":
        "Der Zeitraum des Coupons ist leer: Der letzte Tag muss nach dem ersten liegen.",
    "The id is 1 to 64 letters, digits and . _ : - (starting with a letter or digit).":
        "Die Kennung hat 1 bis 64 Buchstaben, Ziffern und . _ : - (am Anfang ein Buchstabe "
        "oder eine Ziffer).",
})
