"""Settlement: monthly periods, signed statements, netting, exports."""
from __future__ import annotations

from flask import Flask


def init_app(app: Flask, api) -> None:
    from . import models  # noqa: F401  (registers the tables with the metadata)
    from .cli import settlement_cli
    from .reconciliation import erase_card, naming_member
    from .service import check_closed_periods
    from .signing import signing_key
    from .views import blp, keys_blp

    api.register_blueprint(blp)
    api.register_blueprint(keys_blp)
    app.cli.add_command(settlement_cli)
    # Stored reconciliations name card numbers: a member export lists those naming the
    # member's card, and a member's erasure takes the card out of them.
    app.extensions.setdefault("member_data", {})["reconciliations"] = naming_member
    app.extensions.setdefault("member_erasure", {})["reconciliation_cards"] = erase_card
    app.extensions.setdefault("ledger_checks", {})["statements"] = (
        lambda session, fail: check_closed_periods(
            session, fail, signing_key(app.config["COALITION_SIGNING_KEY_FILE"])))
