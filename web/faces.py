"""What the portal's and the console's blueprints share: hooks, templates' helpers, error pages,
and the static files (one stylesheet) under /web/static."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from coalition.database import db
from coalition.problems import Problem

from . import auth, i18n, security

HERE = Path(__file__).resolve().parent

assets = Blueprint("web", __name__, url_prefix="/web", static_folder=str(HERE / "static"),
                   static_url_path="/static")


def face(name: str, url_prefix: str, title: str) -> Blueprint:
    """A blueprint of pages with every page's hooks: language, CSRF, headers, error pages."""
    bp = Blueprint(name, __name__, url_prefix=url_prefix, template_folder=str(HERE / "templates"))
    bp.before_request(security.before_page)
    bp.after_request(security.after_page)

    @bp.context_processor
    def helpers() -> dict:
        return {**i18n.jinja_helpers(), "face": name, "face_title": title,
                "who": auth.current()}

    @bp.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        messages = {400: "The form had expired or was not sent from this site. Please try again.",
                    403: "This page is not open to your role.", 404: "Page not found",
                    429: "Too many requests. Please wait a moment."}
        return render_template("web/error.html", title=i18n.gettext("Something went wrong"),
                               message=i18n.gettext(messages.get(exc.code, "Something went wrong")),
                               ), exc.code or 500

    @bp.errorhandler(Problem)
    def problem(exc: Problem):
        return render_template("web/error.html", title=i18n.gettext("Something went wrong"),
                               message=i18n.gettext(exc.detail)), exc.status

    return bp


assets.after_request(security.after_page)


def sign_in_page(kind: str, name_field: str, name_label: str, title: str):
    error = None
    name = request.form.get(name_field, "").strip()
    if request.method == "POST":
        password = request.form.get("password", "")
        if not name or not password:
            error = i18n.gettext("Please fill in every field.")
        else:
            error = auth.sign_in(kind, name, password)
            if error is None:
                return redirect(auth.safe_next(request.args.get("next"), kind))
    return render_template("web/sign_in.html", title=i18n.gettext(title), error=error,
                           name_field=name_field, name_label=i18n.gettext(name_label),
                           name_value=name, set_password=url_for(".set_password")
                           ), 200


def set_password_page(kind: str, name_field: str, name_label: str):
    error = None
    name = request.form.get(name_field, request.args.get(name_field, "")).strip()
    if request.method == "POST":
        code = request.form.get("code", "").strip()
        password = request.form.get("password", "")
        if not name or not code or not password:
            error = i18n.gettext("Please fill in every field.")
        elif password != request.form.get("password_again", ""):
            error = i18n.gettext("The two passwords differ.")
        else:
            try:
                auth.set_password(kind, name, code, password)
            except Problem as problem:
                db.session.rollback()
                error = i18n.gettext(problem.detail)
            else:
                flash(i18n.gettext("Your password is set. Please sign in."), "ok")
                return redirect(url_for(".sign_in"))
    return render_template("web/set_password.html", title=i18n.gettext("Set your password"),
                           error=error, name_field=name_field,
                           name_label=i18n.gettext(name_label), name_value=name
                           ), 422 if error else 200
