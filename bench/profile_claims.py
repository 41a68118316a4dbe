"""What one signed single earn costs inside the service: statements, flushes, commits and round
trips per earn, and (with --profile) where the time goes.

The earns go through the app's own request handling (Flask's test client, one thread), each
with its own pre-signed ES256 token and claim id, to members enrolled beforehand. Counting:

* statements: SQLAlchemy's before_cursor_execute on the engine;
* flushes: the ORM session's before_flush; commits: the session's after_commit;
* round trips (PostgreSQL only): libpq's protocol trace on every pooled connection, counting
  the server's ReadyForQuery messages (one ends every answer): BEGIN, the statements, COMMIT
  and the pool's pings all show.

The counts come from the first --counted earns, the time (wall and this process's CPU, with
the client's share of the work: the test client builds each request) from the rest, untraced.

    .venv/bin/python -m bench.profile_claims --database-url postgresql+psycopg://postgres@127.0.0.1:5432/DB
    .venv/bin/python -m bench.profile_claims --earns 600 --profile     # pyinstrument's summary

Without --database-url it runs on a temporary SQLite file (no round trips counted there). On
PostgreSQL it migrates the database it is given and adds a partner and members of its own (ids
with a random tag), never deleting anything: use a throwaway database.
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import re
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import event

from partners.client import PartnerClient

SERVER_ANSWERS = re.compile(rb"\tB\t\d+\tReadyForQuery\b")  # the end of every answer


class Counts:
    def __init__(self) -> None:
        self.statements = self.flushes = self.commits = 0
        self.statement_text: dict[str, int] = {}
        self.traces: list[tuple[object, Path]] = []  # (libpq connection, its trace file)

    def trace(self, pgconn, path: Path) -> None:
        # libpq writes through a buffered stream on the descriptor; PQuntrace flushes it.
        pgconn.trace(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT))
        self.traces.append((pgconn, path))

    def _flushed(self) -> list[tuple[object, Path]]:
        traces, self.traces = self.traces, []
        for pgconn, _ in traces:
            pgconn.untrace()
        return traces

    def round_trips(self) -> int:
        """Counted so far; tracing stops (its writes would weigh on the timing)."""
        return sum(len(SERVER_ANSWERS.findall(path.read_bytes())) for _, path in self._flushed())

    def reset(self) -> None:
        self.statements = self.flushes = self.commits = 0
        self.statement_text.clear()
        for pgconn, path in self._flushed():
            path.write_bytes(b"")
            self.trace(pgconn, path)


def instrument(app, counts: Counts, trace_dir: Path) -> None:
    from coalition.database import db

    engine = db.engine

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(conn, cursor, statement, parameters, context, executemany):
        counts.statements += 1
        first = " ".join(statement.split())[:90]
        counts.statement_text[first] = counts.statement_text.get(first, 0) + 1

    @event.listens_for(db.session, "before_flush")
    def _flush(session, flush_context, instances):
        counts.flushes += 1

    @event.listens_for(db.session, "after_commit")
    def _commit(session):
        counts.commits += 1

    if engine.dialect.name == "postgresql":
        @event.listens_for(engine, "connect")
        def _trace(dbapi_connection, _record):
            counts.trace(dbapi_connection.pgconn, trace_dir / f"trace-{uuid.uuid4().hex}.log")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", default=os.environ.get("PROFILE_DATABASE_URL"))
    p.add_argument("--earns", type=int, default=600, help="earns timed")
    p.add_argument("--counted", type=int, default=100, help="earns counted before the timed ones")
    p.add_argument("--members", type=int, default=200)
    p.add_argument("--profile", action="store_true", help="pyinstrument summary of the earns")
    p.add_argument("--all-frames", action="store_true", help="the profile with library frames")
    p.add_argument("--flat", action="store_true", help="the profile as a flat list of functions")
    p.add_argument("--statements", action="store_true", help="list the statements of one earn")
    p.add_argument("--campaigns", type=int, default=0, choices=(0, 2),
                   help="2: the benchmark's two campaigns every earn qualifies for (double "
                        "points funded by the partner, 5 fixed points by the coalition)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or "sqlite:///" + str(Path(tmp) / "profile.db")
        return run(url, args, Path(tmp))


def add_campaigns(session, partner: str, tag: str, *, now: datetime, tz: str) -> None:
    """bench.run's two campaigns (campaigns_running), for this run's partner alone."""
    from coalition import campaigns
    from partners import models as partner_models
    from partners import service as partner_service

    operator = f"coalition-{tag}"
    if session.query(partner_models.Partner).filter_by(kind=partner_models.OPERATOR).first() is None:
        partner_service.add_partner(session, operator, "Coalition", now=now,
                                    kind=partner_models.OPERATOR)
    operator = session.query(partner_models.Partner).filter_by(kind=partner_models.OPERATOR).one().id
    start = (now - timedelta(minutes=1)).isoformat(timespec="minutes")
    issuers = {partner, operator}
    campaigns.add(session, f"double-{tag}", name="Double points", kind="multiplier", value="2",
                  starts=start, ends="2099-12-31", funder=partner, issuers=issuers, now=now,
                  tz=tz, partners=[partner])
    campaigns.add(session, f"fixed-{tag}", name="Five more", kind="fixed", value="5",
                  starts=start, ends="2099-12-31", funder=operator, issuers=issuers, now=now,
                  tz=tz, partners=[partner])


def run(url: str, args, tmp: Path) -> int:
    import flask_migrate

    from coalition import create_app
    from coalition.database import db
    from partners import service as partner_service

    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "RATELIMIT_ENABLED": False,
                      "COALITION_SIGNING_KEY_FILE": str(tmp / "signing.pem"), "LOG_LEVEL": "INFO"})
    for handler in logging.getLogger().handlers:  # JSON lines formatted as in production, dropped
        if getattr(handler, "coalition", False):
            handler.setStream(open(os.devnull, "w"))
    tag = uuid.uuid4().hex[:8]
    partner = f"profile-{tag}"
    key = ec.generate_private_key(ec.SECP256R1())
    with app.app_context():
        flask_migrate.upgrade()
        pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        now = datetime.now(timezone.utc)
        partner_service.add_partner(db.session, partner, "Profile", now=now)
        partner_service.add_key(db.session, partner, pem, now=now)
        if args.campaigns:
            add_campaigns(db.session, partner, tag, now=now, tz=app.config["COALITION_TIMEZONE"])
        db.session.commit()
    client = PartnerClient("", partner, key, lifetime=300)
    members = [f"{tag}-m{i}" for i in range(args.members)]
    test_client = app.test_client()

    def send(path: str, doc: dict) -> int:
        body = client.encode_body(doc)
        return test_client.post(path, data=body, headers=client.sign("POST", path, body)).status_code

    for m in members:
        assert send("/v1/members", {"member_id": m}) == 201
    occurred = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    rng = random.Random(1)
    requests = []
    for i in range(20 + args.counted + args.earns):
        body = client.encode_body({"claim_id": f"{tag}-{i}", "member_id": rng.choice(members),
                                   "points": rng.randint(1, 100), "occurred_at": occurred})
        requests.append((body, client.sign("POST", "/v1/earn", body)))
    warm, counted, timed = requests[:20], requests[20:20 + args.counted], requests[20 + args.counted:]

    counts = Counts()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()  # new connections from here on, each traced
        instrument(app, counts, tmp)
    for body, headers in warm:
        assert test_client.post("/v1/earn", data=body, headers=headers).status_code == 201

    if args.statements:
        counts.reset()
        body, headers = counted[0]
        assert test_client.post("/v1/earn", data=body, headers=headers).status_code == 201
        for text, n in counts.statement_text.items():
            print(f"  {n} x {text}")
        counted = counted[1:]

    counts.reset()
    for body, headers in counted:
        status = test_client.post("/v1/earn", data=body, headers=headers).status_code
        assert status == 201, status
    n = len(counted)
    trips = counts.round_trips() if counts.traces else None
    print(f"per earn ({n} counted): {counts.statements / n:.2f} statements, "
          f"{counts.flushes / n:.2f} flushes, {counts.commits / n:.2f} commits"
          + (f", {trips / n:.2f} round trips" if trips is not None else ""))

    with profiled(args.profile) as profiler:
        started, cpu_started = time.perf_counter(), time.process_time()
        for body, headers in timed:
            status = test_client.post("/v1/earn", data=body, headers=headers).status_code
            assert status == 201, status
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    n = len(timed)
    print(f"database: {app.config['SQLALCHEMY_DATABASE_URI'].split('://')[0]}, {n} earns timed, "
          f"{1000 * seconds / n:.2f} ms per earn in process ({n / seconds:.0f}/s, one thread), "
          f"{1000 * cpu / n:.2f} ms of it CPU in this process")
    if profiler is not None:
        from pyinstrument.renderers import ConsoleRenderer
        print(profiler.output(ConsoleRenderer(unicode=False, color=False, flat=args.flat,
                                              show_all=args.all_frames)))
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    return 0


@contextmanager
def profiled(enabled: bool):
    if not enabled:
        yield None
        return
    from pyinstrument import Profiler
    profiler = Profiler(interval=0.0005)
    profiler.start()
    try:
        yield profiler
    finally:
        profiler.stop()


if __name__ == "__main__":
    sys.exit(main())
