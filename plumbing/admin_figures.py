"""Money and quantity columns in the admin, shown through plumbing.formatting.

An admin names its figures once (`money_fields`, `quantity_fields`) and keeps naming the
model fields in `list_display` and `fields`: lists show dollars and cents and rounded
quantities (still sorted by the stored value), read-only detail pages show every
significant place. Editable forms are left alone (an input shows the stored value).
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib import admin

from plumbing.formatting import money, quantity


def _money(name: str, currency_field: str | None, precise: bool, cents: bool):
    def show(modeladmin, obj):
        value = getattr(obj, name)
        if cents and value is not None:
            value = Decimal(value).scaleb(-2)
        currency = getattr(obj, currency_field) if currency_field else "USD"
        return money(value, currency, precise=precise)

    return show


def _quantity(name: str, places: int):
    def show(modeladmin, obj):
        return quantity(getattr(obj, name), places)

    return show


class ReadableFiguresMixin:
    """`money_fields = {"amount": "currency"}` (the field naming the currency, or None for
    US dollars); `cents_fields`: integer cents shown as money; `quantity_fields =
    {"cpu_hours": 2}` (places)."""

    money_fields: dict[str, str | None] = {}
    cents_fields: tuple[str, ...] = ()
    quantity_fields: dict[str, int] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        money_fields = {name: cur for name, cur in cls.money_fields.items()}
        money_fields.update({name: None for name in cls.cents_fields})
        for name, currency in money_fields.items():
            cents = name in cls.cents_fields
            label = name.removesuffix("_cents").replace("_", " ")
            for suffix, precise in (("shown", False), ("exact", True)):
                show = _money(name, currency, precise, cents)
                show.__name__ = f"{name}_{suffix}"
                setattr(cls, show.__name__, admin.display(description=label, ordering=name)(show))
        for name, places in cls.quantity_fields.items():
            show = _quantity(name, places)
            show.__name__ = f"{name}_shown"
            label = name.replace("_", " ")
            setattr(cls, show.__name__, admin.display(description=label, ordering=name)(show))

    def _figures(self) -> set[str]:
        return {*self.money_fields, *self.cents_fields, *self.quantity_fields}

    def get_list_display(self, request):
        figures = self._figures()
        return [
            f"{name}_shown" if isinstance(name, str) and name in figures else name
            for name in super().get_list_display(request)
        ]

    def _exact(self, names):
        money_names = {*self.money_fields, *self.cents_fields}
        shown = [f"{name}_exact" if name in money_names else name for name in names]
        return list(dict.fromkeys(shown))  # readonly names come again after the form's

    def get_fields(self, request, obj=None):
        fields = super().get_fields(request, obj)
        if obj is not None and not self.has_change_permission(request, obj):
            return self._exact(fields)
        return fields

    def get_readonly_fields(self, request, obj=None):
        readonly = super().get_readonly_fields(request, obj)
        return (*readonly, *(f"{n}_exact" for n in (*self.money_fields, *self.cents_fields)))
