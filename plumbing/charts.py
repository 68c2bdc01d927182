"""Server-rendered SVG charts: the user's page, the operator dashboard and the user's admin
page all draw through `chart_html`. No script: the SVG carries a <title> and <desc>, each
line or bar its own <title>, and the figures follow in a table inside <details> (for
screen readers, printing and copying numbers).

Values are Decimal or int (floats only for coordinates). A value of None is "no figure
that day": lines break there and the table shows a dash, nothing is guessed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from plumbing.formatting import MISSING, money, quantity

WIDTH, HEIGHT, PAD, LEFT = 640, 180, 22, 56
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")


@dataclass
class Series:
    name: str
    values: Sequence[Decimal | int | None]  # one per day, in the order of the days


def as_count(value) -> str:
    return quantity(value, 0)


def chart_html(
    *,
    dom_id: str,
    title: str,
    days: Sequence[dt.date],
    series: Sequence[Series],
    what: str = "Cost",
    fmt: Callable[[object], str] = money,
    kind: str = "line",
    total_row: bool = True,
    table: bool = True,
    empty: str = "No usage yet.",
) -> SafeString:
    """A figure: the SVG chart of `series` over `days` (oldest first) with its legend, and
    (with `table`) the figures per day, newest first, with a total column for several
    series and (with `total_row`) a total row. With nothing to draw, the `empty` sentence
    instead."""
    figures = [v for s in series for v in s.values if v is not None]
    if not days or not series or not figures:
        return format_html('<figure class="chart" id="{}"><p>{}</p></figure>', dom_id, empty)
    peak = max(figures) or 1
    draw = _bars if kind == "bar" else _lines
    description = format_html(
        "{} per day from {} to {}; the highest day was {}.{}",
        what,
        f"{days[0]:%Y-%m-%d}",
        f"{days[-1]:%Y-%m-%d}",
        fmt(max(figures)),
        f" One line each: {', '.join(s.name for s in series)}." if len(series) > 1 else "",
    )
    svg = format_html(
        '<svg role="img" aria-labelledby="{id}-title {id}-desc" viewBox="0 0 {w} {h}" '
        'width="100%" style="max-width:{w}px">'
        '<title id="{id}-title">{title}</title><desc id="{id}-desc">{desc}</desc>'
        '<line x1="{left}" y1="{base}" x2="{right}" y2="{base}" stroke="#94a3b8"/>'
        '<line x1="{left}" y1="{top}" x2="{right}" y2="{top}" stroke="#e2e8f0"/>'
        "{marks}"
        '<text x="{label}" y="{top_text}" font-size="11" fill="#475569" text-anchor="end">'
        "{peak}</text>"
        '<text x="{label}" y="{base}" font-size="11" fill="#475569" text-anchor="end">'
        "{zero}</text>"
        '<text x="{left}" y="{bottom}" font-size="11" fill="#475569">{first}</text>'
        '<text x="{right}" y="{bottom}" font-size="11" fill="#475569" text-anchor="end">'
        "{last}</text></svg>",
        id=dom_id,
        w=WIDTH,
        h=HEIGHT,
        title=title,
        desc=description,
        left=LEFT,
        right=WIDTH - PAD,
        base=HEIGHT - PAD,
        top=PAD,
        top_text=PAD + 4,
        label=LEFT - 4,
        bottom=HEIGHT - 6,
        marks=draw(days, series, peak, fmt),
        peak=fmt(peak),
        zero=fmt(0),
        first=f"{days[0]:%b %-d}",
        last=f"{days[-1]:%b %-d}",
    )
    legend = (
        format_html(
            '<ul class="chart-legend">{}</ul>',
            format_html_join(
                "",
                '<li><span style="color:{}" aria-hidden="true">{}</span> {}</li>',
                (
                    (_colour(i), "━" if i < len(PALETTE) else "┅", s.name)
                    for i, s in enumerate(series)
                ),
            ),
        )
        if len(series) > 1
        else ""
    )
    figures_table = _table(days, series, fmt, total_row) if table else ""
    return format_html(
        '<figure class="chart" id="{}">{}{}{}</figure>', dom_id, svg, legend, figures_table
    )


def _colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _x(index: int, count: int) -> float:
    span = WIDTH - PAD - LEFT
    return LEFT + (span * index / (count - 1) if count > 1 else span / 2)


def _y(value, peak) -> float:
    return HEIGHT - PAD - float(Decimal(value) / Decimal(peak)) * (HEIGHT - 2 * PAD)


def _lines(days, series, peak, fmt) -> SafeString:
    paths = []
    for index, one in enumerate(series):
        segments, current = [], []
        for day_index, value in enumerate(one.values):
            if value is None:  # no figure: the line breaks
                current = []
                continue
            if not current:
                segments.append(current)
            current.append(f"{_x(day_index, len(days)):.1f} {_y(value, peak):.1f}")
        # A lone day is a zero-length stroke, drawn as a dot by the round cap.
        steps = ["M" + " L".join(seg) + (" l0 0" if len(seg) == 1 else "") for seg in segments]
        dash = "4 3" if index >= len(PALETTE) else "none"
        paths.append(
            format_html(
                '<path class="series" d="{}" fill="none" stroke="{}" stroke-width="2" '
                'stroke-linecap="round" stroke-linejoin="round" '
                'stroke-dasharray="{}">'
                "<title>{}</title></path>",
                " ".join(steps),
                _colour(index),
                dash,
                one.name,
            )
        )
    return _joined(paths)


def _bars(days, series, peak, fmt) -> SafeString:
    slot = (WIDTH - PAD - LEFT) / len(days)
    bars = []
    for index, (day, value) in enumerate(zip(days, series[0].values, strict=True)):
        if not value:
            continue
        y = _y(value, peak)
        bars.append(
            format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}: {}</title></rect>',
                f"{LEFT + index * slot + slot * 0.1:.1f}",
                f"{y:.1f}",
                f"{max(slot * 0.8, 1):.1f}",
                f"{HEIGHT - PAD - y:.1f}",
                PALETTE[0],
                f"{day:%Y-%m-%d}",
                fmt(value),
            )
        )
    return _joined(bars)


def _joined(parts) -> SafeString:
    return format_html_join("", "{}", ((part,) for part in parts))


def _sum(values):
    present = [v for v in values if v is not None]
    return sum(present, Decimal(0)) if present else None


def _table(days, series, fmt, total_row) -> SafeString:
    both = len(series) > 1
    show = lambda v: MISSING if v is None else fmt(v)  # noqa: E731
    head = format_html_join("", "<th>{}</th>", ((s.name,) for s in series))
    rows = []
    for index in reversed(range(len(days))):
        values = [s.values[index] for s in series]
        cells = [*values, _sum(values)] if both else values
        rows.append(
            format_html(
                "<tr><th>{}</th>{}</tr>",
                f"{days[index]:%Y-%m-%d}",
                format_html_join("", "<td>{}</td>", ((show(v),) for v in cells)),
            )
        )
    foot = ""
    if total_row:
        sums = [_sum(s.values) for s in series]
        cells = [*sums, _sum(sums)] if both else sums
        foot = format_html(
            "<tfoot><tr><th>Total</th>{}</tr></tfoot>",
            format_html_join("", "<td>{}</td>", ((show(v),) for v in cells)),
        )
    return format_html(
        "<details><summary>The figures</summary><table><thead><tr><th>Date</th>{}{}</tr>"
        "</thead><tbody>{}</tbody>{}</table></details>",
        head,
        format_html("<th>{}</th>", "Total") if both else "",
        _joined(rows),
        foot,
    )
