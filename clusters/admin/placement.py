"""Users waiting for a place, and their accounts on the clusters."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages

from accounts.models import User
from clusters import services
from clusters.models import CapacityWait, HopsworksAccount
from plumbing import outbound


@admin.register(CapacityWait)
class CapacityWaitAdmin(admin.ModelAdmin):
    list_display = ("user", "reason", "since", "attempts", "last_attempt_at")
    list_select_related = ("user",)
    search_fields = ("user__email",)
    list_filter = ("reason",)
    readonly_fields = ("user", "reason", "since", "attempts", "last_attempt_at")
    actions = ("place_now",)

    def has_add_permission(self, request):
        return False

    @admin.action(description="Try to place waiting users now")
    def place_now(self, request, queryset):
        placed = services.capacity_place_waiting()
        self.message_user(request, f"{placed} waiting user(s) placed.")


@admin.register(HopsworksAccount)
class HopsworksAccountAdmin(admin.ModelAdmin):
    list_display = (
        "user",
        "cluster",
        "desired",
        "synced",
        "hopsworks_username",
        "attempts",
        "last_error",
        "updated_at",
    )
    list_select_related = ("user", "cluster")
    list_filter = ("cluster", "desired", "synced")
    search_fields = ("user__email", "hopsworks_username")
    readonly_fields = [f.name for f in HopsworksAccount._meta.fields]
    actions = ("sync_now",)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Sync with Hopsworks now")
    def sync_now(self, request, queryset):
        from clusters.account_sync import hopsworks_accounts_sync

        users = User.objects.filter(pk__in=queryset.values("user_id"))
        synced = failed = 0
        # One deadline for all the users selected: the page answers in time however many.
        with outbound.deadline(settings.OUTBOUND_DEADLINE_SECONDS):
            for user in users:
                report = hopsworks_accounts_sync(user=user, quick=True)
                synced += report.synced
                failed += report.failed
                for error in report.errors:
                    self.message_user(request, error, messages.ERROR)
        self.message_user(request, f"{synced} account(s) synced, {failed} failed.")
