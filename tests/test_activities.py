"""Activity earns (review, signup, newsletter) and referrals (coalition/activities.py)."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from coalition import activities, ledger
from coalition.database import db
from coalition.member_erasure import erase
from coalition.members import enrol, find
from coalition.models import AuditEvent, Entry, Lot, Member, Posting
from coalition.problems import Problem
from coalition.verify import verify
from tests.conftest import ago, postgres_only

UTC = timezone.utc


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output) if result.output.strip() else None


@pytest.fixture
def operator(runner):
    code, out = cli(runner, "partners", "add", "coalition", "--name", "Coalition", "--kind",
                    "operator")
    assert code == 0, out


@pytest.fixture
def referrals(app):
    """COALITION_REFERRAL_POINTS = 50."""
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"], referral_points=50)
    return 50


def book(app, card, claim_id, points, *, now, activity=activities.PURCHASE, partner="acme",
         occurred_at=None, pending_until=None):
    with app.app_context():
        booked = ledger.book_earn(db.session, partner_id=partner, claim_id=claim_id,
                                  member_id=card, points=points,
                                  occurred_at=occurred_at or now, now=now,
                                  rules=app.config["LEDGER_RULES"], activity=activity,
                                  pending_until=pending_until)
        db.session.commit()
        return booked.replayed


def refused(app, card, claim_id, points, *, now, activity) -> Problem:
    """A refused earn; what the refusal wrote (its audit event) committed, as the API does."""
    with app.app_context():
        with pytest.raises(Problem) as caught:
            ledger.book_earn(db.session, partner_id="acme", claim_id=claim_id, member_id=card,
                             points=points, occurred_at=now, now=now,
                             rules=app.config["LEDGER_RULES"], activity=activity)
        db.session.commit()
    return caught.value


def test_the_answer_shows_the_activity_and_a_review_gets_no_bonus(app, acme, runner,
                                                                  operator, verify_clean):
    code, out = cli(runner, "campaigns", "add", "double", "--name", "double", "--kind",
                    "multiplier", "--value", "2", "--from", "2026-01-01", "--until", "2099-12-31",
                    "--funder", "acme")
    assert code == 0, out
    assert acme.client.enrol("M1").status == 201
    answer = acme.client.earn("r1", "M1", 10, occurred_at=ago(minutes=1), activity="review").json()
    assert (answer["activity"], answer["bonus_points"], answer["bonuses"]) == ("review", 0, [])
    plain = acme.client.earn("p1", "M1", 10, occurred_at=ago(minutes=1)).json()
    assert (plain["activity"], plain["bonus_points"]) == ("purchase", 10)
    assert acme.client.claim("r1").json()["activity"] == "review"
    listed = acme.client.request("GET", "/v1/claims").json()["claims"]
    assert {c["claim_id"]: c["activity"] for c in listed} == {"r1": "review", "p1": "purchase"}
    bad = acme.client.earn("x1", "M1", 10, occurred_at=ago(minutes=1), activity="referral")
    assert bad.status == 422 and bad.json()["type"].endswith("validation-error")
    # Reversed as any earn.
    assert acme.client.reverse("r1", "r1-back", 10, occurred_at=ago(seconds=1)).status == 201
    verify_clean()


def test_a_second_review_the_same_berlin_day_is_refused_the_next_day_accepted(app, acme):
    with app.app_context():
        enrol(db.session, "M1", now=datetime(2026, 7, 1, tzinfo=UTC))
        db.session.commit()
    # 2026-07-10 23:30 Berlin is 21:30 UTC; Berlin's midnight is 22:00 UTC.
    evening = datetime(2026, 7, 10, 21, 30, tzinfo=UTC)
    book(app, "M1", "rev-1", 5, now=evening, activity="review")
    problem = refused(app, "M1", "rev-2", 5, now=datetime(2026, 7, 10, 21, 59, 59, tzinfo=UTC),
                      activity="review")
    assert problem.status == 422 and problem.slug == "limit-exceeded"
    assert "(limit: activity-review-daily)" in problem.detail
    # Another partner's review and a purchase are not counted against it.
    book(app, "M1", "buy-1", 5, now=datetime(2026, 7, 10, 21, 59, 59, tzinfo=UTC))
    # After local midnight: the next day.
    book(app, "M1", "rev-3", 5, now=datetime(2026, 7, 10, 22, 0, tzinfo=UTC), activity="review")
    with app.app_context():
        hits = db.session.execute(select(AuditEvent.action, AuditEvent.after)
                                  .where(AuditEvent.action == "member.limit-hit")).all()
        assert len(hits) == 1
        after = hits[0][1] if isinstance(hits[0][1], dict) else json.loads(hits[0][1])
        assert after["limit"] == "activity-review-daily" and after["window"] == "2026-07-10"


def test_reviews_are_per_partner(app, acme, bolt):
    with app.app_context():
        enrol(db.session, "M1", now=datetime(2026, 7, 1, tzinfo=UTC))
        db.session.commit()
    now = datetime(2026, 7, 10, 12, tzinfo=UTC)
    book(app, "M1", "rev-a", 5, now=now, activity="review")
    book(app, "M1", "rev-b", 5, now=now, activity="review", partner="bolt")


@pytest.mark.parametrize("activity", ["signup", "newsletter"])
def test_signup_and_newsletter_once_ever(app, acme, activity):
    with app.app_context():
        enrol(db.session, "M1", now=datetime(2026, 7, 1, tzinfo=UTC))
        db.session.commit()
    book(app, "M1", "once-1", 20, now=datetime(2026, 7, 2, tzinfo=UTC), activity=activity)
    problem = refused(app, "M1", "once-2", 20, now=datetime(2026, 7, 25, tzinfo=UTC),
                      activity=activity)
    assert f"(limit: activity-{activity}-once)" in problem.detail
    # The first one replays.
    assert book(app, "M1", "once-1", 20, now=datetime(2026, 7, 25, tzinfo=UTC),
                occurred_at=datetime(2026, 7, 2, tzinfo=UTC), activity=activity) is True


def test_the_activity_is_part_of_the_claims_content(app, acme):
    assert acme.client.enrol("M1").status == 201
    at = ago(minutes=1)
    assert acme.client.earn("c1", "M1", 10, occurred_at=at, activity="review").status == 201
    assert acme.client.earn("c1", "M1", 10, occurred_at=at, activity="review").status == 201
    conflict = acme.client.earn("c1", "M1", 10, occurred_at=at)
    assert conflict.status == 409 and conflict.json()["type"].endswith("claim-id-conflict")
    # Without activity and with "purchase": the same content, and the fingerprint of before.
    assert acme.client.earn("c2", "M1", 10, occurred_at=at).status == 201
    again = acme.client.earn("c2", "M1", 10, occurred_at=at, activity="purchase")
    assert again.status == 201 and again.headers.get("idempotent-replayed") == "true"
    assert acme.client.earn("c2", "M1", 10, occurred_at=at, activity="signup").status == 409


def test_purchase_fingerprints_and_hashes_are_those_of_before():
    at = datetime(2026, 5, 4, 8, tzinfo=UTC)
    before = ledger.fingerprint("earn", member_id="M1", points=5, occurred_at=at,
                                pending_until=None, description=None)
    assert ledger.earn_fingerprint(member_id="M1", points=5, occurred_at=at) == before
    assert ledger.earn_fingerprint(member_id="M1", points=5, occurred_at=at,
                                   activity="purchase") == before
    assert ledger.earn_fingerprint(member_id="M1", points=5, occurred_at=at,
                                   activity="review") != before
    entry = {"kind": "earn", "partner_id": "acme", "claim_id": "c", "member_id": 1,
             "points": 5, "occurred_at": at, "recorded_at": at, "period": "2026-05",
             "late": False, "pending_until": None, "reverses_id": None, "fingerprint": before,
             "balance_after": 5}
    plain = ledger.hash_of(entry, {"member:1": 5, "issued:acme": -5})
    assert ledger.hash_of({**entry, "activity": "purchase"},
                          {"member:1": 5, "issued:acme": -5}) == plain
    assert ledger.hash_of({**entry, "activity": "review"},
                          {"member:1": 5, "issued:acme": -5}) != plain


def test_enrolling_with_referred_by(app, acme):
    assert acme.client.enrol("REF").status == 201
    assert acme.client.enrol("NEW", referred_by="REF").status == 201
    unknown = acme.client.enrol("NEW2", referred_by="NOBODY")
    assert unknown.status == 422 and unknown.json()["errors"][0]["pointer"] == "/referred_by"
    assert acme.client.enrol("SELF", referred_by="SELF").status == 422
    # Enrolled already: keeps whoever it had.
    assert acme.client.enrol("REF", referred_by="NEW").status == 200
    with app.app_context():
        ref, new = find(db.session, "REF"), find(db.session, "NEW")
        assert (ref.referred_by, new.referred_by) == (None, ref.id)


def referral_entries(app):
    with app.app_context():
        return db.session.execute(
            select(Entry.partner_id, Entry.claim_id, Entry.activity, Entry.points, Member.external_id)
            .join(Member, Member.id == Entry.member_id)
            .where(Entry.activity == activities.REFERRAL)).all()


def test_the_first_purchase_brings_both_members_the_referral_once(
        app, acme, bolt, operator, referrals, verify_clean):
    assert acme.client.enrol("REF").status == 201
    assert acme.client.enrol("NEW", referred_by="REF").status == 201
    # A review and a pending purchase are not the first purchase.
    assert acme.client.earn("rv", "NEW", 5, occurred_at=ago(minutes=2),
                            activity="review").json()["bonuses"] == []
    pending = acme.client.earn("pend", "NEW", 5, occurred_at=ago(minutes=2),
                               pending_until=ago(minutes=-60)).json()
    assert pending["bonuses"] == []
    first = bolt.client.earn("first", "NEW", 30, occurred_at=ago(minutes=1)).json()
    assert first["bonuses"] == [{"type": "referral", "id": "referral", "funder": "coalition",
                                 "points": 50}]
    assert first["balance_after"] == 85  # the review's 5, 30 and the bonus
    second = bolt.client.earn("second", "NEW", 30, occurred_at=ago(minutes=1)).json()
    assert second["bonuses"] == []
    with app.app_context():
        entry_id = db.session.scalar(select(Entry.id).where(Entry.claim_id == "first"))
        postings = dict(db.session.execute(
            select(Posting.account, Posting.points).join(Entry)
            .where(Entry.claim_id == f"referral-{entry_id}")).all())
        ref = find(db.session, "REF")
        assert postings == {f"member:{ref.id}": 50, "issued:coalition": -50}
        lot = db.session.scalars(select(Lot).join(Entry, Entry.id == Lot.entry_id)
                                 .where(Entry.claim_id == f"referral-{entry_id}")).one()
        assert (lot.issuer_id, lot.source, lot.points) == ("coalition", None, 50)
    assert referral_entries(app) == [("coalition", f"referral-{entry_id}", "referral", 50, "REF")]
    assert acme.client.balance("REF").json()["available"] == 50
    # Reversing the first purchase takes its referral bonus back (as any bonus); the
    # referrer's earn stays.
    assert bolt.client.reverse("first", "first-back", 30, occurred_at=ago(seconds=1)).status == 201
    assert acme.client.balance("NEW").json()["available"] == 35  # review and second
    verify_clean()


def test_no_operator_no_referral(app, acme, referrals, verify_clean):
    assert acme.client.enrol("REF").status == 201
    assert acme.client.enrol("NEW", referred_by="REF").status == 201
    assert acme.client.earn("first", "NEW", 30, occurred_at=ago(minutes=1)).json()["bonuses"] == []
    assert referral_entries(app) == []
    verify_clean()


def test_referral_points_zero_give_nothing(app, acme, operator):
    assert acme.client.enrol("REF").status == 201
    assert acme.client.enrol("NEW", referred_by="REF").status == 201
    assert acme.client.earn("first", "NEW", 30, occurred_at=ago(minutes=1)).json()["bonuses"] == []
    assert referral_entries(app) == []


def test_an_erased_referrer_gives_nothing(app, acme, operator, referrals, verify_clean):
    assert acme.client.enrol("REF").status == 201
    assert acme.client.enrol("NEW", referred_by="REF").status == 201
    with app.app_context():
        erase(db.session, "REF", now=datetime.now(UTC), actor="operator:test")
        db.session.commit()
    assert acme.client.earn("first", "NEW", 30, occurred_at=ago(minutes=1)).json()["bonuses"] == []
    assert referral_entries(app) == []
    verify_clean()


def test_a_batch_first_purchase_brings_the_referral(app, acme, operator, referrals, verify_clean):
    assert acme.client.enrol("REF").status == 201
    assert acme.client.enrol("NEW", referred_by="REF").status == 201
    at = ago(minutes=1)
    answer = acme.client.batch([
        {"kind": "earn", "claim_id": "b0", "member_id": "REF", "points": 7, "occurred_at": at},
        {"kind": "earn", "claim_id": "b1", "member_id": "NEW", "points": 10, "occurred_at": at,
         "activity": "review"},
        {"kind": "earn", "claim_id": "b2", "member_id": "NEW", "points": 10, "occurred_at": at},
        {"kind": "earn", "claim_id": "b2", "member_id": "NEW", "points": 10, "occurred_at": at},
        {"kind": "earn", "claim_id": "b3", "member_id": "NEW", "points": 10, "occurred_at": at},
        {"kind": "earn", "claim_id": "b4", "member_id": "REF", "points": 3, "occurred_at": at},
        {"kind": "earn", "claim_id": "b5", "member_id": "NEW", "points": 1, "occurred_at": at,
         "activity": "review"},
    ]).json()
    results = answer["results"]
    assert [r["status"] for r in results] == [201, 201, 201, 201, 201, 201, 422]
    assert results[1]["body"]["activity"] == "review"
    assert results[2]["body"]["bonuses"][0]["type"] == "referral"
    assert results[3]["replayed"] is True
    assert results[4]["body"]["bonuses"] == []
    assert "activity-review-daily" in results[6]["body"]["detail"]
    assert len(referral_entries(app)) == 1
    assert acme.client.balance("REF").json()["available"] == 60
    assert acme.client.balance("NEW").json()["available"] == 80
    verify_clean()


@postgres_only
def test_concurrent_first_purchases_give_the_referral_once(app, acme, operator, referrals):
    with app.app_context():
        ref, _ = enrol(db.session, "REF", now=datetime.now(UTC))
        db.session.flush()
        for i in range(8):
            member, _ = enrol(db.session, f"N{i}", now=datetime.now(UTC))
            member.referred_by = ref.id
        db.session.commit()
    rules = app.config["LEDGER_RULES"]
    jobs = [(f"N{i}", f"c{i}-{k}") for i in range(8) for k in range(3)]
    start = threading.Barrier(len(jobs))

    def one(job):
        card, claim_id = job
        with app.app_context():
            start.wait()
            now = datetime.now(UTC)
            booked = ledger.book_earn(db.session, partner_id="acme", claim_id=claim_id,
                                      member_id=card, points=10, occurred_at=now, now=now,
                                      rules=rules)
            db.session.commit()
            return booked.award.points

    with ThreadPoolExecutor(len(jobs)) as pool:
        given = list(pool.map(one, jobs))
    # Three first purchases raced per referred member: one got the referral.
    assert sorted(given) == [0] * 16 + [50] * 8
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Entry)
                                 .where(Entry.activity == "referral")) == 8
        assert find(db.session, "REF").balance == 400
        assert verify(db.session)["ok"]


def test_a_month_with_a_referral_closes_with_the_coalition_paying_for_both(
        app, make_partner, runner, referrals, verify_clean):
    """The referred member's 50 are bonus points of the coalition (bonus_points_issued), the
    referrer's 50 points it issued (points_issued); the statements balance and their lines add
    up to them."""
    from flask import current_app

    from partners import service as partner_service
    from settlement import service as settlement
    from settlement.lines import TOTALS, MonthLines
    from settlement.signing import signing_key
    from tests.test_bonus_settlement import TERMS, month_after

    acme = make_partner("acme", issue_price="0.01", redemption_rate="0.009",
                        issuance_share="1", claim_fee="0")
    with app.app_context():
        s, tz = db.session, current_app.config["COALITION_TIMEZONE"]
        partner_service.add_partner(s, "coalition", "The Coalition", now=datetime.now(UTC),
                                    kind="operator", terms=TERMS["coalition"])
        s.commit()
        assert acme.client.enrol("REF").status == 201
        assert acme.client.enrol("NEW", referred_by="REF").status == 201
        earned = acme.client.earn("first", "NEW", 40, occurred_at=ago(minutes=1))
        assert earned.json()["bonus_points"] == 50
        assert acme.client.burn("spend", "REF", 30, occurred_at=ago(seconds=30)).status == 201
        period = earned.json()["period"]
        _, ended = month_after(period)
        settlement.close(s, period, now=ended, tz=tz,
                         key=signing_key(current_app.config["COALITION_SIGNING_KEY_FILE"]))
        s.commit()
        docs = {p: json.loads(settlement.statement(s, p, period).document)
                for p in ("acme", "coalition")}
        report = json.loads(settlement.report(s, period).document)
        assert (docs["coalition"]["points_issued"], docs["coalition"]["bonus_points_issued"]) \
            == (50, 50)
        assert (docs["acme"]["points_issued"], docs["acme"]["bonus_points_issued"]) == (40, 0)
        assert sum(d["net_cents"] for d in docs.values()) + report["operator_margin_cents"] == 0
        for partner in docs:
            month, lines, after = MonthLines(s, partner, period, tz=tz), [], None
            while True:
                page, after = month.page(after, 100)
                lines += page
                if after is None:
                    break
            assert {f: sum(line[f] for line in lines) for f in TOTALS} == month.totals, partner
    verify_clean()


@postgres_only
def test_batches_and_single_earns_of_referrers_and_referred_members_do_not_deadlock(
        app, acme, operator, referrals):
    """Batches naming referrers and referred members in either order, and single earns of both,
    all at once: locks are taken in ascending id everywhere, so every claim books."""
    with app.app_context():
        refs = [enrol(db.session, f"REF{i}", now=datetime.now(UTC))[0] for i in range(3)]
        db.session.flush()
        for i in range(6):
            member, _ = enrol(db.session, f"N{i}", now=datetime.now(UTC))
            member.referred_by = refs[i % 3].id
        db.session.commit()
    at = ago(minutes=1)

    def item(card, claim_id):
        return {"kind": "earn", "claim_id": claim_id, "member_id": card, "points": 5,
                "occurred_at": at}

    jobs = []
    for i in range(6):
        jobs.append(("batch", [item(f"N{i}", f"b{i}-n"), item(f"REF{i % 3}", f"b{i}-r"),
                               item(f"N{(i + 1) % 6}", f"b{i}-m")]))
        jobs.append(("single", (f"N{i}", f"s{i}-n")))
        jobs.append(("single", (f"REF{i % 3}", f"s{i}-r")))
    start = threading.Barrier(len(jobs))

    def one(job):
        kind, what = job
        start.wait()
        if kind == "batch":
            answer = acme.client.batch(what)
            return [r["status"] for r in answer.json()["results"]] if answer.status == 200 \
                else [answer.status]
        return [acme.client.earn(what[1], what[0], 5, occurred_at=at).status]

    with ThreadPoolExecutor(len(jobs)) as pool:
        statuses = [s for result in pool.map(one, jobs) for s in result]
    assert set(statuses) == {201}
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Entry)
                                 .where(Entry.activity == "referral")) == 6
        assert verify(db.session)["ok"]
