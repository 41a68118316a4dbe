"""Serving knobs (docs/operations.md, "Workers, threads and database connections"): on
PostgreSQL each process's connection pool follows gunicorn's thread count, read from the same
environment variables as deploy/gunicorn.conf.py, with the same defaults. No server needed:
creating an engine opens no connection."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from coalition import config, create_app
from coalition.database import db

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"
SERVING = ("WEB_CONCURRENCY", "GUNICORN_THREADS", "DATABASE_POOL_OVERFLOW")


@pytest.fixture
def environment(monkeypatch, tmp_path):
    for name in SERVING:
        monkeypatch.delenv(name, raising=False)

    def make(uri: str = POSTGRES, **settings: str):
        for name, value in settings.items():
            monkeypatch.setenv(name, value)
        return create_app({"SQLALCHEMY_DATABASE_URI": uri, "TESTING": True,
                           "COALITION_SIGNING_KEY_FILE": str(tmp_path / "signing.pem")})
    return make


def gunicorn_settings() -> dict:
    return runpy.run_path(str(ROOT / "deploy" / "gunicorn.conf.py"))


def test_the_pool_holds_a_connection_per_thread_plus_a_small_overflow(environment):
    app = environment(GUNICORN_THREADS="12")
    assert app.config["SQLALCHEMY_ENGINE_OPTIONS"] == {
        "pool_size": 12, "max_overflow": config.DEFAULT_POOL_OVERFLOW}
    with app.app_context():
        assert db.engine.pool.size() == 12
        assert db.engine.pool._max_overflow == config.DEFAULT_POOL_OVERFLOW
        db.engine.dispose()


def test_the_overflow_can_be_set_and_nonsense_is_refused(environment):
    app = environment(GUNICORN_THREADS="3", DATABASE_POOL_OVERFLOW="0")
    assert app.config["SQLALCHEMY_ENGINE_OPTIONS"]["max_overflow"] == 0
    with pytest.raises(ValueError, match="GUNICORN_THREADS must be at least 1"):
        environment(GUNICORN_THREADS="0")


def test_gunicorn_and_the_pool_read_the_same_settings_with_the_same_defaults(environment,
                                                                             monkeypatch):
    served = gunicorn_settings()
    assert (served["workers"], served["threads"]) == (config.DEFAULT_WORKERS, config.DEFAULT_THREADS)
    assert environment().config["SQLALCHEMY_ENGINE_OPTIONS"]["pool_size"] == config.DEFAULT_THREADS
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("GUNICORN_THREADS", "6")
    served = gunicorn_settings()
    assert (served["workers"], served["threads"]) == (3, 6)
    assert environment().config["SQLALCHEMY_ENGINE_OPTIONS"]["pool_size"] == served["threads"]


def test_the_defaults_stay_far_below_postgresql_s_connection_limit():
    """docs/operations.md: workers x (threads + overflow), plus the sealer and a command or two,
    within the 97 connections a default server (max_connections 100, 3 reserved) allows."""
    assert config.DEFAULT_WORKERS * (config.DEFAULT_THREADS + config.DEFAULT_POOL_OVERFLOW) == 12


def test_sqlite_keeps_sqlalchemy_s_defaults(environment, tmp_path):
    app = environment(f"sqlite:///{tmp_path}/x.db", GUNICORN_THREADS="12")
    assert app.config["SQLALCHEMY_ENGINE_OPTIONS"] == {}
