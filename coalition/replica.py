"""Read routing to a hot standby, with the primary as fallback.

When DATABASE_REPLICA_URL is set (PostgreSQL only; coalition/config.py), the app has a second
engine, the Flask-SQLAlchemy bind "replica". A request may read the standby only if its view is
marked `@standby_ok` and it is a GET or HEAD; everything else runs on the primary as before.

Inside such a request (the *standby scope*, opened when the view is entered, so after the
token's jti is spent and the caller authenticated on the primary, and closed when the request
ends, a streamed answer included), coalition/database.py's session sends a statement to the
standby only if all of these hold:
  - it is a plain SELECT: no FOR UPDATE/SHARE, no lock or sequence function (`reads_only`);
  - the session is not flushing and no savepoint is open;
  - nothing was written on the primary yet in this scope (the first write *pins* the rest of
    the request to the primary, so that a request always reads what it wrote itself: the
    harvesting watch's lookup row, an audit event's chain head under its advisory lock);
  - the standby is healthy (`Health`): reachable, and its replay lag within
    DATABASE_REPLICA_MAX_LAG_S.
Writes never reach the standby: they are routed by what they are, not by the endpoint, so a GET
that records something (the partner API's harvesting lookups, the jti of every signed request)
still writes on the primary, in the request's one session. That session then holds two
connections; at its commit (or rollback) the standby's read-only transaction is ended quietly
first, so a standby that went away after the last read cannot fail the primary's commit.
What runs before the view stays on the primary: the partner's token (key lookup and jti,
partners/auth.py). What runs inside it may read the standby, the portal's and console's
sign-in check (login_required) included: an operator disabled on the primary is seen so on the
standby once replayed (at once with remote_apply, else within the lag bound).

A statement the standby fails (a dropped connection, a refused connect, a replication conflict,
or "cannot execute ... in a read-only transaction" for a statement `reads_only` let through)
is retried once on the primary, the standby's connection is dropped from the session, and the
rest of the request stays on the primary; a connection failure also marks the standby away
until the next check. So a standby going away costs a partner nothing, not even a 503: the
read it was doing succeeds on the primary. (The other choice, 503 with Retry-After, would turn
every standby hiccup into client retries against a primary that was fine all along.)

Which endpoints are marked, and why (what they write, and where that goes):
  partners/views.py
    GET /v1/members/{id}/balance, /expiry-notices, /offers: marked. They write one harvesting
      lookup row (partners/harvest.py) after their reads: on the primary, pinning the rest
      (the harvesting check after the commit, which may append an audit event, and the error
      handlers) to the primary.
    GET /v1/claims/{id}: marked (a claim as it stands; reads only besides the jti).
    GET /v1/claims (partners/listings.py): the claims listing, by endpoint name in
      STANDBY_ENDPOINTS below (its module has no marker of its own; same rules otherwise).
    GET /v1/holds/{id}: NOT marked: holds are part of a redemption in progress (a till reads
      its hold between placing and capturing it) and must read their own writes.
    GET /v1/campaigns, /v1/coupons, /v1/segments (partners/bonus_api.py): NOT marked: a
      partner reads back what it has just set up; small reads.
    Every POST/PUT (earn, burn, reversals, holds, batches, enrolment, PINs, consents,
      coupons, invitations), an idempotent replay included: primary (never marked; a marked
      view answering another method would still be on the primary).
  settlement/views.py
    GET /v1/statements, /v1/statements/{period}, /lines (JSON and streamed CSV),
      /reconciliations: marked (closed months do not change; the jti is spent before the
      view). POST .../reconciliation: primary (it stores the answer).
    GET /.well-known/jwks.json: NOT marked: it may register the signing key's row.
  web/portal.py
    GET / (balance), /history, /offers: marked. /consent (GET and POST in one view) is
      marked for its GET only; the POST-redirect-GET that follows a change reads the change
      only with synchronous_commit = remote_apply on the primary (docs/reliability.md).
    Sign-in, set-password, sign-out, coupon activation, export (audited): primary.
  web/console*.py
    Read pages (dashboard and its downloads, settlement months, reports, statements and their
      lines, the audit search, a member's page, partners and a partner's page, campaigns and
      coupons): marked. Forms that lead to a write (lock, unlock, erase, end, close, revoke,
      status, reconciliation upload) are not: an operator confirming an action must see the
      state it is about to change. The console's GET pages write no audit events.
  Rate limits live in Redis (coalition/limits.py), not in the database: unaffected.
  Operator commands (flask ...), the sealer and other background work: primary, always.

`replica_status(app)` answers from the cached check (for /readyz and metrics).
"""
from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql import Select
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import CompoundSelect

log = logging.getLogger("coalition.replica")

BIND = "replica"  # the Flask-SQLAlchemy bind key of the standby's engine
EXTENSION = "coalition_replica"  # app.extensions[EXTENSION]: the app's Health, if configured
# How stale the cached check may be before it is renewed (app config
# DATABASE_REPLICA_CHECK_EVERY_S overrides it: tests set it high and check when they choose).
CHECK_EVERY_S = 1.0
CONNECT_TIMEOUT_S = 2  # libpq's connect_timeout for the standby (its smallest useful value)
CHECK_TIMEOUT_MS = 2000  # statement_timeout of the check itself

# Functions whose SELECT is a write or a lock: never on the standby.
_WRITING_FUNCTIONS = ("pg_advisory", "pg_try_advisory", "nextval", "setval", "pg_notify",
                      "set_config", "pg_terminate_backend", "pg_cancel_backend")

# Lag on a standby: nothing to replay is lag 0 (an idle primary sends nothing, and the last
# replayed transaction's age would grow without bound); a server not in recovery (promoted) is
# lag 0. NULL: no WAL received yet and nothing replayed, lag unknown.
LAG_QUERY = text("""
SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
    ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())
END""")


# Endpoints whose GET may read the standby though their view carries no marker.
STANDBY_ENDPOINTS = frozenset({"partner_api.list_claims"})


def standby_ok(view):
    """Mark a view whose GET may read the standby. Only an attribute: it travels up through
    functools.wraps (flask-smorest's and login_required's wrappers), and the app wraps marked
    endpoints once at start-up (coalition/ops.py, route_reads)."""
    view.standby_ok = True
    return view


def lag_of(connection: Connection) -> float | None:
    """The standby's replay lag in seconds (None: unknown)."""
    connection.exec_driver_sql(f"SET LOCAL statement_timeout = {CHECK_TIMEOUT_MS}")
    value = connection.execute(LAG_QUERY).scalar()
    return None if value is None else max(0.0, float(value))


@dataclass(frozen=True)
class Status:
    healthy: bool
    lag_s: float | None
    reason: str | None  # None when healthy; "unreachable", "lagging", "lag-unknown"
    checked_at: float  # time.time() of the check
    detail: str | None = None


class Health:
    """The standby's health, checked at most every `every_s` and cached for the whole process
    (every thread of a gthread worker shares it). A stale answer starts one check in a
    background thread and is used meanwhile, so no request waits for a slow or blackholed
    standby, except the very first, which has no answer to use yet. Each change of state
    (healthy, unreachable, lagging) is logged once."""

    def __init__(self, engine: Engine, max_lag_s: float, *, every_s: float = CHECK_EVERY_S,
                 lag: Callable[[Connection], float | None] = lag_of) -> None:
        self.engine, self.max_lag_s, self.every_s, self.lag = engine, max_lag_s, every_s, lag
        self._state: Status | None = None
        self._lock = threading.Lock()
        self._checking = False
        self._checked_mono = float("-inf")
        self._pid = os.getpid()

    def status(self) -> Status:
        state = self._state
        if state is None:
            with self._lock:  # the first answer: everyone waits for the one check
                if self._state is None:
                    self._set(self._check())
            return self._state
        if time.monotonic() - self._checked_mono >= self.every_s:
            self._start_background_check()
        return state

    def refresh(self) -> Status:
        """Check now, in this thread (tests, and the first answer)."""
        with self._lock:
            self._set(self._check())
        return self._state

    def mark_down(self, reason: str, detail: str) -> None:
        """A request found the standby away: routed to the primary until the next check."""
        with self._lock:
            self._set(Status(False, None, reason, time.time(), detail))

    def _start_background_check(self) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked copy: the parent's check is not ours
                self._pid, self._checking = os.getpid(), False
            if self._checking or time.monotonic() - self._checked_mono < self.every_s:
                return
            self._checking = True
        threading.Thread(target=self._background_check, name="replica-check",
                         daemon=True).start()

    def _background_check(self) -> None:
        try:
            state = self._check()
            with self._lock:
                self._set(state)
        finally:
            self._checking = False

    def _check(self) -> Status:
        now = time.time()
        try:
            with self.engine.connect() as connection, connection.begin():
                lag = self.lag(connection)
        except Exception as exc:  # whatever it is, the standby cannot serve reads now
            return Status(False, None, "unreachable", now, _short(exc))
        if lag is None:
            return Status(False, None, "lag-unknown", now)
        lag = round(lag, 3)
        if lag > self.max_lag_s:
            return Status(False, lag, "lagging", now, f"replay lag {lag} s > {self.max_lag_s} s")
        return Status(True, lag, None, now)

    def _set(self, state: Status) -> None:
        before, self._state = self._state, state
        self._checked_mono = time.monotonic()
        if before is None or before.healthy != state.healthy or before.reason != state.reason:
            if state.healthy:
                log.warning("read replica in use", extra={"lag_s": state.lag_s})
            else:
                log.warning("read replica not used: reads go to the primary",
                            extra={"reason": state.reason, "lag_s": state.lag_s,
                                   "detail": state.detail})


def _short(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [""])[0]
    return f"{type(orig).__name__}: {first}"[:200]


def replica_status(app) -> dict:
    """The standby as the app sees it now, from the cached check: configured, healthy, lag_s,
    reason, max_lag_s and checked_at (ISO 8601 UTC, or None before the first check). Cheap:
    at most it starts a background check when the cached one is stale."""
    health: Health | None = app.extensions.get(EXTENSION)
    if health is None:
        return {"configured": False, "healthy": False, "lag_s": None, "reason": "not-configured",
                "max_lag_s": None, "checked_at": None}
    state = health.status()
    return {"configured": True, "healthy": state.healthy, "lag_s": state.lag_s,
            "reason": state.reason, "max_lag_s": health.max_lag_s,
            "checked_at": datetime.fromtimestamp(state.checked_at, timezone.utc)
            .isoformat().replace("+00:00", "Z")}


# --- the standby scope of one request ---------------------------------------------------------

@dataclass
class Scope:
    """One request's permission to read the standby, and what became of it."""
    health: Health
    pinned: bool = False  # something was written on the primary: the rest stays there
    routed: bool = False  # the statement being executed went to the standby

    def pin(self) -> None:
        self.pinned = True


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("standby_scope",
                                                                       default=None)


def open_scope(health: Health) -> contextvars.Token:
    return _scope.set(Scope(health))


def close_scope(token: contextvars.Token | None = None) -> None:
    if token is not None:
        try:
            _scope.reset(token)
            return
        except ValueError:  # set in another context (a streamed answer's last chunk)
            pass
    _scope.set(None)


def current_scope() -> Scope | None:
    return _scope.get()


def reads_only(clause) -> bool:
    """A statement the standby can answer: a SELECT (or UNION of them) that locks nothing and
    calls no function that writes or locks. Anything else, text() included, is not."""
    if isinstance(clause, CompoundSelect):
        return all(reads_only(s) for s in clause.selects)
    if not isinstance(clause, Select) or clause._for_update_arg is not None:
        return False
    for column in clause.selected_columns:
        element = getattr(column, "element", column)  # a label's function
        if isinstance(element, FunctionElement) and \
                str(getattr(element, "name", "")).lower().startswith(_WRITING_FUNCTIONS):
            return False
    return True


def plain_select_sql(statement: str) -> bool:
    """For statements seen only as SQL (a session's connection() used directly): a SELECT that
    locks nothing. Anything else executed on the primary inside a scope pins it there."""
    head = statement.lstrip().lower()
    return head.startswith("select") and " for update" not in head and \
        " for share" not in head and not any(name in head for name in _WRITING_FUNCTIONS)
