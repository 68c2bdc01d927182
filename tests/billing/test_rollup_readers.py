"""The readers that sum whole months read `usage_monthly`, not a month of `usage_daily`
rows, in a constant number of queries, and give the figures the daily rows give."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import User
from billing import forecast, selectors
from billing.alerts import cap_alerts_evaluate
from billing.models import BillingProfile, Price, SpendingAlert, UsageDaily
from billing.pricing import Quantities, RateBook, resource_costs, to_cents
from billing.reconciliation import credits_by_user, ours_by_user
from billing.stripe_report_rules import RESOURCES, _split, months_cents
from billing.stripe_reporting import month_cents_by_resource
from billing.usage import UsageRecord, usage_upsert
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db
D = Decimal
TODAY = timezone.now().date()
THIS_MONTH = TODAY.replace(day=1)
LAST_MONTH = (THIS_MONTH - dt.timedelta(days=1)).replace(day=1)


def reads_daily_rows(captured) -> list[str]:
    """Queries that aggregate daily rows (a join from the credit ledger to its rows is not)."""
    return [
        q["sql"]
        for q in captured.captured_queries
        if 'FROM "usage_daily"' in q["sql"] or "FROM usage_daily" in q["sql"]
    ]


def daily_sum(sql_where: str, params) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT user_id, sum(total_cost) FROM usage_daily WHERE {sql_where} GROUP BY 1",
            params,
        )
        return dict(cursor.fetchall())


@pytest.fixture
def world():
    """Four users over two clusters and no cluster, two months, both channels."""
    clusters = [ClusterFactory(), ClusterFactory()]
    users = UserFactory.create_batch(4)
    BillingProfile.objects.create(user=users[3], mode=BillingProfile.Mode.PREPAID)
    records = []
    for n, user in enumerate(users):
        for day in {LAST_MONTH, LAST_MONTH + dt.timedelta(days=9), THIS_MONTH, TODAY}:
            for cluster in (*clusters, None):
                records.append(
                    UsageRecord(
                        user_id=user.pk,
                        cluster_id=cluster.pk if cluster else None,
                        date=day,
                        cpu_hours=D("1.25") * (n + 1),
                        gpu_hours=D(n % 2),
                        storage_gb_months=D("0.033"),
                        api_calls=1000 * n,
                    )
                )
    usage_upsert(records=records, actor="test")
    return users


def test_month_to_date_reads_the_rollup_for_one_user_a_list_and_everyone(world):
    expected = daily_sum("date >= %s", [THIS_MONTH])
    with CaptureQueriesContext(connection) as captured:
        one = selectors.month_to_date_cost(world[0])
        listed = {
            u.pk: u.month_to_date_total
            for u in selectors.users_with_billing_figures(
                User.objects.filter(pk__in=[w.pk for w in world])
            )
        }
        everyone = {r["user_id"]: r["monthly_total"] for r in selectors.month_to_date_by_user()}
    assert len(captured) == 3
    assert reads_daily_rows(captured) == []
    assert one == expected[world[0].pk]
    assert listed == expected == everyone


def test_a_months_cost_for_forecasts_reads_the_rollup(world):
    ids = [u.pk for u in world]
    with CaptureQueriesContext(connection) as captured:
        costs = forecast.month_costs(ids, month=LAST_MONTH)
        prepaid = forecast.month_costs(ids, month=TODAY, billed_via="credits")
    assert reads_daily_rows(captured) == []
    assert costs == daily_sum("date >= %s AND date < %s", [LAST_MONTH, THIS_MONTH])
    assert prepaid == daily_sum("date >= %s AND billed_via = 'credits'", [THIS_MONTH])
    assert set(prepaid) == {world[3].pk}


def test_unbilled_usage_reads_the_rollup(world):
    with CaptureQueriesContext(connection) as captured:
        held = selectors.unbilled_usage()
    assert reads_daily_rows(captured) == []
    stripe = daily_sum("billed_via = 'stripe'", [])
    assert held == {user_id: total.quantize(D("0.01")) for user_id, total in stripe.items()}


def test_reconciliation_reads_our_month_from_the_rollup_when_prices_hold_all_month(world):
    ids = [u.pk for u in world]
    with CaptureQueriesContext(connection) as captured:
        ours = ours_by_user(LAST_MONTH)
        credits = credits_by_user(LAST_MONTH, user_ids=ids)
    assert reads_daily_rows(captured) == []
    assert ours == {u.pk: month_cents_by_resource(u.pk, LAST_MONTH) for u in world[:3]}
    assert set(credits) == {world[3].pk}
    assert credits[world[3].pk].usage == credits[world[3].pk].debited > 0


def test_reconciliation_prices_each_day_when_a_price_changes_within_the_month(world):
    # A negotiated CPU price from the 5th of last month for one user: their month is
    # priced day by day (from the daily rows), the others' from the rollup.
    Price.objects.create(
        user=world[1],
        resource="cpu_hour",
        unit_price=D("0.5"),
        effective_from=LAST_MONTH + dt.timedelta(days=4),
    )
    usage_upsert(
        records=[
            UsageRecord(user_id=world[1].pk, date=LAST_MONTH + dt.timedelta(days=9), cpu_hours=D(3))
        ],
        actor="test",
    )
    with CaptureQueriesContext(connection) as captured:
        ours = ours_by_user(LAST_MONTH)
    assert len(reads_daily_rows(captured)) == 1
    assert ours == {u.pk: month_cents_by_resource(u.pk, LAST_MONTH) for u in world[:3]}


def test_cap_alerts_read_the_month_from_the_rollup(world, settings):
    settings.SPENDING_CAP_DEFAULT = "0.1"
    with CaptureQueriesContext(connection) as captured:
        cap_alerts_evaluate(user_ids=[u.pk for u in world], days=[LAST_MONTH])
    assert reads_daily_rows(captured) == []
    assert SpendingAlert.objects.filter(user_id=world[0].pk).exists()


def priced_day_by_day(pairs) -> dict:
    """The Stripe reporting's figures worked out from every daily row on its own, each
    priced on its day: what reading the rollup must give."""
    rates = RateBook.load()
    found = {}
    for user_id, month in pairs:
        days = UsageDaily.objects.filter(
            user_id=user_id,
            date__gte=month,
            date__lt=(month + dt.timedelta(days=32)).replace(day=1),
            billed_via=UsageDaily.BilledVia.STRIPE,
        )
        total, exact = D(0), dict.fromkeys(RESOURCES, D(0))
        for day in days:
            total += day.total_cost
            quantities = Quantities(
                cpu_hours=day.cpu_hours,
                gpu_hours=day.gpu_hours,
                storage_gb_months=day.storage_gb_months,
                api_calls=day.api_calls,
            )
            costs = resource_costs(quantities, rates.rates(user_id=user_id, day=day.date))
            for resource, cost in costs.items():
                exact[resource] += cost
        found[(user_id, month)] = _split(to_cents(total), exact)
    return found


def test_the_stripe_reporting_reads_its_months_from_the_rollup_when_prices_hold(world):
    pairs = [(u.pk, month) for u in world for month in (LAST_MONTH, THIS_MONTH)]
    with CaptureQueriesContext(connection) as captured:
        figures = months_cents(pairs)
    assert len(captured) == 2  # the prices, the figures
    assert reads_daily_rows(captured) == []
    assert figures == priced_day_by_day(pairs)
    assert sum(figures[(world[0].pk, LAST_MONTH)].values()) > 0
    assert figures[(world[3].pk, LAST_MONTH)] == dict.fromkeys(RESOURCES, 0)  # prepaid


def test_the_stripe_reporting_prices_by_day_only_months_whose_prices_change(world):
    # A negotiated CPU price from the 5th of last month for one user: that month is read
    # from the daily rows by stretches of the same prices, in the same one statement as the
    # others' months from the rollup.
    pairs = [(u.pk, month) for u in world for month in (LAST_MONTH, THIS_MONTH)]
    at_card = months_cents(pairs)
    Price.objects.create(
        user=world[1],
        resource="cpu_hour",
        unit_price=D("0.5"),
        effective_from=LAST_MONTH + dt.timedelta(days=4),
    )
    with CaptureQueriesContext(connection) as captured:
        figures = months_cents(pairs)
    assert len(captured) == 2
    (daily,) = reads_daily_rows(captured)
    assert "FROM usage_monthly" in daily  # one statement for both kinds of month
    assert figures == priced_day_by_day(pairs)
    assert figures[(world[1].pk, LAST_MONTH)] != at_card[(world[1].pk, LAST_MONTH)]
    others = {pair for pair in pairs if pair[0] != world[1].pk}
    assert {p: figures[p] for p in others} == {p: at_card[p] for p in others}
