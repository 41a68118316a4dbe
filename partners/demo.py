"""`flask demo load`: a small demo coalition, booked through the real partner API.

Three partners with keys under instance/demo-keys/, the coalition as the operator issuer,
~40 members and a few hundred earns, burns and reversals spread over the last 20 days, two
holds at the fuel partner (one captured), and the engagement programme: a double-points week at
Demo Books (funded by it), ten extra points on every earn in the last five days (funded by the
coalition), and a coupon at Demo Bakery that five members activate and use; `make demo` also
runs tiers (COALITION_TIERS). Every claim is a signed request sent by the reference client
(partners/client.py) to the app's test client, so it takes exactly the path a partner's request
takes. Deterministic (random.Random(42)) apart from keys and timestamps.
The web faces get a member and two operators (admin, analyst) with known passwords (SIGN_INS).
Idempotent: does nothing when partner demo-bakery exists already.
"""
from __future__ import annotations

import contextvars
import os
import random
import sys
from collections import Counter, defaultdict
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives import serialization
from flask import Flask, current_app
from sqlalchemy import func, select

from coalition import campaigns, clock, coupons, credentials, operators
from coalition.cli import JsonGroup, emit, operator
from coalition.database import db
from coalition.decimals import plain
from coalition.models import Lot
from coalition.verify import verify
from coalition.vocabulary import EntryKind

from . import service
from .client import PartnerClient, Response, keygen, load_private_key
from .models import Partner

demo_cli = JsonGroup("demo", help="Demo data for trying the service out.")

PARTNERS = (  # id, name, algorithm, terms (None: the defaults)
    ("demo-bakery", "Demo Bakery", "EdDSA", {}),
    ("demo-fuel", "Demo Fuel", "ES256", {"claim_fee": "0.02"}),
    ("demo-books", "Demo Books", "EdDSA", {"issuance_share": "0.5"}),
)
MEMBERS = [f"demo-card-{n:04d}" for n in range(1, 41)]
CLAIMS = 300
OPERATOR_ID = "coalition"
COUPON = "demo-bakery-coffee"
# Who can sign in to the web faces of the demo, with these passwords: a demo's, never a secret.
SIGN_INS = {"member": (MEMBERS[0], "demo-member-2026"),
            "admin": ("demo-admin", "demo-admin-2026"),
            "analyst": ("demo-analyst", "demo-analyst-2026")}


def transport_for(app: Flask):
    """Send a signed request through app.test_client(), in a context of its own: the request
    gets its own app context and database session, as it would under gunicorn."""
    client = app.test_client()

    def send(method: str, path: str, headers: dict, body: bytes) -> Response:
        r = contextvars.Context().run(client.open, path, method=method, headers=headers, data=body)
        return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.get_data())
    return send


def _register(app: Flask, key_dir: Path, now: datetime) -> dict:
    """Partners and their keys; a key file left by an earlier run is reused, not overwritten."""
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    clients, actor = {}, operator()
    for partner_id, name, alg, terms in PARTNERS:
        path = key_dir / f"{partner_id}.pem"
        if not path.exists():
            keygen(alg, str(path))  # cryptography; PKCS#8, created with mode 0600
        private_key = load_private_key(path)
        service.add_partner(db.session, partner_id, name, now=now, terms=terms, actor=actor)
        pem = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        key = service.add_key(db.session, partner_id, pem, now=now, actor=actor)
        clients[partner_id] = (PartnerClient("", partner_id, private_key, kid=key.kid,
                                             audience=app.config["COALITION_AUDIENCE"],
                                             transport=transport_for(app)),
                               {"id": partner_id, "alg": alg, "kid": key.kid,
                                "key_file": os.path.relpath(path), "terms": {k: plain(v) for k, v in service.parse_terms(terms).items()}})
    service.add_partner(db.session, OPERATOR_ID, "The coalition", now=now, actor=actor,
                        kind="operator")
    db.session.commit()
    db.session.close()  # the requests below use their own sessions (SQLite: one writer)
    return clients


def _engagement(app: Flask, start: datetime, now: datetime) -> list[str]:
    """Two campaigns and a coupon, as the operator adds them (`flask campaigns add`, `flask
    coupons add`); their ids."""
    tz, actor = app.config["COALITION_TIMEZONE"], operator()
    issuers = set(service.partner_ids(db.session))
    first_day = start.astimezone(ZoneInfo(tz)).date()
    campaigns.add(db.session, "demo-books-double", name="Double points week at Demo Books",
                  kind=campaigns.MULTIPLIER, value="2", starts=first_day.isoformat(),
                  ends=(first_day + timedelta(days=6)).isoformat(), funder="demo-books",
                  issuers=issuers, partners=["demo-books"], cap_per_member=400, now=now, tz=tz,
                  actor=actor)
    five_days_ago = (now - timedelta(days=5)).astimezone(ZoneInfo(tz)).date()
    campaigns.add(db.session, "demo-ten-more", name="Ten more points on every purchase",
                  kind=campaigns.FIXED, value="10", starts=five_days_ago.isoformat(),
                  ends=(now + timedelta(days=30)).astimezone(ZoneInfo(tz)).date().isoformat(),
                  funder=OPERATOR_ID, issuers=issuers, now=now, tz=tz, actor=actor)
    coupons.publish(db.session, COUPON, partner_id="demo-bakery", name="30 points on a coffee",
                    kind=campaigns.FIXED, value="30", starts=first_day.isoformat(),
                    ends=(now + timedelta(days=30)).astimezone(ZoneInfo(tz)).date().isoformat(),
                    issuers=issuers, now=now, tz=tz, actor=actor)
    db.session.commit()
    db.session.close()
    return ["demo-books-double", "demo-ten-more", COUPON]


def _sign_ins(now: datetime) -> dict:
    """A member and two operators (admin, analyst) with passwords, set as anyone sets one: a
    one-time code redeemed."""
    for role in ("admin", "analyst"):
        name, password = SIGN_INS[role]
        code = operators.add(db.session, name, role, now=now, actor=operator())
        credentials.set_password(db.session, credentials.principal("operator", name), code,
                                 password, now=now)
    card, password = SIGN_INS["member"]
    who = credentials.principal("member", card)
    credentials.set_password(db.session, who, credentials.issue_code(
        db.session, who, now=now, actor=operator()), password, now=now)
    db.session.commit()
    return {role: {"name": name, "password": password}
            for role, (name, password) in SIGN_INS.items()}


@demo_cli.command("load")
def load():
    """Build the demo coalition in the current database (skipped if it is there already)."""
    app = current_app._get_current_object()
    if db.session.get(Partner, "demo-bakery") is not None:
        db.session.rollback()
        emit({"skipped": True, "detail": "Partner demo-bakery exists: the demo is loaded already.",
              "members": [MEMBERS[0], "...", MEMBERS[-1]]})
        return
    rng, now = random.Random(42), clock.now()
    clients = _register(app, Path(app.instance_path) / "demo-keys", now)
    ids = sorted(clients)
    statuses: dict[str, Counter] = defaultdict(Counter)
    unexpected: list[dict] = []

    def record(kind: str, r: Response, allowed: tuple = ()) -> bool:
        statuses[kind][str(r.status)] += 1
        if r.status not in (200, 201) and (r.json() or {}).get("type", "").rsplit("/", 1)[-1] not in allowed:
            unexpected.append({"kind": kind, "status": r.status, "body": r.json()})
        return r.status == 201

    for member in MEMBERS:
        record("enrol", clients[rng.choice(ids)][0].enrol(member))

    # Claims in time order over the last 20 days (at most MAX_CLAIM_AGE_DAYS, never ahead of now).
    span = min(timedelta(days=20), timedelta(days=app.config["MAX_CLAIM_AGE_DAYS"], hours=-1))
    start = now - max(span, timedelta(minutes=30))
    times = sorted(start + timedelta(seconds=rng.uniform(0, (now - start).total_seconds() - 600))
                   for _ in range(CLAIMS))
    engagement = _engagement(app, start, now)
    available = dict.fromkeys(MEMBERS, 0)  # balance_after of each member's latest claim
    booked: list[dict] = []  # reversible claims: partner, claim id, points not yet reversed
    for n, at in enumerate(times, 1):
        roll = rng.random()
        rich = [m for m in MEMBERS if available[m] > 0]
        if roll < 0.12 and booked:
            claim = rng.choice(booked)
            points = claim["left"] if rng.random() < 0.5 else rng.randint(1, claim["left"])
            r = clients[claim["partner"]][0].reverse(claim["id"], f"demo-rev-{n:04d}", points, at)
            if record(EntryKind.REVERSAL, r):
                claim["left"] -= points
                available[r.json()["member_id"]] = r.json()["balance_after"]
                if claim["left"] == 0:
                    booked.remove(claim)
            continue
        partner = rng.choice(ids)
        if roll < 0.45 and rich:
            member = rng.choice(rich)
            points = rng.randint(1, available[member])
            r = clients[partner][0].burn(f"demo-burn-{n:04d}", member, points, at,
                                         description=f"Redeemed at {partner}")
            ok = record(EntryKind.BURN, r, allowed=("insufficient-points",))
        else:
            member, points = rng.choice(MEMBERS), rng.choice((10, 25, 50, 80, 120, 200, 350))
            r = clients[partner][0].earn(f"demo-earn-{n:04d}", member, points, at,
                                         description=f"Purchase at {partner}")
            ok = record(EntryKind.EARN, r)
        if ok:
            available[member] = r.json()["balance_after"]
            booked.append({"partner": partner, "id": r.json()["claim_id"], "left": points})

    # Two-phase redemptions at the pump: one captured for less than held, one still open (the
    # member's balance shows it as held for the next 7 days).
    fuel = clients["demo-fuel"][0]
    richest = sorted(MEMBERS, key=lambda m: (-available[m], m))[:2]
    for n, member in enumerate(richest, 1):
        points = max(1, available[member] // 2)
        r = fuel.hold(f"demo-pump-{n}", member, points, now, expires_in=7 * 86400)
        if record("hold", r) and n == 1:
            record("capture", fuel.capture(f"demo-pump-{n}", f"demo-pump-{n}-sale",
                                           points=max(1, points // 2)))

    # The bakery's coupon: five members activate it (at the fuel partner's till) and then buy a
    # coffee; two more activate it and have not used it yet.
    bakery = clients["demo-bakery"][0]
    for n, member in enumerate(MEMBERS[:7]):
        record("coupon activation", fuel.activate_coupon(member, COUPON))
        if n < 5:
            r = bakery.earn(f"demo-coffee-{n + 1}", member, 5, clock.now(),
                            description="Coffee, with the coupon")
            record(EntryKind.EARN, r)
    sign_ins = _sign_ins(clock.now())
    report = verify(db.session)
    bonus_points = db.session.scalar(select(func.coalesce(func.sum(Lot.points), 0))
                                     .where(Lot.source.is_not(None)))
    db.session.rollback()
    emit({"partners": [info for _, info in clients.values()], "members": len(MEMBERS),
          "example_member": MEMBERS[0], "claims_by_kind_and_status": statuses,
          "period": [clock.iso_utc(times[0]), clock.iso_utc(times[-1])],
          "campaigns_and_coupons": engagement, "bonus_points": int(bonus_points),
          "sign_ins": sign_ins,
          "ledger_verify_ok": report["ok"], "unexpected": unexpected})
    if unexpected or not report["ok"]:
        sys.exit(1)
