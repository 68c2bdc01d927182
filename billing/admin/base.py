"""What the billing admins share."""

from __future__ import annotations

from django.contrib import admin

from plumbing.admin_figures import ReadableFiguresMixin


class ReadOnlyAdmin(ReadableFiguresMixin, admin.ModelAdmin):
    """Rows written only by services: viewable, never added, edited or deleted here. Money
    and quantities are named in `money_fields` / `quantity_fields` (plumbing.admin_figures)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
