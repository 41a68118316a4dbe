"""Bonus points booked with the earn (coalition/bonuses.py): campaigns, coupons and tier
multipliers, each a lot of its funder in the earn's own entry; reversals take the bonus back in
proportion; caps hold under concurrency."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from coalition import campaigns, coupons, ledger, tiers
from coalition.database import db
from coalition.members import balance, enrol, find
from coalition.models import Campaign, CouponActivation, DebtLot, Entry, Lot, Posting
from coalition.verify import verify
from partners import service as partner_service
from tests.conftest import ON_POSTGRES, ago, postgres_only

UTC = timezone.utc
TZ = "Europe/Berlin"


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output) if result.output.strip() else None


@pytest.fixture
def coalition(runner, acme, bolt):
    """The operator issuer, two partners (acme, bolt) and a member M1."""
    code, out = cli(runner, "partners", "add", "coalition", "--name", "Coalition", "--kind",
                    "operator")
    assert code == 0, out
    assert acme.client.enrol("M1").status == 201
    return runner


def campaign(runner, campaign_id, *extra, kind="multiplier", value="2", funder="acme",
             starts="2026-01-01", ends="2099-12-31"):
    code, out = cli(runner, "campaigns", "add", campaign_id, "--name", campaign_id, "--kind", kind,
                    "--value", value, "--from", starts, "--until", ends, "--funder", funder, *extra)
    assert code == 0, out
    return out


def earn(partner, claim_id, points, member="M1", **kw):
    response = partner.client.earn(claim_id, member, points, occurred_at=kw.pop("at", ago(minutes=1)),
                                   **kw)
    assert response.status == 201, response.body
    return response.json()


def lots_of(app, claim_id):
    with app.app_context():
        return [(lot.source, lot.issuer_id, lot.points, lot.remaining) for lot in db.session.scalars(
            select(Lot).join(Entry, Entry.id == Lot.entry_id).where(Entry.claim_id == claim_id)
            .order_by(Lot.id))]


def test_a_multiplier_books_the_bonus_as_a_lot_of_its_funder_in_the_same_entry(
        app, coalition, acme, verify_clean):
    campaign(coalition, "double", "--partners", "acme")
    answer = earn(acme, "e1", 120)
    assert (answer["points"], answer["bonus_points"]) == (120, 120)
    assert answer["bonuses"] == [{"type": "campaign", "id": "double", "funder": "acme",
                                  "points": 120}]
    assert answer["balance_after"] == 240 and answer["coupons_not_activated"] == []
    assert lots_of(app, "e1") == [(None, "acme", 120, 120), ("campaign:double", "acme", 120, 120)]
    with app.app_context():
        postings = dict(db.session.execute(select(Posting.account, Posting.points)
                                           .join(Entry).where(Entry.claim_id == "e1")).all())
        member = find(db.session, "M1")
        assert postings == {f"member:{member.id}": 240, "issued:acme": -120, "bonus:acme": -120}
        assert db.session.scalar(select(func.count(Entry.id))) == 1  # one entry
    # Replayed and read, the answer shows the same bonus.
    replay = acme.client.earn("e1", "M1", 120, occurred_at=answer["occurred_at"])
    assert replay.headers.get("idempotent-replayed") == "true"
    assert replay.json()["bonuses"] == answer["bonuses"]
    assert acme.client.claim("e1").json()["bonus_points"] == 120
    verify_clean()


def test_only_the_largest_multiplier_applies_and_fixed_bonuses_add(app, coalition, acme, bolt,
                                                                   verify_clean):
    campaign(coalition, "double", funder="acme")
    campaign(coalition, "triple", value="3", funder="coalition")
    campaign(coalition, "welcome", kind="fixed", value="25", funder="coalition")
    campaign(coalition, "bolt-only", kind="fixed", value="7", funder="bolt", *("--partners", "bolt"))
    answer = earn(acme, "e1", 50)
    assert sorted((b["id"], b["funder"], b["points"]) for b in answer["bonuses"]) == [
        ("triple", "coalition", 100), ("welcome", "coalition", 25)]
    assert answer["balance_after"] == 175
    answer = earn(bolt, "e2", 10)
    assert sorted(b["id"] for b in answer["bonuses"]) == ["bolt-only", "triple", "welcome"]
    verify_clean()


def test_a_multiplier_rounds_down(app, coalition, acme):
    campaign(coalition, "half-again", value="1.5")
    assert earn(acme, "e1", 7)["bonus_points"] == 3  # 3.5, the funder never pays for half a point
    assert earn(acme, "e2", 1)["bonuses"] == []  # 0.5 rounds to nothing: no bonus lot
    assert lots_of(app, "e2") == [(None, "acme", 1, 1)]


def test_the_window_is_berlins_days_across_the_dst_change(app, coalition):
    """2026-03-29: Berlin's clocks go from 02:00 to 03:00, the day has 23 hours; its local
    midnight is 23:00 UTC the day before, its end 22:00 UTC."""
    campaign(coalition, "sunday", "--partners", "acme", starts="2026-03-29", ends="2026-03-29")
    rules = app.config["LEDGER_RULES"]
    moments = {"before": datetime(2026, 3, 28, 22, 59, 59, tzinfo=UTC),
               "first": datetime(2026, 3, 28, 23, 0, tzinfo=UTC),
               "after-change": datetime(2026, 3, 29, 1, 30, tzinfo=UTC),
               "last": datetime(2026, 3, 29, 21, 59, 59, tzinfo=UTC),
               "after": datetime(2026, 3, 29, 22, 0, tzinfo=UTC)}
    got = {}
    with app.app_context():
        for name, at in moments.items():
            booked = ledger.book_earn(db.session, partner_id="acme", claim_id=name,
                                      member_id="M1", points=10, occurred_at=at,
                                      now=datetime(2026, 3, 30, 12, tzinfo=UTC), rules=rules)
            db.session.commit()
            got[name] = booked.award.points
    assert got == {"before": 0, "first": 10, "after-change": 10, "last": 10, "after": 0}


def test_caps_per_member_and_in_all_cut_the_bonus(app, coalition, acme):
    campaign(coalition, "capped", "--cap-per-member", "150", "--cap-total", "250")
    assert acme.client.enrol("M2").status == 201
    assert earn(acme, "a1", 100)["bonus_points"] == 100
    assert earn(acme, "a2", 100)["bonus_points"] == 50  # M1 reaches 150
    assert earn(acme, "a3", 100)["bonuses"] == []
    assert earn(acme, "b1", 100, member="M2")["bonus_points"] == 100  # 250 in all
    assert earn(acme, "b2", 100, member="M2")["bonuses"] == []
    with app.app_context():
        assert db.session.get(Campaign, "capped").awarded == 250


def test_a_capped_out_multiplier_gives_way_to_the_next(app, coalition, acme):
    campaign(coalition, "triple", "--cap-per-member", "20", value="3")
    campaign(coalition, "double", value="2")
    assert earn(acme, "a1", 10)["bonuses"][0]["id"] == "triple"  # 20
    assert [(b["id"], b["points"]) for b in earn(acme, "a2", 10)["bonuses"]] == [("double", 10)]


def test_targeting_by_tier(app, coalition, acme, monkeypatch):
    rules = app.config["LEDGER_RULES"]
    app.config["LEDGER_RULES"] = replace(rules, tiers=tiers.parse("Blue:0,Gold:500"))
    campaign(coalition, "gold-double", "--tiers", "Gold")
    assert earn(acme, "a1", 400)["bonuses"] == []  # Blue when booked
    assert earn(acme, "a2", 100)["bonuses"] == []  # still Blue: 400 counted before this earn
    assert earn(acme, "a3", 10)["bonus_points"] == 10  # Gold now


def test_a_tier_multiplier_is_paid_by_the_coalition(app, coalition, acme, verify_clean):
    rules = app.config["LEDGER_RULES"]
    app.config["LEDGER_RULES"] = replace(rules, tiers=tiers.parse("Blue:0,Silver:100:1.5"))
    assert earn(acme, "a1", 100)["bonuses"] == []
    answer = earn(acme, "a2", 11)
    assert answer["bonuses"] == [{"type": "tier", "id": "Silver", "funder": "coalition",
                                  "points": 5}]
    assert lots_of(app, "a2")[1] == ("tier:Silver", "coalition", 5, 5)
    verify_clean()


def test_a_coupon_gives_its_bonus_once_and_only_when_activated_before_the_purchase(
        app, coalition, acme, bolt, verify_clean):
    code, _ = cli(coalition, "coupons", "add", "spring", "--partner", "acme", "--name", "Spring",
                  "--kind", "fixed", "--value", "50", "--from", "2026-01-01", "--until", "2099-12-31")
    assert code == 0
    first = earn(acme, "a1", 10)
    assert first["bonuses"] == [] and first["coupons_not_activated"] == ["spring"]
    assert bolt.client.activate_coupon("M1", "spring").status == 201
    # A purchase well before the activation (beyond 5 minutes' clock skew), sent now, gets nothing.
    assert earn(acme, "a2", 10, at=ago(minutes=6))["coupons_not_activated"] == ["spring"]
    assert earn(bolt, "b1", 10)["bonuses"] == []  # another partner's earn: not this coupon
    second = earn(acme, "a3", 10)
    assert second["bonuses"] == [{"type": "coupon", "id": "spring", "funder": "acme", "points": 50}]
    assert second["coupons_not_activated"] == []
    assert earn(acme, "a4", 10)["bonuses"] == []  # once
    with app.app_context():
        used = db.session.scalars(select(CouponActivation.entry_id)).one()
        assert db.session.get(Entry, used).claim_id == "a3"
    verify_clean()


def test_a_pending_earn_holds_its_bonus_back_too(app, coalition, acme):
    campaign(coalition, "double")
    answer = earn(acme, "p1", 40, pending_until=(datetime.now(UTC) + timedelta(days=3)))
    assert answer["status"] == "pending" and answer["bonus_points"] == 40
    with app.app_context():
        view = balance(db.session, "M1", now=datetime.now(UTC), tz=TZ)
        assert (view["available"], view["pending"]) == (0, 80)


def test_a_reversal_takes_the_bonus_back_in_proportion_and_parts_add_up(app, coalition, acme,
                                                                         verify_clean):
    campaign(coalition, "half-again", value="1.5", funder="coalition")
    assert earn(acme, "e1", 100)["bonus_points"] == 50
    taken = []
    for rid, points in (("r1", 33), ("r2", 33), ("r3", 34)):
        assert acme.client.reverse("e1", rid, points, occurred_at=ago(seconds=30)).status == 201
        with app.app_context():
            taken.append(-db.session.scalar(
                select(func.sum(Posting.points)).join(Entry)
                .where(Entry.claim_id == rid, Posting.account == "bonus:coalition")) or 0)
    # round_half_up(50 x 33/100) = 17, then 33 - 17 = 16, then 50 - 33 = 17: 50 in all
    assert taken == [-17, -16, -17]
    assert lots_of(app, "e1") == [(None, "acme", 100, 0), ("campaign:half-again", "coalition", 50, 0)]
    verify_clean()


def test_a_spent_bonus_reversed_becomes_a_debt_to_its_funder_and_is_paid_back_first(
        app, coalition, acme, bolt, verify_clean):
    campaign(coalition, "double", funder="coalition", starts="2026-01-01", ends="2026-01-02")
    with app.app_context():
        # The campaign ran yesterday in this test's world: book the earn with that clock.
        db.session.execute(Campaign.__table__.update().values(
            starts_at=datetime.now(UTC) - timedelta(days=1),
            ends_at=datetime.now(UTC) - timedelta(minutes=3)))
        db.session.commit()
    assert earn(acme, "e1", 100, at=ago(minutes=5))["bonus_points"] == 100
    assert bolt.client.burn("b1", "M1", 200, occurred_at=ago(minutes=2)).status == 201
    assert acme.client.reverse("e1", "r1", 100, occurred_at=ago(minutes=1)).status == 201
    with app.app_context():
        debts = sorted(db.session.execute(select(DebtLot.creditor_id, DebtLot.points)).all())
        assert [tuple(d) for d in debts] == [("acme", 100), ("coalition", 100)]
    # The burn reversed: each lot's points pay its own issuer's debt first.
    assert bolt.client.reverse("b1", "rb1", 200, occurred_at=ago(seconds=30)).status == 201
    with app.app_context():
        left = db.session.execute(select(DebtLot.creditor_id, DebtLot.remaining)).all()
        assert sorted(tuple(d) for d in left) == [("acme", 0), ("coalition", 0)]
        assert find(db.session, "M1").debt == 0
    verify_clean()


def test_a_batch_books_bonuses_and_counts_its_own_earns_against_caps_and_coupons(
        app, coalition, acme, verify_clean):
    campaign(coalition, "capped", "--cap-per-member", "30")
    code, _ = cli(coalition, "coupons", "add", "c1", "--partner", "acme", "--name", "C1",
                  "--kind", "fixed", "--value", "5", "--from", "2026-01-01", "--until", "2099-12-31")
    assert code == 0 and acme.client.activate_coupon("M1", "c1").status == 201
    at = ago(seconds=10)
    items = [{"kind": "earn", "claim_id": f"x{i}", "member_id": "M1", "points": 20,
              "occurred_at": at} for i in range(3)]
    response = acme.client.batch(items)
    assert response.status == 200, response.body
    bodies = [r["body"] for r in response.json()["results"]]
    assert [sorted((b["id"], b["points"]) for b in body["bonuses"]) for body in bodies] == [
        [("c1", 5), ("capped", 20)], [("capped", 10)], []]
    assert [body["balance_after"] for body in bodies] == [45, 75, 95]
    verify_clean()


def test_verify_notices_a_bonus_lot_that_does_not_match_its_posting(app, coalition, acme):
    campaign(coalition, "double")
    earn(acme, "e1", 10)
    with app.app_context():
        db.session.execute(Lot.__table__.update().where(Lot.source.is_not(None))
                           .values(points=11, remaining=11))
        db.session.commit()
        report = verify(db.session)
    assert "lot-origin" in report["violations_by_check"]


# --- concurrency (PostgreSQL) ------------------------------------------------------------------

@postgres_only
def test_a_total_cap_holds_when_many_members_earn_at_once(app, coalition, acme):
    campaign(coalition, "rush", "--cap-total", "1000")
    cards = [f"R{i}" for i in range(24)]
    with app.app_context():
        for card in cards:
            enrol(db.session, card, now=datetime.now(UTC))
        db.session.commit()
    rules = app.config["LEDGER_RULES"]
    start = threading.Barrier(len(cards))

    def one(card):
        with app.app_context():
            start.wait()
            booked = ledger.book_earn(db.session, partner_id="acme", claim_id=f"c-{card}",
                                      member_id=card, points=70, occurred_at=datetime.now(UTC),
                                      now=datetime.now(UTC), rules=rules)
            db.session.commit()
            return booked.award.points

    with ThreadPoolExecutor(len(cards)) as pool:
        given = list(pool.map(one, cards))
    # 24 earns of 70 would give 1680; the cap lets exactly 1000 through, one earn cut short.
    assert sum(given) == 1000 and sorted(set(given)) in ([0, 20, 70], [0, 70], [20, 70])
    with app.app_context():
        assert db.session.get(Campaign, "rush").awarded == 1000
        assert db.session.scalar(select(func.sum(Lot.points))
                                 .where(Lot.source == "campaign:rush")) == 1000
        assert verify(db.session)["ok"]


@postgres_only
def test_a_coupon_activation_racing_an_earn_gives_the_bonus_once_or_not_at_all(app, coalition,
                                                                             acme):
    rules = app.config["LEDGER_RULES"]
    outcomes = set()
    for round_ in range(12):
        coupon_id = f"race{round_}"
        card = f"C{round_}"
        with app.app_context():
            enrol(db.session, card, now=datetime.now(UTC))
            coupons.publish(db.session, coupon_id, partner_id="acme", name="Race", kind="fixed",
                            value="9", starts="2026-01-01", ends="2099-12-31", funder="acme",
                            issuers={"acme", "bolt", "coalition"}, published_by="operator",
                            now=datetime.now(UTC) - timedelta(minutes=1), tz=TZ)
            db.session.commit()
        purchase = datetime.now(UTC) + timedelta(seconds=1)  # activations come before it
        start = threading.Barrier(3)

        def activate():
            with app.app_context():
                start.wait()
                coupons.activate(db.session, coupon_id, card, channel="partner:acme",
                                 now=datetime.now(UTC))
                db.session.commit()

        def book(claim_id):
            with app.app_context():
                start.wait()
                booked = ledger.book_earn(db.session, partner_id="acme", claim_id=claim_id,
                                          member_id=card, points=10, occurred_at=purchase,
                                          now=datetime.now(UTC), rules=rules)
                db.session.commit()
                return booked.award.points

        with ThreadPoolExecutor(3) as pool:
            activation = pool.submit(activate)
            earns = [pool.submit(book, f"{card}-{n}") for n in range(2)]
            activation.result()
            given = sorted(e.result() for e in earns)
        assert given in ([0, 0], [0, 9]), given  # never twice
        outcomes.add(tuple(given))
        with app.app_context():
            used = db.session.scalar(select(CouponActivation.entry_id)
                                     .where(CouponActivation.coupon_id == coupon_id))
            bonus_lots = db.session.scalar(select(func.count(Lot.id))
                                           .where(Lot.source == f"coupon:{coupon_id}"))
            assert bonus_lots == (1 if given == [0, 9] else 0)
            assert (used is not None) == (bonus_lots == 1)
    with app.app_context():
        assert verify(db.session)["ok"]


@postgres_only
def test_the_lock_statement_reads_the_offers_that_bonuses_would_read_itself(app, coalition, acme,
                                                                            bolt):
    """On PostgreSQL an earn's lock statement also reads the running campaigns and coupons
    (claim_sql); the ORM reading (SQLite, batches, a member changed while waiting) must agree."""
    from coalition import bonuses, claim_sql
    campaign(coalition, "double", "--partners", "acme", value="1.5")
    campaign(coalition, "five", kind="fixed", value="5", funder="coalition", starts="2026-02-01")
    campaign(coalition, "over", ends="2026-03-01")  # ended: not offered
    for coupon_id, partner in (("used", "acme"), ("fresh", "acme"), ("late", "acme"),
                               ("never", "acme"), ("elsewhere", "bolt")):
        code, out = cli(coalition, "coupons", "add", coupon_id, "--partner", partner, "--name",
                        coupon_id, "--kind", "multiplier" if coupon_id == "fresh" else "fixed",
                        "--value", "1.25" if coupon_id == "fresh" else "7",
                        "--from", "2026-01-01", "--until", "2099-12-31")
        assert code == 0, out
    for coupon_id in ("used", "fresh", "elsewhere"):
        assert acme.client.activate_coupon("M1", coupon_id).status == 201
    earn(acme, "spends-used", 10)  # uses 'used' (and 'fresh')
    assert bolt.client.activate_coupon("M1", "late").status == 201
    with app.app_context():
        session = db.session
        now = datetime.now(UTC)
        occurred = now - timedelta(minutes=1)
        member = find(session, "M1")
        late = session.scalars(select(CouponActivation).where(
            CouponActivation.coupon_id == "late")).one()
        late.activated_at = occurred + timedelta(minutes=5, seconds=1)  # past the skew
        session.commit()
        holder, known = claim_sql.lock_with_situation(
            session, "M1", burn=False, partner_id="acme", claim_id="new", now=now,
            occurred_at=occurred)
        assert holder.id == member.id and known.offers is not None
        read = bonuses._offers(session, member.id, "acme", occurred)
        session.rollback()
    assert known.offers == read
    assert [(c.id, c.factor, c.bonus_points) for c in read.campaigns] == [
        ("double", Decimal("1.5"), None), ("five", None, 5)]
    assert [(c.id, c.factor, c.activation_id is not None, c.in_time, c.used)
            for c in read.coupons] == [
        ("fresh", Decimal("1.25"), True, True, True), ("late", None, True, False, False),
        ("never", None, False, False, False), ("used", None, True, True, True)]


@postgres_only
def test_an_earn_waiting_for_the_member_sees_the_activation_committed_meanwhile(app, coalition,
                                                                              acme):
    """The earn's lock statement reads the coupons in a snapshot taken before it waits for the
    member's row: an activation committed while it waits must still count (activating makes a
    new version of the member's row, so the earn reads its offers again)."""
    rules = app.config["LEDGER_RULES"]
    with app.app_context():
        coupons.publish(db.session, "waited", partner_id="acme", name="Waited", kind="fixed",
                        value="9", starts="2026-01-01", ends="2099-12-31", funder="acme",
                        issuers={"acme", "bolt", "coalition"}, published_by="operator",
                        now=datetime.now(UTC) - timedelta(minutes=1), tz=TZ)
        db.session.commit()
    purchase = datetime.now(UTC) + timedelta(seconds=2)
    activating, earning = threading.Event(), threading.Event()
    result = {}

    def book():
        with app.app_context():
            activating.wait()
            earning.set()
            booked = ledger.book_earn(db.session, partner_id="acme", claim_id="waits",
                                      member_id="M1", points=10, occurred_at=purchase,
                                      now=datetime.now(UTC), rules=rules)
            db.session.commit()
            result["award"] = booked.award

    thread = threading.Thread(target=book)
    thread.start()
    with app.app_context():
        coupons.activate(db.session, "waited", "M1", channel="partner:acme",
                         now=datetime.now(UTC))  # holds the member's row from here
        activating.set()
        earning.wait()
        time.sleep(0.5)  # the earn has taken its snapshot and waits for the row
        assert thread.is_alive()
        db.session.commit()
    thread.join(10)
    assert result["award"].points == 9 and result["award"].not_activated == []
