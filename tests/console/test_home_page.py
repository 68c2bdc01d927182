"""The user's own page: cluster or why they wait, usage, and a negative balance flagged."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import BillingProfile
from billing.usage import UsageRecord, usage_upsert
from clusters import services
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db


def login(client, user):
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")


def test_the_page_needs_a_login(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_a_placed_user_sees_their_cluster_and_this_months_usage(client):
    cluster = ClusterFactory(name="east")
    user = UserFactory()
    services.assignment_create(user=user, cluster=cluster, actor=None)
    yesterday = timezone.now().date() - dt.timedelta(days=1)
    usage_upsert(
        records=[
            UsageRecord(
                user_id=user.pk, cluster_id=cluster.pk, date=yesterday, cpu_hours=Decimal("10")
            )
        ],
        actor="t",
    )
    login(client, user)

    page = client.get("/").content.decode()

    assert "You are on <strong>east</strong>" in page
    assert yesterday.isoformat() in page
    assert "$1.00" in page


def test_a_waiting_user_is_told_why(client):
    ClusterFactory(max_users=0)
    user = UserFactory()
    services.assignment_place(user=user)
    login(client, user)
    assert "All clusters are full right now" in client.get("/").content.decode()


def test_a_prepaid_user_below_zero_is_warned(client):
    cluster = ClusterFactory()
    user = UserFactory()
    BillingProfile.objects.create(user=user, mode="prepaid")
    usage_upsert(
        records=[
            UsageRecord(
                user_id=user.pk,
                cluster_id=cluster.pk,
                date=timezone.now().date(),
                cpu_hours=Decimal("3"),
            )
        ],
        actor="t",
    )
    login(client, user)
    page = client.get("/").content.decode()
    assert "Credit balance: <strong>-$0.30</strong>" in page
    assert "below zero" in page


def test_the_daily_cost_chart_is_server_rendered_svg(client):
    cluster = ClusterFactory()
    user = UserFactory()
    today = timezone.now().date()
    usage_upsert(
        records=[
            UsageRecord(
                user_id=user.pk,
                cluster_id=cluster.pk,
                date=today - dt.timedelta(days=d),
                cpu_hours=Decimal(d + 1),
            )
            for d in range(5)
        ],
        actor="t",
    )
    login(client, user)
    page = client.get("/").content.decode()
    assert "<svg" in page and page.count("<rect ") == 5
    assert "the highest day was $0.50" in page
    assert "<script" not in page


def test_a_missing_page_is_a_clear_page(client):
    response = client.get("/no/such/page/")
    assert response.status_code == 404
    assert "There is nothing at this address" in response.content.decode()


def test_a_user_sees_their_mode_switches_and_adjustments_in_their_history(client):
    from billing.models import BillingAdjustment
    from billing.profiles import billing_mode_set

    user = UserFactory()
    billing_mode_set(user=user, mode="prepaid", actor="ops@example.com")
    BillingAdjustment.objects.create(
        user=user,
        direction="credit",
        amount=Decimal("12.50"),
        channel="stripe_customer_balance",
        reason="outage apology",
        actor="ops@example.com",
        reference="grant:t:1",
        status="sent",
    )
    login(client, user)

    page = client.get("/").content.decode()

    assert "Account changes" in page
    assert "Postpaid (metered) → Prepaid (credits)" in page
    assert " UTC" in page  # the switch's effective time
    assert "Credit of $12.50: outage apology" in page
    assert "ops@example.com" not in page  # who did it is for operators
