"""The Stripe webhook endpoint: whatever a signed body holds, the answer is a 2xx, a 400 or
(stored and queued for a worker) a 200, never a 500; events for customers we do
not know are kept as "unmatched" and answered 200."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing.checkout import customer_ensure
from billing.models import BillingHistory, CreditLedgerEntry, StripeEvent
from tests import strategies
from tests.factories import UserFactory
from tests.fakes.stripe import WEBHOOK_SECRET, make_event, sign_payload
from tests.jobs import run_jobs, run_queued_jobs

pytestmark = pytest.mark.django_db


def post_signed(client, payload: bytes):
    return client.post(
        "/webhooks/stripe/",
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=sign_payload(payload, WEBHOOK_SECRET),
    )


def credit_session(user_id: str) -> dict:
    return {
        "id": "cs_test_1",
        "object": "checkout.session",
        "mode": "payment",
        "payment_status": "paid",
        "status": "complete",
        "amount_total": 1500,
        "currency": "usd",
        "client_reference_id": user_id,
        "metadata": {"purpose": "credits", "user_id": user_id},
        "customer": "cus_unknown_1",
    }


# Stored at once, applied by a worker


def test_a_delivery_is_stored_and_queued_and_applied_only_by_the_worker(fake_stripe, deliver):
    user = UserFactory(id="auth0|buyer")

    response = deliver(
        make_event("checkout.session.completed", credit_session(user.pk)), process=False
    )

    assert response.status_code == 200
    assert StripeEvent.objects.get().status == "received"
    assert not CreditLedgerEntry.objects.exists()  # nothing applied inside Stripe's request
    # The event's job, then the check of the user's standing that the new credits queued.
    assert run_queued_jobs() == [
        ("billing.process_stripe_event", "succeeded"),
        ("billing.evaluate_standing", "succeeded"),
    ]
    assert StripeEvent.objects.get().status == "processed"
    assert CreditLedgerEntry.objects.get().amount == Decimal("15")


def test_a_redelivery_of_a_processed_event_queues_nothing(fake_stripe, deliver):
    user = UserFactory(id="auth0|buyer")
    event = make_event("checkout.session.completed", credit_session(user.pk))
    deliver(event)

    assert deliver(event, process=False).status_code == 200
    assert run_queued_jobs() == []
    assert CreditLedgerEntry.objects.count() == 1


# Customers we do not know (yet)


def test_an_event_for_a_customer_we_do_not_know_is_answered_200_and_kept_unmatched(
    fake_stripe, deliver
):
    response = deliver(make_event("checkout.session.completed", credit_session("auth0|nobody")))

    assert response.status_code == 200
    stored = StripeEvent.objects.get()
    assert stored.status == "unmatched"
    assert "no user of ours" in stored.error
    assert stored.attempts == 1
    assert not CreditLedgerEntry.objects.exists()


def test_an_invoice_for_a_customer_we_do_not_know_is_unmatched_not_an_orphan_row(
    fake_stripe, deliver
):
    invoice = fake_stripe.add_invoice(customer="cus_unknown_2", status="paid", amount_due=100)

    response = deliver(make_event("invoice.paid", invoice))

    assert response.status_code == 200
    assert StripeEvent.objects.get().status == "unmatched"
    assert not BillingHistory.objects.exists()


def test_an_unmatched_event_is_processed_again_from_the_admin_once_the_user_exists(
    fake_stripe, deliver, operator_client
):
    deliver(make_event("checkout.session.completed", credit_session("auth0|later")))
    event = StripeEvent.objects.get()
    UserFactory(id="auth0|later")

    with run_jobs():  # the admin queues the event's processing; a worker runs it
        operator_client.post(
            "/admin/billing/stripeevent/",
            {"action": "process_again", "_selected_action": [event.pk]},
            follow=True,
        )

    event.refresh_from_db()
    assert (event.status, event.attempts, event.error) == ("processed", 2, "")
    assert CreditLedgerEntry.objects.get().amount == Decimal("15")


def test_a_redelivered_unmatched_event_stays_unmatched_and_is_still_200(fake_stripe, deliver):
    event = make_event("checkout.session.completed", credit_session("auth0|nobody"))

    assert deliver(event).status_code == 200
    assert deliver(event).status_code == 200
    assert StripeEvent.objects.get().status == "unmatched"


# Bodies that must be a 400 (or kept), never a 500


def test_a_nul_character_in_a_signed_event_is_kept_replaced_not_a_500(fake_stripe, deliver):
    user = UserFactory()
    customer = customer_ensure(user=user)
    invoice = fake_stripe.add_invoice(customer=customer, status="paid", amount_due=1234)
    invoice["description"] = "pay\x00ment"

    response = deliver(make_event("invoice.paid", invoice))

    assert response.status_code == 200
    stored = StripeEvent.objects.get()
    assert stored.status == "processed"
    assert stored.payload["data"]["object"]["description"] == "pay\ufffdment"
    assert BillingHistory.objects.get().description == "pay\ufffdment"


def test_a_nul_character_in_a_key_or_the_type_is_kept_replaced(fake_stripe, deliver):
    event = make_event("customer.up\x00dated", {"id": "cus_x", "object": "customer", "k\x00": 1})

    response = deliver(event)

    assert response.status_code == 200
    stored = StripeEvent.objects.get()
    assert stored.type == "customer.up\ufffddated"
    assert "k\ufffd" in stored.payload["data"]["object"]


@pytest.mark.parametrize("created", [1e20, 10**20, -1, "yesterday", None, True, 1.5])
def test_a_created_that_is_not_a_timestamp_is_a_400(fake_stripe, deliver, created):
    event = make_event("customer.updated", {"id": "cus_x", "object": "customer"})
    event["created"] = created

    response = deliver(event)

    assert response.status_code == 400
    assert "created" in response.json()["error"]
    assert not StripeEvent.objects.exists()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"id": 12}, "id"),
        ({"id": ""}, "id"),
        ({"type": ["invoice.paid"]}, "type"),
        ({"data": {"object": "not an object"}}, "data.object"),
        ({"data": None}, "data.object"),
    ],
)
def test_an_event_without_the_stripe_envelope_is_a_400(fake_stripe, deliver, change, words):
    event = {**make_event("customer.updated", {"id": "cus_x"}), **change}

    response = deliver(event)

    assert response.status_code == 400
    assert words in response.json()["error"]
    assert not StripeEvent.objects.exists()


def test_a_deeply_nested_signed_body_is_a_400(fake_stripe, client):
    payload = b'{"id": "evt_1", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

    assert post_signed(client, payload).status_code == 400
    assert not StripeEvent.objects.exists()


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"1e400"])
def test_numbers_postgresql_cannot_store_are_a_400(fake_stripe, client, constant):
    event = make_event("customer.updated", {"id": "cus_x", "object": "customer"})
    payload = json.dumps(event).encode().replace(b'"livemode": false', b'"livemode": ' + constant)

    assert post_signed(client, payload).status_code == 400
    assert not StripeEvent.objects.exists()


# No signed body at all is a server error

json_values = strategies.json_values(max_leaves=25)
event_types = st.sampled_from(
    [
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
        "customer.subscription.created",
        "customer.subscription.deleted",
        "invoice.paid",
        "invoice.voided",
        "customer.updated",
    ]
)
stripe_object = st.fixed_dictionaries(
    {"id": st.text(max_size=12)},
    optional={
        "mode": st.sampled_from(["payment", "subscription", "setup"]) | json_values,
        "payment_status": st.sampled_from(["paid", "unpaid"]) | json_values,
        "status": st.sampled_from(["complete", "active", "canceled", "paid"]) | json_values,
        "amount_total": st.integers() | json_values,
        "amount_due": st.integers() | json_values,
        "currency": st.sampled_from(["usd", "jpy", "xx", ""]) | json_values,
        "customer": st.text(max_size=12) | json_values,
        "client_reference_id": st.text(max_size=12) | json_values,
        "metadata": st.dictionaries(st.sampled_from(["purpose", "user_id"]), st.text(max_size=8))
        | json_values,
        "subscription": st.text(max_size=12) | json_values,
        "period_start": st.integers() | json_values,
        "period_end": st.integers() | json_values,
        "created": st.integers() | json_values,
    },
)
events = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=20) | json_values,
        "type": event_types | json_values,
        "created": st.integers(min_value=-(10**12), max_value=10**21) | json_values,
        "data": st.fixed_dictionaries({"object": stripe_object}) | json_values,
    },
    optional={"livemode": json_values},
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(event=events)
def test_no_signed_event_is_a_server_error(fake_stripe, client, event):
    response = post_signed(client, json.dumps(event).encode())

    assert response.status_code in (200, 400, 503), response.content[:300]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_no_signed_body_is_a_server_error(fake_stripe, client, payload):
    response = post_signed(client, payload)

    assert response.status_code in (200, 400, 503), response.content[:300]


def test_the_signature_is_still_checked_first(fake_stripe, client):
    payload = json.dumps(make_event("customer.updated", {"id": "c"})).encode()
    response = client.post(
        "/webhooks/stripe/",
        payload,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=f"t={int(time.time())},v1=00",
    )

    assert response.status_code == 400
    assert not StripeEvent.objects.exists()


@pytest.mark.parametrize("event_id", ["evt_1\n2", "evt_\r\x85", "evt_ü\u2028"])
def test_an_event_id_with_a_line_break_delivered_twice_is_no_server_error(
    fake_stripe, client, event_id
):
    # The queueing lock of its job names the event: Procrastinate reads a duplicate lock
    # back from PostgreSQL's error text, which a line break used to break (a 500).
    event = make_event("customer.updated", {"id": "c"})
    event["id"] = event_id

    first = post_signed(client, json.dumps(event).encode())
    again = post_signed(client, json.dumps(event).encode())

    assert first.status_code in (200, 400), first.content[:300]
    assert again.status_code == first.status_code, again.content[:300]
