"""Hopsworks account changes are jobs: queued in the transaction that needs them, never
an outside call inside the user's request."""

import pytest
from django.db import connection, transaction

from accounts.models import User
from clusters import services
from clusters.models import HopsworksAccount
from tests.accounts.test_auth0_login import log_in
from tests.factories import UserFactory
from tests.jobs import run_queued_jobs

pytestmark = pytest.mark.django_db

SUB = "auth0|job-login"


def queued(task_name: str) -> list[dict]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT args FROM procrastinate_jobs WHERE task_name = %s AND status = 'todo'",
            [task_name],
        )
        return [args for (args,) in cursor.fetchall()]


def test_a_login_queues_the_account_creation_and_calls_no_cluster_in_the_request(
    client, fake_auth0, fake_hopsworks, cluster_on
):
    east, _ = fake_hopsworks
    cluster_on(east, name="east")

    response = log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="ada@example.com"))

    assert response.status_code == 302
    assert east.requests == []  # the login request did not talk to Hopsworks
    assert len(queued("clusters.sync_user_accounts")) == 1
    assert HopsworksAccount.objects.get(user_id=SUB).synced == "none"

    assert run_queued_jobs() == [("clusters.sync_user_accounts", "succeeded")]
    assert HopsworksAccount.objects.get(user_id=SUB).synced == "active"
    assert east.user_by_email("ada@example.com") is not None
    assert User.objects.get(pk=SUB).hopsworks_username


def test_a_rolled_back_change_queues_nothing(fake_hopsworks, cluster_on):
    cluster = cluster_on(fake_hopsworks[0], name="east")
    user = UserFactory()

    with pytest.raises(RuntimeError), transaction.atomic():
        services.assignment_create(user=user, cluster=cluster, actor=None)
        assert len(queued("clusters.sync_user_accounts")) == 1  # queued inside...
        raise RuntimeError("the change fails after queueing")

    assert queued("clusters.sync_user_accounts") == []  # ...and gone with the rollback
    assert not HopsworksAccount.objects.filter(user=user).exists()


def test_changes_for_one_user_queue_one_job_until_it_runs(fake_hopsworks, cluster_on):
    east = cluster_on(fake_hopsworks[0], name="east")
    west = cluster_on(fake_hopsworks[1], name="west")
    user = UserFactory()
    services.assignment_create(user=user, cluster=east, actor=None)
    services.assignment_move(user=user, to_cluster=west, actor=None)

    assert len(queued("clusters.sync_user_accounts")) == 1
    run_queued_jobs()
    states = dict(HopsworksAccount.objects.filter(user=user).values_list("cluster__name", "synced"))
    assert states == {"east": "deactivated", "west": "active"}


def test_a_job_for_a_user_who_is_gone_fails_with_the_reason_and_is_not_retried(db):
    from clusters.tasks import sync_user_accounts
    from plumbing.jobs import TargetGone

    with pytest.raises(TargetGone, match="no longer exists"):
        sync_user_accounts(user_id="auth0|nobody")
