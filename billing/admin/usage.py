"""Daily usage and the runs that collect it."""

from __future__ import annotations

import datetime as dt
import uuid

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
        months = _whole_months(request.GET)
        if changelist is not None and changelist.paginator.estimated and months is not None:
            # Whole months of everyone (on a cluster, or all): the monthly rollup has
            # the same totals in a few rows per user.
            totals = selectors.usage_totals_of_months(**months)
            totals["total_cost_cents"] = to_cents(totals["total_cost"])
            response.context_data["usage_totals"] = totals
        elif changelist is not None and changelist.paginator.estimated:
            # Summing millions of rows takes seconds: totals are for a narrowed list.
            response.context_data["usage_totals_too_many"] = True
            response.context_data["usage_totals_limit"] = changelist.paginator.estimate_over
        elif changelist is not None:
            totals = selectors.usage_totals(changelist.queryset)
            totals["total_cost_cents"] = to_cents(totals["total_cost"])
            response.context_data["usage_totals"] = totals
        return response


# The only parameters a list of whole months may have (the dashboard's links, the date
# range filter, the cluster filter; ordering and page change no total).
_MONTH_LIST_PARAMS = {
    "date__gte",
    "date__lt",
    "date__range__gte",
    "date__range__lte",
    "hopsworks_cluster__id__exact",
    "hopsworks_cluster__isnull",
    "o",
    "p",
}


def _whole_months(query) -> dict | None:
    """`usage_totals_of_months`' arguments when the list's filters select exactly whole
    months of every user's rows (from a month's first day, to the day before a month's
    first day or no end; a cluster, no cluster or all); else None. Anything else (a
    search, another filter, a day inside a month, a bad date) is None."""
    if not set(query) <= _MONTH_LIST_PARAMS or any(len(query.getlist(k)) > 1 for k in query):
        return None
    try:
        start = query.get("date__gte") or query.get("date__range__gte")
        end_before = query.get("date__lt")
        end_on = query.get("date__range__lte")
        if (
            not start
            or (end_before and end_on)
            or ("date__gte" in query) == ("date__range__gte" in query)
        ):
            return None
        first = dt.date.fromisoformat(start)
        following = (
            dt.date.fromisoformat(end_before)
            if end_before
            else dt.date.fromisoformat(end_on) + dt.timedelta(days=1)
            if end_on
            else None
        )
        cluster = query.get("hopsworks_cluster__id__exact")
        cluster_id = uuid.UUID(cluster) if cluster else None
    except (ValueError, OverflowError):  # OverflowError: the day after 9999-12-31
        return None
    no_cluster = query.get("hopsworks_cluster__isnull")
    if no_cluster not in (None, "True", "1") or (no_cluster and cluster_id):
        return None
    if first.day != 1 or (following is not None and (following.day != 1 or following <= first)):
        return None
    return {
        "first": first,
        "following": following,
        "cluster_id": cluster_id,
        "no_cluster": bool(no_cluster),
    }


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
