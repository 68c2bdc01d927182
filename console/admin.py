"""The one users admin and the one clusters admin, composed from each app's part.

Every column, filter, section and action is named here, in the order an operator sees it:
moving a section is moving a line, never counting positions in another app's tuple.
"""

from __future__ import annotations

from django.contrib import admin

from accounts.admin import (
    ACCOUNT_SECTION,
    AUTH0_FIELDS,
    CONSOLE_ACCESS_SECTION,
    IDENTITY_SECTION,
    SYNCED_FIELDS,
    UserAdminBase,
)
from accounts.models import User
from billing.admin.usage import ClusterUsageAdminMixin
from billing.admin.users import BILLING_SECTION, UserBillingAdminMixin
from clusters.admin import PLACEMENT_SECTION, ClusterAdminBase, UserPlacementAdminMixin
from clusters.models import HopsworksCluster

admin.site.site_header = "Hopsworks Platform Console"
admin.site.site_title = "Platform Console"
admin.site.index_title = "Operations"


@admin.register(User)
class UserAdmin(UserBillingAdminMixin, UserPlacementAdminMixin, UserAdminBase):
    """Who a user is (accounts), where they are placed (clusters), how they pay (billing)."""

    list_display = (
        "email",
        "name",
        "id",
        "status",
        "cluster",
        "is_admin",
        "login_count",
        "last_login",
        "created_at",
    )
    list_select_related = UserPlacementAdminMixin.placement_select_related
    list_filter = (
        *UserAdminBase.list_filter,
        *UserPlacementAdminMixin.placement_filters,
        *UserBillingAdminMixin.billing_filters,
    )
    readonly_fields = (
        *AUTH0_FIELDS,
        *SYNCED_FIELDS,
        "placement",
        *UserBillingAdminMixin.billing_fields,
    )
    fieldsets = (
        IDENTITY_SECTION,
        ACCOUNT_SECTION,
        PLACEMENT_SECTION,
        BILLING_SECTION,
        CONSOLE_ACCESS_SECTION,
    )
    actions = (
        *UserAdminBase.actions,
        *UserPlacementAdminMixin.placement_actions,
        *UserBillingAdminMixin.billing_actions,
    )


@admin.register(HopsworksCluster)
class ClusterAdmin(ClusterUsageAdminMixin, ClusterAdminBase):
    """Clusters: capacity and accounts (clusters), collecting their usage (billing)."""

    actions = (*ClusterAdminBase.actions, *ClusterUsageAdminMixin.usage_actions)
