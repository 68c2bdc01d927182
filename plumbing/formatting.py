"""How money and quantities are shown and read, in one place: the admin, the user's page,
emails and the API docs all use these (templates get them as built-in filters).

Lists show dollars and cents (`$1,234.56`, `-$106.22`), rounded half up as charged; the
detail page and exports show every significant place (`precise`). A quantity is rounded to
a few places with thousands separators and no trailing zeros. Operators type amounts as
plain dollars and cents (`25`, `25.00`, `1,000.50`): `parse_money` refuses the rest.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from django import template

register = template.Library()

MISSING = "—"
CENT = Decimal("0.01")
SYMBOLS = {"USD": "$"}
_TYPED = re.compile(r"\$?(\d{1,3}(,\d{3})+|\d+)(\.\d{1,2})?", re.ASCII)


def _decimal(value) -> Decimal:
    if isinstance(value, float):  # a float has already lost the exact value
        raise TypeError("money and quantities must be Decimal, int or str, not float")
    return value if isinstance(value, Decimal) else Decimal(str(value))


def _signed(amount: Decimal, digits: str, currency: str) -> str:
    code = (currency or "USD").upper()
    symbol = SYMBOLS.get(code)
    text = f"{symbol}{digits}" if symbol else f"{digits} {code}"
    return f"-{text}" if amount < 0 else text


@register.filter
def money(value, currency: str = "USD", *, precise: bool = False) -> str:
    """`$1,234.56`, `-$106.22`, `1,234.50 EUR`; with precise, every significant place."""
    if value is None or value == "":
        return MISSING
    amount = _decimal(value)
    if precise:
        shown = abs(amount).normalize()
        if shown.as_tuple().exponent > -2:
            shown = shown.quantize(CENT)
    else:
        shown = abs(amount).quantize(CENT, rounding=ROUND_HALF_UP)
    if shown == 0:
        amount = Decimal(0)  # never "-$0.00"
    return _signed(amount, f"{shown:,f}", currency)


@register.filter
def precise_money(value, currency: str = "USD") -> str:
    return money(value, currency, precise=True)


@register.filter
def quantity(value, places: int = 2) -> str:
    """Rounded to `places`, thousands separated, trailing zeros dropped: `5,940,222`, `47.3`."""
    if value is None or value == "":
        return MISSING
    number = _decimal(value).quantize(Decimal(1).scaleb(-int(places)), rounding=ROUND_HALF_UP)
    if number == 0:
        return "0"
    text = f"{number:,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def parse_money(text: str) -> Decimal:
    """An amount an operator or user typed: `25`, `25.00`, `$1,000.50`; not `1e3`."""
    typed = (text or "").strip()
    if not _TYPED.fullmatch(typed):
        raise ValueError(
            f"{typed!r} is not an amount in dollars and cents: type digits with at most "
            "two decimal places, such as 25 or 25.00."
        )
    try:
        return Decimal(typed.lstrip("$").replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern admits only digits
        raise ValueError(f"{typed!r} is not an amount in dollars and cents.") from None
