"""The seed's usage tables and queries, verbatim, on PostgreSQL."""

import datetime as dt
from decimal import Decimal

import pytest
from django.utils import timezone

from billing import selectors
from billing.usage import UsageRecord, usage_upsert
from tests.factories import ClusterFactory, UserFactory
from tests.seed_schema import SEED_COLUMNS, columns_of, run

pytestmark = pytest.mark.django_db
D = Decimal

CURRENT_MONTH_USAGE = """
SELECT SUM(total_cost) as monthly_total
FROM usage_daily
WHERE user_id = '{user_id}'
AND date >= date_trunc('month', CURRENT_DATE);
"""

DAILY_BREAKDOWN = """
SELECT date, cpu_hours, gpu_hours, storage_gb_months, total_cost
FROM usage_daily
WHERE user_id = '{user_id}'
ORDER BY date DESC
LIMIT 30;
"""


@pytest.mark.parametrize("table", ["usage_daily", "user_credits"])
def test_billing_tables_have_every_seed_column_with_its_type_and_default(table):
    actual = columns_of(table)
    for column, expected in SEED_COLUMNS[table].items():
        assert actual.get(column) == expected, column


def test_the_seed_index_on_user_and_date_exists():
    [index] = run("SELECT indexdef FROM pg_indexes WHERE indexname = 'idx_usage_daily_user_date'")
    assert "(user_id, date)" in index["indexdef"]


def test_a_seed_style_usage_insert_gets_the_defaults():
    user = UserFactory()
    run(f"INSERT INTO usage_daily (user_id, date) VALUES ('{user.pk}', '2026-11-01')")
    [row] = run("SELECT id, cpu_hours, api_calls, total_cost, created_at FROM usage_daily")
    assert row["id"] is not None and row["created_at"] is not None
    assert (row["cpu_hours"], row["api_calls"], row["total_cost"]) == (0, 0, 0)


def test_the_seed_usage_queries_run_verbatim_and_agree_with_our_selectors():
    user, cluster = UserFactory(), ClusterFactory()
    today = timezone.now().date()
    days = [today - dt.timedelta(days=n) for n in range(0, 45)]
    usage_upsert(
        records=[
            UsageRecord(
                user_id=user.pk,
                cluster_id=cluster.pk,
                date=day,
                cpu_hours=D("1.23456"),
                gpu_hours=D("0.1"),
            )
            for day in days
        ],
        actor="t",
    )

    [monthly] = run(CURRENT_MONTH_USAGE.format(user_id=user.pk))
    breakdown = run(DAILY_BREAKDOWN.format(user_id=user.pk))

    assert monthly["monthly_total"] == selectors.month_to_date_cost(user)
    assert len(breakdown) == 30
    ours = list(selectors.daily_breakdown(user))
    assert [r["date"] for r in breakdown] == [r["date"] for r in ours]
    assert [r["total_cost"] for r in breakdown] == [r["total_cost"] for r in ours]
    assert breakdown[0]["total_cost"] == D("0.173456")  # exact: 1.23456 x 0.10 + 0.1 x 0.50
