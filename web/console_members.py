"""The console's members (/console/members): find a member by card number, read the balance and
the history, lock and unlock redemption with a reason, download the data export, erase the
member, hand out a one-time code for the portal.

Every action calls the function the `flask members ...` command calls (members.balance,
member_locks, member_export, member_erasure, credentials.issue_code); the history is a page of
history.page_of, as in the member portal, filtered by partner and kind. All run
under the signed-in operator's principal (operator:<name>) as the audit log's actor. Reading is
open to every operator; what changes anything (lock, unlock, erase, a code) to admins only, and
each takes a second step: a page that says what will happen, then its button.
"""
from __future__ import annotations

import json

from flask import current_app, flash, redirect, render_template, request, url_for

from coalition import clock, credentials, member_erasure, member_export, member_locks, members
from coalition.clock import as_utc
from coalition.database import db
from coalition.replica import standby_ok
from coalition.history import KINDS, page_of
from coalition.problems import Problem
from partners.service import list_partners

from . import auth, i18n
from .auth import OPERATOR, login_required
from .console import ADMINS, READERS, bp, tab
from .portal import _cursor, _file_safe, _json_default, _page_url, _sign

PAGE_SIZE = 20

tab(40, "members_search", "Members")


def _settings() -> dict:
    return {"tz": current_app.config["COALITION_TIMEZONE"]}


def _tiers():
    return current_app.config["LEDGER_RULES"].tiers


def _actor() -> str:
    return auth.current().principal


def _member(card: str):
    member = members.find(db.session, card)
    if member is None:
        raise Problem("not-found", "No such member.")
    return member


@bp.route("/members")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def members_search():
    card = request.args.get("member_id", "").strip()
    error = None
    if card:
        if members.find(db.session, card) is not None:
            return redirect(url_for(".member", card=card))
        error = i18n.gettext("No member has the number {card}.", card=card)
    return render_template("web/console/members.html", title=i18n.gettext("Members"),
                           card=card, error=error), 404 if error else 200


@bp.route("/members/<card>")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def member(card: str):
    now = clock.now()
    row = _member(card)
    view = members.balance(db.session, card, now=now, tiers=_tiers(), **_settings())
    partner = request.args.get("partner") or None
    kind = request.args.get("kind") if request.args.get("kind") in KINDS else None
    page = page_of(db.session, row.id, partner_id=partner, kind=kind, before=_cursor("before"),
                   after=_cursor("after"), limit=PAGE_SIZE)
    names = {p.id: p.name for p in list_partners(db.session)}
    filters = {"card": card, "partner": partner, "kind": kind}

    def page_url(**cursor_value) -> str | None:
        url = _page_url(".member", filters, **cursor_value)
        return url and url + "#history-heading"

    sign_in = credentials.state(credentials.stored(db.session, credentials.member_key(row.id)), now)
    return render_template(
        "web/console/members_member.html", title=i18n.gettext("Member {card}", card=card),
        card=card, member=row, balance=view, expiring=view["expiring"][:6],
        rows=[{**entry, "sign": _sign(entry)} for entry in page.rows],
        partners=sorted(names.items(), key=lambda item: item[1].lower()), kinds=KINDS,
        filters=filters, newer_url=page_url(after=page.newer),
        older_url=page_url(before=page.older), sign_in=sign_in,
        lock_change=member_locks.last_change(db.session, row),
        can_change=auth.current().role in ADMINS)


# --- lock and unlock ---------------------------------------------------------------------

@bp.route("/members/<card>/lock", methods=["GET", "POST"])
@login_required(OPERATOR, roles=ADMINS)
def member_lock(card: str):
    return _lock_page(card, locking=True)


@bp.route("/members/<card>/unlock", methods=["GET", "POST"])
@login_required(OPERATOR, roles=ADMINS)
def member_unlock(card: str):
    return _lock_page(card, locking=False)


def _lock_page(card: str, *, locking: bool):
    row = _member(card)
    reason = request.form.get("reason", "")
    error = None
    if request.method == "POST":
        change = member_locks.lock if locking else member_locks.unlock
        try:
            _, changed = change(db.session, card, reason, now=clock.now(), actor=_actor())
        except Problem as problem:
            db.session.rollback()
            error = i18n.gettext(problem.detail)
        else:
            db.session.commit()
            if not changed:
                message = ("The member was locked already." if locking
                           else "The member was not locked.")
            else:
                message = ("The member is locked: redemptions are refused, earns still book."
                           if locking else "The member is unlocked: redemptions are open again.")
            flash(i18n.gettext(message), "ok")
            return redirect(url_for(".member", card=card))
    return render_template("web/console/members_lock.html",
                           title=i18n.gettext("Lock member {card}" if locking
                                              else "Unlock member {card}", card=card),
                           card=card, member=row, locking=locking, reason=reason, error=error,
                           ), 422 if error else 200


# --- export, one-time code, erase ---------------------------------------------------------

@bp.route("/members/<card>/export", methods=["POST"])
@login_required(OPERATOR, roles=READERS)
def member_export_download(card: str):
    document = member_export.export(
        db.session, card, now=clock.now(), actor=_actor(),
        more=current_app.extensions.get("member_data"), tiers=_tiers(), **_settings())
    db.session.commit()  # the export is audited
    body = json.dumps(document, ensure_ascii=False, indent=1, default=_json_default)
    return current_app.response_class(body, mimetype="application/json", headers={
        "Content-Disposition": f'attachment; filename="member-data-{_file_safe(card)}.json"'})


@bp.route("/members/<card>/code", methods=["POST"])
@login_required(OPERATOR, roles=ADMINS)
def member_code(card: str):
    _member(card)
    now = clock.now()
    code = credentials.issue_code(db.session, credentials.principal(credentials.MEMBER, card),
                                  now=now, actor=_actor())
    db.session.commit()
    # Shown on this answer only (never flashed, so never kept in the session cookie): the
    # domain stores it hashed.
    return render_template("web/console/members_code.html",
                           title=i18n.gettext("One-time code for {card}", card=card), card=card,
                           code=code, expires_at=as_utc(now + credentials.CODE_LIFETIME))


@bp.route("/members/<card>/erase", methods=["GET", "POST"])
@login_required(OPERATOR, roles=ADMINS)
def member_erase(card: str):
    row = _member(card)
    error = None
    if request.method == "POST":
        if request.form.get("confirm", "").strip() != card:
            error = i18n.gettext("The number typed differs from the member's: nothing was erased.")
        else:
            done = member_erasure.erase(db.session, card, now=clock.now(), actor=_actor(),
                                        more=current_app.extensions.get("member_erasure"))
            db.session.commit()
            flash(i18n.gettext("Member {card} is erased (now member-id:{id}).", card=card,
                               id=done["member"]), "ok")
            return redirect(url_for(".members_search"))
    view = members.balance(db.session, card, now=clock.now(), **_settings())
    return render_template("web/console/members_erase.html",
                           title=i18n.gettext("Erase member {card}", card=card), card=card,
                           member=row, balance=view, error=error), 422 if error else 200


i18n.extend({
    "Members": "Mitglieder",
    "Find a member": "Mitglied suchen",
    "Find": "Suchen",
    "No member has the number {card}.": "Kein Mitglied hat die Nummer {card}.",
    "Member {card}": "Mitglied {card}",
    "Enrolled": "Angemeldet",
    "Enrolled by": "Angemeldet durch",
    "Redemption": "Einlösung",
    "Locked": "Gesperrt",
    "Open": "Offen",
    "Locked by {by} on {at}: {reason}": "Gesperrt von {by} am {at}: {reason}",
    "Unlocked by {by} on {at}: {reason}": "Entsperrt von {by} am {at}: {reason}",
    "PIN locked after wrong PINs": "PIN nach falschen Eingaben gesperrt",
    "Portal sign-in": "Anmeldung im Portal",
    "Password set": "Passwort festgelegt",
    "No password yet": "Noch kein Passwort",
    "a one-time code is pending": "ein Einmalcode ist offen",
    "Tier": "Stufe",
    "no tier": "keine Stufe",
    "Actions": "Maßnahmen",
    "Lock redemption": "Einlösung sperren",
    "Unlock redemption": "Einlösung entsperren",
    "Download the data export": "Datenauszug herunterladen",
    "Issue a portal code": "Portal-Code ausgeben",
    "Erase member": "Mitglied löschen",
    "Your role can read this member, not change anything.":
        "Ihre Rolle kann dieses Mitglied lesen, aber nichts ändern.",
    "Lock member {card}": "Mitglied {card} sperren",
    "Unlock member {card}": "Mitglied {card} entsperren",
    "Locking refuses every redemption (burn) of this member at every partner, with the answer "
    "member-locked. Earns still book, so nothing owed to the member is lost.":
        "Die Sperre lehnt jede Einlösung dieses Mitglieds bei allen Partnern ab (Antwort "
        "member-locked). Gutschriften werden weiter gebucht, dem Mitglied geht nichts verloren.",
    "Unlocking lets partners redeem this member's points again.":
        "Nach dem Entsperren können Partner die Punkte dieses Mitglieds wieder einlösen.",
    "Reason (required, recorded in the audit log)":
        "Grund (Pflichtfeld, wird im Prüfprotokoll erfasst)",
    "Lock now": "Jetzt sperren",
    "Unlock now": "Jetzt entsperren",
    "Cancel": "Abbrechen",
    "The member was locked already.": "Das Mitglied war schon gesperrt.",
    "The member was not locked.": "Das Mitglied war nicht gesperrt.",
    "The member is locked: redemptions are refused, earns still book.":
        "Das Mitglied ist gesperrt: Einlösungen werden abgelehnt, Gutschriften weiter gebucht.",
    "The member is unlocked: redemptions are open again.":
        "Das Mitglied ist entsperrt: Einlösungen sind wieder möglich.",
    "A reason is required: 1 to 500 characters, saying why (a case number, what was seen).":
        "Ein Grund ist nötig: 1 bis 500 Zeichen, die sagen, warum (ein Aktenzeichen, was "
        "beobachtet wurde).",
    "No such member.": "Kein solches Mitglied.",
    "No such member: the card number is not enrolled, or was erased.":
        "Kein solches Mitglied: Die Kartennummer ist nicht angemeldet oder wurde gelöscht.",
    "One-time code for {card}": "Einmalcode für {card}",
    "Hand this code to the member: it sets a password in the member portal. It is shown only "
    "now and stored only hashed; an older code stops working.":
        "Geben Sie diesen Code an das Mitglied weiter: Damit legt es im Mitgliederportal ein "
        "Passwort fest. Er wird nur jetzt angezeigt und nur als Hash gespeichert; ein älterer "
        "Code gilt nicht mehr.",
    "Valid until {moment}.": "Gültig bis {moment}.",
    "Back to the member": "Zurück zum Mitglied",
    "Erase member {card}": "Mitglied {card} löschen",
    "Erasing cannot be undone. What happens:": "Das Löschen lässt sich nicht rückgängig machen. "
                                               "Was geschieht:",
    "The card number is removed: no partner can find the member any more, and the same card "
    "can be enrolled again as a new, empty member.":
        "Die Kartennummer wird entfernt: Kein Partner findet das Mitglied mehr, und dieselbe "
        "Karte kann als neues, leeres Mitglied wieder angemeldet werden.",
    "The PIN, the portal sign-in, the marketing consents and what partners keep about the "
    "card are deleted; open holds are voided.":
        "PIN, Anmeldung im Portal, Werbeeinwilligungen und was Partner zur Karte gespeichert "
        "haben werden gelöscht; offene Reservierungen werden aufgehoben.",
    "The card number is removed from the audit log.":
        "Die Kartennummer wird aus dem Prüfprotokoll entfernt.",
    "The journal, the balance ({points}) and closed statements stay, naming the member by an "
    "internal number only; the points expire as they would.":
        "Journal, Kontostand ({points}) und abgeschlossene Abrechnungen bleiben und nennen das "
        "Mitglied nur mit einer internen Nummer; die Punkte verfallen wie vorgesehen.",
    "Type the member number {card} to confirm": "Zur Bestätigung die Mitgliedsnummer {card} "
                                                "eingeben",
    "Erase for good": "Endgültig löschen",
    "The number typed differs from the member's: nothing was erased.":
        "Die eingegebene Nummer weicht von der des Mitglieds ab: Es wurde nichts gelöscht.",
    "Member {card} is erased (now member-id:{id}).":
        "Mitglied {card} ist gelöscht (jetzt member-id:{id}).",
    "Member pages": "Seiten des Mitglieds",
    "Recorded at": "Gebucht am",
})
