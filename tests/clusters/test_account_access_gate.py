"""The account-access gate: clusters asks (ACCOUNT_ACCESS_GATE) whether a user's Hopsworks
account may be active; billing answers in production (a service stop). Here the gate is a
plain function the test controls, so only the clusters side is under test."""

import pytest

from accounts.services import user_reactivate, user_suspend
from clusters import services
from clusters.models import HopsworksAccount
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db

BLOCKED: dict[str, str] = {}


def gate(user):
    return BLOCKED.get(user.pk)


@pytest.fixture(autouse=True)
def controlled_gate(settings):
    settings.ACCOUNT_ACCESS_GATE = f"{__name__}.gate"
    BLOCKED.clear()
    yield
    BLOCKED.clear()


def wanted(user):
    return dict(HopsworksAccount.objects.filter(user=user).values_list("cluster__name", "desired"))


def test_a_blocked_user_placed_on_a_cluster_gets_a_deactivated_account():
    ClusterFactory(name="west")
    user = UserFactory()
    BLOCKED[user.pk] = "balance below the floor"
    services.assignment_place(user=user, gated=False)
    assert wanted(user) == {"west": "deactivated"}


def test_refresh_follows_the_gate_both_ways_and_queues_the_sync_only_on_change(settings):
    cluster = ClusterFactory(name="west")
    user = UserFactory()
    services.assignment_create(user=user, cluster=cluster, actor=None)
    assert wanted(user) == {"west": "active"}

    BLOCKED[user.pk] = "balance below the floor"
    assert services.accounts_refresh(user=user) is True
    assert wanted(user) == {"west": "deactivated"}
    assert services.accounts_refresh(user=user) is False  # nothing changed: no new job

    BLOCKED.clear()
    assert services.accounts_refresh(user=user) is True
    assert wanted(user) == {"west": "active"}


def test_reactivating_a_suspended_user_keeps_a_blocked_account_deactivated():
    cluster = ClusterFactory(name="west")
    user = UserFactory()
    services.assignment_create(user=user, cluster=cluster, actor=None)
    user_suspend(user=user, actor=None)
    BLOCKED[user.pk] = "payment failed"
    user_reactivate(user=user, actor=None)
    assert wanted(user) == {"west": "deactivated"}


def test_a_move_of_a_blocked_user_wants_no_account_active_anywhere():
    west, east = ClusterFactory(name="west"), ClusterFactory(name="east")
    user = UserFactory()
    services.assignment_create(user=user, cluster=west, actor=None)
    BLOCKED[user.pk] = "over the spending cap"
    services.assignment_move(user=user, to_cluster=east, actor=None)
    assert wanted(user) == {"west": "deactivated", "east": "deactivated"}


def test_refresh_deactivates_accounts_left_on_clusters_the_user_is_not_on():
    west = ClusterFactory(name="west")
    east = ClusterFactory(name="east")
    user = UserFactory()
    services.assignment_create(user=user, cluster=west, actor=None)
    HopsworksAccount.objects.create(user=user, cluster=east, desired="active")
    assert services.accounts_refresh(user=user) is True
    assert wanted(user) == {"west": "active", "east": "deactivated"}
