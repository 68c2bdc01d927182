"""The rate card and negotiated prices."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from billing.models import Price
from billing.prices import (
    price_delete,
    price_locked_reason,
    price_save,
    prices_with_current,
)
from billing.pricing import resource_unit
from plumbing.formatting import precise_money


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    """The rate card and negotiated prices. A price that started before today, or today with
    usage of today already priced with it, cannot be edited or deleted (days were charged
    with it); a change is a new row from a later date. Today's price stays correctable
    until then."""

    fields = ("resource", "unit_price", "effective_from", "user", "note")
    list_display = (
        "resource",
        "price",
        "unit",
        "effective_from",
        "user",
        "in_effect",
        "note",
    )
    list_select_related = ("user",)
    list_filter = ("resource", ("user", admin.EmptyFieldListFilter))
    search_fields = ("user__email", "note")
    autocomplete_fields = ("user",)
    ordering = ("resource", "-effective_from")

    @admin.display(description="unit price", ordering="unit_price")
    def price(self, obj):
        # Prices are often fractions of a cent: every significant place, even in the list.
        return precise_money(obj.unit_price)

    @admin.display(description="per")
    def unit(self, obj):
        return resource_unit(obj.resource)

    def get_queryset(self, request):
        return prices_with_current(super().get_queryset(request))

    @admin.display(boolean=True, description="in effect", ordering="current")
    def in_effect(self, obj):
        """In effect now: started and not replaced by a later price (future: not yet)."""
        return obj.current

    def has_change_permission(self, request, obj=None):
        if obj is not None and price_locked_reason(obj):
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and price_locked_reason(obj):
            return False
        return super().has_delete_permission(request, obj)

    # The form has already run the model's validation; the service runs it again under
    # the row lock and is the only writer of prices.
    def save_model(self, request, obj, form, change):
        price_save(price=obj, actor=request.user)

    def delete_model(self, request, obj):
        try:
            price_delete(price=obj, actor=request.user)
        except ValidationError as error:  # it came into effect while the page was open
            self.message_user(request, " ".join(error.messages), messages.ERROR)

    def get_actions(self, request):
        # One at a time, through the delete page, which knows whether a price is in effect.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions
