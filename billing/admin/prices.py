"""The rate card and negotiated prices."""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.utils import timezone

from billing.models import Price


class PriceForm(forms.ModelForm):
    class Meta:
        model = Price
        fields = ("resource", "unit_price", "effective_from", "user", "note")

    def clean_effective_from(self):
        day = self.cleaned_data["effective_from"]
        if day < timezone.now().date():
            raise forms.ValidationError(
                "A price cannot start in the past: past days keep the price they were "
                "charged at. Use today or a later date."
            )
        return day

    def clean_unit_price(self):
        price = self.cleaned_data["unit_price"]
        if price < 0:
            raise forms.ValidationError("A price cannot be negative.")
        return price


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin):
    """The rate card and negotiated prices. A price already in effect cannot be edited or
    deleted (past days were charged with it); a change is a new row from a later date."""

    form = PriceForm
    list_display = ("resource", "unit_price", "effective_from", "user", "in_effect", "note")
    list_select_related = ("user",)
    list_filter = ("resource", ("user", admin.EmptyFieldListFilter))
    search_fields = ("user__email", "note")
    autocomplete_fields = ("user",)
    ordering = ("resource", "-effective_from")

    @admin.display(boolean=True, description="in effect")
    def in_effect(self, obj):
        return obj.effective_from <= timezone.now().date()

    def has_change_permission(self, request, obj=None):
        if obj is not None and obj.effective_from <= timezone.now().date():
            return False
        return super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.effective_from <= timezone.now().date():
            return False
        return super().has_delete_permission(request, obj)
