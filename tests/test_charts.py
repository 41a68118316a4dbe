"""web/charts.py: SVG that parses, names itself to assistive technology, carries no inline style
or script, escapes every text, localises numbers through the page's formatter, and draws an
empty chart rather than failing."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from decimal import Decimal

import pytest

from web import charts
from web.charts import Series

SVG = "{http://www.w3.org/2000/svg}"
BAKERY = "<Bäcker & Co>"
MONTHS = ["2026-05", "2026-06", "2026-07"]


def german(value) -> str:
    """1234 -> 1.234, Decimal('1234.5') -> 1.234,5: what a German page passes."""
    return f"{value:,}".replace(",", " ").replace(".", ",").replace(" ", ".")


def drawn() -> dict[str, str]:
    return {
        "line": charts.line_chart("Liability", "Points held at each month's end", MONTHS,
                                  [Series("points", [1200, 1500, 1234]),
                                   Series(BAKERY, [100, None, 300])], fmt=german,
                                  y_label="points", x_label="month"),
        "grouped": charts.bar_chart("Issuance", "per partner", [BAKERY, "bolt"],
                                    [Series("issued", [1234, -40]), Series("redeemed", [0, 500])],
                                    fmt=german),
        "stacked": charts.bar_chart("Claims per day", "accepted and rejected", MONTHS,
                                    [Series("accepted", [10, 20, 0]),
                                     Series("validation-error", [1, 0, 3])], stacked=True),
        "simple": charts.bar_chart("Tiers", "members per tier", ["Blue", "Silver", "Gold"],
                                   [Series("members", [1234, 310, 0])], fmt=german),
        "heat": charts.heat_map("Issuer × redeemer", "points, 2026-06", [BAKERY, "bolt"],
                                [BAKERY, "bolt"], {(BAKERY, "bolt"): 1234, ("bolt", "bolt"): 5},
                                fmt=german, row_label="issuer", column_label="redeemer"),
        "eur": charts.line_chart("Liability EUR", "EUR", MONTHS,
                                 [Series("EUR", [Decimal("1.18"), Decimal("2.25"), Decimal("1234.50")])],
                                 fmt=german),
    }


def texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text")]


def tips(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return [t.text for t in root.iter(f"{SVG}title")][1:]  # the first names the chart


@pytest.mark.parametrize("kind", ["line", "grouped", "stacked", "simple", "heat", "eur"])
def test_every_chart_is_an_accessible_svg_without_style_or_script(kind):
    svg = drawn()[kind]
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img" and root.get("width") == "100%"
    assert re.fullmatch(r"0 0 \d+ \d+", root.get("viewBox"))
    title, desc = root[0], root[1]
    assert (title.tag, desc.tag) == (f"{SVG}title", f"{SVG}desc")
    assert root.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
    assert title.text and desc.text
    for element in root.iter():
        assert "style" not in element.attrib, element.tag
        assert not any(name.startswith("on") for name in element.attrib), element.tag
        assert element.tag not in (f"{SVG}style", f"{SVG}script", f"{SVG}foreignObject")
    assert "style=" not in svg and "<script" not in svg and "href" not in svg


def test_text_is_escaped_and_read_back_whole():
    for kind in ("line", "grouped", "heat"):
        svg = drawn()[kind]
        assert BAKERY not in svg and "&lt;Bäcker &amp; Co&gt;" in svg
        assert BAKERY in texts(svg) or any(BAKERY in tip for tip in tips(svg)), kind
    svg = charts.bar_chart('"quoted" & <b>', "<desc & more>", ["a"], [Series("s", [1])])
    root = ET.fromstring(svg)
    assert root[0].text == '"quoted" & <b>' and root[1].text == "<desc & more>"


def test_numbers_go_through_the_pages_formatter():
    d = drawn()
    assert "1.234" in texts(d["simple"])  # the value on its bar
    assert "1.234" in texts(d["heat"])  # the value in its cell
    assert "issued, <Bäcker & Co>: 1.234" in tips(d["grouped"])
    assert "EUR, 2026-07: 1.234,50" in tips(d["eur"])
    assert "points, 2026-06: 1.500" in tips(d["line"])
    # Ticks too: a scale up to 1.500 has its top tick formatted.
    assert "1.500" in texts(d["line"])


def test_every_value_is_named_by_a_title_and_gaps_are_left_out():
    line = tips(drawn()["line"])
    assert "<Bäcker & Co>, 2026-06: None" not in line
    assert [t for t in line if t.startswith(BAKERY)] == ["<Bäcker & Co>, 2026-05: 100",
                                                         "<Bäcker & Co>, 2026-07: 300"]
    stacked = tips(drawn()["stacked"])
    # A zero draws no bar; every other value one.
    assert sorted(stacked) == sorted(["accepted, 2026-05: 10", "accepted, 2026-06: 20",
                                      "validation-error, 2026-05: 1", "validation-error, 2026-07: 3"])
    heat = tips(drawn()["heat"])
    assert "<Bäcker & Co> → bolt: 1.234" in heat and "bolt → <Bäcker & Co>: 0" in heat


def test_negative_bars_go_below_zero_with_positive_heights():
    root = ET.fromstring(drawn()["grouped"])
    bars = {r.find(f"{SVG}title").text: r for r in root.iter(f"{SVG}rect")
            if r.find(f"{SVG}title") is not None}
    up, down = bars["issued, <Bäcker & Co>: 1.234"], bars["issued, bolt: -40"]
    assert float(up.get("height")) > 0 and float(down.get("height")) > 0
    # The negative bar starts where the positive one ends: at zero.
    assert float(down.get("y")) == pytest.approx(float(up.get("y")) + float(up.get("height")), abs=0.6)
    assert "-1.000" in texts(drawn()["grouped"]) or "-500" in texts(drawn()["grouped"])


@pytest.mark.parametrize("chart", [
    lambda: charts.line_chart("Empty", "nothing yet", [], []),
    lambda: charts.line_chart("Gaps", "no values", MONTHS, [Series("s", [None, None, None])]),
    lambda: charts.bar_chart("Empty", "nothing yet", [], []),
    lambda: charts.bar_chart("Zeros", "all zero", MONTHS, [Series("s", [0, 0, 0])], stacked=True),
    lambda: charts.heat_map("Empty", "nothing yet", [], [], {}),
    lambda: charts.heat_map("Empty cells", "no flows", ["a"], ["b"], {}),
])
def test_no_data_draws_a_chart_that_says_so(chart):
    svg = chart()
    root = ET.fromstring(svg)
    assert root.get("role") == "img" and root[0].text and root[1].text
    assert texts(svg) == [charts.NO_DATA]


def test_the_no_data_text_can_be_localised():
    assert texts(charts.bar_chart("Leer", "nichts", [], [], no_data="Keine Daten")) == ["Keine Daten"]


def test_two_charts_on_one_page_never_share_an_id():
    ids = [ET.fromstring(svg)[0].get("id") for svg in drawn().values()]
    ids.append(ET.fromstring(charts.bar_chart("Tiers", "members per tier", ["Blue"],
                                              [Series("members", [1])]))[0].get("id"))
    assert len(ids) == len(set(ids))


def luminance(colour: str) -> float:
    channels = [int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_colours_have_enough_contrast():
    for colour in charts.PALETTE:  # marks against the background: WCAG 1.4.11, 3:1
        assert contrast(colour, charts.BACKGROUND) >= 3, colour
    for text in (charts.TEXT, charts.MUTED):  # text: 4.5:1
        assert contrast(text, charts.BACKGROUND) >= 4.5
    for level, shade in enumerate(charts.HEAT):  # a cell's value against its shade
        ink = charts.BACKGROUND if level >= charts.DARK_FROM else charts.TEXT
        assert contrast(ink, shade) >= 4.5, shade
    assert len(set(charts.PALETTE)) == len(charts.PALETTE)


def test_many_categories_slant_their_labels_and_stay_inside_the_view():
    days = [f"2026-06-{d:02d}" for d in range(1, 31)]
    svg = charts.bar_chart("Claims per day", "30 days", days,
                           [Series("accepted", list(range(30))), Series("rejected", [1] * 30)],
                           stacked=True)
    root = ET.fromstring(svg)
    width = int(root.get("viewBox").split()[2])
    labels = [t for t in root.iter(f"{SVG}text") if (t.text or "").startswith("2026-06")]
    assert labels and all("rotate(-40" in t.get("transform", "") for t in labels)
    for element in root.iter(f"{SVG}rect"):
        assert 0 <= float(element.get("x")) <= width
