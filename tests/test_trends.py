"""settlement/trends.py: the console's series over a small coalition booked through the ledger,
May and June 2026 (Berlin), every figure worked out by hand; closed months equal to what their
statements and report say, open months computed as the close then computes them. And the
partner API counting its problem answers by partner, day and slug."""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from flask import current_app
from sqlalchemy import func, select, text

from coalition import campaigns, expiry, ledger
from coalition import tiers as tiering
from coalition.clock import now as clock_now
from coalition.database import db
from coalition.members import enrol
from coalition.models import AuditEvent, Lot, Member
from coalition.periods import day_of
from partners import service as partner_service
from partners import auth, rejects
from partners.models import UNAUTHENTICATED, ClaimRejectCount
from settlement import service as settlement
from settlement import trends
from settlement.signing import signing_key

UTC = timezone.utc
TZ = "Europe/Berlin"
RULES = ledger.Rules(TZ, 30, 0)  # points expire at the end of the month they were earned in
TERMS = {
    "acme": {"issue_price": "0.013", "redemption_rate": "0.01", "issuance_share": "0.5",
             "claim_fee": "0"},
    "bolt": {"issue_price": "0.0125", "redemption_rate": "0.01", "issuance_share": "1",
             "claim_fee": "0"},
    "coalition": {"issue_price": "0.008", "redemption_rate": "0", "issuance_share": "0.5",
                  "claim_fee": "0"},
}
ACME_FROM_JUNE = "0.015"
TIERS = tiering.parse("Blue:0,Silver:150,Gold:1000")
JULY = datetime(2026, 7, 5, 12, tzinfo=UTC)  # when the console looks


def at(month: int, d: int, hour: int = 12) -> datetime:
    return datetime(2026, month, d, hour, tzinfo=UTC)


def book(s, fn, **claim):
    """Booked an hour after it occurred (recorded_at: the claims-per-day day)."""
    fn(s, now=claim["occurred_at"] + timedelta(hours=1), rules=RULES, **claim)
    s.commit()


def close(s, period: str, now: datetime) -> None:
    settlement.close(s, period, now=now, tz=TZ,
                     key=signing_key(current_app.config["COALITION_SIGNING_KEY_FILE"]))
    s.commit()


def documents(s, period: str) -> tuple[dict, dict]:
    docs = {p: json.loads(settlement.statement(s, p, period).document) for p in TERMS}
    return docs, json.loads(settlement.report(s, period).document)


@pytest.fixture
def coalition(app):
    with app.app_context():
        book_coalition(db.session)
        yield db.session


def book_coalition(s) -> None:
    """May: a campaign gives 20 points (funded by the coalition) on every acme earn.
    a1 acme M1 100 (+20), b1 bolt M2 50, a2 acme M3 30 (+20); bolt burns all 120 of M1 (x1: acme's
    100 and the coalition's 20); a3 acme M2 40 (+20), reversed whole the next day (ra3).
    May closes; the expiry run books what is left of May's lots into June: M2's 50 (bolt),
    M3's 30 (acme) and 20 (coalition). June: a4 acme M1 200 (no campaign), x2 bolt burns 50 of
    it; M4 enrols and does nothing. June stays open."""
    for partner, terms in TERMS.items():
        partner_service.add_partner(s, partner, partner.title(), now=at(5, 1), terms=terms,
                                    kind="operator" if partner == "coalition" else "partner")
    partner_service.set_terms(s, "acme", "2026-06", {"issue_price": ACME_FROM_JUNE},
                              now=at(5, 1))
    for member in ("M1", "M2", "M3"):
        enrol(s, member, now=at(5, 1))
    campaigns.add(s, "may-20", name="May +20", kind="fixed", value="20", starts="2026-05-01",
                  ends="2026-05-31", funder="coalition", issuers=set(TERMS), now=at(5, 1),
                  tz=TZ, partners=["acme"])
    s.commit()
    book(s, ledger.book_earn, partner_id="acme", claim_id="a1", member_id="M1", points=100,
         occurred_at=at(5, 2))
    book(s, ledger.book_earn, partner_id="bolt", claim_id="b1", member_id="M2", points=50,
         occurred_at=at(5, 3))
    book(s, ledger.book_earn, partner_id="acme", claim_id="a2", member_id="M3", points=30,
         occurred_at=at(5, 4))
    book(s, ledger.book_burn, partner_id="bolt", claim_id="x1", member_id="M1", points=120,
         occurred_at=at(5, 10))
    book(s, ledger.book_earn, partner_id="acme", claim_id="a3", member_id="M2", points=40,
         occurred_at=at(5, 20))
    book(s, ledger.book_reversal, partner_id="acme", claim_id="a3", reversal_id="ra3",
         points=40, occurred_at=at(5, 21))
    close(s, "2026-05", at(6, 1, 6))
    done = expiry.expire(s, as_of=date(2026, 6, 2), now=lambda: at(6, 2, 6), tz=TZ)
    assert done["points_expired"] == 50 + 30 + 20
    book(s, ledger.book_earn, partner_id="acme", claim_id="a4", member_id="M1", points=200,
         occurred_at=at(6, 10))
    book(s, ledger.book_burn, partner_id="bolt", claim_id="x2", member_id="M1", points=50,
         occurred_at=at(6, 11))
    enrol(s, "M4", now=at(6, 15))
    s.commit()


PERIODS = ["2026-05", "2026-06"]


def test_months_default_to_the_last_twelve_ending_with_the_current_one():
    assert trends.months(now=JULY, tz=TZ) == [f"2025-{m:02d}" for m in range(8, 13)] + \
        [f"2026-{m:02d}" for m in range(1, 8)]
    assert trends.months(now=JULY, tz=TZ, count=2, last="2026-01") == ["2025-12", "2026-01"]
    # 31 December 23:30 UTC is already January in Berlin.
    assert trends.months(now=datetime(2026, 12, 31, 23, 30, tzinfo=UTC), tz=TZ, count=1) == ["2027-01"]


def test_issuance_and_redemption_per_partner_and_month(coalition):
    s = coalition
    rows = trends.issuance_and_redemption(s, PERIODS)
    assert [(r.period, r.partner_id, r.points_issued, r.bonus_points_issued, r.points_redeemed,
             r.closed) for r in rows] == [
        ("2026-05", "acme", 100 + 30 + 40 - 40, 0, 0, True),
        ("2026-05", "bolt", 50, 0, 120, True),
        ("2026-05", "coalition", 0, 20 + 20 + 20 - 20, 0, True),  # a3's bonus taken back
        ("2026-06", "acme", 200, 0, 0, False),
        ("2026-06", "bolt", 0, 0, 50, False),
    ]
    docs, _ = documents(s, "2026-05")
    for row in rows[:3]:
        doc = docs[row.partner_id]
        assert (row.points_issued, row.bonus_points_issued, row.points_redeemed) == \
            (doc["points_issued"], doc["bonus_points_issued"], doc["points_redeemed"])


def test_the_issuer_redeemer_matrix_of_a_month(coalition):
    s = coalition
    may = trends.flow_matrix(s, "2026-05")
    assert [(c.issuer, c.redeemer, c.points) for c in may] == [("acme", "bolt", 100),
                                                               ("coalition", "bolt", 20)]
    _, report = documents(s, "2026-05")
    assert [{"issuer": c.issuer, "redeemer": c.redeemer, "points": c.points} for c in may] \
        == report["matrix"]
    assert [(c.issuer, c.redeemer, c.points) for c in trends.flow_matrix(s, "2026-06")] == \
        [("acme", "bolt", 50)]
    assert trends.flow_matrix(s, "2026-04") == []


def test_breakage_in_points_and_eur_at_each_issuers_price(coalition):
    s = coalition
    rows = trends.breakage(s, PERIODS)
    # June (open): acme 30 x 0.015 (June's price) = 0.45, bolt 50 x 0.0125 = 0.625 -> 0.63,
    # coalition 20 x 0.008 = 0.16: 1.24 EUR, rounded per issuer.
    assert [(r.period, r.points, r.eur, r.closed) for r in rows] == [
        ("2026-05", 0, Decimal("0.00"), True), ("2026-06", 100, Decimal("1.24"), False)]
    assert all(isinstance(r.eur, Decimal) for r in rows)


def test_liability_is_what_members_hold_at_each_months_end(coalition):
    s = coalition
    rows = trends.liability(s, ["2026-04", *PERIODS, "2026-07"])
    # End of May: M2's 50 (bolt), M3's 30 (acme) and 20 (coalition): 0.63 + 0.39 + 0.16 EUR.
    # End of June: those expired; a4's 200 less the 50 burnt: 150 acme at 0.015 = 2.25 EUR.
    assert [(r.period, r.points, r.eur, r.closed) for r in rows] == [
        ("2026-04", 0, Decimal("0.00"), False), ("2026-05", 100, Decimal("1.18"), True),
        ("2026-06", 150, Decimal("2.25"), False), ("2026-07", 150, Decimal("2.25"), False)]
    held = s.scalar(select(func.sum(Member.balance)))
    assert held == s.scalar(select(func.sum(Lot.remaining))) == rows[-1].points


def test_active_members_and_enrolled_members(coalition):
    s = coalition
    rows = trends.active_members(s, ["2026-04", *PERIODS], now=JULY, tz=TZ)
    assert [(r.period, r.active_members, r.enrolled_members) for r in rows] == [
        ("2026-04", 0, 0), ("2026-05", 3, 3), ("2026-06", 3, 4)]
    # At the end of July the 90 days reach back to 2 May 22:00 UTC: M3's a2 (4 May) and M2's
    # a3 (20 May) are in; at the end of August (back to 2 June) only M1's June claims are,
    # and none at the end of September.
    later = trends.active_members(s, ["2026-07", "2026-08", "2026-09"],
                                  now=datetime(2026, 10, 1, 12, tzinfo=UTC), tz=TZ)
    assert [(r.active_members, r.enrolled_members) for r in later] == [(3, 4), (1, 4), (0, 4)]


def test_tier_distribution_is_each_members_tier_of_coalition_tiers(coalition):
    s = coalition
    # M1: a1 100 + a4 200 = 300 (Silver); M2: 50 + (40 - 40); M3: 30; M4: nothing (Blue).
    rows = trends.tier_distribution(s, TIERS, at=JULY, tz=TZ)
    assert [(r.tier, r.threshold, r.members) for r in rows] == [("Blue", 0, 3), ("Silver", 150, 1),
                                                                ("Gold", 1000, 0)]
    one_by_one = {}
    for member in s.scalars(select(Member)):
        name = tiering.of_member(s, TIERS, member.id, now=JULY, tz=TZ)["name"]
        one_by_one[name] = one_by_one.get(name, 0) + 1
    assert {r.tier: r.members for r in rows if r.members} == one_by_one
    # Before June's a4, M1 had 100: everyone Blue; M4 was not enrolled yet.
    assert [r.members for r in trends.tier_distribution(s, TIERS, at=at(6, 1), tz=TZ)] == [3, 0, 0]
    assert trends.tier_distribution(s, (), at=JULY, tz=TZ) == []


def test_an_earn_stops_counting_towards_the_tier_on_its_anniversary(coalition):
    """a1 (2 May 2026 in Berlin) counts through 1 May 2027: until 1 May 2027 22:00 UTC, Berlin's
    midnight. With Silver at 250, M1 (a1 100 + a4 200) is Silver until then, Blue from then on."""
    s = coalition
    silver = tiering.parse("Blue:0,Silver:250")
    before, after = datetime(2027, 5, 1, 21, 59, 59, tzinfo=UTC), datetime(2027, 5, 1, 22, tzinfo=UTC)
    # Berlin's 2 May 2026 begins at 1 May 22:00 UTC: counted before, no longer after.
    assert tiering.counted_from(before, TZ) == datetime(2026, 5, 1, 22, tzinfo=UTC)
    assert tiering.counted_from(after, TZ) == datetime(2026, 5, 2, 22, tzinfo=UTC)
    m1 = s.scalar(select(Member.id).where(Member.external_id == "M1"))
    for moment, expected in ((before, [3, 1]), (after, [4, 0])):
        assert [r.members for r in trends.tier_distribution(s, silver, at=moment, tz=TZ)] == expected
        assert tiering.of_member(s, silver, m1, now=moment, tz=TZ)["name"] == \
            ("Silver" if expected[1] else "Blue")
    # 29 February 2028 counts through 28 February 2029 (until 1 March): late on 28 February
    # 2029 it is the first day still counted; half an hour into 1 March it counts no more,
    # nor does 1 March 2028.
    assert tiering.counted_from(datetime(2029, 2, 28, 22, 30, tzinfo=UTC), TZ) == \
        datetime(2028, 2, 28, 23, tzinfo=UTC)  # 29 February 2028 in Berlin
    assert tiering.counted_from(datetime(2029, 2, 28, 23, 30, tzinfo=UTC), TZ) == \
        datetime(2028, 3, 1, 23, tzinfo=UTC)  # 2 March 2028 in Berlin


@pytest.mark.parametrize("tz", [TZ, "America/St_Johns", "Asia/Kolkata", "UTC"])
def test_counted_from_is_the_first_day_whose_earns_count(tz):
    """Every 7 hours and 13 minutes over two years (leap day, daylight saving changes): the
    day counted_from names counts (tiers.counts_until after the instant), the day before not."""
    moment = datetime(2027, 1, 1, tzinfo=UTC)
    while moment < datetime(2029, 1, 1, tzinfo=UTC):
        first = tiering.counted_from(moment, tz)
        assert tiering.counts_until(first, tz) > moment
        assert tiering.counts_until(first - timedelta(hours=12), tz) <= moment
        moment += timedelta(hours=7, minutes=13)


def test_claims_per_day_come_from_the_journal(coalition):
    s = coalition
    rows = trends.claims_per_day(s, date(2026, 5, 1), date(2026, 6, 30), tz=TZ)
    assert len(rows) == 61 and rows[0].day == date(2026, 5, 1)
    busy = {r.day: (r.earns, r.burns, r.reversals, r.accepted) for r in rows if r.accepted}
    assert busy == {date(2026, 5, 2): (1, 0, 0, 1), date(2026, 5, 3): (1, 0, 0, 1),
                    date(2026, 5, 4): (1, 0, 0, 1), date(2026, 5, 10): (0, 1, 0, 1),
                    date(2026, 5, 20): (1, 0, 0, 1), date(2026, 5, 21): (0, 0, 1, 1),
                    date(2026, 6, 10): (1, 0, 0, 1), date(2026, 6, 11): (0, 1, 0, 1)}
    # The expiry run's entries are no partner's claims.
    assert all(r.rejected == {} for r in rows)
    only_bolt = trends.claims_per_day(s, date(2026, 5, 1), date(2026, 6, 30), tz=TZ,
                                      partner_id="bolt")
    assert sum(r.accepted for r in only_bolt) == 3


def test_a_month_computed_open_equals_the_month_once_closed(coalition):
    s = coalition
    open_rows = (trends.issuance_and_redemption(s, ["2026-06"]), trends.breakage(s, ["2026-06"]),
                 trends.flow_matrix(s, "2026-06"), trends.liability(s, ["2026-06"]))
    close(s, "2026-06", at(7, 1, 6))
    closed_rows = (trends.issuance_and_redemption(s, ["2026-06"]), trends.breakage(s, ["2026-06"]),
                   trends.flow_matrix(s, "2026-06"), trends.liability(s, ["2026-06"]))

    def figures(rows):
        return [{k: v for k, v in trends.as_json([row])[0].items() if k != "closed"}
                for series in rows for row in series]
    assert figures(open_rows) == figures(closed_rows)
    assert all(row.closed for series in closed_rows if series and hasattr(series[0], "closed")
               for row in series)
    docs, report = documents(s, "2026-06")
    assert report["breakage"]["breakage_cents"] == 124 and report["breakage"]["points"] == 100
    assert {p: d["points_issued"] for p, d in docs.items()} == {"acme": 200, "bolt": 0,
                                                                "coalition": 0}


def test_figures_read_once_give_the_same_series(coalition):
    s = coalition
    figures = trends.figures_for(s, PERIODS)
    assert [f.closed for f in figures.values()] == [True, False]
    assert trends.issuance_and_redemption(s, PERIODS, figures=figures) == \
        trends.issuance_and_redemption(s, PERIODS)
    assert trends.breakage(s, PERIODS, figures=figures) == trends.breakage(s, PERIODS)
    assert trends.flow_matrix(s, "2026-05", figures=figures) == trends.flow_matrix(s, "2026-05")


def test_series_as_json_and_csv(coalition):
    s = coalition
    rows = trends.breakage(s, PERIODS)
    assert trends.as_json(rows) == [
        {"period": "2026-05", "points": 0, "eur": "0.00", "closed": True},
        {"period": "2026-06", "points": 100, "eur": "1.24", "closed": False}]
    assert trends.as_csv(rows) == ("period,points,eur,closed\n2026-05,0,0.00,true\n"
                                   "2026-06,100,1.24,false\n")
    assert json.loads(json.dumps(trends.as_json(trends.liability(s, PERIODS))))[1]["eur"] == "2.25"
    assert trends.as_csv([], ["period", "points"]) == "period,points\n"
    s.add(ClaimRejectCount(partner_id="acme", day=date(2026, 6, 10), slug="validation-error",
                           count=3))
    s.add(ClaimRejectCount(partner_id="bolt", day=date(2026, 6, 11), slug="insufficient-points",
                           count=2))
    s.add(ClaimRejectCount(partner_id="bolt", day=date(2026, 6, 10), slug="validation-error",
                           count=1))
    s.commit()
    first, last = date(2026, 6, 10), date(2026, 6, 12)
    days = trends.claims_per_day(s, first, last, tz=TZ, rejected=rejects.per_day(s, first, last))
    assert [(d.day, d.accepted, d.rejected, d.rejected_total) for d in days] == [
        (date(2026, 6, 10), 1, {"validation-error": 4}, 4),
        (date(2026, 6, 11), 1, {"insufficient-points": 2}, 2), (date(2026, 6, 12), 0, {}, 0)]
    assert trends.as_csv(days).splitlines() == [
        "day,earns,burns,reversals,rejected.insufficient-points,rejected.validation-error,"
        "accepted,rejected_total",
        "2026-06-10,1,0,0,0,4,1,4", "2026-06-11,0,1,0,2,0,1,2", "2026-06-12,0,0,0,0,0,0,0"]
    assert trends.as_json(days)[0]["rejected"] == {"validation-error": 4}
    assert rejects.per_day(s, first, first, partner_id="bolt") == {first: {"validation-error": 1}}
    assert rejects.per_day(s, last, last) == {}


def test_a_csv_cell_never_reads_as_a_formula(app):
    @__import__("dataclasses").dataclass(frozen=True)
    class Row:
        partner_id: str
        points: int
    assert trends.as_csv([Row("=HYPERLINK(1)", -5)]) == "partner_id,points\n'=HYPERLINK(1),-5\n"


# --- problem answers of the partner API, counted --------------------------------------------

def counted(app) -> dict[tuple[str, str], int]:
    with app.app_context():
        today = day_of(clock_now(), current_app.config["COALITION_TIMEZONE"])[0]
        return {(r.partner_id, r.slug): r.count for r in db.session.scalars(
            select(ClaimRejectCount).where(ClaimRejectCount.day == today))}


@pytest.fixture
def tally(monkeypatch):
    """A fresh tally of this test's own refusals without a jti, written at once."""
    fresh = rejects.Tally(every_s=0)
    monkeypatch.setattr(auth, "REJECTS", fresh)
    return fresh


def test_problem_answers_are_counted_by_partner_day_and_slug(app, acme, tally):
    assert acme.client.enrol("M1").status == 201
    assert acme.client.earn("e1", "M1", 10).status == 201
    assert acme.client.earn("e2", "M1", -5).status == 422  # validation-error
    assert acme.client.earn("e3", "M1", 0).status == 422
    assert acme.client.earn("e4", "NOBODY", 5).status == 404
    assert acme.client.burn("x1", "M1", 500).status == 422  # insufficient-points
    with app.test_client() as client:
        assert client.post("/v1/earn", json={}).status_code == 401  # no token
        assert client.post("/v1/earn", json={},
                           headers={"Authorization": "Bearer x.y.z"}).status_code == 401
    assert counted(app) == {("acme", "validation-error"): 2, ("acme", "not-found"): 1,
                            ("acme", "insufficient-points"): 1,
                            (UNAUTHENTICATED, "invalid-token"): 2}
    with app.app_context():
        today = day_of(clock_now(), TZ)[0]
        [day] = trends.claims_per_day(db.session, today, today, tz=TZ,
                                      rejected=rejects.per_day(db.session, today, today))
        assert (day.earns, day.rejected) == (1, {"insufficient-points": 1, "invalid-token": 2,
                                                 "not-found": 1, "validation-error": 2})
        [mine] = trends.claims_per_day(db.session, today, today, tz=TZ, partner_id="acme",
                                       rejected=rejects.per_day(db.session, today, today,
                                                                partner_id="acme"))
        assert (mine.earns, mine.rejected_total) == (1, 4)
    # A booked claim counts nothing.
    assert acme.client.earn("e5", "M1", 1).status == 201
    assert sum(counted(app).values()) == 6
    # A refusal commits what it recorded (the audited limit hit) with the count.
    assert acme.client.earn("r1", "M1", 5, activity="review").status == 201
    assert acme.client.earn("r2", "M1", 5, activity="review").status == 422  # one a day
    assert counted(app)[("acme", "limit-exceeded")] == 1
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AuditEvent)
                                 .where(AuditEvent.action == "member.limit-hit")) == 1


def test_refusals_without_a_jti_are_written_at_most_once_per_interval(app, acme, tally):
    """A flood of bad tokens costs no write each: the first is written at once, the rest
    wait in the process and are written, summed, by the first request once the interval is
    over."""
    tally.every_s = 3600
    with app.test_client() as client:
        for _ in range(5):
            assert client.post("/v1/earn", json={}).status_code == 401
    assert counted(app) == {(UNAUTHENTICATED, "invalid-token"): 1}
    tally.every_s = 0
    assert acme.client.enrol("M1").status == 201  # any request writes what is due
    assert counted(app) == {(UNAUTHENTICATED, "invalid-token"): 5}


def test_a_tally_gives_its_counts_once_when_due():
    tally = rejects.Tally(every_s=3600)
    day = date(2026, 6, 1)
    assert tally.due() == {}
    tally.add(("acme", day, "validation-error"))
    tally.add(("acme", day, "validation-error"))
    tally.add(("", day, "invalid-token"))
    assert tally.due() == {("acme", day, "validation-error"): 2, ("", day, "invalid-token"): 1}
    tally.add(("acme", day, "not-found"))
    assert tally.due() == {}  # written a moment ago: kept
    tally.every_s = 0
    assert tally.due() == {("acme", day, "not-found"): 1} and tally.due() == {}


def test_a_count_that_fails_leaves_the_answer_and_the_spent_jti_alone(app, acme, tally):
    """The counter table gone (say, before the migration ran): the problem is answered as
    ever and the token's jti is still spent with it."""
    assert acme.client.enrol("M1").status == 201
    with app.app_context():
        db.session.execute(text("ALTER TABLE claim_reject_counts RENAME TO claim_reject_counts_away"))
        db.session.commit()
    try:
        answer = acme.client.earn("e1", "M1", -5)
        assert answer.status == 422 and answer.json()["type"].endswith("validation-error")
        with app.app_context():
            spent = db.session.scalar(text("SELECT count(*) FROM used_tokens"))
        assert spent == 2  # the enrolment's and the refused earn's
    finally:
        with app.app_context():
            db.session.rollback()
            db.session.execute(text("ALTER TABLE claim_reject_counts_away RENAME TO claim_reject_counts"))
            db.session.commit()
    assert acme.client.earn("e2", "M1", -5).status == 422
    assert counted(app) == {("acme", "validation-error"): 1}


def test_claims_per_day_take_the_local_day(coalition):
    """a1 booked at 2 May 13:00 UTC is 2 May in Berlin; a claim booked at 22:30 UTC on 31 May
    is 1 June there (PostgreSQL takes the day in the query, SQLite row by row)."""
    s = coalition
    ledger.book_earn(s, partner_id="bolt", claim_id="late-night", member_id="M1", points=1,
                     occurred_at=at(5, 31, 22), now=datetime(2026, 5, 31, 22, 30, tzinfo=UTC),
                     rules=RULES)
    s.commit()
    rows = trends.claims_per_day(s, date(2026, 5, 31), date(2026, 6, 1), tz=TZ)
    assert [(r.day, r.earns) for r in rows] == [(date(2026, 5, 31), 0), (date(2026, 6, 1), 1)]
