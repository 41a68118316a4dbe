"""What a database that went away looks like to SQLAlchemy, for the HTTP side (503 with
Retry-After, coalition/errors.py) and the sealer (log, retry at the next tick) alike."""
from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InterfaceError, InvalidRequestError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# SQLAlchemy's words when every reconnection a checkout tried failed its ping
# (coalition/database.py pings a connection that sat idle): during a failover a bouncer may
# still accept logins for a server that is gone. It raises this rather than a DBAPIError.
CHECKOUT_EXHAUSTED = "This connection is closed"


def database_unavailable(exc: BaseException) -> bool:
    """The database went away or refused the work for now (a restart, a dropped connection, a
    failover, a lock or serialisation timeout), or every connection of this process's pool
    stayed busy for pool_timeout: nothing was booked, and the same work may be retried."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated
    return isinstance(exc, InvalidRequestError) and str(exc).startswith(CHECKOUT_EXHAUSTED)
