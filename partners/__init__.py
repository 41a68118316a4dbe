"""Partners: registry, keys, signed-token verification and the partner API."""
from __future__ import annotations

from flask import Flask


def init_app(app: Flask, api) -> None:
    from . import models  # noqa: F401  (registers the tables with the metadata)
    from .cli import campaigns_cli, coupons_cli, partners_cli, segments_cli
    from .demo import demo_cli
    from . import listings  # noqa: F401  (adds GET /v1/claims to the partner blueprint)
    from . import bonus_api  # noqa: F401  (adds /v1/campaigns and /v1/coupons to it)
    from .harvest import erase_lookups, lookups_of
    from .views import blp

    # What a member export adds from here: the partners' lookups of the member's card.
    app.extensions.setdefault("member_data", {})["lookups"] = lookups_of
    # ... and what a member's erasure deletes here: those lookups.
    app.extensions.setdefault("member_erasure", {})["lookups"] = erase_lookups
    api.register_blueprint(blp)
    app.cli.add_command(partners_cli)
    app.cli.add_command(demo_cli)
    app.cli.add_command(campaigns_cli)
    app.cli.add_command(coupons_cli)
    app.cli.add_command(segments_cli)
