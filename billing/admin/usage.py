"""Daily usage and the runs that collect it."""

from __future__ import annotations

import datetime as dt

from django.contrib import admin, messages
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from billing import selectors
from billing.admin.base import ReadOnlyAdmin
from billing.collection import usage_collect
from billing.models import UsageCollectionRun, UsageDaily
from billing.pricing import to_cents


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = (
        "date",
        "user",
        "hopsworks_cluster",
        "cpu_hours",
        "gpu_hours",
        "storage_gb_months",
        "api_calls",
        "cost",
    )
    list_select_related = ("user", "hopsworks_cluster")
    list_filter = ("date", "hopsworks_cluster")
    search_fields = ("user__email", "=user__id")
    date_hierarchy = "date"
    show_full_result_count = False

    @admin.display(description="total cost", ordering="total_cost")
    def cost(self, obj):
        return f"${obj.total_cost.normalize():f}"

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            totals = selectors.usage_totals(changelist.queryset)
            totals["total_cost_cents"] = to_cents(totals["total_cost"])
            response.context_data["usage_totals"] = totals
        return response


def _collect_again(modeladmin, request, runs_or_clusters, days_for):
    outcomes = []
    for cluster, days in days_for(runs_or_clusters):
        outcomes += usage_collect(clusters=[cluster], days=days, actor=request.user.email)
    for run in outcomes:
        if run.status == UsageCollectionRun.Status.SUCCEEDED:
            modeladmin.message_user(
                request, f"{run.cluster.name} {run.date}: {run.rows_written} rows", messages.SUCCESS
            )
        else:
            modeladmin.message_user(
                request, f"{run.cluster.name} {run.date}: {run.error}", messages.ERROR
            )


@admin.register(UsageCollectionRun)
class UsageCollectionRunAdmin(ReadOnlyAdmin):
    list_display = (
        "date",
        "cluster",
        "status",
        "rows_written",
        "unknown",
        "attempts",
        "short_error",
        "finished_at",
    )
    list_select_related = ("cluster",)
    list_filter = ("status", "cluster", "date")
    date_hierarchy = "date"
    readonly_fields = ("unknown_list", "notes_list")
    fields = (
        "cluster",
        "date",
        "status",
        "rows_written",
        "attempts",
        "error",
        "unknown_list",
        "notes_list",
        "started_at",
        "finished_at",
    )
    actions = ("collect_again",)

    @admin.display(description="unknown namespaces")
    def unknown(self, obj):
        return len(obj.unknown_namespaces) or "-"

    @admin.display(description="error")
    def short_error(self, obj):
        return (obj.error[:120] + "...") if len(obj.error) > 120 else obj.error

    @admin.display(description="unknown namespaces")
    def unknown_list(self, obj):
        if not obj.unknown_namespaces:
            return "None"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li><code>{}</code>: {}</li>",
                ((n["namespace"], n["reason"]) for n in obj.unknown_namespaces),
            ),
        )

    @admin.display(description="notes (values counted as zero)")
    def notes_list(self, obj):
        if not obj.notes:
            return "None"
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((n,) for n in obj.notes))
        )

    def has_change_permission(self, request, obj=None):  # the detail page is a read-only view
        return False

    def has_collect_usage_permission(self, request):
        return request.user.has_perm("billing.collect_usage")

    @admin.action(description="Collect these days again", permissions=["collect_usage"])
    def collect_again(self, request, queryset):
        def days_for(runs):
            by_cluster = {}
            for run in runs.select_related("cluster"):
                by_cluster.setdefault(run.cluster, []).append(run.date)
            return [(cluster, sorted(days)) for cluster, days in by_cluster.items()]

        _collect_again(self, request, queryset, days_for)


class ClusterUsageAdminMixin:
    """The clusters admin's billing part: collect a cluster's usage now."""

    usage_actions = ("collect_now",)

    def has_collect_usage_permission(self, request):
        return request.user.has_perm("billing.collect_usage")

    @admin.action(description="Collect yesterday's usage now", permissions=["collect_usage"])
    def collect_now(self, request, queryset):
        yesterday = timezone.now().date() - dt.timedelta(days=1)
        _collect_again(
            self, request, queryset, lambda clusters: [(c, [yesterday]) for c in clusters]
        )
