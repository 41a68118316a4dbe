"""Load generator: client processes sending signed partner requests over keep-alive HTTP.

Each client is a process of its own (never a thread of the server's, nor of one another: the
GIL would make the clients the bottleneck). It builds its bodies and signs one token per body
(fresh jti, ES256, as docs/partner-api.md section 3 says) BEFORE the clock starts, opens one
keep-alive connection (http.client), waits at a barrier with the others, then sends until its
bodies run out (a fixed count) or the duration is up. Every answer's status is counted; any
non-2xx answer or connection error makes the run fail (`Result.failed`).

    .venv/bin/python -m bench.load --base-url http://127.0.0.1:18000 --partner bench-shop \\
        --key bench-shop.pem enrol --members 2000
    .venv/bin/python -m bench.load --base-url http://127.0.0.1:18000 --partner bench-shop \\
        --key bench-shop.pem earn --members 2000 --duration 20
    .venv/bin/python -m bench.load --base-url http://127.0.0.1:18000 --partner bench-shop \\
        --key bench-shop.pem burn --members 2000 --duration 20 --points 100

bench/run.py drives it against the service and the floor app (`make bench`).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import math
import multiprocessing
import random
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization

from partners.client import algorithm_for, jwk_thumbprint

LIFETIME = 300  # the longest the service accepts: pre-signed tokens must outlive the run
MAX_RUN_S = LIFETIME - 30  # signing, then the run, all within one token lifetime
MEMBER_PREFIX = "bench-m-"

BodyMaker = Callable[[int], list[bytes]]  # client index -> the bodies it sends, in order


@dataclass(frozen=True)
class Signer:
    partner_id: str
    key_pem: bytes
    audience: str = "coalition"


@dataclass
class Result:
    name: str
    clients: int
    ok: int = 0
    statuses: Counter = field(default_factory=Counter)  # 0: connection error or timeout
    samples: list[str] = field(default_factory=list)  # the first few failed answers
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, every answer
    exhausted: int = 0  # clients that ran out of tokens before the duration was up
    client_cpu: float = 0.0  # CPU seconds the clients spent sending: is the generator the limit?
    crashed: list[str] = field(default_factory=list)
    per_request: int = 1  # claims per request (a batch's items)

    @property
    def failures(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    @property
    def failed(self) -> bool:
        return bool(self.failures or self.exhausted or self.crashed or not self.ok)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def claims_rate(self) -> float:
        return self.rate * self.per_request

    def percentile(self, q: float) -> float:
        """Nearest rank, in milliseconds."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def summary(self) -> dict:
        return {"name": self.name, "clients": self.clients, "ok": self.ok,
                "seconds": round(self.seconds, 3), "rate": round(self.rate, 1),
                "per_request": self.per_request, "claims_rate": round(self.claims_rate, 1),
                "p50_ms": round(self.percentile(0.50), 1),
                "p99_ms": round(self.percentile(0.99), 1),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "failures": self.failures, "exhausted": self.exhausted,
                "client_cpu_s": round(self.client_cpu, 2), "crashed": self.crashed,
                "samples": self.samples}


def merge(name: str, results: list[Result]) -> Result:
    """Runs of one scenario taken together: their answers over their summed time."""
    merged = Result(name, results[0].clients, per_request=results[0].per_request)
    for r in results:
        merged.ok += r.ok
        merged.statuses.update(r.statuses)
        merged.samples.extend(r.samples[:3 - len(merged.samples)])
        merged.seconds += r.seconds
        merged.latencies.extend(r.latencies)
        merged.exhausted += r.exhausted
        merged.client_cpu += r.client_cpu
        merged.crashed.extend(r.crashed)
    return merged


def member_ids(count: int) -> list[str]:
    return [f"{MEMBER_PREFIX}{i:06d}" for i in range(count)]


def compact(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def enrol_bodies(members: list[str], clients: int) -> BodyMaker:
    """Every member once, dealt out over the clients."""
    return lambda index: [compact({"member_id": m}) for m in members[index::clients]]


def earn_bodies(members: list[str], per_client: int) -> BodyMaker:
    """Single earns of 1 to 100 points, each client picking members at random (its own seed:
    runs repeat) so that concurrent requests rarely meet on one member."""
    tag = uuid.uuid4().hex[:8]  # claim ids unique across runs against the same database

    def make(index: int) -> list[bytes]:
        rng = random.Random(index)
        occurred_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return [compact({"claim_id": f"{tag}-{index}-{i}", "member_id": rng.choice(members),
                         "points": rng.randint(1, 100), "occurred_at": occurred_at})
                for i in range(per_client)]
    return make


def burn_bodies(budgets: dict[str, int], clients: int, per_client: int,
                max_points: int = 10) -> BodyMaker:
    """Single burns (POST /v1/burn) of 1 to `max_points` points, each client drawing on its own
    share of the members (every `clients`-th of them, sorted: no two clients burn one member's
    points, nor wait for its lock) at random with its own seed, never more of a member than
    `budgets` says it has (the member's available points, read before the run): a member
    drawn down is left out, and a client whose members all are sends fewer bodies (then
    `exhausted`, if the duration outlasts them). A burn never asks for more than is there, so
    every one should answer 201."""
    tag = uuid.uuid4().hex[:8]
    members = sorted(budgets)

    def make(index: int) -> list[bytes]:
        rng = random.Random(20_000 + index)
        left = {m: budgets[m] for m in members[index::clients] if budgets[m] > 0}
        mine = sorted(left)
        occurred_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        bodies = []
        while len(bodies) < per_client and mine:
            slot = rng.randrange(len(mine))
            member = mine[slot]
            points = min(rng.randint(1, max_points), left[member])
            left[member] -= points
            if not left[member]:
                mine[slot] = mine[-1]
                mine.pop()
            bodies.append(compact({"claim_id": f"{tag}-burn-{index}-{len(bodies)}",
                                   "member_id": member, "points": points,
                                   "occurred_at": occurred_at}))
        return bodies
    return make


def batch_bodies(members: list[str], per_client: int, size: int) -> BodyMaker:
    """Batches of `size` earns (POST /v1/batches), members picked at random as earn_bodies
    does: concurrent batches share members, so they queue on each other's member locks."""
    tag = uuid.uuid4().hex[:8]

    def make(index: int) -> list[bytes]:
        rng = random.Random(10_000 + index)
        occurred_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return [compact({"claims": [
            {"kind": "earn", "claim_id": f"{tag}-b{index}-{n}-{i}", "member_id": rng.choice(members),
             "points": rng.randint(1, 100), "occurred_at": occurred_at} for i in range(size)]})
            for n in range(per_client)]
    return make


def b64url_sha256(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()


def sign_all(signer: Signer, method: str, path: str, bodies: list[bytes]) -> list[dict[str, str]]:
    key = serialization.load_pem_private_key(signer.key_pem, password=None)
    alg, kid = algorithm_for(key), jwk_thumbprint(key.public_key())
    iat = int(time.time())
    headers = []
    for body in bodies:
        claims = {"iss": signer.partner_id, "aud": signer.audience, "iat": iat,
                  "exp": iat + LIFETIME, "jti": uuid.uuid4().hex, "htm": method, "htu": path,
                  "bsh": b64url_sha256(body)}
        token = jwt.encode(claims, key, algorithm=alg, headers={"typ": "partner+jwt", "kid": kid})
        headers.append({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return headers


def _client(index: int, base_url: str, path: str, signer: Signer, make_bodies: BodyMaker,
            duration: float | None, barrier, queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it kills us
    try:
        bodies = make_bodies(index)
        headers = sign_all(signer, "POST", path, bodies)
        url = urlsplit(base_url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        conn.connect()
        barrier.wait(timeout=300)
    except BaseException as err:  # the others must not wait at the barrier for this one
        barrier.abort()
        queue.put({"crashed": f"client {index}: {err!r}"})
        return
    statuses: Counter = Counter()
    latencies, samples = [], []
    start, cpu = time.monotonic(), time.process_time()
    deadline = start + duration if duration else math.inf
    sent = 0
    for body, head in zip(bodies, headers):
        if time.monotonic() >= deadline:
            break
        began = time.perf_counter()
        try:
            conn.request("POST", path, body, head)
            answer = conn.getresponse()
            data = answer.read()
            status = answer.status
        except (OSError, http.client.HTTPException) as err:
            status, data = 0, repr(err).encode()
            conn.close()  # http.client reconnects on the next request
        latencies.append(time.perf_counter() - began)
        statuses[status] += 1
        sent += 1
        if not 200 <= status < 300 and len(samples) < 3:
            samples.append(f"{status} {data[:300].decode('utf-8', 'replace')}")
    end, cpu = time.monotonic(), time.process_time() - cpu
    conn.close()
    queue.put({"statuses": dict(statuses), "latencies": latencies, "samples": samples,
               "start": start, "end": end, "cpu": cpu,
               "exhausted": bool(duration) and sent == len(bodies) and end < deadline})


def run(name: str, base_url: str, path: str, signer: Signer, make_bodies: BodyMaker, *,
        clients: int = 8, duration: float | None = None, per_request: int = 1) -> Result:
    """Send the bodies from `clients` processes; until they run out, or for `duration` s."""
    if duration and duration > MAX_RUN_S:
        raise ValueError(f"duration above {MAX_RUN_S} s: pre-signed tokens would expire")
    ctx = multiprocessing.get_context("fork")  # the body maker may be a closure
    barrier, queue = ctx.Barrier(clients), ctx.Queue()
    procs = [ctx.Process(target=_client, daemon=True,
                         args=(i, base_url, path, signer, make_bodies, duration, barrier, queue))
             for i in range(clients)]
    for p in procs:
        p.start()
    result = Result(name, clients, per_request=per_request)
    starts, ends = [], []
    try:
        for _ in procs:
            # Signing takes seconds, a run at most MAX_RUN_S; a client silent past that is lost.
            report = queue.get(timeout=LIFETIME + 60)
            if "crashed" in report:
                result.crashed.append(report["crashed"])
                continue
            result.statuses.update({int(k): v for k, v in report["statuses"].items()})
            result.latencies.extend(report["latencies"])
            result.samples.extend(report["samples"][:3 - len(result.samples)])
            result.exhausted += report["exhausted"]
            result.client_cpu += report["cpu"]
            starts.append(report["start"])
            ends.append(report["end"])
    except BaseException:  # interrupted, or a client lost: the others must not run on
        for p in procs:
            p.kill()
        raise
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    result.ok = sum(n for status, n in result.statuses.items() if 200 <= status < 300)
    result.seconds = max(ends) - min(starts) if starts else 0.0
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--partner", required=True)
    parser.add_argument("--key", required=True, help="the partner's private key (PEM)")
    parser.add_argument("--audience", default="coalition")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--members", type=int, default=2000)
    sub = parser.add_subparsers(dest="scenario", required=True)
    sub.add_parser("enrol", help="POST /v1/members for every member")
    earn = sub.add_parser("earn", help="single earns, POST /v1/earn")
    earn.add_argument("--duration", type=float, default=20.0)
    earn.add_argument("--max-rate", type=float, default=3000.0,
                      help="tokens pre-signed for at most this many earns per second")
    burn = sub.add_parser("burn", help="single burns, POST /v1/burn (bench.partitions reads "
                          "each member's available points; here --points says what each has)")
    burn.add_argument("--duration", type=float, default=20.0)
    burn.add_argument("--max-rate", type=float, default=3000.0,
                      help="tokens pre-signed for at most this many burns per second")
    burn.add_argument("--points", type=int, required=True,
                      help="the points every member has available at least")
    burn.add_argument("--max-points", type=int, default=10, help="points per burn at most")
    batch = sub.add_parser("batch", help="batches of earns, POST /v1/batches")
    batch.add_argument("--duration", type=float, default=20.0)
    batch.add_argument("--size", type=int, default=1000, help="earns per batch")
    batch.add_argument("--max-rate", type=float, default=20000.0,
                       help="batches pre-signed for at most this many earns per second")
    args = parser.parse_args(argv)
    with open(args.key, "rb") as fh:
        signer = Signer(args.partner, fh.read(), args.audience)
    members = member_ids(args.members)
    if args.scenario == "enrol":
        result = run("enrol", args.base_url, "/v1/members", signer,
                     enrol_bodies(members, args.clients), clients=args.clients)
    elif args.scenario == "batch":
        per_client = math.ceil(args.max_rate * args.duration / args.size / args.clients)
        result = run("batch", args.base_url, "/v1/batches", signer,
                     batch_bodies(members, per_client, args.size), clients=args.clients,
                     duration=args.duration, per_request=args.size)
    elif args.scenario == "burn":
        per_client = math.ceil(args.max_rate * args.duration / args.clients)
        result = run("burn", args.base_url, "/v1/burn", signer,
                     burn_bodies(dict.fromkeys(members, args.points), args.clients, per_client,
                                 args.max_points),
                     clients=args.clients, duration=args.duration)
    else:
        per_client = math.ceil(args.max_rate * args.duration / args.clients)
        result = run("earn", args.base_url, "/v1/earn", signer, earn_bodies(members, per_client),
                     clients=args.clients, duration=args.duration)
    print(json.dumps(result.summary()))
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
