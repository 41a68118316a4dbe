"""The partner endpoints (docs/partner-api.md, section 7), through signed HTTP requests."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from coalition import ledger
from coalition.database import db
from coalition.problems import Problem
from partners import tokens
from partners.models import UsedToken
from partners.tokens import Caller
from tests.conftest import ago, await_lock_wait, postgres_only

CONTRACT_FIELDS = {"claim_id", "kind", "member_id", "partner_id", "points", "occurred_at",
                   "recorded_at", "period", "status", "reversed_points", "balance_after"}


def problem_slug(response) -> str:
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()["type"].rsplit("/", 1)[-1]


def test_claim_object_carries_the_contract_fields(acme):
    acme.client.enrol("M1")
    when = datetime.now(timezone(timedelta(hours=2))).replace(microsecond=0) - timedelta(minutes=1)
    r = acme.client.earn("e1", "M1", 100, occurred_at=when.isoformat(), description="receipt 7")
    claim = r.json()
    assert r.status == 201 and CONTRACT_FIELDS <= claim.keys()
    assert claim["kind"] == "earn" and claim["partner_id"] == "acme" and claim["member_id"] == "M1"
    # Stored and returned in UTC, whatever offset the partner sent.
    assert claim["occurred_at"] == when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    assert claim["recorded_at"].endswith("Z") and len(claim["period"]) == 7
    assert (claim["status"], claim["reversed_points"], claim["balance_after"]) == ("booked", 0, 100)


def test_retry_with_same_content_replays_the_original_answer(acme, bolt):
    acme.client.enrol("M1")
    first = acme.client.earn("e1", "M1", 100, occurred_at=ago(minutes=3))
    when = first.json()["occurred_at"]
    again = acme.client.earn("e1", "M1", 100, occurred_at=when)
    assert again.status == 201 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    assert "idempotent-replayed" not in first.headers
    # Replayed after a reversal changed the claim: still the original body.
    acme.client.reverse("e1", "r1", 10, occurred_at=ago(minutes=1))
    assert acme.client.earn("e1", "M1", 100, occurred_at=when).json() == first.json()
    conflict = acme.client.earn("e1", "M1", 101, occurred_at=when)
    assert conflict.status == 409 and problem_slug(conflict) == "claim-id-conflict"
    assert acme.client.balance("M1").json()["available"] == 90


def test_reversal_ids_are_idempotent_too(acme):
    acme.client.enrol("M1")
    acme.client.earn("e1", "M1", 100, occurred_at=ago(minutes=3))
    when = ago(minutes=1)
    first = acme.client.reverse("e1", "r1", 30, occurred_at=when)
    again = acme.client.reverse("e1", "r1", 30, occurred_at=when)
    assert (first.status, again.status) == (201, 201)
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    assert problem_slug(acme.client.reverse("e1", "r1", 31, occurred_at=when)) == "claim-id-conflict"
    assert acme.client.balance("M1").json()["available"] == 70


def test_a_rejected_claim_is_not_stored_and_its_retry_is_evaluated_afresh(acme, bolt):
    acme.client.enrol("M1")
    when = ago(minutes=1)
    r = bolt.client.burn("b1", "M1", 50, occurred_at=when)
    assert r.status == 422 and problem_slug(r) == "insufficient-points"
    assert bolt.client.claim("b1").status == 404
    acme.client.earn("e1", "M1", 60, occurred_at=ago(minutes=2))
    r = bolt.client.burn("b1", "M1", 50, occurred_at=when)
    assert r.status == 201 and "idempotent-replayed" not in r.headers


def test_partners_see_only_their_own_claims(acme, bolt):
    acme.client.enrol("M1")
    acme.client.earn("e1", "M1", 100, occurred_at=ago(minutes=2))
    for response in (bolt.client.claim("e1"), bolt.client.reverse("e1", "r1", 1, occurred_at=ago(minutes=1))):
        assert response.status == 404 and problem_slug(response) == "not-found"
    assert acme.client.claim("e1").status == 200
    # Balances are shared across the coalition: any partner naming the member sees them.
    assert bolt.client.balance("M1").json()["available"] == 100


def test_reading_a_claim_shows_its_reversals_and_current_status(acme, bolt):
    acme.client.enrol("M1")
    acme.client.earn("e1", "M1", 100, occurred_at=ago(minutes=5))
    bolt.client.burn("b1", "M1", 40, occurred_at=ago(minutes=4))
    bolt.client.reverse("b1", "r1", 15, occurred_at=ago(minutes=3))
    claim = bolt.client.claim("b1").json()
    assert (claim["status"], claim["reversed_points"]) == ("partially_reversed", 15)
    assert [(r["reversal_id"], r["points"]) for r in claim["reversals"]] == [("r1", 15)]
    bolt.client.reverse("b1", "r2", 25, occurred_at=ago(minutes=2))
    assert bolt.client.claim("b1").json()["status"] == "reversed"
    reversal = bolt.client.claim("r2").json()
    assert (reversal["kind"], reversal["reverses"], reversal["balance_after"]) == ("reversal", "b1", 100)
    over = bolt.client.reverse("b1", "r3", 1, occurred_at=ago(minutes=1))
    assert over.status == 422 and problem_slug(over) == "reversal-exceeds-claim"


def test_pending_points_show_in_the_balance(acme):
    acme.client.enrol("M1")
    later = (datetime.now(timezone.utc) + timedelta(days=14)).isoformat()
    r = acme.client.earn("e1", "M1", 70, occurred_at=ago(minutes=1), pending_until=later)
    assert r.json()["status"] == "pending" and r.json()["balance_after"] == 0
    acme.client.earn("e2", "M1", 30, occurred_at=ago(minutes=1))
    balance = acme.client.balance("M1").json()
    assert (balance["available"], balance["pending"]) == (30, 70)
    assert sum(e["points"] for e in balance["expiring"]) == 100
    assert all(len(e["expires_on"]) == 10 for e in balance["expiring"])
    assert acme.client.claim("e1").json()["status"] == "pending"


def test_unknown_members_and_claims_are_404(acme):
    for response in (acme.client.earn("e1", "ghost", 1), acme.client.balance("ghost"),
                     acme.client.claim("nope"), acme.client.reverse("nope", "r1", 1)):
        assert response.status == 404 and problem_slug(response) == "not-found"


def test_a_crash_answers_500_problem_and_still_spends_the_token(app, acme, monkeypatch):
    from coalition import ledger

    acme.client.enrol("M1")
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(ledger, "book_earn", boom)
    body = acme.client.encode_body({"claim_id": "e1", "member_id": "M1", "points": 5,
                                    "occurred_at": ago(minutes=1)})
    headers = acme.client.sign("POST", "/v1/earn", body)
    with app.test_client() as c:
        first = c.post("/v1/earn", data=body, headers=headers)
        assert first.status_code == 500 and first.json["type"].endswith("internal-error")
        assert "disk on fire" not in first.get_data(as_text=True)
        monkeypatch.undo()
        assert c.post("/v1/earn", data=body, headers=headers).status_code == 401


def test_reading_a_claim_names_at_most_the_first_reversals_and_counts_them_all(acme, monkeypatch):
    """A claim of 10^9 points could have as many reversals: the answer stays bounded
    (MAX_LISTED_REVERSALS, lowered here), while reversals_total, reversed_points and the
    status still count every reversal."""
    from partners import service
    monkeypatch.setattr(service, "MAX_LISTED_REVERSALS", 3)
    acme.client.enrol("M1")
    assert acme.client.earn("e1", "M1", 100, occurred_at=ago(minutes=10)).status == 201
    for n in range(5):
        assert acme.client.reverse("e1", f"r{n}", 20, occurred_at=ago(minutes=9 - n)).status == 201
    claim = acme.client.claim("e1").json()
    assert [r["reversal_id"] for r in claim["reversals"]] == ["r0", "r1", "r2"]
    assert claim["reversals_total"] == 5 and claim["reversed_points"] == 100
    assert claim["status"] == "reversed"
    monkeypatch.setattr(service, "MAX_LISTED_REVERSALS", 1000)
    whole = acme.client.claim("e1").json()
    assert len(whole["reversals"]) == 5 and whole["reversals_total"] == 5


@postgres_only
def test_a_claim_id_race_is_retried_in_the_domain_keeping_what_must_survive(app, acme):
    """A claim id booked concurrently for another member: the loser's INSERT waits on the
    winner's uncommitted key and fails once it commits. book_raced rolls back, calls `restore`
    once (the partner API re-spends the token's jti there, so it survives the rollback) and
    answers as a retry would: 409, the content differs."""
    assert acme.client.enrol("M1").status == 201 and acme.client.enrol("M2").status == 201
    now = datetime.now(timezone.utc)
    claim = dict(partner_id="acme", claim_id="raced", points=10,
                 occurred_at=now - timedelta(minutes=1), now=now, rules=app.config["LEDGER_RULES"])
    caller = Caller("acme", acme.kid, "jti-of-the-loser", now + timedelta(minutes=5))
    outcome: dict = {}

    def loser():
        with app.app_context():
            restored = []

            def restore():
                restored.append(True)
                tokens.spend(db.session, caller)
            try:
                ledger.book_raced(db.session, ledger.book_earn, restore=restore, member_id="M2",
                                  **claim)
            except Problem as problem:
                outcome["slug"] = problem.slug
            outcome["restored"] = len(restored)
            outcome["jti in the transaction"] = db.session.scalar(
                select(func.count()).select_from(UsedToken).where(UsedToken.jti == caller.jti))
            db.session.rollback()

    with app.app_context():
        winner = Session(db.engine)
        try:
            ledger.book_earn(winner, member_id="M1", **claim)  # flushed: holds the claim key
            thread = threading.Thread(target=loser, daemon=True)
            thread.start()
            try:
                await_lock_wait(db.engine, still_running=thread.is_alive)
            finally:  # whatever happens, the loser must not wait on the key for ever
                winner.commit()
        finally:
            winner.close()
        thread.join(30)
    assert not thread.is_alive()
    assert outcome == {"slug": "claim-id-conflict", "restored": 1, "jti in the transaction": 1}
    assert acme.client.claim("raced").json()["member_id"] == "M1"
