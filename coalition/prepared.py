"""Statements every claim runs, compiled once per process.

SQLAlchemy's work per execution (the statement's cache key, the compiled-cache lookup, the
parameters' processing, the execution context) costs about as much CPU as the driver's own
work for these short statements. On PostgreSQL a `Prepared` statement is compiled on first use
and then handed to the driver as SQL text (psycopg then prepares it on the server after a few
uses, as it does any repeated query). It is only for statements whose bound values need no
processing on PostgreSQL (integers, strings, booleans, aware datetimes, lists of those), which
`run` checks when it compiles. Other databases execute the statement as usual.
"""
from __future__ import annotations

from sqlalchemy.engine import Connection, CursorResult


class Prepared:
    def __init__(self, statement) -> None:
        self.statement = statement
        self._compiled: tuple[str, dict] | None = None

    def run(self, connection: Connection, params: dict) -> CursorResult:
        if connection.dialect.name != "postgresql":
            return connection.execute(self.statement, params)
        if self._compiled is None:
            compiled = self.statement.compile(dialect=connection.dialect)
            if compiled._bind_processors:
                raise TypeError(f"bound values needing processing: {compiled._bind_processors}")
            # Values the statement carries itself (literals such as `remaining > 0`).
            self._compiled = (compiled.string, dict(compiled.params))
        sql, carried = self._compiled
        return connection.exec_driver_sql(sql, {**carried, **params})
