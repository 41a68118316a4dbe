"""Statements as PDF for a partner's finance team to file: one A4 page (two at most for a
partner with many counterparties), rendered from the signed statement and nothing else; and
the coalition report of a month as PDF for the operator, rendered from the signed report
(from v3 with the month's breakage per issuer, when points expired). A v4 statement shows its
bonus points and bonus issuance charge, a v4 report its total of bonus points; documents
of earlier versions render as they always did.

The PDF is a rendering, not the record: its footer carries the SHA-256 digest, the signing
key's kid and the ledger anchor, so anyone can match it to the signed JSON and check that
(`python -m partners.client verify-statement`). Output is deterministic: reportlab's
`invariant` mode fixes the timestamps and the document id, so one document gives one PDF,
byte for byte. Money is formatted from integer cents with Decimal, never float.
"""
from __future__ import annotations

import calendar
import io
from decimal import Decimal, InvalidOperation

from coalition.decimals import plain

from reportlab.lib import colors
from reportlab.lib.enums import TA_LEFT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

COALITION = "Coalition clearing service"
FONT, BOLD = "Helvetica", "Helvetica-Bold"
GRID = TableStyle([
    ("FONT", (0, 0), (-1, -1), FONT, 9),
    ("FONT", (0, 0), (-1, 0), BOLD, 9),
    ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8e8")),
    ("LINEBELOW", (0, 0), (-1, 0), 0.6, colors.black),
    ("LINEBELOW", (0, 1), (-1, -1), 0.25, colors.HexColor("#bbbbbb")),
    ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ("TOPPADDING", (0, 0), (-1, -1), 1.8),
    ("BOTTOMPADDING", (0, 0), (-1, -1), 2.2),
])

# (field, label, +1 credit to the partner | -1 charge to the partner)
MONEY = (
    ("redemption_reimbursement_cents", "Redemption reimbursement", +1),
    ("debt_recovery_credit_cents", "Debt recovery credit", +1),
    ("issuance_charge_cents", "Issuance charge", -1),
    ("redemption_funding_charge_cents", "Redemption funding charge", -1),
    ("fees_cents", "Claim fees", -1),
)
BONUS_MONEY = ("bonus_issuance_charge_cents", "Bonus issuance charge", -1)  # v4 statements
TERMS = (
    ("issue_price", "Issue price", "EUR per point you issue"),
    ("redemption_rate", "Redemption rate", "EUR per point redeemed at you"),
    ("issuance_share", "Issuance share", "of the price charged at issue, the rest at redemption"),
    ("claim_fee", "Claim fee", "EUR per accepted claim"),
)


def eur(cents: int, *, signed: bool = False) -> str:
    """`1234567` -> `12,345.67`; with `signed`, a credit shows `+`. Exact: Decimal, never float."""
    if type(cents) is not int:
        raise ValueError(f"money must be integer cents, not {cents!r}")
    amount = Decimal(cents).scaleb(-2).quantize(Decimal("0.01"))
    text = f"{amount:,.2f}"
    return f"+{text}" if signed and cents > 0 else text


def net_sentence(net_cents: int) -> str:
    if net_cents > 0:
        return f"The coalition pays you EUR {eur(net_cents)}"
    if net_cents < 0:
        return f"You pay the coalition EUR {eur(-net_cents)}"
    return "Nothing to pay"


def rate(text: str) -> str:
    """A term as a statement gives it (`"0.012000"` in a v1 statement) as few digits as it
    needs (`"0.012"`)."""
    try:
        return plain(Decimal(text))
    except (InvalidOperation, TypeError, ValueError):
        return str(text)


def month_name(period: str) -> str:
    try:
        year, month = (int(part) for part in period.split("-"))
        return f"{calendar.month_name[month]} {year}"
    except (ValueError, IndexError):
        return period


def points(value: int) -> str:
    return f"{value:,}"


def _table(rows: list[list], widths: list[float], right_from: int = 1, extra=()) -> Table:
    table = Table(rows, colWidths=widths, repeatRows=1, hAlign="LEFT")
    table.setStyle(GRID)
    table.setStyle(TableStyle([("ALIGN", (right_from, 0), (-1, -1), "RIGHT"), *extra]))
    return table


def _bases(doc: dict) -> dict[str, str]:
    t = {name: rate(value) for name, value in doc["terms"].items()}
    rest = f"(1 - {t['issuance_share']})"
    return {
        "redemption_reimbursement_cents": f"{points(doc['points_redeemed'])} pts redeemed at you "
                                          f"x {t['redemption_rate']}",
        "debt_recovery_credit_cents": f"{points(doc['points_debt_recovered'])} pts of debt recovered "
                                      f"x {t['issue_price']} x {rest}",
        "issuance_charge_cents": f"{points(doc['points_issued'])} pts issued x {t['issue_price']} "
                                 f"x {t['issuance_share']}",
        "redemption_funding_charge_cents": f"{points(doc['points_funded'])} pts of yours redeemed "
                                           f"x {t['issue_price']} x {rest}",
        "fees_cents": f"{points(doc['claims'])} claims x {t['claim_fee']}",
        "bonus_issuance_charge_cents": f"{points(doc.get('bonus_points_issued', 0))} bonus pts you "
                                       f"funded x {t['issue_price']} x {t['issuance_share']}",
    }


def _styles() -> tuple[ParagraphStyle, ...]:
    """body, small, h1, h2, and the big bold line of the summary box."""
    body = ParagraphStyle("body", parent=getSampleStyleSheet()["Normal"], fontName=FONT, fontSize=9,
                          leading=11.5, alignment=TA_LEFT)
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=9.5)
    h1 = ParagraphStyle("h1", parent=body, fontName=BOLD, fontSize=16, leading=20)
    h2 = ParagraphStyle("h2", parent=body, fontName=BOLD, fontSize=11, leading=14,
                        spaceBefore=8, spaceAfter=3)
    big = ParagraphStyle("net", parent=body, fontName=BOLD, fontSize=15, leading=19)
    return body, small, h1, h2, big


def _facts(rows: list[list]) -> Table:
    facts = Table(rows, colWidths=[28 * mm, 59 * mm, 30 * mm, 57 * mm], hAlign="LEFT")
    facts.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), FONT, 9),
                               ("FONT", (0, 0), (0, -1), BOLD, 9), ("FONT", (2, 0), (2, -1), BOLD, 9),
                               ("LEFTPADDING", (0, 0), (0, -1), 0),
                               ("TOPPADDING", (0, 0), (-1, -1), 1), ("BOTTOMPADDING", (0, 0), (-1, -1), 1)]))
    return facts


def _box(lines: list[Paragraph]) -> Table:
    box = Table([[line] for line in lines], colWidths=[174 * mm], hAlign="LEFT")
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1.2, colors.black),
                             ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#f4f4f4")),
                             ("TOPPADDING", (0, 0), (-1, -1), 4), ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
                             ("LEFTPADDING", (0, 0), (-1, -1), 8)]))
    return box


def _story(signed: dict, coalition: str) -> list:
    doc = signed["document"]
    body, small, h1, h2, net_style = _styles()
    net = doc["net_cents"]
    facts = _facts([["Partner", doc["partner_id"], "Closed at (UTC)", doc["closed_at"]],
                    ["Period", f"{doc['period']} ({month_name(doc['period'])})", "Currency", doc["currency"]],
                    ["Claims", f"{points(doc['claims'])} ({points(doc['late_claims'])} late)", "", ""]])
    box = _box([Paragraph(_esc(net_sentence(net)), net_style),
                Paragraph(f"Net amount: EUR {eur(net, signed=True)}. Sign convention: credits to you "
                          "are positive, charges to you negative; a positive net means the "
                          "coalition pays you, a negative net that you pay the coalition.", body)])
    bases = _bases(doc)
    amounts = [["Line", "Basis (each line rounded half up to cents)", "EUR"]]
    money = MONEY + ((BONUS_MONEY,) if BONUS_MONEY[0] in doc else ())
    amounts += [[label, bases[name], eur(sign * doc[name], signed=True)] for name, label, sign in money]
    amounts.append(["Net", "credits - charges", eur(net, signed=True)])
    points_table = _table([["Line", "Points"],
                           ["Issued (net of reversals)", points(doc["points_issued"])],
                           ["Redeemed at you (net of reversals)", points(doc["points_redeemed"])],
                           ["Of yours expired", points(doc["points_expired"])],
                           ["Of yours redeemed anywhere (funded)", points(doc["points_funded"])],
                           ["Of debt owed to you, recovered", points(doc["points_debt_recovered"])],
                           *([["Bonus points you funded (net of reversals)",
                               points(doc["bonus_points_issued"])]]
                             if "bonus_points_issued" in doc else [])],
                          [60 * mm, 22 * mm])
    terms_table = _table([["Term", "Value", "Meaning"]] +
                         [[label, rate(doc["terms"].get(name, "")), Paragraph(_esc(meaning), small)]
                          for name, label, meaning in TERMS],
                         [25 * mm, 15 * mm, 46 * mm], extra=[("ALIGN", (2, 0), (2, -1), "LEFT")])
    side_by_side = Table([[Paragraph("Points", h2), Paragraph("Terms in force for this period", h2)],
                          [points_table, terms_table]],
                         colWidths=[88 * mm, 86 * mm], hAlign="LEFT")
    side_by_side.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"),
                                      *[(pad, (0, 0), (-1, -1), 0) for pad in (
                                          "LEFTPADDING", "RIGHTPADDING", "TOPPADDING", "BOTTOMPADDING")]]))
    story: list = [
        Paragraph(_esc(coalition), h1),
        Paragraph("Monthly settlement statement", body),
        Spacer(1, 6), facts, Spacer(1, 8), box,
        Paragraph("Amounts (EUR)", h2),
        _table(amounts, [48 * mm, 96 * mm, 30 * mm], right_from=2,
               extra=[("FONT", (0, -1), (-1, -1), BOLD, 9),
                      ("LINEABOVE", (0, -1), (-1, -1), 0.8, colors.black)]),
        Spacer(1, 6), side_by_side,
    ]
    heading = Paragraph("Counterparties (points)", h2)
    if doc["counterparties"]:
        story.append(heading)
        story.append(_table([["Partner", "Issued by them, redeemed at you", "Issued by you, redeemed there"]] +
                            [[c["partner_id"], points(c["issued_by_them_redeemed_here"]),
                              points(c["issued_here_redeemed_there"])] for c in doc["counterparties"]],
                            [64 * mm, 55 * mm, 55 * mm]))
    else:
        story.append(KeepTogether([heading, Paragraph(
            "No points crossed between you and another partner this month.", body)]))
    return story


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _footer(signed: dict, record: str, page_label: str):
    doc, sig = signed["document"], signed["signature"]
    lines = [f"This PDF renders {record}; it matches this copy by:",
             f"SHA-256 digest: {signed['digest']}",
             f"Signature: {sig.get('alg', 'EdDSA')}, kid {sig['kid']} (GET /.well-known/jwks.json)",
             f"Ledger anchor: {doc['ledger_anchor']}"]

    def draw(canvas, template) -> None:
        canvas.saveState()
        canvas.setStrokeColor(colors.HexColor("#999999"))
        canvas.line(template.leftMargin, 25 * mm, A4[0] - template.rightMargin, 25 * mm)
        canvas.setFont(FONT, 7)
        for i, line in enumerate(lines):
            canvas.drawString(template.leftMargin, (21.5 - 3.6 * i) * mm, line)
        canvas.drawRightString(A4[0] - template.rightMargin, 10.4 * mm,
                               f"{page_label}, page {canvas.getPageNumber()}")
        canvas.restoreState()
    return draw


def statement_pdf(signed: dict, *, coalition: str = COALITION, compress: bool = True) -> bytes:
    """The PDF of a signed statement (`service.signed(row)`): same input, same bytes.

    `compress=False` leaves the page streams readable (the text appears literally in the bytes)."""
    doc = signed["document"]
    record = ("a statement signed by the coalition. The record is the signed JSON "
              "(GET /v1/statements/PERIOD)")
    return _render(signed, _story(signed, coalition), coalition, compress,
                   title=f"Statement {doc['partner_id']} {doc['period']}",
                   footer=_footer(signed, record, f"{doc['partner_id']} {doc['period']}"))


def report_pdf(signed: dict, *, coalition: str = COALITION, compress: bool = True) -> bytes:
    """The PDF of a signed coalition report (`service.signed(row)`): same input, same bytes."""
    period = signed["document"]["period"]
    record = ("the coalition report signed by the coalition. The record is the signed JSON "
              "(flask settlement show PERIOD)")
    return _render(signed, _report_story(signed, coalition), coalition, compress,
                   title=f"Coalition report {period}",
                   footer=_footer(signed, record, f"Coalition report {period}"))


def _render(signed: dict, story: list, coalition: str, compress: bool, *, title: str, footer) -> bytes:
    out = io.BytesIO()
    template = SimpleDocTemplate(
        out, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm,
        bottomMargin=29 * mm, invariant=1, pageCompression=1 if compress else 0,
        title=title, author=coalition, subject=f"sha256:{signed['digest']}", creator=coalition)
    template.build(story, onFirstPage=footer, onLaterPages=footer)
    return out.getvalue()


def margin_sentence(margin_cents: int) -> str:
    if margin_cents < 0:
        return f"The coalition pays out EUR {eur(-margin_cents)} more than it takes in"
    return f"Operator margin EUR {eur(margin_cents)}"


def _report_story(signed: dict, coalition: str) -> list:
    doc = signed["document"]
    body, small, h1, h2, big = _styles()
    mono = ParagraphStyle("mono", parent=small, fontName="Courier", fontSize=6, leading=8)
    pay = doc["payments"]
    netted = ""
    if "saved_cents" in pay:  # a v1 report counts payments only
        netted = (f" Paid one by one, the statements' money lines would move EUR "
                  f"{eur(pay['gross_obligations_cents'])}; netted, EUR {eur(pay['net_payments_cents'])} "
                  f"moves: EUR {eur(pay['saved_cents'])} of liquidity saved.")
    box = _box([Paragraph(_esc(margin_sentence(doc["operator_margin_cents"])), big),
                Paragraph(_esc(f"Netting settles {points(pay['gross_obligations'])} money lines with "
                               f"{points(pay['net_payments'])} net payments "
                               f"({points(pay['saved'])} payments saved).{netted}"), body)])
    nets = [["Partner", "Net (EUR)", "Direction", "Statement digest (SHA-256)"]]
    for row in doc["statements"]:
        net = row["net_cents"]
        direction = "coalition pays" if net > 0 else "pays coalition" if net < 0 else "nothing"
        nets.append([Paragraph(_esc(str(row["partner_id"])), body), eur(net, signed=True), direction,
                     Paragraph(_esc(str(row["digest"])), mono)])
    nets.append(["Operator margin", eur(doc["operator_margin_cents"], signed=True), "minus the nets", ""])
    netting = [["Payments", "Count", "EUR"],
               ["Gross obligations: every money line paid alone", points(pay["gross_obligations"]),
                eur(pay["gross_obligations_cents"]) if "saved_cents" in pay else ""],
               ["Net payments: one per partner", points(pay["net_payments"]),
                eur(pay["net_payments_cents"]) if "saved_cents" in pay else ""],
               ["Saved by netting", points(pay["saved"]),
                eur(pay["saved_cents"]) if "saved_cents" in pay else ""]]
    totals = doc["totals"]
    story: list = [
        Paragraph(_esc(coalition), h1),
        Paragraph("Monthly coalition report", body),
        Spacer(1, 6),
        _facts([["Period", f"{doc['period']} ({month_name(doc['period'])})",
                 "Closed at (UTC)", doc["closed_at"]],
                ["Partners", points(len(doc["statements"])), "Currency", doc["currency"]],
                ["Points issued", points(totals["points_issued"]),
                 "Points redeemed", points(totals["points_redeemed"])],
                ["Points expired", points(totals["points_expired"]),
                 *(["Bonus points issued", points(totals["bonus_points_issued"])]
                   if "bonus_points_issued" in totals else ["", ""])]]),
        Spacer(1, 8), box,
        Paragraph("Statements (net: > 0 the coalition pays the partner)", h2),
        _table(nets, [38 * mm, 22 * mm, 26 * mm, 88 * mm],
               extra=[("ALIGN", (2, 0), (-1, -1), "LEFT"), ("FONT", (0, -1), (-1, -1), BOLD, 9),
                      ("LINEABOVE", (0, -1), (-1, -1), 0.8, colors.black)]),
        Paragraph("Netting", h2),
        _table(netting, [100 * mm, 30 * mm, 44 * mm]),
    ]
    heading = Paragraph("Issuer x redeemer (points redeemed at the redeemer, issued by the issuer)", h2)
    if doc["matrix"]:
        story.append(heading)
        story.append(_table([["Issuer", "Redeemer", "Points"]] +
                            [[Paragraph(_esc(str(c["issuer"])), body),
                              Paragraph(_esc(str(c["redeemer"])), body), points(c["points"])]
                             for c in doc["matrix"]],
                            [72 * mm, 72 * mm, 30 * mm], right_from=2))
    else:
        story.append(KeepTogether([heading, Paragraph("No points were redeemed this month.", body)]))
    story += _breakage_story(doc, body, h2)
    story += [Spacer(1, 6), Paragraph(_esc(f"Ledger head at the close: {doc.get('ledger_head')}"), small)]
    return story


def _breakage_story(doc: dict, body, h2) -> list:
    """A v3 report's breakage, when points expired: v1 and v2 reports, and months without
    breakage, render as they always did."""
    breakage = doc.get("breakage")
    if not breakage or not breakage["by_issuer"]:
        return []
    rows = [["Issuer", "Points expired", "Issue price (EUR)", "Breakage (EUR)"]]
    rows += [[Paragraph(_esc(str(row["partner_id"])), body), points(row["points"]),
              row["issue_price"], eur(row["breakage_cents"])] for row in breakage["by_issuer"]]
    rows.append(["Total", points(breakage["points"]), "", eur(breakage["breakage_cents"])])
    return [Paragraph("Breakage (points that expired unspent, at each issuer's issue price; "
                      "no money moves)", h2),
            _table(rows, [72 * mm, 30 * mm, 36 * mm, 36 * mm],
                   extra=[("FONT", (0, -1), (-1, -1), BOLD, 9),
                          ("LINEABOVE", (0, -1), (-1, -1), 0.8, colors.black)])]
