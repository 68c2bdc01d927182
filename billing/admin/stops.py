"""Service stops: who is stopped or about to be, why, and lifting a stop with a reason."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.utils import timezone

from accounts.admin_search import UserFirstSearchMixin
from billing.admin.base import ReadOnlyAdmin
from billing.models import ServiceStop
from billing.standing import LIFT_HOURS_MAX, StandingError, service_stop_lift
from plumbing.admin_confirm import confirm_then
from plumbing.admin_ranges import date_range


class StopStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return (
            ("open", "Open (pending or enforced)"),
            ("pending", "Pending (in the grace period)"),
            ("enforced", "Enforced (service stopped)"),
            ("resolved", "Resolved"),
        )

    def queryset(self, request, queryset):
        value = self.value()
        if value == "open":
            return queryset.filter(resolved_at__isnull=True)
        if value == "pending":
            return queryset.filter(resolved_at__isnull=True, stopped_at__isnull=True)
        if value == "enforced":
            return queryset.filter(resolved_at__isnull=True, stopped_at__isnull=False)
        if value == "resolved":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


class LiftForm(forms.Form):
    reason = forms.CharField(max_length=500, help_text="Kept on the stop.")
    hours = forms.IntegerField(
        min_value=1,
        max_value=LIFT_HOURS_MAX,
        initial=24,
        help_text="No new stop for the same reason before this many hours have passed; "
        "then a user still ineligible gets a new stop and a new grace period.",
    )


@admin.register(ServiceStop)
class ServiceStopAdmin(UserFirstSearchMixin, ReadOnlyAdmin):
    """Append-only: stops are opened, enforced and resolved by billing.standing; an
    operator only lifts them."""

    list_display = (
        "user",
        "reason",
        "state_display",
        "detected_at",
        "enforce_at",
        "stopped_at",
        "resolved_at",
        "resolution",
        "resolved_by",
    )
    list_select_related = ("user",)
    list_filter = (StopStateFilter, "reason", "resolution", date_range("detected_at"))
    # The user-first search (accounts/admin_search.py); the range filter narrows by date (a
    # date hierarchy reads every stop's date on every page).
    search_fields = ()
    actions = ("lift_stops",)

    @admin.display(description="state")
    def state_display(self, obj):
        return obj.state

    def has_lift_permission(self, request):
        return request.user.has_perm("billing.lift_service_stop")

    @admin.action(description="Lift the selected stops (with a reason)", permissions=["lift"])
    def lift_stops(self, request, queryset):
        return confirm_then(
            self,
            request,
            queryset,
            title="Lift service stops",
            message="Each selected open stop ends now: a stopped user gets their Hopsworks "
            "account back. No new stop for the same reason is opened for the hours given.",
            confirm_label="Lift",
            form_class=LiftForm,
            apply=lambda data: self._lift(request, queryset, data),
        )

    def _lift(self, request, queryset, data):
        lifted = 0
        now = timezone.now()
        for stop in queryset.select_related("user").order_by("pk"):
            try:
                service_stop_lift(
                    stop=stop,
                    reason=data["reason"],
                    hours=data["hours"],
                    actor=request.user,
                    now=now,
                )
            except StandingError as error:
                self.message_user(request, f"{stop}: not lifted: {error}", messages.WARNING)
                continue
            lifted += 1
        self.message_user(request, f"{lifted} stop(s) lifted.", messages.SUCCESS)
