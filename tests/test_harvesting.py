"""Card harvesting (partners/harvest.py): a partner that asks about many unknown cards, or reads
many balances it never books against, within a window is flagged in the audit log and listed by
`flask partners suspicious`. Thresholds are lowered per test through the app's config."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text

from coalition.audit import AuditEvent
from coalition.database import db
from partners import harvest
from partners.models import MemberLookup


@pytest.fixture
def watch(app):
    app.config.update(HARVEST_UNKNOWN_CARDS=5, HARVEST_UNBOOKED_READS=3, HARVEST_WINDOW_MINUTES=10,
                      HARVEST_CHECK_EVERY_S=0)
    return app


def flags(app, partner_id: str | None = None) -> list[dict]:
    with app.app_context():
        found = harvest.suspicious(db.session, datetime.now(timezone.utc) - timedelta(hours=1))
        db.session.rollback()
    return [f for f in found if partner_id is None or f["partner_id"] == partner_id]


def suspicious_cli(runner, *args) -> dict:
    result = runner.invoke(args=["partners", "suspicious", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_partner_probing_unknown_cards_is_flagged_once_per_window(watch, acme, bolt, runner):
    for n in range(4):
        assert acme.client.balance(f"PROBE-{n}").status == 404
    for _ in range(5):  # the same unknown card again and again is one card
        assert acme.client.balance("PROBE-0").status == 404
    assert flags(watch) == []

    assert acme.client.balance("PROBE-4").status == 404  # the fifth distinct unknown card
    [flag] = flags(watch)
    assert flag["partner_id"] == "acme" and flag["rule"] == "unknown-cards"
    assert flag["count"] == 5 and flag["threshold"] == 5 and flag["window_minutes"] == 10

    for n in range(5, 12):  # still probing: no second flag within the window
        assert acme.client.balance(f"PROBE-{n}").status == 404
    assert len(flags(watch)) == 1

    listed = suspicious_cli(runner, "--since", (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat())
    assert [(f["partner_id"], f["rule"]) for f in listed["flags"]] == [("acme", "unknown-cards")]
    assert suspicious_cli(runner, "--since", "2999-01-01")["flags"] == []
    with watch.app_context():
        event = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "partner.suspicious")).one()
        assert event.actor == "system" and event.subject == "partner:acme"
    # Another partner's lookups are its own.
    assert bolt.client.balance("PROBE-0").status == 404
    assert flags(watch, "bolt") == []


def test_earns_burns_and_pins_for_unknown_cards_count_as_probes(watch, acme):
    assert acme.client.enrol("REAL-1").status == 201
    for n in range(3):
        assert acme.client.earn(f"e{n}", f"GHOST-{n}", 10).status == 404
    assert acme.client.burn("b3", "GHOST-3", 10).status == 404
    assert acme.client.set_pin("GHOST-4", "1234").status == 404
    assert acme.client.earn("ok", "REAL-1", 10).status == 201  # a known card is no probe
    [flag] = flags(watch)
    assert flag["rule"] == "unknown-cards" and flag["count"] == 5


def test_reading_balances_without_booking_is_flagged(watch, acme, bolt):
    for n in range(6):
        assert bolt.client.enrol(f"M-{n}").status == 201
    # acme serves M-0..M-2: reading their balances is what a till does
    for n in range(3):
        assert acme.client.earn(f"c{n}", f"M-{n}", 10).status == 201
        assert acme.client.balance(f"M-{n}").status == 200
        assert acme.client.balance(f"M-{n}").status == 200
    assert acme.client.balance("M-3").status == 200
    assert acme.client.balance("M-4").status == 200
    assert flags(watch) == []
    assert acme.client.balance("M-5").status == 200  # the third member it never booked for
    [flag] = flags(watch)
    assert flag["partner_id"] == "acme" and flag["rule"] == "unbooked-reads" and flag["count"] == 3
    # bolt enrolled them all but booked nothing: enrolling is not reading
    assert flags(watch, "bolt") == []


def test_under_the_thresholds_nothing_is_flagged_and_thresholds_come_from_config(app, acme):
    assert app.config["HARVEST_UNKNOWN_CARDS"] == 50 and app.config["HARVEST_UNBOOKED_READS"] == 200
    assert app.config["HARVEST_WINDOW_MINUTES"] == 10 and app.config["HARVEST_CHECK_EVERY_S"] == 30
    app.config["HARVEST_CHECK_EVERY_S"] = 0
    for n in range(49):
        assert acme.client.balance(f"PROBE-{n}").status == 404
    assert flags(app) == []


def test_lookups_keep_no_card_number_and_are_pruned_after_two_windows(watch, acme):
    assert acme.client.enrol("CARD-12345").status == 201
    assert acme.client.balance("CARD-12345").status == 200
    assert acme.client.balance("CARD-99999").status == 404
    with watch.app_context():
        rows = db.session.scalars(select(MemberLookup).order_by(MemberLookup.id)).all()
        assert [(r.partner_id, r.member_id is None) for r in rows] == [("acme", False), ("acme", True)]
        assert [r.card_hash for r in rows] == [harvest.card_hash("CARD-12345"), harvest.card_hash("CARD-99999")]
        dump = " ".join(str(v) for row in db.session.execute(text("SELECT * FROM member_lookups")) for v in row)
        assert "CARD-" not in dump
        now = datetime.now(timezone.utc)
        window = timedelta(minutes=10)
        assert harvest.prune(db.session, now + 2 * window - timedelta(seconds=5), window) == 0
        assert harvest.prune(db.session, now + 2 * window + timedelta(seconds=5), window) == 2
        db.session.commit()
        assert db.session.scalar(select(func.count()).select_from(MemberLookup)) == 0


def test_a_failing_harvest_check_never_fails_the_read(watch, acme, monkeypatch):
    assert acme.client.enrol("M-1").status == 201

    def broken(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(harvest, "evaluate", broken)
    assert acme.client.balance("M-1").status == 200
    assert acme.client.balance("NOPE").status == 404
