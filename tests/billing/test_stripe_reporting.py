"""Postpaid usage to Stripe as meter events: differences only, never twice, to the cent."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.checkout import customer_ensure
from billing.models import (
    BillingProfile,
    Price,
    StripeCatalogEntry,
    StripeUsageAdjustment,
    StripeUsageReport,
)
from billing.pricing import to_cents
from billing.selectors import month_to_date_cost
from billing.stripe_reporting import usage_report_to_stripe
from billing.usage import UsageRecord, usage_upsert
from tests.concurrency import run_at_once
from tests.factories import ClusterFactory, UserFactory
from tests.fakes.stripe import METER_EVENT_STREAM, make_event

D = Decimal


def subscribed_user(fake_stripe):
    user = UserFactory()
    customer = customer_ensure(user=user)
    sub = fake_stripe.add_subscription(customer=customer, status="active")
    BillingProfile.objects.update_or_create(
        user=user,
        defaults={"stripe_subscription_id": sub["id"], "subscription_status": "active"},
    )
    return user, customer


def record_days(user, cluster, days, **figures):
    usage_upsert(
        records=[
            UsageRecord(user_id=user.pk, cluster_id=cluster.pk, date=day, **figures) for day in days
        ],
        actor="t",
    )


def this_month_days(count):
    today = timezone.now().date()
    first = today.replace(day=1)
    return [first + dt.timedelta(days=n) for n in range(min(count, today.day))]


def stripe_cents(fake_stripe, customer):
    return sum(
        fake_stripe.meter_event_totals(entry.event_name, customer)
        for entry in StripeCatalogEntry.objects.all()
    )


@pytest.fixture
def catalog(fake_stripe):
    call_command("setup_stripe_billing")
    return fake_stripe


@pytest.mark.django_db
def test_setup_is_idempotent_and_makes_a_meter_product_and_price_per_resource(fake_stripe):
    call_command("setup_stripe_billing")
    posts_after_first = len(fake_stripe.posts())
    call_command("setup_stripe_billing")

    assert len(fake_stripe.posts()) == posts_after_first  # the second run creates nothing
    assert StripeCatalogEntry.objects.count() == 4
    assert len(fake_stripe.meters) == len(fake_stripe.products) == len(fake_stripe.prices) == 4
    for price in fake_stripe.prices.values():
        assert price["recurring"]["usage_type"] == "metered"
        assert price["recurring"]["meter"] in fake_stripe.meters
        assert price["unit_amount"] == 1


@pytest.mark.django_db
def test_reporting_sends_the_month_in_cents_with_deterministic_identifiers(catalog):
    user, customer = subscribed_user(catalog)
    cluster = ClusterFactory()
    record_days(
        user, cluster, this_month_days(3), cpu_hours=D("10.123"), gpu_hours=D("1.5"), api_calls=1234
    )

    run = usage_report_to_stripe()

    ours = to_cents(month_to_date_cost(user)) * 100
    assert stripe_cents(catalog, customer) == ours
    assert run.sent_cents == ours
    [request] = catalog.stream_requests()  # one request on the v2 stream, with a session token
    assert request.headers["Authorization"] != f"Bearer {catalog.api_key}"
    sent = request.json["events"]
    assert {e["payload"]["stripe_customer_id"] for e in sent} == {customer}
    assert all(e["identifier"].startswith("usage-") for e in sent)


@pytest.mark.django_db
def test_a_rerun_reports_nothing_new(catalog):
    user, _ = subscribed_user(catalog)
    record_days(user, ClusterFactory(), this_month_days(2), cpu_hours=D("5"))
    usage_report_to_stripe()
    before = len(catalog.meter_events)

    run = usage_report_to_stripe()

    assert run.sent_events == 0
    assert len(catalog.meter_events) == before


@pytest.mark.django_db
def test_a_corrected_day_reports_only_the_difference_even_downwards(catalog):
    user, customer = subscribed_user(catalog)
    cluster = ClusterFactory()
    [day] = this_month_days(1)
    record_days(user, cluster, [day], cpu_hours=D("10"))  # $1.00
    usage_report_to_stripe()
    record_days(user, cluster, [day], cpu_hours=D("13"))  # $1.30
    usage_report_to_stripe()
    record_days(user, cluster, [day], cpu_hours=D("4"))  # $0.40
    usage_report_to_stripe()

    cpu = StripeCatalogEntry.objects.get(resource="cpu_hour").event_name
    values = [int(e["payload"]["value"]) for e in catalog.meter_events if e["event_name"] == cpu]
    assert values == [100, 30, -90]
    assert stripe_cents(catalog, customer) == 40


@pytest.mark.django_db
def test_negotiated_prices_and_sub_cent_days_still_total_to_the_cent(catalog):
    user, customer = subscribed_user(catalog)
    Price.objects.create(
        resource="cpu_hour", unit_price=D("0.0333"), user=user, effective_from=dt.date(2020, 1, 1)
    )
    record_days(
        user,
        ClusterFactory(),
        this_month_days(28),
        cpu_hours=D("0.777"),
        storage_gb_months=D("0.0333333333"),
        api_calls=333,
    )

    usage_report_to_stripe()

    assert stripe_cents(catalog, customer) == to_cents(month_to_date_cost(user)) * 100


@pytest.mark.django_db
def test_a_failed_send_is_retried_later_with_the_same_identifier_and_value(catalog):
    from billing.stripe_gateway import MAX_NETWORK_RETRIES

    user, customer = subscribed_user(catalog)
    record_days(user, ClusterFactory(), this_month_days(1), cpu_hours=D("10"))
    catalog.fail_next(1 + MAX_NETWORK_RETRIES, status=500, path=METER_EVENT_STREAM)

    with pytest.raises(CommandError, match="next run retries"):
        call_command("report_usage_to_stripe")
    pending = StripeUsageReport.objects.get(resource="cpu_hour")
    assert (pending.pending_cents, pending.reported_cents) == (100, 0)
    decided = pending.pending_identifier

    call_command("report_usage_to_stripe")

    pending.refresh_from_db()
    cpu = [
        (r.status, e["identifier"], e["payload"]["value"])
        for r in catalog.stream_requests()
        for e in r.json["events"]
        if e["identifier"].endswith("-cpu_hour-1")
    ]
    assert {(i, v) for _, i, v in cpu} == {(decided, "100")}
    assert [status for status, _, _ in cpu][-1] == 200
    assert (pending.reported_cents, pending.pending_cents) == (100, None)
    assert stripe_cents(catalog, customer) == 100


@pytest.mark.django_db
def test_only_usage_billed_through_stripe_is_reported(catalog):
    user, customer = subscribed_user(catalog)
    cluster = ClusterFactory()
    [first, *rest] = this_month_days(2) or [None]
    record_days(user, cluster, [first], cpu_hours=D("10"))
    BillingProfile.objects.filter(user=user).update(mode="prepaid")
    if rest:
        record_days(user, cluster, rest, cpu_hours=D("50"))  # settled with credits

    usage_report_to_stripe()

    assert stripe_cents(catalog, customer) == 100


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("default_rate_card")
def test_two_concurrent_runs_report_each_unit_once(catalog):
    users = [subscribed_user(catalog) for _ in range(4)]
    cluster = ClusterFactory(max_users=50)
    for user, _ in users:
        record_days(user, cluster, this_month_days(5), cpu_hours=D("3.3"), gpu_hours=D("0.7"))
    run_at_once(lambda _: usage_report_to_stripe(), range(3))

    for user, customer in users:
        ours = to_cents(month_to_date_cost(user)) * 100
        assert stripe_cents(catalog, customer) == ours
        recorded = StripeUsageReport.objects.filter(user=user).values_list(
            "reported_cents", flat=True
        )
        assert sum(recorded) == ours
    assert usage_report_to_stripe().sent_events == 0  # and nothing is left to correct
    # Each event crossed the wire once: no run sent what another run was sending.
    sent = catalog.streamed_identifiers()
    assert len(sent) == len(set(sent)) == len(catalog.meter_events)


# The identifier window: Stripe keeps an identifier unique for about 24 hours only.


def lose_the_answer_of_the_first_event(fake_stripe, *, arrived: bool):
    fake_stripe.fail_next(1, status=500, path=METER_EVENT_STREAM, processed=arrived)


def a_day_later(fake_stripe):
    fake_stripe.forget_idempotency_keys()
    fake_stripe.forget_meter_event_identifiers()


@pytest.mark.django_db
def test_an_event_stripe_received_while_we_saw_a_timeout_is_not_counted_twice_a_day_later(
    catalog,
):
    user, customer = subscribed_user(catalog)
    record_days(user, ClusterFactory(), this_month_days(1), cpu_hours=D("10"))  # $1.00
    lose_the_answer_of_the_first_event(catalog, arrived=True)
    now = timezone.now()
    assert usage_report_to_stripe(now=now).errors
    report = StripeUsageReport.objects.get(user=user, resource="cpu_hour")
    assert (report.reported_cents, report.pending_cents) == (0, 100)
    a_day_later(catalog)

    later = usage_report_to_stripe(now=now + dt.timedelta(hours=25))

    assert later.errors == []
    assert stripe_cents(catalog, customer) == 100
    report.refresh_from_db()
    assert (report.reported_cents, report.pending_identifier, report.pending_cents) == (
        100,
        "",
        None,
    )
    assert usage_report_to_stripe(now=now + dt.timedelta(hours=26)).sent_events == 0


@pytest.mark.django_db
def test_an_event_that_never_arrived_is_resent_after_the_window_under_a_new_identifier(catalog):
    user, customer = subscribed_user(catalog)
    record_days(user, ClusterFactory(), this_month_days(1), cpu_hours=D("10"))
    lose_the_answer_of_the_first_event(catalog, arrived=False)
    now = timezone.now()
    usage_report_to_stripe(now=now)
    decided = StripeUsageReport.objects.get(user=user, resource="cpu_hour").pending_identifier
    a_day_later(catalog)

    usage_report_to_stripe(now=now + dt.timedelta(hours=25))

    assert stripe_cents(catalog, customer) == 100
    [event] = catalog.meter_events
    assert event["identifier"] != decided
    assert StripeUsageReport.objects.get(user=user, resource="cpu_hour").reported_cents == 100


@pytest.mark.django_db
def test_a_pending_event_is_resent_unchanged_within_the_window(catalog):
    user, _customer = subscribed_user(catalog)
    record_days(user, ClusterFactory(), this_month_days(1), cpu_hours=D("10"))
    lose_the_answer_of_the_first_event(catalog, arrived=False)
    now = timezone.now()
    usage_report_to_stripe(now=now)
    decided = StripeUsageReport.objects.get(user=user, resource="cpu_hour").pending_identifier

    usage_report_to_stripe(now=now + dt.timedelta(hours=19))

    assert [e["identifier"] for e in catalog.meter_events] == [decided]
    assert not catalog.requests_to(
        "GET",
        f"/v1/billing/meters/{StripeCatalogEntry.objects.get(resource='cpu_hour').meter_id}"
        "/event_summaries",
    )


@pytest.mark.django_db
def test_a_pending_event_stripe_disagrees_about_stays_pending_with_the_reason(catalog):
    from billing import stripe_gateway as gateway

    user, customer = subscribed_user(catalog)
    [day] = this_month_days(1)
    record_days(user, ClusterFactory(), [day], cpu_hours=D("10"))
    lose_the_answer_of_the_first_event(catalog, arrived=True)
    now = timezone.now()
    usage_report_to_stripe(now=now)
    cpu = StripeCatalogEntry.objects.get(resource="cpu_hour").event_name
    gateway.send_meter_event(  # something else reached Stripe for that month
        event_name=cpu,
        customer_id=customer,
        value=7,
        identifier="by-hand",
        timestamp=int(now.timestamp()) - 1,
    )
    a_day_later(catalog)

    run = usage_report_to_stripe(now=now + dt.timedelta(hours=25))

    report = StripeUsageReport.objects.get(user=user, resource="cpu_hour")
    assert report.pending_cents == 100 and report.reported_cents == 0
    assert "107" in report.last_error and "reconcil" in report.last_error
    assert run.errors
    assert stripe_cents(catalog, customer) == 107  # nothing resent


# Closed periods: what Stripe will not bill again goes on the next invoice as an item.


def last_day_of_last_month():
    return timezone.now().date().replace(day=1) - dt.timedelta(days=1)


def unix(day):
    return int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())


def long_subscribed_user(fake_stripe):
    """A user whose subscription began 90 days ago."""
    user = UserFactory()
    customer = customer_ensure(user=user)
    started = int((timezone.now() - dt.timedelta(days=90)).timestamp())
    sub = fake_stripe.add_subscription(customer=customer, status="active", start_date=started)
    BillingProfile.objects.update_or_create(
        user=user,
        defaults={"stripe_subscription_id": sub["id"], "subscription_status": "active"},
    )
    return user, customer, sub["id"]


def finalize_invoice_of(fake_stripe, deliver, customer, subscription, month_day):
    month = month_day.replace(day=1)
    next_month = (month + dt.timedelta(days=32)).replace(day=1)
    invoice = fake_stripe.add_invoice(
        customer=customer,
        status="open",
        amount_due=100,
        subscription=subscription,
        period_start=unix(month),
        period_end=unix(next_month),
    )
    deliver(make_event("invoice.finalized", invoice))


@pytest.mark.django_db
def test_a_correction_to_a_month_already_invoiced_becomes_an_invoice_item(catalog, deliver):
    user, customer, subscription = long_subscribed_user(catalog)
    cluster, day = ClusterFactory(), last_day_of_last_month()
    record_days(user, cluster, [day], cpu_hours=D("10"))  # $1.00
    usage_report_to_stripe()
    finalize_invoice_of(catalog, deliver, customer, subscription, day)
    events_before = len(catalog.meter_events)
    record_days(user, cluster, [day], cpu_hours=D("13"))  # +$0.30, after the invoice

    run = usage_report_to_stripe()

    assert run.errors == []
    assert len(catalog.meter_events) == events_before  # Stripe would never bill it
    [item] = catalog.invoice_items_of(customer)
    assert (item["amount"], item["currency"]) == (30, "usd")
    assert item["parent"]["subscription_details"]["subscription"] == subscription
    assert item["description"] == f"Usage correction for {day:%Y-%m} (days {day}): +$0.30"
    assert (
        sum(StripeUsageReport.objects.filter(user=user).values_list("reported_cents", flat=True))
        == 130
    )
    assert StripeUsageAdjustment.objects.get().status == "sent"
    assert usage_report_to_stripe().sent_events == 0
    assert len(catalog.invoice_items_of(customer)) == 1

    record_days(user, cluster, [day], cpu_hours=D("5"))  # -$0.80: a credit on the next invoice
    usage_report_to_stripe()
    assert sorted(i["amount"] for i in catalog.invoice_items_of(customer)) == [-80, 30]
    assert len(catalog.meter_events) == events_before


@pytest.mark.django_db
def test_an_invoice_item_whose_answer_was_lost_is_sent_once(catalog, deliver):
    user, customer, subscription = long_subscribed_user(catalog)
    cluster, day = ClusterFactory(), last_day_of_last_month()
    record_days(user, cluster, [day], cpu_hours=D("10"))
    usage_report_to_stripe()
    finalize_invoice_of(catalog, deliver, customer, subscription, day)
    record_days(user, cluster, [day], cpu_hours=D("13"))
    catalog.fail_next(1, status=500, path="/v1/invoiceitems", processed=True)

    assert usage_report_to_stripe().errors
    assert StripeUsageAdjustment.objects.get().status == "pending"
    catalog.forget_idempotency_keys()  # even a day later

    usage_report_to_stripe()

    [item] = catalog.invoice_items_of(customer)
    adjustment = StripeUsageAdjustment.objects.get()
    assert (adjustment.status, adjustment.stripe_invoice_item_id) == ("sent", item["id"])
    assert (
        sum(StripeUsageReport.objects.filter(user=user).values_list("reported_cents", flat=True))
        == 130
    )


@pytest.mark.django_db
def test_usage_from_before_the_subscription_began_goes_on_the_next_invoice_as_an_item(catalog):
    user, customer = subscribed_user(catalog)  # the subscription begins now
    day = last_day_of_last_month()
    record_days(user, ClusterFactory(), [day], cpu_hours=D("10"), gpu_hours=D("1"))  # $1.50

    run = usage_report_to_stripe()

    assert run.errors == []
    assert catalog.meter_events == []
    [item] = catalog.invoice_items_of(customer)
    assert item["amount"] == 150
    assert item["description"] == f"Usage correction for {day:%Y-%m} (days {day}): +$1.50"


@pytest.mark.django_db
def test_a_month_older_than_stripe_takes_meter_events_goes_on_an_invoice_item(catalog):
    user, customer, _subscription = long_subscribed_user(catalog)
    day = timezone.now().date() - dt.timedelta(days=70)
    record_days(user, ClusterFactory(), [day], cpu_hours=D("10"))

    run = usage_report_to_stripe()

    assert run.errors == []
    assert catalog.meter_events == []
    [item] = catalog.invoice_items_of(customer)
    assert item["amount"] == 100
    assert f"{day:%Y-%m}" in item["description"] and str(day) in item["description"]


# Postpaid users without a live subscription: their usage is held as unbilled.


@pytest.mark.django_db
def test_usage_without_a_live_subscription_is_held_as_unbilled_then_reported_when_one_is_live(
    catalog, deliver, operator_client
):
    from billing.selectors import unbilled_usage

    user = UserFactory()
    customer = customer_ensure(user=user)
    ended = catalog.add_subscription(
        customer=customer, status="canceled", metadata={"user_id": user.pk}
    )
    deliver(make_event("customer.subscription.deleted", ended))
    assert BillingProfile.objects.get(user=user).subscription_status == "canceled"
    record_days(user, ClusterFactory(), this_month_days(2), cpu_hours=D("10.123"), api_calls=77)

    usage_report_to_stripe()

    assert catalog.meter_events == []
    held = to_cents(month_to_date_cost(user))
    assert unbilled_usage() == {user.pk: held}
    page = operator_client.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()
    assert f"Unbilled usage: ${held} (no live subscription)" in page
    listed = operator_client.get("/admin/accounts/user/", {"unbilled": "yes"})
    assert [u.pk for u in listed.context["cl"].result_list] == [user.pk]

    live = catalog.add_subscription(
        customer=customer, status="active", metadata={"user_id": user.pk}
    )
    # The subscription going live queues the report in the event's own transaction: the
    # held usage is reported as soon as the worker takes it, not at the next daily run.
    deliver(make_event("customer.subscription.created", live))

    assert stripe_cents(catalog, customer) == held * 100
    assert unbilled_usage() == {}


@pytest.mark.django_db
def test_a_run_looks_only_at_the_months_whose_usage_changed_since_they_were_reported(catalog):
    """Incremental: a month is reported again only when its usage changed; a run with
    nothing changed makes the same few queries however much history is stored."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from billing.stripe_reporting import months_to_report

    cluster = ClusterFactory()
    users = [subscribed_user(catalog)[0] for _ in range(3)]
    today = timezone.now().date()
    last_month = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    for user in users:
        record_days(user, cluster, this_month_days(2), cpu_hours=D("5"))
    record_days(users[0], cluster, [last_month], cpu_hours=D("5"))
    usage_report_to_stripe()
    assert list(months_to_report()) == []

    with CaptureQueriesContext(connection) as nothing_changed:
        run = usage_report_to_stripe()
    assert run.sent_events == 0
    assert len(nothing_changed) <= 3  # the catalog, the months due, and nothing per month

    record_days(users[1], cluster, this_month_days(1), cpu_hours=D("7"))  # one day corrected
    assert [(p["user_id"], p["month"]) for p in months_to_report()] == [
        (users[1].pk, today.replace(day=1))
    ]
    run = usage_report_to_stripe()
    assert run.sent_cents == 20  # 2 CPU hours more at $0.10
    assert list(months_to_report()) == []
