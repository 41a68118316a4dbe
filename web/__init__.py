"""The coalition's web faces: the member portal (/portal) and the operator console (/console).

Server-rendered pages over the same domain functions as the partner API and the command line:
a page parses its form, checks who is signed in, calls one domain function and renders the
result. No rule lives here. Imports point one way: web -> settlement -> partners -> coalition.
"""
from __future__ import annotations

import importlib
import pkgutil

from flask import Flask


def init_app(app: Flask, api) -> None:
    from . import console, faces, portal, security
    # The console's areas (web/console_*.py, one module each) add their routes and tabs to
    # console.bp: imported before it is registered.
    for area in sorted(m.name for m in pkgutil.iter_modules(__path__)
                       if m.name.startswith("console_")):
        importlib.import_module(f"{__name__}.{area}")

    security.init_app(app)
    app.register_blueprint(faces.assets)
    app.register_blueprint(portal.bp)
    app.register_blueprint(console.bp)
