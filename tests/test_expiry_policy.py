"""The expiry policy (POINTS_EXPIRY_POLICY): monthly (the default) or a yearly cut-off day, in
the coalition's time zone across year ends and daylight saving changes; a lot's expiry fixed at
its earn; `points expire` booking yearly lots at the cut-off; the balance's `expiring`."""
from __future__ import annotations

import json
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

import partners.views
from coalition import ledger
from coalition.clock import as_utc
from coalition.config import from_environment
from coalition.database import db
from coalition.members import balance, enrol
from coalition.models import Entry, Lot
from coalition.periods import MONTHLY, YEARLY, add_months, expiry_of, month_start_utc
from coalition.vocabulary import EntryKind
from tests.conftest import ago

UTC = timezone.utc
TZ = "Europe/Berlin"
BERLIN = ZoneInfo(TZ)


def berlin(*args, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=BERLIN, fold=fold).astimezone(UTC)


def z(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def yearly(at: datetime, months: int, cutoff=(9, 30)):
    return expiry_of(at, TZ, months, YEARLY, cutoff)


def monthly(at: datetime, months: int):
    return expiry_of(at, TZ, months, MONTHLY)


# --- the rule itself --------------------------------------------------------------------------

def test_monthly_is_the_rule_it_always_was():
    assert expiry_of(z(2026, 5, 4, 10), TZ, 36) == monthly(z(2026, 5, 4, 10), 36) \
        == (z(2029, 5, 31, 22), date(2029, 5, 31))


def test_monthly_across_a_year_end_in_berlin():
    # 31 December 23:30 in Berlin is still December; 1 January 00:30 is January (both 2026 UTC).
    assert monthly(berlin(2026, 12, 31, 23, 30), 1) == (z(2027, 1, 31, 23), date(2027, 1, 31))
    assert monthly(berlin(2027, 1, 1, 0, 30), 1) == (z(2027, 2, 28, 23), date(2027, 2, 28))
    assert berlin(2027, 1, 1, 0, 30) == z(2026, 12, 31, 23, 30)
    assert monthly(berlin(2026, 12, 15), 36) == (z(2029, 12, 31, 23), date(2029, 12, 31))


def test_monthly_across_daylight_saving_changes():
    # 25 Oct 2026 02:30 happens twice in Berlin (CEST, then CET): the same month either way.
    first, second = berlin(2026, 10, 25, 2, 30), berlin(2026, 10, 25, 2, 30, fold=1)
    assert second - first == timedelta(hours=1)
    assert monthly(first, 0) == monthly(second, 0) == (z(2026, 10, 31, 23), date(2026, 10, 31))
    # 31 Oct 01:30 and 02:30 local (CET): October; the lot ends at a CET midnight.
    assert monthly(berlin(2026, 10, 31, 1, 30), 0) == monthly(berlin(2026, 10, 31, 2, 30), 0)
    # Five months on, March 2027 ends after the change to summer time (28 March): 22:00 UTC.
    assert monthly(berlin(2026, 10, 31, 2, 30), 5) == (z(2027, 3, 31, 22), date(2027, 3, 31))
    # A month ending on the last Sunday of October (31 Oct 2027, 25 hours long in Berlin) and
    # one ending on the last Sunday of March (31 Mar 2030, 23 hours): spendable all day long.
    ends, last = monthly(berlin(2026, 10, 25, 2, 30, fold=1), 12)
    assert (ends, last) == (z(2027, 10, 31, 23), date(2027, 10, 31))
    assert ends - berlin(2027, 10, 31) == timedelta(hours=25)
    ends, last = monthly(berlin(2027, 3, 28, 3, 30), 36)
    assert (ends, last) == (z(2030, 3, 31, 22), date(2030, 3, 31))
    assert ends - berlin(2030, 3, 31) == timedelta(hours=23)
    # 31 Oct 23:30 local is October, 1 Nov 00:30 local is November (both 31 Oct in UTC).
    assert monthly(berlin(2026, 10, 31, 23, 30), 0)[1] == date(2026, 10, 31)
    assert monthly(berlin(2026, 11, 1, 0, 30), 0)[1] == date(2026, 11, 30)


def test_yearly_cutoff_boundaries():
    # Earned exactly 36 months before the cut-off day: expires at the end of that day.
    assert yearly(berlin(2026, 9, 30, 23, 59), 36) == (z(2029, 9, 30, 22), date(2029, 9, 30))
    # The day after (just after local midnight, still 30 September in UTC): a year later.
    assert berlin(2026, 10, 1, 0, 0, 30) < z(2026, 10, 1)
    assert yearly(berlin(2026, 10, 1, 0, 0, 30), 36) == (z(2030, 9, 30, 22), date(2030, 9, 30))
    # Earlier in the cut-off's month, or the month before: the same cut-off.
    assert yearly(berlin(2026, 9, 1), 36)[1] == yearly(berlin(2026, 8, 31, 23), 36)[1] \
        == date(2029, 9, 30)
    # Everything from October to September expires on the same day.
    assert {yearly(berlin(2026 + (m > 12), (m - 1) % 12 + 1, 15), 36)[1]
            for m in range(10, 22)} == {date(2030, 9, 30)}
    # A cut-off before a month's end: the first one not before the monthly rule's last day.
    assert monthly(berlin(2026, 10, 5), 3)[1] == date(2027, 1, 31)
    assert yearly(berlin(2026, 10, 5), 3, (1, 15))[1] == date(2028, 1, 15)
    assert yearly(berlin(2026, 10, 5), 3, (1, 31))[1] == date(2027, 1, 31)
    assert yearly(berlin(2026, 9, 5), 3, (1, 15))[1] == date(2027, 1, 15)


def test_yearly_across_a_year_end():
    cutoff = (12, 31)
    # 31 Dec 23:30 local: December, N=0: the end of that very day, midnight CET.
    assert yearly(berlin(2026, 12, 31, 23, 30), 0, cutoff) == \
        (z(2026, 12, 31, 23), date(2026, 12, 31))
    # An hour later (still 31 December in UTC) it is January: a year later.
    assert yearly(berlin(2027, 1, 1, 0, 30), 0, cutoff) == (z(2027, 12, 31, 23), date(2027, 12, 31))
    assert yearly(berlin(2026, 12, 31, 23, 30), 12, (9, 30))[1] == date(2028, 9, 30)


def test_yearly_cutoffs_on_the_days_of_a_daylight_saving_change():
    # 31 Oct 2027 and 28 Mar 2027 are the last Sundays of October and March: a 25- and a
    # 23-hour day in Berlin. The lot is spendable through the whole local day.
    ends, last = yearly(berlin(2026, 10, 25, 2, 30, fold=1), 12, (10, 31))
    assert (ends, last) == (z(2027, 10, 31, 23), date(2027, 10, 31))
    assert ends - berlin(2027, 10, 31) == timedelta(hours=25)
    ends, last = yearly(berlin(2026, 3, 29, 3, 30), 11, (3, 28))
    assert (ends, last) == (z(2027, 3, 28, 22), date(2027, 3, 28))
    assert ends - berlin(2027, 3, 28) == timedelta(hours=23)
    # Earned on either fold of the repeated hour: the same expiry.
    assert yearly(berlin(2026, 10, 25, 2, 30), 12, (10, 31)) == \
        yearly(berlin(2026, 10, 25, 2, 30, fold=1), 12, (10, 31))


@pytest.mark.parametrize("months", [0, 1, 11, 12, 36])
@pytest.mark.parametrize("cutoff", [(1, 1), (3, 28), (9, 30), (12, 31)])
def test_yearly_keeps_points_at_least_as_long_as_monthly_and_under_a_year_more(months, cutoff):
    for index in range(36):
        year, month = add_months(2026, 1, index)
        earned = month_start_utc(year, month, TZ) + timedelta(days=3)
        long, short = yearly(earned, months, cutoff)[0], monthly(earned, months)[0]
        assert short <= long < month_start_utc(*add_months(year, month, months + 13), TZ)


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError):
        expiry_of(z(2026, 1, 1), TZ, 1, "weekly")


# --- configuration ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, says", [
    ("POINTS_EXPIRY_POLICY", "weekly", "POINTS_EXPIRY_POLICY must be one of monthly, yearly"),
    ("POINTS_EXPIRY_CUTOFF", "02-29", "POINTS_EXPIRY_CUTOFF must be a day of the year as MM-DD"),
    ("POINTS_EXPIRY_CUTOFF", "9-30", "POINTS_EXPIRY_CUTOFF"),
    ("POINTS_EXPIRY_CUTOFF", "09/30", "POINTS_EXPIRY_CUTOFF"),
    ("POINTS_EXPIRY_CUTOFF", "13-01", "POINTS_EXPIRY_CUTOFF"),
    ("POINTS_EXPIRY_CUTOFF", "04-31", "POINTS_EXPIRY_CUTOFF"),
    ("POINTS_EXPIRE_MONTHS", "-1", "POINTS_EXPIRE_MONTHS must be a whole number"),
    ("POINTS_EXPIRE_MONTHS", "three", "POINTS_EXPIRE_MONTHS must be a whole number"),
])
def test_a_bad_setting_stops_the_start_naming_it(monkeypatch, tmp_path, name, value, says):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as refused:
        from_environment(str(tmp_path))
    assert says in str(refused.value)


def test_the_settings_reach_the_rules(monkeypatch, tmp_path):
    for name in ("POINTS_EXPIRY_POLICY", "POINTS_EXPIRY_CUTOFF", "POINTS_EXPIRE_MONTHS"):
        monkeypatch.delenv(name, raising=False)
    config = {"COALITION_TIMEZONE": TZ, "MAX_CLAIM_AGE_DAYS": 30, **from_environment(str(tmp_path))}
    rules = ledger.Rules.from_config(config)
    assert (rules.expiry_policy, rules.expire_months) == (MONTHLY, 36)
    monkeypatch.setenv("POINTS_EXPIRY_POLICY", " Yearly ")
    monkeypatch.setenv("POINTS_EXPIRY_CUTOFF", "12-31")
    monkeypatch.setenv("POINTS_EXPIRE_MONTHS", "24")
    config.update(from_environment(str(tmp_path)))
    rules = ledger.Rules.from_config(config)
    assert (rules.expiry_policy, rules.expiry_cutoff, rules.expire_months) == (YEARLY, (12, 31), 24)
    assert rules.expiry_of(z(2026, 5, 4)) == (z(2028, 12, 31, 23), date(2028, 12, 31))


# --- lots, booking, balance -------------------------------------------------------------------

def use(app, policy: str, months: int, cutoff=(9, 30)) -> ledger.Rules:
    rules = replace(app.config["LEDGER_RULES"], expiry_policy=policy, expire_months=months,
                    expiry_cutoff=cutoff)
    app.config["LEDGER_RULES"] = rules
    return rules


def lots(app) -> list[tuple]:
    with app.app_context():
        return [(lot.points, as_utc(lot.expires_at)) for lot in db.session.scalars(
            select(Lot).order_by(Lot.id))]


def test_a_lot_keeps_the_expiry_of_the_policy_it_was_earned_under(app, acme):
    """Single earns and a batch's both take the policy in force; changing it later leaves
    the lots already earned alone."""
    assert acme.client.enrol("M1").status == 201
    at = ago(minutes=30)
    occurred = datetime.fromisoformat(at.replace("Z", "+00:00"))
    monthly_rules = use(app, MONTHLY, 36)
    assert acme.client.earn("e1", "M1", 10, occurred_at=at).status == 201
    yearly_rules = use(app, YEARLY, 36, (9, 30))
    assert acme.client.earn("e2", "M1", 20, occurred_at=at).status == 201
    answer = acme.client.batch([{"kind": "earn", "claim_id": "e3", "member_id": "M1",
                                 "points": 30, "occurred_at": at}])
    assert answer.status == 200 and answer.json()["results"][0]["status"] == 201, answer.json()
    use(app, MONTHLY, 12)
    assert lots(app) == [(10, monthly_rules.expiry_of(occurred)[0]),
                         (20, yearly_rules.expiry_of(occurred)[0]),
                         (30, yearly_rules.expiry_of(occurred)[0])]
    assert monthly_rules.expiry_of(occurred) != yearly_rules.expiry_of(occurred) or \
        occurred.astimezone(BERLIN).month == 9


def book(app, rules, card: str, claim: str, points: int, at: datetime, **more):
    with app.app_context():
        if claim == "enrol":
            enrol(db.session, card, now=at)
        else:
            ledger.book_earn(db.session, now=at, rules=rules, partner_id="acme", claim_id=claim,
                             member_id=card, points=points, occurred_at=at, **more)
        db.session.commit()


def test_points_expire_books_yearly_lots_at_the_cutoff(app, acme, runner, verify_clean):
    rules = use(app, YEARLY, 0, (9, 30))
    earned = berlin(2026, 9, 15, 12)
    book(app, rules, "M1", "enrol", 0, earned)
    book(app, rules, "M1", "e1", 100, earned)
    book(app, rules, "M1", "e2", 40, berlin(2026, 9, 30, 23, 59))  # the cut-off day itself
    book(app, rules, "M1", "e3", 7, berlin(2026, 10, 1, 0, 1))  # the next year's cut-off
    assert [at for _, at in lots(app)] == [z(2026, 9, 30, 22)] * 2 + [z(2027, 9, 30, 22)]

    def expire(day: str) -> dict:
        result = runner.invoke(args=["points", "expire", "--as-of", day])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)
    assert expire("2026-09-30")["lots_expired"] == 0  # spendable through the 30th
    done = expire("2026-10-01")
    assert (done["lots_expired"], done["points_expired"]) == (2, 140)
    assert expire("2026-10-01")["lots_expired"] == 0
    with app.app_context():
        # Booked at the expiry instant, local midnight starting 1 October: October's books.
        booked = db.session.execute(select(Entry.points, Entry.occurred_at, Entry.period)
                                    .where(Entry.kind == EntryKind.EXPIRY)).all()
        assert sorted((p, as_utc(occurred), period) for p, occurred, period in booked) == \
            [(40, z(2026, 9, 30, 22), "2026-10"), (100, z(2026, 9, 30, 22), "2026-10")]
        view = balance(db.session, "M1", now=z(2026, 10, 2), tz=TZ)
        assert view["available"] == 7
        assert view["expiring"] == [{"points": 7, "expires_on": date(2027, 9, 30)}]
    verify_clean()


@pytest.mark.parametrize("policy, months, expires_on", [
    (MONTHLY, 36, [date(2029, 9, 30), date(2029, 10, 31)]),
    (YEARLY, 36, [date(2029, 9, 30), date(2030, 9, 30)]),
])
def test_expiring_in_the_balance_is_what_will_expire(app, acme, monkeypatch, policy, months,
                                                     expires_on, verify_clean):
    """Pending points included, spent points and debt left out, under either policy."""
    now = berlin(2026, 10, 1, 12)
    monkeypatch.setattr(partners.views, "_now", lambda: now)
    rules = use(app, policy, months, (9, 30))
    assert acme.client.enrol("M1").status == 201
    sept, octo = berlin(2026, 9, 30, 23, 30), berlin(2026, 10, 1, 0, 30)
    assert acme.client.earn("e1", "M1", 100, occurred_at=sept).status == 201
    assert acme.client.earn("e2", "M1", 50, occurred_at=octo,
                            pending_until=now + timedelta(days=14)).status == 201
    assert acme.client.earn("e3", "M1", 30, occurred_at=octo).status == 201
    assert acme.client.burn("b1", "M1", 60, occurred_at=now).status == 201  # from e1 first
    # e3 reversed after 20 of its points were spent: a debt of 20, which never expires.
    assert acme.client.burn("b2", "M1", 60, occurred_at=now).status == 201  # 40 of e1, 20 of e3
    assert acme.client.reverse("e3", "e3-r", 30, occurred_at=now).status == 201
    view = acme.client.balance("M1").json()
    assert (view["available"], view["pending"], view["debt"]) == (-20, 50, 20)
    # e1 is spent; e3's 10 left were taken back: only the pending e2 will expire.
    assert view["expiring"] == [{"points": 50, "expires_on": expires_on[1].isoformat()}]
    assert rules.expiry_of(sept)[1] == expires_on[0]
    assert acme.client.earn("e4", "M1", 5, occurred_at=sept).status == 201  # pays 5 of the debt
    assert acme.client.earn("e5", "M1", 25, occurred_at=sept).status == 201  # 15 more, 10 left
    view = acme.client.balance("M1").json()
    assert view["debt"] == 0
    assert view["expiring"] == [{"points": 10, "expires_on": expires_on[0].isoformat()},
                                {"points": 50, "expires_on": expires_on[1].isoformat()}]
    verify_clean()


@pytest.mark.parametrize("policy, expected", [
    (MONTHLY, [z(2026, 10, 31, 23)] * 3 + [z(2026, 11, 30, 23)]),
    (YEARLY, [z(2026, 10, 31, 23)] * 3 + [z(2027, 10, 31, 23)]),
])
def test_earns_either_side_of_local_midnight_and_in_the_repeated_hour(app, acme, policy,
                                                                      expected, verify_clean):
    """The lots as booked: the repeated hour of 25 Oct 2026 (either fold) and 31 Oct 23:30 are
    October; 1 Nov 00:30 (31 Oct in UTC) is November. Yearly with the cut-off 31 October."""
    rules = use(app, policy, 0, (10, 31))
    book(app, rules, "M1", "enrol", 0, berlin(2026, 10, 1))
    for n, at in enumerate([berlin(2026, 10, 25, 2, 30), berlin(2026, 10, 25, 2, 30, fold=1),
                            berlin(2026, 10, 31, 23, 30)]):
        book(app, rules, "M1", f"e{n}", 1, at)
    book(app, rules, "M1", "e9", 1, berlin(2026, 11, 1, 0, 30))
    assert [at for _, at in lots(app)] == expected
    verify_clean()
