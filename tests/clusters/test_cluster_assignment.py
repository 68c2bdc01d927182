"""Placing users on clusters: capacity, waiting, moves, unassigning, counts."""

import pytest
from django.db import IntegrityError, transaction

from accounts.models import User
from clusters import services
from clusters.models import CapacityWait, HopsworksAccount, HopsworksCluster
from clusters.models import UserHopsworksAssignment as Assignment
from tests.factories import ClusterFactory, UserFactory
from tests.jobs import run_jobs

pytestmark = pytest.mark.django_db


def counts(cluster):
    cluster.refresh_from_db()
    return cluster.current_users, Assignment.objects.filter(hopsworks_cluster=cluster).count()


def test_auto_assign_picks_the_active_cluster_with_the_fewest_users():
    busy = ClusterFactory(name="busy", max_users=10)
    quiet = ClusterFactory(name="quiet", max_users=10)
    ClusterFactory(name="down", status=HopsworksCluster.Status.MAINTENANCE)
    for _ in range(3):
        services.assignment_create(user=UserFactory(), cluster=busy, actor=None)

    placement = services.assignment_place(user=UserFactory())

    assert placement.outcome == services.Placement.Outcome.ASSIGNED
    assert placement.cluster == quiet
    assert counts(quiet) == (1, 1)


def test_a_user_is_assigned_once_however_often_it_is_asked():
    cluster = ClusterFactory()
    user = UserFactory()
    services.assignment_place(user=user)
    again = services.assignment_place(user=user)
    assert again.outcome == services.Placement.Outcome.ALREADY_ASSIGNED
    assert counts(cluster) == (1, 1)


def test_without_room_the_user_waits_and_is_placed_when_a_slot_appears():
    cluster = ClusterFactory(max_users=1)
    first, second = UserFactory(), UserFactory()
    services.assignment_place(user=first)

    placement = services.assignment_place(user=second)

    assert placement.outcome == services.Placement.Outcome.WAITING
    assert CapacityWait.objects.filter(user=second).exists()

    with run_jobs():
        services.assignment_unassign(user=first, actor=None)  # frees the slot

    assert Assignment.objects.get(user=second).hopsworks_cluster == cluster
    assert not CapacityWait.objects.exists()
    assert counts(cluster) == (1, 1)


def test_raising_max_users_places_waiting_users_first_come_first_served():
    cluster = ClusterFactory(max_users=0)
    early, late = UserFactory(), UserFactory()
    services.assignment_place(user=early)
    services.assignment_place(user=late)

    with run_jobs():
        services.cluster_save(cluster=cluster, changes={"max_users": 1}, actor=None)

    assert Assignment.objects.get().user == early
    assert CapacityWait.objects.get().user == late


def test_assigning_to_a_full_or_inactive_cluster_says_why():
    full = ClusterFactory(name="full", max_users=0)
    off = ClusterFactory(name="off", status=HopsworksCluster.Status.MAINTENANCE)
    with pytest.raises(services.NoCapacity, match="full is full"):
        services.assignment_create(user=UserFactory(), cluster=full, actor=None)
    with pytest.raises(services.ClusterNotAccepting, match="maintenance"):
        services.assignment_create(user=UserFactory(), cluster=off, actor=None)
    assert not Assignment.objects.exists()


def test_moving_a_user_moves_the_count_and_their_hopsworks_account():
    old, new = ClusterFactory(name="old"), ClusterFactory(name="new")
    user = UserFactory()
    services.assignment_create(user=user, cluster=old, actor=None)

    services.assignment_move(user=user, to_cluster=new, actor=None)

    assert Assignment.objects.get(user=user).hopsworks_cluster == new
    assert counts(old) == (0, 0)
    assert counts(new) == (1, 1)
    wanted = dict(
        HopsworksAccount.objects.filter(user=user).values_list("cluster__name", "desired")
    )
    assert wanted == {"old": "deactivated", "new": "active"}


def test_a_move_to_a_full_cluster_changes_nothing():
    old, full = ClusterFactory(name="old"), ClusterFactory(name="full", max_users=0)
    user = UserFactory()
    services.assignment_create(user=user, cluster=old, actor=None)

    with pytest.raises(services.NoCapacity):
        services.assignment_move(user=user, to_cluster=full, actor=None)

    assert Assignment.objects.get(user=user).hopsworks_cluster == old
    assert counts(old) == (1, 1)


def test_unassign_frees_the_slot_and_wants_the_account_deactivated():
    cluster = ClusterFactory()
    user = UserFactory(hopsworks_username="ada1")
    services.assignment_create(user=user, cluster=cluster, actor=None)

    services.assignment_unassign(user=user, actor=None)

    user.refresh_from_db()
    assert counts(cluster) == (0, 0)
    assert user.hopsworks_username is None
    assert HopsworksAccount.objects.get(user=user).desired == "deactivated"
    with pytest.raises(services.NotAssigned):
        services.assignment_unassign(user=user, actor=None)


def test_max_users_cannot_go_below_the_assigned_users():
    cluster = ClusterFactory(max_users=5)
    for _ in range(3):
        services.assignment_create(user=UserFactory(), cluster=cluster, actor=None)
    with pytest.raises(services.ClusterValidationError, match="3 users are assigned"):
        services.cluster_save(cluster=cluster, changes={"max_users": 2}, actor=None)
    cluster.refresh_from_db()
    assert cluster.max_users == 5


def test_the_database_refuses_more_users_than_max_users():
    cluster = ClusterFactory(max_users=1)
    with pytest.raises(IntegrityError), transaction.atomic():
        HopsworksCluster.objects.filter(pk=cluster.pk).update(current_users=2)


def test_check_cluster_counts_reports_and_repairs_drift():
    cluster = ClusterFactory(max_users=5)
    services.assignment_create(user=UserFactory(), cluster=cluster, actor=None)
    HopsworksCluster.objects.filter(pk=cluster.pk).update(current_users=4)  # adopted drift

    [drift] = services.cluster_counts_check()
    assert (drift.recorded, drift.assigned) == (4, 1)
    services.cluster_counts_check(fix=True)
    assert counts(cluster) == (1, 1)
    assert services.cluster_counts_check() == []


def test_suspending_a_user_wants_their_account_deactivated_and_reactivating_active():
    from accounts.services import user_reactivate, user_suspend

    cluster = ClusterFactory()
    user = UserFactory()
    services.assignment_create(user=user, cluster=cluster, actor=None)

    user_suspend(user=user, actor=None)
    assert HopsworksAccount.objects.get(user=user).desired == "deactivated"
    user_reactivate(user=user, actor=None)
    assert HopsworksAccount.objects.get(user=user).desired == "active"


@pytest.mark.parametrize("status", ["suspended", "deleted"])
def test_a_suspended_or_deleted_user_is_never_placed_automatically(status):
    cluster = ClusterFactory()
    user = UserFactory()
    User.objects.filter(pk=user.pk).update(status=status)  # `user` in memory still says active

    placement = services.assignment_place(user=user)
    by_hand = services.assignment_place(user=user, gated=False)

    for result in (placement, by_hand):
        assert result.outcome == services.Placement.Outcome.NOT_ACTIVE
        assert result.assignment is None
        assert f"{user.email} is {status}" in result.detail
    assert counts(cluster) == (0, 0)
    assert not CapacityWait.objects.filter(user=user).exists()


def suspend_the_others_while_asked(user):
    """A billing gate (PLACEMENT_GATE) that, asked about one waiting user, suspends the
    other waiting users: an operator suspending them while the placement run is going."""
    User.objects.filter(capacity_wait__isnull=False).exclude(pk=user.pk).update(status="suspended")
    return None


def test_a_user_suspended_while_waiting_users_are_placed_is_not_placed_or_counted(settings):
    cluster = ClusterFactory(max_users=5)
    first, second, third = UserFactory.create_batch(3)
    for user in (first, second, third):
        CapacityWait.objects.create(user=user)
    settings.PLACEMENT_GATE = f"{__name__}.suspend_the_others_while_asked"

    placed = services.capacity_place_waiting()

    assert placed == 1
    assert list(Assignment.objects.values_list("user_id", flat=True)) == [first.pk]
    assert counts(cluster) == (1, 1)
    assert set(CapacityWait.objects.values_list("user_id", flat=True)) == {second.pk, third.pk}


def suspend_the_one_asked_about(user):
    """A billing gate that suspends the user it is asked about: the suspension lands after
    placement first looked at the user and before it takes a slot."""
    User.objects.filter(pk=user.pk).update(status="suspended")
    return None


def test_a_user_suspended_while_being_placed_is_not_placed(settings):
    cluster = ClusterFactory()
    user = UserFactory()
    settings.PLACEMENT_GATE = f"{__name__}.suspend_the_one_asked_about"

    placement = services.assignment_place(user=user)

    assert placement.outcome == services.Placement.Outcome.NOT_ACTIVE
    assert counts(cluster) == (0, 0)
