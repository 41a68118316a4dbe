"""Charts for the operator console, drawn on the server as SVG strings: no script, no CDN, and
no style attribute or element (the pages' Content-Security-Policy forbids inline styles), only
SVG presentation attributes.

Every chart is an <svg role="img"> with a <title> and a <desc> it is labelled by, its axes,
tick values, category names and legend as text, and a <title> on every bar, point and cell
that says what it shows, so a screen reader or a hover reads the exact figure. It scales to
its container (viewBox, width 100%), a phone's width included. Colours are the Okabe-Ito
palette, darkened where needed so that every mark has at least 3:1 contrast against the white
background (WCAG 2.1, 1.4.11); lines differ by marker shape and dash as well, and every bar
segment is named in its <title>.

Numbers are written by a formatter the page passes in (`fmt`), so that it can localise them
(1.234 in German); `str` by default. All text is XML-escaped. An empty chart (no data) draws
its frame and says so instead of failing.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from xml.sax.saxutils import escape as _escape

Number = int | Decimal | float
Formatter = Callable[[Number], str]

# Okabe-Ito (colour-blind safe), darkened where the original falls below 3:1 on white.
PALETTE = ("#0072B2", "#B35900", "#007A5E", "#A8527F", "#5E6B00", "#4D4D4D", "#3F7FBF", "#8F2D00")
TEXT = "#1A1A1A"
MUTED = "#595959"  # axis lines and tick labels: 7:1 on white
GRID = "#D9D9D9"
BACKGROUND = "#FFFFFF"
# Sequential blues for the heat map, lightest to darkest; values in the darkest three are
# written in white.
HEAT = ("#F0F5FA", "#C6DBEF", "#9ECAE1", "#6BAED6", "#2171B5", "#08519C", "#08306B")
DARK_FROM = 4
MARKERS = ("circle", "square", "triangle", "diamond")
DASHES = (None, "6 3", "2 3", "8 3 2 3")

WIDTH = 640
FONT = 13
FONT_FAMILY = "system-ui, -apple-system, Segoe UI, Roboto, sans-serif"
NO_DATA = "No data"


@dataclass(frozen=True)
class Series:
    """A named row of values, one per category (None: no value there)."""
    name: str
    values: Sequence[Number | None]


def esc(text) -> str:
    """Text for an element's content or a double-quoted attribute."""
    return _escape(str(text), {'"': "&quot;", "'": "&#39;"})


def _num(value: float) -> str:
    """A coordinate: at most two decimals, no exponent."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _id(title: str, kind: str, salt: str) -> str:
    """An element id that two charts on one page do not share (same title and data alike)."""
    return "chart-" + hashlib.sha256(f"{kind}\0{title}\0{salt}".encode()).hexdigest()[:12]


class _Svg:
    def __init__(self, width: int, height: int, title: str, desc: str, ident: str) -> None:
        self.parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
            f'preserveAspectRatio="xMidYMid meet" role="img" '
            f'aria-labelledby="{ident}-title {ident}-desc" font-family="{esc(FONT_FAMILY)}" '
            f'font-size="{FONT}" fill="{TEXT}">',
            f'<title id="{ident}-title">{esc(title)}</title>',
            f'<desc id="{ident}-desc">{esc(desc)}</desc>',
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="{BACKGROUND}"/>']

    def add(self, part: str) -> None:
        self.parts.append(part)

    def text(self, x: float, y: float, content, *, anchor: str = "start", size: int = FONT,
             fill: str = TEXT, weight: str | None = None, rotate: float | None = None,
             baseline: str | None = None) -> None:
        extra = f' font-weight="{weight}"' if weight else ""
        if baseline:
            extra += f' dominant-baseline="{baseline}"'
        if rotate is not None:
            extra += f' transform="rotate({_num(rotate)} {_num(x)} {_num(y)})"'
        self.add(f'<text x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}" font-size="{size}" '
                 f'fill="{fill}"{extra}>{esc(content)}</text>')

    def done(self) -> str:
        return "".join(self.parts) + "</svg>"


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _scale(values: list[float], ticks: int = 5) -> tuple[float, float, list[float]]:
    """A domain from a round number at or below min(0, values) to one at or above the
    largest, and its ticks."""
    low, high = min([0.0, *values]), max([0.0, *values])
    if low == high:
        high = low + 1
    step = _nice_step(high - low, ticks)
    low = math.floor(low / step) * step
    high = math.ceil(high / step) * step
    count = int(round((high - low) / step))
    return low, high, [low + i * step for i in range(count + 1)]


def _tick_value(value: float) -> Number:
    """A tick as a number the page's formatter takes: an int when whole (Decimal otherwise)."""
    return int(value) if float(value).is_integer() else Decimal(str(round(value, 6)))


def _legend(svg: _Svg, names: Sequence[str], x: float, y: float, width: float, *,
            lines: bool = False) -> float:
    """Legend entries left to right, wrapping; returns the y below it."""
    cx, cy = x, y
    for index, name in enumerate(names):
        label_width = 14 + 8 + len(str(name)) * FONT * 0.6 + 16
        if cx + label_width > x + width and cx > x:
            cx, cy = x, cy + FONT + 8
        colour = PALETTE[index % len(PALETTE)]
        if lines:
            dash = DASHES[index % len(DASHES)]
            svg.add(f'<line x1="{_num(cx)}" y1="{_num(cy - 4)}" x2="{_num(cx + 18)}" '
                    f'y2="{_num(cy - 4)}" stroke="{colour}" stroke-width="2.5"'
                    + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
            svg.add(_marker(index, cx + 9, cy - 4, colour))
            svg.text(cx + 24, cy, name)
        else:
            svg.add(f'<rect x="{_num(cx)}" y="{_num(cy - 11)}" width="14" height="14" '
                    f'fill="{colour}" stroke="{TEXT}" stroke-width="0.5"/>')
            svg.text(cx + 20, cy, name)
        cx += label_width
    return cy + 10


def _marker(index: int, x: float, y: float, colour: str, title: str | None = None) -> str:
    shape, r = MARKERS[index % len(MARKERS)], 4
    tip = f"<title>{esc(title)}</title>" if title else ""
    if shape == "circle":
        return f'<circle cx="{_num(x)}" cy="{_num(y)}" r="{r}" fill="{colour}">{tip}</circle>'
    if shape == "square":
        return (f'<rect x="{_num(x - r)}" y="{_num(y - r)}" width="{2 * r}" height="{2 * r}" '
                f'fill="{colour}">{tip}</rect>')
    if shape == "triangle":
        points = f"{_num(x)},{_num(y - r - 1)} {_num(x + r + 1)},{_num(y + r)} {_num(x - r - 1)},{_num(y + r)}"
    else:
        points = f"{_num(x)},{_num(y - r - 1)} {_num(x + r + 1)},{_num(y)} {_num(x)},{_num(y + r + 1)} {_num(x - r - 1)},{_num(y)}"
    return f'<polygon points="{points}" fill="{colour}">{tip}</polygon>'


def _no_data(svg: _Svg, width: int, height: int, message: str) -> str:
    svg.add(f'<rect x="1" y="1" width="{width - 2}" height="{height - 2}" fill="none" '
            f'stroke="{GRID}"/>')
    svg.text(width / 2, height / 2, message, anchor="middle", size=FONT + 2, fill=MUTED)
    return svg.done()


def _y_axis(svg: _Svg, left: float, top: float, plot_w: float, plot_h: float,
            ticks: list[float], low: float, high: float, fmt: Formatter, label: str | None) -> Callable[[float], float]:
    def y_of(value: float) -> float:
        return top + plot_h - (value - low) / (high - low) * plot_h
    for tick in ticks:
        y = y_of(tick)
        svg.add(f'<line x1="{_num(left)}" y1="{_num(y)}" x2="{_num(left + plot_w)}" '
                f'y2="{_num(y)}" stroke="{GRID}" stroke-width="1"/>')
        svg.text(left - 6, y + 4, fmt(_tick_value(tick)), anchor="end", fill=MUTED, size=FONT - 1)
    svg.add(f'<line x1="{_num(left)}" y1="{_num(top)}" x2="{_num(left)}" '
            f'y2="{_num(top + plot_h)}" stroke="{MUTED}" stroke-width="1"/>')
    if low < 0 < high:  # the zero line, darker than the grid
        svg.add(f'<line x1="{_num(left)}" y1="{_num(y_of(0))}" x2="{_num(left + plot_w)}" '
                f'y2="{_num(y_of(0))}" stroke="{MUTED}" stroke-width="1"/>')
    if label:
        svg.text(14, top + plot_h / 2, label, anchor="middle", rotate=-90, fill=MUTED,
                 size=FONT - 1)
    return y_of


def _x_labels(svg: _Svg, labels: Sequence[str], centres: list[float], y: float,
              slot: float, label: str | None, bottom: float) -> None:
    slanted = _slanted(labels, slot)
    every = 1
    if slanted:  # still too tight for slanted labels: every n-th one
        every = max(1, math.ceil((FONT + 2) / max(slot, 1)))
    for index, (text, x) in enumerate(zip(labels, centres)):
        if index % every:
            continue
        if slanted:
            svg.text(x, y + 4, _clip(text, SLANT_CHARS), anchor="end", rotate=-40, fill=MUTED,
                     size=FONT - 1)
        else:
            svg.text(x, y + FONT, text, anchor="middle", fill=MUTED, size=FONT - 1)
    if label:
        svg.text(WIDTH / 2, bottom - 6, label, anchor="middle", fill=MUTED, size=FONT - 1)


SLANT_CHARS = 24  # a slanted label longer than this is cut, with an ellipsis (its <title>s say all)


def _slanted(labels: Sequence[str], slot: float) -> bool:
    return max((len(str(x)) for x in labels), default=0) * (FONT - 1) * 0.6 > slot - 4


def _label_room(labels: Sequence[str], slot: float) -> float:
    if not _slanted(labels, slot):
        return FONT + 10
    longest = min(max(len(str(x)) for x in labels), SLANT_CHARS)
    return longest * (FONT - 1) * 0.6 * math.sin(math.radians(40)) + FONT + 8


def _plot_left(labels: Sequence[str], ticks: list[float], fmt: Formatter) -> tuple[float, float]:
    """The plot's left edge and its slot per category: room for the tick values, and for the
    first category's label when labels are slanted (they reach to the left of their slot)."""
    left = _left_room(ticks, fmt)
    slot = (WIDTH - left - 16) / len(labels)
    if _slanted(labels, slot):
        reach = min(len(str(labels[0])), SLANT_CHARS) * (FONT - 1) * 0.6 * math.cos(math.radians(40))
        left = max(left, reach - slot / 2 + 6)
        slot = (WIDTH - left - 16) / len(labels)
    return left, slot


def _left_room(ticks: list[float], fmt: Formatter) -> float:
    widest = max((len(fmt(_tick_value(t))) for t in ticks), default=1)
    return 26 + widest * (FONT - 1) * 0.6 + 8


def line_chart(title: str, desc: str, categories: Sequence[str], series: Sequence[Series], *,
               fmt: Formatter = str, y_label: str | None = None, x_label: str | None = None,
               height: int = 320, no_data: str = NO_DATA) -> str:
    """One line per series over the categories (months, days), with a marker and a <title>
    per value. Series of different units belong on charts of their own (liability in points
    and in EUR: two charts), never on a second axis the eye misreads."""
    svg = _Svg(WIDTH, height, title, desc, _id(title, "line", repr((categories, series))))
    values = [float(v) for s in series for v in s.values if v is not None]
    if not categories or not values:
        return _no_data(svg, WIDTH, height, no_data)
    legend_bottom = _legend(svg, [s.name for s in series], 12, 22, WIDTH - 24, lines=True)
    low, high, ticks = _scale(values)
    left, slot = _plot_left(categories, ticks, fmt)
    plot_w = WIDTH - left - 16
    bottom_room = _label_room(categories, slot) + (FONT + 8 if x_label else 0)
    top = legend_bottom + 6
    plot_h = height - top - bottom_room
    y_of = _y_axis(svg, left, top, plot_w, plot_h, ticks, low, high, fmt, y_label)
    centres = [left + slot * (i + 0.5) for i in range(len(categories))]
    for index, s in enumerate(series):
        colour, dash = PALETTE[index % len(PALETTE)], DASHES[index % len(DASHES)]
        points = [(centres[i], y_of(float(v))) for i, v in enumerate(s.values) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{_num(x)},{_num(y)}" for x, y in points)
            svg.add(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2.5" '
                    f'stroke-linejoin="round"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        for i, v in enumerate(s.values):
            if v is not None:
                svg.add(_marker(index, centres[i], y_of(float(v)), colour,
                                f"{s.name}, {categories[i]}: {fmt(v)}"))
    svg.add(f'<line x1="{_num(left)}" y1="{_num(top + plot_h)}" x2="{_num(left + plot_w)}" '
            f'y2="{_num(top + plot_h)}" stroke="{MUTED}" stroke-width="1"/>')
    _x_labels(svg, categories, centres, top + plot_h + 4, slot, x_label, height)
    return svg.done()


def bar_chart(title: str, desc: str, categories: Sequence[str], series: Sequence[Series], *,
              stacked: bool = False, fmt: Formatter = str, y_label: str | None = None,
              x_label: str | None = None, height: int = 320, values_on_bars: bool | None = None,
              no_data: str = NO_DATA) -> str:
    """Bars per category: one per series side by side (grouped), or stacked (positive values
    upwards, negative ones downwards from zero). One series: a simple bar chart with its value
    on each bar when there is room (`values_on_bars`: force it on or off)."""
    svg = _Svg(WIDTH, height, title, desc, _id(title, "bar", repr((categories, series, stacked))))
    present = [float(v) for s in series for v in s.values if v is not None]
    if not categories or not present or not any(present):
        return _no_data(svg, WIDTH, height, no_data)
    if stacked:
        sums = []
        for i in range(len(categories)):
            column = [float(s.values[i]) for s in series if s.values[i] is not None]
            sums += [sum(v for v in column if v > 0), sum(v for v in column if v < 0)]
        low, high, ticks = _scale(sums)
    else:
        low, high, ticks = _scale(present)
    top = 10
    if len(series) > 1:
        top = _legend(svg, [s.name for s in series], 12, 22, WIDTH - 24) + 6
    left, slot = _plot_left(categories, ticks, fmt)
    plot_w = WIDTH - left - 16
    bottom_room = _label_room(categories, slot) + (FONT + 8 if x_label else 0)
    plot_h = height - top - bottom_room
    y_of = _y_axis(svg, left, top, plot_w, plot_h, ticks, low, high, fmt, y_label)
    inner = slot * 0.8
    groups = 1 if stacked else len(series)
    bar_w = inner / groups
    show_values = values_on_bars if values_on_bars is not None else (
        len(series) == 1 and bar_w >= FONT * 0.6 * max(len(fmt(v)) for v in series[0].values
                                                        if v is not None) + 2)
    centres = [left + slot * (i + 0.5) for i in range(len(categories))]
    for i, category in enumerate(categories):
        up = down = 0.0
        for index, s in enumerate(series):
            v = s.values[i]
            if v is None or float(v) == 0:
                continue
            value = float(v)
            if stacked:
                base = up if value > 0 else down
                y0, y1 = y_of(base), y_of(base + value)
                if value > 0:
                    up += value
                else:
                    down += value
                x = centres[i] - bar_w / 2
            else:
                y0, y1 = y_of(0), y_of(value)
                x = centres[i] - inner / 2 + index * bar_w
            y, h = min(y0, y1), max(abs(y1 - y0), 0.5)
            colour = PALETTE[index % len(PALETTE)]
            svg.add(f'<rect x="{_num(x + 0.5)}" y="{_num(y)}" width="{_num(max(bar_w - 1, 1))}" '
                    f'height="{_num(h)}" fill="{colour}" stroke="{BACKGROUND}" stroke-width="0.5">'
                    f'<title>{esc(f"{s.name}, {category}: {fmt(v)}")}</title></rect>')
            if show_values:
                label_y = y1 - 4 if value > 0 else y1 + FONT
                svg.text(x + bar_w / 2, label_y, fmt(v), anchor="middle", size=FONT - 1)
    svg.add(f'<line x1="{_num(left)}" y1="{_num(top + plot_h)}" x2="{_num(left + plot_w)}" '
            f'y2="{_num(top + plot_h)}" stroke="{MUTED}" stroke-width="1"/>')
    _x_labels(svg, categories, centres, top + plot_h + 4, slot, x_label, height)
    return svg.done()


def heat_map(title: str, desc: str, rows: Sequence[str], columns: Sequence[str],
             values: dict[tuple[str, str], Number], *, fmt: Formatter = str,
             row_label: str | None = None, column_label: str | None = None,
             no_data: str = NO_DATA) -> str:
    """A grid of rows x columns (issuers x redeemers) shaded by value, each value written in
    its cell, and a legend of the shades with the lowest value each stands for (and the
    highest of all). Cells without a value are left white and empty. No word of the chart's
    own is English but `no_data`: the page passes titles and labels in its language."""
    present = [float(v) for v in values.values() if v is not None and float(v) != 0]
    height_guess = 120 + 34 * max(len(rows), 1)
    ident = _id(title, "heat", repr((rows, columns, sorted(values.items()))))
    if not rows or not columns or not present:
        svg = _Svg(WIDTH, 240, title, desc, ident)
        return _no_data(svg, WIDTH, 240, no_data)
    longest_row = max(len(str(r)) for r in rows)
    left = 16 + min(longest_row, 22) * FONT * 0.6 + 10 + (FONT + 6 if row_label else 0)
    cell_w = (WIDTH - left - 16) / len(columns)
    longest_column = max(len(str(c)) for c in columns)
    slanted = longest_column * (FONT - 1) * 0.6 > cell_w - 4
    header = (min(longest_column, 22) * (FONT - 1) * 0.6 * 0.7 + 14 if slanted else FONT + 12) \
        + (FONT + 8 if column_label else 0)
    cell_h = 34
    top = header + 8
    legend_top = top + cell_h * len(rows) + 16
    height = int(legend_top + 52)
    svg = _Svg(WIDTH, height, title, desc, ident)
    if column_label:
        svg.text(left + cell_w * len(columns) / 2, FONT + 4, column_label, anchor="middle",
                 fill=MUTED, size=FONT - 1)
    if row_label:
        svg.text(14, top + cell_h * len(rows) / 2, row_label, anchor="middle", rotate=-90,
                 fill=MUTED, size=FONT - 1)
    # Shades from zero: a narrow spread of large flows must not look like a wide one.
    low, high = min(0.0, min(present)), max(present)
    whole = all(isinstance(v, int) for v in values.values() if v is not None)

    def shade(value: float) -> int:
        if high == low:
            return len(HEAT) - 1
        return min(len(HEAT) - 1, 1 + int((value - low) / (high - low) * (len(HEAT) - 1)))
    for j, column in enumerate(columns):
        x = left + cell_w * (j + 0.5)
        if slanted:
            svg.text(x, top - 6, _clip(column), anchor="start", rotate=-40, fill=MUTED, size=FONT - 1)
        else:
            svg.text(x, top - 8, column, anchor="middle", fill=MUTED, size=FONT - 1)
    for i, row in enumerate(rows):
        y = top + cell_h * i
        svg.text(left - 8, y + cell_h / 2 + 4, _clip(row), anchor="end", fill=MUTED, size=FONT - 1)
        for j, column in enumerate(columns):
            v = values.get((row, column))
            x = left + cell_w * j
            has = v is not None and float(v) != 0
            level = shade(float(v)) if has else 0
            fill = HEAT[level] if has else BACKGROUND
            tip = f"{row} \u2192 {column}: {fmt(v) if has else fmt(0)}"
            svg.add(f'<rect x="{_num(x)}" y="{_num(y)}" width="{_num(cell_w)}" height="{cell_h}" '
                    f'fill="{fill}" stroke="{GRID}" stroke-width="1"><title>{esc(tip)}</title></rect>')
            if has:
                ink = BACKGROUND if level >= DARK_FROM else TEXT
                svg.text(x + cell_w / 2, y + cell_h / 2 + 4, fmt(v), anchor="middle", fill=ink,
                         size=FONT - 1 if cell_w > 48 else FONT - 3)
    # The legend: each shade and the lowest value it stands for.
    swatch = min(64.0, (WIDTH - left - 16) / (len(HEAT) - 1))
    for level in range(1, len(HEAT)):
        x = left + swatch * (level - 1)
        start = low + (high - low) * (level - 1) / (len(HEAT) - 1)
        svg.add(f'<rect x="{_num(x)}" y="{_num(legend_top)}" width="{_num(swatch - 2)}" height="14" '
                f'fill="{HEAT[level]}" stroke="{GRID}" stroke-width="1"/>')
        shown = _tick_value(round(start) if whole else start)
        if level in (1, len(HEAT) - 1) or swatch >= 56:
            svg.text(x, legend_top + 30, "\u2265 " + fmt(shown), fill=MUTED, size=FONT - 2)
    svg.text(left + swatch * (len(HEAT) - 1) + 6, legend_top + 12,
             "\u2264 " + fmt(_max_of(values)), fill=MUTED, size=FONT - 2)
    return svg.done()


def _max_of(values: dict) -> Number:
    return max((v for v in values.values() if v is not None), key=float)


def _clip(text: str, limit: int = 22) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"
