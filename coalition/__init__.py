"""The coalition clearing service: core ledger, members and the application factory."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import swagger_ui_bundle
from flask import Flask, send_from_directory

from . import audit, cli, errors, limits, metrics, ops, sealer
from .api import api
from .config import engine_options, from_environment
from .database import db, migrate, replica_bind
from .ledger import Rules

ROOT = Path(__file__).resolve().parent.parent
# Bounded parts that plug into the core. Imported by name so that `coalition` never imports
# them (imports point one way only: README, "Layout"); each exposes init_app(app, api).
EXTENSIONS = ("partners", "settlement", "web")


def create_app(test_config: dict | None = None) -> Flask:
    app = Flask(__name__, instance_path=str(ROOT / "instance"))
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(from_environment(app.instance_path))
    app.config.update(
        API_TITLE="Coalition clearing service", API_VERSION="v1", OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/", OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs", OPENAPI_SWAGGER_UI_URL="/docs/static/",
        API_SPEC_OPTIONS={
            "info": {"description": "Partner API of the coalition loyalty clearing service. "
                     "Every request is signed: see components.securitySchemes.partnerToken."},
            "components": {"securitySchemes": {"partnerToken": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT (typ partner+jwt)",
                "description": "ES256 or EdDSA JWT signed with the partner's private key; "
                               "claims iss, aud, iat, exp, jti, htm, htu, bsh. The recipe, step by step "
                               "with a worked example: docs/partner-api.md in the repository."}}},
        },
        EXTENSIONS=EXTENSIONS,
    )
    if test_config:
        app.config.update(test_config)
    # From the database finally chosen (test_config may name another than DATABASE_URL).
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS",
                          engine_options(app.config["SQLALCHEMY_DATABASE_URI"],
                                         pgbouncer=app.config.get("DATABASE_PGBOUNCER", False)))
    replica_bind(app)  # the standby's engine, if DATABASE_REPLICA_URL is set (PostgreSQL)
    app.config["LEDGER_RULES"] = Rules.from_config(app.config)

    db.init_app(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"))
    errors.init_app(app)
    metrics.init_app(app)  # first request hooks: its latency covers the others'
    ops.init_app(app)
    api.init_app(app)
    cli.init_app(app)
    limits.init_app(app)  # after ops (request ids), before the extensions' blueprints
    checks = app.extensions.setdefault("ledger_checks", {})
    checks["blocks"] = sealer.verify_chain
    checks["audit"] = audit.verify_chain

    @app.get("/docs/static/<path:filename>")
    def swagger_static(filename: str):
        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)

    for name in app.config["EXTENSIONS"]:
        importlib.import_module(name).init_app(app, api)
    ops.route_reads(app)  # after every blueprint: the GETs that may read the standby
    return app
