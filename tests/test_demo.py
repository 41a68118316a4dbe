"""`flask demo load` (partners/demo.py): the demo coalition books cleanly and its web sign-ins
work with the passwords `make demo` prints."""
from __future__ import annotations

import json
from pathlib import Path

from coalition import clock, credentials, operators
from coalition.database import db
from partners.demo import SIGN_INS

MAKEFILE = Path(__file__).resolve().parent.parent / "Makefile"


def test_the_demo_loads_once_and_its_sign_ins_work_with_the_printed_passwords(app, runner):
    result = runner.invoke(args=["demo", "load"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["ledger_verify_ok"] and not doc["unexpected"]
    assert doc["sign_ins"]["admin"] == {"name": "demo-admin", "password": "demo-admin-2026"}
    again = json.loads(runner.invoke(args=["demo", "load"]).output)
    assert again["skipped"] is True
    printed = MAKEFILE.read_text()
    with app.app_context():
        for role, (name, password) in SIGN_INS.items():
            kind = "member" if role == "member" else "operator"
            who = credentials.principal(kind, name)
            assert not credentials.sign_in(db.session, who, password + "x", now=clock.now()).ok
            assert credentials.sign_in(db.session, who, password, now=clock.now()).ok, role
            assert password in printed and name in printed.replace("$(DEMO_MEMBER)",
                                                                   SIGN_INS["member"][0])
            if kind == "operator":
                assert operators.get(db.session, name).role == role
        db.session.commit()
