"""The operator dashboard on the admin index."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.credits import Kind, credits_add
from billing.models import BillingProfile, StripeEvent, UsageCollectionRun
from billing.usage import UsageRecord, usage_upsert
from clusters import services
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db


def tiles(client):
    response = client.get("/admin/")
    assert response.status_code == 200
    return {tile.title: tile for tile in response.context["tiles"]}, response.content.decode()


def add_world(users: int, days: int):
    cluster = ClusterFactory(max_users=users + 5)
    people = UserFactory.create_batch(users)
    for user in people:
        services.assignment_create(user=user, cluster=cluster, actor=None)
    today = timezone.now().date()
    usage_upsert(
        records=[
            UsageRecord(
                user_id=u.pk,
                cluster_id=cluster.pk,
                date=today - dt.timedelta(days=d),
                cpu_hours=Decimal("2"),
            )
            for u in people
            for d in range(days)
        ],
        actor="t",
    )
    return cluster, people


def test_the_dashboard_shows_each_figure_as_a_link_to_its_list(operator_client):
    cluster, people = add_world(3, 1)
    full = ClusterFactory(name="full", max_users=0)
    services.assignment_place(user=UserFactory())  # placed on `cluster`
    BillingProfile.objects.create(user=people[0], mode="prepaid")
    credits_add(
        user=people[0], kind=Kind.ADJUSTMENT, amount=Decimal("-1"), reference="x", actor="t"
    )
    UsageCollectionRun.objects.create(
        cluster=cluster, date=timezone.now().date(), status="failed", error="boom"
    )
    StripeEvent.objects.create(
        id="evt_1",
        type="invoice.paid",
        created=timezone.now(),
        payload={},
        status="failed",
        error="x",
    )

    found, body = tiles(operator_client)

    assert 'id="dashboard"' in body
    assert found["Usage this month"].value == "$0.60"  # 3 users x 2 CPU hours x $0.10
    assert found["Failed collection runs"].value == "1"
    assert found["Failed collection runs"].url.endswith("?status__exact=failed")
    assert found["Failed Stripe events"].value == "1"
    assert found["Balances below zero"].value == "1"
    assert (f"{full.name} (active)", "0 / 0") in [row[:2] for row in found["Cluster fill"].rows]
    assert found["Cluster fill"].alert
    for tile in found.values():
        assert tile.url.startswith("/admin/")
        assert operator_client.get(tile.url).status_code == 200, tile.url


def test_the_dashboard_shows_unbilled_usage_of_users_without_a_live_subscription(
    operator_client,
):
    _cluster, people = add_world(3, 2)  # 2 CPU hours a day: $0.20
    BillingProfile.objects.create(user=people[0], subscription_status="active")
    BillingProfile.objects.create(user=people[1], subscription_status="canceled")

    found, _body = tiles(operator_client)

    tile = found["Unbilled usage"]
    assert (tile.value, tile.alert) == ("$0.80 (2 users)", True)
    listed = operator_client.get(tile.url).context["cl"].result_list
    assert {u.pk for u in listed} == {people[1].pk, people[2].pk}


def test_the_dashboard_makes_as_many_queries_for_a_big_world_as_a_small_one(operator_client):
    add_world(2, 2)
    operator_client.get("/admin/")

    def queries():
        with CaptureQueriesContext(connection) as captured:
            operator_client.get("/admin/")
        return len(captured)

    small = queries()
    add_world(20, 10)
    assert queries() == small


def test_the_dashboard_reads_the_rollups_and_never_usage_daily(operator_client):
    add_world(3, 40)  # this month and the one before
    with CaptureQueriesContext(connection) as captured:
        found, body = tiles(operator_client)
    # The platform's figures (the month tiles, the chart of daily cost per cluster) read the
    # daily rollup per cluster: rows per cluster and day, whatever the number of users. The
    # monthly rollup (a row per user and month) only for what is per user: unbilled usage.
    sql = [q["sql"] for q in captured.captured_queries]
    assert not [q for q in sql if "usage_daily" in q]
    assert len([q for q in sql if "usage_cluster_daily" in q]) == 3
    assert [q for q in sql if "usage_monthly" in q] == [q for q in sql if "reported AS" in q]
    assert found["Usage this month"].value.startswith("$")
    assert 'id="chart-cost-per-cluster"' in body


USER_TILES = {
    "Active users",
    "Unbilled usage",
    "Waiting for capacity",
    "Waiting for billing setup",
    "Hopsworks accounts pending",
}
JOB_TILES = {"Failed jobs", "Jobs queued"}
EVERY_TILE = (
    USER_TILES
    | JOB_TILES
    | {
        "Usage this month",
        "Usage per cluster this month",
        "Cluster fill",
        "Failed collection runs",
        "Failed Stripe events",
        "Balances below zero",
    }
)
# Who sees which tiles: exactly those whose list they may open.
TILES_BY_PERSONA = {
    "no_permission_staff": set(),
    "view_only_staff": EVERY_TILE,
    "change_user_staff": USER_TILES,  # changing users includes seeing them
    "support_staff": USER_TILES | {"Cluster fill"},
    "finance_staff": EVERY_TILE - JOB_TILES,  # the jobs list needs its own permission
    "superuser": EVERY_TILE,
}


@pytest.mark.parametrize(("who", "expected"), TILES_BY_PERSONA.items())
def test_a_tile_appears_only_to_those_who_may_open_the_list_it_links_to(
    client, persona, who, expected
):
    add_world(2, 1)
    every_url = {
        tile.title: tile.url for tile in tiles(_logged_in(client, persona("superuser")))[0].values()
    }
    found, body = tiles(_logged_in(client, persona(who)))

    assert set(found) == expected
    for title, url in every_url.items():
        assert client.get(url).status_code == (200 if title in expected else 403), title
    for title in EVERY_TILE - expected:
        assert title not in body
    assert ('id="dashboard"' in body) == bool(expected)


def _logged_in(client, user):
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    return client


def test_the_dashboard_shows_failed_jobs_and_how_long_the_oldest_has_waited(operator_client):
    from django.db import connection

    from tests.jobs import job_with_status

    job_with_status("failed")
    waiting = job_with_status("todo")
    with connection.cursor() as cursor:  # deferred 20 minutes ago, and no worker took it
        cursor.execute(
            "UPDATE procrastinate_events SET at = now() - interval '20 minutes' "
            "WHERE job_id = %s AND type = 'deferred'",
            [waiting],
        )
    found, _body = tiles(operator_client)

    assert found["Failed jobs"].value == "1" and found["Failed jobs"].alert
    assert found["Jobs queued"].value == "1 (oldest waiting 20 min)"
    assert found["Jobs queued"].alert


# Each tile counts what its list shows


def listed(client, url) -> int:
    response = client.get(url)
    assert response.status_code == 200, url
    return response.context["cl"].result_count


def test_the_pending_accounts_tile_counts_the_users_its_list_shows(operator_client):
    east, west = ClusterFactory(name="east"), ClusterFactory(name="west")
    moved, placed = UserFactory(), UserFactory()
    services.assignment_create(user=moved, cluster=east, actor=None)
    services.assignment_move(user=moved, to_cluster=west, actor=None)  # two accounts pending
    services.assignment_create(user=placed, cluster=east, actor=None)

    found, _ = tiles(operator_client)

    tile = found["Hopsworks accounts pending"]
    assert tile.value == "2 users"
    assert listed(operator_client, tile.url) == 2


def test_active_users_are_customers_not_operators_or_break_glass_logins(operator_client):
    from accounts.models import User

    UserFactory.create_batch(2)
    UserFactory(status="suspended")
    UserFactory(is_admin=True)  # another operator
    User.objects.create_user(email="breakglass@example.com", password="x" * 20, is_admin=False)

    found, _ = tiles(operator_client)

    tile = found["Active users"]
    assert tile.value == "2"
    assert listed(operator_client, tile.url) == 2


def test_the_cluster_fill_tile_names_the_clusters_that_are_full_or_nearly(operator_client):
    ClusterFactory(name="roomy", max_users=100)
    tight = ClusterFactory(name="tight", max_users=10)
    for user in UserFactory.create_batch(9):
        services.assignment_create(user=user, cluster=tight, actor=None)
    ClusterFactory(name="packed", max_users=0)

    found, body = tiles(operator_client)

    tile = found["Cluster fill"]
    assert tile.alert
    assert "full: packed" in tile.value
    assert "nearly full: tight" in tile.value
    assert "roomy" not in tile.value
    assert "full: packed" in body
