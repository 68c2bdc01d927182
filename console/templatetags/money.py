from django import template

from billing.limits import money as money_text

register = template.Library()


@register.filter
def money(amount):
    """$1,234.56 (an empty amount shows as nothing)."""
    return "" if amount is None or amount == "" else money_text(amount)
