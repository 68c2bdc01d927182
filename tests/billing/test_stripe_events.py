"""Stripe events applied: credits, invoices and subscriptions, once, in event order.

The real stripe SDK talks to a local fake Stripe; webhooks are signed with Stripe's scheme.
"""

import time
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import OperationalError

from billing import purchases
from billing.checkout import customer_ensure
from billing.models import BillingHistory, BillingProfile, CreditLedgerEntry, StripeEvent
from tests.billing.stripe_helpers import balance, buy, prepaid_user
from tests.factories import UserFactory
from tests.fakes.stripe import make_event

pytestmark = pytest.mark.django_db
D = Decimal


def test_a_credit_purchase_delivered_three_times_adds_credits_once(client, fake_stripe, deliver):
    user = prepaid_user()
    _, _, session_id = buy(client, fake_stripe, user, "25")
    session = fake_stripe.complete_checkout(session_id)
    event = make_event("checkout.session.completed", session)

    responses = [deliver(event) for _ in range(3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert balance(user) == D("25")
    entry = CreditLedgerEntry.objects.get()
    assert (entry.kind, entry.reference) == ("purchase", f"stripe:checkout:{session_id}")
    assert StripeEvent.objects.get().status == "processed"


def test_a_delayed_payment_adds_credits_when_it_succeeds_and_only_once(
    client, fake_stripe, deliver
):
    user = prepaid_user()
    _, _, session_id = buy(client, fake_stripe, user, "40")
    session = fake_stripe.complete_checkout(session_id)
    unpaid = {**session, "payment_status": "unpaid"}

    deliver(make_event("checkout.session.completed", unpaid))
    assert balance(user) == 0
    deliver(make_event("checkout.session.async_payment_succeeded", session))
    deliver(make_event("checkout.session.completed", session))  # and a late "paid" too

    assert balance(user) == D("40")
    assert CreditLedgerEntry.objects.count() == 1


def invoice_event(fake_stripe, event_type, invoice, *, created):
    return make_event(event_type, invoice, created=created)


@pytest.mark.parametrize(
    ("kind", "tamper"),
    [
        ("bad-secret", "secret"),
        ("stale", "timestamp"),
        ("missing", "header"),
        ("tampered", "payload"),
    ],
)
def test_a_bad_or_old_signature_gets_400_and_changes_nothing(
    fake_stripe, deliver, client, kind, tamper
):
    user = prepaid_user()
    customer = customer_ensure(user=user)
    invoice = fake_stripe.add_invoice(customer=customer, status="paid", amount_due=1234)
    event = make_event("invoice.paid", invoice)
    if tamper == "secret":
        response = deliver(event, secret="whsec_wrong")
    elif tamper == "timestamp":
        response = deliver(event, timestamp=int(time.time()) - 3600)
    elif tamper == "header":
        response = deliver(event, signature="")
    else:
        from tests.fakes.stripe import WEBHOOK_SECRET, sign_payload

        header = sign_payload(b'{"id": "evt_other"}', WEBHOOK_SECRET)
        response = deliver(event, signature=header)

    assert response.status_code == 400
    assert not StripeEvent.objects.exists()
    assert not BillingHistory.objects.exists()


def test_invoices_land_in_billing_history_in_major_units(fake_stripe, deliver):
    user = UserFactory()
    customer = customer_ensure(user=user)
    invoice = fake_stripe.add_invoice(
        customer=customer, status="paid", amount_due=123456, number="INV-1"
    )

    deliver(make_event("invoice.paid", invoice))

    row = BillingHistory.objects.get()
    assert (row.user, row.amount, row.currency, row.status) == (user, D("1234.56"), "USD", "paid")
    assert row.stripe_invoice_id == invoice["id"]
    assert "INV-1" in row.description


def test_an_older_event_delivered_late_never_overwrites_a_newer_state(fake_stripe, deliver):
    user = UserFactory()
    customer = customer_ensure(user=user)
    invoice = fake_stripe.add_invoice(customer=customer, status="paid", amount_due=5000)
    now = int(time.time())

    deliver(make_event("invoice.paid", invoice, created=now))
    deliver(make_event("invoice.finalized", {**invoice, "status": "open"}, created=now - 60))
    deliver(make_event("invoice.created", {**invoice, "status": "draft"}, created=now - 120))
    deliver(make_event("invoice.payment_failed", {**invoice, "status": "open"}, created=now + 5))

    row = BillingHistory.objects.get()
    assert row.status == "paid"  # paid is final, and the older events came too late
    assert BillingHistory.objects.count() == 1


def test_payment_failed_then_paid_ends_paid(fake_stripe, deliver):
    user = UserFactory()
    customer = customer_ensure(user=user)
    invoice = fake_stripe.add_invoice(customer=customer, status="open", amount_due=700)
    now = int(time.time())
    deliver(make_event("invoice.payment_failed", invoice, created=now))
    assert BillingHistory.objects.get().status == "failed"
    deliver(make_event("invoice.paid", {**invoice, "status": "paid"}, created=now + 10))
    assert BillingHistory.objects.get().status == "paid"


def test_a_failed_processing_is_recorded_redelivered_and_retried(fake_stripe, deliver, monkeypatch):
    user = prepaid_user(id="auth0|buyer")
    session = {
        "id": "cs_test_flaky",
        "object": "checkout.session",
        "mode": "payment",
        "payment_status": "paid",
        "status": "complete",
        "amount_total": 1500,
        "currency": "usd",
        "client_reference_id": user.pk,
        "metadata": {"purpose": "credits", "user_id": user.pk},
        "customer": None,
    }
    event = make_event("checkout.session.completed", session)
    real_credits_add = purchases.credits_add  # the purchase is written there now

    def database_hiccup(**kwargs):
        raise OperationalError("the database went away for a moment")

    monkeypatch.setattr(purchases, "credits_add", database_hiccup)
    first = deliver(event)  # stored and queued; the worker's attempt fails
    assert first.status_code == 200  # kept: the job and retry_stripe_events retry it
    stored = StripeEvent.objects.get()
    assert stored.status == "failed" and "went away" in stored.error

    monkeypatch.setattr(purchases, "credits_add", real_credits_add)
    call_command("retry_stripe_events")  # exits non-zero if anything still fails
    stored.refresh_from_db()
    assert stored.status == "processed" and stored.attempts == 2
    assert deliver(event).status_code == 200  # a redelivery now is a duplicate
    assert CreditLedgerEntry.objects.get().amount == D("15")


def test_other_event_types_are_stored_and_ignored(deliver, fake_stripe):
    response = deliver(make_event("customer.updated", {"id": "cus_x", "object": "customer"}))
    assert response.status_code == 200
    assert StripeEvent.objects.get().status == "ignored"


# Subscriptions and the billing gate ----------------------------------------------------


def test_racing_subscriptions_leave_exactly_one_active(fake_stripe, deliver):
    user = UserFactory()
    customer = customer_ensure(user=user)
    first = fake_stripe.add_subscription(
        customer=customer, status="active", metadata={"user_id": user.pk}
    )
    second = fake_stripe.add_subscription(
        customer=customer, status="active", metadata={"user_id": user.pk}
    )

    deliver(make_event("customer.subscription.created", first))
    deliver(make_event("customer.subscription.created", second))

    account = BillingProfile.objects.get(user=user)
    assert (account.stripe_subscription_id, account.subscription_status) == (first["id"], "active")
    canceled = fake_stripe.requests_to("DELETE", f"/v1/subscriptions/{second['id']}")
    assert len(canceled) == 1
    assert not fake_stripe.requests_to("DELETE", f"/v1/subscriptions/{first['id']}")


def subscription_event(subscription, status, created, event_type="customer.subscription.updated"):
    return make_event(event_type, {**subscription, "status": status}, created=created)


@pytest.mark.parametrize("ended", ["canceled", "incomplete_expired"])
def test_an_ended_subscription_is_not_revived_by_a_later_active_event(fake_stripe, deliver, ended):
    user = UserFactory()
    customer = customer_ensure(user=user)
    subscription = fake_stripe.add_subscription(customer=customer, status=ended)
    now = int(time.time())

    deliver(subscription_event(subscription, "active", now - 20))
    deliver(subscription_event(subscription, ended, now - 10, "customer.subscription.deleted"))
    deliver(subscription_event(subscription, "active", now))  # newer, yet the id is over

    account = BillingProfile.objects.get(user=user)
    assert (account.stripe_subscription_id, account.subscription_status) == (
        subscription["id"],
        ended,
    )
    assert not account.has_active_subscription


def test_a_late_active_event_of_an_ended_subscription_does_not_replace_its_successor(
    fake_stripe, deliver
):
    user = UserFactory()
    customer = customer_ensure(user=user)
    old = fake_stripe.add_subscription(customer=customer, status="canceled")
    new = fake_stripe.add_subscription(customer=customer, status="active")
    now = int(time.time())
    deliver(subscription_event(old, "canceled", now - 30, "customer.subscription.deleted"))
    deliver(subscription_event(new, "active", now - 20, "customer.subscription.created"))
    fake_stripe.subscriptions[new["id"]]["status"] = "canceled"
    deliver(subscription_event(new, "canceled", now - 10, "customer.subscription.deleted"))

    deliver(subscription_event(old, "active", now))  # Stripe has it canceled

    account = BillingProfile.objects.get(user=user)
    assert (account.stripe_subscription_id, account.subscription_status) == (new["id"], "canceled")


@pytest.mark.parametrize("at_stripe", ["active", "past_due"])
@pytest.mark.parametrize("order", [("active", "past_due"), ("past_due", "active")])
def test_subscription_events_of_one_second_end_as_stripe_has_the_subscription(
    fake_stripe, deliver, at_stripe, order
):
    user = UserFactory()
    customer = customer_ensure(user=user)
    subscription = fake_stripe.add_subscription(customer=customer, status=at_stripe)
    now = int(time.time())

    for status in order:
        deliver(subscription_event(subscription, status, now))

    account = BillingProfile.objects.get(user=user)
    assert account.subscription_status == at_stripe
