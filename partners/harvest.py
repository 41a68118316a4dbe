"""Card harvesting: a partner that probes card numbers, or reads balances it never books against.

Card numbers are how tills name members, so a partner must be able to tell a known card from an
unknown one (404), and read any member's balance: the existence of a card cannot be hidden from
partners. What can be seen is a partner using that to harvest: within one window
(`HARVEST_WINDOW_MINUTES`) it asks about many distinct unknown cards (`HARVEST_UNKNOWN_CARDS`),
or reads the balances of many distinct members it books nothing for (`HARVEST_UNBOOKED_READS`:
no earn, burn or reversal by that partner for the member recorded from one window before the
window's start up to now). Either rule flags the partner in the audit log (`partner.suspicious`, at most once per rule
and window), and `flask partners suspicious --since ...` lists the flags.

Every balance read and every "no such member" answer to a balance read, an earn or a burn is
kept as a lookup row (the card as a SHA-256, never in clear) in the request's own transaction;
rows older than two windows are pruned with the jti records. The rules are evaluated after the
request's commit, at most every `HARVEST_CHECK_EVERY_S` per partner and process, so a busy till
pays one insert per read and an aggregate now and then.
"""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from coalition import audit
from coalition.models import Entry, Member
from coalition.clock import as_utc, iso_utc

from .models import MemberLookup

ACTION = "partner.suspicious"
UNKNOWN_CARDS, UNBOOKED_READS = "unknown-cards", "unbooked-reads"


@dataclass(frozen=True)
class Thresholds:
    window: timedelta
    unknown_cards: int
    unbooked_reads: int
    check_every_s: float

    @classmethod
    def from_config(cls, config) -> Thresholds:
        return cls(timedelta(minutes=int(config["HARVEST_WINDOW_MINUTES"])),
                   int(config["HARVEST_UNKNOWN_CARDS"]), int(config["HARVEST_UNBOOKED_READS"]),
                   float(config["HARVEST_CHECK_EVERY_S"]))


def card_hash(card: str) -> str:
    return hashlib.sha256(card.encode()).hexdigest()


def record(session: Session, partner_id: str, card: str, member_id: int | None,
           now: datetime) -> None:
    """One lookup of `card` by the partner, in the caller's transaction; member_id None: unknown."""
    session.add(MemberLookup(partner_id=partner_id, card_hash=card_hash(card), member_id=member_id,
                             at=now))


def lookups_of(session: Session, member: Member) -> list[dict]:
    """The partners' lookups of the member still kept (a member export's `lookups`): its
    balance reads, and asks about its card before it was enrolled."""
    rows = session.execute(
        select(MemberLookup.partner_id, MemberLookup.at, MemberLookup.member_id)
        .where((MemberLookup.member_id == member.id)
               | (MemberLookup.card_hash == card_hash(member.external_id or "")))
        .order_by(MemberLookup.id))
    return [{"partner_id": partner_id, "at": iso_utc(at), "known": member_id is not None}
            for partner_id, at, member_id in rows]


def erase_lookups(session: Session, member: Member, card: str) -> int:
    """A member's erasure (coalition/member_erasure.py): delete the lookups of the member and of
    its card, which would link the card's hash to the member. The harvesting watch counts a
    little less for the two windows they would still have been kept."""
    return session.execute(
        delete(MemberLookup).where((MemberLookup.member_id == member.id)
                                   | (MemberLookup.card_hash == card_hash(card)))
        .execution_options(synchronize_session=False)).rowcount


def record_read(session: Session, partner_id: str, card: str, now: datetime) -> None:
    """A balance read of a known card: its member is what the unbooked-reads rule counts."""
    member_id = session.scalar(select(Member.id).where(Member.external_id == card))
    record(session, partner_id, card, member_id, now)


class Throttle:
    """When each partner's rules were last evaluated by this process."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, partner_id: str, every_s: float) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(partner_id, float("-inf")) < every_s:
                return False
            self._last[partner_id] = now
            return True


def counts(session: Session, partner_id: str, now: datetime, window: timedelta) -> dict[str, int]:
    since = now - window
    unknown = session.scalar(
        select(func.count(func.distinct(MemberLookup.card_hash)))
        .where(MemberLookup.partner_id == partner_id, MemberLookup.at >= since,
               MemberLookup.member_id.is_(None)))
    booked = exists().where(Entry.member_id == MemberLookup.member_id,
                            Entry.partner_id == partner_id, Entry.recorded_at >= since - window)
    unbooked = session.scalar(
        select(func.count(func.distinct(MemberLookup.member_id)))
        .where(MemberLookup.partner_id == partner_id, MemberLookup.at >= since,
               MemberLookup.member_id.is_not(None), ~booked))
    return {UNKNOWN_CARDS: int(unknown or 0), UNBOOKED_READS: int(unbooked or 0)}


def evaluate(session: Session, partner_id: str, now: datetime, limits: Thresholds) -> list[str]:
    """Flag the partner for each rule it crosses and was not flagged for within the window.
    Writes audit events in the caller's transaction; returns the rules newly flagged."""
    found = counts(session, partner_id, now, limits.window)
    threshold = {UNKNOWN_CARDS: limits.unknown_cards, UNBOOKED_READS: limits.unbooked_reads}
    flagged = []
    for rule, count in found.items():
        if count < threshold[rule] or _flagged_within(session, partner_id, rule, now, limits.window):
            continue
        audit.record(session, actor=audit.SYSTEM, action=ACTION, subject=f"partner:{partner_id}",
                     before=None, now=now, after={
                         "rule": rule, "count": count, "threshold": threshold[rule],
                         "window_minutes": int(limits.window.total_seconds() // 60)})
        flagged.append(rule)
    return flagged


def _flagged_within(session: Session, partner_id: str, rule: str, now: datetime,
                    window: timedelta) -> bool:
    recent = audit.events(session, since=now - window, subject=f"partner:{partner_id}",
                          action=ACTION, limit=1000)
    return any(audit.event_view(event)["after"]["rule"] == rule for event in recent)


def suspicious(session: Session, since: datetime) -> list[dict]:
    """Every flag raised since then, oldest first."""
    flags = []
    for event in audit.events(session, since=since, action=ACTION, limit=100_000):
        view = audit.event_view(event)
        flags.append({"partner_id": view["subject"].removeprefix("partner:"), "at": view["at"],
                      **view["after"]})
    return flags


def prune(session: Session, now: datetime, window: timedelta) -> int:
    return session.execute(delete(MemberLookup).where(MemberLookup.at < as_utc(now) - 2 * window)
                           .execution_options(synchronize_session=False)).rowcount
