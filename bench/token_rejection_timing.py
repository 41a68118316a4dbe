"""How long a rejected token takes, by why it was rejected: can timing tell which keys exist?

An attacker who can tell "unknown kid" from "revoked kid" from "active kid, bad signature" by
the answer's latency learns which keys are live. All three (and a suspended partner's kid)
must cost one signature verification (partners/tokens.py). The revoked and suspended cases are
signed by a forger, as an attacker without the private key would: the holder of a revoked key
gets a named answer (key-revoked), which tells it nothing it does not know. This measures the median latency
of each case through the whole app (test client, SQLite in a temporary directory), the cases
interleaved round by round so that drift on a shared machine hits them alike, and prints each
median with its ratio to the active-kid-bad-signature case measured in the same run.

    .venv/bin/python bench/token_rejection_timing.py [--rounds 2000] [--alg EdDSA|ES256]
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import flask_migrate  # noqa: E402

from coalition import create_app  # noqa: E402
from coalition.database import db  # noqa: E402
from partners import service  # noqa: E402
from partners.client import jwk_thumbprint  # noqa: E402
from partners.keys import canonical_pem  # noqa: E402
from partners.tokens import body_hash  # noqa: E402


def new_key(alg: str):
    return ed25519.Ed25519PrivateKey.generate() if alg == "EdDSA" else ec.generate_private_key(ec.SECP256R1())


def token(partner: str, key, kid: str, alg: str, body: bytes) -> str:
    now = int(time.time())
    claims = {"iss": partner, "aud": "coalition", "iat": now, "exp": now + 120,
              "jti": uuid.uuid4().hex, "htm": "POST", "htu": "/v1/members", "bsh": body_hash(body)}
    return jwt.encode(claims, key, algorithm=alg, headers={"typ": "partner+jwt", "kid": kid})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--alg", choices=["EdDSA", "ES256"], default="EdDSA")
    args = parser.parse_args()
    alg = args.alg
    workdir = Path(tempfile.mkdtemp(prefix="bench-tokens-"))
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{workdir / 'bench.db'}",
                      "RATELIMIT_ENABLED": False,
                      "COALITION_SIGNING_KEY_FILE": str(workdir / "signing.pem")})
    logging.disable(logging.INFO)  # one log line per request would time the logger too
    keys = {name: new_key(alg) for name in ("active", "revoked", "suspended", "stranger", "forger")}
    kids = {name: jwk_thumbprint(key.public_key()) for name, key in keys.items()}
    with app.app_context():
        flask_migrate.upgrade()
        now = datetime.now(timezone.utc)
        for partner, name in (("acme", "active"), ("bolt", "revoked"), ("cora", "suspended")):
            service.add_partner(db.session, partner, partner.title(), now=now)
            service.add_key(db.session, partner, canonical_pem(keys[name].public_key()).encode(), now=now)
        service.revoke_key(db.session, "bolt", kids["revoked"], now=now)
        service.set_status(db.session, "cora", "suspended", now=now)
        db.session.commit()

    body = json.dumps({"member_id": "M-1"}).encode()
    cases = {  # name -> (iss, signing key, kid in the header)
        "active kid, bad signature": ("acme", keys["forger"], kids["active"]),
        "unknown kid": ("acme", keys["stranger"], kids["stranger"]),
        "revoked kid, forged": ("bolt", keys["forger"], kids["revoked"]),
        "suspended partner's kid, forged": ("cora", keys["forger"], kids["suspended"]),
    }
    client = app.test_client()
    timings: dict[str, list[float]] = {name: [] for name in cases}
    answers: dict[str, tuple[str, str]] = {}
    for round_ in range(args.rounds + 50):  # the first 50 rounds warm caches and are dropped
        for name, (iss, key, kid) in cases.items():
            headers = {"Authorization": f"Bearer {token(iss, key, kid, alg, body)}",
                       "Content-Type": "application/json"}
            started = time.perf_counter()
            answer = client.post("/v1/members", data=body, headers=headers)
            elapsed = time.perf_counter() - started
            problem = answer.get_json()
            assert answer.status_code == 401, (name, answer.status_code)
            # Every case must also read the same, or the latency comparison is moot.
            assert (problem["type"], problem["detail"]) == answers.setdefault(
                "first", (problem["type"], problem["detail"])), (name, problem)
            if round_ >= 50:
                timings[name].append(elapsed)
    baseline = statistics.median(timings["active kid, bad signature"])
    print(f"{alg}, {args.rounds} rounds, median latency of a rejected request (whole app, SQLite)")
    for name, samples in timings.items():
        median = statistics.median(samples)
        print(f"  {name:34s} {median * 1000:7.3f} ms   x{median / baseline:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
