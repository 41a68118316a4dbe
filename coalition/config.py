"""Configuration read from the environment (12-factor), with safe defaults for the embedded mode.

Every environment variable the service reads is read here, and only here."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from .periods import EXPIRY_POLICIES, MONTHLY, parse_cutoff


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def _limit(name: str) -> int | None:
    """An optional limit: unset or empty is no limit; otherwise a whole number of at least 1."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number of at least 1 (or unset: no limit).")
    return int(raw)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _secret_key(instance_path: str) -> str:
    """COALITION_SECRET_KEY, else a random key kept in the instance folder (mode 600), so that a
    restart keeps members and operators signed in. Several processes or hosts behind one
    balancer need the same key: set the variable there."""
    given = os.environ.get("COALITION_SECRET_KEY", "").strip()
    if given:
        return given
    path = Path(instance_path) / "secret-key"
    if not path.exists():
        # Written whole under another name, then linked: processes starting together all end
        # up reading the one key that was linked first, never a half-written file.
        draft = path.with_name(f"secret-key.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def _given(names) -> dict[str, str]:
    """The settings among `names` that the environment sets (to something not empty)."""
    return {name: os.environ[name] for name in names if os.environ.get(name) not in (None, "")}


def _pin_log_n() -> int:
    """scrypt cost of member PINs, n = 2**PIN_SCRYPT_LOG_N: 14 (16 MiB, ~45 ms) to 20. Raising it
    re-hashes each PIN when next entered correctly; lower values are for tests only (config)."""
    value = _int("PIN_SCRYPT_LOG_N", 14)
    if not 14 <= value <= 20:
        raise ValueError("PIN_SCRYPT_LOG_N must lie between 14 and 20.")
    return value


def _expiry_policy() -> dict:
    """POINTS_EXPIRY_POLICY, POINTS_EXPIRE_MONTHS and POINTS_EXPIRY_CUTOFF, checked: a bad
    value stops the start with the setting named, rather than dating every new lot wrongly."""
    policy = os.environ.get("POINTS_EXPIRY_POLICY", "").strip().lower() or MONTHLY
    if policy not in EXPIRY_POLICIES:
        raise ValueError(f"POINTS_EXPIRY_POLICY must be one of {', '.join(EXPIRY_POLICIES)}, "
                         f"not {policy!r}.")
    try:
        months = _int("POINTS_EXPIRE_MONTHS", 36)
    except ValueError:
        months = -1
    if not 0 <= months <= 1200:
        raise ValueError("POINTS_EXPIRE_MONTHS must be a whole number of months from 0 to 1200.")
    cutoff = os.environ.get("POINTS_EXPIRY_CUTOFF", "").strip() or "09-30"
    parse_cutoff(cutoff)
    return {"POINTS_EXPIRY_POLICY": policy, "POINTS_EXPIRE_MONTHS": months,
            "POINTS_EXPIRY_CUTOFF": cutoff}


def database_url(url: str) -> str:
    """A database URL as SQLAlchemy 2.1's psycopg dialect takes it.

    postgresql:// becomes postgresql+psycopg://: psycopg 3 is the driver we ship, and a bare
    postgresql:// URL would ask for psycopg2.

    Several hosts (a primary found among them with target_session_attrs=read-write), forms
    that work end to end (tests/test_read_routing.py connects through one):
      postgresql+psycopg://user@/db?host=h1:5432&host=h2:5432&target_session_attrs=read-write
      postgresql+psycopg://user@/db?host=h1,h2&port=5432,5432&target_session_attrs=read-write
    libpq's own form, host=h1:5432,h2:5432 in one parameter, SQLAlchemy does not split into
    ports (psycopg would look up a host named "h2:5432"): it is rewritten here into the first
    form. Hosts in the URL's authority (user@h1:5432,h2:5432/db) SQLAlchemy cannot parse: use
    the query forms."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if not url.startswith("postgresql") or "host=" not in url:
        return url
    from sqlalchemy.engine import make_url  # only for URLs that name their hosts in the query

    parsed = make_url(url)
    hosts = parsed.query.get("host")
    if isinstance(hosts, str) and "," in hosts and ":" in hosts and "port" not in parsed.query:
        parsed = parsed.update_query_dict({"host": hosts.split(",")})
        return parsed.render_as_string(hide_password=False)
    return url


def _positive_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a positive number of seconds, not {raw!r}.")
    return value


def from_environment(instance_path: str) -> dict:
    default_db = "sqlite:///" + str(Path(instance_path) / "coalition.db")
    replica_url = os.environ.get("DATABASE_REPLICA_URL", "").strip()
    return {
        "SQLALCHEMY_DATABASE_URI": database_url(os.environ.get("DATABASE_URL") or default_db),
        # Read replica (coalition/replica.py): a hot standby, usually through its own
        # pgbouncer. Unset: every statement goes to DATABASE_URL. Set: the GETs marked
        # @standby_ok read it while it is reachable and its replay lag is at most
        # DATABASE_REPLICA_MAX_LAG_S seconds (default 5), else they read the primary. Ignored
        # when the primary is SQLite (the embedded mode has no standby).
        "DATABASE_REPLICA_URL": database_url(replica_url) if replica_url else None,
        "DATABASE_REPLICA_MAX_LAG_S": _positive_seconds("DATABASE_REPLICA_MAX_LAG_S", 5.0),
        # Connections go through pgbouncer in transaction mode: no server-side prepared
        # statements (engine_options), which pgbouncer 1.18 cannot carry from one server
        # connection to the next.
        "DATABASE_PGBOUNCER": _flag("DATABASE_PGBOUNCER"),
        "COALITION_AUDIENCE": os.environ.get("COALITION_AUDIENCE", "coalition"),
        "COALITION_TIMEZONE": os.environ.get("COALITION_TIMEZONE", "Europe/Berlin"),
        "MAX_CLAIM_AGE_DAYS": _int("MAX_CLAIM_AGE_DAYS", 30),
        # Point expiry (coalition/periods.py, expiry_of): monthly (the end of the month
        # POINTS_EXPIRE_MONTHS after the earn's month) or yearly (the end of the first
        # POINTS_EXPIRY_CUTOFF day, MM-DD, at least that many months after the earn's month).
        # A lot's expiry is fixed when it is earned: a change applies to earns booked after it.
        **_expiry_policy(),
        # Fraud limits on claims (coalition/claim_limits.py), each off unless set.
        "MEMBER_DAILY_REDEEM_LIMIT": _limit("MEMBER_DAILY_REDEEM_LIMIT"),
        "MEMBER_CLAIMS_PER_MINUTE": _limit("MEMBER_CLAIMS_PER_MINUTE"),
        "PARTNER_DAILY_ISSUE_LIMIT": _limit("PARTNER_DAILY_ISSUE_LIMIT"),
        # Status tiers (coalition/tiers.py): Name:threshold[:multiplier],... lowest first, the
        # first at 0 points; unset: none. Checked at start-up (Rules.from_config).
        "COALITION_TIERS": os.environ.get("COALITION_TIERS", ""),
        # Points a referral gives each of the two members (coalition/activities.py); 0: none.
        "COALITION_REFERRAL_POINTS": _at_least("COALITION_REFERRAL_POINTS", 0, 0),
        "MAX_CONTENT_LENGTH": _int("MAX_BODY_BYTES", 1024 * 1024),
        "MAX_JSON_DEPTH": _int("MAX_JSON_DEPTH", 16),
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        # GET /metrics (coalition/metrics.py): with a token, scrapers send it as a bearer token;
        # without, only loopback peers are answered. PROMETHEUS_MULTIPROC_DIR is prometheus_client's
        # own setting (it reads it too): set under gunicorn, a scrape sums every worker's values.
        "METRICS_TOKEN": os.environ.get("METRICS_TOKEN", "").strip(),
        "PROMETHEUS_MULTIPROC_DIR": os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip(),
        "PIN_SCRYPT_LOG_N": _pin_log_n(),
        # Card harvesting (partners/harvest.py): a partner is flagged when, within the window,
        # it asks about this many distinct unknown cards, or reads this many distinct members'
        # balances without booking anything for them; rules checked at most every N seconds.
        "HARVEST_WINDOW_MINUTES": _int("HARVEST_WINDOW_MINUTES", 10),
        "HARVEST_UNKNOWN_CARDS": _int("HARVEST_UNKNOWN_CARDS", 50),
        "HARVEST_UNBOOKED_READS": _int("HARVEST_UNBOOKED_READS", 200),
        "HARVEST_CHECK_EVERY_S": _int("HARVEST_CHECK_EVERY_S", 30),
        # The coalition's own Ed25519 key that signs statements; generated at first use.
        "COALITION_SIGNING_KEY_FILE": os.environ.get("COALITION_SIGNING_KEY_FILE")
        or str(Path(instance_path) / "coalition-signing-key.pem"),
        # Web sessions (web/: member portal, operator console): signed with this key.
        "SECRET_KEY": _secret_key(instance_path),
        # Session cookies Secure always when set, else only on HTTPS requests (web/security.py).
        "SESSION_COOKIE_SECURE": _flag("COALITION_SECURE_COOKIES"),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        # Abuse limits: only those the environment sets. create_app's test_config may set them
        # too; coalition/limits.py takes RATE_LIMIT_DEFAULTS for the rest.
        **_given(RATE_LIMIT_SETTINGS),
    }


# Abuse limits (coalition/limits.py): `limits` strings such as "100/second;6000/minute", an on/off
# flag, the storage key prefix, and how many proxies in front of the service to trust for
# X-Forwarded-For. REDIS_URL (redis://host:port/db) has no default: counts kept in memory.
RATE_LIMIT_DEFAULTS = {
    "RATELIMIT_ENABLED": "true",
    "RATELIMIT_PARTNER": "6000 per minute",
    "RATELIMIT_ANONYMOUS": "120 per minute",
    "RATELIMIT_RECONCILIATION": "10 per minute;60 per hour",
    "RATELIMIT_KEY_PREFIX": "coalition",
    "TRUSTED_PROXIES": "0",
}
RATE_LIMIT_SETTINGS = (*RATE_LIMIT_DEFAULTS, "REDIS_URL")


# Serving (deploy/gunicorn.conf.py reads the same two variables with the same defaults; it runs
# before the app can be imported): gunicorn processes, and threads per process.
DEFAULT_WORKERS = 2  # WEB_CONCURRENCY
DEFAULT_THREADS = 4  # GUNICORN_THREADS
# Connections a process may open beyond one per thread: a request can briefly hold a second
# one beside its session's (the replay records' pruning in partners/auth.py opens its own).
DEFAULT_POOL_OVERFLOW = 2  # DATABASE_POOL_OVERFLOW


def _at_least(name: str, default: int, minimum: int) -> int:
    value = _int(name, default)
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}.")
    return value


def engine_options(database_uri: str, *, pgbouncer: bool = False) -> dict:
    """SQLAlchemy's engine options for this database. PostgreSQL: each process keeps a pool of
    one connection per gunicorn thread (GUNICORN_THREADS), so that no thread waits for another's
    connection, plus DATABASE_POOL_OVERFLOW opened on demand and closed when returned; checked
    before use when idle for a while (coalition/database.py: a restarted server's dead
    connections are replaced, not handed out). Up to
    WEB_CONCURRENCY x (threads + overflow) connections in all: docs/operations.md, and as
    many again to a read replica if one is set (DATABASE_REPLICA_URL). pgbouncer
    (DATABASE_PGBOUNCER): psycopg prepares no statement on the server (prepare_threshold
    None), since in transaction mode the next transaction may run on another server
    connection that never saw it. SQLite: SQLAlchemy's defaults."""
    if not database_uri.startswith("postgresql"):
        return {}
    options = {"pool_size": _at_least("GUNICORN_THREADS", DEFAULT_THREADS, 1),
               "max_overflow": _at_least("DATABASE_POOL_OVERFLOW", DEFAULT_POOL_OVERFLOW, 0)}
    if pgbouncer:
        options["connect_args"] = {"prepare_threshold": None}
    return options


def operator_name() -> str:
    """$COALITION_OPERATOR, stripped ("" if unset): who runs an operator command. Read when the
    command runs, not when the app is made."""
    return os.environ.get("COALITION_OPERATOR", "").strip()
