"""Time: the one clock, and the one way a timestamp is written.

Every instant is stored and handled in UTC. Answers, CLI output and signed documents write it
as RFC 3339 in UTC with a Z (`2026-05-04T10:00:00Z`, with the microseconds when there are
any): `iso_utc`, and nothing else.
"""
from __future__ import annotations

from datetime import datetime, timezone


def now() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes; everything is stored in UTC.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def iso_utc(value: datetime) -> str:
    return as_utc(value).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """An ISO 8601 date or date-time as an aware datetime: UTC unless it says otherwise.
    ValueError if it is neither."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
