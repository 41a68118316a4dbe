"""The one database handle. SQLite is the embedded default, PostgreSQL the production database."""
from __future__ import annotations

import time

import logging

from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import Pool

from . import replica
from .config import database_url

log = logging.getLogger("coalition.database")

# Stable constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class RoutingSession(FlaskSession):
    """The session of every request: on the primary, except the plain SELECTs of a request in
    a standby scope while the standby is healthy (coalition/replica.py says which and why)."""

    def get_bind(self, mapper=None, clause=None, bind=None, **kwargs):
        scope = replica.current_scope()
        # No clause: session.connection() and is_sqlite ask for "the" database: the primary.
        if (bind is None and clause is not None and scope is not None and not scope.pinned
                and not self._flushing and not self.in_nested_transaction()
                and replica.reads_only(clause) and scope.health.status().healthy):
            scope.routed = True
            self.info[STANDBY_ENGINE] = scope.health.engine
            return scope.health.engine
        return super().get_bind(mapper=mapper, clause=clause, bind=bind, **kwargs)

    def _execute_internal(self, statement, params=None, **kwargs):
        # Every execute, scalar(s), get and lazy load passes here.
        scope = replica.current_scope()
        if scope is None or scope.pinned:
            return super()._execute_internal(statement, params, **kwargs)
        scope.routed = False
        try:
            return super()._execute_internal(statement, params, **kwargs)
        except DBAPIError as exc:
            if not scope.routed:
                raise
            self._leave_standby(scope, exc)
        return super()._execute_internal(statement, params, **kwargs)  # now on the primary

    def _leave_standby(self, scope: replica.Scope, exc: DBAPIError) -> None:
        """The standby failed a statement: the rest of the request reads the primary, and the
        standby's connection (its transaction aborted or its socket gone) leaves the session."""
        scope.pin()
        sqlstate = getattr(exc.orig, "sqlstate", None) or ""
        if exc.connection_invalidated or sqlstate == "" or sqlstate[:2] in ("08", "57"):
            scope.health.mark_down("unreachable", f"{type(exc.orig).__name__} during a read")
        else:  # 25006: a statement taken for a read wrote; 40001: a replication conflict
            log.warning("standby refused a read: retried on the primary",
                        extra={"sqlstate": sqlstate, "error": type(exc.orig).__name__})
        self.release_standby()

    def release_standby(self) -> None:
        """End the session's read-only transaction on the standby, quietly, and forget its
        connection: nothing was written there, so its end cannot fail the request (a standby
        restarted since the last read would otherwise fail the commit of the primary's work)."""
        engine = self.info.pop(STANDBY_ENGINE, None)
        if engine is None:
            return
        dropped, transaction = [], self._transaction
        while transaction is not None:
            for key in [key for key, held in transaction._connections.items()
                        if held[0].engine is engine]:
                held = transaction._connections.pop(key)
                if transaction._parent is None and held not in dropped:
                    dropped.append(held)
            transaction = transaction._parent
        for connection, trans, _should_commit, _autoclose in dropped:
            for end in (trans.rollback, connection.close):
                try:
                    end()
                except Exception:  # the connection is gone: nothing left to end
                    pass

    def rollback(self) -> None:
        self.release_standby()
        super().rollback()

    def close(self) -> None:
        self.release_standby()
        super().close()


STANDBY_ENGINE = "coalition_standby"  # session.info: the standby's engine, once it was used


@event.listens_for(RoutingSession, "before_commit")
def _release_before_commit(session: RoutingSession) -> None:
    session.release_standby()


# expire_on_commit=False: a view serialises what it booked after commit without reloading it.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False,
                                                   "class_": RoutingSession})


@event.listens_for(Engine, "before_cursor_execute")
def _pin_on_write(connection, _cursor, statement, _parameters, _context, _executemany) -> None:
    """Inside a standby scope, anything but a plain SELECT executed on the primary (a flush,
    the session's connection() used directly, a lock) pins the rest of the request there."""
    scope = replica.current_scope()
    if scope is not None and not scope.pinned and connection.engine is not scope.health.engine \
            and not replica.plain_select_sql(statement):
        scope.pin()


def replica_bind(app: Flask) -> None:
    """Before db.init_app: DATABASE_REPLICA_URL as the bind "replica", with the primary's
    engine options and a short connect timeout (a standby that does not answer is soon
    routed around). None on SQLite: the embedded mode has no standby, the setting is unused."""
    url = app.config.get("DATABASE_REPLICA_URL")
    if not url:
        return
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        log.warning("DATABASE_REPLICA_URL is ignored: the database is SQLite")
        app.config["DATABASE_REPLICA_URL"] = None
        return
    url = database_url(url)
    if not url.startswith("postgresql"):
        raise ValueError("DATABASE_REPLICA_URL must be a postgresql:// URL, as DATABASE_URL is.")
    options = dict(app.config["SQLALCHEMY_ENGINE_OPTIONS"])
    options["connect_args"] = {**options.get("connect_args", {}),
                               "connect_timeout": replica.CONNECT_TIMEOUT_S}
    app.config["SQLALCHEMY_BINDS"] = {**(app.config.get("SQLALCHEMY_BINDS") or {}),
                                      replica.BIND: {"url": url, **options}}
migrate = Migrate(compare_type=True, render_as_batch=True)


def is_sqlite(session: Session) -> bool:
    return session.get_bind().dialect.name == "sqlite"


@event.listens_for(Engine, "connect")
def _sqlite_connect(dbapi_connection, _record) -> None:
    if type(dbapi_connection).__module__ != "sqlite3":
        return
    # Take the transaction into our hands so that every transaction starts as BEGIN IMMEDIATE:
    # SQLite has one writer, and a read that later upgrades to a write would fail with
    # SQLITE_BUSY instead of waiting. Taking the write lock up front makes the member lock
    # (README, "The ledger in ten lines", rule 8) hold on SQLite too.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


@event.listens_for(Engine, "begin")
def _sqlite_begin(connection) -> None:
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


# A pooled PostgreSQL connection is pinged before use only when it sat idle for longer than
# this: a ping is a round trip, and under load connections go back out within milliseconds.
# One that dies while busy (a server restart) fails its request with a disconnect, answered
# 503 with Retry-After (coalition/errors.py), and SQLAlchemy then replaces every connection
# of the pool that is older than the failure.
PING_IDLE_AFTER_S = 1.0


@event.listens_for(Pool, "checkin")
def _returned(dbapi_connection, record) -> None:
    if record is not None:
        record.info["returned_at"] = time.monotonic()


@event.listens_for(Pool, "checkout")
def _ping_if_idle(dbapi_connection, record, _proxy) -> None:
    if type(dbapi_connection).__module__ == "sqlite3":
        return
    returned = record.info.get("returned_at")
    if returned is not None and time.monotonic() - returned <= PING_IDLE_AFTER_S:
        return
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        dbapi_connection.rollback()
    except Exception as exc:  # any failure: the pool discards it and connects afresh
        raise DisconnectionError(str(exc)) from exc
