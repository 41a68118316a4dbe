"""The operator console (/console): sign-in for operators (admin, analyst) and the pages that
follow it. Operators are made with `flask operators add NAME --role admin|analyst`, which hands
out the one-time code that sets the password here."""
from __future__ import annotations

from collections.abc import Iterable

from flask import current_app, flash, redirect, render_template, request, url_for

from . import auth, faces, i18n
from .auth import OPERATOR, login_required

bp = faces.face("console", "/console", "Operator console")
READERS = ("admin", "analyst")  # every operator can read
ADMINS = ("admin",)  # what changes anything
# The console's tabs: (place, endpoint, label). Each area's module (web/console_*.py) adds its
# routes to `bp` and its tab here when web/__init__.py imports it.
NAV: list[tuple[int, str, str]] = [(0, "console.home", "Console")]
# Endpoints a tab is current for besides its own and its module's pages (tab(area=...)).
AREAS: dict[str, frozenset[str]] = {}


def tab(place: int, endpoint: str, label: str, *, area: Iterable[str] = ()) -> None:
    """A tab for the console's navigation, ordered by `place` (home is 0): 10 dashboard,
    20 partners, 30 settlement, 40 members, 50 campaigns and coupons, 60 audit log.

    The tab is current on every page of its area: the pages of the module that serves its
    endpoint (a partner, a month, a statement, a member), and the endpoints in `area`, for a
    module that serves pages of another tab's area."""
    NAV.append((place, f"console.{endpoint}", label))
    NAV.sort()
    AREAS[f"console.{endpoint}"] = frozenset(f"console.{name}" for name in area)


def current_tab(endpoint: str | None) -> str | None:
    """The tab whose area the page `endpoint` lies in. This module's own pages (the home page,
    sign-in) belong to no area but their own endpoint's."""
    if endpoint is None:
        return None
    names = [name for _, name, _ in NAV]
    if endpoint in names:
        return endpoint
    named = [name for name in names if endpoint in AREAS.get(name, ())]
    if named:
        return named[0]
    views = current_app.view_functions
    module = getattr(views.get(endpoint), "__module__", None)
    if module is None or module == __name__:
        return None
    return next((name for name in names
                 if getattr(views.get(name), "__module__", None) == module), None)


@bp.context_processor
def tabs() -> dict:
    return {"console_nav": [(endpoint, label) for _, endpoint, label in NAV],
            "console_tab": current_tab(request.endpoint)}


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
