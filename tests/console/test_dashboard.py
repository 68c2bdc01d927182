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
