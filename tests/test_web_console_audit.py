"""The console's audit log: newest first, filtered by actor, action (with the actions below
it), subject and a range of local days, paged; every operator reads it."""
from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from coalition import audit, audit_search
from coalition.database import db
from tests.browser.support import add_operator, sign_in


def at(day: str, hour: int = 12) -> datetime:
    return datetime.fromisoformat(f"{day}T{hour:02d}:00:00").replace(tzinfo=timezone.utc)


@pytest.fixture
def logged(app):
    """Events of three actors over three days (written directly: the log is what is read)."""
    with app.app_context():
        for n, (actor, action, subject, day) in enumerate([
                ("operator:ada", "partner.key.add", "partner:acme", "2026-05-01"),
                ("operator:ada", "partner.key.revoke", "partner:acme", "2026-05-02"),
                ("operator:bob", "partner.suspend", "partner:bolt", "2026-05-02"),
                ("system", "period.close", "period:2026-04", "2026-05-03"),
                ("operator:ada", "partner.keyring", "partner:acme", "2026-05-03")]):
            audit.record(db.session, actor=actor, action=action, subject=subject,
                         before={"grund": "Prüfung <1>"} if n == 4 else None, after={"n": n},
                         now=at(day))
        db.session.commit()


@pytest.fixture
def analyst(app, logged):
    add_operator(app, "ann", "analyst")
    client = app.test_client()
    assert sign_in(client, "console", "ann").status_code == 302
    return client


def shown(client, query: str = "") -> list[str]:
    """The actions on the page, top to bottom, of the events written by `logged`."""
    answer = client.get(f"/console/audit{query}")
    assert answer.status_code == 200, answer.status_code
    rows = re.findall(r'<tr id="event-\d+">(.*?)</tr>', answer.get_data(as_text=True), re.S)
    actions = [re.search(r'action=[^"]*">([^<]+)<', row).group(1) for row in rows]
    return [a for a in actions if a not in ("operator.add", "credential.code-issued",
                                            "credential.password-set")]


def test_newest_first_and_each_filter(analyst):
    assert shown(analyst)[:5] == ["partner.keyring", "period.close", "partner.suspend",
                                  "partner.key.revoke", "partner.key.add"]
    assert shown(analyst, "?actor=operator:ada") == ["partner.keyring", "partner.key.revoke",
                                                      "partner.key.add"]
    # an action finds the actions below it, not one that merely starts alike
    assert shown(analyst, "?action=partner.key") == ["partner.key.revoke", "partner.key.add"]
    assert shown(analyst, "?subject=partner:bolt") == ["partner.suspend"]
    # local days, both ends included (12:00 UTC is the same day in Europe/Berlin)
    assert shown(analyst, "?from=2026-05-02&to=2026-05-02") == ["partner.suspend",
                                                                 "partner.key.revoke"]
    assert shown(analyst, "?from=2026-05-03") [:2] == ["partner.keyring", "period.close"]
    assert shown(analyst, "?actor=operator:ada&from=2026-05-02&to=2026-05-03") == [
        "partner.keyring", "partner.key.revoke"]
    # values as written, umlauts included, HTML escaped
    assert "{&#34;grund&#34;: &#34;Prüfung &lt;1&gt;&#34;}" in analyst.get(
        "/console/audit?action=partner.keyring").get_data(as_text=True)
    page = analyst.get("/console/audit?subject=nobody").get_data(as_text=True)
    assert "Keine Ereignisse gefunden." in page and 'data-count="0"' in page


def test_a_malformed_day_is_said_on_the_form(analyst):
    answer = analyst.get("/console/audit?from=2026-13-45")
    assert answer.status_code == 422
    assert "Ein Tag wird als JJJJ-MM-TT geschrieben." in answer.get_data(as_text=True)


def test_pages_of_the_log(app, logged):
    with app.app_context():
        for n in range(120):
            audit.record(db.session, actor="operator:ada", action="member.lock",
                         subject=f"member-id:{n}", before=None, after=None, now=at("2026-06-01"))
        db.session.commit()
        first = audit_search.search(db.session, action="member.lock", per_page=50)
        assert (first.total, first.pages, first.page) == (120, 3, 1)
        assert first.events[0]["subject"] == "member-id:119"
        last = audit_search.search(db.session, action="member.lock", page=99, per_page=50)
        assert last.page == 3 and [e["subject"] for e in last.events][-1] == "member-id:0"
        assert len(last.events) == 20
    add_operator(app, "ann", "analyst")
    client = app.test_client()
    sign_in(client, "console", "ann")
    page = client.get("/console/audit?action=member.lock&page=2").get_data(as_text=True)
    assert "Seite 2 von 3" in page
    assert "member-id:69<" in page and "member-id:70<" not in page and "member-id:20<" in page
    assert 'href="/console/audit?page=3&amp;action=member.lock"' in page


def test_only_operators_read_it(app, logged, acme):
    assert "/console/sign-in" in app.test_client().get("/console/audit").headers["Location"]
