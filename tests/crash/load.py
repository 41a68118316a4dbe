"""One load client of the crash suite: a separate process that posts signed claims as a partner
would, and remembers every claim and what the service answered.

A claim is *acknowledged* when the service answered 201 (first booking or idempotent replay),
*rejected* on a definitive 4xx (insufficient points, for instance). Anything else (a refused or
reset connection, a timeout, 5xx, 429, a 409 `claim-id-conflict` race) leaves it unanswered:
the client retries the very same body under a fresh token until it gets an answer, as
docs/partner-api.md asks of a partner. After `stop` is set the client finishes the claim in
hand, retrying it until `deadline_s` at most, and writes its record.
"""
from __future__ import annotations

import http.client
import json
import random
import socket
import time
import urllib.error
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone

from partners.client import PartnerClient, load_private_key, rfc3339

# Definitive answers: the claim is decided and a retry would get the same answer.
REJECTIONS = {"insufficient-points", "reversal-exceeds-claim", "member-locked", "validation-error",
              "not-found"}


@dataclass
class Claim:
    claim_id: str
    kind: str  # earn | burn | reversal
    member_id: str
    points: int
    reverses: str | None = None
    attempts: int = 0
    status: int | None = None
    outcome: str = "unanswered"  # acknowledged | rejected | unanswered
    slug: str | None = None
    replayed: bool = False
    errors: list[str] = field(default_factory=list)


@dataclass
class LoadConfig:
    client: str
    base_url: str
    partner_id: str
    key_path: str
    members: list[str]
    out_path: str
    seed: int
    deadline_s: float = 90.0
    timeout_s: float = 15.0


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected,
                        http.client.IncompleteRead, ConnectionAbortedError)):
        return "reset"
    return type(exc).__name__


def _send(client: PartnerClient, claim: Claim, body: dict) -> None:
    path = "/v1/earn" if claim.kind == "earn" else "/v1/burn"
    if claim.kind == "reversal":
        path = f"/v1/claims/{claim.reverses}/reversals"
    claim.attempts += 1
    try:
        response = client.request("POST", path, body)
    except (OSError, http.client.HTTPException) as exc:
        claim.errors.append(_error_name(exc))
        return
    claim.status = response.status
    if response.status == 201:
        claim.outcome = "acknowledged"
        claim.replayed = response.headers.get("idempotent-replayed") == "true"
        return
    try:
        slug = (response.json() or {}).get("type", "").rsplit("/", 1)[-1]
    except ValueError:
        slug = "unparsable"
    if response.status < 500 and slug in REJECTIONS:
        claim.outcome, claim.slug = "rejected", slug
    else:
        claim.errors.append(f"{response.status}:{slug}")


def _settle(client: PartnerClient, claim: Claim, body: dict, stop, deadline_s: float) -> None:
    """Send until answered, backing off a little between attempts; once the load stops, give
    up after `deadline_s` (the claim then stays unanswered, and the suite fails)."""
    pause, give_up_at = 0.05, None
    while True:
        _send(client, claim, body)
        if claim.outcome != "unanswered":
            return
        if stop.is_set():
            give_up_at = give_up_at or time.monotonic() + deadline_s
            if time.monotonic() > give_up_at:
                return
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


def run(config: LoadConfig, stop) -> None:
    rng = random.Random(config.seed)
    client = PartnerClient(config.base_url, config.partner_id, load_private_key(config.key_path),
                           timeout=config.timeout_s)
    claims: list[Claim] = []
    reversible: dict[str, int] = {}  # acknowledged claim id -> points not yet reversed by us
    seq = 0
    while not stop.is_set():
        seq += 1
        claim_id = f"{config.client}-{seq}"
        roll = rng.random()
        if roll < 0.15 and reversible:
            target = rng.choice(sorted(reversible))
            points = rng.randint(1, max(1, reversible[target] // 2))
            claim = Claim(claim_id, "reversal", "", points, reverses=target)
            body = {"reversal_id": claim_id, "points": points, "occurred_at": rfc3339(None)}
        elif roll < 0.40:
            claim = Claim(claim_id, "burn", rng.choice(config.members), rng.randint(1, 20))
            body = {"claim_id": claim_id, "member_id": claim.member_id, "points": claim.points,
                    "occurred_at": rfc3339(None)}
        else:
            claim = Claim(claim_id, "earn", rng.choice(config.members), rng.randint(10, 200))
            body = {"claim_id": claim_id, "member_id": claim.member_id, "points": claim.points,
                    "occurred_at": rfc3339(None)}
            if rng.random() < 0.1:  # pending: not spendable until tomorrow
                body["pending_until"] = rfc3339(datetime.now(timezone.utc) + timedelta(days=1))
        claims.append(claim)
        _settle(client, claim, body, stop, config.deadline_s)
        if claim.outcome == "acknowledged" and claim.kind != "reversal":
            reversible[claim_id] = claim.points
        elif claim.outcome == "acknowledged":
            reversible[claim.reverses] -= claim.points
            if reversible[claim.reverses] < 2:
                del reversible[claim.reverses]
    with open(config.out_path, "w", encoding="utf-8") as out:
        json.dump([asdict(c) for c in claims], out)
