"""The stack floor: the least a signed single earn can cost on Flask + PyJWT + psycopg.

It does only the work no implementation of POST /v1/earn can skip: verify the partner's token
(kid looked up in a dict of public keys loaded at start, the signature, aud, exp, iss, htm, htu
and the body hash bsh), record its jti under a unique key, insert one claim row, commit. No
ORM, no members, no ledger. The service's single-earn rate is reported as a ratio to this one,
measured in the same run under the same gunicorn settings (bench/run.py):

    FLOOR_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/bench_x FLOOR_KEYS=keys.json \\
        .venv/bin/gunicorn -c deploy/gunicorn.conf.py -b 127.0.0.1:18001 bench.floor_app:app

FLOOR_KEYS is a JSON file {kid: {"partner_id": ..., "public_key_pem": ...}}. The tables are
created by `create_tables` (bench/run.py calls it before starting the server).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from datetime import datetime, timezone

import jwt
import psycopg
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from flask import Flask, request

CLAIMS_TABLE = "bench_floor_claims"
JTI_TABLE = "bench_floor_jti"
LEEWAY = 30  # the service's clock skew allowance
MAX_LIFETIME = 300
REQUIRED = ["iss", "aud", "iat", "exp", "jti", "htm", "htu", "bsh"]

# A claim row as the service's journal holds it, minus what only the ledger needs (hashes,
# balances). The unique key on (partner_id, claim_id) stays: idempotent retries are part of
# the earn contract, so any implementation pays for that index.
CLAIM_COLUMNS = ("kind", "partner_id", "claim_id", "member_id", "points", "occurred_at",
                 "recorded_at", "period", "description")


def claim_table_ddl(table: str) -> str:
    """Also the shape of the raw PostgreSQL baselines' table (bench/pg_baselines.py)."""
    return f"""CREATE TABLE {table} (
        id bigserial PRIMARY KEY, kind varchar(16) NOT NULL, partner_id varchar(64) NOT NULL,
        claim_id varchar(64) NOT NULL, member_id varchar(64) NOT NULL, points bigint NOT NULL,
        occurred_at timestamptz NOT NULL, recorded_at timestamptz NOT NULL,
        period varchar(7) NOT NULL, description varchar(500),
        UNIQUE (partner_id, claim_id))"""


def create_tables(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {CLAIMS_TABLE}, {JTI_TABLE}")
        conn.execute(claim_table_ddl(CLAIMS_TABLE))
        conn.execute(f"""CREATE TABLE {JTI_TABLE} (partner_id varchar(64), jti varchar(64),
                         expires_at timestamptz NOT NULL, PRIMARY KEY (partner_id, jti))""")


def load_keys(path: str) -> dict[str, tuple[str, object]]:
    with open(path, encoding="utf-8") as fh:
        registered = json.load(fh)
    return {kid: (entry["partner_id"], load_pem_public_key(entry["public_key_pem"].encode()))
            for kid, entry in registered.items()}


def b64url_sha256(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def verify(authorization: str | None, keys: dict, audience: str, method: str, path: str,
           body: bytes) -> dict:
    scheme, _, token = (authorization or "").partition(" ")
    if scheme != "Bearer" or not token:
        raise Refused(401, "no bearer token")
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        partner_id, key = keys[kid]
        claims = jwt.decode(token, key, algorithms=["ES256"], audience=audience, leeway=LEEWAY,
                            options={"require": REQUIRED})
    except (jwt.PyJWTError, KeyError) as err:
        raise Refused(401, f"token: {type(err).__name__}") from None
    if claims["iss"] != partner_id or claims["exp"] - claims["iat"] > MAX_LIFETIME:
        raise Refused(401, "iss or lifetime")
    if claims["htm"] != method or claims["htu"] != path or claims["bsh"] != b64url_sha256(body):
        raise Refused(401, "htm, htu or bsh")
    return claims


def create_app() -> Flask:
    app = Flask(__name__)
    conninfo = os.environ["FLOOR_DATABASE_URL"]
    keys = load_keys(os.environ["FLOOR_KEYS"])
    audience = os.environ.get("FLOOR_AUDIENCE", "coalition")
    # One connection per gunicorn thread, opened on its first request and kept: psycopg_pool
    # is not a dependency of the project, and a thread never needs more than one.
    local = threading.local()

    def connection() -> psycopg.Connection:
        conn = getattr(local, "conn", None)
        if conn is None or conn.closed:
            conn = local.conn = psycopg.connect(conninfo)
        return conn

    insert_jti = f"INSERT INTO {JTI_TABLE} (partner_id, jti, expires_at) VALUES (%s, %s, %s)"
    insert_claim = (f"INSERT INTO {CLAIMS_TABLE} ({', '.join(CLAIM_COLUMNS)}) "
                    f"VALUES ({', '.join(['%s'] * len(CLAIM_COLUMNS))})")

    @app.get("/healthz")
    def healthz():
        return {"status": "alive"}

    @app.post("/v1/earn")
    def earn():
        body = request.get_data()
        try:
            claims = verify(request.headers.get("Authorization"), keys, audience,
                            request.method, request.path, body)
            doc = json.loads(body)
            points = doc["points"]
            if type(points) is not int or not 1 <= points <= 10**9:
                raise Refused(422, "points")
            occurred_at = datetime.fromisoformat(doc["occurred_at"])
        except Refused as refusal:
            return {"error": refusal.reason}, refusal.status
        except (ValueError, KeyError, TypeError):
            return {"error": "malformed body"}, 422
        now = datetime.now(timezone.utc)
        row = ("earn", claims["iss"], doc["claim_id"], doc["member_id"], points, occurred_at,
               now, occurred_at.strftime("%Y-%m"), doc.get("description"))
        conn = connection()
        try:
            conn.execute(insert_jti, (claims["iss"], claims["jti"],
                                      datetime.fromtimestamp(claims["exp"] + LEEWAY, timezone.utc)))
            conn.execute(insert_claim, row)
            conn.commit()
        except psycopg.errors.UniqueViolation as err:
            conn.rollback()
            if err.diag.table_name == JTI_TABLE:
                return {"error": "token replayed"}, 401
            return {"error": "claim id taken"}, 409
        except Exception:
            conn.rollback()
            raise
        return {"claim_id": doc["claim_id"], "member_id": doc["member_id"], "points": points,
                "recorded_at": now.isoformat(), "status": "booked"}, 201

    return app


if os.environ.get("FLOOR_DATABASE_URL"):  # under gunicorn; importing for create_tables needs none
    app = create_app()
