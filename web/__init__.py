"""The coalition's web faces: the member portal (/portal) and the operator console (/console).

Server-rendered pages over the same domain functions as the partner API and the command line:
a page parses its form, checks who is signed in, calls one domain function and renders the
result. No rule lives here. Imports point one way: web -> settlement -> partners -> coalition.
"""
from __future__ import annotations

from flask import Flask


def init_app(app: Flask, api) -> None:
    from . import console, faces, portal, security

    security.init_app(app)
    app.register_blueprint(faces.assets)
    app.register_blueprint(portal.bp)
    app.register_blueprint(console.bp)
