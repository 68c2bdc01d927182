"""The user's account on their Hopsworks cluster: created at first login, retried when the
cluster is down, following suspension and moves; never created twice."""

import time

import pytest
from django.core.management import CommandError, call_command

from accounts.models import User
from accounts.services import user_reactivate, user_suspend
from clusters import services
from clusters.account_sync import hopsworks_accounts_sync
from clusters.models import HopsworksAccount, HopsworksCluster
from clusters.models import UserHopsworksAssignment as Assignment
from tests.accounts.test_auth0_login import log_in
from tests.factories import UserFactory
from tests.fakes.hopsworks import OAUTH_CLIENT_ID
from tests.fakes.raw_servers import DripServer, http_response
from tests.jobs import run_jobs, run_queued_jobs

pytestmark = pytest.mark.django_db

SUB = "google-oauth2|115161017478488946656"


def posts(fake):
    return fake.requests_to("POST", "/admin/users")


def test_first_login_places_the_user_and_creates_their_hopsworks_account(
    client, fake_auth0, fake_hopsworks, cluster_on
):
    east, _ = fake_hopsworks
    cluster = cluster_on(east, name="east")

    with run_jobs():
        response = log_in(
            client,
            fake_auth0,
            fake_auth0.id_token(sub=SUB, email="ada@example.com", name="Ada King Lovelace"),
        )

    assert response.status_code == 302
    [created] = posts(east)
    assert created.args["subject"] == SUB
    assert created.args["clientId"] == OAUTH_CLIENT_ID
    assert created.args["email"] == "ada@example.com"
    assert (created.args["givenName"], created.args["surname"]) == ("Ada", "King Lovelace")
    assert created.headers["Authorization"] == f"ApiKey {east.api_key}"
    remote = east.user_by_email("ada@example.com")
    user = User.objects.get(pk=SUB)
    assignment = Assignment.objects.get(user=user)
    assert assignment.hopsworks_cluster == cluster
    assert user.hopsworks_username == assignment.hopsworks_username == remote.username
    account = HopsworksAccount.objects.get(user=user)
    assert (account.synced, account.hopsworks_user_id) == ("active", remote.id)


def test_an_unreachable_cluster_keeps_the_account_pending_and_the_retry_creates_it_once(
    client, fake_auth0, fake_hopsworks, cluster_on
):
    east, _ = fake_hopsworks
    cluster = cluster_on(east, name="east", api_url="https://127.0.0.1:9")

    with run_jobs():
        response = log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="a@example.com"))

    assert response.status_code == 302  # the login itself is not held up
    account = HopsworksAccount.objects.get(user_id=SUB)
    assert account.pending and account.attempts == 1
    assert "could not reach" in account.last_error
    assert Assignment.objects.get(user_id=SUB).hopsworks_cluster == cluster
    with pytest.raises(CommandError, match="still pending"):
        call_command("sync_hopsworks_accounts")

    HopsworksCluster.objects.filter(pk=cluster.pk).update(api_url=east.api_url)  # back up
    call_command("sync_hopsworks_accounts")
    call_command("sync_hopsworks_accounts")

    assert len(posts(east)) == 1
    account.refresh_from_db()
    assert not account.pending and account.last_error == ""
    assert (
        User.objects.get(pk=SUB).hopsworks_username == east.user_by_email("a@example.com").username
    )


def test_an_account_that_already_exists_on_the_cluster_is_adopted_not_created(
    fake_hopsworks, cluster_on
):
    east, _ = fake_hopsworks
    cluster = cluster_on(east)
    user = UserFactory(email="known@example.com")
    existing = east.add_user(email="known@example.com", subject=user.pk)
    services.assignment_create(user=user, cluster=cluster, actor=None)

    hopsworks_accounts_sync(user=user)

    assert posts(east) == []
    assert HopsworksAccount.objects.get(user=user).hopsworks_user_id == existing.id


def test_suspending_deactivates_the_account_and_reactivating_activates_it(
    fake_hopsworks, cluster_on
):
    east, _ = fake_hopsworks
    cluster = cluster_on(east)
    user = UserFactory()
    with run_jobs():
        services.assignment_create(user=user, cluster=cluster, actor=None)
    remote = east.user_by_email(user.email)

    with run_jobs():
        user_suspend(user=user, actor=None)
    assert east.user_by_id(remote.id).status == 3
    with run_jobs():
        user_reactivate(user=user, actor=None)
    assert east.user_by_id(remote.id).status == 2

    puts = [r.json() for r in east.requests_to("PUT", f"/admin/users/{remote.id}")]
    assert puts == [{"status": 3}, {"status": 2}]
    assert len(posts(east)) == 1


def test_reassigning_a_user_moves_their_hopsworks_account(fake_hopsworks, cluster_on):
    east, west = fake_hopsworks
    old, new = cluster_on(east, name="east"), cluster_on(west, name="west")
    user = UserFactory()
    with run_jobs():
        services.assignment_create(user=user, cluster=old, actor=None)
    with run_jobs():
        services.assignment_move(user=user, to_cluster=new, actor=None)

    assert east.user_by_email(user.email).status == 3
    assert west.user_by_email(user.email).status == 2
    user.refresh_from_db()
    assert user.hopsworks_username == west.user_by_email(user.email).username
    assert Assignment.objects.get(user=user).hopsworks_cluster == new


def test_unassigning_deactivates_the_account(fake_hopsworks, cluster_on):
    east, _ = fake_hopsworks
    cluster = cluster_on(east)
    user = UserFactory()
    with run_jobs():
        services.assignment_create(user=user, cluster=cluster, actor=None)
    with run_jobs():
        services.assignment_unassign(user=user, actor=None)

    assert east.user_by_email(user.email).status == 3
    assert not HopsworksAccount.objects.get(user=user).pending


def test_a_suspended_user_logging_in_gets_no_account(
    client, fake_auth0, fake_hopsworks, cluster_on
):
    east, _ = fake_hopsworks
    cluster_on(east)
    UserFactory(id=SUB, email="s@example.com", status=User.Status.SUSPENDED)
    log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="s@example.com"))
    assert posts(east) == []
    assert not Assignment.objects.filter(user_id=SUB).exists()


def test_a_slow_cluster_cannot_hold_a_first_login_and_the_retry_creates_the_account(
    client, fake_auth0, fake_hopsworks, test_ca, settings
):
    settings.OUTBOUND_BACKGROUND_DEADLINE_SECONDS = 1.0
    east, _ = fake_hopsworks
    users_page = http_response(200, b'{"count": 0}' + b" " * 400)
    with DripServer(users_page, interval=0.05, tls=test_ca) as slow:
        cluster = services.cluster_save(
            cluster=HopsworksCluster(),
            changes={
                "name": "slow",
                "api_url": slow.url,
                "api_key": east.api_key,
                "ca_bundle": test_ca.ca_path.read_text(),
            },
            actor="test",
        )
        # As if its connection test had passed when the server was quick: it takes users.
        services.cluster_connection_passed(cluster=cluster, actor="test")
        response = log_in(client, fake_auth0, fake_auth0.id_token(sub=SUB, email="ada@x.org"))
        assert response.status_code == 302
        assert slow.connections == 0  # the login queued the account: no cluster call in it

        started = time.monotonic()
        assert ("clusters.sync_user_accounts", "failed") in run_queued_jobs()
        elapsed = time.monotonic() - started

    assert elapsed < 1.0 + 1.5  # the job's calls, retries included, end at its deadline
    account = HopsworksAccount.objects.get(user_id=SUB)
    assert account.pending
    assert "deadline" in account.last_error

    services.cluster_save(
        cluster=cluster, changes={"api_url": east.api_url, "api_key": east.api_key}, actor="test"
    )
    call_command("sync_hopsworks_accounts")

    account.refresh_from_db()
    assert (account.synced, account.last_error) == ("active", "")
    assert len(posts(east)) == 1


def test_one_accounts_calls_end_within_its_share_of_the_lease(
    fake_hopsworks, cluster_on, monkeypatch
):
    # Past its lease another run may take the same account: its calls all together get
    # ACCOUNT_SECONDS (half the lease), whatever each call's own deadline.
    import clusters.account_sync as account_sync

    monkeypatch.setattr(account_sync, "ACCOUNT_SECONDS", 1.0)
    east, _ = fake_hopsworks
    cluster = cluster_on(east, name="east")
    user = UserFactory(email="slow@example.com")
    services.assignment_create(user=user, cluster=cluster, actor=None)
    east.slow_next(10, seconds=0.6)  # each answer well within a call's 60 s

    started = time.monotonic()
    with pytest.raises(CommandError, match="still pending"):
        call_command("sync_hopsworks_accounts")
    elapsed = time.monotonic() - started

    assert elapsed < 1.0 + 1.0
    account = HopsworksAccount.objects.get(user=user)
    assert account.pending and "deadline" in account.last_error
