"""The console's dashboard (/console/dashboard): the coalition month by month as charts, drawn
on the server as SVG (web/charts.py), and each chart's figures as JSON and CSV for the
operator's own tools (/console/dashboard/<chart>.json|.csv, the same query parameters).

Every figure is settlement/trends.py's (its docstrings say where each comes from), the page
and the downloads alike: a chart draws the rows the download serves. The months' figures are
read once per request (trends.figures_for) and handed to every series that takes them, since an
open month costs a pass over its journal.

Query parameters, all optional: `from` and `to` (YYYY-MM, default the last 12 months up to the
current one), `flows` (the heat map's month, default the latest closed month, else the
current one). Claims per day are always the last 30 days, and the tier distribution is taken
at the end of `to` (now, while that month runs)."""
from __future__ import annotations

import dataclasses
from datetime import date, datetime
from decimal import Decimal

from babel import dates as babel_dates
from babel import numbers as babel_numbers
from flask import Response, abort, current_app, jsonify, render_template, request
from markupsafe import Markup

from coalition import books, clock
from coalition.database import db
from coalition.replica import standby_ok
from coalition.errors import problem_response
from coalition.periods import add_months, period_of
from coalition.problems import Problem
from partners import rejects
from partners.service import list_partners
from settlement import trends

from . import charts, i18n
from .auth import OPERATOR, login_required
from .console import READERS, bp, tab

tab(10, "dashboard", "Dashboard")

EARLIEST = "2000-01"  # no coalition books earlier; keeps every month's arithmetic in range
MAX_MONTHS = 60
CHARTS = ("liability", "issuance-redemption", "breakage", "flows", "active-members", "tiers",
          "claims-per-day")
# The header of a download with no rows: the series' fields, as trends.as_csv writes them.
COLUMNS = {"liability": trends.Liability, "issuance-redemption": trends.PartnerMonth,
           "breakage": trends.Breakage, "flows": trends.MatrixCell,
           "active-members": trends.ActiveMembers, "tiers": trends.TierCount,
           "claims-per-day": trends.ClaimDay}

BAD_MONTH = "A month is written YYYY-MM, from 2000-01 up to the current month."
BAD_RANGE = "The first month must not come after the last, and a range spans at most 60 months."


@dataclasses.dataclass(frozen=True)
class Choice:
    """What the request asks to see."""
    now: datetime
    tz: str
    first: str
    last: str
    flows: str
    flows_default: bool

    @property
    def periods(self) -> list[str]:
        year, month = map(int, self.first.split("-"))
        out, period = [], self.first
        while period <= self.last:
            out.append(period)
            year, month = add_months(year, month, 1)
            period = f"{year:04d}-{month:02d}"
        return out

    @property
    def at(self) -> datetime:
        """The end of the last month, or now while it runs."""
        return min(trends.month_end(self.last, self.tz), self.now)

    def query(self) -> dict[str, str]:
        out = {"from": self.first, "to": self.last}
        if not self.flows_default:
            out["flows"] = self.flows
        return out


def _month(name: str, current: str) -> str | None:
    text = request.args.get(name, "")
    if text == "":
        return None
    try:
        books.parse_period(text)
    except Problem:
        raise Problem("validation-error", BAD_MONTH) from None
    if not EARLIEST <= text <= current:
        raise Problem("validation-error", BAD_MONTH)
    return text


def _choice() -> Choice:
    """The request's months, or a validation-error Problem saying what is wrong."""
    now, tz = clock.now(), current_app.config["COALITION_TIMEZONE"]
    current = period_of(now, tz)
    last = _month("to", current) or current
    first = _month("from", current) or max(EARLIEST, trends.months(now=now, tz=tz, last=last)[0])
    if first > last or first < trends.months(now=now, tz=tz, count=MAX_MONTHS, last=last)[0]:
        raise Problem("validation-error", BAD_RANGE)
    flows = _month("flows", current)
    return Choice(now, tz, first, last, flows or books.closed_through(db.session) or current,
                  flows is None)


def _tiers():
    return current_app.config["LEDGER_RULES"].tiers


# --- the series, one function for the page and the downloads ------------------------------

def _series(chart: str, choice: Choice, figures: dict | None) -> list:
    session, periods = db.session, choice.periods
    if chart == "liability":
        return trends.liability(session, periods)
    if chart == "issuance-redemption":
        return trends.issuance_and_redemption(session, periods, figures=figures)
    if chart == "breakage":
        return trends.breakage(session, periods, figures=figures)
    if chart == "flows":
        return trends.flow_matrix(session, choice.flows, figures=figures)
    if chart == "active-members":
        return trends.active_members(session, periods, now=choice.now, tz=choice.tz)
    if chart == "tiers":
        return trends.tier_distribution(session, _tiers(), at=choice.at, tz=choice.tz)
    first, last = trends.days(now=choice.now, tz=choice.tz)
    return trends.claims_per_day(session, first, last, tz=choice.tz,
                                 rejected=rejects.per_day(session, first, last))


def _figures(choice: Choice, charts_wanted: tuple[str, ...]) -> dict | None:
    """The months' figures read once, for the series that take them (the flows' month too)."""
    months = []
    if {"issuance-redemption", "breakage"} & set(charts_wanted):
        months = choice.periods
    if "flows" in charts_wanted and choice.flows not in months:
        months = [*months, choice.flows]
    return trends.figures_for(db.session, months) if months else None


# --- downloads ----------------------------------------------------------------------------

@bp.route("/dashboard/<chart>.<fmt>")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def dashboard_data(chart: str, fmt: str):
    if chart not in CHARTS or fmt not in ("json", "csv"):
        abort(404)
    try:
        choice = _choice()
    except Problem as problem:
        return problem_response(problem)  # a tool reads the answer: problem+json
    rows = _series(chart, choice, _figures(choice, (chart,)))
    db.session.commit()
    if fmt == "json":
        return jsonify(trends.as_json(rows))
    columns = [f.name for f in dataclasses.fields(COLUMNS[chart])]
    return Response(trends.as_csv(rows, columns), mimetype="text/csv",
                    headers={"Content-Disposition":
                             f'attachment; filename="{_filename(chart, choice)}.csv"'})


def _filename(chart: str, choice: Choice) -> str:
    if chart == "flows":
        return f"flows-{choice.flows}"
    if chart == "claims-per-day":
        first, last = trends.days(now=choice.now, tz=choice.tz)
        return f"claims-per-day-{first.isoformat()}-{last.isoformat()}"
    if chart == "tiers":
        return f"tiers-{choice.last}"
    return f"{chart}-{choice.first}-{choice.last}"


# --- the page -----------------------------------------------------------------------------

def _number(value) -> str:
    return i18n.number(value)


def _eur(value) -> str:
    return babel_numbers.format_currency(Decimal(str(value)), "EUR", locale=i18n.locale())


def _day_label(day: date) -> str:
    return babel_dates.format_skeleton("Md", day, locale=i18n.locale())  # short: 30 of them


def _chart_text() -> dict:
    return {"fmt": _number, "no_data": i18n.gettext("No data")}


@bp.route("/dashboard")
@login_required(OPERATOR, roles=READERS)
@standby_ok
def dashboard():
    choice = _choice()
    _ = i18n.gettext
    tiers = _tiers()
    wanted = tuple(c for c in CHARTS if c != "tiers" or tiers)
    figures = _figures(choice, wanted)
    data = {chart: _series(chart, choice, figures) for chart in wanted}
    names = {p.id: p.name for p in list_partners(db.session)}
    db.session.commit()
    periods = choice.periods
    text = _chart_text()
    sections = []

    def section(chart: str, heading: str, caption: str, svgs: list[str]) -> None:
        sections.append({"id": chart, "heading": heading, "caption": caption,
                         # web/charts.py escapes every text it writes into the SVG
                         "svgs": [Markup(svg) for svg in svgs]})

    liability = data["liability"]
    section("liability", _("Outstanding liability"),
            _("Points members hold at each month's end (the running month: now), and their value "
              "at each issuer's issue price."), [
                charts.line_chart(_("Outstanding liability in points"),
                                  _("Points held by members at the end of each month."), periods,
                                  [charts.Series(_("Points"), [r.points for r in liability])],
                                  y_label=_("Points"), **text),
                charts.line_chart(_("Outstanding liability in EUR"),
                                  _("The points held at the end of each month, at each issuer's "
                                    "issue price."), periods,
                                  [charts.Series("EUR", [r.eur for r in liability])],
                                  y_label="EUR", **{**text, "fmt": _eur})])

    flows_rows = data["issuance-redemption"]
    partners = sorted({r.partner_id for r in flows_rows})
    issued = {(r.period, r.partner_id): r.points_issued + r.bonus_points_issued for r in flows_rows}
    redeemed = {(r.period, r.partner_id): r.points_redeemed for r in flows_rows}
    # A partner's series only where it has any: a legend of empty entries says nothing.
    series = [charts.Series(_("{partner} issued", partner=names.get(p, p)),
                            [issued.get((m, p), 0) for m in periods])
              for p in partners if any(issued.get((m, p)) for m in periods)]
    series += [charts.Series(_("{partner} redeemed", partner=names.get(p, p)),
                             [-redeemed.get((m, p), 0) for m in periods])
               for p in partners if any(redeemed.get((m, p)) for m in periods)]
    section("issuance-redemption", _("Issuance against redemption"),
            _("Per month, the points each partner issued (its own and the bonus points it funded) "
              "above the line, and the points redeemed at it below."), [
                charts.bar_chart(_("Points issued and redeemed per partner"),
                                 _("Stacked bars per month: issuance per partner upwards, "
                                   "redemption per partner downwards."), periods, series,
                                 stacked=True, y_label=_("Points"), height=380, **text)])

    broken = data["breakage"]
    section("breakage", _("Breakage"),
            _("Points that expired unspent in each month, and their value at each issuer's issue "
              "price."), [
                charts.bar_chart(_("Breakage in points"), _("Points expired unspent per month."),
                                 periods, [charts.Series(_("Points"), [r.points for r in broken])],
                                 y_label=_("Points"), height=260, values_on_bars=False, **text),
                charts.bar_chart(_("Breakage in EUR"), _("Value of the points expired per month."),
                                 periods, [charts.Series("EUR", [r.eur for r in broken])],
                                 y_label="EUR", height=260, values_on_bars=False,
                                 **{**text, "fmt": _eur})])

    cells = data["flows"]
    issuers = sorted({c.issuer for c in cells})
    redeemers = sorted({c.redeemer for c in cells})
    section("flows", _("Flows between partners, {month}", month=choice.flows),
            _("Points issued by one partner (rows) and redeemed at another (columns) in the "
              "month."), [
                charts.heat_map(_("Issuer and redeemer flows, {month}", month=choice.flows),
                                _("Points issued by each row's partner and redeemed at each "
                                  "column's partner."),
                                [names.get(i, i) for i in issuers],
                                [names.get(r, r) for r in redeemers],
                                {(names.get(c.issuer, c.issuer), names.get(c.redeemer, c.redeemer)):
                                 c.points for c in cells},
                                row_label=_("Issuer"), column_label=_("Redeemer"), **text)])

    active = data["active-members"]
    section("active-members", _("Active members"),
            _("Members with an earn or a redemption at a partner in the 90 days up to each "
              "month's end, beside all members enrolled then."), [
                charts.line_chart(_("Active and enrolled members"),
                                  _("Members active in the last 90 days and members enrolled, "
                                    "at each month's end."), periods,
                                  [charts.Series(_("Active members"),
                                                 [r.active_members for r in active]),
                                   charts.Series(_("Enrolled members"),
                                                 [r.enrolled_members for r in active])],
                                  y_label=_("Members"), **text)])

    if tiers:
        counts = data["tiers"]
        section("tiers", _("Tier distribution"),
                _("Members in each tier now.") if choice.at == choice.now
                else _("Members in each tier at the end of {month}.", month=choice.last), [
                    charts.bar_chart(_("Members per tier"),
                                     _("How many members are in each tier."),
                                     [c.tier for c in counts],
                                     [charts.Series(_("Members"), [c.members for c in counts])],
                                     y_label=_("Members"), height=260, values_on_bars=False, **text)])

    days = data["claims-per-day"]
    slugs = sorted({slug for d in days for slug in d.rejected})
    series = [charts.Series(_("Earns"), [d.earns for d in days]),
              charts.Series(_("Redemptions"), [d.burns for d in days]),
              charts.Series(_("Reversals"), [d.reversals for d in days])]
    series += [charts.Series(_("Refused: {slug}", slug=slug),
                             [d.rejected.get(slug, 0) for d in days]) for slug in slugs]
    section("claims-per-day", _("Claims per day"),
            _("Claims the journal accepted in the last 30 days, by kind, stacked with the "
              "partner API's refusals by problem."), [
                charts.bar_chart(_("Claims per day"),
                                 _("Accepted claims by kind and refused ones by problem, per day."),
                                 [_day_label(d.day) for d in days], series, stacked=True,
                                 y_label=_("Claims"), height=360, **text)])

    return render_template("web/console/dashboard.html", title=_("Dashboard"), choice=choice,
                           sections=sections, query=choice.query(),
                           current=period_of(choice.now, choice.tz))


i18n.extend({
    "Dashboard": "Übersicht",
    "No data": "Keine Daten",
    "Months shown": "Angezeigte Monate",
    "From (month)": "Von (Monat)",
    "To (month, included)": "Bis (Monat, einschließlich)",
    "Month of the flows": "Monat der Ströme",
    "Show": "Anzeigen",
    "Format: YYYY-MM": "Format: JJJJ-MM",
    "{first} to {last}": "{first} bis {last}",
    "Figures of closed months are those their statements state; open months as a close would "
    "count them now.":
        "Zahlen abgeschlossener Monate sind die ihrer Abrechnungen; offene Monate so, wie ein "
        "Abschluss sie jetzt zählen würde.",
    "Download the figures:": "Zahlen herunterladen:",
    "{chart} as JSON": "{chart} als JSON",
    "{chart} as CSV": "{chart} als CSV",
    "Outstanding liability": "Ausstehende Verbindlichkeit",
    "Points members hold at each month's end (the running month: now), and their value at each "
    "issuer's issue price.":
        "Punkte, die Mitglieder am Ende jedes Monats halten (im laufenden Monat: jetzt), und ihr "
        "Wert zum Ausgabepreis des jeweiligen Herausgebers.",
    "Outstanding liability in points": "Ausstehende Verbindlichkeit in Punkten",
    "Points held by members at the end of each month.":
        "Von Mitgliedern gehaltene Punkte am Ende jedes Monats.",
    "Outstanding liability in EUR": "Ausstehende Verbindlichkeit in EUR",
    "The points held at the end of each month, at each issuer's issue price.":
        "Die am Monatsende gehaltenen Punkte zum Ausgabepreis des jeweiligen Herausgebers.",
    "Points": "Punkte",
    "{partner} issued": "{partner} ausgegeben",
    "{partner} redeemed": "{partner} eingelöst",
    "Issuance against redemption": "Ausgabe und Einlösung",
    "Per month, the points each partner issued (its own and the bonus points it funded) above "
    "the line, and the points redeemed at it below.":
        "Je Monat die von jedem Partner ausgegebenen Punkte (eigene und von ihm finanzierte "
        "Bonuspunkte) über der Linie, die bei ihm eingelösten darunter.",
    "Points issued and redeemed per partner": "Ausgegebene und eingelöste Punkte je Partner",
    "Stacked bars per month: issuance per partner upwards, redemption per partner downwards.":
        "Gestapelte Balken je Monat: Ausgabe je Partner nach oben, Einlösung je Partner nach unten.",
    "Breakage": "Verfall",
    "Points that expired unspent in each month, and their value at each issuer's issue price.":
        "In jedem Monat ungenutzt verfallene Punkte und ihr Wert zum Ausgabepreis des jeweiligen "
        "Herausgebers.",
    "Breakage in points": "Verfall in Punkten",
    "Points expired unspent per month.": "Ungenutzt verfallene Punkte je Monat.",
    "Breakage in EUR": "Verfall in EUR",
    "Value of the points expired per month.": "Wert der verfallenen Punkte je Monat.",
    "Flows between partners, {month}": "Ströme zwischen Partnern, {month}",
    "Points issued by one partner (rows) and redeemed at another (columns) in the month.":
        "Punkte, die ein Partner (Zeilen) ausgegeben hat und die bei einem anderen (Spalten) im "
        "Monat eingelöst wurden.",
    "Issuer and redeemer flows, {month}": "Ströme von Herausgeber zu Einlöser, {month}",
    "Points issued by each row's partner and redeemed at each column's partner.":
        "Punkte, ausgegeben vom Partner der Zeile und eingelöst beim Partner der Spalte.",
    "Issuer": "Herausgeber",
    "Redeemer": "Einlöser",
    "Active members": "Aktive Mitglieder",
    "Members with an earn or a redemption at a partner in the 90 days up to each month's end, "
    "beside all members enrolled then.":
        "Mitglieder mit einer Gutschrift oder Einlösung bei einem Partner in den 90 Tagen bis zum "
        "Monatsende, neben allen dann angemeldeten Mitgliedern.",
    "Active and enrolled members": "Aktive und angemeldete Mitglieder",
    "Members active in the last 90 days and members enrolled, at each month's end.":
        "In den letzten 90 Tagen aktive und angemeldete Mitglieder am Ende jedes Monats.",
    "Enrolled members": "Angemeldete Mitglieder",
    "Members": "Mitglieder",
    "Tier distribution": "Verteilung auf Stufen",
    "Members in each tier now.": "Mitglieder je Stufe jetzt.",
    "Members in each tier at the end of {month}.": "Mitglieder je Stufe am Ende von {month}.",
    "Members per tier": "Mitglieder je Stufe",
    "How many members are in each tier.": "Wie viele Mitglieder in jeder Stufe sind.",
    "Earns": "Gutschriften",
    "Redemptions": "Einlösungen",
    "Reversals": "Stornos",
    "Refused: {slug}": "Abgelehnt: {slug}",
    "Claims per day": "Vorgänge pro Tag",
    "Claims the journal accepted in the last 30 days, by kind, stacked with the partner API's "
    "refusals by problem.":
        "Vom Journal angenommene Vorgänge der letzten 30 Tage nach Art, gestapelt mit den "
        "Ablehnungen der Partner-API nach Problem.",
    "Accepted claims by kind and refused ones by problem, per day.":
        "Angenommene Vorgänge nach Art und abgelehnte nach Problem, je Tag.",
    "Claims": "Vorgänge",
    "Open the dashboard": "Übersicht öffnen",
    "Charts of liability, issuance and redemption, breakage, flows between partners, members "
    "and claims.":
        "Diagramme zu Verbindlichkeit, Ausgabe und Einlösung, Verfall, Strömen zwischen Partnern, "
        "Mitgliedern und Vorgängen.",
    BAD_MONTH: "Ein Monat wird JJJJ-MM geschrieben, von 2000-01 bis zum laufenden Monat.",
    BAD_RANGE: "Der erste Monat darf nicht nach dem letzten liegen, und ein Zeitraum umfasst "
               "höchstens 60 Monate.",
})
