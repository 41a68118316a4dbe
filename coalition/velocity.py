"""Velocity rules over members' claims, for the operator's fraud review (`flask members
suspicious --since ...`). A rule that fires proves nothing; it names members worth a look.

* many-partners: claims at `partners` or more different partners within `within` (a stolen or
  shared card used across the coalition in a short time);
* burn-after-earn: a burn within `burn_within` after an earn booked at another partner (points
  earned and spent at once: an employee crediting a card and redeeming it elsewhere, or a
  taken-over card being emptied).

Claims are read once, in order of member and time, in batches: memory stays bounded by one
member's claims in the window, whatever the span asked about.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from .clock import as_utc, iso_utc
from .models import Entry, Member
from .vocabulary import EntryKind


@dataclass(frozen=True)
class Rules:
    partners: int = 4
    within: timedelta = timedelta(hours=1)
    burn_within: timedelta = timedelta(minutes=10)


def suspicious(session: Session, *, since: datetime, rules: Rules = Rules()) -> list[dict]:
    """Members whose claims recorded at or after `since` cross a rule; each with the rules it
    crossed, the first time each fired."""
    found: list[dict] = []
    for card, member_pk, claims in _claims_by_member(session, since):
        fired = _evaluate(claims, rules)
        if fired:
            found.append({"member_id": card, "member": member_pk, "claims": len(claims),
                          "rules": fired})
    return found


def _claims_by_member(session: Session, since: datetime) -> Iterator[tuple]:
    rows = session.execute(
        select(Entry.member_id, Member.external_id, Entry.kind, Entry.partner_id,
               Entry.recorded_at, Entry.claim_id)
        .join(Member, Member.id == Entry.member_id)
        .where(Entry.recorded_at >= since, Entry.partner_id.is_not(None))
        .order_by(Entry.member_id, Entry.recorded_at, Entry.id)
        .execution_options(yield_per=5000))
    current, card, claims = None, None, []
    for member_pk, external_id, kind, partner_id, recorded_at, claim_id in rows:
        if member_pk != current:
            if claims:
                yield card, current, claims
            current, card, claims = member_pk, external_id, []
        claims.append((kind, partner_id, as_utc(recorded_at), claim_id))
    if claims:
        yield card, current, claims


def _evaluate(claims: list[tuple], rules: Rules) -> list[dict]:
    fired: dict[str, dict] = {}
    window: deque = deque()  # claims within `within` of the latest
    earns: deque = deque()  # earns within `burn_within` of the latest
    for kind, partner, at, claim_id in claims:
        window.append((partner, at))
        while at - window[0][1] > rules.within:
            window.popleft()
        partners = {p for p, _ in window}
        if len(partners) >= rules.partners and "many-partners" not in fired:
            fired["many-partners"] = {"rule": "many-partners", "at": iso_utc(at),
                                      "partners": sorted(partners)}
        while earns and at - earns[0][2] > rules.burn_within:
            earns.popleft()
        if kind == EntryKind.BURN and "burn-after-earn" not in fired:
            earlier = next((e for e in earns if e[1] != partner), None)
            if earlier is not None:
                fired["burn-after-earn"] = {
                    "rule": "burn-after-earn", "at": iso_utc(at), "burn_claim": claim_id,
                    "burned_at": partner, "earn_claim": earlier[0], "earned_at": earlier[1],
                    "seconds_after": int((at - earlier[2]).total_seconds())}
        if kind == EntryKind.EARN:
            earns.append((claim_id, partner, at))
    return list(fired.values())
