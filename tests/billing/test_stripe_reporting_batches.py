"""Reporting many postpaid users: batches of user-months in a constant number of queries,
meter events through Stripe's v2 meter event stream (a session token, up to 100 events a
request), each event counted once whatever the stream answers."""

import datetime as dt
from collections import Counter
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing import stripe_gateway as gateway
from billing.models import BillingProfile, StripeCatalogEntry, StripeReportDue, StripeUsageReport
from billing.pricing import to_cents
from billing.selectors import month_to_date_cost
from billing.stripe_reporting import usage_report_to_stripe
from billing.usage import UsageRecord, usage_upsert
from tests.factories import ClusterFactory, UserFactory
from tests.fakes.stripe import METER_EVENT_SESSION, METER_EVENT_STREAM, RATE_LIMITED

pytestmark = pytest.mark.django_db
D = Decimal


@pytest.fixture
def catalog(fake_stripe):
    call_command("setup_stripe_billing")
    return fake_stripe


def postpaid_users(fake_stripe, count):
    """Users with a Stripe customer and a live subscription that began this month."""
    started = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    users = []
    for _ in range(count):
        customer = fake_stripe.add_customer()
        user = UserFactory(stripe_customer_id=customer["id"])
        subscription = f"sub_{user.pk.split('|')[-1]}"
        BillingProfile.objects.update_or_create(
            user=user,
            defaults={
                "stripe_subscription_id": subscription,
                "subscription_status": "active",
                "subscription_started_at": started,
                "started_subscription_id": subscription,
            },
        )
        users.append(user)
    return users


def use(users, cluster, **figures):
    today = timezone.now().date()
    usage_upsert(
        records=[
            UsageRecord(user_id=u.pk, cluster_id=cluster.pk, date=today, **figures) for u in users
        ],
        actor="t",
    )


def stripe_cents(fake_stripe, user):
    return sum(
        fake_stripe.meter_event_totals(entry.event_name, user.stripe_customer_id)
        for entry in StripeCatalogEntry.objects.all()
    )


def test_a_batch_of_due_user_months_takes_the_same_queries_for_10_as_for_200(catalog, settings):
    settings.STRIPE_REPORT_BATCH_SIZE = 500
    cluster = ClusterFactory(max_users=1000)
    few, many = postpaid_users(catalog, 10), postpaid_users(catalog, 200)
    use(few, cluster, cpu_hours=D("10.5"), gpu_hours=D("1"), api_calls=1234)
    with CaptureQueriesContext(connection) as ten:
        small = usage_report_to_stripe()
    use(many, cluster, cpu_hours=D("10.5"), gpu_hours=D("1"), api_calls=1234)

    with CaptureQueriesContext(connection) as two_hundred:
        large = usage_report_to_stripe()

    assert (small.errors, large.errors) == ([], [])
    assert (small.sent_events, large.sent_events) == (10 * 3, 200 * 3)
    assert len(two_hundred) == len(ten) <= 25
    for user in [*few, *many]:
        assert stripe_cents(catalog, user) == to_cents(month_to_date_cost(user)) * 100
    assert not StripeReportDue.objects.exists()


def test_more_user_months_than_a_batch_take_a_batch_of_queries_more_each(catalog, settings):
    settings.STRIPE_REPORT_BATCH_SIZE = 20
    cluster = ClusterFactory(max_users=1000)
    counts = []
    for users in (postpaid_users(catalog, 20), postpaid_users(catalog, 60)):
        use(users, cluster, cpu_hours=D("3"))
        with CaptureQueriesContext(connection) as queries:
            run = usage_report_to_stripe()
        assert run.errors == [] and run.sent_events == len(users)
        counts.append(len(queries))

    one_batch, three_batches = counts
    per_batch = (three_batches - one_batch) / 2
    assert per_batch == int(per_batch) and 0 < per_batch < one_batch


def test_events_reach_stripe_once_through_the_stream_whatever_it_answers(
    catalog, settings, monkeypatch
):
    monkeypatch.setattr(gateway, "METER_STREAM_MAX_EVENTS", 4)  # 6 users x 2: three requests
    users = postpaid_users(catalog, 6)
    cluster = ClusterFactory(max_users=100)
    use(users, cluster, cpu_hours=D("10"), gpu_hours=D("2"))
    catalog.expire_meter_event_sessions(after_stream_requests=1)  # expires mid-run
    catalog.fail_next(1, status=429, error=RATE_LIMITED, path=METER_EVENT_STREAM)

    run = usage_report_to_stripe()

    assert run.errors == [] and run.sent_events == 12
    statuses = [r.status for r in catalog.stream_requests()]
    assert statuses.count(429) == 1 and statuses.count(401) == 1
    assert [r.status for r in catalog.posts(METER_EVENT_SESSION)] == [200, 200]
    for request in catalog.stream_requests():
        assert request.headers["Authorization"] != f"Bearer {catalog.api_key}"  # a session
        assert request.headers["Content-Type"] == "application/json"
        assert len(request.json["events"]) <= 4
    [event] = [e for e in catalog.stream_requests()[0].json["events"]][:1]
    assert set(event) == {"event_name", "identifier", "payload", "timestamp"}
    assert event["timestamp"].endswith("Z") and event["payload"]["value"].lstrip("-").isdigit()
    for user in users:
        assert stripe_cents(catalog, user) == to_cents(month_to_date_cost(user)) * 100

    # Stripe down: nothing is lost, the same events are resent by the next run.
    use(users, cluster, cpu_hours=D("11"), gpu_hours=D("2"))  # +$0.10 each
    catalog.fail_next(50, status=503, path=METER_EVENT_STREAM)
    down = usage_report_to_stripe()
    assert down.errors and down.sent_events == 0
    pending = set(
        StripeUsageReport.objects.exclude(pending_identifier="").values_list(
            "pending_identifier", flat=True
        )
    )
    assert len(pending) == 6
    catalog.clear_failures()
    sent_before = len(catalog.stream_requests())

    after = usage_report_to_stripe()

    assert after.errors == [] and after.sent_events == 6
    resent = {i for r in catalog.stream_requests()[sent_before:] for i in _ids(r)}
    assert resent == pending
    for user in users:
        assert stripe_cents(catalog, user) == to_cents(month_to_date_cost(user)) * 100
    counted = Counter(e["identifier"] for e in catalog.meter_events)
    assert max(counted.values()) == 1
    requests_before = len(catalog.requests)
    assert usage_report_to_stripe().sent_events == 0  # a rerun sends nothing
    assert len(catalog.requests) == requests_before


def test_an_answer_lost_after_stripe_took_the_events_counts_them_once(catalog):
    users = postpaid_users(catalog, 3)
    use(users, ClusterFactory(max_users=10), cpu_hours=D("10"))
    catalog.fail_next(1, status=500, path=METER_EVENT_STREAM, processed=True)

    assert usage_report_to_stripe().errors
    run = usage_report_to_stripe()

    assert run.errors == [] and run.sent_events == 3
    assert len(catalog.meter_events) == 3  # the resent identifiers were dropped by Stripe
    for user in users:
        assert stripe_cents(catalog, user) == 100


def _ids(request):
    return [event["identifier"] for event in request.json["events"]]


def test_the_stream_is_paced_to_the_configured_rate(catalog, settings, monkeypatch):
    """Requests are spaced 1/rate apart: with 2 requests a second, 3 requests take at least
    one second of waiting, measured on the pacing clock, not the wall."""
    monkeypatch.setattr(gateway, "METER_STREAM_MAX_EVENTS", 1)
    settings.STRIPE_METER_STREAM_REQUESTS_PER_SECOND = 2
    waited = []
    monkeypatch.setattr(gateway, "_pause", waited.append)
    users = postpaid_users(catalog, 3)
    use(users, ClusterFactory(max_users=10), cpu_hours=D("10"))

    run = usage_report_to_stripe()

    assert run.sent_events == 3
    assert sum(waited) >= 0.9 and len(catalog.stream_requests()) == 3


def test_a_session_is_asked_for_once_per_run_not_per_request(catalog, monkeypatch):
    monkeypatch.setattr(gateway, "METER_STREAM_MAX_EVENTS", 2)
    users = postpaid_users(catalog, 5)
    use(users, ClusterFactory(max_users=10), cpu_hours=D("10"))

    usage_report_to_stripe()

    assert len(catalog.posts(METER_EVENT_SESSION)) == 1
    assert len(catalog.stream_requests()) == 3


def test_small_batches_reach_every_month_due_or_pending_once(catalog, settings):
    """Batches of 3 over months due and months with a pending event, interleaved in
    (user, month) order: every one is reached, none twice."""
    settings.STRIPE_REPORT_BATCH_SIZE = 3
    users = postpaid_users(catalog, 8)
    cluster = ClusterFactory(max_users=100)
    use(users[::2], cluster, cpu_hours=D("10"))
    catalog.fail_next(1, status=503, path=METER_EVENT_STREAM)
    assert usage_report_to_stripe().errors  # the first batch's events stay pending
    use(users[1::2], cluster, cpu_hours=D("20"))

    run = usage_report_to_stripe()

    assert run.errors == [] and run.batches == 3
    assert len(catalog.meter_events) == 8 == len(set(catalog.streamed_identifiers()))
    for user in users:
        assert stripe_cents(catalog, user) == to_cents(month_to_date_cost(user)) * 100
    assert not StripeReportDue.objects.exists()


def test_a_month_stays_due_while_its_events_are_pending(catalog):
    """The next run finds a month with a pending event by its due mark (no index on the
    report rows' pending columns, so their writes stay on their page)."""
    users = postpaid_users(catalog, 2)
    use(users, ClusterFactory(max_users=10), cpu_hours=D("10"))
    catalog.fail_next(1, status=503, path=METER_EVENT_STREAM)

    assert usage_report_to_stripe().errors

    due = set(StripeReportDue.objects.values_list("user_id", flat=True))
    assert due == {u.pk for u in users}
    assert StripeUsageReport.objects.exclude(pending_identifier="").count() == 2
    run = usage_report_to_stripe()
    assert run.errors == [] and run.sent_events == 2
    assert not StripeReportDue.objects.exists()
    assert not StripeUsageReport.objects.exclude(pending_identifier="").exists()
    for user in users:
        assert stripe_cents(catalog, user) == to_cents(month_to_date_cost(user)) * 100


def test_a_user_month_missing_one_of_its_report_rows_gets_it_back(catalog):
    """The rows are ensured only for user-months short of a row per resource: one with
    some of its rows (here the first resource's) is still completed."""
    [user] = postpaid_users(catalog, 1)
    cluster = ClusterFactory(max_users=10)
    use([user], cluster, cpu_hours=D("10"))
    assert usage_report_to_stripe().sent_events == 1
    StripeUsageReport.objects.filter(user=user, resource="gpu_hour").delete()  # never sent
    use([user], cluster, cpu_hours=D("10"), gpu_hours=D("2"))

    run = usage_report_to_stripe()

    assert run.errors == [] and run.sent_events == 1
    assert StripeUsageReport.objects.filter(user=user).count() == 4
    assert stripe_cents(catalog, user) == to_cents(month_to_date_cost(user)) * 100


def test_a_claimed_row_takes_each_column_in_the_order_the_claim_selects_them():
    """`ReportRow` unpacks a claimed row by hand, for speed: each value must land on the
    attribute of its column (`CLAIMED_COLUMNS`, the order the claim's SELECT lists),
    whatever columns `REPORT_COLUMNS` comes to hold."""
    from billing.stripe_report_rules import CLAIMED_COLUMNS, ReportRow

    values = tuple(f"value of {name}" for name in CLAIMED_COLUMNS)
    row = ReportRow(values)

    assert {name: getattr(row, name) for name in CLAIMED_COLUMNS} == {
        name: f"value of {name}" for name in CLAIMED_COLUMNS
    }


def test_a_claimed_row_s_moments_are_the_stored_ones_and_are_written_back_unchanged():
    """The claim reads the two moments as epoch microseconds (`last_reported_at` is made a
    datetime only when read): to the microsecond, and a row written whole keeps them."""
    from django.db import transaction

    from billing.stripe_report_rules import reports_claim, reports_save

    user = UserFactory()
    month = timezone.now().date().replace(day=1)
    moment = dt.datetime(2026, 11, 30, 23, 59, 58, 123457, tzinfo=dt.UTC)
    later = moment + dt.timedelta(microseconds=1)
    for resource in ("cpu_hour", "gpu_hour", "storage_gb_month", "api_calls_1k"):
        StripeUsageReport.objects.create(
            user=user,
            month=month,
            resource=resource,
            pending_identifier="p" if resource == "gpu_hour" else "",
            pending_cents=5 if resource == "gpu_hour" else None,
            pending_since=later if resource == "gpu_hour" else None,
            last_reported_at=moment if resource != "api_calls_1k" else None,
        )

    with transaction.atomic():
        rows = reports_claim([(user.pk, month)])[(user.pk, month)]
        reports_save(rows.values())

    assert {r: (row.pending_since, row.last_reported_at) for r, row in rows.items()} == {
        "cpu_hour": (None, moment),
        "gpu_hour": (later, moment),
        "storage_gb_month": (None, moment),
        "api_calls_1k": (None, None),
    }
    assert dict(
        StripeUsageReport.objects.filter(user=user).values_list("resource", "last_reported_at")
    ) == {"cpu_hour": moment, "gpu_hour": moment, "storage_gb_month": moment, "api_calls_1k": None}
    assert StripeUsageReport.objects.get(user=user, resource="gpu_hour").pending_since == later
