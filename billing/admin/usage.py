"""Daily usage and the runs that collect it."""

from __future__ import annotations

import datetime as dt

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts.models import User
from billing import selectors
from billing.admin.base import ReadOnlyAdmin
from billing.models import UsageCollectionRun, UsageDaily
from billing.pricing import to_cents
from billing.tasks import collection_defer
from plumbing.admin_report import ActionReport


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
        "total_cost",
    )
    money_fields = {"total_cost": None}
    quantity_fields = {"cpu_hours": 2, "gpu_hours": 2, "storage_gb_months": 4, "api_calls": 0}
    list_select_related = ("user", "hopsworks_cluster")
    list_filter = ("date", "hopsworks_cluster")
    search_fields = ("user__email", "=user__id")
    date_hierarchy = "date"
    show_full_result_count = False

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            totals = selectors.usage_totals(changelist.queryset)
            totals["total_cost_cents"] = to_cents(totals["total_cost"])
            response.context_data["usage_totals"] = totals
        return response


def _collect_again(modeladmin, request, cluster_days):
    """Queue one collection job per cluster-day (one already waiting is not queued twice)."""
    report = ActionReport("cluster-day")
    report.watch_jobs("billing.collect_cluster_day")
    for cluster, day in cluster_days:
        if collection_defer(cluster=cluster, day=day) is None:
            report.unchanged(f"{cluster.name} {day}", "already queued")
        else:
            report.queued(f"{cluster.name} {day}", "collection queued")
    report.send(modeladmin, request)


@admin.register(UsageCollectionRun)
class UsageCollectionRunAdmin(ReadOnlyAdmin):
    list_display = (
        "date",
        "cluster",
        "status",
        "rows_written",
        "coverage",
        "unknown",
        "attempts",
        "short_error",
        "finished_at",
    )
    list_select_related = ("cluster",)
    list_filter = ("status", "cluster", "date")
    date_hierarchy = "date"
    readonly_fields = ("coverage", "unknown_list", "notes_list", "attribution_list")
    fields = (
        "cluster",
        "date",
        "status",
        "rows_written",
        "coverage",
        "fetched_at",
        "attempts",
        "error",
        "unknown_list",
        "notes_list",
        "attribution_list",
        "started_at",
        "finished_at",
    )
    actions = ("collect_again",)

    @admin.display(description="coverage", ordering="coverage_minutes")
    def coverage(self, obj):
        """Minutes of the day the stored figures cover (a failed attempt does not change it)."""
        if obj.coverage_minutes is None:
            # Collected before coverage was recorded (counts as the whole day), or never.
            return "-"
        return f"{obj.coverage_minutes}/1440 min"

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

    @admin.display(description="notes (values counted as zero or left out, coverage)")
    def notes_list(self, obj):
        if not obj.notes:
            return "None"
        return format_html(
            "<ul>{}</ul>", format_html_join("", "<li>{}</li>", ((n,) for n in obj.notes))
        )

    @admin.display(description="attribution (namespace -> project -> user), kept for reruns")
    def attribution_list(self, obj):
        if not obj.attribution:
            return "None"
        user_ids = {entry.get("user_id") for entry in obj.attribution.values()}
        emails = dict(User.objects.filter(pk__in=user_ids).values_list("pk", "email"))
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li><code>{}</code>: project {}, billed to {} (<code>{}</code>)</li>",
                (
                    (
                        namespace,
                        entry.get("project"),
                        emails.get(entry.get("user_id"), "a deleted user"),
                        entry.get("user_id"),
                    )
                    for namespace, entry in sorted(obj.attribution.items())
                ),
            ),
        )

    def has_change_permission(self, request, obj=None):  # the detail page is a read-only view
        return False

    def has_collect_usage_permission(self, request):
        return request.user.has_perm("billing.collect_usage")

    @admin.action(description="Collect these days again", permissions=["collect_usage"])
    def collect_again(self, request, queryset):
        runs = queryset.select_related("cluster").order_by("cluster__name", "date")
        _collect_again(self, request, [(run.cluster, run.date) for run in runs])


class ClusterUsageAdminMixin:
    """The clusters admin's billing part: collect a cluster's usage now."""

    usage_actions = ("collect_now",)
    usage_fields = ("last_collection",)
    usage_section = ("Usage collection", {"fields": ("last_collection",)})

    @admin.display(description="last collection")
    def last_collection(self, obj):
        run = obj.collection_runs.order_by("-date").first()
        if run is None:
            return "Never collected."
        text = f"{run.date}: {run.get_status_display().lower()}"
        if run.error:
            text += f" ({run.error[:200]})"
        return text

    def has_collect_usage_permission(self, request):
        return request.user.has_perm("billing.collect_usage")

    @admin.action(description="Collect yesterday's usage now", permissions=["collect_usage"])
    def collect_now(self, request, queryset):
        yesterday = timezone.now().date() - dt.timedelta(days=1)
        _collect_again(self, request, [(cluster, yesterday) for cluster in queryset])
