"""The one database handle. SQLite is the embedded default, PostgreSQL the production database."""
from __future__ import annotations

import time

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.pool import Pool

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


# expire_on_commit=False: a view serialises what it booked after commit without reloading it.
db = SQLAlchemy(model_class=Base, session_options={"expire_on_commit": False})
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
