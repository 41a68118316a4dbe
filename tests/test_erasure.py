"""`flask members erase ID`: the card number and personal data go, the books and every closed
statement stay valid, and the card never matches the erased member again."""
from __future__ import annotations

import json
import re
import threading
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import flask_migrate
import pytest
from sqlalchemy import func, or_, select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session

from coalition import audit, expiry, ledger, member_erasure
from coalition.database import db
from coalition.hashing import canonical, sha256_hex
from coalition.members import enrol, find
from coalition.models import AuditEvent, ClosedPeriod, Entry, Lot, Member, MemberConsent
from coalition.periods import add_months, month_of
from coalition.vocabulary import EntryKind
from partners import service as partner_service
from partners.harvest import card_hash
from partners.models import MemberLookup
from settlement import service
from settlement.lines import MonthLines
from settlement.models import CoalitionReport, Statement
from tests.conftest import await_lock_wait, postgres_only
from tests.test_expiry import TZ, next_month_start

UTC = timezone.utc
CARD = "CARD-77"


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output)


@pytest.fixture
def alice(monkeypatch):
    monkeypatch.setenv("COALITION_OPERATOR", "alice")


def holds_card(value: str | None) -> bool:
    return value is not None and re.search(rf"(?<![A-Za-z0-9]){CARD}(?![A-Za-z0-9])", value) is not None


def test_erasure_removes_the_card_and_personal_data_and_verify_stays_clean(app, runner, alice,
                                                                           acme):
    assert acme.client.balance(CARD).status == 404  # a lookup of the card before enrolment
    assert cli(runner, "members", "add", CARD)[0] == 0  # member.add names the card
    assert acme.client.earn("e1", CARD, 300).status == 201
    assert acme.client.balance(CARD).status == 200
    assert acme.client.set_pin(CARD, "1234").status in (200, 201, 204)
    assert acme.client.set_consent(CARD, True, channel="email").status == 200
    assert cli(runner, "members", "lock", CARD, "--reason", f"{CARD} reported stolen")[0] == 0
    assert cli(runner, "members", "unlock", CARD, "--reason", "found again")[0] == 0
    with app.app_context():
        member = find(db.session, CARD)
        pk = member.id
        assert db.session.scalar(select(func.count()).select_from(MemberLookup)) == 2

    code, done = cli(runner, "members", "erase", CARD)
    assert code == 0, done
    assert done["member"] == pk and done["points"] == 300 and done["points_owed"] == 0
    # member.add (subject) and member.lock (its reason): the unlock's reason names no card.
    assert (done["redacted_events"], done["consents_deleted"], done["lookups_deleted"]) == (2, 1, 2)
    assert CARD not in json.dumps(done)

    with app.app_context():
        s = db.session
        member = s.get(Member, pk)
        assert member.external_id is None and member.erased_at is not None
        assert (member.pin_hash, member.pin_failures, member.pin_locked_at) == (None, 0, None)
        assert member.balance == 300  # the points stay on the books, as a liability
        assert s.scalar(select(func.count()).select_from(MemberConsent)) == 0
        assert s.scalar(select(func.count()).select_from(MemberLookup).where(or_(
            MemberLookup.member_id == pk, MemberLookup.card_hash == card_hash(CARD)))) == 0
        events = s.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
        assert not [e.id for e in events
                    if holds_card(e.subject) or holds_card(e.before) or holds_card(e.after)]
        add, = [e for e in events if e.action == "member.add"]
        assert add.subject == f"member-id:{pk}"
        lock, = [e for e in events if e.action == "member.lock"]
        assert json.loads(lock.after) == audit.REDACTED
        unlock, = [e for e in events if e.action == "member.unlock"]
        assert json.loads(unlock.after)["reason"] == "found again"
        erase = events[-1]
        assert (erase.action, erase.subject, erase.actor) == ("member.erase", f"member-id:{pk}",
                                                              "alice")
        assert {v["event"]: v["fields"] for v in json.loads(erase.after)["redacted"]} == {
            add.id: ["subject"], lock.id: ["after"]}

    code, report = cli(runner, "ledger", "verify")
    assert code == 0 and report["ok"], report
    # The card matches nothing any more: not the operator's commands, not a partner's.
    for command in (("members", "export", CARD), ("members", "show", CARD),
                    ("members", "erase", CARD), ("members", "lock", CARD, "--reason", "x")):
        code, error = cli(runner, *command)
        assert (code, error["error"]) == (1, "not-found"), command
    assert cli(runner, "audit", "list", "--subject", f"member:{CARD}") == (0, [])
    for r in (acme.client.balance(CARD), acme.client.burn("b1", CARD, 10),
              acme.client.set_consent(CARD, False)):
        assert r.status == 404 and r.json()["type"].endswith("/not-found")
    # The partner's own claim is still listed, without a card number.
    listed = acme.client.request("GET", "/v1/claims").json()["claims"]
    assert [(c["claim_id"], c["member_id"]) for c in listed] == [("e1", None)]


def test_an_erased_card_enrols_again_as_a_new_empty_member(app, runner, alice, acme):
    assert acme.client.enrol(CARD).status == 201
    assert acme.client.earn("e1", CARD, 100).status == 201
    assert cli(runner, "members", "erase", CARD)[0] == 0
    r = acme.client.enrol(CARD)
    assert r.status == 201 and r.json()["member_id"] == CARD  # created, not found again
    assert acme.client.balance(CARD).json()["available"] == 0
    code, shown = cli(runner, "members", "show", CARD)
    assert code == 0 and shown["history"] == []
    with app.app_context():
        old, new = db.session.scalars(select(Member).order_by(Member.id)).all()
        assert (old.external_id, old.balance, new.external_id, new.balance) == (None, 100, CARD, 0)
        assert new.erased_at is None
    # A reversal names the claim, not the card: a partner can still refund the erased member.
    assert acme.client.reverse("e1", "r1", 100).status == 201
    assert cli(runner, "ledger", "verify")[0] == 0


def test_erasing_an_unknown_card_is_not_found_and_changes_nothing(app, runner, alice):
    assert cli(runner, "members", "erase", "NOBODY") == (1, {
        "error": "not-found", "detail": "No such member: the card number is not enrolled, or "
        "its member was erased (an erased card number is not kept)."})
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AuditEvent)) == 0


def months_back(app, n: int) -> str:
    year, month = add_months(*month_of(datetime.now(UTC), app.config["COALITION_TIMEZONE"]), -n)
    return f"{year:04d}-{month:02d}"


def test_a_month_closed_before_the_erasure_re_derives_to_the_same_digests(app, runner, alice):
    """Close a month with the member's claims in it (earns at two partners, a burn funded by
    both, a reversal), erase the member, verify, re-derive: every digest unchanged."""
    tz = app.config["COALITION_TIMEZONE"]
    period = months_back(app, 1)
    year, month = map(int, period.split("-"))
    rules = ledger.Rules(tz, 30, 36)
    with app.app_context():
        s = db.session
        at = datetime(year, month, 10, 12, tzinfo=UTC)
        for p in ("shop", "cafe"):
            partner_service.add_partner(s, p, p.title(), now=at, terms={"claim_fee": "0.01"})
        enrol(s, CARD, now=at)
        enrol(s, "OTHER-1", now=at)
        for n, (p, card, points) in enumerate([("shop", CARD, 500), ("cafe", CARD, 333),
                                                ("shop", "OTHER-1", 70)]):
            ledger.book_earn(s, now=at, rules=rules, partner_id=p, claim_id=f"e{n}",
                             member_id=card, points=points, occurred_at=at)
        later = datetime(year, month, 12, 12, tzinfo=UTC)
        ledger.book_burn(s, now=later, rules=rules, partner_id="cafe", claim_id="b1",
                         member_id=CARD, points=600, occurred_at=later)
        ledger.book_reversal(s, now=later, rules=rules, partner_id="shop", claim_id="e0",
                             reversal_id="r1", points=100, occurred_at=later)
        s.commit()
    code, closed = cli(runner, "settlement", "close", period)
    assert code == 0, closed
    with app.app_context():
        s = db.session
        before = {(r.partner_id, r.digest, r.document) for r in s.scalars(select(Statement))}
        report_before = s.get(CoalitionReport, period).digest
        lines_before = MonthLines(s, "shop", period, tz=tz).page(None, 100)[0]
        assert {line["member_id"] for line in lines_before} == {CARD, "OTHER-1"}
        s.rollback()

    assert cli(runner, "members", "erase", CARD)[0] == 0
    code, report = cli(runner, "ledger", "verify")
    assert code == 0 and report["ok"], report  # closed months re-derived among the checks

    with app.app_context():
        s = db.session
        rows = {r.partner_id: r for r in s.scalars(select(Statement).where(Statement.period == period))}
        assert {(r.partner_id, r.digest, r.document) for r in rows.values()} == before
        assert s.get(CoalitionReport, period).digest == report_before
        closed_row = s.get(ClosedPeriod, period)
        version = service.closed_version([s.get(CoalitionReport, period), *rows.values()])
        docs, report_doc = service.derive(s, period, closed_row.closed_at, sorted(rows), version)
        for p, row in rows.items():
            assert sha256_hex(canonical(docs[p])) == row.digest
            assert canonical(docs[p]).decode() == row.document
        assert sha256_hex(canonical(report_doc)) == report_before
        # The lines still add up to the signed statement; the erased member's have no card.
        lines_after = MonthLines(s, "shop", period, tz=tz).page(None, 100)[0]
        assert [{**line, "member_id": None} for line in lines_after] == \
            [{**line, "member_id": None} for line in lines_before]
        assert [line["member_id"] for line in lines_after] == \
            [None if line["member_id"] == CARD else line["member_id"] for line in lines_before]


def test_a_redacted_event_changed_afterwards_fails_verify(app, runner, alice):
    assert cli(runner, "members", "add", CARD)[0] == 0
    assert cli(runner, "members", "add", "CARD-2")[0] == 0
    assert cli(runner, "members", "erase", CARD)[0] == 0
    with app.app_context():
        s = db.session
        first, second = s.scalars(select(AuditEvent.id).order_by(AuditEvent.id).limit(2)).all()
        # Still refused: DELETE, and an UPDATE of anything the chain links by.
        for sql in ("DELETE FROM audit_events", "UPDATE audit_events SET actor = 'mallory'",
                    "UPDATE audit_events SET hash = prev_hash"):
            with pytest.raises(DatabaseError, match="append-only"):
                s.execute(text(sql))
            s.rollback()
        # The subject of the redacted event, and of an event no erasure vouched for.
        s.execute(text("UPDATE audit_events SET subject = 'member-id:999' WHERE id IN (:a, :b)"),
                  {"a": first, "b": second})
        s.commit()
    code, report = cli(runner, "ledger", "verify")
    assert code == 1 and report["violations_by_check"] == {"audit-chain": 2}
    assert [v["audit_event"] for v in report["violations"]] == [first, second]


def test_upgrading_from_0012_keeps_old_events_verifying_and_erasable(app, runner, alice):
    """Events written before 0013 (one hash version throughout) verify after the upgrade, and a
    member enrolled then can be erased, its old member.add redacted. On PostgreSQL this runs in
    the test database, downgraded to 0012 and upgraded again."""
    with app.app_context():
        flask_migrate.downgrade(revision="0012")
        s = db.session
        now = datetime.now(UTC)
        s.execute(text("INSERT INTO members (external_id, created_at, balance, debt, locked, "
                       "pin_failures) VALUES (:card, :now, 0, 0, false, 0)"),
                  {"card": CARD, "now": now})
        pk = s.scalar(text("SELECT id FROM members"))
        audit.record(s, actor="alice", action="member.add", subject=audit.enrolment_subject(CARD),
                     before=None, after={"member": pk}, now=now)
        s.commit()
        with pytest.raises(DatabaseError, match="append-only"):  # 0003's trigger: no UPDATE
            s.execute(text("UPDATE audit_events SET subject = 'x'"))
        s.rollback()
        flask_migrate.upgrade()
        db.session.remove()
    assert cli(runner, "ledger", "verify")[0] == 0
    code, done = cli(runner, "members", "erase", CARD)
    assert code == 0 and done["redacted_events"] == 1, done
    code, report = cli(runner, "ledger", "verify")
    assert code == 0 and report["ok"], report


def test_an_erased_members_points_stay_until_they_expire(app, runner, alice, acme, verify_clean):
    """Nothing can spend them any more, and they are not forfeited at erasure: they stay a
    liability of the issuer until `points expire` books them as breakage, lot by lot."""
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"], expire_months=0)
    assert acme.client.enrol(CARD).status == 201
    assert acme.client.earn("e1", CARD, 80).status == 201
    assert cli(runner, "members", "erase", CARD)[0] == 0
    later = next_month_start() + timedelta(days=1)
    with app.app_context():
        s = db.session
        pk = s.scalar(select(Member.id))
        assert s.get(Member, pk).balance == 80
        as_of = (later - timedelta(hours=1)).astimezone(ZoneInfo(TZ)).date()
        done = expiry.expire(s, as_of=as_of, now=lambda: later, tz=TZ)
        assert (done["lots_expired"], done["points_expired"]) == (1, 80)
        member = s.get(Member, pk)
        assert (member.balance, member.external_id) == (0, None)
        assert s.scalar(select(Entry.points).where(Entry.kind == EntryKind.EXPIRY,
                                                   Entry.member_id == pk)) == 80
    verify_clean()


@postgres_only
def test_a_burn_waiting_on_the_erasure_finds_no_card(app, acme, verify_clean):
    """The erasure holds the member's row lock as a claim does: a burn sent meanwhile waits for
    it and, once it commits, finds no member with that card (404), and books nothing."""
    assert acme.client.enrol(CARD).status == 201
    assert acme.client.earn("e1", CARD, 100).status == 201
    answer = {}

    def burn():
        answer["r"] = acme.client.burn("b1", CARD, 10)

    with app.app_context():
        eraser = Session(db.engine)
        try:
            member_erasure.erase(eraser, CARD, now=datetime.now(UTC), actor="alice")
            thread = threading.Thread(target=burn, daemon=True)
            thread.start()
            try:
                await_lock_wait(db.engine, still_running=thread.is_alive)
            finally:  # the burn must not wait for ever
                eraser.commit()
        finally:
            eraser.close()
        thread.join(30)
    assert not thread.is_alive()
    assert answer["r"].status == 404 and answer["r"].json()["type"].endswith("/not-found")
    with app.app_context():
        assert db.session.scalar(select(func.sum(Lot.remaining))) == 100
    verify_clean()
