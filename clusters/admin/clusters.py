"""The clusters admin's own part: capacity, fill, accounts, status."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import OuterRef
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from clusters import selectors, services
from clusters.forms import HopsworksClusterForm
from clusters.hopsworks import HopsworksError
from clusters.models import (
    HopsworksAccount,
    HopsworksCluster,
    UserHopsworksAssignment,
    account_pending,
)
from clusters.selectors import count_of
from plumbing import outbound
from plumbing.admin_confirm import confirm_then
from plumbing.admin_report import ActionReport
from plumbing.encryption import SecretDecryptionError


def users_on_cluster_url(cluster_id) -> str:
    return (
        reverse("admin:accounts_user_changelist")
        + f"?hopsworks_assignment__hopsworks_cluster__id__exact={cluster_id}"
    )


def fill_bar(current: int, maximum: int) -> str:
    percent = round(100 * current / maximum) if maximum else 100
    color = "#16a34a" if percent < 75 else "#d97706" if percent < 95 else "#dc2626"
    return format_html(
        '<div title="{}%" style="width:8em;background:#e5e7eb;border-radius:3px">'
        '<div style="width:{}%;background:{};height:.8em;border-radius:3px"></div></div>'
        " {}%",
        percent,
        min(percent, 100),
        color,
        percent,
    )


class ClusterAdminBase(admin.ModelAdmin):
    """The seed's "Cluster utilization": users counted, assigned, how full, status. Not
    registered here: console/admin.py adds billing's part and registers it."""

    form = HopsworksClusterForm
    list_display = (
        "name",
        "status",
        "current_users",
        "max_users",
        "assigned_users",
        "fill",
        "pending_accounts",
        "api_url",
    )
    list_filter = ("status",)
    search_fields = ("name", "api_url")
    readonly_fields = (
        "current_users",
        "created_at",
        "users_link",
        "account_problems",
        "last_sync",
    )
    # Facts about a cluster that exists: left out of the add form.
    shown_once_saved = {
        "current_users",
        "users_link",
        "account_problems",
        "created_at",
        "last_sync",
    }
    actions = ("test_connection", "put_in_maintenance", "make_active", "make_inactive")
    fieldsets = (
        (None, {"fields": ("name", "status", "api_url", "api_key_input", "ca_bundle")}),
        ("Capacity", {"fields": ("max_users", "current_users", "users_link")}),
        ("Usage metrics", {"fields": ("kubeconfig_input", "clear_kubeconfig")}),
        ("Hopsworks accounts", {"fields": ("account_problems", "last_sync", "created_at")}),
    )

    def get_queryset(self, request):
        # One counting subquery per relation: joining both relations and counting
        # distinct multiplies the rows (assignments x accounts, 20,000 x 20,000 per cluster).
        return (
            super()
            .get_queryset(request)
            .annotate(
                assigned=count_of(
                    UserHopsworksAssignment.objects.filter(hopsworks_cluster=OuterRef("pk")),
                    "hopsworks_cluster",
                ),
                pending=count_of(
                    HopsworksAccount.objects.filter(account_pending(), cluster=OuterRef("pk")),
                    "cluster",
                ),
            )
        )

    def get_fieldsets(self, request, obj=None):
        hidden = set(self.shown_once_saved) if obj is None else set()
        if obj is None or not obj.kubeconfig:
            hidden.add("clear_kubeconfig")
        return [
            (name, {**opts, "fields": [f for f in opts["fields"] if f not in hidden]})
            for name, opts in super().get_fieldsets(request, obj)
        ]

    @admin.display(description="assigned users", ordering="assigned")
    def assigned_users(self, obj):
        return format_html('<a href="{}">{}</a>', users_on_cluster_url(obj.pk), obj.assigned)

    @admin.display(description="full")
    def fill(self, obj):
        return fill_bar(obj.current_users, obj.max_users)

    @admin.display(description="pending accounts", ordering="pending")
    def pending_accounts(self, obj):
        return obj.pending or "-"

    @admin.display(description="users")
    def users_link(self, obj):
        return format_html(
            '<a href="{}">{} assigned users</a>', users_on_cluster_url(obj.pk), obj.assigned
        )

    @admin.display(description="last account sync")
    def last_sync(self, obj):
        last = (
            obj.hopsworks_accounts.filter(last_attempt_at__isnull=False)
            .order_by("-last_attempt_at")
            .values("last_attempt_at", "last_error")
            .first()
        )
        if last is None:
            return "No account has been synced yet."
        outcome = f"failed: {last['last_error']}" if last["last_error"] else "succeeded"
        return f"{last['last_attempt_at']:%Y-%m-%d %H:%M} UTC, {outcome}"

    @admin.display(description="accounts not yet in sync")
    def account_problems(self, obj):
        rows = selectors.pending_accounts_on(obj)[:20]
        if not rows:
            return "All accounts are in sync."
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{}: wanted {}, is {} ({} attempts) {}</li>",
                ((a.user.email, a.desired, a.synced, a.attempts, a.last_error) for a in rows),
            ),
        )

    def save_model(self, request, obj, form, change):
        try:
            saved = services.cluster_save(cluster=obj, changes=form.changes(), actor=request.user)
        except services.ClusterValidationError as error:
            self.message_user(request, f"Not saved: {error}", messages.ERROR)
            return
        if not change and saved.status == HopsworksCluster.Status.MAINTENANCE:
            self.message_user(
                request,
                f"{saved.name} starts in maintenance and takes no users yet. Test the "
                'connection (action "Test the connection to Hopsworks"): when it passes, '
                "the cluster becomes active.",
                messages.WARNING,
            )

    # Calls the cluster with its stored key: for those who manage the cluster's settings.
    @admin.action(description="Test the connection to Hopsworks", permissions=["change"])
    def test_connection(self, request, queryset):
        # Every cluster tested shares one deadline: the page answers in time however many.
        report = ActionReport("cluster")
        with outbound.deadline(settings.OUTBOUND_DEADLINE_SECONDS):
            for cluster in queryset:
                self._test_one(request, cluster, report)
        report.send(self, request)

    def _test_one(self, request, cluster, report):
        try:
            with cluster.hopsworks_client(quick=True) as client:
                found = client.check_connection()
        except (HopsworksError, SecretDecryptionError, ValueError) as error:
            report.not_done(cluster.name, error)
            return
        activated = services.cluster_connection_passed(cluster=cluster, actor=request.user)
        report.done(
            cluster.name,
            f"connected; Hopsworks has {found.users} users and {found.projects} projects."
            + (" The cluster is now active: it takes new users." if activated else ""),
        )

    def _set_status(self, request, queryset, status, title, message):
        def apply(_data):
            report = ActionReport("cluster")
            for cluster in queryset:
                try:
                    changed = services.cluster_set_status(
                        cluster=cluster, status=status, actor=request.user
                    )
                except services.ClusterValidationError as error:
                    report.not_done(cluster.name, error)
                    continue
                if changed:
                    report.done(cluster.name, f"now {status}")
                else:
                    report.unchanged(cluster.name, f"already {status}")
            report.send(self, request)

        return confirm_then(
            self,
            request,
            queryset,
            title=title,
            message=message,
            confirm_label=f"Yes, make them {status}",
            apply=apply,
        )

    @admin.action(description="Put in maintenance (takes no new users)", permissions=["change"])
    def put_in_maintenance(self, request, queryset):
        return self._set_status(
            request,
            queryset,
            HopsworksCluster.Status.MAINTENANCE,
            "Put clusters in maintenance",
            "These clusters will take no new users; assigned users stay and usage is still "
            "collected.",
        )

    @admin.action(description="Make active (takes new users)", permissions=["change"])
    def make_active(self, request, queryset):
        return self._set_status(
            request,
            queryset,
            HopsworksCluster.Status.ACTIVE,
            "Make clusters active",
            "These clusters will take new users; users waiting for capacity are placed.",
        )

    @admin.action(description="Make inactive", permissions=["change"])
    def make_inactive(self, request, queryset):
        return self._set_status(
            request,
            queryset,
            HopsworksCluster.Status.INACTIVE,
            "Make clusters inactive",
            "These clusters will take no new users and their usage is no longer collected. "
            "Assigned users stay until moved.",
        )
