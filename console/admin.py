"""The one users admin and the one clusters admin, composed from each app's part.

Every column, filter, section and action is named here, in the order an operator sees it:
moving a section is moving a line, never counting positions in another app's tuple.
"""

from __future__ import annotations

from types import SimpleNamespace

from django.contrib import admin
from django.db.models import OuterRef, Q, Subquery
from django.template.defaultfilters import title
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince, timeuntil
from procrastinate.contrib.django.admin import ProcrastinateJobAdmin
from procrastinate.contrib.django.models import ProcrastinateEvent, ProcrastinateJob

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
from billing.admin.users import BILLING_SECTION, COST_CHART_SECTION, UserBillingAdminMixin
from clusters.admin import PLACEMENT_SECTION, ClusterAdminBase, UserPlacementAdminMixin
from clusters.models import HopsworksCluster
from console.exports import UserResource
from console.user_story import HISTORY_SECTION, STORY_SECTION, UserStoryAdminMixin
from plumbing.admin_confirm import ObjectActionsMixin
from plumbing.admin_export import ExportAdminMixin
from plumbing.admin_lists import (
    EstimatedCountAdminMixin,
    IndexedValuesFilter,
    IndexOrderAdminMixin,
    StrictChoicesFilter,
)
from plumbing.admin_ranges import date_range
from plumbing.admin_report import ActionReport
from plumbing.jobs import jobs_cancel, jobs_retry

admin.site.site_header = "Hopsworks Platform Console"
admin.site.site_title = "Platform Console"
admin.site.index_title = "Operations"
# The app list beside every page took a quarter of a 1280 px window from the lists; the
# index and the breadcrumbs lead everywhere it did.
admin.site.enable_nav_sidebar = False


@admin.register(User)
class UserAdmin(
    EstimatedCountAdminMixin,
    IndexOrderAdminMixin,
    ExportAdminMixin,
    UserStoryAdminMixin,
    ObjectActionsMixin,
    UserBillingAdminMixin,
    UserPlacementAdminMixin,
    UserAdminBase,
):
    """Who a user is (accounts), where they are placed (clusters), how they pay (billing),
    and their whole story with the actions as buttons on their page (console)."""

    export_resource_class = UserResource
    # A filter matching tens of thousands of users (a cluster, a billing mode, "on a
    # cluster") took 30-60 ms to count exactly at 100,000 users, against about 10 ms for
    # its page of rows: from 10,000 the count is the planner's ("about 20,000").
    estimate_over = 10_000

    # What fits 1280 px: the Auth0 id and the creation date are on the user's page.
    list_display = (
        "user_column",
        "status",
        "cluster",
        *UserBillingAdminMixin.billing_columns,
        "is_admin",
        "last_login_column",
    )
    list_display_links = ("user_column",)
    # Sorted only where an index gives the order (users_list_* and the email's unique
    # index); the cluster, billing figures and balance are joined or computed per row, so
    # sorting by them would read and sort every user.
    sortable_by = ("user_column", "status", "is_admin", "last_login_column")
    list_select_related = UserPlacementAdminMixin.placement_select_related
    list_filter = (
        *UserAdminBase.list_filter,
        *UserPlacementAdminMixin.placement_filters,
        *UserBillingAdminMixin.billing_filters,
        date_range("created_at"),
    )
    readonly_fields = (
        *AUTH0_FIELDS,
        *SYNCED_FIELDS,
        "placement",
        *UserBillingAdminMixin.billing_fields,
        "cost_chart",
        *UserStoryAdminMixin.story_fields,
    )
    fieldsets = (
        IDENTITY_SECTION,
        STORY_SECTION,
        ACCOUNT_SECTION,
        PLACEMENT_SECTION,
        BILLING_SECTION,
        COST_CHART_SECTION,
        HISTORY_SECTION,
        CONSOLE_ACCESS_SECTION,
    )
    actions = (
        *UserAdminBase.actions,
        *UserPlacementAdminMixin.placement_actions,
        *UserBillingAdminMixin.billing_actions,
    )
    object_actions = UserStoryAdminMixin.story_buttons

    def get_queryset(self, request):
        return self.with_billing_figures(super().get_queryset(request))


@admin.register(HopsworksCluster)
class ClusterAdmin(ClusterUsageAdminMixin, ClusterAdminBase):
    """Clusters: capacity and accounts (clusters), collecting their usage (billing)."""

    actions = (*ClusterAdminBase.actions, *ClusterUsageAdminMixin.usage_actions)
    readonly_fields = (*ClusterAdminBase.readonly_fields, *ClusterUsageAdminMixin.usage_fields)
    fieldsets = (*ClusterAdminBase.fieldsets, ClusterUsageAdminMixin.usage_section)
    shown_once_saved = {*ClusterAdminBase.shown_once_saved, *ClusterUsageAdminMixin.usage_fields}


def _moment(value) -> str:
    # As Procrastinate's template shows an event's time, `date:"Y-m-d H:i:s.u (e)"`, without
    # Django's format parser (a tenth of the job list's time).
    local = timezone.localtime(value)
    return f"{local:%Y-%m-%d %H:%M:%S.%f} ({local.tzname() or ''})"


# The job queue (Procrastinate's own admin, with actions that declare their permission).
# A job's arguments show at most this many of the users they name.
ARGS_SHOWN = 10
admin.site.unregister(ProcrastinateJob)


@admin.register(ProcrastinateJob)
class JobAdmin(IndexOrderAdminMixin, EstimatedCountAdminMixin, ProcrastinateJobAdmin):
    """Queued, running, failed and succeeded jobs with their arguments, attempts and
    events. Retrying or cancelling needs "Can change procrastinate job".

    A week of succeeded jobs is kept (`plumbing.jobs.delete_old_jobs`): 150,000 at
    100,000 users. The queue and task filters read their values through an index
    (console migration 0001), the search is exact, and the list is newest first."""

    actions = ("retry_jobs", "cancel_jobs")
    list_filter = (
        ("status", StrictChoicesFilter),
        ("queue_name", IndexedValuesFilter),
        ("task_name", IndexedValuesFilter),
    )
    search_fields = ("task_name", "id")  # exact: see get_search_results
    search_help_text = "An exact task name (billing.collect_cluster_day) or job id."
    ordering = ("-id",)
    sortable_by = ("pk",)  # the primary key, either way

    def get_search_results(self, request, queryset, search_term):
        # A task name or a job id, exactly: `task_name = 'x'` (jobs_task_newest) or the
        # primary key. Part of a name would read every job.
        term = (search_term or "").strip()
        if not term:
            return queryset, False
        if term.isdigit() and len(term) < 19:  # a bigint
            return queryset.filter(Q(pk=int(term)) | Q(task_name=term)), False
        return queryset.filter(task_name=term), False

    def has_operate_permission(self, request):
        return request.user.has_perm("procrastinate.change_procrastinatejob")

    @admin.display(description="Args")
    def pretty_args(self, instance):
        # A standing check names its users in one string (`billing.standing`): shown one
        # id a line, as a list would be, not as one unbroken line; a batch's check names
        # thousands, shown as the first ones and how many more (Procrastinate cuts the text
        # at 2,000 characters anyway, after encoding it all: 5,000 ids a job, on every
        # page of the list).
        args = instance.args
        if isinstance(args, dict) and isinstance(args.get("users"), str):
            users = args["users"].split(" ", ARGS_SHOWN)
            if len(users) > ARGS_SHOWN:
                more = args["users"].count(" ") + 1 - ARGS_SHOWN
                users = [*users[:ARGS_SHOWN], f"... {more:,} more"]
            args = {**args, "users": users}
        return super().pretty_args(SimpleNamespace(args=args))

    def get_queryset(self, request):
        # A job's last event, read with the job: Procrastinate prefetches every event of the
        # page's jobs, which Django then filters per job (a queryset built per row, twice: a
        # third of the list's time), for the summary to show one.
        last = ProcrastinateEvent.objects.filter(job=OuterRef("pk")).order_by("-at", "-id")
        return (
            super()
            .get_queryset(request)
            .prefetch_related(None)
            .annotate(
                last_event_type=Subquery(last.values("type")[:1]),
                last_event_at=Subquery(last.values("at")[:1]),
            )
        )

    @admin.display(description="Summary")
    def summary(self, instance):
        # Procrastinate's summary, built directly: its template rendered per row was a
        # quarter of the list's time (tests compare the two).
        if instance.last_event_type is None:
            return ""
        items = [
            format_html(
                '{} <strong title="{}">{} ago</strong>',
                title(instance.last_event_type),
                _moment(instance.last_event_at),
                timesince(instance.last_event_at),
            )
        ]
        shown = (
            ("Queue", instance.queue_name),
            ("Lock", instance.lock),
            ("Queueing lock", instance.queueing_lock),
            ("Priority", instance.priority if instance.priority != 0 else None),
        )
        items += [
            format_html("<strong>{}:</strong> {}", name, value) for name, value in shown if value
        ]
        if instance.scheduled_at:
            at = instance.scheduled_at
            when = f"in {timeuntil(at)}" if at > timezone.now() else f"{timesince(at)} ago"
            items.append(
                format_html(
                    '<strong>Scheduled:</strong> <span title="{}">{}</span>', _moment(at), when
                )
            )
        if instance.attempts > 1:
            items.append(format_html("<strong>Attempts:</strong> {}", instance.attempts))
        return format_html(
            '<ul style="padding: 0; margin: 0;">{}</ul>',
            format_html_join(
                "", '<li style="list-style-type: none">{}</li>', ((i,) for i in items)
            ),
        )

    @admin.action(description="Retry the selected failed or stuck jobs", permissions=["operate"])
    def retry_jobs(self, request, queryset):
        report = ActionReport("job")
        for job in queryset.order_by("pk"):
            if jobs_retry(job_ids=[job.pk]):
                report.queued(f"job {job.pk} ({job.task_name})", "queued again")
            else:
                report.not_done(
                    f"job {job.pk} ({job.task_name})",
                    f"it is {job.status}; only failed or running jobs are retried",
                )
        report.send(self, request)

    @admin.action(description="Cancel the selected waiting jobs", permissions=["operate"])
    def cancel_jobs(self, request, queryset):
        report = ActionReport("job")
        for job in queryset.order_by("pk"):
            if jobs_cancel(job_ids=[job.pk]):
                report.done(f"job {job.pk} ({job.task_name})", "cancelled")
            else:
                report.not_done(
                    f"job {job.pk} ({job.task_name})",
                    f"it is {job.status}; only waiting jobs are cancelled",
                )
        report.send(self, request)
