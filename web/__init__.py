"""The coalition's web faces: the member portal (/portal) and the operator console (/console).

Server-rendered pages over the same domain functions as the partner API and the command line:
a page parses its form, checks who is signed in, calls one domain function and renders the
result. No rule lives here. Imports point one way: web -> settlement -> partners -> coalition.
"""
from __future__ import annotations

import importlib
import pkgutil

from flask import Flask


def load_areas() -> list:
    """Import the console's areas (web/console_*.py, one module each): they add their routes
    and tabs to console.bp, and their strings to the catalog (i18n.extend)."""
    return [importlib.import_module(f"{__name__}.{m.name}")
            for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name)
            if m.name.startswith("console_")]


def init_app(app: Flask, api) -> None:
    from . import console, faces, portal, security
    load_areas()  # before console.bp is registered

    security.init_app(app)
    app.register_blueprint(faces.assets)
    app.register_blueprint(portal.bp)
    app.register_blueprint(console.bp)
