from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from accounts.models import User
from clusters import selectors, services
from clusters.forms import ClusterChoiceForm, HopsworksClusterForm
from clusters.hopsworks import HopsworksError
from clusters.models import CapacityWait, HopsworksAccount, HopsworksCluster, account_pending
from plumbing.admin_confirm import confirm_then
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
    readonly_fields = ("current_users", "created_at", "users_link", "account_problems")
    actions = ("test_connection", "put_in_maintenance", "make_active", "make_inactive")
    fieldsets = (
        (None, {"fields": ("name", "status", "api_url", "api_key_input", "ca_bundle")}),
        ("Capacity", {"fields": ("max_users", "current_users", "users_link")}),
        ("Usage metrics", {"fields": ("kubeconfig_input", "clear_kubeconfig")}),
        ("Hopsworks accounts", {"fields": ("account_problems", "created_at")}),
    )

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                assigned=Count("assignments__user", distinct=True),
                pending=Count(
                    "hopsworks_accounts",
                    filter=account_pending("hopsworks_accounts__"),
                    distinct=True,
                ),
            )
        )

    def get_fieldsets(self, request, obj=None):
        hidden = set()
        if obj is None:  # nothing to show about users and accounts before it exists
            hidden = {"current_users", "users_link", "account_problems", "created_at"}
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
            services.cluster_save(cluster=obj, changes=form.changes(), actor=request.user)
        except services.ClusterValidationError as error:
            self.message_user(request, f"Not saved: {error}", messages.ERROR)

    @admin.action(description="Test the connection to Hopsworks")
    def test_connection(self, request, queryset):
        for cluster in queryset:
            try:
                with cluster.hopsworks_client(quick=True) as client:
                    report = client.check_connection()
            except (HopsworksError, SecretDecryptionError, ValueError) as error:
                self.message_user(request, f"{cluster.name}: {error}", messages.ERROR)
            else:
                self.message_user(
                    request,
                    f"{cluster.name}: connected; Hopsworks has {report.users} users and "
                    f"{report.projects} projects.",
                    messages.SUCCESS,
                )

    def _set_status(self, request, queryset, status, title, message):
        def apply(_data):
            changed = sum(
                services.cluster_set_status(cluster=c, status=status, actor=request.user)
                for c in queryset
            )
            self.message_user(request, f"{changed} cluster(s) now {status}.", messages.SUCCESS)

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


class PlacementFilter(admin.SimpleListFilter):
    title = "placement"
    parameter_name = "placement"

    def lookups(self, request, model_admin):
        return (
            ("assigned", "On a cluster"),
            ("waiting", "Waiting for capacity"),
            ("billing", "Waiting for billing setup"),
            ("pending", "Hopsworks account pending"),
            ("none", "Not placed"),
        )

    def queryset(self, request, queryset):
        value = self.value()
        if value == "assigned":
            return queryset.filter(hopsworks_assignment__isnull=False)
        if value == "waiting":
            return queryset.filter(capacity_wait__reason=CapacityWait.Reason.NO_CAPACITY)
        if value == "billing":
            return queryset.filter(capacity_wait__reason=CapacityWait.Reason.BILLING)
        if value == "pending":
            return queryset.filter(pk__in=HopsworksAccount.objects.pending().values("user_id"))
        if value == "none":
            return queryset.filter(hopsworks_assignment__isnull=True, capacity_wait__isnull=True)
        return queryset


PLACEMENT_SECTION = ("Cluster", {"fields": ("placement",)})


class UserPlacementAdminMixin:
    """The users admin's placement part: where each user is, and the actions to change it.
    Its columns, filter and section are named; console/admin.py puts them in place."""

    placement_select_related = ("hopsworks_assignment__hopsworks_cluster", "capacity_wait")
    placement_filters = (
        PlacementFilter,
        ("hopsworks_assignment__hopsworks_cluster", admin.RelatedOnlyFieldListFilter),
    )
    placement_actions = ("auto_assign", "assign_to_cluster", "move_to_cluster", "unassign")

    @admin.display(description="cluster", ordering="hopsworks_assignment__hopsworks_cluster__name")
    def cluster(self, obj):
        assignment = getattr(obj, "hopsworks_assignment", None)
        if assignment is not None:
            return assignment.hopsworks_cluster.name
        if getattr(obj, "capacity_wait", None) is not None:
            return obj.capacity_wait.get_reason_display().lower()
        return "-"

    @admin.display(description="placement")
    def placement(self, obj):
        state = selectors.placement_of(obj)
        lines = [state.summary]
        for account in state.accounts:
            lines.append(
                f"Account on {account.cluster.name}: wanted {account.desired}, "
                f"is {account.synced}"
                + (f" (last error: {account.last_error})" if account.last_error else "")
            )
        return format_html_join("", "<div>{}</div>", ((line,) for line in lines))

    def _placement_action(self, request, queryset, *, title, message, label, run, form=None):
        def apply(data):
            done = 0
            for user in queryset:
                try:
                    outcome = run(user, data)
                except services.PlacementError as error:
                    self.message_user(request, f"{user.email}: {error}", messages.ERROR)
                    continue
                done += 1
                self.log_change(request, user, outcome)
                self.message_user(request, f"{user.email}: {outcome}", messages.INFO)
            self.message_user(request, f"{done} user(s) done.", messages.SUCCESS)

        return confirm_then(
            self,
            request,
            queryset,
            title=title,
            message=message,
            confirm_label=label,
            apply=apply,
            form_class=form,
        )

    @admin.action(description="Assign to a cluster with room (auto)", permissions=["change"])
    def auto_assign(self, request, queryset):
        def run(user, data):
            placement = services.assignment_place(user=user, actor=request.user, gated=False)
            where = f" on {placement.cluster.name}" if placement.cluster else ""
            return f"{placement.outcome}{where}"

        return self._placement_action(
            request,
            queryset,
            title="Assign users",
            message="Each user goes to the active cluster with the fewest users that has room, "
            "or waits for capacity. (By hand: the billing gate does not apply.)",
            label="Yes, assign them",
            run=run,
        )

    @admin.action(description="Assign to a chosen cluster", permissions=["change"])
    def assign_to_cluster(self, request, queryset):
        def run(user, data):
            services.assignment_create(user=user, cluster=data["cluster"], actor=request.user)
            return f"assigned to {data['cluster'].name}"

        return self._placement_action(
            request,
            queryset,
            title="Assign users to a cluster",
            message="Users not yet on a cluster are assigned to the chosen one.",
            label="Yes, assign them",
            run=run,
            form=ClusterChoiceForm,
        )

    @admin.action(description="Move to another cluster", permissions=["change"])
    def move_to_cluster(self, request, queryset):
        def run(user, data):
            services.assignment_move(user=user, to_cluster=data["cluster"], actor=request.user)
            return f"moved to {data['cluster'].name}"

        return self._placement_action(
            request,
            queryset,
            title="Move users",
            message="Each user moves to the chosen cluster: an account is created for them "
            "there and their account on the old cluster is deactivated.",
            label="Yes, move them",
            run=run,
            form=ClusterChoiceForm,
        )

    @admin.action(description="Unassign from their cluster", permissions=["change"])
    def unassign(self, request, queryset):
        def run(user, data):
            services.assignment_unassign(user=user, actor=request.user)
            return "unassigned"

        return self._placement_action(
            request,
            queryset,
            title="Unassign users",
            message="These users leave their cluster; their Hopsworks account there is "
            "deactivated and their slot goes to the next user waiting.",
            label="Yes, unassign them",
            run=run,
        )


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
        for user in users:
            report = hopsworks_accounts_sync(user=user)
            synced += report.synced
            failed += report.failed
            for error in report.errors:
                self.message_user(request, error, messages.ERROR)
        self.message_user(request, f"{synced} account(s) synced, {failed} failed.")
