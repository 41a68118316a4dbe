"""Helpers the web tests share (tests/test_web_*.py and the browser tests): members and
operators with a password, signing in through the pages, and the form token of a page."""
from __future__ import annotations

import re

from coalition import clock, credentials, operators
from coalition.database import db

PASSWORD = "correct horse battery"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _TOKEN.search(html)
    assert found, "the page has no form token"
    return found.group(1)


def give_password(app, kind: str, name: str, password: str = PASSWORD) -> None:
    """The password set as a member or operator sets it: a one-time code redeemed."""
    with app.app_context():
        who = credentials.principal(kind, name)
        code = credentials.issue_code(db.session, who, now=clock.now(), actor="test")
        credentials.set_password(db.session, who, code, password, now=clock.now())
        db.session.commit()


def add_operator(app, name: str, role: str, password: str = PASSWORD) -> None:
    with app.app_context():
        code = operators.add(db.session, name, role, now=clock.now(), actor="test")
        credentials.set_password(db.session, credentials.principal("operator", name), code,
                                 password, now=clock.now())
        db.session.commit()


def sign_in(client, face: str, name: str, password: str = PASSWORD):
    """POST the sign-in form of /portal or /console with its token; the response."""
    page = client.get(f"/{face}/sign-in")
    field = "member_id" if face == "portal" else "name"
    return client.post(f"/{face}/sign-in", data={
        "csrf_token": csrf_of(page.get_data(as_text=True)), field: name, "password": password})


def post_form(client, page_path: str, action: str, data: dict | None = None, **kwargs):
    """POST to `action` with the token of the form on `page_path`."""
    token = csrf_of(client.get(page_path).get_data(as_text=True))
    return client.post(action, data={"csrf_token": token, **(data or {})}, **kwargs)
