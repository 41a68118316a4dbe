"""The pages' two languages, German first: the chosen language, its strings, and numbers, money,
dates and times formatted for it with Babel.

The strings are a plain catalog (English text -> German text) rather than compiled gettext
catalogs: there is no build step to forget, and a missing German string shows in English rather
than failing. The language comes from `?lang=` (kept in the session from then on), else the
session, else German.
"""
from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from babel import dates, numbers
from flask import current_app, request, session

from coalition.clock import as_utc, parse_iso

LANGUAGES = ("de", "en")  # the first is the default
LOCALES = {"de": "de_DE", "en": "en_GB"}
# English text -> German. Placeholders in braces, filled by `_` after translation.
GERMAN = {
    # frame
    "Coalition points": "Koalitionspunkte",
    "Member portal": "Mitgliederportal",
    "Operator console": "Betreiberkonsole",
    "Skip to content": "Zum Inhalt springen",
    "Language": "Sprache",
    "Deutsch": "Deutsch",
    "English": "English",
    "Main navigation": "Hauptnavigation",
    "Signed in as {name}": "Angemeldet als {name}",
    "Sign out": "Abmelden",
    "Back": "Zurück",
    # sign-in and passwords
    "Sign in": "Anmelden",
    "Member sign-in": "Anmeldung für Mitglieder",
    "Operator sign-in": "Anmeldung für Betreiber",
    "Member number": "Mitgliedsnummer",
    "Operator name": "Betreibername",
    "Password": "Passwort",
    "Repeat password": "Passwort wiederholen",
    "One-time code": "Einmalcode",
    "Set password": "Passwort festlegen",
    "Set your password": "Passwort festlegen",
    "You received a one-time code from a partner or the coalition: use it here to choose your "
    "password.": "Sie haben von einem Partner oder der Koalition einen Einmalcode erhalten: "
                 "Damit legen Sie hier Ihr Passwort fest.",
    "First time here, or forgot your password?": "Zum ersten Mal hier oder Passwort vergessen?",
    "The member number or the password is wrong.":
        "Die Mitgliedsnummer oder das Passwort ist falsch.",
    "The name or the password is wrong.": "Der Name oder das Passwort ist falsch.",
    "Too many failed attempts. Try again after {time}.":
        "Zu viele Fehlversuche. Versuchen Sie es nach {time} Uhr erneut.",
    "The two passwords differ.": "Die beiden Passwörter stimmen nicht überein.",
    "Please fill in every field.": "Bitte füllen Sie alle Felder aus.",
    # the domain's answers a page shows as they are (coalition/credentials.py)
    "The code is wrong, was used already, or has expired; ask an operator for a new one.":
        "Der Code ist falsch, wurde schon verwendet oder ist abgelaufen; bitten Sie um einen neuen.",
    "A password is 10 to 256 characters long.": "Ein Passwort ist 10 bis 256 Zeichen lang.",
    "Your password is set. Please sign in.": "Ihr Passwort ist festgelegt. Bitte melden Sie sich an.",
    "You are signed out.": "Sie sind abgemeldet.",
    "Please sign in.": "Bitte melden Sie sich an.",
    "This page is not open to your role.": "Diese Seite ist für Ihre Rolle nicht freigegeben.",
    # errors
    "Something went wrong": "Etwas ist schiefgegangen",
    "The form had expired or was not sent from this site. Please try again.":
        "Das Formular war abgelaufen oder kam nicht von dieser Seite. Bitte versuchen Sie es erneut.",
    "Page not found": "Seite nicht gefunden",
    "Not allowed": "Nicht erlaubt",
    "Too many requests. Please wait a moment.": "Zu viele Anfragen. Bitte warten Sie einen Moment.",
    # portal navigation
    "Balance": "Kontostand",
    "History": "Verlauf",
    "Offers": "Angebote",
    "Consent and data": "Einwilligung und Daten",
    # balance
    "Your points": "Ihre Punkte",
    "Available": "Verfügbar",
    "Pending": "Vorgemerkt",
    "Held": "Reserviert",
    "Owed": "Geschuldet",
    "Pending points become available once the partner's waiting period is over.":
        "Vorgemerkte Punkte werden verfügbar, sobald die Wartezeit des Partners vorbei ist.",
    "Held points are reserved for a redemption a partner has started.":
        "Reservierte Punkte sind für eine begonnene Einlösung bei einem Partner zurückgelegt.",
    "Owed points are paid back first from points you earn.":
        "Geschuldete Punkte werden zuerst mit neu gesammelten Punkten ausgeglichen.",
    "Expiring points": "Verfallende Punkte",
    "No points expire.": "Es verfallen keine Punkte.",
    "Points": "Punkte",
    "Last day": "Letzter Tag",
    "Expiring within {days} days: {points}": "In den nächsten {days} Tagen verfallen: {points}",
    "Status": "Status",
    "Your tier: {tier}": "Ihre Stufe: {tier}",
    "{points} counted in the last 12 months": "{points} in den letzten 12 Monaten gezählt",
    "{missing} more for {tier}": "Noch {missing} bis {tier}",
    "Progress to {tier}": "Fortschritt bis {tier}",
    "You have reached the highest tier.": "Sie haben die höchste Stufe erreicht.",
    "Your tier lasts at least until {day}.": "Ihre Stufe gilt mindestens bis {day}.",
    "Your tier does not expire.": "Ihre Stufe läuft nicht ab.",
    "The programme has no tiers.": "Das Programm hat keine Stufen.",
    # history
    "Partner": "Partner",
    "Kind": "Art",
    "All partners": "Alle Partner",
    "All kinds": "Alle Arten",
    "Filter": "Filtern",
    "Date": "Datum",
    "Base points": "Basispunkte",
    "Bonus points": "Bonuspunkte",
    "Claim": "Vorgang",
    "Note": "Hinweis",
    "earn": "Gutschrift",
    "burn": "Einlösung",
    "reversal": "Storno",
    "expiry": "Verfall",
    "pending": "vorgemerkt",
    "Reverses {claim}": "Storniert {claim}",
    "Show the claim and its reversals": "Vorgang mit seinen Stornos zeigen",
    "Showing claim {claim} and its reversals.": "Vorgang {claim} mit seinen Stornos.",
    "Show all": "Alle zeigen",
    "No entries.": "Keine Einträge.",
    "Page {page} of {pages}": "Seite {page} von {pages}",
    "Previous page": "Vorherige Seite",
    "Next page": "Nächste Seite",
    "History pages": "Seiten des Verlaufs",
    "the coalition": "die Koalition",
    # offers
    "Campaigns": "Aktionen",
    "Coupons": "Coupons",
    "No campaigns are running for you now.": "Zurzeit laufen keine Aktionen für Sie.",
    "No coupons are running now.": "Zurzeit gibt es keine Coupons.",
    "Activate": "Aktivieren",
    "Activated": "Aktiviert",
    "Used": "Eingelöst",
    "Valid {start} to {end}": "Gültig vom {start} bis {end}",
    "{factor} times the points": "{factor}-fache Punkte",
    "{points} extra points": "{points} Extrapunkte",
    "at {partners}": "bei {partners}",
    "at every partner": "bei allen Partnern",
    "Coupon {name} is activated.": "Coupon {name} ist aktiviert.",
    "Coupon {name} was activated already.": "Coupon {name} war schon aktiviert.",
    "This coupon has ended.": "Dieser Coupon ist abgelaufen.",
    # consent and data
    "Marketing consent": "Einwilligung in Werbung",
    "You agree to receive offers from the coalition and its partners.":
        "Sie sind einverstanden, Angebote der Koalition und ihrer Partner zu erhalten.",
    "You do not receive offers from the coalition and its partners.":
        "Sie erhalten keine Angebote der Koalition und ihrer Partner.",
    "I agree to receive marketing offers": "Ich möchte Werbeangebote erhalten",
    "Save": "Speichern",
    "Your consent is saved.": "Ihre Einwilligung ist gespeichert.",
    "Consent history": "Verlauf der Einwilligung",
    "Recorded": "Erfasst",
    "Channel": "Kanal",
    "Consent": "Einwilligung",
    "Recorded by": "Erfasst durch",
    "every channel": "alle Kanäle",
    "given": "erteilt",
    "withdrawn": "widerrufen",
    "No consent has been recorded.": "Es wurde keine Einwilligung erfasst.",
    "Your data": "Ihre Daten",
    "Download everything the coalition holds about you as a JSON file.":
        "Laden Sie alles, was die Koalition über Sie gespeichert hat, als JSON-Datei herunter.",
    "Download my data": "Meine Daten herunterladen",
    # console
    "Console": "Konsole",
    "Welcome, {name}.": "Willkommen, {name}.",
    "Role: {role}": "Rolle: {role}",
    "admin": "Administration",
    "analyst": "Analyse",
    "The console's pages follow.": "Die Seiten der Konsole folgen.",
}
CATALOGS = {"de": GERMAN, "en": {}}


def extend(german: dict[str, str]) -> None:
    """Add a page module's own strings (English -> German) to the catalog, at import: each
    console area keeps its strings beside its pages. A string given twice must agree."""
    clashes = sorted(k for k, v in german.items() if GERMAN.get(k, v) != v)
    if clashes:
        raise ValueError(f"German strings given twice, differently: {clashes}")
    GERMAN.update(german)


def language() -> str:
    chosen = session.get("lang")
    return chosen if chosen in LANGUAGES else LANGUAGES[0]


def choose_from_request() -> None:
    """`?lang=de|en` on any page switches the language for the rest of the session."""
    asked = request.args.get("lang")
    if asked in LANGUAGES and session.get("lang") != asked:
        session["lang"] = asked


def locale() -> str:
    return LOCALES[language()]


def gettext(text: str, **values) -> str:
    translated = CATALOGS[language()].get(text, text)
    return translated.format(**values) if values else translated


def number(value: int | Decimal) -> str:
    return numbers.format_decimal(value, locale=locale())


def points(value: int) -> str:
    """1.234 Punkte / 1,234 points (1 Punkt / 1 point)."""
    word = {"de": ("Punkt", "Punkte"), "en": ("point", "points")}[language()]
    return f"{number(value)}\u00a0{word[0] if value == 1 else word[1]}"


def money(cents: int, currency: str = "EUR") -> str:
    """Integer cents as an amount: 1.234,56 € / €1,234.56."""
    return numbers.format_currency(Decimal(cents) / 100, currency, locale=locale())


def percent(value: Decimal | float) -> str:
    return numbers.format_percent(value, locale=locale())


def day(value: date | datetime | str | None, form: str = "medium") -> str:
    if value is None:
        return ""
    if isinstance(value, (datetime, str)):
        value = _local(value).date()
    return dates.format_date(value, format=form, locale=locale())


def moment(value: datetime | str | None) -> str:
    """A date and time in the coalition's time zone."""
    if value is None:
        return ""
    return dates.format_datetime(_local(value), format="medium", locale=locale())


def clock_time(value: datetime) -> str:
    """HH:MM in the coalition's time zone."""
    return dates.format_time(_local(value), format="HH:mm", locale=locale())


def _local(value: datetime) -> datetime:
    if isinstance(value, str):  # RFC 3339 as the domain's views write it (iso_utc)
        value = parse_iso(value.replace("Z", "+00:00"))
    return as_utc(value).astimezone(ZoneInfo(current_app.config["COALITION_TIMEZONE"]))


def switch_to(code: str) -> str:
    """This page in the other language: the same path and query, `lang` replaced."""
    query = [(k, v) for k, v in request.args.items(multi=True) if k != "lang"]
    return request.path + "?" + urlencode([*query, ("lang", code)])


def jinja_helpers() -> dict:
    return {"_": gettext, "switch_to": switch_to, "number": number, "points": points, "money": money,
            "percent": percent, "day": day, "moment": moment, "language": language,
            "LANGUAGES": LANGUAGES}
