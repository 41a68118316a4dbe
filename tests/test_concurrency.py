"""Concurrency on a real PostgreSQL server, with real threads each on its own connection."""
from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from coalition.database import db
from coalition.models import Entry
from tests.conftest import ago, postgres_only

pytestmark = postgres_only
FIXED = ago(minutes=2)  # one instant, so that retries carry identical content


def in_parallel(n: int, fn) -> list:
    """Run fn(i) in n threads released at the same instant."""
    barrier = threading.Barrier(n)

    def run(i):
        barrier.wait()
        return fn(i)
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def entries(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(Entry.id)))


def test_fifty_parallel_burns_never_spend_the_same_points(app, acme, bolt, verify_clean):
    acme.client.enrol("M1")
    assert acme.client.earn("e1", "M1", 1000, occurred_at=ago(minutes=1)).status == 201
    statuses = in_parallel(50, lambda i: bolt.client.burn(f"b{i}", "M1", 70,
                                                          occurred_at=ago(seconds=1)).status)
    assert Counter(statuses) == {201: 14, 422: 36}
    balance = acme.client.balance("M1").json()
    assert balance["available"] == 1000 - 14 * 70
    assert entries(app) == 1 + 14
    verify_clean()


def test_ten_simultaneous_posts_of_one_claim_book_it_once(app, acme, verify_clean):
    acme.client.enrol("M1")
    responses = in_parallel(10, lambda i: acme.client.earn("same", "M1", 25, occurred_at=FIXED))
    assert [r.status for r in responses] == [201] * 10
    replayed = [r.headers.get("idempotent-replayed") for r in responses]
    assert replayed.count("true") == 9
    assert len({r.body for r in responses}) == 1  # every answer is the original body
    assert entries(app) == 1
    assert acme.client.balance("M1").json()["available"] == 25
    verify_clean()


def test_one_claim_id_raced_for_different_members_books_one(app, acme, verify_clean):
    for i in range(8):
        acme.client.enrol(f"M{i}")
    responses = in_parallel(8, lambda i: acme.client.earn("raced", f"M{i}", 10, occurred_at=FIXED))
    statuses = Counter(r.status for r in responses)
    assert statuses == {201: 1, 409: 7}, [r.json() for r in responses]
    assert entries(app) == 1
    verify_clean()


def test_a_token_sent_many_times_at_once_is_accepted_once(app, acme):
    acme.client.enrol("M1")
    body = acme.client.encode_body({"member_id": "M1"})
    headers = acme.client.sign("POST", "/v1/members", body)

    def send(_):
        with app.test_client() as c:
            return c.post("/v1/members", data=body, headers=headers).status_code
    assert Counter(in_parallel(8, send)) == {200: 1, 401: 7}


def test_claims_of_many_members_run_in_parallel_and_stay_consistent(app, acme, bolt, verify_clean):
    members = [f"M{i}" for i in range(20)]
    for m in members:
        acme.client.enrol(m)

    def work(i):
        m = members[i % 20]
        out = [acme.client.earn(f"e{i}", m, 100, occurred_at=FIXED).status]
        out.append(bolt.client.burn(f"b{i}", m, 60, occurred_at=ago(seconds=1)).status)
        out.append(bolt.client.reverse(f"b{i}", f"r{i}", 20, occurred_at=ago(seconds=1)).status)
        return out
    results = in_parallel(40, work)
    assert all(r == [201, 201, 201] for r in results), results
    total = sum(acme.client.balance(m).json()["available"] for m in members)
    assert total == 40 * (100 - 60 + 20)
    verify_clean()
