"""Reads about clusters and placements, shared by the admin, the user's page and the API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from django.db.models import Count, IntegerField, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce

from accounts.models import User
from clusters.models import (
    CapacityWait,
    ClusterFillDaily,
    HopsworksAccount,
    HopsworksCluster,
    UserHopsworksAssignment,
)


def assignment_of(user: User) -> UserHopsworksAssignment | None:
    return (
        UserHopsworksAssignment.objects.select_related("hopsworks_cluster")
        .filter(user=user)
        .first()
    )


def cluster_by_name_or_id(value: str) -> HopsworksCluster | None:
    """A cluster named `value`, or whose id it is."""
    cluster = HopsworksCluster.objects.filter(name=value).first()
    if cluster is not None:
        return cluster
    try:
        cluster_id = uuid.UUID(str(value))
    except ValueError:
        return None
    return HopsworksCluster.objects.filter(pk=cluster_id).first()


def cluster_ids_by_name_or_id(values) -> dict[str, uuid.UUID]:
    """`cluster_by_name_or_id` for many values in one query: value -> cluster id, for the
    values that name a cluster (a name wins over an id, as there)."""
    values = {str(v) for v in values if v}
    as_ids = {value: _as_uuid(value) for value in values}
    found = HopsworksCluster.objects.filter(
        Q(name__in=values) | Q(pk__in={i for i in as_ids.values() if i})
    ).values_list("pk", "name")
    by_name = {name: pk for pk, name in found}
    ids = {pk for pk, _ in found}
    resolved = {}
    for value in values:
        if value in by_name:
            resolved[value] = by_name[value]
        elif as_ids[value] in ids:
            resolved[value] = as_ids[value]
    return resolved


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def pending_accounts_on(cluster: HopsworksCluster):
    return (
        HopsworksAccount.objects.pending()
        .filter(cluster=cluster)
        .select_related("user")
        .order_by("updated_at")
    )


def count_of(rows, cluster_field):
    """How many `rows` (correlated on `cluster_field` with OuterRef) as an integer: one
    counting subquery per cluster, read through the relation's cluster index, instead of a
    join of every row grouped per cluster (or, with two relations, multiplied)."""
    counted = rows.order_by().values(cluster_field).annotate(n=Count("*")).values("n")
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


def cluster_utilization():
    """The seed's "Cluster utilization": each cluster with its assigned-user count."""
    return HopsworksCluster.objects.annotate(
        assigned_users=count_of(
            UserHopsworksAssignment.objects.filter(hopsworks_cluster=OuterRef("pk")),
            "hopsworks_cluster",
        )
    ).order_by("name")


@dataclass
class PlacementState:
    summary: str
    assignment: UserHopsworksAssignment | None = None
    waiting: CapacityWait | None = None
    accounts: list[HopsworksAccount] = field(default_factory=list)

    @property
    def account_pending(self) -> bool:
        return any(a.pending for a in self.accounts)


def placement_of(user: User) -> PlacementState:
    """Where the user is, or why they are not placed, for operators and the user."""
    assignment = assignment_of(user)
    accounts = [
        a
        for a in HopsworksAccount.objects.filter(user=user).select_related("cluster")
        if assignment is None or a.cluster_id == assignment.hopsworks_cluster_id or a.pending
    ]
    if assignment is not None:
        cluster = assignment.hopsworks_cluster
        username = assignment.hopsworks_username or "account being created"
        return PlacementState(
            f"On {cluster.name} ({username}) since {assignment.assigned_at:%Y-%m-%d}",
            assignment=assignment,
            accounts=accounts,
        )
    waiting = CapacityWait.objects.filter(user=user).first()
    if waiting is not None:
        detail = f": {waiting.detail}" if waiting.detail else ""
        return PlacementState(
            f"{waiting.get_reason_display()} since {waiting.since:%Y-%m-%d %H:%M} UTC "
            f"({waiting.attempts} attempts){detail}",
            waiting=waiting,
            accounts=accounts,
        )
    return PlacementState("Not placed on a cluster", accounts=accounts)


def user_ids_by_hopsworks_identity(
    cluster: HopsworksCluster,
) -> tuple[dict[str, str], dict[str, str]]:
    """Hopsworks usernames and emails on this cluster -> our user ids."""
    by_username: dict[str, str] = {}
    for user_id, username in HopsworksAccount.objects.filter(
        cluster=cluster, hopsworks_username__isnull=False
    ).values_list("user_id", "hopsworks_username"):
        by_username[username] = user_id
    for user_id, username in UserHopsworksAssignment.objects.filter(
        hopsworks_cluster=cluster
    ).values_list("user_id", "hopsworks_username"):
        if username:
            by_username[username] = user_id
    by_email = dict(
        HopsworksAccount.objects.filter(cluster=cluster).values_list("user__email", "user_id")
    )
    by_email.update(
        UserHopsworksAssignment.objects.filter(hopsworks_cluster=cluster).values_list(
            "user__email", "user_id"
        )
    )
    return by_username, by_email


def cluster_fill_readings(*, since, until):
    """The daily fill readings over [since, until] (clusters.models.ClusterFillDaily): rows
    of cluster_id, date and users, in one query."""
    return ClusterFillDaily.objects.filter(date__gte=since, date__lte=until).values(
        "cluster_id", "date", "users"
    )
