"""Statements as PDF for a partner's finance team to file: one A4 page (two at most for a
partner with many counterparties), rendered from the signed statement and nothing else.

The PDF is a rendering, not the record: its footer carries the SHA-256 digest, the signing
key's kid and the ledger anchor, so anyone can match it to the signed JSON and check that
(`python -m partners.client verify-statement`). Output is deterministic: reportlab's
`invariant` mode fixes the timestamps and the document id, so one statement gives one PDF,
byte for byte. Money is formatted from integer cents with Decimal, never float.
"""
from __future__ import annotations

import calendar
import io
from decimal import Decimal, InvalidOperation

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
    """A term as stored (`"0.012000"`) without trailing zeros (`"0.012"`)."""
    try:
        return format(Decimal(text).normalize(), "f")
    except (InvalidOperation, TypeError):
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
    }


def _story(signed: dict, coalition: str) -> list:
    doc = signed["document"]
    body = ParagraphStyle("body", parent=getSampleStyleSheet()["Normal"], fontName=FONT, fontSize=9,
                          leading=11.5, alignment=TA_LEFT)
    small = ParagraphStyle("small", parent=body, fontSize=8, leading=9.5)
    h1 = ParagraphStyle("h1", parent=body, fontName=BOLD, fontSize=16, leading=20)
    h2 = ParagraphStyle("h2", parent=body, fontName=BOLD, fontSize=11, leading=14,
                        spaceBefore=8, spaceAfter=3)
    net_style = ParagraphStyle("net", parent=body, fontName=BOLD, fontSize=15, leading=19)
    net = doc["net_cents"]
    facts = Table([["Partner", doc["partner_id"], "Closed at (UTC)", doc["closed_at"]],
                   ["Period", f"{doc['period']} ({month_name(doc['period'])})", "Currency", doc["currency"]],
                   ["Claims", f"{points(doc['claims'])} ({points(doc['late_claims'])} late)", "", ""]],
                  colWidths=[28 * mm, 59 * mm, 30 * mm, 57 * mm], hAlign="LEFT")
    facts.setStyle(TableStyle([("FONT", (0, 0), (-1, -1), FONT, 9),
                               ("FONT", (0, 0), (0, -1), BOLD, 9), ("FONT", (2, 0), (2, -1), BOLD, 9),
                               ("LEFTPADDING", (0, 0), (0, -1), 0),
                               ("TOPPADDING", (0, 0), (-1, -1), 1), ("BOTTOMPADDING", (0, 0), (-1, -1), 1)]))
    box = Table([[Paragraph(_esc(net_sentence(net)), net_style)],
                 [Paragraph(f"Net amount: EUR {eur(net, signed=True)}. Sign convention: credits to you "
                            "are positive, charges to you negative; a positive net means the "
                            "coalition pays you, a negative net that you pay the coalition.", body)]],
                colWidths=[174 * mm], hAlign="LEFT")
    box.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 1.2, colors.black),
                             ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#f4f4f4")),
                             ("TOPPADDING", (0, 0), (-1, -1), 4), ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
                             ("LEFTPADDING", (0, 0), (-1, -1), 8)]))
    bases = _bases(doc)
    amounts = [["Line", "Basis (each line rounded half up to cents)", "EUR"]]
    amounts += [[label, bases[name], eur(sign * doc[name], signed=True)] for name, label, sign in MONEY]
    amounts.append(["Net", "credits - charges", eur(net, signed=True)])
    points_table = _table([["Line", "Points"],
                           ["Issued (net of reversals)", points(doc["points_issued"])],
                           ["Redeemed at you (net of reversals)", points(doc["points_redeemed"])],
                           ["Of yours expired", points(doc["points_expired"])],
                           ["Of yours redeemed anywhere (funded)", points(doc["points_funded"])],
                           ["Of debt owed to you, recovered", points(doc["points_debt_recovered"])]],
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


def _footer(signed: dict):
    doc, sig = signed["document"], signed["signature"]
    lines = ["This PDF renders a statement signed by the coalition. The record is the signed JSON "
             "(GET /v1/statements/PERIOD); it matches this copy by:",
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
                               f"{doc['partner_id']} {doc['period']}, page {canvas.getPageNumber()}")
        canvas.restoreState()
    return draw


def statement_pdf(signed: dict, *, coalition: str = COALITION, compress: bool = True) -> bytes:
    """The PDF of a signed statement (`service.signed(row)`): same input, same bytes.

    `compress=False` leaves the page streams readable (the text appears literally in the bytes)."""
    doc = signed["document"]
    out = io.BytesIO()
    template = SimpleDocTemplate(
        out, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm,
        bottomMargin=29 * mm, invariant=1, pageCompression=1 if compress else 0,
        title=f"Statement {doc['partner_id']} {doc['period']}", author=coalition,
        subject=f"sha256:{signed['digest']}", creator=coalition)
    footer = _footer(signed)
    template.build(_story(signed, coalition), onFirstPage=footer, onLaterPages=footer)
    return out.getvalue()
