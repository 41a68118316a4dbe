"""The failover drills' load and bookkeeping: partner threads posting signed claims through
HAProxy, every attempt timed, and the checks and counts per phase made of them afterwards.

Each client thread posts earns, burns and reversals of its own partner, one at a time, each with
a fresh claim id. A claim is *acknowledged* on 201 (a first booking, or an idempotent replay of
one an earlier attempt booked: `Idempotent-Replayed: true`), *rejected* on a definitive 4xx (the
crash suite's REJECTIONS, e.g. insufficient points). On anything else (a refused or reset
connection, a timeout, 502/503/504, 429, a 409 `claim-id-conflict` while the same claim id is
still being booked by an attempt that timed out) the client sends the very same body again
under a fresh token, backing off from 50 ms to 1 s, as docs/reliability.md asks of a partner.
Once the load stops a client finishes the claim in hand, retrying it for `deadline_s` at most.

What the service answered is kept per attempt with its start and end (time.monotonic()), so
that the drill can split the run into phases at the times it struck and repaired, and measure
when the first claim sent after the fault was acknowledged.
"""
from __future__ import annotations

import http.client
import random
import threading
import time
import urllib.error
from collections import Counter
from dataclasses import dataclass, field

import psycopg
from psycopg.rows import dict_row

from partners.client import PartnerClient, load_private_key, rfc3339

from tests.crash.load import REJECTIONS, _error_name

# What a client may see while a fault is being repaired: the claim is retried, and must end
# acknowledged once. Anything else (a 500 above all) is an answer the service must not give.
TRANSIENT = {"refused", "reset", "timeout", "RemoteDisconnected", "URLError",
             "502:bad-gateway", "503:unavailable", "504:gateway-timeout", "409:claim-id-conflict",
             "429:rate-limited"}


@dataclass
class Attempt:
    started: float
    ended: float
    answer: str  # "201", "503:unavailable", "timeout", ...
    body: str = ""  # the first 300 bytes of an unexpected answer, for the report


@dataclass
class Claim:
    partner_id: str
    claim_id: str
    kind: str  # earn | burn | reversal
    member_id: str
    points: int
    reverses: str | None = None
    outcome: str = "unanswered"  # acknowledged | rejected | unanswered
    replayed: bool = False
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def first_sent(self) -> float:
        return self.attempts[0].started

    @property
    def acknowledged_at(self) -> float | None:
        return self.attempts[-1].ended if self.outcome == "acknowledged" else None


class Load:
    """`threads` client threads per partner, started by `start`, stopped by `stop`."""

    def __init__(self, base_url: str, partners: dict[str, str], members: list[str], name: str,
                 threads: int = 2, timeout_s: float = 10.0, deadline_s: float = 60.0) -> None:
        self.base_url, self.partners, self.members, self.name = base_url, partners, members, name
        self.timeout_s, self.deadline_s = timeout_s, deadline_s
        self.claims: list[Claim] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(partner, key, f"{name}-{n}"),
                                          name=f"{name}-{partner}-{n}", daemon=True)
                         for partner, key in partners.items() for n in range(threads)]

    def start(self) -> float:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self.started

    def stop(self) -> float:
        self.stopped = time.monotonic()
        self._stop.set()
        for thread in self._threads:
            thread.join(self.deadline_s + self.timeout_s + 30)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not finish"
        return self.stopped

    def _send(self, client: PartnerClient, claim: Claim, path: str, body: dict) -> None:
        started = time.monotonic()
        try:
            response = client.request("POST", path, body)
        except (OSError, http.client.HTTPException) as exc:
            claim.attempts.append(Attempt(started, time.monotonic(), _error_name(exc)))
            return
        ended = time.monotonic()
        if response.status == 201:
            claim.outcome = "acknowledged"
            claim.replayed = response.headers.get("idempotent-replayed") == "true"
            claim.attempts.append(Attempt(started, ended, "201"))
            return
        try:
            slug = ((response.json() or {}).get("type") or "").rsplit("/", 1)[-1] or "no-type"
        except ValueError:
            slug = "unparsable"
        answer = f"{response.status}:{slug}"
        if response.status < 500 and slug in REJECTIONS:
            claim.outcome = "rejected"
        claim.attempts.append(Attempt(started, ended, answer,
                                      "" if answer in TRANSIENT else response.body[:300].decode(
                                          "utf-8", "replace")))

    def _run(self, partner: str, key: str, prefix: str) -> None:
        rng = random.Random(f"{self.name}/{prefix}/{partner}")
        client = PartnerClient(self.base_url, partner, load_private_key(key), timeout=self.timeout_s)
        reversible: dict[str, int] = {}  # acknowledged earns and burns -> points left to reverse
        seq = 0
        while not self._stop.is_set():
            seq += 1
            claim_id = f"{prefix}-{partner}-{seq}"
            roll = rng.random()
            if roll < 0.1 and reversible:
                target = rng.choice(sorted(reversible))
                points = rng.randint(1, max(1, reversible[target] // 2))
                claim = Claim(partner, claim_id, "reversal", "", points, reverses=target)
                path = f"/v1/claims/{target}/reversals"
                body = {"reversal_id": claim_id, "points": points, "occurred_at": rfc3339(None)}
            else:
                kind = "burn" if roll < 0.3 else "earn"
                points = rng.randint(1, 20) if kind == "burn" else rng.randint(10, 200)
                claim = Claim(partner, claim_id, kind, rng.choice(self.members), points)
                path = f"/v1/{kind}"
                body = {"claim_id": claim_id, "member_id": claim.member_id, "points": points,
                        "occurred_at": rfc3339(None)}
            with self._lock:
                self.claims.append(claim)
            pause, give_up_at = 0.05, None
            while True:
                self._send(client, claim, path, body)
                if claim.outcome != "unanswered":
                    break
                if self._stop.is_set():
                    give_up_at = give_up_at or time.monotonic() + self.deadline_s
                    if time.monotonic() > give_up_at:
                        break
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
            if claim.outcome == "acknowledged" and claim.kind != "reversal":
                reversible[claim_id] = points
            elif claim.outcome == "acknowledged":
                reversible[claim.reverses] -= points
                if reversible[claim.reverses] < 2:
                    del reversible[claim.reverses]


def phase_of(moment: float, phases: list[tuple[str, float]]) -> str:
    """The name of the last phase that began at or before `moment` (phases in order)."""
    name = phases[0][0]
    for candidate, begins in phases:
        if moment >= begins:
            name = candidate
    return name


def counts(claims: list[Claim], phases: list[tuple[str, float]]) -> list[dict]:
    """Per phase: claims first sent in it, acknowledged in it (replays among them), rejected,
    repeated attempts sent in it and the distinct claims they belong to, and what the failed
    attempts of the phase got (by status and slug, or connection error). A last row sums them."""
    rows = {name: {"phase": name, "sent": 0, "acknowledged": 0, "replayed": 0, "rejected": 0,
                   "retried": 0, "retries": 0, "errors": Counter()} for name, _ in phases}
    for claim in claims:
        rows[phase_of(claim.first_sent, phases)]["sent"] += 1
        end = claim.attempts[-1].ended
        if claim.outcome == "acknowledged":
            rows[phase_of(end, phases)]["acknowledged"] += 1
            rows[phase_of(end, phases)]["replayed"] += claim.replayed
        elif claim.outcome == "rejected":
            rows[phase_of(end, phases)]["rejected"] += 1
        retried_in = set()
        for attempt in claim.attempts[1:]:
            rows[phase_of(attempt.started, phases)]["retries"] += 1
            retried_in.add(phase_of(attempt.started, phases))
        for name in retried_in:
            rows[name]["retried"] += 1
        for attempt in claim.attempts:
            if attempt.answer != "201" and not (claim.outcome == "rejected"
                                                and attempt is claim.attempts[-1]):
                rows[phase_of(attempt.started, phases)]["errors"][attempt.answer] += 1
    total = {"phase": "total", "errors": Counter()}
    for row in rows.values():
        for key, value in row.items():
            if key == "errors":
                total["errors"].update(value)
            elif key != "phase":
                total[key] = total.get(key, 0) + value
    return [*rows.values(), total]


def first_acknowledged_after(claims: list[Claim], moment: float) -> float | None:
    """When the first attempt *started* after `moment` was acknowledged: an attempt sent after
    the old primary died can only have been booked by the new one."""
    ends = [a.ended for c in claims for a in c.attempts if a.started > moment and a.answer == "201"]
    return min(ends) if ends else None


def unexpected(claims: list[Claim], allowed: set[str]) -> list[str]:
    """Answers outside `allowed` (and outside definitive rejections), one line each."""
    found = []
    for claim in claims:
        for attempt in claim.attempts:
            if attempt.answer == "201" or attempt.answer in allowed:
                continue
            if claim.outcome == "rejected" and attempt is claim.attempts[-1]:
                continue
            found.append(f"{claim.kind} {claim.partner_id}/{claim.claim_id} attempt at "
                         f"+{attempt.started:.3f}: {attempt.answer} {attempt.body}")
    return found


def journal(port: int, partners: list[str], prefix: str) -> dict[tuple[str, str], list[dict]]:
    """The partners' journal entries whose claim id starts with `prefix` (one drill's), on the
    server at `port` (directly, not through a bouncer), by (partner, claim id)."""
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="coalition",
                         autocommit=True, connect_timeout=5) as conn:
        cursor = conn.cursor(row_factory=dict_row)
        rows = cursor.execute(
            "SELECT e.id, e.partner_id, e.claim_id, e.kind, e.points, m.external_id AS member_id, "
            "       r.claim_id AS reverses "
            "FROM journal_entries e JOIN members m ON m.id = e.member_id "
            "LEFT JOIN journal_entries r ON r.id = e.reverses_id "
            "WHERE e.partner_id = ANY(%s) AND e.claim_id LIKE %s",
            (partners, f"{prefix}-%")).fetchall()
    found: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        found.setdefault((row["partner_id"], row["claim_id"]), []).append(row)
    return found


def ledger_problems(claims: list[Claim], booked: dict[tuple[str, str], list[dict]]) -> list[str]:
    """Every acknowledged claim booked exactly once as sent; nothing booked that was not sent;
    nothing booked that was rejected; no claim left unanswered."""
    problems = []
    sent = {(c.partner_id, c.claim_id): c for c in claims}
    for key, claim in sent.items():
        rows = booked.get(key, [])
        if claim.outcome == "unanswered":
            problems.append(f"{key}: never answered after {len(claim.attempts)} attempts "
                            f"({Counter(a.answer for a in claim.attempts)}); booked {len(rows)}x")
        elif claim.outcome == "rejected" and rows:
            problems.append(f"{key}: rejected ({claim.attempts[-1].answer}) yet booked")
        elif claim.outcome == "acknowledged":
            if len(rows) != 1:
                problems.append(f"{key}: acknowledged, in the journal {len(rows)} times")
                continue
            row = rows[0]
            if (row["kind"], row["points"]) != (claim.kind, claim.points) or (
                    row["reverses"] != claim.reverses if claim.kind == "reversal"
                    else row["member_id"] != claim.member_id):
                problems.append(f"{key}: booked as {row}, sent as {claim}")
    for key in set(booked) - set(sent):
        problems.append(f"{key}: booked, never sent by a client")
    return problems
