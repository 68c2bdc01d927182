"""The billing gate on automatic placement: a place once billing is set up.

The real stripe SDK talks to a local fake Stripe; webhooks are signed with Stripe's scheme.
"""

from decimal import Decimal

import pytest

from billing.checkout import customer_ensure
from clusters.models import CapacityWait
from clusters.models import UserHopsworksAssignment as Assignment
from tests.billing.stripe_helpers import buy, login, prepaid_user
from tests.factories import ClusterFactory, UserFactory
from tests.fakes.stripe import make_event
from tests.jobs import run_jobs

pytestmark = pytest.mark.django_db
D = Decimal


def test_the_billing_gate_waits_for_a_subscription_then_places_the_user(
    fake_stripe, deliver, settings
):
    from clusters import services

    settings.PLACEMENT_REQUIRES_BILLING = True
    ClusterFactory()
    user = UserFactory()
    placement = services.assignment_place(user=user)
    assert placement.outcome == services.Placement.Outcome.WAITING_FOR_BILLING
    assert CapacityWait.objects.get(user=user).reason == "billing"

    customer = customer_ensure(user=user)
    subscription = fake_stripe.add_subscription(
        customer=customer, status="active", metadata={"user_id": user.pk}
    )
    with run_jobs():
        deliver(make_event("customer.subscription.created", subscription))

    assert Assignment.objects.filter(user=user).exists()
    assert not CapacityWait.objects.filter(user=user).exists()


def test_the_billing_gate_lets_a_prepaid_user_in_after_a_purchase(
    client, fake_stripe, deliver, settings
):
    from clusters import services

    settings.PLACEMENT_REQUIRES_BILLING = True
    ClusterFactory()
    user = prepaid_user()
    assert services.assignment_place(user=user).outcome == "waiting for billing setup"
    login(client, user)
    assert "Buy credits to get a place" in client.get("/").content.decode()

    _, _, session_id = buy(client, fake_stripe, user, "10")
    with run_jobs():
        deliver(make_event("checkout.session.completed", fake_stripe.complete_checkout(session_id)))

    assert Assignment.objects.filter(user=user).exists()


def test_operators_place_anyone_by_hand_whatever_the_gate(settings):
    from clusters import services

    settings.PLACEMENT_REQUIRES_BILLING = True
    cluster = ClusterFactory()
    user = UserFactory()
    services.assignment_create(user=user, cluster=cluster, actor="ops")
    assert Assignment.objects.get(user=user).hopsworks_cluster == cluster
