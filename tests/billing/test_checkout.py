"""Paying through Stripe Checkout: the customer, credit top-ups, a postpaid user's payment
method; Stripe down or slow is a clear message.

The real stripe SDK talks to a local fake Stripe; webhooks are signed with Stripe's scheme.
"""

import time
from decimal import Decimal

import pytest
from django.core.management import call_command

from accounts.models import User
from billing.checkout import customer_ensure
from billing.models import CreditLedgerEntry
from tests.billing.stripe_helpers import balance, buy, login, prepaid_user
from tests.concurrency import run_at_once
from tests.factories import UserFactory
from tests.fakes.raw_servers import DripServer, http_response

pytestmark = pytest.mark.django_db
D = Decimal


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
