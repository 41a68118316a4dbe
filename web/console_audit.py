"""The console's audit log (/console/audit): every audited change, newest first, a page at a
time, filtered by actor, action, subject and a time range (coalition/audit_search.py). Days are
the coalition's: "from" is the start of that local day, "to" the end of it. Every operator
reads it; nothing here changes anything."""
from __future__ import annotations

import json
from datetime import date, timedelta

from flask import current_app, render_template, request, url_for

from coalition import audit_search
from coalition.database import db
from coalition.replica import standby_ok
from coalition.periods import day_start_utc
from coalition.problems import Problem

from . import i18n
from .auth import OPERATOR, login_required
from .console import READERS, bp, tab
from .portal import _int

PAGE_SIZE = 50
FILTERS = ("actor", "action", "subject", "from", "to")

tab(60, "audit", "Audit log")


def _day(raw: str) -> date | None:
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise Problem("validation-error", "A day is written YYYY-MM-DD.") from None


@bp.route("/audit")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def audit():
    filters = {name: request.args.get(name, "").strip()[:200] for name in FILTERS}
    tz = current_app.config["COALITION_TIMEZONE"]
    error = None
    try:
        first, last = _day(filters["from"]), _day(filters["to"])
    except Problem as problem:
        error, first, last = i18n.gettext(problem.detail), None, None
    found = audit_search.search(
        db.session, actor=filters["actor"] or None, action=filters["action"] or None,
        subject=filters["subject"] or None,
        since=day_start_utc(first, tz) if first else None,
        until=day_start_utc(last + timedelta(days=1), tz) if last and last < date.max else None,
        page=_int(request.args.get("page"), 1), per_page=PAGE_SIZE)
    chosen = {k: v for k, v in filters.items() if v}
    return render_template(
        "web/console/audit.html", title=i18n.gettext("Audit log"), found=found,
        filters=filters, error=error, actors=audit_search.actors(db.session),
        actions=audit_search.actions(db.session),
        page_url=lambda n: url_for(".audit", page=n, **chosen), as_json=_as_json
    ), 422 if error else 200


def _as_json(value) -> str:
    # As written, umlauts included (tojson would escape them); the template escapes the HTML.
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


i18n.extend({
    "Audit log": "Prüfprotokoll",
    "Actor": "Handelnd",
    "Action": "Handlung",
    "Subject": "Betroffen",
    "From (day)": "Von (Tag)",
    "To (day, included)": "Bis (Tag, einschließlich)",
    "Any actor": "Alle Handelnden",
    "Any action": "Alle Handlungen",
    "When": "Wann",
    "Values before": "Werte vorher",
    "Values after": "Werte nachher",
    "{count} events": "{count} Ereignisse",
    "No events match.": "Keine Ereignisse gefunden.",
    "Audit log pages": "Seiten des Prüfprotokolls",
    "A day is written YYYY-MM-DD.": "Ein Tag wird als JJJJ-MM-TT geschrieben.",
    "e.g. member-id:12, partner:acme, campaign:spring":
        "z. B. member-id:12, partner:acme, campaign:spring",
    "An action also finds the actions below it: partner.key finds partner.key.add.":
        "Eine Handlung findet auch die Handlungen darunter: partner.key findet partner.key.add.",
})
