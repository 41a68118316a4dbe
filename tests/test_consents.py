"""PUT /v1/members/{member_id}/consents: a member's marketing consent, kept with its history."""
from __future__ import annotations

import json

from sqlalchemy import func, select

from coalition import consents
from coalition.database import db
from coalition.members import find
from coalition.models import MemberConsent


def test_a_consent_is_recorded_with_who_and_when_and_answered(app, acme):
    acme.client.enrol("M1")
    r = acme.client.set_consent("M1", True, channel="email")
    assert r.status == 200
    body = r.json()
    assert (body["member_id"], body["marketing"], body["channel"], body["partner_id"]) == \
        ("M1", True, "email", "acme")
    assert body["recorded_at"].endswith("Z")
    general = acme.client.set_consent("M1", False).json()
    assert general["channel"] is None and general["marketing"] is False


def test_the_consent_in_force_is_the_latest_per_channel_and_the_history_keeps_all(
        app, acme, bolt, runner):
    acme.client.enrol("M1")
    acme.client.enrol("M2")
    assert acme.client.set_consent("M1", True, channel="email").status == 200
    assert bolt.client.set_consent("M1", True).status == 200
    assert bolt.client.set_consent("M1", False, channel="email").status == 200  # withdrawn
    assert acme.client.set_consent("M2", True, channel="sms").status == 200
    with app.app_context():
        member = find(db.session, "M1")
        in_force = consents.in_force(db.session, member)
        history = consents.history(db.session, member)
    assert [(c["channel"], c["marketing"], c["partner_id"]) for c in in_force] == [
        (None, True, "bolt"), ("email", False, "bolt")]
    assert [(c["channel"], c["marketing"], c["partner_id"]) for c in history] == [
        ("email", True, "acme"), (None, True, "bolt"), ("email", False, "bolt")]
    shown = json.loads(runner.invoke(args=["members", "show", "M1"]).output)
    assert [(c["channel"], c["marketing"]) for c in shown["consents"]] == [(None, True),
                                                                          ("email", False)]


def test_bad_consents_are_refused_and_record_nothing(app, acme):
    acme.client.enrol("M1")
    for body in ({"marketing": "true"}, {"marketing": 1}, {}, {"marketing": True, "x": 1},
                 {"marketing": True, "channel": "e mail"}, {"marketing": None}):
        r = acme.client.request("PUT", "/v1/members/M1/consents", body)
        assert r.status == 422 and r.json()["type"].endswith("/validation-error"), body
    r = acme.client.set_consent("NOBODY", True)
    assert r.status == 404 and r.json()["type"].endswith("/not-found")
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(MemberConsent)) == 0
