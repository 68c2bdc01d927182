"""Compact cells for admin lists (the stylesheet is console/static/console/admin.css):
long text on one line, cut with an ellipsis, the whole of it in the tooltip."""

from __future__ import annotations

from plumbing.formatting import money, quantity
from plumbing.markup import format_html, format_html_join

WIDTHS = ("", "narrow", "wide")


def cut(text, *, width: str = "") -> str:
    """`text` on one line, cut to the column (`width`: "", "narrow" or "wide")."""
    if width not in WIDTHS:
        raise ValueError(f"width is one of {WIDTHS}")
    if text is None or text == "":
        return "-"
    return format_html('<span class="cut {}" title="{}">{}</span>', width, text, text)


def user_cell(user) -> str:
    """A user in a list: their email, cut to the column."""
    return cut(user.email if user is not None else None)


def figure(amount, currency: str = "USD") -> str:
    """Money in a list: dollars and cents on one line, negative in red."""
    css = "figure negative" if amount is not None and amount < 0 else "figure"
    return format_html('<span class="{}">{}</span>', css, money(amount, currency))


def figures(*lines) -> str:
    """Several figures in one compact cell, one `(label, value)` per line."""
    return format_html(
        '<span class="figures">{}</span>',
        format_html_join("", "<span>{} {}</span>", lines),
    )


__all__ = ["cut", "figure", "figures", "quantity", "user_cell"]
