"""A subscription canceled outside our flow (the customer portal, Stripe's dashboard): what
was reported to it is invoiced once, and later usage waits, unbilled, for a new one."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.utils import timezone

from billing.checkout import customer_ensure
from billing.models import BillingProfile, StripeCatalogEntry, SubscriptionEnd
from billing.selectors import unbilled_usage
from billing.stripe_reporting import usage_report_to_stripe
from billing.usage import UsageRecord, usage_upsert
from tests.factories import ClusterFactory, UserFactory
from tests.fakes.stripe import make_event

pytestmark = pytest.mark.django_db
D = Decimal
TODAY = timezone.now().date()


@pytest.fixture
def subscribed(fake_stripe):
    call_command("setup_stripe_billing")
    user = UserFactory()
    customer = customer_ensure(user=user)
    start = int(dt.datetime.combine(TODAY.replace(day=1), dt.time(), tzinfo=dt.UTC).timestamp())
    prices = [entry.price_id for entry in StripeCatalogEntry.objects.order_by("resource")]
    sub = fake_stripe.add_subscription(customer=customer, price_ids=prices, start_date=start)
    for item in sub["items"]["data"]:
        item["current_period_start"] = start
    BillingProfile.objects.update_or_create(
        user=user, defaults={"stripe_subscription_id": sub["id"], "subscription_status": "active"}
    )
    cluster = ClusterFactory()
    usage_upsert(
        records=[
            UsageRecord(user_id=user.pk, cluster_id=cluster.pk, date=TODAY, cpu_hours=D("40"))
        ],
        actor="t",
    )
    run = usage_report_to_stripe()
    assert not run.errors and run.sent_cents > 0
    return {"user": user, "customer": customer, "sub": sub, "cents": run.sent_cents}


def test_a_subscription_canceled_in_the_portal_gets_one_final_invoice_of_what_was_reported(
    subscribed, fake_stripe, deliver
):
    sub_id = subscribed["sub"]["id"]
    ended = fake_stripe.end_subscription(sub_id)

    deliver(make_event("customer.subscription.deleted", ended))
    deliver(make_event("customer.subscription.deleted", ended))  # redelivered as a new event

    [create] = fake_stripe.requests_to("POST", "/v1/invoices")
    assert create.form["pending_invoice_items_behavior"] == "exclude"
    end = SubscriptionEnd.objects.get(pk=sub_id)
    assert end.status == SubscriptionEnd.Status.INVOICED and end.ended_by == "stripe"
    invoice = fake_stripe.invoices[end.final_invoice_id]
    assert invoice["status"] == "open" and invoice["customer"] == subscribed["customer"]
    assert invoice["amount_due"] == subscribed["cents"] == end.invoiced_cents
    # Nothing more goes to the ended subscription: new usage is held, unbilled.
    usage_upsert(
        records=[
            UsageRecord(
                user_id=subscribed["user"].pk,
                cluster_id=None,
                date=TODAY,
                gpu_hours=D("1"),
            )
        ],
        actor="t",
    )
    events_before = len(fake_stripe.meter_events)
    usage_report_to_stripe()
    assert len(fake_stripe.meter_events) == events_before
    assert unbilled_usage(user_ids=[subscribed["user"].pk])[subscribed["user"].pk] > 0


def test_no_final_invoice_when_stripe_already_invoiced_the_last_period(
    subscribed, fake_stripe, deliver
):
    sub_id = subscribed["sub"]["id"]
    ended = fake_stripe.end_subscription(sub_id)
    fake_stripe.add_usage_invoice(
        subscription_id=sub_id,
        period_start=ended["items"]["data"][0]["current_period_start"],
        period_end=ended["ended_at"],
    )

    deliver(make_event("customer.subscription.deleted", ended))

    assert not fake_stripe.requests_to("POST", "/v1/invoices")
    assert SubscriptionEnd.objects.get(pk=sub_id).status == SubscriptionEnd.Status.COVERED


def test_stripe_down_while_invoicing_is_retried_without_a_second_invoice(
    subscribed, fake_stripe, deliver
):
    sub_id = subscribed["sub"]["id"]
    ended = fake_stripe.end_subscription(sub_id)
    # The invoice is made at Stripe but its answer is lost, then Stripe is down.
    fake_stripe.fail_next(1, status=500, method="POST", path="/v1/invoices", processed=True)
    fake_stripe.fail_next(10, status=503, method="POST", path="/v1/invoiceitems")

    deliver(make_event("customer.subscription.deleted", ended))
    end = SubscriptionEnd.objects.get(pk=sub_id)
    assert end.status == SubscriptionEnd.Status.PENDING and end.last_error

    fake_stripe.clear_failures()
    from billing.tasks import settle_ended_subscription

    settle_ended_subscription.func(subscription_id=sub_id)
    end.refresh_from_db()
    assert end.status == SubscriptionEnd.Status.INVOICED
    drafts = [i for i in fake_stripe.invoices.values() if i["billing_reason"] == "manual"]
    assert len(drafts) == 1 and drafts[0]["amount_due"] == subscribed["cents"]
