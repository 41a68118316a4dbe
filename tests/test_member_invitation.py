"""POST /v1/members/{member_id}/invitation: a partner hands a member the one-time code that sets
a member portal password (coalition/credentials.py)."""
from __future__ import annotations

from sqlalchemy import select

from coalition import clock, credentials
from coalition.database import db
from coalition.models import AuditEvent
from coalition.problems import Problem


def test_a_partners_code_sets_the_members_portal_password_once(app, acme, bolt):
    assert acme.client.enrol("M-1").status == 201
    first = acme.client.invite("M-1")
    assert first.status == 201, first.body
    answer = first.json()
    assert answer["member_id"] == "M-1" and len(answer["code"]) == 14
    newer = bolt.client.invite("M-1").json()["code"]  # cancels the first
    who = credentials.principal(credentials.MEMBER, "M-1")
    with app.app_context():
        for code, works in ((answer["code"], False), (newer, True), (newer, False)):
            try:
                credentials.set_password(db.session, who, code, "a long passphrase",
                                         now=clock.now())
                db.session.commit()
                assert works, code
            except Problem as problem:
                db.session.rollback()
                assert not works and problem.slug == "validation-error"
        assert credentials.sign_in(db.session, who, "a long passphrase", now=clock.now()).ok
        actors = db.session.scalars(select(AuditEvent.actor).where(
            AuditEvent.action == "credential.code-issued").order_by(AuditEvent.id)).all()
        db.session.rollback()
    assert actors == ["partner:acme", "partner:bolt"]


def test_no_code_for_an_unknown_member(acme):
    answer = acme.client.invite("nobody")
    assert answer.status == 404 and answer.json()["type"].endswith("/not-found")
