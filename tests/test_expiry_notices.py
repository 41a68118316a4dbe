"""Expiry notices: GET /v1/members/{member_id}/expiry-notices for partners, and
`flask points notices` for the operator's mailing job."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

import partners.views
from coalition import clock, ledger
from coalition.database import db
from coalition.members import enrol
from coalition.periods import MONTHLY, YEARLY
from partners.schemas import ExpiryNoticesSchema

UTC = timezone.utc
TZ = "Europe/Berlin"


def berlin(*args) -> datetime:
    return datetime(*args, tzinfo=ZoneInfo(TZ)).astimezone(UTC)


NOW = berlin(2026, 9, 10, 12)  # the clock, pinned


@pytest.fixture
def pinned(app, monkeypatch):
    monkeypatch.setattr(partners.views, "_now", lambda: NOW)
    monkeypatch.setattr(clock, "now", lambda: NOW)
    return app


def use(app, policy: str, months: int, cutoff=(9, 30)) -> None:
    app.config["LEDGER_RULES"] = replace(app.config["LEDGER_RULES"], expiry_policy=policy,
                                         expire_months=months, expiry_cutoff=cutoff)


def earn(client, claim: str, card: str, points: int, at: datetime, **more) -> None:
    answer = client.earn(claim, card, points, occurred_at=at, **more)
    assert answer.status == 201, answer.json()


@pytest.fixture
def expiring(pinned, acme):
    """M1: 100 points expiring 30 Sep 2026 (20 days on; 40 of them pending), 25 on 31 Dec 2026;
    M2: 7 on 30 Sep 2026; M3: nothing within a year."""
    app = pinned
    for card in ("M1", "M2", "M3"):
        assert acme.client.enrol(card).status == 201
    use(app, MONTHLY, 0)  # the end of the earn's month
    earn(acme.client, "a1", "M1", 60, berlin(2026, 9, 1, 9))
    earn(acme.client, "a2", "M1", 40, berlin(2026, 9, 9, 9), pending_until=NOW + timedelta(days=5))
    earn(acme.client, "b1", "M2", 7, berlin(2026, 9, 2, 9))
    use(app, YEARLY, 0, (12, 31))
    earn(acme.client, "a3", "M1", 25, berlin(2026, 9, 3, 9))
    use(app, MONTHLY, 36)
    earn(acme.client, "c1", "M3", 5, berlin(2026, 9, 3, 9))
    return app


def test_a_member_sees_the_next_expiry_30_days_ahead(expiring, acme):
    answer = acme.client.expiry_notices("M1")
    assert answer.status == 200, answer.json()
    assert answer.json() == {"member_id": "M1", "within_days": 30, "notices": [
        {"points": 100, "expires_on": "2026-09-30", "notify_from": "2026-08-31"}]}
    wider = acme.client.expiry_notices("M1", within_days=120).json()
    assert wider["notices"] == [
        {"points": 100, "expires_on": "2026-09-30", "notify_from": "2026-08-31"},
        {"points": 25, "expires_on": "2026-12-31", "notify_from": "2026-12-01"}]
    assert acme.client.expiry_notices("M3", within_days=366).json()["notices"] == []


def test_the_window_counts_days_in_berlin(expiring, acme):
    # 10 September: 30 September is 20 days on.
    assert acme.client.expiry_notices("M1", within_days=19).json()["notices"] == []
    assert [n["expires_on"] for n in acme.client.expiry_notices("M1", within_days=20).json()
            ["notices"]] == ["2026-09-30"]


def test_spent_points_are_no_longer_announced(expiring, acme):
    assert acme.client.burn("s1", "M2", 5, occurred_at=NOW).status == 201
    assert acme.client.expiry_notices("M2").json()["notices"] == [
        {"points": 2, "expires_on": "2026-09-30", "notify_from": "2026-08-31"}]
    assert acme.client.burn("s2", "M2", 2, occurred_at=NOW).status == 201
    assert acme.client.expiry_notices("M2").json()["notices"] == []


def test_an_unknown_member_is_404_and_counts_as_a_card_asked_about(pinned, acme):
    answer = acme.client.expiry_notices("NOBODY-1")
    assert answer.status == 404 and answer.json()["type"] == "/problems/not-found"
    assert acme.client.expiry_notices("not a card").status == 404


def test_reads_and_unknown_cards_are_recorded_for_the_harvesting_watch(app, acme):
    """As balance reads are: a read of a known member, and a question about an unknown card."""
    from sqlalchemy import select

    from coalition.models import Member
    from partners.models import MemberLookup
    assert acme.client.enrol("M1").status == 201
    assert acme.client.expiry_notices("M1").status == 200
    assert acme.client.expiry_notices("NOBODY-1").status == 404
    with app.app_context():
        pk = db.session.scalar(select(Member.id).where(Member.external_id == "M1"))
        rows = db.session.execute(select(MemberLookup.partner_id, MemberLookup.member_id)
                                  .order_by(MemberLookup.id)).all()
    assert [tuple(r) for r in rows] == [("acme", pk), ("acme", None)]


def test_the_window_is_checked(pinned, acme):
    assert acme.client.enrol("M1").status == 201
    for bad in ("367", "-1", "x", "1.5"):
        answer = acme.client.request("GET", f"/v1/members/M1/expiry-notices?within_days={bad}")
        assert answer.status == 422, (bad, answer.json())
    answer = acme.client.request("GET", "/v1/members/M1/expiry-notices?days=3")
    assert answer.status == 422


def test_a_signature_is_required(app, acme):
    assert acme.client.enrol("M1").status == 201
    answer = app.test_client().get("/v1/members/M1/expiry-notices")
    assert answer.status_code == 401
    # A token signed for another path (the balance) does not open the notices.
    headers = acme.client.sign("GET", "/v1/members/M1/balance", b"")
    answer = app.test_client().get("/v1/members/M1/expiry-notices", headers=headers)
    assert answer.status_code == 401


def test_the_example_is_a_valid_answer():
    assert ExpiryNoticesSchema().validate(ExpiryNoticesSchema.EXAMPLE) == {}


def notices(runner, *args) -> list[dict]:
    result = runner.invoke(args=["points", "notices", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line]


def test_the_operator_lists_members_with_points_expiring_in_the_window(expiring, runner):
    assert notices(runner) == [
        {"member_id": "M1", "notices": [
            {"points": 100, "expires_on": "2026-09-30", "notify_from": "2026-08-31"}]},
        {"member_id": "M2", "notices": [
            {"points": 7, "expires_on": "2026-09-30", "notify_from": "2026-08-31"}]}]
    assert notices(runner, "--within-days", "19") == []
    later = notices(runner, "--as-of", "2026-12-01", "--within-days", "30")
    assert later == [{"member_id": "M1", "notices": [
        {"points": 25, "expires_on": "2026-12-31", "notify_from": "2026-12-01"}]}]
    # The window's first day counts: 31 December is the last day of one lasting from the 1st.
    assert notices(runner, "--as-of", "2026-12-01", "--within-days", "29") == []


def test_the_operator_listing_reads_in_batches_and_leaves_out_erased_members(expiring, app):
    from coalition import expiry_notices
    from coalition.models import Member
    with app.app_context():
        member = db.session.query(Member).filter_by(external_id="M2").one()
        member.external_id = None  # as an erasure leaves it
        enrol(db.session, "M4", now=NOW)
        db.session.commit()
        rules = app.config["LEDGER_RULES"]
        ledger.book_earn(db.session, now=NOW, rules=replace(rules, expire_months=0),
                         partner_id="acme", claim_id="d1", member_id="M4", points=3,
                         occurred_at=NOW)
        db.session.commit()
        listed = list(expiry_notices.members_expiring(
            db.session, first_day=date(2026, 9, 10), within_days=30, now=NOW, tz=TZ, batch=1))
    assert [(m["member_id"], m["notices"][0]["points"]) for m in listed] == [("M1", 100), ("M4", 3)]


def test_the_operator_command_refuses_a_bad_window(app, runner):
    result = runner.invoke(args=["points", "notices", "--within-days", "400"])
    assert result.exit_code == 2 and json.loads(result.output)["error"] == "usage-error"
    result = runner.invoke(args=["points", "notices", "--as-of", "tomorrow"])
    assert result.exit_code == 2 and json.loads(result.output)["error"] == "usage-error"
