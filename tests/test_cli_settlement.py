"""`settlement close` and `settlement show` agree about which months are closed; a month before
the first claim has nothing to close; the coalition report exports as CSV and PDF."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from coalition import books, ledger
from coalition.database import db
from coalition.errors import Problem
from coalition.members import enrol
from coalition.periods import add_months, month_of
from partners import service as partner_service
from settlement import exports, pdf, service

UTC = timezone.utc


def cli(runner, *args):
    result = runner.invoke(args=list(args))
    return result.exit_code, json.loads(result.output)


def months_back(app, n: int) -> str:
    year, month = add_months(*month_of(datetime.now(UTC), app.config["COALITION_TIMEZONE"]), -n)
    return f"{year:04d}-{month:02d}"


@pytest.fixture
def booked(app):
    """Claims two months ago and last month (booked with their own clock): the first month
    with a claim is two months ago."""
    tz = app.config["COALITION_TIMEZONE"]
    with app.app_context():
        for n, back in enumerate((2, 1)):
            year, month = map(int, months_back(app, back).split("-"))
            at = datetime(year, month, 15, 12, tzinfo=UTC)
            if n == 0:
                partner_service.add_partner(db.session, "shop", "Shop", now=at)
                enrol(db.session, "M1", now=at)
            ledger.book_earn(db.session, now=at, rules=ledger.Rules(tz, 30, 36), partner_id="shop",
                             claim_id=f"e{n}", member_id="M1", points=500, occurred_at=at)
        db.session.commit()
    return months_back(app, 2), months_back(app, 1)


def closed(app, period: str) -> bool:
    with app.app_context():
        return books.is_closed(db.session, period)


def test_close_and_show_agree_about_closed_months(app, runner, booked):
    first, second = booked
    before = months_back(app, 3)
    for period in (before, first, second):
        code, error = cli(runner, "settlement", "show", period)
        assert (code, error["error"]) == (1, "period-open") and not closed(app, period)
    assert cli(runner, "settlement", "close", second) == (1, {
        "error": "period-open", "detail": f"Close {first} first: months close in order."})

    assert cli(runner, "settlement", "close", first)[0] == 0
    assert closed(app, first) and cli(runner, "settlement", "show", first)[0] == 0
    assert cli(runner, "settlement", "close", first) == (1, {
        "error": "period-closed", "detail": f"{first} is closed already."})

    # Before the first claim: not closed for show, and close says why there is nothing to close
    # (it said "closed already" once the month after it was closed).
    for period in (before, "2001-01"):
        assert cli(runner, "settlement", "close", period) == (1, {
            "error": "period-open",
            "detail": f"Nothing was booked before {first}: {period} has nothing to close."})
        assert cli(runner, "settlement", "show", period) == (1, {
            "error": "period-open", "detail": f"{period} is not closed."})
        assert cli(runner, "settlement", "show", period, "--partner", "shop") == (1, {
            "error": "period-open", "detail": f"{period} is not closed."})
        assert not closed(app, period)


def test_is_closed(app, booked):
    first, second = booked
    with app.app_context():
        assert not books.is_closed(db.session, first)
        # Not months: digits of other scripts too (Arabic-Indic, fullwidth), which \d would take.
        for period in ("2026-13", "\u0662\u0660\u0662\u0666-05", "\uff12\uff10\uff12\uff16-05"):
            with pytest.raises(Problem) as exc:
                books.is_closed(db.session, period)
            assert exc.value.slug == "validation-error"
        key = service.signing.signing_key(app.config["COALITION_SIGNING_KEY_FILE"])
        service.close(db.session, first, now=datetime.now(UTC), tz=app.config["COALITION_TIMEZONE"],
                      key=key)
        assert books.is_closed(db.session, first) and not books.is_closed(db.session, second)


def test_the_coalition_report_as_csv_and_pdf(app, runner, booked, tmp_path):
    first, _ = booked
    assert cli(runner, "settlement", "close", first)[0] == 0
    with app.app_context():
        signed = service.signed(service.report(db.session, first))

    result = runner.invoke(args=["settlement", "show", first, "--format", "csv"])
    assert result.exit_code == 0
    assert result.output == exports.report_csv(signed["document"], signed["digest"])
    assert f"\nperiod,{first}\n" in result.output and f"\ndigest,{signed['digest']}\n" in result.output

    out = tmp_path / "report.pdf"
    assert cli(runner, "settlement", "show", first, "--format", "pdf", "--out", str(out)) == (0, {
        "written": str(out), "partner_id": None, "period": first, "digest": signed["digest"]})
    assert out.read_bytes() == pdf.report_pdf(signed) and out.read_bytes().startswith(b"%PDF-")

    statement_pdf = tmp_path / "shop.pdf"
    code, written = cli(runner, "settlement", "show", first, "--partner", "shop", "--format", "pdf",
                        "--out", str(statement_pdf))
    assert code == 0 and written["partner_id"] == "shop"
    with app.app_context():
        row = service.statement(db.session, "shop", first)
        assert statement_pdf.read_bytes() == pdf.statement_pdf(service.signed(row))

    for args in (("--format", "pdf"), ("--out", str(tmp_path / "x.json")),
                 ("--format", "csv", "--out", str(tmp_path / "x.csv"))):
        assert cli(runner, "settlement", "show", first, *args) == (1, {
            "error": "validation-error",
            "detail": "--format pdf needs --out FILE, and --out is for PDF only."})
