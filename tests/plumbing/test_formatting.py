"""The one money and quantity formatter (admin, the user's page, emails, API docs)."""

from decimal import Decimal

import pytest
from django.template import Context, Template

from plumbing.formatting import money, parse_money, quantity

D = Decimal


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        (D("1234.56"), "$1,234.56"),
        (D("-106.22"), "-$106.22"),
        (D("0"), "$0.00"),
        (D("-0"), "$0.00"),
        (D("0.004"), "$0.00"),
        (D("-0.004"), "$0.00"),  # never "-$0.00"
        (D("0.005"), "$0.01"),  # cents round half up, as charged
        (D("-0.005"), "-$0.01"),
        (D("2.834002"), "$2.83"),
        (D("84.3300000000"), "$84.33"),
        (D("1234567890.10"), "$1,234,567,890.10"),
        (25, "$25.00"),
        ("-1.5", "-$1.50"),
    ],
)
def test_money_in_lists_is_dollars_and_cents_with_separators(amount, shown):
    assert money(amount) == shown


def test_money_in_other_currencies_names_the_currency():
    assert money(D("1234.5"), "EUR") == "1,234.50 EUR"
    assert money(D("-3"), "eur") == "-3.00 EUR"
    assert money(D("3"), "usd") == "$3.00"


def test_precise_money_keeps_every_significant_place_and_at_least_cents():
    assert money(D("2.834002"), precise=True) == "$2.834002"
    assert money(D("84.3300000000"), precise=True) == "$84.33"
    assert money(D("-0.0000000001"), precise=True) == "-$0.0000000001"
    assert money(D("1500"), precise=True) == "$1,500.00"


def test_missing_money_is_a_dash_and_floats_are_refused():
    assert money(None) == "—"
    with pytest.raises(TypeError):
        money(0.1)


@pytest.mark.parametrize(
    ("value", "places", "shown"),
    [
        (D("4.8515200000"), 2, "4.85"),
        (D("47.3000000000"), 2, "47.3"),
        (5940222, 0, "5,940,222"),
        (D("5940222.0"), 2, "5,940,222"),
        (D("0.0004"), 3, "0"),
        (D("-0.0004"), 3, "0"),
        (D("-1234.5678"), 3, "-1,234.568"),
        (None, 2, "—"),
    ],
)
def test_quantities_are_rounded_with_separators(value, places, shown):
    assert quantity(value, places) == shown


@pytest.mark.parametrize(
    ("typed", "amount"),
    [("25", D("25")), ("25.00", D("25.00")), (" 1,000.5 ", D("1000.5")), ("$12", D("12"))],
)
def test_typed_amounts_accept_plain_decimals(typed, amount):
    assert parse_money(typed) == amount


@pytest.mark.parametrize(
    "typed", ["1e3", "NaN", "Infinity", "", "12.345", "1.2.3", "--1", "0x10", "١٢", "1,00"]
)
def test_typed_amounts_refuse_what_is_not_dollars_and_cents(typed):
    with pytest.raises(ValueError, match="dollars and cents"):
        parse_money(typed)


def test_templates_have_the_filters_without_loading_them():
    rendered = Template(
        "{{ a|money }} {{ b|money:'EUR' }} {{ c|precise_money }} {{ q|quantity:2 }}"
    )
    context = Context({"a": D("-106.22"), "b": D("5"), "c": D("2.834002"), "q": D("4.85152")})
    assert rendered.render(context) == "-$106.22 5.00 EUR $2.834002 4.85"
