"""Users waiting for a place, and their accounts on the clusters."""

from __future__ import annotations

from django.contrib import admin, messages

from accounts.admin_search import UserFirstSearchMixin
from accounts.models import User
from clusters import services
from clusters.models import CapacityWait, HopsworksAccount
from plumbing.admin_lists import IndexOrderAdminMixin
from plumbing.admin_report import ActionReport
from plumbing.jobs import queued_message


@admin.register(CapacityWait)
class CapacityWaitAdmin(UserFirstSearchMixin, admin.ModelAdmin):
    list_display = ("user", "reason", "since", "attempts", "last_attempt_at")
    list_select_related = ("user",)
    search_fields = ()  # the user-first search (accounts/admin_search.py)
    list_filter = ("reason",)
    readonly_fields = ("user", "reason", "since", "attempts", "last_attempt_at")
    actions = ("place_now",)

    def has_add_permission(self, request):
        return False

    def has_assign_permission(self, request):  # placing users writes assignments
        return request.user.has_perm("clusters.add_userhopsworksassignment")

    @admin.action(
        description="Place waiting users now (all of them, first come first served)",
        permissions=["assign"],
    )
    def place_now(self, request, queryset):
        # Waiting users are placed first come, first served, whichever rows are selected.
        services.place_waiting_queue()
        self.message_user(
            request,
            queued_message(
                1,
                "job placing every waiting user in order",
                task_name="clusters.place_waiting_users",
            ),
            messages.INFO,
        )


@admin.register(HopsworksAccount)
class HopsworksAccountAdmin(IndexOrderAdminMixin, UserFirstSearchMixin, admin.ModelAdmin):
    """One account per user and cluster: as many rows as users. Newest change first
    (hopsworks_account_updated), searched user first (an exact email, id, Stripe customer
    id or Hopsworks username; or part of an email or name)."""

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
    search_fields = ()  # the user-first search alone (accounts/admin_search.py)
    ordering = ("-updated_at", "-id")
    sortable_by = ("updated_at",)  # hopsworks_account_updated, either way
    readonly_fields = [f.name for f in HopsworksAccount._meta.fields]
    actions = ("sync_now",)

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="Sync with Hopsworks now", permissions=["change"])
    def sync_now(self, request, queryset):
        report = ActionReport("user")
        report.watch_jobs("clusters.sync_user_accounts")
        for user in User.objects.filter(pk__in=queryset.values("user_id")):
            services.accounts_sync_queue(user)
            report.queued(user.email, "sync of their Hopsworks accounts queued")
        report.send(self, request)
