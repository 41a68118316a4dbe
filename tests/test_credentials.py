"""Passwords, one-time codes and the lock-out (coalition/credentials.py), on the domain functions
the member portal and the operator console call; the PostgreSQL races with real threads."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from coalition import audit, credentials, member_erasure, member_export, operators
from coalition import members as member_service
from coalition.credentials import Verdict
from coalition.database import db
from coalition.models import AuditEvent, Credential
from coalition.problems import Problem
from tests.conftest import await_lock_wait, postgres_only

T0 = datetime(2026, 12, 6, 3, 0, tzinfo=timezone.utc)
PASSWORD = "correct horse battery"
CARD = "M-1"
WHO = credentials.principal("member", CARD)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def session(app):
    with app.app_context():
        yield db.session


def enrol(session, card: str = CARD):
    member, _ = member_service.enrol(session, card, now=T0)
    session.commit()
    return member


def with_password(session, who: str = WHO, password: str = PASSWORD, now: datetime = T0) -> None:
    code = credentials.issue_code(session, who, now=now, actor="ops")
    credentials.set_password(session, who, code, password, now=now)
    session.commit()


def row(session, key: str) -> Credential | None:
    session.expire_all()
    return session.get(Credential, key)


def events(session, action: str) -> list[AuditEvent]:
    return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)
                                .order_by(AuditEvent.id)))


def refused(problem: pytest.ExceptionInfo) -> tuple[str, str]:
    return problem.value.slug, problem.value.errors[0]["pointer"]


# --- principals and hashes -------------------------------------------------------------------

def test_principals_name_the_kind_and_the_name():
    assert credentials.principal("member", "M-1") == "member:M-1"
    assert credentials.principal("operator", "anna") == "operator:anna"
    with pytest.raises(ValueError):
        credentials.principal("partner", "acme")


def test_a_password_hash_says_its_parameters_and_checks_the_password():
    stored = credentials.hash_password("tr0ub4dor & 3")
    assert stored.startswith("scrypt$ln=15,r=8,p=1$") and "tr0ub4dor" not in stored
    assert credentials.password_matches(stored, "tr0ub4dor & 3")
    assert not credentials.password_matches(stored, "tr0ub4dor & 4")
    assert not credentials.password_matches(stored, "")
    assert credentials.hash_password("tr0ub4dor & 3") != stored  # a salt of its own
    assert not credentials.needs_rehash(stored)
    older = credentials.hash_password("tr0ub4dor & 3", log_n=14)
    assert older.startswith("scrypt$ln=14,") and credentials.needs_rehash(older)
    assert credentials.password_matches(older, "tr0ub4dor & 3")
    # NFKC: the ligature typed on one keyboard and two letters on another are one password
    assert credentials.password_matches(credentials.hash_password("ﬁre and ice!"), "fire and ice!")


def test_a_right_password_signs_in_and_a_wrong_one_does_not(session):
    member = enrol(session)
    assert not credentials.has_password(session, WHO)
    with_password(session)
    assert credentials.has_password(session, WHO)
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(1)) == Verdict(True, None)
    assert credentials.sign_in(session, WHO, PASSWORD + "!", now=at(2)) == Verdict(False, None)
    assert credentials.sign_in(session, WHO, PASSWORD.upper(), now=at(3)) == Verdict(False, None)
    assert credentials.sign_in(session, WHO, "x" * 10_000, now=at(4)) == Verdict(False, None)
    session.commit()
    assert row(session, credentials.member_key(member.id)).failures == 3


def test_a_password_hashed_at_an_older_cost_is_hashed_again_when_it_signs_in(session):
    member = enrol(session)
    with_password(session)
    key = credentials.member_key(member.id)
    row(session, key).password_hash = credentials.hash_password(PASSWORD, log_n=14)
    session.commit()
    assert credentials.sign_in(session, WHO, "not the password", now=at(1)).ok is False
    assert row(session, key).password_hash.startswith("scrypt$ln=14,")  # a failure keeps it
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(2)).ok is True
    session.commit()
    assert row(session, key).password_hash.startswith("scrypt$ln=15,")
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(3)).ok is True


def test_nobody_without_a_password_signs_in_and_it_takes_the_same_work(session, monkeypatch):
    """Unknown names, members without a password yet, operators without one, names of the
    wrong shape: refused, each after one key derivation as a wrong password costs."""
    derived = []
    real = credentials.password_matches
    monkeypatch.setattr(credentials, "password_matches",
                        lambda stored, password: derived.append(stored) or real(stored, password))
    enrol(session)
    operators.add(session, "anna", "admin", now=T0, actor="ops")  # a code, no password
    session.commit()
    for who in (WHO, "member:NOBODY", "operator:anna", "operator:zed", "member:", "partner:acme",
                "nonsense", credentials.principal("operator", ""), "member:M-1\x00",
                "member:" + "M" * 100_000):
        assert credentials.sign_in(session, who, PASSWORD, now=at(1)) == Verdict(False, None), who
    assert len(derived) == 10 and all(s.startswith("scrypt$ln=15,r=8,p=1$") for s in derived)
    with_password(session)
    derived.clear()
    assert credentials.sign_in(session, WHO, "wrong password", now=at(2)).ok is False
    assert len(derived) == 1
    assert row(session, "operator:anna").failures == 0  # nothing to count without a password


# --- one-time codes ----------------------------------------------------------------------------

def test_a_code_sets_the_password_once(session):
    member = enrol(session)
    code = credentials.issue_code(session, WHO, now=T0, actor="ops")
    assert len(code) == 14 and code[4] == code[9] == "-"
    assert set(code.replace("-", "")) <= set(credentials.CODE_ALPHABET)
    session.commit()
    stored = row(session, credentials.member_key(member.id))
    assert stored.password_hash is None and len(stored.code_hash) == 64
    assert code.replace("-", "") not in stored.code_hash
    credentials.set_password(session, WHO, code, PASSWORD, now=at(60))
    session.commit()
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(61)).ok
    with pytest.raises(Problem) as used:
        credentials.set_password(session, WHO, code, "another password", now=at(62))
    assert refused(used) == ("validation-error", "/code")
    session.rollback()
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(63)).ok
    assert not credentials.sign_in(session, WHO, "another password", now=at(64)).ok


def test_a_code_may_be_typed_loosely_but_not_wrongly(session):
    enrol(session)
    code = credentials.issue_code(session, WHO, now=T0, actor="ops")
    session.commit()
    wrong = ("0" if code[0] != "0" else "1") + code[1:]
    for typed in (wrong, code[:-1], "", None, code + "Z", "x" * 1000):
        with pytest.raises(Problem) as bad:
            credentials.set_password(session, WHO, typed, PASSWORD, now=at(1))
        assert refused(bad) == ("validation-error", "/code"), typed
    loose = " " + code.replace("-", "").lower().replace("0", "o").replace("1", "l") + " "
    credentials.set_password(session, WHO, loose, PASSWORD, now=at(2))
    session.commit()
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(3)).ok


def test_a_code_expires_after_72_hours(session):
    enrol(session)
    enrol(session, "M-2")
    other = credentials.principal("member", "M-2")
    late = credentials.issue_code(session, WHO, now=T0, actor="ops")
    in_time = credentials.issue_code(session, other, now=T0, actor="ops")
    session.commit()
    with pytest.raises(Problem) as expired:
        credentials.set_password(session, WHO, late, PASSWORD, now=T0 + timedelta(hours=72))
    assert refused(expired) == ("validation-error", "/code")
    session.rollback()
    credentials.set_password(session, other, in_time, PASSWORD,
                             now=T0 + timedelta(hours=72) - timedelta(seconds=1))
    session.commit()
    assert credentials.sign_in(session, other, PASSWORD, now=T0 + timedelta(hours=80)).ok


def test_a_newer_code_replaces_the_older_and_a_code_is_its_principals_only(session):
    enrol(session)
    enrol(session, "M-2")
    other = credentials.principal("member", "M-2")
    first = credentials.issue_code(session, WHO, now=T0, actor="ops")
    second = credentials.issue_code(session, WHO, now=at(10), actor="ops")
    for_other = credentials.issue_code(session, other, now=at(10), actor="ops")
    session.commit()
    assert first != second
    for who, code in ((WHO, first), (WHO, for_other), (other, second)):
        with pytest.raises(Problem):
            credentials.set_password(session, who, code, PASSWORD, now=at(20))
        session.rollback()
    credentials.set_password(session, WHO, second, PASSWORD, now=at(30))
    session.commit()
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(31)).ok
    assert not credentials.sign_in(session, other, PASSWORD, now=at(32)).ok
    issued = events(session, "credential.code-issued")
    assert [json.loads(e.after)["replaced_code"] for e in issued] == [False, True, False]


def test_a_password_is_10_to_256_characters(session):
    enrol(session)
    code = credentials.issue_code(session, WHO, now=T0, actor="ops")
    session.commit()
    for bad in ("123456789", "x" * 257, "", None, 1234567890):
        with pytest.raises(Problem) as short:
            credentials.set_password(session, WHO, code, bad, now=at(1))
        assert refused(short) == ("validation-error", "/password"), bad
    session.rollback()
    credentials.set_password(session, WHO, code, "1234567890", now=at(2))
    session.commit()
    assert credentials.sign_in(session, WHO, "1234567890", now=at(3)).ok
    with_password(session, password="é" * 256, now=at(4))
    assert credentials.sign_in(session, WHO, "é" * 256, now=at(5)).ok


def test_codes_for_nobody_are_refused(session):
    enrol(session)
    for who in ("member:NOBODY", "operator:zed", "nonsense"):
        with pytest.raises(Problem) as nobody:
            credentials.issue_code(session, who, now=T0, actor="ops")
        assert nobody.value.slug == "not-found"
        with pytest.raises(Problem) as bad:
            credentials.set_password(session, who, "AAAA-AAAA-AAAA", PASSWORD, now=T0)
        assert refused(bad) == ("validation-error", "/code")  # as for a wrong code
    assert session.scalar(select(Credential.principal)) is None


def test_a_new_code_keeps_the_password_until_it_is_used(session):
    enrol(session)
    with_password(session)
    code = credentials.issue_code(session, WHO, now=at(1), actor="ops")
    session.commit()
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(2)).ok
    credentials.set_password(session, WHO, code, "a new password", now=at(3))
    session.commit()
    assert not credentials.sign_in(session, WHO, PASSWORD, now=at(4)).ok
    assert credentials.sign_in(session, WHO, "a new password", now=at(5)).ok


# --- lock-out -----------------------------------------------------------------------------

def wrong(session, seconds: float) -> Verdict:
    verdict = credentials.sign_in(session, WHO, "a wrong password", now=at(seconds))
    session.commit()
    return verdict


def test_the_fifth_wrong_password_locks_for_a_minute_and_the_lock_doubles(session, monkeypatch):
    member = enrol(session)
    key = credentials.member_key(member.id)
    with_password(session)
    assert [wrong(session, s) for s in (1, 2, 3, 4)] == [Verdict(False, None)] * 4
    assert wrong(session, 5) == Verdict(False, at(65))  # locked by this failure
    assert row(session, key).failures == 5

    # Locked: the password is not even looked at, and nothing is counted.
    def no_looking(*_):
        raise AssertionError("a locked sign-in checked a password")
    monkeypatch.setattr(credentials, "password_matches", no_looking)
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(6)) == Verdict(False, at(65))
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(64.9)) == Verdict(False, at(65))
    session.commit()
    monkeypatch.undo()
    assert row(session, key).failures == 5

    # Each further wrong password once the lock has passed: twice as long, up to an hour.
    moment, locks = 65, []
    for _ in range(8):
        verdict = wrong(session, moment)
        locks.append((verdict.locked_until - at(moment)).total_seconds())
        moment += locks[-1]
    assert locks == [120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert row(session, key).failures == 13
    assert [json.loads(e.after)["seconds"] for e in events(session, "credential.locked-out")] == [
        60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert {e.subject for e in events(session, "credential.locked-out")} == {key}


def test_a_right_password_clears_the_count(session):
    member = enrol(session)
    key = credentials.member_key(member.id)
    with_password(session)
    assert [wrong(session, s) for s in (1, 2, 3, 4)] == [Verdict(False, None)] * 4
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(5)).ok
    session.commit()
    assert row(session, key).failures == 0
    assert [wrong(session, s) for s in (6, 7, 8, 9)] == [Verdict(False, None)] * 4  # 4 more
    assert wrong(session, 10).locked_until == at(70)
    # After a lock and a right password, the next lock is a minute again.
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(70)).ok
    session.commit()
    stored = row(session, key)
    assert (stored.failures, stored.locked_until) == (0, None)
    for s in (71, 72, 73, 74):
        wrong(session, s)
    assert wrong(session, 75).locked_until == at(135)


def test_setting_a_password_with_a_code_lifts_a_lock(session):
    enrol(session)
    with_password(session)
    for s in (1, 2, 3, 4, 5):
        wrong(session, s)
    code = credentials.issue_code(session, WHO, now=at(6), actor="ops")
    credentials.set_password(session, WHO, code, "a fresh password", now=at(7))
    session.commit()
    assert credentials.sign_in(session, WHO, "a fresh password", now=at(8)).ok


def test_operators_sign_in_and_lock_out_alike(session):
    code = operators.add(session, "anna", "analyst", now=T0, actor="ops")
    who = credentials.principal("operator", "anna")
    credentials.set_password(session, who, code, "console password", now=at(1))
    session.commit()
    assert credentials.sign_in(session, who, "console password", now=at(2)).ok
    verdicts = [credentials.sign_in(session, who, "guess", now=at(3 + i)) for i in range(5)]
    session.commit()
    assert verdicts[-1].locked_until == at(67) and verdicts[-2].locked_until is None
    assert credentials.sign_in(session, who, "console password", now=at(10)).ok is False
    assert credentials.sign_in(session, who, "console password", now=at(67)).ok is True
    assert operators.get(session, "anna").role == "analyst"
    assert operators.get(session, "nobody") is None


# --- audit, erasure, export -----------------------------------------------------------------

def test_the_audit_log_records_each_event_and_never_a_secret(session):
    member = enrol(session)
    key = credentials.member_key(member.id)
    code = credentials.issue_code(session, WHO, now=T0, actor="ops-anna")
    credentials.set_password(session, WHO, code, PASSWORD, now=at(1))
    for s in (2, 3, 4, 5, 6):
        credentials.sign_in(session, WHO, "a wrong password", now=at(s))
    session.commit()
    logged = [(e.actor, e.action, e.subject) for e in session.scalars(
        select(AuditEvent).where(AuditEvent.subject == key).order_by(AuditEvent.id))]
    assert logged == [("ops-anna", "credential.code-issued", key),
                      (key, "credential.password-set", key),
                      (audit.SYSTEM, "credential.locked-out", key)]
    everything = json.dumps([audit.event_view(e) for e in session.scalars(select(AuditEvent))])
    stored = row(session, key)
    for secret in (code, code.replace("-", ""), PASSWORD, "a wrong password",
                   stored.password_hash, stored.password_hash.split("$")[2], CARD):
        assert secret not in everything
    assert json.loads(events(session, "credential.password-set")[0].after) == {"password_set": True}


def test_an_erased_member_cannot_sign_in_and_its_credential_is_gone(session):
    member = enrol(session)
    with_password(session)
    enrol(session, "M-2")
    with_password(session, credentials.principal("member", "M-2"))
    done = member_erasure.erase(session, CARD, now=at(10), actor="ops")
    session.commit()
    assert done["credential_deleted"] is True
    assert row(session, credentials.member_key(member.id)) is None
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(11)) == Verdict(False, None)
    assert not credentials.has_password(session, WHO)
    with pytest.raises(Problem) as gone:
        credentials.issue_code(session, WHO, now=at(12), actor="ops")
    assert gone.value.slug == "not-found"
    # The other member keeps theirs; the same card enrolled again is a new member, no password.
    assert credentials.sign_in(session, "member:M-2", PASSWORD, now=at(13)).ok
    session.rollback()
    again = enrol(session)
    assert again.id != member.id and not credentials.has_password(session, WHO)
    assert credentials.sign_in(session, WHO, PASSWORD, now=at(14)).ok is False
    # Erasing a member that never had a credential says so.
    assert member_erasure.erase(session, CARD, now=at(15), actor="ops")["credential_deleted"] is False


def test_the_member_export_says_whether_a_password_is_set_and_never_a_hash(session):
    enrol(session)

    def exported(seconds: float) -> dict:
        document = member_export.export(session, CARD, now=at(seconds), tz="Europe/Berlin",
                                        actor="ops")
        session.commit()
        return document
    assert exported(0)["member"]["sign_in"] == {"password_set": False, "code_pending": False,
                                                "failures": 0, "locked_until": None}
    credentials.issue_code(session, WHO, now=at(1), actor="ops")
    session.commit()
    assert exported(2)["member"]["sign_in"]["code_pending"] is True
    with_password(session, now=at(3))
    for s in (4, 5, 6, 7, 8):
        wrong(session, s)
    document = exported(9)
    assert document["member"]["sign_in"] == {"password_set": True, "code_pending": False,
                                             "failures": 5,
                                             "locked_until": "2026-12-06T03:01:08Z"}
    assert "scrypt" not in json.dumps(document)
    assert {"credential.code-issued", "credential.password-set", "credential.locked-out"} <= {
        e["action"] for e in document["audit_events"]}


# --- PostgreSQL: parallel guesses, each on its own connection ---------------------------------

def in_parallel(app, n: int, work):
    """Run work(i) in n threads that start together, each in an app context of its own."""
    start = threading.Barrier(n)

    def run(i):
        with app.app_context():
            start.wait()
            try:
                return work(i)
            finally:
                db.session.remove()
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def attempt(password: str, now: datetime) -> Verdict:
    verdict = credentials.sign_in(db.session, WHO, password, now=now)
    db.session.commit()
    return verdict


def unlocked_first(verdicts: list[Verdict]) -> list[Verdict]:
    return sorted(verdicts, key=lambda v: (v.ok, v.locked_until is not None))


@postgres_only
def test_parallel_wrong_guesses_are_counted_exactly(app, session):
    member = enrol(session)
    key = credentials.member_key(member.id)
    with_password(session)
    session.remove()

    verdicts = in_parallel(app, 12, lambda i: attempt(f"wrong guess {i}", at(1)))
    # Five guesses were checked, one after the other; the fifth locked; the rest were refused
    # unchecked. Without the row lock they would all read the same count and write it back.
    assert unlocked_first(verdicts) == [Verdict(False, None)] * 4 + [Verdict(False, at(61))] * 8
    assert row(session, key).failures == 5
    assert len(events(session, "credential.locked-out")) == 1
    session.remove()

    # Once the lock has passed, twelve more at once: one is checked and locks for two minutes.
    verdicts = in_parallel(app, 12, lambda i: attempt(f"wrong again {i}", at(61)))
    assert verdicts == [Verdict(False, at(181))] * 12
    assert row(session, key).failures == 6
    assert len(events(session, "credential.locked-out")) == 2
    session.remove()

    # The right password among five wrong ones once unlocked: if it comes first it signs in and
    # clears the count, and the five wrong ones lock for a minute; else the first wrong one
    # locks for four minutes and the right one is refused with the rest.
    verdicts = in_parallel(app, 6, lambda i: attempt(PASSWORD if i == 0 else f"wrong {i}", at(181)))
    if verdicts[0].ok:
        assert unlocked_first(verdicts[1:]) == [Verdict(False, None)] * 4 + [Verdict(False, at(241))]
        assert row(session, key).failures == 5
    else:
        assert verdicts == [Verdict(False, at(421))] * 6
        assert row(session, key).failures == 7
    print("the right password came first:", verdicts[0].ok)


@postgres_only
def test_parallel_codes_for_a_new_credential_leave_exactly_one_that_works(app, session):
    enrol(session)
    session.remove()

    def issue(_i):
        code = credentials.issue_code(db.session, WHO, now=T0, actor="ops")
        db.session.commit()
        return code
    codes = in_parallel(app, 8, issue)
    assert len(set(codes)) == 8
    working = []
    for code in codes:
        try:
            credentials.set_password(session, WHO, code, PASSWORD, now=at(1))
            working.append(code)
        except Problem:
            pass
        session.rollback()
    assert len(working) == 1
    assert len(events(session, "credential.code-issued")) == 8


@postgres_only
def test_a_code_issued_while_the_member_is_being_erased_waits_and_is_refused(app, session):
    """The erasure holds the member's row; a code issued meanwhile waits for it, then finds no
    member, instead of writing a credential for a member who is gone."""
    enrol(session)
    member_erasure.erase(session, CARD, now=at(1), actor="ops")  # not committed yet

    def issue():
        with app.app_context():
            try:
                return credentials.issue_code(db.session, WHO, now=at(2), actor="ops")
            except Problem as problem:
                return problem.slug
            finally:
                db.session.commit()
                db.session.remove()
    with ThreadPoolExecutor(1) as pool:
        issuing = pool.submit(issue)
        await_lock_wait(db.engine, still_running=lambda: not issuing.done())
        session.commit()
        assert issuing.result(timeout=30) == "not-found"
    assert session.scalar(select(Credential.principal)) is None
