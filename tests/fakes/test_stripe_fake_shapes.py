"""The fake Stripe answers with objects shaped like Stripe's published examples.

Every object is made and read over HTTP with the real `stripe` SDK, and its raw JSON body is
compared with `stripe_fields.json` (the field names of Stripe's examples, written by
`refresh_stripe_fields.py`): each published field is there and nothing Stripe lacks. Objects
inside objects (list pages, subscription items and their prices, invoice lines, an event's
data) are compared too, as far down as our code reads them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import stripe

from billing.stripe_gateway import STRIPE_API_VERSION
from tests.fakes.stripe import FakeStripe, make_event

FIELDS: dict[str, list[str]] = json.loads(
    Path(__file__).with_name("stripe_fields.json").read_text()
)
# A subscription and what it carries: its items, each with its price and the legacy plan.
SUBSCRIPTION = {"subscription", "list", "subscription_item", "price", "price.recurring", "plan"}


@pytest.fixture
def sdk(fake_stripe) -> stripe.StripeClient:
    # The SDK itself, pointed at the fake as the gateway points it: these tests are about
    # what the fake answers, whatever our code asks.
    return stripe.StripeClient(
        fake_stripe.api_key,
        stripe_version=STRIPE_API_VERSION,
        base_addresses={"api": fake_stripe.api_base},
        max_network_retries=0,
    )


def raw(obj: Any) -> dict:
    """The JSON body the fake sent, as it came over the wire."""
    return json.loads(obj.last_response.body)


def published_shapes(body: Any, *, parent: str | None = None) -> set[str]:
    """Check every Stripe object in `body` (and the nested hashes `stripe_fields.json` names,
    such as `price.recurring`) against the published field names; return the shapes checked."""
    checked: set[str] = set()
    if isinstance(body, list):
        for element in body:
            checked |= published_shapes(element)
        return checked
    if not isinstance(body, dict):
        return checked
    kind = parent or (body["object"] if isinstance(body.get("object"), str) else None)
    if kind is not None:
        assert kind in FIELDS, f"the fake makes a {kind!r}, which stripe_fields.json lacks"
        published = set(FIELDS[kind])
        if kind == "subscription_item" and body["price"]["recurring"]["usage_type"] == "metered":
            published.discard("quantity")  # Stripe leaves it out of a metered item
        missing, extra = sorted(published - body.keys()), sorted(body.keys() - published)
        assert not missing and not extra, f"{kind}: missing {missing}, extra {extra}"
        checked.add(kind)
    for key, value in body.items():
        nested = f"{kind}.{key}"
        if isinstance(value, dict) and nested in FIELDS:
            checked |= published_shapes(value, parent=nested)
        elif isinstance(value, dict | list) and key != "metadata":
            checked |= published_shapes(value)
    return checked


def metered_price(sdk: stripe.StripeClient, event_name: str = "cpu_hours") -> Any:
    meter = sdk.v1.billing.meters.create(
        params={
            "display_name": "CPU hours",
            "event_name": event_name,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": "stripe_customer_id", "type": "by_id"},
            "value_settings": {"event_payload_key": "value"},
        }
    )
    product = sdk.v1.products.create(params={"id": f"platform_{event_name}", "name": "CPU hours"})
    return sdk.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": 4,
            "product": product.id,
            "lookup_key": f"platform_{event_name}",
            "transfer_lookup_key": True,
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
            "billing_scheme": "per_unit",
        }
    )


def test_a_customer_has_the_published_fields(sdk):
    created = sdk.v1.customers.create(params={"email": "ada@example.com", "name": "Ada"})
    read = sdk.v1.customers.retrieve(created.id)

    assert published_shapes(raw(created)) == published_shapes(raw(read)) == {"customer"}


def test_a_credit_checkout_session_has_the_published_fields_before_and_after_payment(
    sdk, fake_stripe
):
    customer = sdk.v1.customers.create(params={"email": "ada@example.com"})
    session = sdk.v1.checkout.sessions.create(
        params={
            "mode": "payment",
            "customer": customer.id,
            "client_reference_id": "42",
            "line_items": [
                {
                    "price_data": {
                        "currency": "usd",
                        "unit_amount": 2500,
                        "product_data": {"name": "Platform credits"},
                    },
                    "quantity": 1,
                }
            ],
            "metadata": {"purpose": "credits"},
            "payment_intent_data": {"metadata": {"user_id": "42"}},
            "success_url": "https://console.example.com/ok",
            "cancel_url": "https://console.example.com/",
        }
    )
    assert published_shapes(raw(session)) == {"checkout.session"}

    fake_stripe.complete_checkout(session.id)
    paid = sdk.v1.checkout.sessions.retrieve(session.id)

    assert published_shapes(raw(paid)) == {"checkout.session"}
    assert (paid.status, paid.payment_status) == ("complete", "paid")


def test_a_subscription_from_checkout_has_the_published_fields_down_to_its_prices(sdk, fake_stripe):
    customer = sdk.v1.customers.create(params={"email": "ada@example.com"})
    price = metered_price(sdk)
    session = sdk.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "customer": customer.id,
            "line_items": [{"price": price.id}],
            "subscription_data": {
                "metadata": {"user_id": "42"},
                "billing_cycle_anchor": int(time.time()) + 86400,
            },
            "success_url": "https://console.example.com/ok",
            "cancel_url": "https://console.example.com/",
        }
    )
    assert published_shapes(raw(session)) == {"checkout.session"}
    completed = fake_stripe.complete_checkout(session.id)

    subscription = sdk.v1.subscriptions.retrieve(completed["subscription"])
    canceled = sdk.v1.subscriptions.cancel(subscription.id)

    assert published_shapes(raw(subscription)) == published_shapes(raw(canceled)) == SUBSCRIPTION
    assert canceled.status == "canceled"
    assert "quantity" not in raw(subscription)["items"]["data"][0]  # as Stripe, for metered


def test_a_subscription_to_a_licensed_price_has_the_published_fields_and_a_quantity(
    sdk, fake_stripe
):
    customer = fake_stripe.add_customer(email="ada@example.com")
    product = sdk.v1.products.create(params={"id": "seat", "name": "Seat"})
    price = sdk.v1.prices.create(
        params={
            "currency": "usd",
            "unit_amount": 1000,
            "product": product.id,
            "recurring": {"interval": "month", "usage_type": "licensed"},
        }
    )
    added = fake_stripe.add_subscription(customer=customer["id"], price_ids=[price.id])

    subscription = sdk.v1.subscriptions.retrieve(added["id"])

    assert published_shapes(raw(subscription)) == SUBSCRIPTION
    assert subscription["items"]["data"][0]["quantity"] == 1


def test_meters_and_a_page_of_meters_have_the_published_fields(sdk, fake_stripe):
    created = metered_price(sdk).recurring.meter
    fake_stripe.add_meter(event_name="retired", status="inactive")

    page = sdk.v1.billing.meters.list(params={"limit": 10})

    assert published_shapes(raw(page)) == {"list", "billing.meter"}
    assert created in {meter.id for meter in page.data}
    assert {meter.status for meter in page.data} == {"active", "inactive"}


def test_a_meter_event_has_the_published_fields(sdk):
    event = sdk.v1.billing.meter_events.create(
        params={
            "event_name": "cpu_hours",
            "payload": {"stripe_customer_id": "cus_123", "value": "12"},
            "identifier": "usage-1",
            "timestamp": int(time.time()),
        }
    )

    assert published_shapes(raw(event)) == {"billing.meter_event"}


def test_products_prices_and_a_page_of_prices_have_the_published_fields(sdk):
    price = metered_price(sdk)
    product = sdk.v1.products.retrieve(price.product)
    page = sdk.v1.prices.list(params={"lookup_keys": ["platform_cpu_hours"], "active": True})

    assert published_shapes(raw(product)) == {"product"}
    assert published_shapes(raw(price)) == {"price", "price.recurring"}
    assert published_shapes(raw(page)) == {"list", "price", "price.recurring"}
    assert [p.id for p in page.data] == [price.id]


@pytest.mark.parametrize("status", ["draft", "open", "paid", "uncollectible", "void"])
def test_invoices_their_lines_and_a_page_of_invoices_have_the_published_fields(
    sdk, fake_stripe, status
):
    customer = fake_stripe.add_customer(email="ada@example.com")
    subscription = fake_stripe.add_subscription(customer=customer["id"])
    added = fake_stripe.add_invoice(
        customer=customer["id"], status=status, amount_due=1234, subscription=subscription["id"]
    )
    fake_stripe.add_invoice(customer=customer["id"], status=status, amount_due=99)

    page = sdk.v1.invoices.list(params={"customer": customer["id"], "limit": 100})
    invoice = sdk.v1.invoices.retrieve(added["id"])

    everything = {"list", "invoice", "line_item", "line_item.period"}
    assert published_shapes(raw(page)) == published_shapes(raw(invoice)) == everything
    assert len(page.data) == 2


def test_an_invoice_preview_has_the_published_fields_and_is_not_kept(sdk, fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    subscription = fake_stripe.add_subscription(customer=customer["id"])
    sdk.v1.invoice_items.create(
        params={"customer": customer["id"], "amount": 250, "currency": "usd"}
    )

    preview = sdk.v1.invoices.create_preview(
        params={"customer": customer["id"], "subscription": subscription["id"]}
    )

    everything = {"invoice", "list", "line_item", "line_item.period"}
    assert published_shapes(raw(preview)) == everything
    assert (preview.total, preview.amount_due, preview.status) == (250, 250, "draft")
    assert fake_stripe.invoices == {}


def test_invoice_items_and_a_page_of_them_have_the_published_fields(sdk, fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    subscription = fake_stripe.add_subscription(customer=customer["id"])
    created = sdk.v1.invoice_items.create(
        params={
            "customer": customer["id"],
            "amount": -1234,
            "currency": "usd",
            "description": "Usage correction",
            "subscription": subscription["id"],
        }
    )
    page = sdk.v1.invoice_items.list(params={"customer": customer["id"], "limit": 100})

    shapes = {"invoiceitem", "invoiceitem.period"}
    assert published_shapes(raw(created)) == shapes
    assert published_shapes(raw(page)) == {"list", *shapes}
    assert [(i.amount, i.parent.subscription_details.subscription) for i in page.data] == [
        (-1234, subscription["id"])
    ]


def test_a_page_of_meter_event_summaries_has_the_published_fields_and_sums_the_range(sdk):
    meter = metered_price(sdk).recurring.meter
    now = int(time.time()) // 60 * 60
    for value, at in (("12", now - 120), ("-2", now - 60), ("100", now)):
        sdk.v1.billing.meter_events.create(
            params={
                "event_name": "cpu_hours",
                "payload": {"stripe_customer_id": "cus_123", "value": value},
                "timestamp": at,
            }
        )

    page = sdk.v1.billing.meters.event_summaries.list(
        meter, params={"customer": "cus_123", "start_time": now - 3600, "end_time": now}
    )

    assert published_shapes(raw(page)) == {"list", "billing.meter_event_summary"}
    assert [s.aggregated_value for s in page.data] == [10]  # end_time is exclusive


def test_a_webhook_event_has_the_published_fields(sdk, fake_stripe):
    customer = sdk.v1.customers.create(params={"email": "ada@example.com"})
    event = make_event("customer.created", raw(customer))

    assert published_shapes(event) == {"event", "event.data", "event.request", "customer"}


def test_every_kind_of_object_the_fake_serves_has_published_fields_to_match():
    assert {resource.kind for resource in FakeStripe.RESOURCES} <= FIELDS.keys()


def test_a_missing_field_an_extra_field_and_an_unknown_object_are_caught():
    customer = {**dict.fromkeys(FIELDS["customer"]), "object": "customer"}
    assert published_shapes(customer) == {"customer"}

    del customer["discount"]
    with pytest.raises(AssertionError, match=r"customer: missing \['discount'\], extra \[\]"):
        published_shapes(customer)
    with pytest.raises(AssertionError, match=r"extra \['total_count'\]"):
        published_shapes(
            {"object": "list", "data": [], "has_more": False, "url": "/", "total_count": 0}
        )
    with pytest.raises(AssertionError, match="makes a 'coupon'"):
        published_shapes({"object": "coupon"})


def test_credit_notes_and_a_page_of_them_have_the_published_fields(sdk, fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    invoice = fake_stripe.add_invoice(customer=customer["id"], status="paid", amount_due=1000)
    note = fake_stripe.add_credit_note(invoice_id=invoice["id"], amount=300, refund_amount=100)
    fake_stripe.void_credit_note(note["id"])

    page = sdk.v1.credit_notes.list(params={"invoice": invoice["id"], "limit": 100})
    read = sdk.v1.credit_notes.retrieve(note["id"])

    assert published_shapes(raw(page)) == {"list", "credit_note"}
    assert published_shapes(raw(read)) == {"list", "credit_note"}  # its (empty) lines
    assert (read.status, read.amount, read.type) == ("void", 300, "post_payment")


def test_a_refunded_charge_its_refunds_and_the_invoice_payment_have_the_published_fields(
    sdk, fake_stripe
):
    customer = fake_stripe.add_customer(email="ada@example.com")
    invoice = fake_stripe.add_invoice(customer=customer["id"], status="open", amount_due=1000)
    charge = fake_stripe.pay_invoice(invoice["id"])
    fake_stripe.refund_charge(charge["id"], 400)

    read = sdk.v1.charges.retrieve(charge["id"])
    payments = sdk.v1.invoice_payments.list(
        params={"payment": {"type": "payment_intent", "payment_intent": charge["payment_intent"]}}
    )

    assert published_shapes(raw(read)) == {"charge", "list", "refund"}
    assert published_shapes(raw(payments)) == {"list", "invoice_payment"}
    assert [p.invoice for p in payments.data] == [invoice["id"]]
    assert (read.amount_refunded, read.refunded) == (400, False)


def test_a_refund_created_listed_and_a_dispute_have_the_published_fields(sdk, fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    charge = fake_stripe.add_charge(customer=customer["id"], amount=2500)

    created = sdk.v1.refunds.create(
        params={"payment_intent": charge["payment_intent"], "amount": 1000}
    )
    listed = sdk.v1.refunds.list(params={"charge": charge["id"]})
    read = sdk.v1.charges.retrieve(charge["id"])
    dispute = fake_stripe.dispute_charge(charge["id"])

    assert published_shapes(raw(created)) == {"refund"}
    assert published_shapes(raw(listed)) == {"list", "refund"}
    assert published_shapes(raw(read)) == {"charge", "list", "refund"}
    assert published_shapes(dispute) == {"dispute"}
    assert [r.id for r in listed.data] == [created.id]
    assert (created.amount, created.charge, read.amount_refunded) == (1000, charge["id"], 1000)
    assert (dispute["amount"], dispute["charge"]) == (2500, charge["id"])


def test_a_refund_larger_than_what_is_left_is_refused_as_stripe_does(sdk, fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    charge = fake_stripe.add_charge(customer=customer["id"], amount=2500)

    with pytest.raises(stripe.InvalidRequestError, match="greater than unrefunded"):
        sdk.v1.refunds.create(params={"payment_intent": charge["payment_intent"], "amount": 2501})
    assert fake_stripe.charges[charge["id"]]["amount_refunded"] == 0


def test_meter_event_summaries_and_usage_invoice_lines_have_the_published_fields(sdk, fake_stripe):
    price = metered_price(sdk)
    customer = fake_stripe.add_customer(email="ada@example.com")
    subscription = fake_stripe.add_subscription(customer=customer["id"], price_ids=[price.id])
    start = (int(time.time()) // 60 - 60) * 60
    for number, (value, at) in enumerate([(120, start + 5), (30, start + 60), (999, start - 1)]):
        sdk.v1.billing.meter_events.create(
            params={
                "event_name": "cpu_hours",
                "payload": {"stripe_customer_id": customer["id"], "value": str(value)},
                "identifier": f"e{number}",
                "timestamp": at,
            }
        )
    end = start + 3600
    invoice = fake_stripe.add_usage_invoice(
        subscription_id=subscription["id"], period_start=start, period_end=end
    )

    summaries = sdk.v1.billing.meters.event_summaries.list(
        price.recurring.meter,
        params={"customer": customer["id"], "start_time": start, "end_time": end},
    )
    lines = sdk.v1.invoices.line_items.list(invoice["id"])

    assert published_shapes(raw(summaries)) == {"list", "billing.meter_event_summary"}
    assert [s.aggregated_value for s in summaries.data] == [150]
    assert published_shapes(raw(lines)) == {"list", "line_item", "line_item.period"}
    [line] = lines.data
    assert (line.amount, line.quantity, line.pricing.price_details.price) == (600, 150, price.id)
    assert invoice["amount_due"] == 600


def test_customer_balance_transactions_have_the_published_fields_and_move_the_balance(
    sdk, fake_stripe
):
    customer = fake_stripe.add_customer(email="ada@example.com")
    created = sdk.v1.customers.balance_transactions.create(
        customer["id"],
        params={"amount": -1250, "currency": "usd", "description": "Goodwill: outage"},
    )
    page = sdk.v1.customers.balance_transactions.list(customer["id"], params={"limit": 100})

    assert published_shapes(raw(created)) == {"customer_balance_transaction"}
    assert published_shapes(raw(page)) == {"list", "customer_balance_transaction"}
    assert (created.amount, created.ending_balance, created.type) == (-1250, -1250, "adjustment")
    assert sdk.v1.customers.retrieve(customer["id"]).balance == -1250
    with pytest.raises(stripe.InvalidRequestError, match="No such customer"):
        sdk.v1.customers.balance_transactions.create(
            "cus_missing", params={"amount": -1, "currency": "usd"}
        )


def test_a_credit_note_created_on_an_open_invoice_lowers_what_is_due(sdk, fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    invoice = fake_stripe.add_invoice(customer=customer["id"], status="open", amount_due=1000)
    note = sdk.v1.credit_notes.create(
        params={"invoice": invoice["id"], "amount": 300, "memo": "Goodwill"}
    )

    assert published_shapes(raw(note)) == {"list", "credit_note"}
    assert (note.type, note.amount, note.memo) == ("pre_payment", 300, "Goodwill")
    assert sdk.v1.invoices.retrieve(invoice["id"]).amount_remaining == 700
    with pytest.raises(stripe.InvalidRequestError, match="amount remaining"):
        sdk.v1.credit_notes.create(params={"invoice": invoice["id"], "amount": 701})


# The v2 meter event stream (not in Stripe's published v1 examples: held to the SDK's types)


def test_a_meter_event_session_has_the_sdks_fields_and_its_token_opens_the_stream(sdk, fake_stripe):
    from stripe.v2.billing import MeterEventSession

    session = sdk.v2.billing.meter_event_session.create()
    body = raw(session)

    assert set(body) == set(MeterEventSession.__annotations__) - {"OBJECT_NAME"}
    assert body["object"] == "v2.billing.meter_event_session" and body["livemode"] is False
    assert body["expires_at"].endswith("Z") and body["expires_at"] > body["created"]
    stream = stripe.StripeClient(
        fake_stripe.api_key,
        stripe_version=STRIPE_API_VERSION,
        base_addresses={"api": fake_stripe.api_base, "meter_events": fake_stripe.api_base},
    )
    event = {
        "event_name": "cpu_hours",
        "identifier": "e1",
        "payload": {"stripe_customer_id": "cus_1", "value": "5"},
        "timestamp": body["created"],
    }
    stream.v2.billing.meter_event_stream.create(
        params={"events": [event]}, options={"api_key": body["authentication_token"]}
    )
    with pytest.raises(stripe.AuthenticationError):  # the secret key does not open it
        stream.v2.billing.meter_event_stream.create(params={"events": [event]})
    fake_stripe.expire_meter_event_sessions()
    with pytest.raises(stripe.TemporarySessionExpiredError):
        stream.v2.billing.meter_event_stream.create(
            params={"events": [event]}, options={"api_key": body["authentication_token"]}
        )
    assert fake_stripe.meter_event_totals("cpu_hours", "cus_1") == 5
