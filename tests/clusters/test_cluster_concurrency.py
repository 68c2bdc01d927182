"""Many users signing up at the same moment never overfill a cluster (PostgreSQL)."""

import pytest

from clusters import services
from clusters.models import CapacityWait, HopsworksCluster
from clusters.models import UserHopsworksAssignment as Assignment
from tests.concurrency import run_at_once
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

SIGNUPS = 24


def test_concurrent_signups_fill_exactly_the_free_slots_and_the_rest_wait():
    a = ClusterFactory(name="a", max_users=4)
    b = ClusterFactory(name="b", max_users=3)
    ClusterFactory(name="maintenance", max_users=50, status=HopsworksCluster.Status.MAINTENANCE)
    services.assignment_create(user=UserFactory(), cluster=a, actor=None)
    services.assignment_create(user=UserFactory(), cluster=b, actor=None)
    # 3 + 2 = 5 free slots for 24 people arriving at once.
    newcomers = UserFactory.create_batch(SIGNUPS)

    run_at_once(lambda user: services.assignment_place(user=user), newcomers)

    placed = Assignment.objects.filter(user__in=newcomers).count()
    assert placed == 5
    assert CapacityWait.objects.filter(user__in=newcomers).count() == SIGNUPS - 5
    for cluster in (a, b):
        cluster.refresh_from_db()
        assert cluster.current_users == cluster.max_users
        assert cluster.assignments.count() == cluster.current_users
    assert services.cluster_counts_check() == []


def test_concurrent_moves_into_one_slot_let_exactly_one_through():
    source = ClusterFactory(name="source", max_users=10)
    target = ClusterFactory(name="target", max_users=1)
    movers = UserFactory.create_batch(8)
    for user in movers:
        services.assignment_create(user=user, cluster=source, actor=None)
    outcomes = []

    def move(user):
        try:
            services.assignment_move(user=user, to_cluster=target, actor=None)
            outcomes.append("moved")
        except services.NoCapacity:
            outcomes.append("full")

    run_at_once(move, movers)

    assert sorted(outcomes) == ["full"] * 7 + ["moved"]
    source.refresh_from_db()
    target.refresh_from_db()
    assert (source.current_users, target.current_users) == (7, 1)
    assert services.cluster_counts_check() == []
