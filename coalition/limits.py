"""Abuse limits with Flask-Limiter: 429 `rate-limited` with `Retry-After` (docs/partner-api.md).

Two budgets, each a fixed window (the window opens at a caller's first request in it):

* ``RATELIMIT_PARTNER`` (default 6000 per minute), per partner: every request that carries a
  valid partner token counts against ``partner:<id>``, whatever its address. It is checked
  *after* the token has been verified (``partner:<id>`` is known only then) and after its jti
  has been recorded, so a replayed token is refused (401) without counting: whoever holds
  a leaked, used token cannot spend its partner's quota. The jti is recorded in the request's
  transaction, which a 429 rolls back: a refused request books nothing and leaves the token
  usable, so the partner can retry the very same request after ``Retry-After`` while the
  token lives.
* ``RATELIMIT_RECONCILIATION`` (default 10 per minute and 60 per hour), per partner, on top of
  its partner quota: reconciliation uploads (up to 100,000 claims each) are the costliest
  requests, so they have a budget of their own (:func:`own_quota`).
* ``RATELIMIT_ANONYMOUS`` (default 120 per minute), per source address ``addr:<ip>``: every
  request that does not authenticate as a partner, that is

  - a request to a partner blueprint (``/v1/...``) that fails authentication (any 401:
    no, bad, expired or replayed token). It is counted in the 401 path, and past the budget
    the 401 becomes a 429. A request with a valid token never counts here and is never
    refused because of its address, so an attacker (or a proxy that hides every client
    behind one address) cannot use up a partner's budget: a partner's quota is its own.
    The price: a refused bad token has still been verified (one indexed lookup, at most one
    signature check), which is cheap next to what a partner request books. A replayed
    token carries a valid signature, so it counts once for its partner and once, as a
    401, for the address;
  - ``/openapi.json``, ``/docs`` and ``/docs/static/*``, ``/.well-known/jwks.json`` and
    ``/problems/*``: Flask-Limiter's own application limit, checked before the view runs.

  Both kinds share one bucket per address. Health probes (``/healthz``, ``/readyz``) and
  ``/metrics`` (coalition/metrics.py: a token or loopback peers only) are never limited;
  nor are requests that match no route (404, 405): they do no work.

Where the checks live. Flask-Limiter evaluates its limits in an application
``before_request`` hook, which Flask runs before a blueprint's ``authenticate`` hook, so a
limit keyed by partner cannot be evaluated there. Flask-Limiter therefore only enforces the
address limit on the routes without authentication; a partner blueprint's authentication hook
is wrapped with :func:`authenticates` (its 401s count against the address, and blueprints with
such a hook are exempt from the application limit) and calls :func:`authenticated` with the
partner id between verifying the token and spending its jti. Both use the same
Flask-Limiter instance, storage, strategy and key layout.

Storage: Redis when ``REDIS_URL`` is set (``redis://host:port/db``; counts are shared by every
process and instance using it), else ``memory://``: per process, so without Redis each
gunicorn worker keeps its own counts and a partner gets up to its quota once per worker. Keys are
``LIMITS:LIMITER/<RATELIMIT_KEY_PREFIX>/<partner:id|addr:ip>/<scope>/...`` and expire with their
window. Under ``TESTING`` an app without an explicit prefix gets a unique one, so tests never
share counters through Redis. If the storage fails, requests are let through (fail open,
logged): abuse limits must not take the service down with them.

Settings (README, configuration): ``RATELIMIT_ENABLED``, ``RATELIMIT_PARTNER``,
``RATELIMIT_ANONYMOUS``, ``RATELIMIT_RECONCILIATION`` (``limits`` strings such as ``"100/second;6000/minute"``),
``RATELIMIT_KEY_PREFIX``, ``REDIS_URL``, ``TRUSTED_PROXIES``: from the app's config (a
``create_app`` test_config if set there, else the environment's value, which
coalition/config.py puts there), else the defaults (config.RATE_LIMIT_DEFAULTS).

Addresses: ``request.remote_addr``. ``X-Forwarded-For`` is honoured only when
``TRUSTED_PROXIES`` (a count of proxies in front of the service) is set, through werkzeug's
ProxyFix; behind a proxy without it every caller shares the proxy's address.
"""
from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from functools import wraps

from flask import Flask, current_app, g, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded
from limits import RateLimitItem, parse_many
from werkzeug.middleware.proxy_fix import ProxyFix

from .config import RATE_LIMIT_DEFAULTS
from .errors import Problem, problem_response

log = logging.getLogger("coalition.limits")

EXTENSION = "coalition_limits"
DEFAULTS = RATE_LIMIT_DEFAULTS
PARTNER, ANONYMOUS = "partner", "anonymous"  # the scopes (part of the storage key)
# Routes with a quota of their own besides the partner's (their scope -> setting name).
OWN_QUOTAS = {"reconciliation": "RATELIMIT_RECONCILIATION"}
EXEMPT_ENDPOINTS = frozenset({"healthz", "readyz", "metrics"})
REDIS_OPTIONS = {"socket_connect_timeout": 1.0, "socket_timeout": 1.0}
_AUTHENTICATES = "_coalition_rate_limited_after_authentication"
_OWN_QUOTA = "_coalition_own_quota"


@dataclass(frozen=True)
class _State:
    limiter: Limiter
    enabled: bool
    prefix: str
    partner: list[RateLimitItem]
    anonymous: list[RateLimitItem]
    own: dict[str, list[RateLimitItem]]  # scope -> limits of routes with a quota of their own


def _setting(app: Flask, name: str, default: str | None):
    """App config (create_app's test_config, else the environment's value), else the default."""
    value = app.config.get(name)
    return default if value in (None, "") else value


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() not in (
        "0", "false", "no", "off")


def init_app(app: Flask) -> None:
    enabled = _flag(_setting(app, "RATELIMIT_ENABLED", DEFAULTS["RATELIMIT_ENABLED"]))
    partner = str(_setting(app, "RATELIMIT_PARTNER", DEFAULTS["RATELIMIT_PARTNER"]))
    anonymous = str(_setting(app, "RATELIMIT_ANONYMOUS", DEFAULTS["RATELIMIT_ANONYMOUS"]))
    redis_url = _setting(app, "REDIS_URL", None)
    prefix = _setting(app, "RATELIMIT_KEY_PREFIX", None) or (
        f"coalition-test-{uuid.uuid4().hex}" if app.config.get("TESTING")
        else DEFAULTS["RATELIMIT_KEY_PREFIX"])
    proxies = int(_setting(app, "TRUSTED_PROXIES", DEFAULTS["TRUSTED_PROXIES"]))
    own = {name: str(_setting(app, name, DEFAULTS[name])) for name in OWN_QUOTAS.values()}
    app.config.update(RATELIMIT_ENABLED=enabled, RATELIMIT_PARTNER=partner,
                      RATELIMIT_ANONYMOUS=anonymous, REDIS_URL=redis_url,
                      RATELIMIT_KEY_PREFIX=prefix, TRUSTED_PROXIES=proxies, **own)
    if proxies > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies)

    limiter = Limiter(
        request_key,
        application_limits=[ApplicationLimit(anonymous, scope=ANONYMOUS,
                                             exempt_when=_counted_at_authentication)],
        storage_uri=redis_url or "memory://",
        storage_options=dict(REDIS_OPTIONS) if redis_url else {},
        strategy="fixed-window", key_prefix=prefix, headers_enabled=False,
        swallow_errors=True, enabled=enabled)
    limiter.request_filter(lambda: request.endpoint in EXEMPT_ENDPOINTS)
    limiter.init_app(app)  # reads RATELIMIT_ENABLED (a bool by now) from app.config
    app.extensions[EXTENSION] = _State(
        limiter, enabled, prefix, sorted(parse_many(partner)), sorted(parse_many(anonymous)),
        {scope: sorted(parse_many(own[name])) for scope, name in OWN_QUOTAS.items()})
    app.register_error_handler(RateLimitExceeded, _rate_limit_exceeded)


def request_key() -> str:
    """``partner:<id>`` once the request has authenticated, else ``addr:<source address>``."""
    partner_id = g.get("partner_id")
    return f"partner:{partner_id}" if partner_id else address_key()


def address_key() -> str:
    return f"addr:{request.remote_addr or 'unknown'}"


def authenticates(hook):
    """Wrap a blueprint's authentication hook: a 401 it raises counts against the caller's
    address (and becomes a 429 past ``RATELIMIT_ANONYMOUS``); the blueprint's routes are left
    out of Flask-Limiter's address limit. The hook must call :func:`authenticated`."""
    @wraps(hook)
    def guarded(*args, **kwargs):
        try:
            return hook(*args, **kwargs)
        except Problem as problem:
            if problem.status == 401:
                _hit(ANONYMOUS, address_key())
            raise
    setattr(guarded, _AUTHENTICATES, True)
    return guarded


def authenticated(partner_id: str) -> None:
    """Count a request of a verified partner; 429 past ``RATELIMIT_PARTNER``, or past the
    route's own quota (:func:`own_quota`). Call it after every cheap rejection (a replayed
    jti first), in the transaction that spends the jti, so that a refused request leaves
    the token unspent."""
    _hit(PARTNER, f"partner:{partner_id}")
    view = current_app.view_functions.get(request.endpoint)
    scope = getattr(view, _OWN_QUOTA, None)
    if scope is not None:
        _hit(scope, f"partner:{partner_id}")


def own_quota(scope: str):
    """Mark a view whose requests also count against a quota of their own per partner
    (``OWN_QUOTAS[scope]``): expensive routes such as reconciliation. Put it right under
    the route decorator, so that it marks the view as registered."""
    if scope not in OWN_QUOTAS:
        raise ValueError(f"no quota setting for scope {scope!r}")

    def mark(view):
        setattr(view, _OWN_QUOTA, scope)
        return view
    return mark


def _counted_at_authentication() -> bool:
    funcs = current_app.before_request_funcs
    return any(getattr(f, _AUTHENTICATES, False)
               for name in request.blueprints for f in funcs.get(name, ()))


def _hit(scope: str, key: str) -> None:
    state: _State | None = current_app.extensions.get(EXTENSION)
    if state is None or not state.enabled:
        return
    strategy = state.limiter.limiter
    identifiers = (state.prefix, key, scope)
    items = (state.partner if scope == PARTNER else
             state.anonymous if scope == ANONYMOUS else state.own[scope])
    for item in items:
        try:
            if strategy.hit(item, *identifiers):
                continue
            reset_at = strategy.get_window_stats(item, *identifiers).reset_time
        except Exception:  # the storage is down: let the request through
            log.exception("rate limit storage failed; request not limited")
            return
        log.info("rate limited", extra={"scope": scope, "limit": str(item),
                                        "partner_id": g.get("partner_id")})
        raise rate_limited(reset_at, item)


def rate_limited(reset_at: float, item: RateLimitItem) -> Problem:
    retry_after = max(1, math.ceil(reset_at - time.time()))
    return Problem("rate-limited", f"Too many requests (limit: {item}); retry after "
                   f"{retry_after} seconds.", headers={"Retry-After": str(retry_after)})


def _rate_limit_exceeded(exc: RateLimitExceeded):
    """Flask-Limiter's own 429 (the address limit on unauthenticated routes), as problem+json."""
    item = exc.limit.limit
    try:
        current = current_app.extensions[EXTENSION].limiter.current_limit
        reset_at = current.window.reset_time if current else time.time() + item.get_expiry()
    except Exception:
        reset_at = time.time() + item.get_expiry()
    return problem_response(rate_limited(reset_at, item))
