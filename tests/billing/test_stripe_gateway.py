"""The Stripe gateway, through the real `stripe` SDK, against a local Stripe
(tests/fakes/stripe.py). We assert on what our code sent: form fields in minor units,
references, metadata, idempotency keys, meter identifiers and the pinned Stripe-Version."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import json
import logging
import socket
import time
from decimal import Decimal

import pytest

from billing import stripe_gateway as gateway
from billing.stripe_gateway import (
    STRIPE_API_VERSION,
    CatalogItem,
    StripeGatewayError,
    StripeNotConfigured,
    WebhookSignatureError,
)
from plumbing import outbound
from tests.fakes.raw_servers import DripServer, RecordingListener, http_response
from tests.fakes.stripe import WEBHOOK_SECRET, make_event, sign_payload

USER_ID = "42"
SUCCESS_URL = "https://console.example.com/billing/success"
CANCEL_URL = "https://console.example.com/billing"


@pytest.fixture
def fast_retries(monkeypatch) -> list[int]:
    """Skip the SDK's back-off sleeps (0.5 s and up) where a test retries on purpose."""
    retries: list[int] = []

    def no_sleep(self, num_retries: int) -> float:
        retries.append(num_retries)
        return 0.0

    monkeypatch.setattr("stripe._http_client.HTTPClient._sleep_time_seconds", no_sleep)
    return retries


def catalog_items() -> list[CatalogItem]:
    return [
        CatalogItem(
            resource="cpu",
            display_name="CPU hours",
            event_name="cpu_hours",
            product_id="platform_cpu",
            lookup_key="platform_cpu_hour",
            unit_amount=4,
        ),
        CatalogItem(
            resource="gpu",
            display_name="GPU hours",
            event_name="gpu_hours",
            product_id="platform_gpu",
            lookup_key="platform_gpu_hour",
            unit_amount=250,
        ),
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Customers


def test_creating_a_customer_sends_email_name_user_id_and_an_idempotency_key(fake_stripe):
    customer_id = gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")

    [post] = fake_stripe.posts("/v1/customers")
    assert post.form == {"email": "ada@example.com", "name": "Ada", "metadata[user_id]": "42"}
    assert post.idempotency_key == "customer-42"
    assert post.headers["Authorization"] == f"Bearer {fake_stripe.api_key}"
    assert post.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert customer_id == next(iter(fake_stripe.customers))
    assert fake_stripe.customers[customer_id]["metadata"] == {"user_id": "42"}


def test_creating_a_customer_twice_makes_one_customer(fake_stripe):
    first = gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")
    second = gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")

    assert first == second
    assert len(fake_stripe.customers) == 1
    assert [p.replayed for p in fake_stripe.posts("/v1/customers")] == [False, True]


def test_a_customer_without_a_name_is_sent_without_one(fake_stripe):
    gateway.create_customer(user_id=USER_ID, email="ada@example.com", name=None)

    [post] = fake_stripe.posts("/v1/customers")
    assert "name" not in post.form


def test_every_request_names_the_pinned_api_version(fake_stripe):
    customer_id = gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")
    gateway.list_invoices(customer_id=customer_id)
    gateway.ensure_billing_catalog(catalog_items())

    assert STRIPE_API_VERSION == "2026-10-28.endive"
    assert len(fake_stripe.requests) > 5
    assert {r.stripe_version for r in fake_stripe.requests} == {STRIPE_API_VERSION}


def test_the_pinned_api_version_is_the_one_this_sdk_release_speaks():
    # Upgrading the SDK must come with a deliberate change of STRIPE_API_VERSION.
    sdk = importlib.import_module("stripe._api_version")

    assert sdk._ApiVersion.CURRENT == STRIPE_API_VERSION


# Checkout


def test_credit_checkout_sends_the_amount_in_minor_units_and_who_is_paying(fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")

    session = gateway.create_credit_checkout(
        customer_id=customer["id"],
        user_id=USER_ID,
        amount=Decimal("25.00"),
        success_url=SUCCESS_URL,
        cancel_url=CANCEL_URL,
        request_key="topup-7",
    )

    [post] = fake_stripe.posts("/v1/checkout/sessions")
    assert post.form == {
        "mode": "payment",
        "customer": customer["id"],
        "client_reference_id": "42",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "2500",
        "line_items[0][price_data][product_data][name]": "Platform credits",
        "line_items[0][quantity]": "1",
        "metadata[purpose]": "credits",
        "metadata[user_id]": "42",
        "payment_intent_data[metadata][purpose]": "credits",
        "payment_intent_data[metadata][user_id]": "42",
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
    }
    assert post.idempotency_key == "credit-checkout-topup-7"
    stored = fake_stripe.checkout_sessions[session.id]
    assert session.url == stored["url"]
    assert session.url.startswith("https://checkout.stripe.com/")
    assert stored["amount_total"] == 2500


def test_credit_checkout_in_a_zero_decimal_currency_sends_whole_units(fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")

    gateway.create_credit_checkout(
        customer_id=customer["id"],
        user_id=USER_ID,
        amount=Decimal("1500"),
        currency="JPY",
        success_url=SUCCESS_URL,
        cancel_url=CANCEL_URL,
        request_key="topup-8",
    )

    [post] = fake_stripe.posts("/v1/checkout/sessions")
    assert post.form["line_items[0][price_data][currency]"] == "jpy"
    assert post.form["line_items[0][price_data][unit_amount]"] == "1500"


def test_credit_checkout_refuses_a_fraction_of_a_cent_before_calling_stripe(fake_stripe):
    with pytest.raises(ValueError, match="more than 2 decimal places"):
        gateway.create_credit_checkout(
            customer_id="cus_x",
            user_id=USER_ID,
            amount=Decimal("10.005"),
            success_url=SUCCESS_URL,
            cancel_url=CANCEL_URL,
            request_key="topup-9",
        )

    assert fake_stripe.requests == []


def test_subscription_checkout_sends_metered_prices_without_quantity_and_the_anchor(
    fake_stripe,
):
    customer = fake_stripe.add_customer(email="ada@example.com")
    entries = gateway.ensure_billing_catalog(catalog_items())
    anchor = int(time.time()) + 10 * 24 * 3600

    session = gateway.create_subscription_checkout(
        customer_id=customer["id"],
        user_id=USER_ID,
        price_ids=[entry.price_id for entry in entries],
        success_url=SUCCESS_URL,
        cancel_url=CANCEL_URL,
        request_key="sub-1",
        billing_cycle_anchor=anchor,
    )

    [post] = fake_stripe.posts("/v1/checkout/sessions")
    assert post.form == {
        "mode": "subscription",
        "customer": customer["id"],
        "client_reference_id": "42",
        "line_items[0][price]": entries[0].price_id,
        "line_items[1][price]": entries[1].price_id,
        "subscription_data[metadata][user_id]": "42",
        "subscription_data[billing_cycle_anchor]": str(anchor),
        "metadata[purpose]": "subscription",
        "metadata[user_id]": "42",
        "success_url": SUCCESS_URL,
        "cancel_url": CANCEL_URL,
    }
    assert not any("quantity" in name for name in post.form)
    assert post.idempotency_key == "subscription-checkout-sub-1"
    assert post.params["line_items"] == [{"price": e.price_id} for e in entries]

    completed = fake_stripe.complete_checkout(session.id)
    subscription = fake_stripe.subscriptions[completed["subscription"]]
    assert subscription["metadata"] == {"user_id": "42"}
    assert subscription["billing_cycle_anchor"] == anchor


def test_subscription_checkout_without_an_anchor_sends_none(fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    [entry] = gateway.ensure_billing_catalog(catalog_items()[:1])

    gateway.create_subscription_checkout(
        customer_id=customer["id"],
        user_id=USER_ID,
        price_ids=[entry.price_id],
        success_url=SUCCESS_URL,
        cancel_url=CANCEL_URL,
        request_key="sub-2",
    )

    [post] = fake_stripe.posts("/v1/checkout/sessions")
    assert "subscription_data[billing_cycle_anchor]" not in post.form


# Catalog


def test_the_first_catalog_run_creates_meters_products_and_metered_prices(fake_stripe):
    entries = gateway.ensure_billing_catalog(catalog_items())

    meter_posts = fake_stripe.posts("/v1/billing/meters")
    assert [p.form for p in meter_posts] == [
        {
            "display_name": display,
            "event_name": event,
            "default_aggregation[formula]": "sum",
            "customer_mapping[event_payload_key]": "stripe_customer_id",
            "customer_mapping[type]": "by_id",
            "value_settings[event_payload_key]": "value",
        }
        for display, event in (("CPU hours", "cpu_hours"), ("GPU hours", "gpu_hours"))
    ]
    assert [p.idempotency_key for p in meter_posts] == ["meter-cpu_hours", "meter-gpu_hours"]

    product_posts = fake_stripe.posts("/v1/products")
    assert [p.form for p in product_posts] == [
        {"id": "platform_cpu", "name": "CPU hours"},
        {"id": "platform_gpu", "name": "GPU hours"},
    ]
    assert [p.idempotency_key for p in product_posts] == [
        "product-platform_cpu",
        "product-platform_gpu",
    ]

    cpu, gpu = entries
    price_posts = fake_stripe.posts("/v1/prices")
    assert price_posts[0].form == {
        "currency": "usd",
        "unit_amount": "4",
        "product": "platform_cpu",
        "lookup_key": "platform_cpu_hour",
        "transfer_lookup_key": "true",
        "recurring[interval]": "month",
        "recurring[usage_type]": "metered",
        "recurring[meter]": cpu.meter_id,
        "billing_scheme": "per_unit",
    }
    assert price_posts[1].form["recurring[meter]"] == gpu.meter_id
    assert price_posts[1].form["unit_amount"] == "250"
    assert [p.idempotency_key for p in price_posts] == [
        f"price-platform_cpu_hour-{cpu.meter_id}-4-usd",
        f"price-platform_gpu_hour-{gpu.meter_id}-250-usd",
    ]
    lookups = fake_stripe.requests_to("GET", "/v1/prices")
    assert [r.form["lookup_keys[0]"] for r in lookups] == ["platform_cpu_hour", "platform_gpu_hour"]
    assert {r.form["active"] for r in lookups} == {"true"}

    assert (cpu.resource, cpu.event_name, cpu.product_id) == ("cpu", "cpu_hours", "platform_cpu")
    assert fake_stripe.meters[cpu.meter_id]["event_name"] == "cpu_hours"
    assert fake_stripe.prices[cpu.price_id]["recurring"]["meter"] == cpu.meter_id
    assert fake_stripe.prices[gpu.price_id]["recurring"]["meter"] == gpu.meter_id
    assert fake_stripe.prices[gpu.price_id]["lookup_key"] == "platform_gpu_hour"


def test_running_the_catalog_again_creates_nothing(fake_stripe):
    first = gateway.ensure_billing_catalog(catalog_items())
    created = len(fake_stripe.posts())

    second = gateway.ensure_billing_catalog(catalog_items())

    assert second == first
    assert len(fake_stripe.posts()) == created == 6
    assert (len(fake_stripe.meters), len(fake_stripe.products), len(fake_stripe.prices)) == (
        2,
        2,
        2,
    )


def test_the_catalog_finds_an_existing_meter_on_a_later_page_and_ignores_inactive_ones(
    fake_stripe,
):
    wanted = fake_stripe.add_meter(event_name="cpu_hours")
    fake_stripe.add_meter(event_name="retired_cpu_hours", status="inactive")
    for n in range(gateway.PAGE_SIZE):
        fake_stripe.add_meter(event_name=f"other_{n}")

    [entry] = gateway.ensure_billing_catalog(catalog_items()[:1])

    assert entry.meter_id == wanted["id"]
    assert fake_stripe.posts("/v1/billing/meters") == []
    pages = fake_stripe.requests_to("GET", "/v1/billing/meters")
    assert len(pages) == 2
    assert {p.form["status"] for p in pages} == {"active"}
    assert "starting_after" in pages[1].form


def test_a_rate_change_makes_a_new_price_and_moves_the_lookup_key(fake_stripe):
    [old] = gateway.ensure_billing_catalog(catalog_items()[:1])
    cheaper = CatalogItem(**{**catalog_items()[0].__dict__, "unit_amount": 3})

    [new] = gateway.ensure_billing_catalog([cheaper])

    assert new.meter_id == old.meter_id
    assert new.price_id != old.price_id
    assert fake_stripe.prices[new.price_id]["unit_amount"] == 3
    assert fake_stripe.prices[new.price_id]["lookup_key"] == "platform_cpu_hour"
    assert fake_stripe.prices[old.price_id]["lookup_key"] is None


# Meter events


def stream_events(fake_stripe):
    return [e for r in fake_stripe.stream_requests() for e in r.json["events"]]


def test_a_meter_event_goes_on_the_v2_stream_with_a_session_token(fake_stripe):
    now = int(time.time())

    gateway.send_meter_event(
        event_name="cpu_hours",
        customer_id="cus_123",
        value=12,
        identifier="usage-1-2025-06-01-cpu",
        timestamp=now,
    )

    [session] = fake_stripe.posts("/v2/billing/meter_event_session")
    assert session.headers["Authorization"] == f"Bearer {fake_stripe.api_key}"
    assert session.json == {}
    [post] = fake_stripe.stream_requests()
    assert post.headers["Authorization"].startswith("Bearer ek_test_")  # the session's token
    assert post.headers["Content-Type"] == "application/json"
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert post.json == {
        "events": [
            {
                "event_name": "cpu_hours",
                "identifier": "usage-1-2025-06-01-cpu",
                "payload": {"stripe_customer_id": "cus_123", "value": "12"},
                "timestamp": stamp,
            }
        ]
    }
    assert fake_stripe.meter_event_totals("cpu_hours", "cus_123") == 12


def test_the_requests_of_one_stream_share_one_connection(fake_stripe):
    # Stripe keeps connections alive: a run sends thousands of requests on the stream, and
    # a new connection (a TLS handshake) for each would cost more than the request itself.
    stream = gateway.MeterEventStream()
    now = int(time.time())
    for n in range(3):
        stream.send([gateway.MeterEvent("cpu_hours", "cus_1", 1, f"id-{n}", now)])

    requests = fake_stripe.stream_requests()
    assert [r.status for r in requests] == [200, 200, 200]
    assert len({r.peer for r in requests}) == 1
    assert fake_stripe.meter_event_totals("cpu_hours", "cus_1") == 3


def test_the_stream_s_requests_are_not_logged_one_by_one(fake_stripe, caplog):
    # The SDK logs two INFO lines for every request ("Request to Stripe api", "Stripe API
    # response"): at the root's INFO that was thousands of lines a run, and their cost, for
    # requests whose failures our gateway reports itself.
    caplog.set_level(logging.INFO)
    stream = gateway.MeterEventStream()
    now = int(time.time())
    for n in range(3):
        stream.send([gateway.MeterEvent("cpu_hours", "cus_1", 1, f"id-{n}", now)])

    assert len(fake_stripe.stream_requests()) == 3
    assert [r.getMessage() for r in caplog.records if r.name.startswith("stripe")] == []


def test_the_stream_s_events_are_encoded_as_json_only(fake_stripe, monkeypatch):
    # The SDK form-encodes a request's parameters before it decides that a v2 body is JSON;
    # for 100 events that form (never sent) cost more than the JSON and the request together.
    from stripe import _api_requestor

    forms = []
    real = _api_requestor.urlencode
    monkeypatch.setattr(_api_requestor, "urlencode", lambda q, *a, **k: forms.append(q) or real(q))
    now = int(time.time())

    gateway.MeterEventStream().send(
        [gateway.MeterEvent("cpu_hours", "cus_1", n, f"id-{n}", now) for n in (1, 2)]
    )

    assert [e["identifier"] for e in stream_events(fake_stripe)] == ["id-1", "id-2"]
    assert fake_stripe.meter_event_totals("cpu_hours", "cus_1") == 3
    assert not [pair for form in forms for pair in form if "id-1" in str(pair)]


def test_a_negative_meter_event_corrects_over_reported_usage(fake_stripe):
    now = int(time.time())
    gateway.send_meter_event(
        event_name="cpu_hours", customer_id="cus_123", value=12, identifier="a", timestamp=now
    )

    gateway.send_meter_event(
        event_name="cpu_hours", customer_id="cus_123", value=-5, identifier="b", timestamp=now
    )

    assert stream_events(fake_stripe)[1]["payload"]["value"] == "-5"
    assert fake_stripe.meter_event_totals("cpu_hours", "cus_123") == 7


def test_sending_the_same_meter_event_twice_counts_it_once(fake_stripe):
    event = {
        "event_name": "cpu_hours",
        "customer_id": "cus_123",
        "value": 12,
        "identifier": "usage-1",
        "timestamp": int(time.time()),
    }

    gateway.send_meter_event(**event)
    gateway.send_meter_event(**event)

    assert fake_stripe.meter_event_totals("cpu_hours", "cus_123") == 12
    assert [r.status for r in fake_stripe.stream_requests()] == [200, 200]


def test_an_expired_session_is_renewed_and_the_same_events_sent(fake_stripe):
    stream = gateway.MeterEventStream()
    event = gateway.MeterEvent(
        event_name="cpu_hours", customer_id="cus_1", value=3, identifier="a", timestamp=0
    )
    now = int(time.time())
    stream.send([dataclasses.replace(event, timestamp=now)])
    fake_stripe.expire_meter_event_sessions()

    stream.send([dataclasses.replace(event, identifier="b", timestamp=now)])

    assert [r.status for r in fake_stripe.stream_requests()] == [200, 401, 200]
    assert fake_stripe.stream_requests()[1].json == fake_stripe.stream_requests()[2].json
    assert (stream.sessions, len(fake_stripe.posts("/v2/billing/meter_event_session"))) == (2, 2)
    assert fake_stripe.meter_event_totals("cpu_hours", "cus_1") == 6


def test_a_stream_that_keeps_rate_limiting_fails_retriably_without_the_token(
    fake_stripe, monkeypatch
):
    from tests.fakes.stripe import METER_EVENT_STREAM, RATE_LIMITED

    waits = []
    monkeypatch.setattr(gateway, "_pause", waits.append)
    fake_stripe.fail_next(10, status=429, error=RATE_LIMITED, path=METER_EVENT_STREAM)
    stream = gateway.MeterEventStream()

    with pytest.raises(StripeGatewayError) as caught:
        stream.send([gateway.MeterEvent("cpu_hours", "cus_1", 3, "a", int(time.time()))])

    assert caught.value.retriable and caught.value.status == 429
    assert len(fake_stripe.stream_requests()) == 1 + gateway.METER_STREAM_RATE_LIMIT_RETRIES
    assert [w for w in waits if w in {0.5, 1.0, 2.0, 4.0}] == [0.5, 1, 2, 4]  # backing off
    token = fake_stripe.stream_requests()[0].headers["Authorization"].split()[-1]
    assert token not in str(caught.value)


def test_a_meter_events_base_over_plain_http_elsewhere_is_refused(fake_stripe, settings):
    settings.STRIPE_METER_EVENTS_API_BASE = "http://meter-events.example.com"

    with pytest.raises(StripeGatewayError, match="STRIPE_METER_EVENTS_API_BASE"):
        gateway.send_meter_event(
            event_name="e", customer_id="cus_1", value=1, identifier="i", timestamp=1
        )

    assert fake_stripe.requests == []


# Subscriptions and invoices


def test_a_subscription_is_returned_as_a_plain_dict(fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    [entry] = gateway.ensure_billing_catalog(catalog_items()[:1])
    added = fake_stripe.add_subscription(
        customer=customer["id"], price_ids=[entry.price_id], metadata={"user_id": "42"}
    )

    subscription = gateway.retrieve_subscription(subscription_id=added["id"])

    assert type(subscription) is dict
    assert type(subscription["items"]["data"][0]) is dict
    assert json.loads(json.dumps(subscription)) == subscription
    assert subscription["status"] == "active"
    assert subscription["metadata"] == {"user_id": "42"}
    assert subscription["items"]["data"][0]["price"]["id"] == entry.price_id
    assert subscription["items"]["data"][0]["price"]["unit_amount_decimal"] == "4"


def test_canceling_a_subscription_deletes_it_once_and_again_is_not_an_error(fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    added = fake_stripe.add_subscription(customer=customer["id"])

    gateway.cancel_subscription(subscription_id=added["id"])
    gateway.cancel_subscription(subscription_id=added["id"])
    gateway.cancel_subscription(subscription_id="sub_gone")

    deletes = [r for r in fake_stripe.requests if r.method == "DELETE"]
    assert [(r.path, r.status) for r in deletes] == [
        (f"/v1/subscriptions/{added['id']}", 200),
        (f"/v1/subscriptions/{added['id']}", 404),
        ("/v1/subscriptions/sub_gone", 404),
    ]
    assert deletes[0].idempotency_key == f"cancel-{added['id']}"
    assert fake_stripe.subscriptions[added["id"]]["status"] == "canceled"


def test_listing_invoices_reads_every_page_newest_first(fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    other = fake_stripe.add_customer(email="bob@example.com")
    start = int(time.time()) - 200 * 86400
    for n in range(gateway.PAGE_SIZE + 5):
        fake_stripe.add_invoice(customer=customer["id"], amount_due=100 + n, created=start + n)
    fake_stripe.add_invoice(customer=other["id"], amount_due=999)

    invoices = gateway.list_invoices(customer_id=customer["id"])

    assert len(invoices) == gateway.PAGE_SIZE + 5
    assert [i["amount_due"] for i in invoices[:2]] == [204, 203]
    assert {i["customer"] for i in invoices} == {customer["id"]}
    assert all(type(i) is dict and i["status"] == "paid" for i in invoices)
    pages = fake_stripe.requests_to("GET", "/v1/invoices")
    assert [p.form.get("starting_after") for p in pages] == [None, invoices[99]["id"]]
    assert {p.form["customer"] for p in pages} == {customer["id"]}


# Errors


def test_a_refused_key_names_the_setting_and_never_the_key(fake_stripe, settings):
    settings.STRIPE_SECRET_KEY = "sk_test_wrongkey0123456789abcdefWXYZ"

    with pytest.raises(StripeGatewayError) as caught:
        gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")

    error = caught.value
    assert "STRIPE_SECRET_KEY" in str(error)
    assert "wrongkey0123456789" not in str(error)
    assert (error.status, error.retriable) == (401, False)
    assert len(fake_stripe.requests) == 1  # a 401 is not retried


def test_a_secret_echoed_by_stripe_is_redacted_from_the_message(fake_stripe):
    fake_stripe.fail_next(
        status=401,
        error={"type": "invalid_request_error", "message": f"Bad key {fake_stripe.api_key}"},
    )

    with pytest.raises(StripeGatewayError) as caught:
        gateway.list_invoices(customer_id="cus_123")

    assert fake_stripe.api_key not in str(caught.value)
    assert "[STRIPE_SECRET_KEY]" in str(caught.value)


def test_a_key_without_a_permission_says_what_to_grant(fake_stripe):
    fake_stripe.fail_next(
        status=403,
        error={
            "type": "invalid_request_error",
            "message": "The provided key 'rk_test_***abcd' does not have the required "
            "permissions for this endpoint.",
        },
    )

    with pytest.raises(StripeGatewayError) as caught:
        gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")

    assert (caught.value.status, caught.value.retriable) == (403, False)
    assert "restricted key" in str(caught.value)
    assert "does not have the required permissions" in str(caught.value)


def test_a_rejected_request_is_not_retriable_and_carries_stripes_message(fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    [entry] = gateway.ensure_billing_catalog(catalog_items()[:1])

    with pytest.raises(StripeGatewayError) as caught:
        gateway.create_subscription_checkout(
            customer_id=customer["id"],
            user_id=USER_ID,
            price_ids=[entry.price_id],
            success_url=SUCCESS_URL,
            cancel_url=CANCEL_URL,
            request_key="sub-3",
            billing_cycle_anchor=int(time.time()) - 60,
        )

    error = caught.value
    assert (error.status, error.retriable) == (400, False)
    assert "must be in the future" in str(error)
    assert "subscription_data[billing_cycle_anchor]" in str(error)
    assert "request req_" in str(error)


def test_a_missing_object_carries_stripes_error_code(fake_stripe):
    with pytest.raises(StripeGatewayError) as caught:
        gateway.create_credit_checkout(
            customer_id="cus_missing",
            user_id=USER_ID,
            amount=Decimal("25"),
            success_url=SUCCESS_URL,
            cancel_url=CANCEL_URL,
            request_key="topup-10",
        )

    error = caught.value
    assert (error.status, error.code, error.retriable) == (404, "resource_missing", False)
    assert "No such customer: 'cus_missing'" in str(error)


def test_a_server_error_is_retried_with_the_same_idempotency_key_and_then_succeeds(fake_stripe):
    fake_stripe.fail_next(1, status=500)

    with outbound.background_work():
        customer_id = gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")

    posts = fake_stripe.posts("/v1/customers")
    assert [p.status for p in posts] == [500, 200]
    assert {p.idempotency_key for p in posts} == {"customer-42"}
    assert list(fake_stripe.customers) == [customer_id]


def test_a_lasting_server_error_is_retriable_after_the_retries(fake_stripe, fast_retries):
    fake_stripe.fail_next(5, status=503)

    with pytest.raises(StripeGatewayError) as caught, outbound.background_work():
        gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")

    assert (caught.value.status, caught.value.retriable) == (503, True)
    assert "An unknown error occurred" in str(caught.value)
    assert len(fake_stripe.requests) == gateway.MAX_NETWORK_RETRIES + 1
    assert fast_retries == [1, 2]


def test_rate_limiting_is_retriable(fake_stripe, fast_retries):
    fake_stripe.fail_next(
        5,
        status=429,
        error={
            "type": "invalid_request_error",
            "message": "Too many requests",
            "code": "rate_limit",
        },
    )

    with pytest.raises(StripeGatewayError) as caught:
        gateway.list_invoices(customer_id="cus_123")

    assert (caught.value.status, caught.value.retriable) == (429, True)


def test_an_unreachable_stripe_is_retriable_and_names_the_address(
    fake_stripe, settings, fast_retries
):
    base = f"http://127.0.0.1:{free_port()}"
    settings.STRIPE_API_BASE = base

    with pytest.raises(StripeGatewayError) as caught, outbound.background_work():
        gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")

    error = caught.value
    assert str(error).startswith(f"Stripe could not be reached at {base}: [Errno 111] ")
    assert "Connection refused" in str(error)
    assert (error.status, error.retriable) == (None, True)
    assert fast_retries == [1, 2]


def test_plain_http_is_refused_for_anything_but_this_machine(fake_stripe, settings):
    settings.STRIPE_API_BASE = "http://stripe.example.com"

    with pytest.raises(StripeGatewayError, match=r"STRIPE_API_BASE .* must use https://"):
        gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")

    assert fake_stripe.requests == []


@pytest.mark.parametrize(
    "call",
    [
        lambda: gateway.create_customer(user_id="1", email="a@example.com", name=None),
        lambda: gateway.create_credit_checkout(
            customer_id="cus_1",
            user_id="1",
            amount=Decimal("10"),
            success_url=SUCCESS_URL,
            cancel_url=CANCEL_URL,
            request_key="k",
        ),
        lambda: gateway.create_subscription_checkout(
            customer_id="cus_1",
            user_id="1",
            price_ids=["price_1"],
            success_url=SUCCESS_URL,
            cancel_url=CANCEL_URL,
            request_key="k",
        ),
        lambda: gateway.ensure_billing_catalog([]),
        lambda: gateway.send_meter_event(
            event_name="e", customer_id="cus_1", value=1, identifier="i", timestamp=1
        ),
        lambda: gateway.cancel_subscription(subscription_id="sub_1"),
        lambda: gateway.retrieve_subscription(subscription_id="sub_1"),
        lambda: gateway.list_invoices(customer_id="cus_1"),
    ],
)
def test_every_call_says_stripe_is_not_configured_without_a_key(fake_stripe, settings, call):
    settings.STRIPE_SECRET_KEY = ""

    with pytest.raises(StripeNotConfigured) as caught:
        call()

    assert str(caught.value) == "Stripe is not configured (STRIPE_SECRET_KEY is empty)"
    assert isinstance(caught.value, StripeGatewayError)
    assert not gateway.is_configured()
    assert fake_stripe.requests == []


# Webhooks


def signed_event() -> tuple[bytes, dict]:
    invoice = {"id": "in_123", "object": "invoice", "customer": "cus_123", "amount_paid": 2500}
    event = make_event("invoice.paid", invoice)
    return json.dumps(event).encode(), event


def test_a_correctly_signed_webhook_returns_the_event_as_a_plain_dict(fake_stripe):
    payload, event = signed_event()

    verified = gateway.verify_webhook(
        payload=payload, signature_header=sign_payload(payload, WEBHOOK_SECRET)
    )

    assert verified == event
    assert type(verified) is dict


@pytest.mark.parametrize(
    ("make_header", "change_payload", "reason"),
    [
        (lambda p: sign_payload(p, "whsec_someone_else"), False, "bad Stripe-Signature"),
        (lambda p: sign_payload(p, WEBHOOK_SECRET), True, "bad Stripe-Signature"),
        (
            lambda p: sign_payload(p, WEBHOOK_SECRET, timestamp=int(time.time()) - 301),
            False,
            "tolerance",
        ),
        (lambda p: None, False, "no Stripe-Signature header"),
        (lambda p: "t=soon,v1=abc", False, "bad Stripe-Signature"),
    ],
    ids=["wrong-secret", "tampered", "too-old", "missing", "garbled"],
)
def test_a_webhook_that_is_not_proven_to_come_from_stripe_is_refused(
    fake_stripe, make_header, change_payload, reason
):
    payload, _ = signed_event()
    header = make_header(payload)
    if change_payload:
        payload = payload.replace(b"2500", b"9500")

    with pytest.raises(WebhookSignatureError, match=reason) as caught:
        gateway.verify_webhook(payload=payload, signature_header=header)

    assert WEBHOOK_SECRET not in str(caught.value)


def test_webhooks_are_refused_while_the_webhook_secret_is_empty(fake_stripe, settings):
    payload, _ = signed_event()
    header = sign_payload(payload, WEBHOOK_SECRET)
    settings.STRIPE_WEBHOOK_SECRET = ""

    with pytest.raises(WebhookSignatureError, match="STRIPE_WEBHOOK_SECRET is empty"):
        gateway.verify_webhook(payload=payload, signature_header=header)


# Links and money


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("sk_test_abc", "https://dashboard.stripe.com/test/customers/cus_123"),
        ("rk_test_abc", "https://dashboard.stripe.com/test/customers/cus_123"),
        ("sk_live_abc", "https://dashboard.stripe.com/customers/cus_123"),
        ("rk_live_abc", "https://dashboard.stripe.com/customers/cus_123"),
    ],
)
def test_dashboard_links_point_at_test_mode_for_a_test_key(settings, key, url):
    settings.STRIPE_SECRET_KEY = key

    assert gateway.dashboard_url("customers", "cus_123") == url


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        (Decimal("25.00"), "usd", 2500),
        (Decimal("25"), "USD", 2500),
        (Decimal("0.5"), "eur", 50),
        (Decimal("-5"), "usd", -500),
        (Decimal("1500"), "jpy", 1500),
        (Decimal("1500.00"), "krw", 1500),
        (Decimal("1.234"), "kwd", 1234),
    ],
)
def test_amounts_convert_exactly_to_minor_units_and_back(amount, currency, minor):
    assert gateway.to_minor_units(amount, currency) == minor
    assert gateway.from_minor_units(minor, currency) == amount


@pytest.mark.parametrize(
    ("amount", "currency"),
    [(Decimal("0.001"), "usd"), (Decimal("1.5"), "jpy"), (Decimal("1.2345"), "kwd")],
)
def test_an_amount_finer_than_the_currency_allows_is_refused(amount, currency):
    with pytest.raises(ValueError, match="decimal places"):
        gateway.to_minor_units(amount, currency)


def test_money_is_never_a_float():
    with pytest.raises(TypeError):
        gateway.to_minor_units(25.0, "usd")  # type: ignore[arg-type]
    assert str(gateway.from_minor_units(2500, "usd")) == "25.00"
    assert str(gateway.from_minor_units(1500, "jpy")) == "1500"


# Deadlines, size and retries inside a web request


def test_inside_a_web_request_a_server_error_is_not_retried(fake_stripe):
    fake_stripe.fail_next(1, status=500)

    with pytest.raises(StripeGatewayError) as caught:
        gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")

    assert caught.value.retriable
    assert "(one attempt)" in str(caught.value)
    assert len(fake_stripe.requests) == 1


def test_a_slow_drip_stripe_is_cut_off_at_the_deadline(fake_stripe, settings):
    settings.OUTBOUND_DEADLINE_SECONDS = 1.0
    with DripServer(http_response(200, b'{"id": "cus_1"}' + b" " * 400), interval=0.05) as slow:
        settings.STRIPE_API_BASE = slow.url
        started = time.monotonic()
        with pytest.raises(StripeGatewayError) as caught:
            gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")
        elapsed = time.monotonic() - started

    assert "no complete answer within 1 s (the deadline for one call)" in str(caught.value)
    assert caught.value.retriable
    assert elapsed < 1.0 + 1.0
    assert slow.connections == 1


def test_in_the_background_retries_stay_within_the_deadline(fake_stripe, settings, fast_retries):
    settings.OUTBOUND_BACKGROUND_DEADLINE_SECONDS = 1.5
    with DripServer(http_response(200, b'{"id": "cus_1"}' + b" " * 400), interval=0.05) as slow:
        settings.STRIPE_API_BASE = slow.url
        started = time.monotonic()
        with pytest.raises(StripeGatewayError), outbound.background_work():
            gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")
        elapsed = time.monotonic() - started

    assert elapsed < 1.5 + 1.0


def test_an_answer_larger_than_the_limit_is_refused(fake_stripe, settings):
    settings.OUTBOUND_MAX_RESPONSE_BYTES = 64 * 1024
    huge = http_response(200, b'{"id": "cus_1", "x": "' + b"x" * 300_000 + b'"}')
    with DripServer(huge, interval=0, chunk=65536) as big:
        settings.STRIPE_API_BASE = big.url
        with pytest.raises(StripeGatewayError) as caught:
            gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")

    assert "larger than 65536 bytes" in str(caught.value)
    assert not caught.value.retriable


def test_in_production_a_private_api_base_is_not_contacted(fake_stripe, settings):
    settings.OUTBOUND_ALLOW_LOCAL = False
    settings.OUTBOUND_ALLOWED_HOSTS = []
    with RecordingListener() as stranger:
        settings.STRIPE_API_BASE = stranger.url.replace("http://", "https://")
        with pytest.raises(StripeGatewayError) as caught:
            gateway.create_customer(user_id=USER_ID, email="ada@example.com", name="Ada")

    assert "not contacted" in str(caught.value)
    assert fake_stripe.api_key not in str(caught.value)
    assert stranger.connections == 0


def test_the_meter_event_summary_total_is_stripes_sum_over_the_range(fake_stripe):
    [entry] = gateway.ensure_billing_catalog(catalog_items()[:1])
    start = int(time.time()) // 60 * 60 - 3600
    for value, at in ((12, start - 60), (30, start), (-5, start + 60), (8, start + 3600)):
        gateway.send_meter_event(
            event_name=entry.event_name,
            customer_id="cus_123",
            value=value,
            identifier=f"e{at}",
            timestamp=at,
        )
    gateway.send_meter_event(
        event_name=entry.event_name,
        customer_id="cus_other",
        value=99,
        identifier="o",
        timestamp=start,
    )

    total = gateway.meter_event_summary_total(
        meter_id=entry.meter_id, customer_id="cus_123", start_time=start, end_time=start + 3600
    )

    assert total == 25
    [asked] = fake_stripe.requests_to("GET", f"/v1/billing/meters/{entry.meter_id}/event_summaries")
    assert (asked.form["customer"], asked.form["start_time"]) == ("cus_123", str(start))
    with pytest.raises(ValueError, match="minute"):
        gateway.meter_event_summary_total(
            meter_id=entry.meter_id,
            customer_id="cus_123",
            start_time=start + 1,
            end_time=start + 60,
        )


def test_an_invoice_item_is_sent_in_minor_units_with_its_key_and_may_be_a_credit(fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    subscription = fake_stripe.add_subscription(customer=customer["id"])

    item = gateway.create_invoice_item(
        customer_id=customer["id"],
        amount=Decimal("-12.34"),
        currency="usd",
        description="Usage correction",
        subscription_id=subscription["id"],
        idempotency_key="adjust-1",
        metadata={"usage_adjustment": "adjust-1"},
    )

    [sent] = fake_stripe.posts("/v1/invoiceitems")
    assert (sent.form["amount"], sent.idempotency_key) == ("-1234", "adjust-1")
    assert item["amount"] == -1234
    assert [i["id"] for i in gateway.list_invoice_items(customer_id=customer["id"])] == [item["id"]]


def test_a_customer_balance_credit_is_sent_negative_in_minor_units_with_its_key(fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")

    sent_back = gateway.create_customer_balance_transaction(
        customer_id=customer["id"],
        amount=Decimal("-12.50"),
        currency="USD",
        description="Credit: outage apology",
        idempotency_key="grant:tok:1",
        metadata={"billing_adjustment": "grant:tok:1"},
    )

    [sent] = fake_stripe.posts(f"/v1/customers/{customer['id']}/balance_transactions")
    assert (sent.form["amount"], sent.form["currency"]) == ("-1250", "usd")
    assert (sent.form["description"], sent.idempotency_key) == (
        "Credit: outage apology",
        "grant:tok:1",
    )
    assert sent_back["ending_balance"] == -1250
    listed = gateway.list_customer_balance_transactions(customer_id=customer["id"])
    assert [t["id"] for t in listed] == [sent_back["id"]]
    with pytest.raises(ValueError, match="decimal places"):
        gateway.create_customer_balance_transaction(
            customer_id=customer["id"],
            amount=Decimal("-0.001"),
            currency="usd",
            description="x",
            idempotency_key="k",
        )
    with pytest.raises(StripeGatewayError, match="No such customer"):
        gateway.create_customer_balance_transaction(
            customer_id="cus_gone",
            amount=Decimal("-1"),
            currency="usd",
            description="x",
            idempotency_key="k2",
        )


def test_a_credit_note_is_sent_positive_in_minor_units_with_its_memo_and_key(fake_stripe):
    customer = fake_stripe.add_customer(email="ada@example.com")
    invoice = fake_stripe.add_invoice(customer=customer["id"], status="open", amount_due=5000)

    note = gateway.create_credit_note(
        invoice_id=invoice["id"],
        amount=Decimal("12.50"),
        currency="usd",
        memo="Credit: outage apology",
        idempotency_key="grant:tok:1",
        metadata={"billing_adjustment": "grant:tok:1"},
    )

    [sent] = fake_stripe.posts("/v1/credit_notes")
    assert (sent.form["amount"], sent.form["memo"], sent.idempotency_key) == (
        "1250",
        "Credit: outage apology",
        "grant:tok:1",
    )
    assert note["type"] == "pre_payment"
    with pytest.raises(ValueError, match="positive"):
        gateway.create_credit_note(
            invoice_id=invoice["id"],
            amount=Decimal("-1"),
            currency="usd",
            memo="x",
            idempotency_key="k",
        )


class _PacingClock:
    """The stream's pacing clock, moved by hand: a pause moves it by what was asked."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def _stream_send(stream, clock, identifier):
    """Send one event; the moment it went out on the pacing clock (after any wait)."""
    stream.send([gateway.MeterEvent("cpu_hours", "cus_1", 1, identifier, int(time.time()))])
    return clock.now


def test_the_stream_keeps_to_the_rate_in_every_second_and_spends_our_own_time_in_it(
    fake_stripe, settings, monkeypatch
):
    """Stripe's limit is requests per second: no one-second window holds more than the rate,
    and time we spent between requests (reading and writing the next batch) counts towards
    the wait, so a run is bounded by Stripe's rate and not by its rate plus our work."""
    clock = _PacingClock()
    monkeypatch.setattr(gateway, "_monotonic", clock.monotonic)
    monkeypatch.setattr(gateway, "_pause", clock.pause)
    settings.STRIPE_METER_STREAM_REQUESTS_PER_SECOND = 4
    stream = gateway.MeterEventStream()
    sent = []

    for batch in range(5):  # 4 requests a batch, then 0.8 s of our own work
        sent += [_stream_send(stream, clock, f"{batch}-{i}") for i in range(4)]
        clock.now += 0.8

    assert len(fake_stripe.stream_requests()) == 20
    assert all(sum(1 for t in sent if s <= t < s + 1 - 1e-9) <= 4 for s in sent)  # the rate kept
    # Each batch waits only for what is left of the second after its first request's
    # window: 0.2 s, not a full 1/rate a request after 0.8 s of our own work.
    assert sent[-1] - sent[0] == pytest.approx(4 * 1.0, abs=1e-9)
    assert sum(clock.waits) == pytest.approx(4 * 0.2, abs=1e-9)


def test_after_a_rate_limit_the_slower_pace_still_counts_the_requests_just_sent(
    fake_stripe, settings, monkeypatch
):
    """A 429 halves the rate; the requests sent in the last second still count against the
    new, lower limit, so the stream does not answer Stripe's refusal with a fresh burst."""
    from tests.fakes.stripe import METER_EVENT_STREAM, RATE_LIMITED

    clock = _PacingClock()
    monkeypatch.setattr(gateway, "_monotonic", clock.monotonic)
    monkeypatch.setattr(gateway, "_pause", clock.pause)
    settings.STRIPE_METER_STREAM_REQUESTS_PER_SECOND = 8
    stream = gateway.MeterEventStream()
    sent = [_stream_send(stream, clock, f"a{i}") for i in range(7)]  # 7 at once, within 8
    fake_stripe.fail_next(1, status=429, error=RATE_LIMITED, path=METER_EVENT_STREAM)
    sent += [_stream_send(stream, clock, f"b{i}") for i in range(8)]  # a 429, then 4 a second

    assert len(fake_stripe.stream_requests()) == 16  # 15 accepted, one refused and resent
    # Each request after the 429 has at most 4 in the second up to it, those before included.
    assert all(sum(1 for u in sent if t - 1 + 1e-9 < u <= t) <= 4 for t in sent[7:])
