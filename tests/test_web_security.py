"""The web faces' security: the Content-Security-Policy and other headers, the session cookie's
flags, CSRF tokens on every form (and none needed by the partner API), sessions that the
partner API refuses and partner tokens that open no page, sign-in lock-out."""
from __future__ import annotations

import re

import pytest

from coalition import create_app
from tests.browser.support import PASSWORD, csrf_of, give_password, post_form, sign_in

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")


@pytest.fixture
def member(app, acme):
    assert acme.client.enrol("M-1").status == 201
    give_password(app, "member", "M-1")
    return "M-1"


def session_cookie(response) -> str:
    cookies = [c for c in response.headers.getlist("Set-Cookie") if c.startswith("session=")]
    assert cookies, "no session cookie set"
    return cookies[-1]


def test_every_page_has_the_policy_without_inline_script_or_style(app, member):
    client = app.test_client()
    pages = [client.get("/portal/sign-in"), client.get("/portal/set-password"),
             client.get("/console/sign-in"), client.get("/web/static/web.css")]
    sign_in(client, "portal", member)
    pages += [client.get(p) for p in ("/portal/", "/portal/history", "/portal/offers",
                                      "/portal/consent")]
    for page in pages:
        assert page.status_code == 200, page.request.path
        assert page.headers["Content-Security-Policy"] == CSP
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["Referrer-Policy"] == "same-origin"
        if page.mimetype == "text/html":
            html = page.get_data(as_text=True)
            assert "<script" not in html and " style=" not in html and "<style" not in html
            # every input but the hidden token and checkboxes has a label naming it
            for field in re.findall(r'<(?:input|select)[^>]*\bid="([^"]+)"', html):
                assert f'<label for="{field}">' in html, (page.request.path, field)
    # the partner API keeps its own, stricter policy
    assert client.get("/healthz").headers["Content-Security-Policy"] == \
        "default-src 'none'; frame-ancestors 'none'"


def test_the_session_cookie_is_httponly_lax_and_secure_over_https(app):
    plain = session_cookie(app.test_client().get("/portal/sign-in"))
    assert "HttpOnly" in plain and "SameSite=Lax" in plain and "Secure" not in plain
    tls = session_cookie(app.test_client().get("/portal/sign-in", base_url="https://localhost"))
    assert "Secure" in tls and "HttpOnly" in tls
    app.config["SESSION_COOKIE_SECURE"] = True
    always = session_cookie(app.test_client().get("/portal/sign-in"))
    assert "Secure" in always


def test_the_secret_key_is_kept_in_the_instance_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("COALITION_SECRET_KEY", raising=False)
    from coalition.config import from_environment
    first = from_environment(str(tmp_path))["SECRET_KEY"]
    assert len(first) == 64 and from_environment(str(tmp_path))["SECRET_KEY"] == first
    assert (tmp_path / "secret-key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("COALITION_SECRET_KEY", "from-the-environment")
    assert from_environment(str(tmp_path))["SECRET_KEY"] == "from-the-environment"


def test_a_form_without_its_token_is_refused(app, member):
    client = app.test_client()
    refused = client.post("/portal/sign-in", data={"member_id": member, "password": PASSWORD})
    assert refused.status_code == 400 and refused.mimetype == "text/html"
    assert "Formular" in refused.get_data(as_text=True)
    assert refused.headers["Content-Security-Policy"] == CSP
    wrong = client.post("/portal/sign-in", data={"member_id": member, "password": PASSWORD,
                                                 "csrf_token": "not-the-token"})
    assert wrong.status_code == 400
    assert client.get("/portal/").status_code == 302  # not signed in
    assert sign_in(client, "portal", member).status_code == 302
    # signed in: the coupon, consent, export and sign-out forms need the token too
    for action in ("/portal/consent", "/portal/export", "/portal/sign-out",
                   "/portal/coupons/any/activation"):
        assert client.post(action, data={"marketing": "yes"}).status_code == 400, action
    assert client.get("/portal/").status_code == 200  # still signed in
    # a token of another session does not do either
    other = app.test_client()
    foreign = csrf_of(other.get("/portal/sign-in").get_data(as_text=True))
    assert client.post("/portal/sign-out", data={"csrf_token": foreign}).status_code == 400


def test_the_partner_api_needs_no_form_token(app, acme):
    client = app.test_client()
    client.get("/portal/sign-in")  # a session with a form token, which the API ignores
    assert acme.client.enrol("M-2").status == 201
    assert acme.client.earn("e-1", "M-2", 10).status == 201
    # and sets no cookie: it keeps no session
    answer = client.get("/v1/members/M-2/balance",
                        headers=acme.client.sign("GET", "/v1/members/M-2/balance", b""))
    assert answer.status_code == 200 and not answer.headers.getlist("Set-Cookie")


def test_the_partner_api_refuses_a_web_session(app, member, acme):
    client = app.test_client()
    assert sign_in(client, "portal", member).status_code == 302
    assert client.get("/portal/").status_code == 200
    for path in ("/v1/members/M-1/balance", "/v1/claims"):
        answer = client.get(path)
        assert answer.status_code == 401 and answer.mimetype == "application/problem+json"
    token = csrf_of(client.get("/portal/consent").get_data(as_text=True))
    refused = client.put("/v1/members/M-1/consents", json={"marketing": True},
                         headers={"X-CSRFToken": token})
    assert refused.status_code == 401


def test_a_partner_token_opens_no_page(app, member, acme):
    client = app.test_client()
    for path in ("/portal/", "/portal/history", "/console/"):
        headers = acme.client.sign("GET", path, b"")
        page = client.get(path, headers=headers)
        assert page.status_code == 302 and "/sign-in" in page.headers["Location"], path
    # the same kind of token does open the partner API: the refusal above is the page's
    headers = acme.client.sign("GET", "/v1/members/M-1/balance", b"")
    assert client.get("/v1/members/M-1/balance", headers=headers).status_code == 200


def test_signing_in_starts_a_new_session(app, member):
    client = app.test_client()
    before = csrf_of(client.get("/portal/sign-in").get_data(as_text=True))
    assert sign_in(client, "portal", member).status_code == 302
    after = csrf_of(client.get("/portal/consent").get_data(as_text=True))
    assert after != before


def test_five_wrong_passwords_lock_the_sign_in_out(app, member):
    client = app.test_client()
    for _ in range(4):
        page = sign_in(client, "portal", member, "wrong password!")
        assert "Mitgliedsnummer oder das Passwort ist falsch" in page.get_data(as_text=True)
    locked = sign_in(client, "portal", member, "wrong password!").get_data(as_text=True)
    assert re.search(r"Versuchen Sie es nach \d\d:\d\d Uhr erneut", locked), locked
    # locked: even the right password does not sign in now
    still = sign_in(client, "portal", member)
    assert still.status_code == 200 and "Versuchen Sie es nach" in still.get_data(as_text=True)
    assert client.get("/portal/").status_code == 302
    english = app.test_client()
    english.get("/portal/sign-in?lang=en")
    text = sign_in(english, "portal", member).get_data(as_text=True)
    assert re.search(r"Try again after \d\d:\d\d\.", text), text


def test_after_sign_in_only_pages_of_the_same_face(app, member):
    client = app.test_client()
    page = client.get("/portal/sign-in?next=//evil.example/")
    answer = client.post("/portal/sign-in?next=//evil.example/", data={
        "csrf_token": csrf_of(page.get_data(as_text=True)), "member_id": member,
        "password": PASSWORD})
    assert answer.headers["Location"] == "/portal/"
    client = app.test_client()
    target = client.get("/portal/history?kind=earn")
    assert target.status_code == 302
    follow = target.headers["Location"]
    page = client.get(follow)
    answer = client.post(follow, data={"csrf_token": csrf_of(page.get_data(as_text=True)),
                                       "member_id": member, "password": PASSWORD})
    assert answer.headers["Location"] == "/portal/history?kind=earn"


def test_signing_out_ends_the_session(app, member):
    client = app.test_client()
    sign_in(client, "portal", member)
    assert post_form(client, "/portal/", "/portal/sign-out").status_code == 302
    assert client.get("/portal/").status_code == 302


def test_a_members_session_opens_no_console_page_and_an_erased_member_none(app, member, runner):
    client = app.test_client()
    sign_in(client, "portal", member)
    assert client.get("/console/").status_code == 302
    result = runner.invoke(args=["members", "erase", member, "--yes"])
    if result.exit_code != 0:  # the command's confirmation option may differ
        result = runner.invoke(args=["members", "erase", member], input="y\n")
    assert result.exit_code == 0, result.output
    assert client.get("/portal/").status_code == 302


def test_the_role_decorator_lets_in_only_the_roles_it_names(app):
    from tests.browser.support import add_operator
    from web.auth import OPERATOR, login_required
    from web.console import ADMINS
    app.add_url_rule("/console-test/admin-only", "admin_only",
                     login_required(OPERATOR, roles=ADMINS)(lambda: "changed"))
    add_operator(app, "ann", "admin")
    add_operator(app, "ben", "analyst")
    anonymous = app.test_client().get("/console-test/admin-only")
    assert anonymous.status_code == 302 and "/console/sign-in" in anonymous.headers["Location"]
    for name, status in (("ann", 200), ("ben", 403)):
        client = app.test_client()
        sign_in(client, "console", name)
        assert client.get("/console-test/admin-only").status_code == status, name


def test_the_language_switch_keeps_the_page_and_its_query(app, member):
    client = app.test_client()
    sign_in(client, "portal", member)
    page = client.get("/portal/history?kind=earn&page=1").get_data(as_text=True)
    assert 'href="/portal/history?kind=earn&amp;page=1&amp;lang=en"' in page
    english = client.get("/portal/history?kind=earn&lang=en").get_data(as_text=True)
    assert 'lang="en"' in english and 'href="/portal/history?kind=earn&amp;lang=de"' in english


def test_a_session_unused_for_half_an_hour_is_over(app, member, monkeypatch):
    from datetime import timedelta
    from coalition import clock
    client = app.test_client()
    sign_in(client, "portal", member)
    assert client.get("/portal/").status_code == 200
    start = clock.now()
    monkeypatch.setattr(clock, "now", lambda: start + timedelta(minutes=29))
    assert client.get("/portal/").status_code == 200  # and seen again now
    monkeypatch.setattr(clock, "now", lambda: start + timedelta(minutes=58))
    assert client.get("/portal/").status_code == 200
    monkeypatch.setattr(clock, "now", lambda: start + timedelta(minutes=89))
    assert client.get("/portal/").status_code == 302


def test_pages_are_not_cached_the_stylesheet_may_be(app):
    client = app.test_client()
    assert client.get("/portal/sign-in").headers["Cache-Control"] == "no-store"
    assert "no-store" not in client.get("/web/static/web.css").headers.get("Cache-Control", "")
