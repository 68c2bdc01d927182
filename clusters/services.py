"""Placing users on clusters: every write to capacity and assignments.

Capacity rule: a cluster's `current_users` moves only together with the assignment it
counts, in one transaction. Taking a slot is a single conditional UPDATE
(`... SET current_users = current_users + 1 WHERE current_users < max_users AND status =
'active'`): PostgreSQL row-locks the cluster and re-checks the condition after any
concurrent update commits, so `max_users` holds however many users sign up at once.
Changes that touch two clusters lock both rows in primary-key order.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.db.models import Count, F, Func, Value
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.module_loading import import_string

from accounts.models import User
from clusters.hopsworks import normalize_api_url, validate_api_key, validate_api_url
from clusters.kubeconfig import KubeconfigError, validate_kubeconfig
from clusters.models import (
    CapacityWait,
    ClusterFillDaily,
    HopsworksAccount,
    HopsworksCluster,
    max_users_problem,
)
from clusters.models import UserHopsworksAssignment as Assignment
from clusters.selectors import assignment_of
from plumbing.actors import actor_label
from plumbing.jobs import defer

logger = logging.getLogger(__name__)


class PlacementError(Exception):
    """A placement that cannot be done; the message says why and what to do."""


class NoCapacity(PlacementError):
    pass


class ClusterNotAccepting(PlacementError):
    pass


class AlreadyAssigned(PlacementError):
    pass


class NotAssigned(PlacementError):
    pass


class UserNotActive(PlacementError):
    pass


@dataclass(frozen=True)
class Placement:
    class Outcome(models.TextChoices):
        ASSIGNED = "assigned"
        ALREADY_ASSIGNED = "already assigned"
        WAITING = "waiting for capacity"
        WAITING_FOR_BILLING = "waiting for billing setup"
        NOT_ACTIVE = "not placed: the user is not active"

    outcome: Outcome
    assignment: Assignment | None = None
    detail: str = ""  # why, when the user was not placed

    @property
    def cluster(self) -> HopsworksCluster | None:
        return self.assignment.hopsworks_cluster if self.assignment else None


def _take_slot(cluster_id) -> bool:
    return bool(
        HopsworksCluster.objects.filter(
            pk=cluster_id,
            status=HopsworksCluster.Status.ACTIVE,
            current_users__lt=F("max_users"),
        ).update(current_users=F("current_users") + 1)
    )


def _free_slot(cluster_id) -> None:
    HopsworksCluster.objects.filter(pk=cluster_id).update(current_users=F("current_users") - 1)


def _want_account(*, user: User, cluster_id, desired: str) -> None:
    """Record what the user's account on a cluster should be; the sync makes it so."""
    account, created = HopsworksAccount.objects.get_or_create(
        user=user, cluster_id=cluster_id, defaults={"desired": desired}
    )
    if not created and account.desired != desired:
        HopsworksAccount.objects.filter(pk=account.pk).update(
            desired=desired, attempts=0, last_error=""
        )


def accounts_sync_queue(user: User) -> None:
    """Queue the job that makes Hopsworks match the user's accounts, in this transaction
    (rolled back, nothing is queued). No outside call happens in the caller's request."""
    from clusters import tasks

    defer(tasks.sync_user_accounts, queueing_lock=f"accounts:{user.pk}", user_id=user.pk)


def place_waiting_queue() -> None:
    """Queue placing the users who wait for capacity (room appeared in this transaction)."""
    from clusters import tasks

    defer(tasks.place_waiting_users, queueing_lock="place-waiting")


def _not_active(user: User, status: str) -> UserNotActive:
    return UserNotActive(
        f"{user.email} is {status}: only active users are placed automatically. Reactivate "
        "them first, or assign them to a chosen cluster."
    )


def _place(*, user: User, cluster_id, actor, only_if_active: bool = False) -> Assignment | None:
    """Take a slot on the cluster and assign the user there, or None if it has no room.

    The user's status is read under their row lock (user_set_status takes the same lock),
    so a suspension at the same moment is seen: with `only_if_active` a user who is not
    active raises UserNotActive; otherwise their account there is wanted deactivated.
    """
    with transaction.atomic():
        status = User.objects.select_for_update().values_list("status", flat=True).get(pk=user.pk)
        active = status == User.Status.ACTIVE
        if only_if_active and not active:
            raise _not_active(user, status)
        if not _take_slot(cluster_id):
            return None
        assignment = Assignment.objects.create(user=user, hopsworks_cluster_id=cluster_id)
        CapacityWait.objects.filter(user=user).delete()
        _want_account(user=user, cluster_id=cluster_id, desired=_wanted_state(status, user))
        accounts_sync_queue(user)
    logger.info("user %s assigned to cluster %s by %s", user.pk, cluster_id, actor_label(actor))
    return assignment


def placement_blocker(user: User) -> str | None:
    """Why automatic placement must wait for this user (the billing gate), or None.

    The rule lives in the billing app; settings name it (PLACEMENT_GATE), so this app
    asks without importing billing.
    """
    gate = getattr(settings, "PLACEMENT_GATE", "")
    return import_string(gate)(user) if gate else None


def access_blocker(user: User) -> str | None:
    """Why the user's Hopsworks account must stay deactivated although they are active and
    assigned (a billing stop), or None. Billing answers (ACCOUNT_ACCESS_GATE)."""
    gate = getattr(settings, "ACCOUNT_ACCESS_GATE", "")
    return import_string(gate)(user) if gate else None


def _wanted_state(user_status: str, user: User) -> str:
    """What the account on the user's own cluster should be."""
    if user_status == User.Status.ACTIVE and access_blocker(user) is None:
        return HopsworksAccount.State.ACTIVE
    return HopsworksAccount.State.DEACTIVATED


def accounts_refresh(*, user: User) -> bool:
    """Make what we want of the user's Hopsworks accounts follow who they are now: on their
    cluster, active while the user is active and no billing stop is in force; anywhere
    else, deactivated. Queues the sync if anything changed (returns True). Call it inside
    the transaction of the change (a stop, a resume, a status change); the cluster is
    called after commit, by the job."""
    accounts = HopsworksAccount.objects.filter(user=user)
    with transaction.atomic():
        status = User.objects.select_for_update().values_list("status", flat=True).get(pk=user.pk)
        before = dict(accounts.values_list("cluster_id", "desired"))
        assigned_to = (
            Assignment.objects.filter(user=user)
            .values_list("hopsworks_cluster_id", flat=True)
            .first()
        )
        if assigned_to is not None:
            _want_account(user=user, cluster_id=assigned_to, desired=_wanted_state(status, user))
        accounts.exclude(cluster_id=assigned_to).exclude(
            desired=HopsworksAccount.State.DEACTIVATED
        ).update(desired=HopsworksAccount.State.DEACTIVATED, attempts=0, last_error="")
        changed = dict(accounts.values_list("cluster_id", "desired")) != before
        if changed:
            accounts_sync_queue(user)
    return changed


def _wait(user: User, reason: str, detail: str = "") -> None:
    now = timezone.now()
    wait, created = CapacityWait.objects.get_or_create(
        user=user, defaults={"reason": reason, "detail": detail}
    )
    if not created:
        CapacityWait.objects.filter(pk=wait.pk).update(
            reason=reason, detail=detail, attempts=F("attempts") + 1, last_attempt_at=now
        )
    logger.info("user %s waits: %s", user.pk, reason)


def assignment_place(*, user: User, actor=None, gated: bool = True) -> Placement:
    """Place the user on the active cluster with the fewest users that has room.

    A suspended or deleted user is never placed this way (NOT_ACTIVE, with the reason in
    `detail`). With `gated` (every automatic placement), a user whose billing is not set
    up waits for it. Without room anywhere the user waits for capacity, first come first
    served, and is placed by `capacity_place_waiting` when a slot appears. Operators
    placing a user by hand pass gated=False.
    """
    existing = assignment_of(user)
    if existing is not None:
        return Placement(Placement.Outcome.ALREADY_ASSIGNED, existing)
    status = User.objects.filter(pk=user.pk).values_list("status", flat=True).first()
    if status != User.Status.ACTIVE:  # read again, under the lock, when a slot is taken
        return Placement(Placement.Outcome.NOT_ACTIVE, detail=str(_not_active(user, status)))
    if gated:
        blocker = placement_blocker(user)
        if blocker:
            _wait(user, CapacityWait.Reason.BILLING, blocker)
            return Placement(Placement.Outcome.WAITING_FOR_BILLING)

    candidates = (
        HopsworksCluster.objects.filter(
            status=HopsworksCluster.Status.ACTIVE, current_users__lt=F("max_users")
        )
        .order_by("current_users", "name")
        .values_list("pk", flat=True)
    )
    for cluster_id in candidates:
        try:
            assignment = _place(user=user, cluster_id=cluster_id, actor=actor, only_if_active=True)
        except IntegrityError:  # placed by a concurrent request for the same user
            return Placement(Placement.Outcome.ALREADY_ASSIGNED, assignment_of(user))
        except UserNotActive as error:  # suspended while we looked for a cluster
            return Placement(Placement.Outcome.NOT_ACTIVE, detail=str(error))
        if assignment is not None:
            return Placement(Placement.Outcome.ASSIGNED, assignment_of(user))

    _wait(user, CapacityWait.Reason.NO_CAPACITY)
    return Placement(Placement.Outcome.WAITING)


def assignment_create(*, user: User, cluster: HopsworksCluster, actor) -> Assignment:
    """An operator places a user on a given cluster (capacity and status still apply)."""
    existing = assignment_of(user)
    if existing is not None:
        if existing.hopsworks_cluster_id == cluster.pk:
            return existing
        raise AlreadyAssigned(
            f"{user.email} is already on {existing.hopsworks_cluster.name}; move them instead."
        )
    try:
        assignment = _place(user=user, cluster_id=cluster.pk, actor=actor)
    except IntegrityError:
        raise AlreadyAssigned(f"{user.email} was just assigned by someone else.") from None
    if assignment is None:
        raise _why_not_accepting(cluster)
    return assignment_of(user)


def _why_not_accepting(cluster: HopsworksCluster) -> PlacementError:
    cluster.refresh_from_db(fields=["status", "current_users", "max_users"])
    if cluster.status != HopsworksCluster.Status.ACTIVE:
        return ClusterNotAccepting(
            f"Cluster {cluster.name} is {cluster.status}; only active clusters take new users."
        )
    return NoCapacity(
        f"Cluster {cluster.name} is full ({cluster.current_users} of {cluster.max_users} "
        "users). Raise its max users or choose another cluster."
    )


def assignment_move(*, user: User, to_cluster: HopsworksCluster, actor) -> Assignment:
    """Move a user to another cluster in one transaction; their Hopsworks account follows
    (created on the new cluster, deactivated on the old one, by the sync after commit)."""
    with transaction.atomic():
        current = Assignment.objects.select_for_update().filter(user=user).first()
        if current is None:
            raise NotAssigned(f"{user.email} is not on any cluster; assign them instead.")
        from_id = current.hopsworks_cluster_id
        if from_id == to_cluster.pk:
            return assignment_of(user)
        locked = {
            cluster.pk: cluster
            for cluster in HopsworksCluster.objects.select_for_update()
            .filter(pk__in=[from_id, to_cluster.pk])
            .order_by("pk")
        }
        target = locked[to_cluster.pk]
        if target.status != HopsworksCluster.Status.ACTIVE:
            raise ClusterNotAccepting(
                f"Cluster {target.name} is {target.status}; only active clusters take users."
            )
        if target.current_users >= target.max_users:
            raise NoCapacity(
                f"Cluster {target.name} is full ({target.current_users} of "
                f"{target.max_users} users)."
            )
        _free_slot(from_id)
        HopsworksCluster.objects.filter(pk=target.pk).update(current_users=F("current_users") + 1)
        current.delete()
        Assignment.objects.create(user=user, hopsworks_cluster=target)
        User.objects.filter(pk=user.pk).update(hopsworks_username=None)
        _want_account(user=user, cluster_id=from_id, desired=HopsworksAccount.State.DEACTIVATED)
        status = User.objects.values_list("status", flat=True).get(pk=user.pk)
        _want_account(user=user, cluster_id=target.pk, desired=_wanted_state(status, user))
        accounts_sync_queue(user)
        place_waiting_queue()
    logger.info(
        "user %s moved from %s to %s by %s", user.pk, from_id, to_cluster.pk, actor_label(actor)
    )
    return assignment_of(user)


def assignment_set(*, user: User, cluster: HopsworksCluster, actor) -> Assignment:
    """Put the user on this cluster: assign them, or move them if they are elsewhere."""
    if assignment_of(user) is None:
        return assignment_create(user=user, cluster=cluster, actor=actor)
    return assignment_move(user=user, to_cluster=cluster, actor=actor)


def assignment_unassign(*, user: User, actor) -> None:
    """Take a user off their cluster; their Hopsworks account there is deactivated."""
    with transaction.atomic():
        current = Assignment.objects.select_for_update().filter(user=user).first()
        if current is None:
            raise NotAssigned(f"{user.email} is not on any cluster.")
        cluster_id = current.hopsworks_cluster_id  # delete() clears a composite pk
        HopsworksCluster.objects.select_for_update().filter(pk=cluster_id).get()
        _free_slot(cluster_id)
        current.delete()
        User.objects.filter(pk=user.pk).update(hopsworks_username=None)
        _want_account(user=user, cluster_id=cluster_id, desired=HopsworksAccount.State.DEACTIVATED)
        accounts_sync_queue(user)
        place_waiting_queue()
    logger.info("user %s unassigned from %s by %s", user.pk, cluster_id, actor_label(actor))


def capacity_place_waiting() -> int:
    """Place waiting users, first come first served, while any cluster has room (users
    still waiting for billing stay in line)."""
    placed = 0
    waiting = CapacityWait.objects.select_related("user").filter(user__status=User.Status.ACTIVE)
    for wait in waiting.order_by("since", "user_id"):
        result = assignment_place(user=wait.user)
        if result.outcome == Placement.Outcome.WAITING:
            break
        placed += result.outcome == Placement.Outcome.ASSIGNED
    if placed:
        logger.info("%s waiting user(s) placed", placed)
    return placed


class ClusterValidationError(Exception):
    """A cluster change that would break an invariant; names the field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


_EDITABLE = {"name", "api_url", "api_key", "max_users", "status", "kubeconfig", "ca_bundle"}
KEY_AGAIN = (
    "The cluster's address (its URL or CA bundle) changed: enter the API key again. A stored "
    "key is only ever sent to the address it was entered for."
)


def _same_address(stored: str | None, new: str | None) -> bool:
    return (stored or "").strip().rstrip("/") == (new or "").strip().rstrip("/")


NOT_TESTED = (
    'Test the connection first (the action "Test the connection to Hopsworks"): a cluster '
    "takes users only once it has answered with its API key."
)
URL_KEY = Lower(Func(F("api_url"), Value("/"), function="RTRIM", output_field=models.TextField()))


def cluster_using_url(url: str, *, other_than=None) -> HopsworksCluster | None:
    """The cluster that already has this address (normalized), other than `other_than`."""
    key = normalize_api_url(url).lower()
    clusters = HopsworksCluster.objects.alias(url_key=URL_KEY).filter(url_key=key)
    if other_than is not None:
        clusters = clusters.exclude(pk=other_than)
    return clusters.first()


def url_taken_message(cluster: HopsworksCluster) -> str:
    return (
        f"This URL is already used by cluster {cluster.name}: each cluster has its own "
        "address. Edit that cluster instead, or check the URL."
    )


def cluster_address_changes(cluster: HopsworksCluster, changes: dict) -> bool:
    """Whether `changes` give an existing cluster a new address (URL or CA bundle), which
    needs the API key entered again."""
    if cluster._state.adding:
        return False
    return any(
        field in changes and not _same_address(getattr(cluster, field), changes[field])
        for field in ("api_url", "ca_bundle")
    )


def _check_destinations(cluster: HopsworksCluster, changes: dict) -> None:
    """A new URL or kubeconfig server must pass the outbound rule (resolving its host);
    connections check again, since DNS answers change. An unchanged URL is not looked up
    again here, so a DNS hiccup does not block an unrelated edit."""
    if "api_url" in changes:
        new_url = cluster._state.adding or not _same_address(cluster.api_url, changes["api_url"])
        problem = validate_api_url(changes["api_url"], resolve=new_url)
        if problem:
            raise ClusterValidationError("api_url", problem)
    if changes.get("kubeconfig"):
        try:
            validate_kubeconfig(changes["kubeconfig"])
        except KubeconfigError as error:
            raise ClusterValidationError("kubeconfig", str(error)) from None


def cluster_save(*, cluster: HopsworksCluster, changes: dict, actor) -> HopsworksCluster:
    """Create (unsaved `cluster`) or update a cluster. `max_users` may not go below the users
    already assigned (checked under the cluster's row lock). New room places waiting users.

    A new address (`api_url` or `ca_bundle`) needs the API key in the same change: the stored
    key is never sent anywhere but where it was entered for (whoever may edit the URL could
    otherwise send it to any host). URLs and kubeconfig servers must pass the outbound rule.
    """
    unknown = set(changes) - _EDITABLE
    if unknown:
        raise ValueError(f"Not editable here: {', '.join(sorted(unknown))}")
    changes = dict(changes)
    if "api_url" in changes:
        changes["api_url"] = normalize_api_url(changes["api_url"] or "")
    if "api_key" in changes:
        problem = validate_api_key(changes["api_key"])
        if problem:
            raise ClusterValidationError("api_key", problem)
    _check_destinations(cluster, changes)  # before the row lock: it may wait for DNS
    creating = cluster._state.adding
    with transaction.atomic():
        if creating:
            locked = cluster
            # A new cluster takes users only once its connection test has passed.
            if changes.get("status", locked.status) == HopsworksCluster.Status.ACTIVE:
                changes["status"] = HopsworksCluster.Status.MAINTENANCE
        else:
            locked = HopsworksCluster.objects.select_for_update().get(pk=cluster.pk)
            if cluster_address_changes(locked, changes):
                if not changes.get("api_key"):
                    raise ClusterValidationError("api_key", KEY_AGAIN)
                locked.connection_ok_at = None  # a new address is tested again
            if (
                changes.get("status") == HopsworksCluster.Status.ACTIVE
                and locked.status != HopsworksCluster.Status.ACTIVE
                and locked.connection_ok_at is None
            ):
                raise ClusterValidationError("status", NOT_TESTED)
        for field, value in changes.items():
            setattr(locked, field, value)
        assigned = 0 if creating else locked.assignments.count()
        problem = max_users_problem(locked.max_users, assigned=assigned)
        if problem:
            raise ClusterValidationError("max_users", problem)
        _save_with_unique_url(locked)
        if locked.status == HopsworksCluster.Status.ACTIVE and locked.free_slots:
            place_waiting_queue()
    logger.info(
        "cluster %s %s by %s (%s)",
        locked.name,
        "created" if creating else "updated",
        actor_label(actor),
        ", ".join(sorted(changes)),
    )
    return locked


def _save_with_unique_url(cluster: HopsworksCluster) -> None:
    """Save, refusing an address another cluster has. The unique index decides between
    two saves at the same moment: the second waits for the first and is refused."""
    taken = cluster_using_url(cluster.api_url, other_than=cluster.pk)
    if taken is not None:
        raise ClusterValidationError("api_url", url_taken_message(taken))
    try:
        with transaction.atomic():
            cluster.save()
    except IntegrityError as error:
        if "hopsworks_clusters_api_url_unique" not in str(error):
            raise
        taken = cluster_using_url(cluster.api_url, other_than=cluster.pk)
        raise ClusterValidationError(
            "api_url",
            url_taken_message(taken) if taken else "Another cluster already uses this API URL.",
        ) from None


def cluster_connection_passed(*, cluster: HopsworksCluster, actor) -> bool:
    """Record that the cluster answered its connection test. A cluster never tested before
    that waits in maintenance (every new one) becomes active and takes users: returns
    True then. One an operator put in maintenance after it was tested stays there."""
    with transaction.atomic():
        locked = HopsworksCluster.objects.select_for_update().get(pk=cluster.pk)
        first = locked.connection_ok_at is None
        activate = first and locked.status == HopsworksCluster.Status.MAINTENANCE
        locked.connection_ok_at = timezone.now()
        fields = ["connection_ok_at"]
        if activate:
            locked.status = HopsworksCluster.Status.ACTIVE
            fields.append("status")
        locked.save(update_fields=fields)
        if activate and locked.free_slots:
            place_waiting_queue()
    cluster.connection_ok_at, cluster.status = locked.connection_ok_at, locked.status
    if activate:
        logger.info(
            "cluster %s active after its first connection test by %s",
            locked.name,
            actor_label(actor),
        )
    return activate


def cluster_set_status(*, cluster: HopsworksCluster, status: str, actor) -> bool:
    if status not in HopsworksCluster.Status.values:
        raise ValueError(f"Unknown cluster status {status!r}.")
    if cluster.status == status:
        return False
    cluster_save(cluster=cluster, changes={"status": status}, actor=actor)
    cluster.status = status
    return True


@dataclass(frozen=True)
class CountDrift:
    cluster: HopsworksCluster
    recorded: int
    assigned: int


def cluster_counts_check(*, fix: bool = False, actor=None) -> list[CountDrift]:
    """Compare each cluster's `current_users` with its assignments; with fix, repair it
    (raising `max_users` where more users are assigned than it allows)."""
    drifts = [
        CountDrift(cluster, cluster.current_users, cluster.assigned)
        for cluster in HopsworksCluster.objects.annotate(assigned=Count("assignments"))
        if cluster.current_users != cluster.assigned
    ]
    if fix:
        for drift in drifts:
            with transaction.atomic():
                locked = HopsworksCluster.objects.select_for_update().get(pk=drift.cluster.pk)
                assigned = locked.assignments.count()
                HopsworksCluster.objects.filter(pk=locked.pk).update(
                    current_users=assigned, max_users=max(locked.max_users, assigned)
                )
            logger.warning(
                "cluster %s current_users repaired %s -> %s by %s",
                locked.name,
                drift.recorded,
                assigned,
                actor_label(actor),
            )
        if drifts:
            capacity_place_waiting()
    return drifts


def cluster_fill_record(*, now=None) -> int:
    """Record each cluster's users (its assignments, counted) and max users as the reading
    of the day of `now` (UTC), replacing an earlier reading of that day. Idempotent; two
    queries whatever the number of clusters. Returns the users counted."""
    now = now or timezone.now()
    day = now.astimezone(dt.UTC).date()
    readings = [
        ClusterFillDaily(
            cluster_id=cluster.pk,
            date=day,
            users=cluster.assigned,
            max_users=cluster.max_users,
            recorded_at=now,
        )
        for cluster in HopsworksCluster.objects.annotate(assigned=Count("assignments"))
    ]
    ClusterFillDaily.objects.bulk_create(
        readings,
        update_conflicts=True,
        unique_fields=["cluster", "date"],
        update_fields=["users", "max_users", "recorded_at"],
    )
    return sum(reading.users for reading in readings)
