"""Statements as PDF (settlement/pdf.py): the copy a partner's finance team files, rendered from
the signed statement, byte for byte the same every time; and the coalition report as PDF."""
from __future__ import annotations

import base64
import copy
import json
import re
import time
import zlib
from datetime import datetime, timezone

import pytest

from settlement import service as settlement
from settlement.pdf import eur, net_sentence, report_pdf, statement_pdf
from tests.test_settlement import close, may  # noqa: F401  (may: the closed-month fixture)

CLOSED = datetime(2026, 6, 2, tzinfo=timezone.utc)
NETS = {"fuel": "The coalition pays you EUR 8.53", "bakery": "You pay the coalition EUR 9.09",
        "books": "You pay the coalition EUR 0.70"}


def page_text(pdf: bytes) -> bytes:
    """The content streams of a PDF, decoded (reportlab compresses with ASCII85 + Flate): what the
    pages draw, without the document info dictionary."""
    out = []
    for head, raw in re.findall(rb"<<([^<>]*)>>\s*stream\r?\n(.*?)endstream", pdf, re.S):
        if b"/ASCII85Decode" in head:
            raw = raw.strip()
            raw = base64.a85decode(raw if raw.startswith(b"<~") else b"<~" + raw, adobe=True)
        if b"/FlateDecode" in head:
            raw = zlib.decompress(raw)
        out.append(raw)
    return b"\n".join(out)


def pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type /Page(?!s)", pdf))


def drawn(text: str) -> bytes:
    """A string as reportlab writes it in a content stream: `(text) Tj`, parentheses escaped."""
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")


@pytest.fixture
def closed(may):  # noqa: F811
    close(may, "2026-05", CLOSED)
    return {p: settlement.signed(settlement.statement(may, p, "2026-05")) for p in NETS}


def test_a_statement_pdf_carries_what_finance_files_and_what_matches_it_to_the_json(closed):
    for partner, sentence in NETS.items():
        signed = closed[partner]
        raw = statement_pdf(signed, compress=False)
        packed = statement_pdf(signed)
        assert raw.startswith(b"%PDF-") and packed.startswith(b"%PDF-")
        assert len(packed) < len(raw) and pages(raw) == pages(packed) == 1
        assert drawn(sentence) not in packed  # compressed: only in the decoded page streams
        for pdf in (raw, packed):
            text = page_text(pdf)
            for needle in (sentence, "Partner", partner, "2026-05", "May 2026",
                           signed["document"]["closed_at"], f"SHA-256 digest: {signed['digest']}",
                           f"kid {signed['signature']['kid']}",
                           f"Ledger anchor: {signed['document']['ledger_anchor']}"):
                assert drawn(needle) in text, (partner, needle)
        assert drawn(sentence) in raw  # uncompressed: literally in the file's bytes
    fuel = page_text(statement_pdf(closed["fuel"], compress=False))
    for line in ("+8.55", "+1.20", "-1.20", "-0.02", "+8.53",  # reimbursement, credit, charges, net
                 "900 pts redeemed at you x 0.0095", "3 claims x 0.005", "0.012", "0.5", "bakery", "700",
                 "Net amount: EUR +8.53. Sign convention: credits to you are positive"):
        assert drawn(line) in fuel, line


def test_the_same_statement_gives_the_same_bytes(closed, may, monkeypatch):  # noqa: F811
    first = statement_pdf(closed["fuel"])
    again = settlement.signed(settlement.statement(may, "fuel", "2026-05"))  # re-read from the database
    monkeypatch.setattr(time, "time", lambda: 4_000_000_000.0)  # no clock leaks into the file
    assert statement_pdf(again) == first
    assert statement_pdf(closed["fuel"], compress=False) == statement_pdf(again, compress=False)
    assert statement_pdf(closed["bakery"]) != first


def test_nothing_to_pay_and_a_long_counterparty_list(closed):
    zero = copy.deepcopy(closed["books"])
    zero["document"].update(net_cents=0)
    assert drawn("Nothing to pay") in statement_pdf(zero, compress=False)
    many = copy.deepcopy(closed["bakery"])
    for count, expected_pages in ((12, 1), (40, 2)):
        many["document"]["counterparties"] = [
            {"partner_id": f"partner-{i:03}", "issued_by_them_redeemed_here": i * 1000,
             "issued_here_redeemed_there": i} for i in range(count)]
        pdf = statement_pdf(many, compress=False)
        assert pages(pdf) == expected_pages, count
    # the table goes on to page 2, the footer is on every page
    assert pdf.count(drawn(f"SHA-256 digest: {many['digest']}")) == 2
    assert drawn("bakery 2026-05, page 2") in pdf and drawn("partner-039") in pdf
    assert drawn("39,000") in pdf


def test_money_is_formatted_from_integer_cents():
    assert [eur(c) for c in (0, 5, 853, -909, -70, 123456789)] == [
        "0.00", "0.05", "8.53", "-9.09", "-0.70", "1,234,567.89"]
    assert (eur(5, signed=True), eur(-5, signed=True), eur(0, signed=True)) == ("+0.05", "-0.05", "0.00")
    assert eur(10**20 + 1) == "1,000,000,000,000,000,000.01"  # exact: no float anywhere
    for bad in (8.53, "853", True):
        with pytest.raises(ValueError):
            eur(bad)
    assert [net_sentence(c) for c in (1, -1, 0)] == [
        "The coalition pays you EUR 0.01", "You pay the coalition EUR 0.01", "Nothing to pay"]


@pytest.fixture
def report(may):  # noqa: F811
    close(may, "2026-05", CLOSED)
    return settlement.signed(settlement.report(may, "2026-05"))


def test_the_coalition_report_pdf_shows_nets_netting_matrix_and_what_matches_it_to_the_json(report):
    raw, packed = report_pdf(report, compress=False), report_pdf(report)
    assert raw.startswith(b"%PDF-") and packed.startswith(b"%PDF-") and pages(raw) == 1
    doc = report["document"]
    text = page_text(packed)
    for needle in ("Monthly coalition report", "2026-05 (May 2026)", doc["closed_at"],
                   "Operator margin EUR 1.26",
                   # netting in counts and in cents: 8 lines of EUR 26.18 against 3 nets of EUR 18.32
                   "Netting settles 8 money lines with 3 net payments (5 payments saved).",
                   "26.18", "18.32", "7.86",
                   "bakery", "-9.09", "books", "-0.70", "fuel", "+8.53", "+1.26",
                   *(s["digest"] for s in doc["statements"]),
                   "1,250", "1,201", "700", "200",
                   f"SHA-256 digest: {report['digest']}", f"kid {report['signature']['kid']}",
                   f"Ledger anchor: {doc['ledger_anchor']}", doc["ledger_head"],
                   "Coalition report 2026-05, page 1"):
        assert drawn(needle) in text, needle
    assert report_pdf(report) == packed  # same report, same bytes


def test_a_coalition_report_of_many_partners_and_a_v1_report_render(report):
    many = copy.deepcopy(report)
    many["document"]["statements"] = [{"partner_id": f"partner-{i:03}", "net_cents": i - 40,
                                       "digest": f"{i:064x}"} for i in range(80)]
    many["document"]["matrix"] = [{"issuer": f"partner-{i:03}", "redeemer": "fuel", "points": i}
                                  for i in range(1, 80)]
    pdf = report_pdf(many, compress=False)
    assert pages(pdf) >= 3 and pdf.count(drawn(f"SHA-256 digest: {many['digest']}")) == pages(pdf)
    assert drawn("partner-079") in pdf and drawn(f"{79:064x}") in pdf
    v1 = copy.deepcopy(report)  # a month closed before netting was reported in cents
    v1["document"]["payments"] = {"gross_obligations": 8, "net_payments": 3, "saved": 5}
    text = report_pdf(v1, compress=False)
    assert drawn("(5 payments saved).") in text and drawn("liquidity") not in text


def test_the_cli_writes_the_coalition_report_pdf(report, runner, tmp_path):
    out = tmp_path / "report.pdf"
    result = runner.invoke(args=["settlement", "show", "2026-05", "--format", "pdf", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["digest"] == report["digest"]
    assert out.read_bytes() == report_pdf(report)
