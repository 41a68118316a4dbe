"""The operator console (/console): sign-in for operators (admin, analyst) and the pages that
follow it. Operators are made with `flask operators add NAME --role admin|analyst`, which hands
out the one-time code that sets the password here."""
from __future__ import annotations

from flask import flash, redirect, render_template, url_for

from . import auth, faces, i18n
from .auth import OPERATOR, login_required

bp = faces.face("console", "/console", "Operator console")
READERS = ("admin", "analyst")  # every operator can read
ADMINS = ("admin",)  # what changes anything
# The console's tabs: (place, endpoint, label). Each area's module (web/console_*.py) adds its
# routes to `bp` and its tab here when web/__init__.py imports it.
NAV: list[tuple[int, str, str]] = [(0, "console.home", "Console")]


def tab(place: int, endpoint: str, label: str) -> None:
    """A tab for the console's navigation, ordered by `place` (home is 0): 10 dashboard,
    20 partners, 30 settlement, 40 members, 50 campaigns and coupons, 60 audit log."""
    NAV.append((place, f"console.{endpoint}", label))
    NAV.sort()


@bp.context_processor
def tabs() -> dict:
    return {"console_nav": [(endpoint, label) for _, endpoint, label in NAV]}


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    return faces.sign_in_page(OPERATOR, "name", "Operator name", "Operator sign-in")


@bp.route("/set-password", methods=["GET", "POST"])
def set_password():
    return faces.set_password_page(OPERATOR, "name", "Operator name")


@bp.route("/sign-out", methods=["POST"])
def sign_out():
    auth.sign_out()
    flash(i18n.gettext("You are signed out."), "ok")
    return redirect(url_for(".sign_in"))


@bp.route("/")
@login_required(OPERATOR, roles=READERS)
def home():
    return render_template("web/console/home.html", title=i18n.gettext("Console"))
