"""Money through Stripe: customers, credit top-ups, subscriptions, webhooks, invoices.

The real stripe SDK talks to a local fake Stripe; webhooks are signed with Stripe's scheme.
"""

import time
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import OperationalError

from accounts.models import User
from billing import stripe_events
from billing.checkout import customer_ensure
from billing.models import BillingHistory, BillingProfile, CreditLedgerEntry, StripeEvent
from clusters.models import CapacityWait
from clusters.models import UserHopsworksAssignment as Assignment
from tests.concurrency import run_at_once
from tests.factories import ClusterFactory, UserFactory
from tests.fakes.raw_servers import DripServer, http_response
from tests.fakes.stripe import make_event
from tests.jobs import run_jobs, run_queued_jobs

pytestmark = pytest.mark.django_db
D = Decimal


def login(client, user):
    client.force_login(user, backend="django.contrib.auth.backends.ModelBackend")


def prepaid_user(**fields):
    user = UserFactory(**fields)
    BillingProfile.objects.create(user=user, mode=BillingProfile.Mode.PREPAID)
    return user


def balance(user):
    from billing.selectors import credit_balance

    return credit_balance(user)


def buy(client, fake_stripe, user, amount="25"):
    login(client, user)
    response = client.post("/billing/credits/", {"amount": amount, "request_key": "k1"})
    [request] = fake_stripe.requests_to("POST", "/v1/checkout/sessions")
    [session_id] = fake_stripe.checkout_sessions
    return response, request, session_id


def test_the_first_billing_need_creates_one_customer(fake_stripe):
    user = UserFactory(email="ada@example.com")
    first = customer_ensure(user=user)
    again = customer_ensure(user=User.objects.get(pk=user.pk))

    assert first == again == User.objects.get(pk=user.pk).stripe_customer_id
    [created] = fake_stripe.requests_to("POST", "/v1/customers")
    assert created.form["email"] == "ada@example.com"
    assert created.form["metadata[user_id]"] == user.pk
    assert created.idempotency_key == f"customer-{user.pk}"


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_requests_create_one_customer(fake_stripe):
    user = UserFactory()
    results = []

    def worker(_):
        results.append(customer_ensure(user=User.objects.get(pk=user.pk)))

    run_at_once(worker, range(6))

    assert len(set(results)) == 1 and len(results) == 6
    assert len(fake_stripe.customers) == 1


def test_buying_credits_opens_checkout_and_adds_nothing_until_stripe_says_paid(client, fake_stripe):
    user = prepaid_user()
    response, request, session_id = buy(client, fake_stripe, user, "25")

    assert response.status_code == 302
    assert response["Location"] == fake_stripe.checkout_sessions[session_id]["url"]
    assert request.form["mode"] == "payment"
    assert request.form["line_items[0][price_data][unit_amount]"] == "2500"
    assert request.form["line_items[0][price_data][currency]"] == "usd"
    assert request.form["client_reference_id"] == user.pk
    assert request.form["metadata[purpose]"] == "credits"
    assert request.idempotency_key.startswith("credit-checkout-")
    # Coming back from Checkout is not a payment.
    client.get("/?checkout=credits")
    assert balance(user) == 0
    assert not CreditLedgerEntry.objects.exists()


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


@pytest.mark.parametrize("amount", ["2", "100000", "ten", "12.345"])
def test_a_top_up_outside_the_limits_is_refused_before_stripe(client, fake_stripe, amount):
    user = prepaid_user()
    login(client, user)
    response = client.post("/billing/credits/", {"amount": amount}, follow=True)
    assert response.status_code == 200
    assert [str(m) for m in response.context["messages"]]
    assert not fake_stripe.requests_to("POST", "/v1/checkout/sessions")


def test_without_stripe_the_page_says_so_and_nothing_fails(client, settings):
    settings.STRIPE_SECRET_KEY = ""
    user = prepaid_user()
    login(client, user)
    page = client.get("/").content.decode()
    assert "Stripe is not configured" in page
    response = client.post("/billing/credits/", {"amount": "25"}, follow=True)
    assert any("not configured" in str(m) for m in response.context["messages"])


def test_stripe_down_is_a_clear_message_not_an_error(client, fake_stripe):
    user = prepaid_user()
    fake_stripe.fail_next(5, status=503)
    login(client, user)
    response = client.post("/billing/credits/", {"amount": "25"}, follow=True)
    assert response.status_code == 200
    assert any(
        "could not reach our payment provider" in str(m) for m in response.context["messages"]
    )


def test_a_slow_payment_provider_is_a_clear_message_within_the_deadline(
    client, fake_stripe, settings
):
    settings.OUTBOUND_DEADLINE_SECONDS = 1.0
    user = prepaid_user()
    login(client, user)
    answer = http_response(200, b'{"id": "cus_slow"}' + b" " * 400)
    with DripServer(answer, interval=0.05) as slow:
        settings.STRIPE_API_BASE = slow.url
        started = time.monotonic()
        response = client.post("/billing/credits/", {"amount": "25"}, follow=True)
        elapsed = time.monotonic() - started

    assert response.status_code == 200
    assert any(
        "could not reach our payment provider" in str(m) for m in response.context["messages"]
    )
    assert elapsed < 1.0 + 1.5
    assert slow.connections == 1


# Webhooks -------------------------------------------------------------------------------


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
    real_credits_add = stripe_events.credits_add

    def database_hiccup(**kwargs):
        raise OperationalError("the database went away for a moment")

    monkeypatch.setattr(stripe_events, "credits_add", database_hiccup)
    first = deliver(event)  # stored and queued; the worker's attempt fails
    assert first.status_code == 200  # kept: the job and retry_stripe_events retry it
    stored = StripeEvent.objects.get()
    assert stored.status == "failed" and "went away" in stored.error

    monkeypatch.setattr(stripe_events, "credits_add", real_credits_add)
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


def test_a_postpaid_user_adds_a_payment_method_through_checkout(client, fake_stripe):
    call_command("setup_stripe_billing")
    user = UserFactory()
    login(client, user)

    response = client.post("/billing/payment-method/", {"request_key": "k"})

    assert response.status_code == 302
    [request] = fake_stripe.requests_to("POST", "/v1/checkout/sessions")
    assert request.form["mode"] == "subscription"
    assert request.form["client_reference_id"] == user.pk
    prices = {v for k, v in request.form.items() if k.endswith("[price]")}
    assert len(prices) == 4
    assert not any(k.endswith("[quantity]") for k in request.form)
    assert int(request.form["subscription_data[billing_cycle_anchor]"]) > time.time()


def test_sync_invoices_repairs_missed_webhooks(operator_client, fake_stripe):
    user = UserFactory()
    customer = customer_ensure(user=user)
    fake_stripe.add_invoice(customer=customer, status="paid", amount_due=999)
    fake_stripe.add_invoice(customer=customer, status="open", amount_due=100)

    response = operator_client.post(
        "/admin/accounts/user/",
        {"action": "sync_invoices", "_selected_action": [user.pk]},
        follow=True,
    )
    assert "1 invoice sync job(s) queued" in response.content.decode()
    assert not BillingHistory.objects.exists()  # nothing from Stripe inside the request

    run_queued_jobs()
    assert sorted(BillingHistory.objects.values_list("status", "amount")) == [
        ("paid", D("9.99")),
        ("pending", D("1.00")),
    ]


def test_the_stripe_admin_pages_open(operator_client, fake_stripe, deliver):
    user = UserFactory()
    customer = customer_ensure(user=user)
    deliver(make_event("invoice.paid", fake_stripe.add_invoice(customer=customer, amount_due=5)))
    for url in [
        "/admin/billing/billinghistory/",
        "/admin/billing/stripeevent/",
        "/admin/billing/stripecatalogentry/",
        "/admin/billing/stripeusagereport/",
        f"/admin/accounts/user/{user.pk}/change/",
    ]:
        page = operator_client.get(url)
        assert page.status_code == 200, url
    history = operator_client.get("/admin/billing/billinghistory/").content.decode()
    assert "https://dashboard.stripe.com/test/invoices/" in history
