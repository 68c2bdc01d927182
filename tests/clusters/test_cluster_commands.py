"""Operators' cluster commands: assign_user and check_cluster_counts."""

import pytest
from django.core.management import CommandError, call_command

from clusters.models import HopsworksCluster
from clusters.models import UserHopsworksAssignment as Assignment
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_assign_user_by_email_picks_a_cluster_and_says_where(capsys):
    ClusterFactory(name="east")
    user = UserFactory(email="ada@example.com")

    call_command("assign_user", "ADA@example.com")

    assert Assignment.objects.get(user=user).hopsworks_cluster.name == "east"
    assert "ada@example.com is on east (assigned)" in capsys.readouterr().out


def test_assign_user_does_not_auto_place_a_suspended_user():
    cluster = ClusterFactory(name="east")
    UserFactory(email="ada@example.com", status="suspended")

    with pytest.raises(CommandError, match=r"ada@example\.com is suspended"):
        call_command("assign_user", "ada@example.com")

    assert not Assignment.objects.filter(hopsworks_cluster=cluster).exists()


def test_assign_user_by_id_to_a_named_cluster(capsys):
    ClusterFactory(name="east")
    west = ClusterFactory(name="west")
    user = UserFactory(id="auth0|abc")

    call_command("assign_user", "auth0|abc", "--cluster", "west")

    assert Assignment.objects.get(user=user).hopsworks_cluster == west


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody@example.com"], "No user with id or email 'nobody@example.com'"),
        (["ada@example.com", "--cluster", "nowhere"], "No cluster named 'nowhere'. Clusters: full"),
        (["ada@example.com", "--cluster", "full"], "full is full (0 of 0 users)"),
        (["ada@example.com"], "No active cluster has room"),
    ],
)
def test_assign_user_fails_with_a_clear_message(args, message):
    ClusterFactory(name="full", max_users=0)
    UserFactory(email="ada@example.com")
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call_command("assign_user", *args)
    assert not Assignment.objects.exists()


def test_check_cluster_counts_exits_non_zero_on_drift_and_fix_repairs(capsys):
    cluster = ClusterFactory(name="east", max_users=5)
    HopsworksCluster.objects.filter(pk=cluster.pk).update(current_users=3)

    with pytest.raises(CommandError, match="1 cluster"):
        call_command("check_cluster_counts")
    assert "east: current_users recorded 3, assigned users 0" in capsys.readouterr().out

    call_command("check_cluster_counts", "--fix")
    cluster.refresh_from_db()
    assert cluster.current_users == 0
    call_command("check_cluster_counts")
    assert "exact" in capsys.readouterr().out
