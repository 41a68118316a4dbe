"""POST /v1/batches: many claims and enrolments in one signed request, each answered as alone."""
from __future__ import annotations

import json
import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select

from coalition.batch import MAX_ITEMS
from coalition.database import db
from coalition.models import Entry, Member
from partners.models import MemberLookup
from partners import service as partner_service
from tests.conftest import ago, await_lock_wait, postgres_only

T = ago(minutes=10)  # one instant: items sent twice carry identical content


def earn(claim_id, card, points, **more):
    return {"kind": "earn", "claim_id": claim_id, "member_id": card, "points": points,
            "occurred_at": T, **more}


def burn(claim_id, card, points, **more):
    return {"kind": "burn", "claim_id": claim_id, "member_id": card, "points": points,
            "occurred_at": T, **more}


def reversal(claim_id, reversal_id, points):
    return {"kind": "reversal", "claim_id": claim_id, "reversal_id": reversal_id,
            "points": points, "occurred_at": T}


def enrolment(card):
    return {"kind": "enrolment", "member_id": card}


def results(response) -> list[dict]:
    assert response.status == 200, response.json()
    return response.json()["results"]


def count(app, model=Entry) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


def slugs(items: list[dict]) -> list:
    return [r["body"]["type"].rsplit("/", 1)[1] if r["status"] >= 400 else r["status"]
            for r in items]


def test_mixed_kinds_are_answered_in_order_as_each_would_be_alone(app, acme, verify_clean):
    assert acme.client.enrol("M1").status == 201
    answer = results(acme.client.batch([
        enrolment("M2"), enrolment("M1"),
        earn("e1", "M1", 100), earn("e2", "M2", 50, description="welcome"),
        burn("b1", "M1", 30), reversal("e2", "e2-r", 20), burn("b2", "M2", 30),
        earn("e3", "M1", 5, pending_until=ago(minutes=-60)),
    ]))
    assert [r["status"] for r in answer] == [201, 200, 201, 201, 201, 201, 201, 201]
    assert answer[0]["body"]["member_id"] == "M2" and answer[1]["body"]["member_id"] == "M1"
    claims = [r["body"] for r in answer[2:]]
    assert [(c["claim_id"], c["kind"], c["member_id"], c["balance_after"]) for c in claims] == [
        ("e1", "earn", "M1", 100), ("e2", "earn", "M2", 50), ("b1", "burn", "M1", 70),
        ("e2-r", "reversal", "M2", 30), ("b2", "burn", "M2", 0), ("e3", "earn", "M1", 70)]
    assert claims[1]["description"] == "welcome" and claims[3]["reverses"] == "e2"
    assert claims[5]["status"] == "pending"
    assert not any(r["replayed"] for r in answer)
    # What the batch booked is what reading it back answers.
    for c in claims:
        alone = acme.client.claim(c["claim_id"]).json()
        # coupons_not_activated: the answer to a booking only, not to reading it back
        differ = ("status", "reversed_points", "coupons_not_activated")
        assert {k: alone[k] for k in c if k not in differ} == \
            {k: c[k] for k in c if k not in differ}
    assert acme.client.balance("M1").json()["available"] == 70
    assert acme.client.balance("M1").json()["pending"] == 5
    assert acme.client.balance("M2").json()["available"] == 0
    verify_clean()


def test_refused_items_book_nothing_and_the_others_are_booked(app, acme, verify_clean):
    acme.client.enrol("M1")
    answer = results(acme.client.batch([
        earn("e1", "M1", 100),
        earn("e2", "nobody", 10),                        # unknown member
        burn("b1", "M1", 500),                           # more than available
        earn("e3", "M1", "100"),                         # a string for points
        {"kind": "earn", "claim_id": "e4", "member_id": "M1", "points": 1, "occurred_at": T,
         "colour": "red"},                               # an unknown field
        {"kind": "refund"}, ["not", "an", "object"],     # no such kind; not an object
        earn("e1", "M1", 99),                            # the claim id again, other content
        reversal("missing", "r1", 5),                    # no such claim
        reversal("e1", "r2", 500),                       # more than the claim
        burn("b2", "M1", 60),
        {"kind": "earn", "claim_id": "e5", "member_id": "M1", "points": 1,
         "occurred_at": ago(days=400)},                  # too old
    ]))
    assert slugs(answer) == [201, "not-found", "insufficient-points", "validation-error",
                             "validation-error", "validation-error", "validation-error",
                             "claim-id-conflict", "not-found", "reversal-exceeds-claim", 201,
                             "validation-error"]
    assert answer[3]["body"]["errors"] == [{"pointer": "/points", "detail": "Must be an integer."}] \
        or answer[3]["body"]["errors"][0]["pointer"] == "/points"
    assert answer[4]["body"]["errors"][0]["pointer"] == "/colour"
    assert answer[5]["body"]["errors"][0]["pointer"] == "/kind"
    assert answer[11]["body"]["errors"][0]["pointer"] == "/occurred_at"
    assert answer[2]["body"]["detail"] == "The member has 100 points available; 500 requested."
    assert count(app) == 2  # e1 and b2
    assert acme.client.balance("M1").json()["available"] == 40
    assert acme.client.claim("e3").status == 404
    verify_clean()


def test_a_resent_batch_books_nothing_twice(app, acme, verify_clean):
    acme.client.enrol("M1")
    acme.client.earn("before", "M1", 10, occurred_at=T)
    batch = [enrolment("M2"), earn("e1", "M1", 100), burn("b1", "M1", 40), earn("e2", "M2", 7),
             reversal("e1", "e1-r", 10), earn("before", "M1", 10), burn("b9", "M2", 1000)]
    first_answer = acme.client.batch(batch)
    first = results(first_answer)
    assert slugs(first) == [201, 201, 201, 201, 201, 201, "insufficient-points"]
    assert first_answer.json()["summary"] == {
        "booked": 4, "replayed": 1, "enrolled": 1, "existing": 0, "refused": 1}
    assert [r["replayed"] for r in first] == [False] * 5 + [True, False]
    entries, balance = count(app), acme.client.balance("M1").json()
    assert acme.client.batch(batch).json()["summary"] == {
        "booked": 0, "replayed": 5, "enrolled": 0, "existing": 1, "refused": 1}
    second = results(acme.client.batch(batch))  # after a timeout, say
    assert slugs(second) == [200, 201, 201, 201, 201, 201, "insufficient-points"]
    assert [r["replayed"] for r in second] == [False, True, True, True, True, True, False]
    assert [r["body"] for r in second[1:6]] == [r["body"] for r in first[1:6]]
    assert count(app) == entries and acme.client.balance("M1").json() == balance
    verify_clean()


def test_a_claim_id_twice_in_one_batch_replays_the_first(app, acme, verify_clean):
    acme.client.enrol("M1")
    answer = results(acme.client.batch([earn("e1", "M1", 10), earn("e1", "M1", 10),
                                         earn("e1", "M1", 11)]))
    assert slugs(answer) == [201, 201, "claim-id-conflict"]
    assert [r["replayed"] for r in answer] == [False, True, False]
    assert answer[1]["body"] == answer[0]["body"]
    assert count(app) == 1
    verify_clean()


def test_a_card_enrolled_by_the_batch_is_unknown_to_the_items_before_it(app, acme):
    answer = results(acme.client.batch([earn("e1", "M9", 10), enrolment("M9"),
                                        earn("e2", "M9", 10), enrolment("M9")]))
    assert slugs(answer) == ["not-found", 201, 201, 200]
    assert answer[1]["body"]["created_at"] == answer[3]["body"]["created_at"]
    assert acme.client.balance("M9").json()["available"] == 10


def test_a_batch_gives_the_same_answers_as_single_requests(app, acme, bolt, verify_clean):
    """A random sequence of earns, burns and reversals, sent once as one batch by one partner
    and once as single requests by another over other members: the same answers."""
    rng = random.Random(20261205)
    cards = [f"C{i}" for i in range(5)]
    items, claims = [], []
    for n in range(120):
        roll = rng.random()
        if roll < 0.5 or not claims:
            items.append(earn(f"x{n}", rng.choice(cards), rng.randint(1, 80)))
            claims.append(f"x{n}")
        elif roll < 0.85:
            items.append(burn(f"x{n}", rng.choice(cards), rng.randint(1, 120)))
            claims.append(f"x{n}")
        else:
            items.append(reversal(rng.choice(claims), f"x{n}", rng.randint(1, 40)))
    for card in cards:
        acme.client.enrol("A-" + card)
        bolt.client.enrol("B-" + card)

    def as_partner(item, prefix):
        return {**item, "member_id": prefix + item["member_id"]} if "member_id" in item else item

    batch = results(acme.client.batch([as_partner(i, "A-") for i in items]))
    alone = []
    for item in (as_partner(i, "B-") for i in items):
        fields = {k: v for k, v in item.items() if k != "kind"}
        if item["kind"] == "reversal":
            r = bolt.client.reverse(fields["claim_id"], fields["reversal_id"], fields["points"],
                                    occurred_at=T)
        else:
            r = bolt.client.request("POST", f"/v1/{item['kind']}", fields)
        alone.append((r.status, r.json()))

    def comparable(status, body):
        if status >= 400:
            return status, body["type"], body["detail"].replace("B-", "")
        return status, body["kind"], body["points"], body["balance_after"], body["status"]
    assert [comparable(r["status"], r["body"]) for r in batch] == \
        [comparable(s, b) for s, b in alone]
    assert Counter(r["status"] for r in batch)[201] > 60  # the sequence did book things
    for card in cards:
        assert acme.client.balance("A-" + card).json()["available"] == \
            bolt.client.balance("B-" + card).json()["available"]
    verify_clean()


def test_burns_in_one_batch_count_towards_the_daily_limit(app, acme):
    with app.app_context():
        partner_service.set_policy(db.session, "acme", daily_redeem_limit="100",
                                   now=datetime.now(timezone.utc))
        db.session.commit()
    acme.client.enrol("M1")
    answer = results(acme.client.batch([earn("e1", "M1", 500), burn("b1", "M1", 60),
                                        burn("b2", "M1", 60), burn("b3", "M1", 40)]))
    assert slugs(answer) == [201, 201, "limit-exceeded", 201]
    assert acme.client.balance("M1").json()["available"] == 400


def test_a_wrong_pin_is_refused_and_counted_and_the_rest_is_booked(app, acme):
    with app.app_context():
        partner_service.set_policy(db.session, "acme", redeem_auth="pin", pin_above="10",
                                   now=datetime.now(timezone.utc))
        db.session.commit()
    acme.client.enrol("M1")
    assert acme.client.set_pin("M1", "4711").status == 204
    answer = results(acme.client.batch([
        earn("e1", "M1", 100), burn("b1", "M1", 50, member_pin="0000"), burn("b2", "M1", 5),
        burn("b3", "M1", 50), burn("b4", "M1", 50, member_pin="4711")]))
    assert slugs(answer) == [201, "member-auth-invalid", 201, "member-auth-required", 201]
    with app.app_context():
        member = db.session.scalars(select(Member).where(Member.external_id == "M1")).one()
        assert member.pin_failures == 0  # the right PIN at b4 cleared the failure of b1
        assert member.balance == 45


def test_five_wrong_pins_in_one_batch_lock_the_member_for_the_items_after(app, acme):
    with app.app_context():
        partner_service.set_policy(db.session, "acme", redeem_auth="pin", pin_above="0",
                                   now=datetime.now(timezone.utc))
        db.session.commit()
    acme.client.enrol("M1")
    acme.client.set_pin("M1", "4711")
    acme.client.earn("e1", "M1", 100, occurred_at=T)
    answer = results(acme.client.batch(
        [burn(f"b{i}", "M1", 1, member_pin="0000") for i in range(5)]
        + [burn("b9", "M1", 1, member_pin="4711")]))
    assert slugs(answer) == ["member-auth-invalid"] * 4 + ["member-locked"] * 2
    assert acme.client.balance("M1").json()["available"] == 100


def test_unknown_cards_in_a_batch_count_as_lookups(app, acme):
    answer = results(acme.client.batch([earn(f"e{i}", f"guess-{i}", 1) for i in range(3)]))
    assert slugs(answer) == ["not-found"] * 3
    with app.app_context():
        unknown = db.session.scalar(select(func.count()).select_from(MemberLookup)
                                    .where(MemberLookup.member_id.is_(None)))
    assert unknown == 3


def test_a_batch_over_the_limit_is_refused_whole(app, acme):
    acme.client.enrol("M1")
    answer = acme.client.batch([earn(f"e{i}", "M1", 1) for i in range(MAX_ITEMS + 1)])
    assert answer.status == 422
    problem = answer.json()
    assert problem["type"].endswith("/validation-error")
    assert problem["errors"] == [{"pointer": "/claims",
                                  "detail": f"Must hold 1 to {MAX_ITEMS} items."}]
    assert acme.client.batch([]).status == 422
    assert results(acme.client.batch([earn(f"e{i}", "M1", 1) for i in range(MAX_ITEMS)]))[-1][
        "status"] == 201
    assert count(app) == MAX_ITEMS


def test_a_batch_over_the_byte_limit_is_413_before_any_work(app, acme):
    acme.client.enrol("M1")
    big = [earn(f"e{i}", "M1", 1, description="x" * 500) for i in range(MAX_ITEMS)]
    big[0]["description"] = "y" * (app.config["MAX_CONTENT_LENGTH"])
    answer = acme.client.batch(big)
    assert answer.status == 413
    assert answer.json()["type"].endswith("/payload-too-large")
    assert count(app) == 0


def test_the_batch_envelope_is_strict(app, acme):
    assert acme.client.request("POST", "/v1/batches", {"claims": [], "x": 1}).status == 422
    assert acme.client.request("POST", "/v1/batches", {"items": []}).status == 422
    assert acme.client.request("POST", "/v1/batches", {"claims": {"a": 1}}).status == 422


def test_a_batch_token_cannot_be_replayed(app, acme):
    acme.client.enrol("M1")
    body = json.dumps({"claims": [earn("e1", "M1", 10)]}).encode()
    headers = acme.client.sign("POST", "/v1/batches", body)
    with app.test_client() as client:
        first = client.post("/v1/batches", data=body, headers=headers)
        second = client.post("/v1/batches", data=body, headers=headers)
    assert first.status_code == 200
    assert second.status_code == 401 and second.json["type"].endswith("/token-replayed")


# --- PostgreSQL: concurrent batches ----------------------------------------------------------

@postgres_only
def test_concurrent_batches_over_overlapping_members_neither_deadlock_nor_lose_points(
        app, acme, bolt, verify_clean):
    """Eight batches at once, each over the same twenty members in its own shuffled order
    (earns, then burns that the earns make possible): every batch is answered, every point is
    where it belongs."""
    cards = [f"M{i}" for i in range(20)]
    assert slugs(results(acme.client.batch([enrolment(c) for c in cards]))) == [201] * 20
    senders = [acme, bolt] * 4
    barrier = threading.Barrier(len(senders))

    def send(n):
        rng = random.Random(n)
        order = cards[:]
        rng.shuffle(order)
        items = [earn(f"b{n}-e-{c}", c, 10 + n) for c in order]
        items += [burn(f"b{n}-b-{c}", c, 5) for c in reversed(order)]
        barrier.wait()
        return results(senders[n].client.batch(items))

    with ThreadPoolExecutor(len(senders)) as pool:
        answers = list(pool.map(send, range(len(senders))))
    assert all(r["status"] == 201 for answer in answers for r in answer)
    earned = sum(10 + n for n in range(len(senders)))
    for card in cards:
        assert acme.client.balance(card).json()["available"] == earned - 5 * len(senders)
    assert count(app) == 2 * len(cards) * len(senders)
    verify_clean()


@postgres_only
def test_concurrent_batches_and_single_burns_never_overspend(app, acme, bolt, verify_clean):
    acme.client.enrol("M1")
    acme.client.earn("e0", "M1", 1000, occurred_at=T)
    barrier = threading.Barrier(6)

    def send(n):
        barrier.wait()
        if n < 3:
            return [r["status"] for r in results(
                bolt.client.batch([burn(f"batch{n}-{i}", "M1", 70) for i in range(5)]))]
        return [acme.client.burn(f"single{n}-{i}", "M1", 70, occurred_at=T).status
                for i in range(5)]
    with ThreadPoolExecutor(6) as pool:
        statuses = [s for answer in pool.map(send, range(6)) for s in answer]
    assert Counter(statuses) == {201: 14, 422: 16}
    assert acme.client.balance("M1").json()["available"] == 1000 - 14 * 70
    verify_clean()


@postgres_only
def test_a_claim_id_raced_by_a_single_request_is_answered_as_a_retry_would(app, acme):
    """A single earn books claim id `raced` for M1 while a batch books it for M2: the batch
    waits on the claim key, loses, runs again and answers that item 409; the rest is booked."""
    from sqlalchemy.orm import Session

    from coalition import ledger
    for card in ("M1", "M2"):
        acme.client.enrol(card)
    now = datetime.now(timezone.utc)
    with app.app_context():
        winner = Session(db.engine)
        try:
            ledger.book_earn(winner, partner_id="acme", claim_id="raced", member_id="M1",
                             points=10, occurred_at=now - timedelta(minutes=1), now=now,
                             rules=app.config["LEDGER_RULES"])
            outcome = {}
            thread = threading.Thread(target=lambda: outcome.update(answer=acme.client.batch(
                [earn("other", "M2", 5), earn("raced", "M2", 10)])), daemon=True)
            thread.start()
            try:
                await_lock_wait(db.engine, still_running=thread.is_alive)
            finally:
                winner.commit()
        finally:
            winner.close()
        thread.join(30)
    assert not thread.is_alive()
    assert slugs(results(outcome["answer"])) == [201, "claim-id-conflict"]
    assert acme.client.claim("raced").json()["member_id"] == "M1"
    assert acme.client.balance("M2").json()["available"] == 5


def test_a_deadlock_reruns_the_batch_and_keeps_the_token_spent(app, acme, monkeypatch,
                                                                verify_clean):
    """The backstop: a deadlock or serialization failure (which the sorted member locks should
    prevent) rolls the batch back and runs it again; the answer is as if it had not happened."""
    from sqlalchemy.exc import OperationalError

    from coalition import batch_sql

    class Deadlock(Exception):
        sqlstate = "40P01"
    real, calls = batch_sql.write, []

    def deadlocked_once(session, rows):
        calls.append(len(rows.entries))
        if len(calls) == 1:
            real(session, rows)  # written, then the server picks this transaction as victim
            raise OperationalError("INSERT", {}, Deadlock())
        return real(session, rows)
    monkeypatch.setattr(batch_sql, "write", deadlocked_once)
    acme.client.enrol("M1")
    body = json.dumps({"claims": [earn("e1", "M1", 10), earn("e2", "M1", 5)]}).encode()
    headers = acme.client.sign("POST", "/v1/batches", body)
    with app.test_client() as client:
        answer = client.post("/v1/batches", data=body, headers=headers)
        replayed = client.post("/v1/batches", data=body, headers=headers)
    assert answer.status_code == 200 and calls == [2, 2]
    assert [r["status"] for r in answer.json["results"]] == [201, 201]
    assert answer.json["results"][1]["body"]["balance_after"] == 15
    assert replayed.status_code == 401  # the jti was recorded again after the rollback
    assert count(app) == 2 and acme.client.balance("M1").json()["available"] == 15
    verify_clean()
