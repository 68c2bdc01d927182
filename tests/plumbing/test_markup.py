"""plumbing.markup: Django's escaping and formatting helpers, the same text and type."""

from __future__ import annotations

import datetime
from decimal import Decimal

import pytest
from django.utils import html as django_html
from django.utils.functional import lazy
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext_lazy

from plumbing import markup


class HasHtml:
    def __html__(self):
        return "<b>already safe</b>"


lazy_markup = lazy(lambda: "<i>lazy & 'quoted'</i>", str)()

VALUES = [
    "plain",
    "",
    "<script>alert('x')</script> & \"quotes\"",
    "o'brien+1&co\"<b>@example.com",
    mark_safe("<b>safe</b>"),
    SafeString("<i>safe too</i>"),
    gettext_lazy("Select this object for an action - {}"),
    lazy_markup,
    HasHtml(),
    None,
    0,
    -12,
    Decimal("-1234.5600"),
    datetime.date(2026, 12, 6),
    "Zoë ñ ü \u2028",
]


@pytest.mark.parametrize("value", VALUES, ids=[f"value{n}" for n in range(len(VALUES))])
def test_conditional_escape_is_djangos(value):
    ours = markup.conditional_escape(value)
    theirs = django_html.conditional_escape(value)
    assert ours == theirs
    assert type(ours) is type(theirs)


@pytest.mark.parametrize("value", VALUES, ids=[f"value{n}" for n in range(len(VALUES))])
def test_escape_is_djangos(value):
    ours = markup.escape(value)
    assert ours == django_html.escape(value)
    assert isinstance(ours, SafeString)


@pytest.mark.parametrize("value", VALUES, ids=[f"value{n}" for n in range(len(VALUES))])
def test_format_html_is_djangos(value):
    template = '<span class="{}" title="{}">{}</span>'
    ours = markup.format_html(template, value, value, "<&>")
    assert ours == django_html.format_html(template, value, value, "<&>")
    assert isinstance(ours, SafeString)


def test_format_html_join_is_djangos():
    lines = [(label, value) for label, value in zip(VALUES, reversed(VALUES), strict=True)]
    for sep in ("", "<br>", mark_safe("<br>")):
        ours = markup.format_html_join(sep, "<span>{} {}</span>", lines)
        assert ours == django_html.format_html_join(sep, "<span>{} {}</span>", lines)
        assert isinstance(ours, SafeString)


def test_format_html_without_arguments_is_refused():
    with pytest.raises(TypeError):
        markup.format_html("<b>constant</b>")
