"""Daily usage and the runs that collect it."""

from __future__ import annotations

import datetime as dt

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts.admin_search import UserFirstSearchMixin
from accounts.models import User
from billing import selectors
from billing.admin.base import ReadOnlyAdmin
from billing.exports import UsageDailyResource
from billing.models import UsageCollectionRun, UsageDaily
from billing.pricing import storage_unit, to_cents
from billing.tasks import collection_defer
from plumbing.admin_cells import figure, figures, quantity, user_cell
from plumbing.admin_export import ExportAdminMixin
from plumbing.admin_lists import EstimatedCountAdminMixin, IndexOrderAdminMixin
from plumbing.admin_ranges import date_range
from plumbing.admin_report import ActionReport


@admin.register(UsageDaily)
class UsageDailyAdmin(
    IndexOrderAdminMixin,
    ExportAdminMixin,
    UserFirstSearchMixin,
    EstimatedCountAdminMixin,
    ReadOnlyAdmin,
):
    """Millions of rows: the count of a big list is the planner's estimate, search
    resolves the user first (accounts/admin_search.py), there is no date hierarchy (it
    reads every row for its months) and totals are given once the list is narrowed to at
    most plumbing.admin_lists.ESTIMATE_OVER rows."""

    export_resource_class = UsageDailyResource

    # The four measures in one compact cell: separate columns did not fit 1280 px.
    list_display = ("date", "user_column", "hopsworks_cluster", "usage", "cost")
    money_fields = {"total_cost": None}
    quantity_fields = {"cpu_hours": 2, "gpu_hours": 2, "storage_gb_months": 4, "api_calls": 0}
    list_select_related = ("user", "hopsworks_cluster")
    list_filter = (date_range("date"), "hopsworks_cluster")
    search_fields = ()  # the user-first search alone (accounts/admin_search.py)
    ordering = ("-date", "user_id", "id")  # the order of the usage_daily_date index
    sortable_by = ("date",)  # that index, either way; by user or cost would sort millions

    @admin.display(description="user", ordering="user__email")
    def user_column(self, obj):
        return user_cell(obj.user)

    @admin.display(description="usage")
    def usage(self, obj):
        return figures(
            ("CPU", f"{quantity(obj.cpu_hours)} h"),
            ("GPU", f"{quantity(obj.gpu_hours)} h"),
            ("Storage", f"{quantity(obj.storage_gb_months)} {storage_unit()}-months"),
            ("API", f"{quantity(obj.api_calls, 0)} calls"),
        )

    @admin.display(description="total cost", ordering="total_cost")
    def cost(self, obj):
        return figure(obj.total_cost)

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None and changelist.paginator.estimated:
            # Summing millions of rows takes seconds: totals are for a narrowed list.
            response.context_data["usage_totals_too_many"] = True
            response.context_data["usage_totals_limit"] = changelist.paginator.estimate_over
        elif changelist is not None:
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
    list_filter = ("status", "cluster", date_range("date"))
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
