"""The console's settlement (/console/settlement): months with their state, closing a month
(admin only, after a confirmation showing what will close), the coalition view of a closed
month, the partners' statements (JSON, CSV and PDF, the bytes the partner API serves) with
their lines, a reconciliation of a partner's record of a month (kept, as the partner API keeps
the partners' own, marked operator:<name>), and the month's kept reconciliations of every
partner, each readable in full.

Every figure comes from the settlement functions the command line and the partner API use:
a close is `flask settlement close PERIOD` (service.close with the key file's key), audited
under the operator's principal; a closed month is read from what the close signed
(service.report, service.statement); an open month as a close would derive it now
(service.month_flows). Whether a month can close is asked of books.close_books itself, in a
transaction that is rolled back, so the confirmation never offers a close the domain refuses."""
from __future__ import annotations

import json

from flask import (Response, abort, current_app, flash, jsonify, redirect, render_template, request,
                   stream_with_context, url_for)
from werkzeug.wrappers import Request

from coalition import books, clock
from coalition.database import db
from coalition.replica import standby_ok
from coalition.periods import period_of
from coalition.problems import Problem
from partners.service import list_partners, partner_ids
from settlement import exports, lines, pdf, reconciliation_input, schemas, service, signing, trends

from . import auth, i18n
from .auth import OPERATOR, login_required
from .console import ADMINS, READERS, bp, tab

FORMATS = {"json": "application/json", "csv": "text/csv", "pdf": "application/pdf"}
LINES_PAGE = 50
MAX_UPLOAD = 8 * 1024 * 1024  # a reconciliation file: 100,000 claims of ~80 bytes

tab(30, "settlement", "Settlement")


def _tz() -> str:
    return current_app.config["COALITION_TIMEZONE"]


def _admin() -> bool:
    who = auth.current()
    return who is not None and who.role in ADMINS


def _period(period: str) -> str:
    try:
        books.parse_period(period)
    except Problem:
        abort(404)
    return period


def _names() -> dict[str, str]:
    return {p.id: p.name for p in list_partners(db.session)}


def _closable(period: str) -> Problem | None:
    """Why the domain would refuse to close `period` now, or None: close_books run and rolled
    back (it only checks and adds the month's row; the rollback drops both and its lock)."""
    try:
        books.close_books(db.session, period, now=clock.now(), tz=_tz())
    except Problem as problem:
        return problem
    finally:
        db.session.rollback()
    return None


@bp.route("/settlement")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def settlement():
    now = clock.now()
    first = books.first_period(db.session)
    last_closed = books.closed_through(db.session)
    current = period_of(now, _tz())
    months = []
    if first is not None:
        count = 1
        period = first
        while period < current:
            period, count = books.next_period(period), count + 1
        for period in reversed(trends.months(now=now, tz=_tz(), count=count, last=current)):
            month = {"period": period, "closed": False, "ended": trends.month_end(period, _tz()) <= now}
            if last_closed is not None and period <= last_closed:
                report = json.loads(service.report(db.session, period).document)
                month.update(closed=True, closed_at=report["closed_at"],
                             statements=len(report["statements"]),
                             margin=report["operator_margin_cents"],
                             net_payments=report["payments"]["net_payments"])
            months.append(month)
    next_open = books.next_period(last_closed) if last_closed else first
    db.session.commit()
    return render_template("web/console/settlement.html", title=i18n.gettext("Settlement"),
                           months=months, next_open=next_open, admin=_admin())


def _preview(period: str) -> dict:
    """What a close of `period` would write now, per partner: its claims and points."""
    flows = service.month_flows(db.session, period)
    names = _names()
    rows = [{"partner_id": p, "name": names.get(p, p), "claims": flows.claims[p],
             "late": flows.late[p], "issued": flows.issued[p], "redeemed": flows.redeemed[p],
             "bonus": flows.bonus[p], "expired": flows.expired[p]}
            for p in partner_ids(db.session)]
    totals = {k: sum(r[k] for r in rows) for k in ("claims", "late", "issued", "redeemed", "bonus",
                                                    "expired")}
    return {"rows": rows, "totals": totals}


def _close_page(period: str, *, error: str | None = None, status: int = 200):
    refusal = _closable(period)
    preview = _preview(period)
    db.session.commit()
    return render_template("web/console/settlement_close.html",
                           title=i18n.gettext("Close {month}?", month=period), period=period,
                           preview=preview, refusal=refusal and i18n.gettext(refusal.detail),
                           error=error), status


@bp.route("/settlement/<period>/close", methods=["GET", "POST"])
@login_required(OPERATOR, roles=ADMINS)
def close(period: str):
    _period(period)
    if books.is_closed(db.session, period) and request.method == "GET":
        return redirect(url_for(".month", period=period))
    if request.method == "GET":
        return _close_page(period)
    key = signing.signing_key(current_app.config["COALITION_SIGNING_KEY_FILE"])
    try:
        report = service.close(db.session, period, now=clock.now(), tz=_tz(), key=key,
                               actor=auth.current().principal)
    except Problem as problem:
        db.session.rollback()
        return _close_page(period, error=i18n.gettext(problem.detail), status=problem.status)
    db.session.commit()
    flash(i18n.gettext("{month} is closed: {count} statements are written.", month=period,
                       count=i18n.number(len(report["statements"]))), "ok")
    return redirect(url_for(".month", period=period))


@bp.route("/settlement/<period>")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def month(period: str):
    _period(period)
    if not books.is_closed(db.session, period):
        preview = _preview(period)
        last_closed = books.closed_through(db.session)
        first = books.first_period(db.session)
        next_open = books.next_period(last_closed) if last_closed else first
        db.session.commit()
        return render_template("web/console/settlement_open.html",
                               title=i18n.gettext("{month} (open)", month=period), period=period,
                               preview=preview, admin=_admin(), next_open=next_open)
    report_row = service.report(db.session, period)
    report = json.loads(report_row.document)
    names = _names()
    db.session.commit()
    issuers = sorted({m["issuer"] for m in report["matrix"]})
    redeemers = sorted({m["redeemer"] for m in report["matrix"]})
    cells = {(m["issuer"], m["redeemer"]): m["points"] for m in report["matrix"]}
    return render_template(
        "web/console/settlement_month.html", title=i18n.gettext("Settlement {month}", month=period),
        period=period, report=report, digest=report_row.digest, names=names, issuers=issuers,
        redeemers=redeemers, cells=cells,
        row_totals={i: sum(cells.get((i, r), 0) for r in redeemers) for i in issuers},
        column_totals={r: sum(cells.get((i, r), 0) for i in issuers) for r in redeemers})


def _download(body, fmt: str, filename: str) -> Response:
    return Response(body, mimetype=FORMATS[fmt],
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@bp.route("/settlement/<period>/report.<fmt>")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def report_download(period: str, fmt: str):
    _period(period)
    if fmt not in FORMATS:
        abort(404)
    row = service.report(db.session, period)
    signed = service.signed(row)
    db.session.commit()
    filename = f"coalition-report-{period}.{fmt}"
    if fmt == "csv":
        return _download(exports.report_csv(signed["document"], row.digest), fmt, filename)
    if fmt == "pdf":
        return _download(pdf.report_pdf(signed), fmt, filename)
    answer = jsonify(signed)
    answer.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return answer


@bp.route("/settlement/<period>/statements/<partner_id>.<fmt>")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def statement_download(period: str, partner_id: str, fmt: str):
    """As GET /v1/statements/{period}?format= answers the partner (settlement/views.py)."""
    _period(period)
    if fmt not in FORMATS:
        abort(404)
    row = service.statement(db.session, partner_id, period)
    db.session.commit()
    filename = f"statement-{row.partner_id}-{period}.{fmt}"
    if fmt == "csv":
        return _download(exports.statement_csv(service.signed(row)["document"], row.digest), fmt,
                         filename)
    if fmt == "pdf":
        return _download(pdf.statement_pdf(service.signed(row)), fmt, filename)
    answer = jsonify(schemas.SignedStatementSchema().dump(service.signed(row)))
    answer.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return answer


@bp.route("/settlement/<period>/statements/<partner_id>")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def statement(period: str, partner_id: str):
    _period(period)
    row = service.statement(db.session, partner_id, period)
    document = json.loads(row.document)
    after = _cursor()
    error = None
    try:
        month_lines = lines.MonthLines(db.session, partner_id, period, tz=_tz())
        page, last = month_lines.page(after, LINES_PAGE)
    except lines.LinesDisagree:
        page, last = [], None
        error = i18n.gettext("The journal no longer adds up to this statement: run the ledger "
                             "check (flask ledger verify).")
    names = _names()
    db.session.commit()
    return render_template(
        "web/console/settlement_statement.html",
        title=i18n.gettext("Statement of {partner} for {month}", partner=names.get(partner_id, partner_id),
                           month=period),
        period=period, partner_id=partner_id, doc=document, digest=row.digest, kid=row.kid,
        names=names, lines=page, error=error, first_page=after is None,
        next_url=url_for(".statement", period=period, partner_id=partner_id, section=last[0],
                         after=last[1]) + "#lines" if last else None)


def _cursor() -> tuple[int, int] | None:
    section, after = request.args.get("section", ""), request.args.get("after", "")
    if section.isascii() and section.isdigit() and after.isascii() and after.isdigit() \
            and len(after) < 19 and int(section) < len(lines.SECTIONS):
        return int(section), int(after)
    return None


@bp.route("/settlement/<period>/statements/<partner_id>/lines.csv")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def statement_lines_csv(period: str, partner_id: str):
    """Every line as CSV, streamed a page at a time as GET /v1/statements/{period}/lines does."""
    _period(period)
    month_lines = lines.MonthLines(db.session, partner_id, period, tz=_tz())
    db.session.commit()
    return Response(stream_with_context(lines.csv_chunks(month_lines, commit=db.session.commit)),
                    mimetype="text/csv", headers={
                        "Content-Disposition":
                            f'attachment; filename="statement-lines-{partner_id}-{period}.csv"'})


@bp.route("/settlement/<period>/reconciliation", methods=["GET", "POST"])
@login_required(OPERATOR, roles=READERS)
def reconciliation(period: str):
    """A partner's record of a closed month (the CSV it uploads to
    POST /v1/statements/{period}/reconciliation) against the coalition's, claim by claim.
    Changes no books, so every operator may run it; the answer is kept as the partner API keeps
    a partner's (settlement/reconciliation.py, store), marked uploaded by operator:<name>, so
    that the month's list shows every reconciliation that was run, by whomever."""
    _period(period)
    names = _names()
    partner = request.form.get("partner_id", request.args.get("partner_id", ""))
    result, error, status, kept = None, None, 200, None
    if request.method == "POST":
        upload = request.files.get("records")
        try:
            if partner not in names:
                raise Problem("validation-error", "Choose the partner whose record this is.")
            if upload is None or not upload.filename:
                raise Problem("validation-error", "Choose the partner's CSV file.")
            body = upload.stream.read(MAX_UPLOAD + 1)
            if len(body) > MAX_UPLOAD:
                raise Problem("payload-too-large", "The file is too large.")
            # The upload read as the partner API reads a text/csv body: the same parsing.
            records = reconciliation_input.records_from(
                Request.from_values(data=body, content_type="text/csv; charset=utf-8"))
            result = reconciliation_input.reconcile(db.session, partner, period, records)
            kept = reconciliation_input.store(db.session, result, fmt="csv", raw=body,
                                              uploaded_by=auth.current().principal,
                                              now=clock.now()).id
        except Problem as problem:
            db.session.rollback()
            error, status = i18n.gettext(problem.detail), 422
            if problem.errors:
                error += " " + "; ".join(f"{e.get('pointer', '')}: {e.get('detail', '')}"
                                         for e in problem.errors[:5])
    db.session.commit()
    return render_template("web/console/settlement_reconciliation.html",
                           title=i18n.gettext("Reconciliation {month}", month=period),
                           period=period, names=names, partner=partner, result=result,
                           error=error, kept=kept), status


STORED_PAGE = 50


@bp.route("/settlement/<period>/reconciliations")
@login_required(OPERATOR, roles=READERS)
def reconciliations(period: str):
    """The month's kept reconciliations of every partner, newest first, a page at a time."""
    _period(period)
    before = request.args.get("before", "")
    before = int(before) if before.isascii() and before.isdigit() and len(before) < 19 else None
    rows = reconciliation_input.stored(db.session, period, limit=STORED_PAGE + 1, before=before)
    names = _names()
    db.session.commit()
    page = rows[:STORED_PAGE]
    return render_template(
        "web/console/settlement_reconciliations.html",
        title=i18n.gettext("Reconciliations {month}", month=period), period=period, names=names,
        rows=[reconciliation_input.summary(row) for row in page], first_page=before is None,
        next_url=url_for(".reconciliations", period=period, before=page[-1].id)
        if len(rows) > STORED_PAGE else None)


@bp.route("/settlement/<period>/reconciliations/<int:reconciliation_id>")
@login_required(OPERATOR, roles=READERS)
def stored_reconciliation(period: str, reconciliation_id: int):
    """One kept reconciliation in full, as it was answered (less any erased member's card)."""
    _period(period)
    try:
        row = reconciliation_input.stored_one(db.session, reconciliation_id)
    except Problem:
        abort(404)
    if row.period != period:
        abort(404)
    names = _names()
    db.session.commit()
    return render_template(
        "web/console/settlement_reconciliation_stored.html",
        title=i18n.gettext("Reconciliation {month}", month=period), period=period, names=names,
        row=reconciliation_input.summary(row), result=json.loads(row.result))


i18n.extend({
    "Settlement": "Abrechnung",
    "Month": "Monat",
    "State": "Zustand",
    "open": "offen",
    "closed": "abgeschlossen",
    "Closed at": "Abgeschlossen am",
    "Statements": "Abrechnungen",
    "Operator margin": "Betreibermarge",
    "Net payments": "Nettozahlungen",
    "Nothing has been booked yet.": "Es wurde noch nichts gebucht.",
    "Months": "Monate",
    "Close": "Abschließen",
    "Close {month}": "{month} abschließen",
    "Close {month}?": "{month} abschließen?",
    "running": "läuft",
    "Months close in order, once they have ended: next is {month}.":
        "Monate werden der Reihe nach abgeschlossen, sobald sie vorbei sind: als Nächstes {month}.",
    "What will close": "Was abgeschlossen wird",
    "Closing writes a signed statement for each partner below and the coalition report. A closed "
    "month never changes: claims of that month arriving later are booked into the next open one.":
        "Der Abschluss schreibt für jeden Partner unten eine signierte Abrechnung und den Bericht der "
        "Koalition. Ein abgeschlossener Monat ändert sich nie: später eintreffende Vorgänge dieses "
        "Monats werden im nächsten offenen Monat gebucht.",
    "This month cannot close now:": "Dieser Monat kann jetzt nicht abgeschlossen werden:",
    "Close the month": "Monat abschließen",
    "Cancel": "Abbrechen",
    "Partner": "Partner",
    "Claims": "Vorgänge",
    "Late claims": "Verspätete Vorgänge",
    "Points issued": "Ausgegebene Punkte",
    "Points redeemed": "Eingelöste Punkte",
    "Bonus points": "Bonuspunkte",
    "Points expired": "Verfallene Punkte",
    "Total": "Summe",
    "{month} is closed: {count} statements are written.":
        "{month} ist abgeschlossen: {count} Abrechnungen sind geschrieben.",
    "{month} (open)": "{month} (offen)",
    "So far, as a close would count it now:": "Bisher, wie ein Abschluss es jetzt zählen würde:",
    "Settlement {month}": "Abrechnung {month}",
    "Coalition report": "Bericht der Koalition",
    "Totals": "Summen",
    "Netting": "Verrechnung",
    "Payments one by one": "Einzelzahlungen",
    "Net payments instead": "Stattdessen Nettozahlungen",
    "Saved": "Eingespart",
    "Count": "Anzahl",
    "Amount": "Betrag",
    "Issuer × redeemer": "Herausgeber × Einlöser",
    "Points issued by the row's partner and redeemed at the column's.":
        "Punkte, die der Partner der Zeile ausgegeben hat und die beim Partner der Spalte eingelöst wurden.",
    "Issuer": "Herausgeber",
    "No points were redeemed across partners.": "Es wurden keine Punkte partnerübergreifend eingelöst.",
    "Breakage": "Verfall",
    "Net": "Saldo",
    "Download": "Herunterladen",
    "Report as JSON": "Bericht als JSON",
    "Report as CSV": "Bericht als CSV",
    "Report as PDF": "Bericht als PDF",
    "Statement of {partner} as JSON": "Abrechnung von {partner} als JSON",
    "Statement of {partner} as CSV": "Abrechnung von {partner} als CSV",
    "Statement of {partner} as PDF": "Abrechnung von {partner} als PDF",
    "Lines": "Positionen",
    "Lines of {partner}": "Positionen von {partner}",
    "the coalition pays": "die Koalition zahlt",
    "pays the coalition": "zahlt an die Koalition",
    "Reconciliation": "Abgleich",
    "Reconcile a partner's record": "Aufzeichnung eines Partners abgleichen",
    "Statement of {partner} for {month}": "Abrechnung von {partner} für {month}",
    "Digest": "Prüfsumme",
    "Signing key": "Signaturschlüssel",
    "Issuance charge": "Ausgabeentgelt",
    "Redemption funding charge": "Finanzierungsentgelt für Einlösungen",
    "Redemption reimbursement": "Erstattung für Einlösungen",
    "Claim fees": "Vorgangsgebühren",
    "Debt recovery credit": "Gutschrift aus Schuldenausgleich",
    "Bonus issuance charge": "Ausgabeentgelt für Bonuspunkte",
    "Money": "Geld",
    "Counterparties": "Gegenparteien",
    "Issued by them, redeemed here": "Von ihnen ausgegeben, hier eingelöst",
    "Issued here, redeemed there": "Hier ausgegeben, dort eingelöst",
    "Line": "Position",
    "Member": "Mitglied",
    "Counterparty": "Gegenpartei",
    "Points": "Punkte",
    "Net (cents)": "Saldo (Cent)",
    "No lines.": "Keine Positionen.",
    "First lines": "Erste Positionen",
    "Next lines": "Weitere Positionen",
    "Lines as CSV": "Positionen als CSV",
    "The journal no longer adds up to this statement: run the ledger check (flask ledger verify).":
        "Das Journal ergibt diese Abrechnung nicht mehr: Führen Sie die Prüfung aus (flask ledger verify).",
    "claim": "Vorgang",
    "funding": "Finanzierung",
    "debt_recovery": "Schuldenausgleich",
    "breakage": "Verfall",
    "bonus": "Bonus",
    # a funding line's kind: what used the partner's points (coalition/vocabulary.py)
    "burn_reversal": "Storno einer Einlösung",
    "earn_reversal": "Storno einer Gutschrift",
    "debt_fill": "Schuldentilgung",
    "Reconciliation {month}": "Abgleich {month}",
    "Choose a partner": "Partner wählen",
    "The partner's record (CSV)": "Aufzeichnung des Partners (CSV)",
    "Compare": "Vergleichen",
    "Choose the partner whose record this is.": "Wählen Sie den Partner, dem die Aufzeichnung gehört.",
    "Choose the partner's CSV file.": "Wählen Sie die CSV-Datei des Partners.",
    "The file is too large.": "Die Datei ist zu groß.",
    "Claims at the coalition": "Vorgänge bei der Koalition",
    "Claims in the record": "Vorgänge in der Aufzeichnung",
    "Matched": "Übereinstimmend",
    "Mismatched": "Abweichend",
    "Missing at the partner": "Fehlen beim Partner",
    "Missing at the coalition": "Fehlen bei der Koalition",
    "Field": "Feld",
    "Ours": "Unsere",
    "Theirs": "Ihre",
    "Booked in": "Gebucht in",
    "Only the first 1,000 of each list are named; the totals count every claim.":
        "Jede Liste nennt nur die ersten 1.000; die Summen zählen jeden Vorgang.",
    "Everything matches.": "Alles stimmt überein.",
    "Kind": "Art",
    "Show": "Anzeigen",
    "Reconciliations": "Abgleiche",
    "Reconciliations {month}": "Abgleiche {month}",
    "Every reconciliation of the month that was run, by a partner through the partner API or by "
    "an operator here, newest first. Card numbers of erased members are taken out.":
        "Jeder Abgleich des Monats, der ausgeführt wurde, von einem Partner über die Partner-API "
        "oder von einem Operator hier, der neueste zuerst. Kartennummern gelöschter Mitglieder "
        "sind entfernt.",
    "No reconciliation of this month has been run yet.":
        "Für diesen Monat wurde noch kein Abgleich ausgeführt.",
    "Uploaded at": "Hochgeladen am",
    "Uploaded by": "Hochgeladen von",
    "Format": "Format",
    "Upload": "Hochgeladene Datei",
    "Result": "Ergebnis",
    "Reconciliation {number}": "Abgleich {number}",
    "Newest reconciliations": "Neueste Abgleiche",
    "Older reconciliations": "Ältere Abgleiche",
    "Kept as reconciliation {number}.": "Gespeichert als Abgleich {number}.",
    "A partner's own record of the month (CSV with the columns claim_id, kind, points and "
    "optionally member_id, occurred_at, as the partner API takes it) compared claim by claim "
    "with what the coalition booked. The books do not change; the result is kept, as a "
    "partner's own upload is, marked as yours.":
        "Die eigene Aufzeichnung eines Partners für den Monat (CSV mit den Spalten claim_id, kind, "
        "points und wahlweise member_id, occurred_at, wie die Partner-API sie annimmt), Vorgang für "
        "Vorgang mit den Buchungen der Koalition verglichen. Die Bücher ändern sich nicht; das "
        "Ergebnis wird wie der Upload eines Partners gespeichert, als Ihrer gekennzeichnet.",
})
