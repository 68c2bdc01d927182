"""The one chart helper: SVG and its table from series of Decimal or int."""

import datetime as dt
from decimal import Decimal

from plumbing.charts import Series, as_count, chart_html

DAYS = [dt.date(2026, 11, 28) + dt.timedelta(days=n) for n in range(4)]


def test_a_day_without_a_figure_breaks_the_line_and_shows_a_dash():
    html = str(
        chart_html(
            dom_id="c",
            title="Fill",
            days=DAYS,
            series=[Series("east", [1, None, 2, 3])],
            fmt=as_count,
            total_row=False,
        )
    )

    path = html.split('class="series" d="')[1].split('"')[0]
    assert path.count("M") == 2  # two pieces: day 1 alone (a dot), days 3 and 4
    assert " l0 0" in path
    assert "<th>2026-11-29</th><td>—</td>" in html
    assert "<tfoot>" not in html


def test_names_are_escaped_and_no_script_is_needed():
    html = str(
        chart_html(
            dom_id="c",
            title="<b>Cost</b>",
            days=DAYS,
            series=[Series("<script>x</script>", [Decimal(1)] * 4), Series("b", [0] * 4)],
        )
    )

    assert "<script" not in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;Cost&lt;/b&gt;" in html
    assert "<tfoot><tr><th>Total</th><td>$4.00</td><td>$0.00</td><td>$4.00</td></tr>" in html


def test_nothing_to_draw_is_said_in_words():
    html = str(chart_html(dom_id="c", title="Cost", days=DAYS, series=[]))
    assert "<svg" not in html and "No usage yet." in html


def test_series_beyond_the_palette_are_dashed():
    series = [Series(f"c{n}", [n] * 4) for n in range(10)]
    html = str(chart_html(dom_id="c", title="Many", days=DAYS, series=series))
    assert html.count('stroke-dasharray="4 3"') == 2
