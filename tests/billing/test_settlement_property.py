"""Settlement as a whole, by property: whatever sequence of collections, reruns, backfills,
corrections, mode switches, finalized invoices and lost Stripe answers happens, each user
ends up charged exactly their final `usage_daily` costs, to the cent, and nothing twice.

What a user is charged is read from where the money is: the credit ledger for prepaid
days; for postpaid days what Stripe bills, i.e. per month the meter events Stripe counts
(for a month whose invoice was finalized, what that invoice counted when it was
finalized; for a month that ended before the subscription began, nothing) plus the
invoice items carrying corrections for that month. Stripe is the local fake, driven by
the real SDK; each example runs in a transaction that is rolled back, on a fresh fake."""

from __future__ import annotations

import datetime as dt
import io
from collections import Counter, defaultdict
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import transaction
from django.db.models import Sum
from django.utils import timezone
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from billing.checkout import customer_ensure
from billing.invoices import invoice_apply
from billing.models import (
    BillingHistory,
    BillingProfile,
    CreditLedgerEntry,
    StripeCatalogEntry,
    StripeUsageAdjustment,
    StripeUsageReport,
    UsageDaily,
)
from billing.pricing import to_cents
from billing.profiles import billing_mode_set, start_of_day
from billing.stripe_reporting import month_bounds, usage_report_to_stripe
from billing.usage import UsageRecord, usage_upsert
from tests.factories import ClusterFactory, UserFactory
from tests.fakes.stripe import METER_EVENT_STREAM, reset

pytestmark = pytest.mark.django_db
D = Decimal
ZERO = D(0)

# The world: a few users, one cluster, days in this month (today included: a switch that
# takes effect at the start of today changes its channel) and the two months before
# (last month still takes meter events until its invoice is finalized; the one before is
# older than Stripe takes them, so only invoice items reach it).
DAYS = st.sampled_from(["today", (0, 1), (0, 2), (1, 1), (1, 15), (1, 28), (2, 3), (2, 28)])
USERS = st.integers(0, 2)
QUANTITIES = st.sampled_from(["0", "0.001", "0.004", "1.005", "3.333", "10", "12.345"]).map(D)
FIGURES = st.fixed_dictionaries(
    {
        "cpu_hours": QUANTITIES,
        "gpu_hours": st.sampled_from(["0", "0.017", "1.5"]).map(D),
        "storage_gb_months": st.sampled_from(["0", "0.0333333333", "2"]).map(D),
        "api_calls": st.sampled_from([0, 1, 333, 1234]),
    }
)
FAILURES = st.sampled_from(
    [
        None,
        (METER_EVENT_STREAM, True),  # Stripe counted them, the answer was lost
        (METER_EVENT_STREAM, False),  # they never got there
        ("/v1/invoiceitems", True),
        ("/v1/invoiceitems", False),
    ]
)
USAGE = st.tuples(st.just("usage"), USERS, DAYS, FIGURES)  # collection, backfill, correction
REPORT = st.tuples(st.just("report"), FAILURES)
STEPS = st.one_of(
    USAGE,
    USAGE,
    USAGE,
    REPORT,
    REPORT,
    st.tuples(st.just("rerun"), st.integers(0, 20)),  # a write sent again, unchanged
    st.tuples(
        st.just("switch"),
        USERS,
        st.sampled_from(["prepaid", "postpaid"]),
        st.sampled_from(["today", "now", "tomorrow"]),
    ),
    st.tuples(st.just("finalize"), USERS),  # last month's invoice
)
PEOPLE = st.lists(
    st.tuples(
        st.sampled_from(["postpaid", "prepaid"]),
        st.sampled_from(["long", "new"]),  # subscribed 90 days ago, or just now
    ),
    min_size=2,
    max_size=3,
)


def month_of(day: dt.date) -> dt.date:
    return day.replace(day=1)


def months_back(today: dt.date, n: int) -> dt.date:
    month = month_of(today)
    for _ in range(n):
        month = month_of(month - dt.timedelta(days=1))
    return month


def unix_month(timestamp: int) -> dt.date:
    return month_of(dt.datetime.fromtimestamp(timestamp, dt.UTC).date())


class World:
    """One example's users, fake Stripe and what happened to it."""

    def __init__(self, fake, people):
        self.fake = fake
        self.today = timezone.now().date()
        call_command("setup_stripe_billing", stdout=io.StringIO())
        prices = [entry.price_id for entry in StripeCatalogEntry.objects.order_by("resource")]
        self.cluster = ClusterFactory()
        self.users, self.customers, self.subscriptions, self.started = [], {}, {}, {}
        for mode, since in people:
            user = UserFactory()
            customer = customer_ensure(user=user)
            started = timezone.now() - dt.timedelta(days=90 if since == "long" else 0)
            subscription = fake.add_subscription(
                customer=customer, price_ids=prices, start_date=int(started.timestamp())
            )
            BillingProfile.objects.update_or_create(
                user=user,
                defaults={
                    "mode": mode,
                    "stripe_subscription_id": subscription["id"],
                    "subscription_status": "active",
                },
            )
            self.users.append(user)
            self.customers[user.pk] = customer
            self.subscriptions[user.pk] = subscription["id"]
            self.started[user.pk] = dt.datetime.fromtimestamp(subscription["start_date"], dt.UTC)
        self.writes: list[UsageRecord] = []
        # (user id, month) -> the meter cents the finalized invoice counted.
        self.invoiced: dict[tuple[str, dt.date], int] = {}

    def day(self, spec) -> dt.date:
        if spec == "today":
            return self.today
        back, day_of_month = spec
        return min(months_back(self.today, back) + dt.timedelta(days=day_of_month - 1), self.today)

    def step(self, step) -> None:
        kind, *args = step
        getattr(self, kind)(*args)

    def usage(self, user_index, day, figures) -> None:
        user = self.users[user_index % len(self.users)]
        record = UsageRecord(
            user_id=user.pk, cluster_id=self.cluster.pk, date=self.day(day), **figures
        )
        usage_upsert(records=[record], actor="collector")
        self.writes.append(record)

    def rerun(self, which) -> None:
        if self.writes:
            usage_upsert(records=[self.writes[which % len(self.writes)]], actor="rerun")

    def switch(self, user_index, mode, when) -> None:
        effective_at = {
            "today": start_of_day(self.today),
            "now": timezone.now(),
            "tomorrow": start_of_day(self.today + dt.timedelta(days=1)),
        }[when]
        user = self.users[user_index % len(self.users)]
        try:
            switched = billing_mode_set(
                user=user, mode=mode, actor="operator", effective_at=effective_at
            )
        except ValueError:
            switched = None  # a switch the service refuses changes nothing
        event(f"switch effective {when}: {'refused' if switched is None else switched}")

    def finalize(self, user_index) -> None:
        """Stripe finalizes last month's invoice: it counts the meter as it is now, and
        the invoice.finalized event is applied."""
        user = self.users[user_index % len(self.users)]
        month = months_back(self.today, 1)
        if (user.pk, month) in self.invoiced:
            return
        start, end = month_bounds(month)
        invoice = self.fake.add_usage_invoice(
            subscription_id=self.subscriptions[user.pk], period_start=start, period_end=end
        )
        invoice_apply(invoice, status=BillingHistory.Status.PENDING, event_created=timezone.now())
        self.invoiced[(user.pk, month)] = invoice["amount_due"]

    def report(self, failure) -> None:
        """A reporting run; with a failure, the next answer Stripe gives on that path (in
        this run or a later one) is lost, after Stripe did the work or before."""
        if failure is not None:
            path, processed = failure
            self.fake.fail_next(1, status=500, path=path, processed=processed)
        run = usage_report_to_stripe()
        for error in run.errors:
            event(f"a run met a lost answer: {'invoice item' in error}")

    # What Stripe holds

    def meter_cents(self) -> dict[tuple[str, dt.date], int]:
        """Per (customer, month): the meter events Stripe accepted, each identifier once."""
        totals, seen = defaultdict(int), set()
        for sent in self.fake.meter_events:
            if sent["identifier"] in seen:
                continue
            seen.add(sent["identifier"])
            key = (sent["payload"]["stripe_customer_id"], unix_month(sent["timestamp"]))
            totals[key] += int(sent["payload"]["value"])
        return totals

    def item_cents(self) -> dict[tuple[str, dt.date], int]:
        totals = defaultdict(int)
        for item in self.fake.invoiceitems.values():
            month = dt.date.fromisoformat(item["metadata"]["month"] + "-01")
            totals[(item["customer"], month)] += item["amount"]
        return totals


@pytest.fixture
def stripe_account(fake_stripe, stripe_server):
    """A fresh fake Stripe account per hypothesis example (settings point at the server)."""
    return lambda: reset(stripe_server)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(people=PEOPLE, steps=st.lists(STEPS, min_size=6, max_size=30))
def test_every_user_is_charged_their_final_usage_to_the_cent_and_nothing_twice(
    stripe_account, people, steps
):
    note(f"people={people!r}")
    note("steps=[\n" + "".join(f"    {step!r},\n" for step in steps) + "]")
    with transaction.atomic():
        world = World(stripe_account(), people)
        for step in steps:
            world.step(step)
        world.fake.clear_failures()
        # The end: clean runs until nothing is left to send (a pending event held back a
        # newer difference for its resource, which the next run sends).
        runs = [usage_report_to_stripe() for _ in range(3)]

        assert [run.errors for run in runs] == [[], [], []]
        assert (runs[-1].sent_events, runs[-1].adjustments) == (0, 0)
        assert not StripeUsageReport.objects.exclude(pending_identifier="").exists()
        assert not StripeUsageAdjustment.objects.filter(status="pending").exists()
        rows = UsageDaily.objects.filter(user__in=world.users)
        event(f"channels used: {sorted(set(rows.values_list('billed_via', flat=True)))}")
        event(f"invoice items: {min(len(world.fake.invoiceitems), 3)}+")
        event(f"finalized invoices: {len(world.invoiced)}")
        assert_credits_charge_the_prepaid_days(world)
        assert_stripe_charges_the_postpaid_days(world)
        assert_nothing_charged_twice(world)
        transaction.set_rollback(True)


def assert_credits_charge_the_prepaid_days(world: World) -> None:
    for user in world.users:
        rows = UsageDaily.objects.filter(user=user)
        prepaid = rows.filter(billed_via=UsageDaily.BilledVia.CREDITS).aggregate(
            cost=Sum("total_cost", default=ZERO), debited=Sum("credits_debited", default=ZERO)
        )
        ledger = CreditLedgerEntry.objects.filter(user=user, kind=CreditLedgerEntry.Kind.USAGE)
        taken = -ledger.aggregate(total=Sum("amount", default=ZERO))["total"]
        assert taken == prepaid["cost"] == prepaid["debited"], user.pk
        postpaid = rows.filter(billed_via=UsageDaily.BilledVia.STRIPE)
        assert not postpaid.exclude(credits_debited=0).exists()
        assert not ledger.filter(usage__billed_via=UsageDaily.BilledVia.STRIPE).exists()


def ours_by_month(user) -> dict[dt.date, int]:
    """Per month, the user's Stripe-billed usage rounded once, in cents."""
    totals = defaultdict(lambda: ZERO)
    for day, cost in UsageDaily.objects.filter(
        user=user, billed_via=UsageDaily.BilledVia.STRIPE
    ).values_list("date", "total_cost"):
        totals[month_of(day)] += cost
    return {month: int(to_cents(total) * 100) for month, total in totals.items()}


def assert_stripe_charges_the_postpaid_days(world: World) -> None:
    metered, items = world.meter_cents(), world.item_cents()
    for user in world.users:
        customer = world.customers[user.pk]
        ours = ours_by_month(user)
        months = set(ours) | {m for c, m in [*metered, *items] if c == customer}
        for month in sorted(months):
            live = metered.get((customer, month), 0)
            _, end = month_bounds(month)
            if (user.pk, month) in world.invoiced:
                # Stripe bills what the invoice counted; nothing may reach the meter later.
                billed = world.invoiced[(user.pk, month)]
                assert live == billed, (user.pk, month, "metered after the invoice")
            elif end <= world.started[user.pk].timestamp():
                billed = 0  # no invoice of the subscription covers it
                assert live == 0, (user.pk, month, "metered before the subscription")
            else:
                billed = live
            charged = billed + items.get((customer, month), 0)
            assert charged == ours.get(month, 0), (user.pk, month, billed, items)


def assert_nothing_charged_twice(world: World) -> None:
    identifiers = Counter(e["identifier"] for e in world.fake.meter_events)
    assert [i for i, n in identifiers.items() if n > 1] == []
    adjustments = Counter(
        i["metadata"]["usage_adjustment"] for i in world.fake.invoiceitems.values()
    )
    assert [a for a, n in adjustments.items() if n > 1] == []
    assert len(world.fake.invoiceitems) == StripeUsageAdjustment.objects.count()
    metered, items = world.meter_cents(), world.item_cents()
    for user in world.users:
        customer = world.customers[user.pk]
        reports = (
            StripeUsageReport.objects.filter(user=user)
            .values("month")
            .annotate(reported=Sum("reported_cents"), adjusted=Sum("adjusted_cents"))
        )
        for report in reports:
            month = report["month"]
            key = (customer, month)
            assert report["reported"] == metered.get(key, 0) + items.get(key, 0), key
            assert report["adjusted"] == items.get(key, 0), key
