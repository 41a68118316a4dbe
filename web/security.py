"""What every page shares: session cookies, the CSRF check on forms, the response headers.

The partner API is left alone: it authenticates every request by its signed bearer token and
never reads the session, and CSRF is checked only here (WTF_CSRF_CHECK_DEFAULT is off), so a
partner's POST never needs a form token.
"""
from __future__ import annotations

from flask import Flask, Response, request
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import CSRFProtect

from . import i18n

csrf = CSRFProtect()

# No inline script or style anywhere: one static stylesheet, no script at all.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, Secure whenever the request came over HTTPS (behind a
    proxy: as TRUSTED_PROXIES lets werkzeug see it) or SESSION_COOKIE_SECURE says always."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def init_app(app: Flask) -> None:
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False  # pages only: before_page
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid as long as the session is
    app.session_interface = SessionInterface()
    csrf.init_app(app)


def before_page() -> None:
    """Every page request: the language asked for, then the form token of a POST."""
    i18n.choose_from_request()
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        csrf.protect()


def after_page(response: Response) -> Response:
    for name, value in PAGE_HEADERS.items():
        response.headers[name] = value
    if request.endpoint != "web.static":  # pages are personal; the stylesheet is not
        response.headers["Cache-Control"] = "no-store"
    response.vary.add("Cookie")
    return response
