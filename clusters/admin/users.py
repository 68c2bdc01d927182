"""The users admin's placement part."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Exists, OuterRef
from django.utils.html import format_html_join

from clusters import selectors, services
from clusters.admin import user_facts
from clusters.forms import ClusterChoiceForm
from clusters.models import CapacityWait, HopsworksAccount, UserHopsworksAssignment
from plumbing.admin_confirm import confirm_then
from plumbing.admin_report import ActionReport

ACCOUNT_PENDING = "Hopsworks account pending (sync queued)"
# Up to this many users not placed are listed by their ids (see PlacementFilter).
UNPLACED_BY_ID = 1000


def _on_cluster(user, cluster) -> bool:
    assignment = selectors.assignment_of(user)
    return assignment is not None and assignment.hopsworks_cluster_id == cluster.pk


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
            # The pending accounts first (few: what a sync has yet to do), then those users
            # by primary key. As one semi-join the planner cannot tell how few match
            # (`desired <> synced` compares two columns) and plans for every user.
            pending = HopsworksAccount.objects.pending().values_list("user_id", flat=True)
            return queryset.filter(pk__in=list(pending.order_by().distinct()))
        if value == "none":
            # Two anti-joins on the users' ids (left-joining every user's assignment row and
            # keeping the NULLs hashed all of them: 100,000 rows for no user at full size),
            # run once: the few users they find are then read by primary key, by the page's
            # count and by its rows alike (each ran the anti-joins again: 60 ms apiece).
            mine = OuterRef("pk")
            unplaced = queryset.model.objects.filter(
                ~Exists(UserHopsworksAssignment.objects.filter(user=mine)),
                ~Exists(CapacityWait.objects.filter(user=mine)),
            ).values_list("pk", flat=True)
            found = list(unplaced[: UNPLACED_BY_ID + 1])
            if len(found) > UNPLACED_BY_ID:  # many (a cluster gone): as one semi-join
                return queryset.filter(pk__in=unplaced)
            return queryset.filter(pk__in=found)
        return queryset


PLACEMENT_SECTION = ("Cluster", {"fields": ("placement",)})


class UserPlacementAdminMixin:
    """The users admin's placement part: where each user is, and the actions to change it.
    Its columns, filter and section are named; console/admin.py puts them in place."""

    placement_select_related = ("hopsworks_assignment__hopsworks_cluster", "capacity_wait")
    placement_filters = (
        PlacementFilter,
        # Every cluster (a few rows), not only those with users: "related only" reads
        # every user's assignment for the distinct clusters on each request.
        ("hopsworks_assignment__hopsworks_cluster", admin.RelatedFieldListFilter),
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
        state = user_facts.placement(obj)
        lines = [state.summary]
        for account in state.accounts:
            lines.append(
                f"Account on {account.cluster.name}: wanted {account.desired}, "
                f"is {account.synced}"
                + (f" (last error: {account.last_error})" if account.last_error else "")
            )
        return format_html_join("", "<div>{}</div>", ((line,) for line in lines))

    def _placement_action(self, request, queryset, *, title, message, label, run, form=None):
        """`run(user, data, report)` changes one user and says what became of them in
        `report`; a PlacementError is reported as not done, with its reason."""

        def apply(data):
            report = ActionReport("user")
            report.watch_jobs("clusters.sync_user_accounts")
            for user in queryset:
                try:
                    outcome = run(user, data, report)
                except services.PlacementError as error:
                    report.not_done(user.email, error)
                    continue
                if outcome:
                    self.log_change(request, user, outcome)
            report.send(self, request)

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

    # Placing is writing assignments: the same permissions the API's assignments:write
    # maps to (accounts.api.SCOPE_PERMISSIONS), one per kind of change.
    def has_assign_permission(self, request):
        return request.user.has_perm("clusters.add_userhopsworksassignment")

    def has_move_permission(self, request):
        return request.user.has_perm("clusters.change_userhopsworksassignment")

    def has_unassign_permission(self, request):
        return request.user.has_perm("clusters.delete_userhopsworksassignment")

    @admin.action(description="Assign to a cluster with room (auto)", permissions=["assign"])
    def auto_assign(self, request, queryset):
        def run(user, data, report):
            placement = services.assignment_place(user=user, actor=request.user, gated=False)
            outcomes = services.Placement.Outcome
            if placement.outcome == outcomes.NOT_ACTIVE:
                raise services.UserNotActive(placement.detail)  # reported as not done
            where = f" on {placement.cluster.name}" if placement.cluster else ""
            if placement.outcome == outcomes.ALREADY_ASSIGNED:
                report.unchanged(user.email, f"already on {placement.cluster.name}")
                return None
            if placement.outcome == outcomes.WAITING:
                report.not_done(user.email, "no active cluster has room; they wait for capacity")
                return "waiting for capacity"
            outcome = f"{placement.outcome}{where}"
            report.queued(user.email, f"{outcome}; {ACCOUNT_PENDING}")
            return outcome

        return self._placement_action(
            request,
            queryset,
            title="Assign users",
            message="Each user goes to the active cluster with the fewest users that has room, "
            "or waits for capacity. (By hand: the billing gate does not apply.)",
            label="Yes, assign them",
            run=run,
        )

    @admin.action(description="Assign to a chosen cluster", permissions=["assign"])
    def assign_to_cluster(self, request, queryset):
        def run(user, data, report):
            cluster = data["cluster"]
            if _on_cluster(user, cluster):
                report.unchanged(user.email, f"already on {cluster.name}")
                return None
            services.assignment_create(user=user, cluster=cluster, actor=request.user)
            report.queued(user.email, f"assigned to {cluster.name}; {ACCOUNT_PENDING}")
            return f"assigned to {cluster.name}"

        return self._placement_action(
            request,
            queryset,
            title="Assign users to a cluster",
            message="Users not yet on a cluster are assigned to the chosen one.",
            label="Yes, assign them",
            run=run,
            form=ClusterChoiceForm,
        )

    @admin.action(description="Move to another cluster", permissions=["move"])
    def move_to_cluster(self, request, queryset):
        def run(user, data, report):
            cluster = data["cluster"]
            if _on_cluster(user, cluster):
                report.unchanged(user.email, f"already on {cluster.name}")
                return None
            services.assignment_move(user=user, to_cluster=cluster, actor=request.user)
            # Done in our database; Hopsworks follows when the queued sync succeeds.
            report.queued(user.email, f"moved to {cluster.name}; {ACCOUNT_PENDING}")
            return f"moved to {cluster.name}"

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

    @admin.action(description="Unassign from their cluster", permissions=["unassign"])
    def unassign(self, request, queryset):
        def run(user, data, report):
            services.assignment_unassign(user=user, actor=request.user)
            report.queued(user.email, "unassigned; Hopsworks account deactivation queued")
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
