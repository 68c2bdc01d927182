"""Charts: daily cost per cluster and cluster fill on the dashboard, a user's daily cost on
their admin page; server-rendered SVG with the figures as a table beside it."""

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test import RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import BillingProfile
from billing.usage import UsageRecord, usage_upsert
from clusters import services
from clusters.models import ClusterFillDaily
from console.dashboard import dashboard_charts, dashboard_tiles
from tests.factories import AdminFactory, ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db


def add_usage(user, cluster, days_ago, cpu_hours):
    today = timezone.now().date()
    usage_upsert(
        records=[
            UsageRecord(
                user_id=user.pk,
                cluster_id=cluster.pk,
                date=today - dt.timedelta(days=d),
                cpu_hours=Decimal(cpu_hours),
            )
            for d in days_ago
        ],
        actor="t",
    )


def section(body: str, dom_id: str) -> str:
    start = body.index(f'id="{dom_id}"')
    return body[start : body.index("</figure>", start)]


def table_rows(html: str) -> dict[str, list[str]]:
    """The fallback table: first cell -> the other cells, tags stripped."""
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", html, re.S):
        cells = [
            re.sub(r"<[^>]+>", "", c).strip()
            for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        ]
        rows[cells[0]] = cells[1:]
    return rows


def test_the_dashboard_draws_daily_cost_with_one_line_per_cluster_and_its_figures(
    operator_client,
):
    east, west = ClusterFactory(name="east"), ClusterFactory(name="west")
    alice, bob = UserFactory(), UserFactory()
    add_usage(alice, east, [1, 2, 3], "10")  # $1.00 a day
    add_usage(bob, west, [2], "5")  # $0.50
    add_usage(bob, west, [120], "5")  # older than 90 days: not drawn

    body = operator_client.get("/admin/").content.decode()

    chart = section(body, "chart-cost-per-cluster")
    assert "<svg" in chart and 'role="img"' in chart
    assert "<title" in chart and "<desc" in chart
    assert chart.count('class="series"') == 2  # one line per cluster
    assert "east" in chart and "west" in chart  # the legend names them
    rows = table_rows(chart)
    assert rows["Date"] == ["east", "west", "Total"]
    assert rows["Total"] == ["$3.00", "$0.50", "$3.50"]
    day = (timezone.now().date() - dt.timedelta(days=2)).isoformat()
    assert rows[day] == ["$1.00", "$0.50", "$1.50"]
    assert "<details" in chart
    assert "<script" not in chart


def test_the_cost_chart_says_so_when_there_is_no_usage_yet(operator_client):
    ClusterFactory(name="east")

    body = operator_client.get("/admin/").content.decode()

    chart = section(body, "chart-cost-per-cluster")
    assert "No usage yet" in chart
    assert "<svg" not in chart


def test_cluster_fill_over_time_is_drawn_from_the_daily_readings(operator_client):
    east = ClusterFactory(name="east", max_users=10)
    ClusterFactory(name="west")
    today = timezone.now().date()
    for user in UserFactory.create_batch(2):
        services.assignment_create(user=user, cluster=east, actor=None)
    three_days_ago = timezone.now() - dt.timedelta(days=3)
    assert services.cluster_fill_record(now=three_days_ago) == 2
    services.assignment_create(user=UserFactory(), cluster=east, actor=None)

    body = operator_client.get("/admin/").content.decode()

    chart = section(body, "chart-cluster-fill")
    assert chart.count('class="series"') == 2
    rows = table_rows(chart)
    assert rows["Date"] == ["east", "west", "Total"]
    assert rows[(today - dt.timedelta(days=3)).isoformat()] == ["2", "0", "2"]
    assert rows[today.isoformat()] == ["3", "0", "3"]  # today: as it is now
    # A day without a reading is shown as unknown, never guessed.
    assert rows[(today - dt.timedelta(days=1)).isoformat()] == ["—", "—", "—"]


def test_recording_the_fill_twice_a_day_keeps_one_reading_the_latest(db):
    east = ClusterFactory(name="east")
    services.cluster_fill_record()
    services.assignment_create(user=UserFactory(), cluster=east, actor=None)
    services.cluster_fill_record()

    assert list(ClusterFillDaily.objects.values_list("date", "users", "max_users")) == [
        (timezone.now().date(), 1, east.max_users)
    ]


def test_the_dashboard_charts_make_as_many_queries_for_a_big_world_as_a_small_one(
    operator_client,
):
    cluster = ClusterFactory()
    add_usage(UserFactory(), cluster, [1], "1")
    operator_client.get("/admin/")

    def queries():
        with CaptureQueriesContext(connection) as captured:
            operator_client.get("/admin/")
        return len(captured)

    small = queries()
    for name in ("a", "b", "c", "d"):
        other = ClusterFactory(name=name)
        for user in UserFactory.create_batch(3):
            services.assignment_create(user=user, cluster=other, actor=None)
            add_usage(user, other, range(30), "1")
    for days_ago in range(10):
        services.cluster_fill_record(now=timezone.now() - dt.timedelta(days=days_ago))
    assert queries() == small


CHART_IDS = {"chart-cost-per-cluster", "chart-cluster-fill"}
CHARTS_BY_PERSONA = {
    "no_permission_staff": set(),
    "view_only_staff": CHART_IDS,
    "change_user_staff": set(),
    "support_staff": {"chart-cluster-fill"},  # clusters yes, usage no
    "finance_staff": CHART_IDS,
    "superuser": CHART_IDS,
}


@pytest.mark.parametrize(("who", "expected"), CHARTS_BY_PERSONA.items())
def test_a_chart_appears_only_to_those_who_may_open_the_list_behind_it(
    client, persona, who, expected
):
    cluster = ClusterFactory()
    add_usage(UserFactory(), cluster, [1], "1")
    client.force_login(persona(who), backend="django.contrib.auth.backends.ModelBackend")

    body = client.get("/admin/").content.decode()

    assert {i for i in CHART_IDS if f'id="{i}"' in body} == expected


# The month tiles beside last month's


def _request(user):
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def test_on_the_first_of_the_month_the_tiles_show_last_months_figures_beside(db):
    east = ClusterFactory(name="east")
    user = UserFactory()
    first = dt.date(2026, 12, 1)
    usage_upsert(
        records=[
            UsageRecord(user_id=user.pk, cluster_id=east.pk, date=day, cpu_hours=Decimal(10))
            for day in (dt.date(2026, 10, 31), dt.date(2026, 11, 1), dt.date(2026, 11, 30))
        ],
        actor="t",
    )

    found = {t.title: t for t in dashboard_tiles(_request(AdminFactory()), today=first)}

    usage = found["Usage this month"]
    assert usage.value == "$0.00"
    assert usage.previous == "November: $2.00"  # October's day is not November's
    per_cluster = found["Usage per cluster this month"]
    assert per_cluster.rows[0][0] == "east"
    assert per_cluster.rows[0][1].startswith("$0.00 · November $2.00")


def test_the_dashboard_page_shows_last_month_beside_this_month(operator_client):
    today = timezone.now().date()
    last_month = today.replace(day=1) - dt.timedelta(days=1)
    east = ClusterFactory(name="east")
    usage_upsert(
        records=[
            UsageRecord(
                user_id=UserFactory().pk, cluster_id=east.pk, date=last_month, cpu_hours=Decimal(3)
            )
        ],
        actor="t",
    )

    body = operator_client.get("/admin/").content.decode()

    assert f"{last_month:%B}: $0.30" in body


def test_the_dashboard_charts_can_be_drawn_for_a_given_day(db):
    east = ClusterFactory(name="east")
    usage_upsert(
        records=[
            UsageRecord(
                user_id=UserFactory().pk,
                cluster_id=east.pk,
                date=dt.date(2026, 11, 30),
                cpu_hours=Decimal(10),
            )
        ],
        actor="t",
    )
    charts = dashboard_charts(_request(AdminFactory()), today=dt.date(2026, 12, 1))
    cost = next(c for c in charts if c.dom_id == "chart-cost-per-cluster")
    assert table_rows(str(cost.html))["2026-11-30"] == ["$1.00"]


# The user's admin page


def test_a_users_admin_page_draws_their_daily_cost_over_90_days(operator_client):
    cluster = ClusterFactory()
    user, other = UserFactory(), UserFactory()
    add_usage(user, cluster, [0, 5, 60], "10")
    add_usage(user, cluster, [100], "10")  # older than 90 days
    add_usage(other, cluster, [5], "99")

    body = operator_client.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()

    chart = section(body, "chart-user-cost")
    assert "<svg" in chart and chart.count("<rect ") == 3
    rows = table_rows(chart)
    assert rows["Total"] == ["$3.00"]
    assert rows[(timezone.now().date() - dt.timedelta(days=5)).isoformat()] == ["$1.00"]


def test_a_users_admin_page_says_no_usage_yet_and_keeps_its_queries_constant(operator_client):
    cluster = ClusterFactory()
    user, busy = UserFactory(), UserFactory()

    body = operator_client.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()
    assert "No usage yet" in section(body, "chart-user-cost")

    def queries(who):
        with CaptureQueriesContext(connection) as captured:
            operator_client.get(f"/admin/accounts/user/{who.pk}/change/")
        return len(captured)

    add_usage(busy, cluster, [1], "1")
    few = queries(busy)
    add_usage(busy, cluster, range(90), "1")
    assert queries(busy) == few


def test_a_users_cost_chart_shows_only_its_90_days_and_the_billing_table_the_newest_30(
    operator_client,
):
    # Usage 100 to 120 days ago only: none in the chart's window, but the billing section
    # lists the newest days with usage, however old (the two read one query between them).
    user = UserFactory()
    add_usage(user, ClusterFactory(), range(100, 121), "1")
    oldest_shown = timezone.now().date() - dt.timedelta(days=100 + 29)

    body = operator_client.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()

    assert "No usage yet" in section(body, "chart-user-cost")
    billing = body[body.index("<th>Storage GB-mo</th>") :]
    shown = re.findall(r"<tr><td>(\d{4}-\d{2}-\d{2})</td>", billing)
    assert len(shown) == 21  # all of them: fewer than 30
    assert min(shown) >= str(oldest_shown)


def test_the_users_cost_chart_is_only_for_those_who_may_view_usage(client, persona):
    user = UserFactory()
    add_usage(user, ClusterFactory(), [1], "1")
    client.force_login(
        persona("support_staff"), backend="django.contrib.auth.backends.ModelBackend"
    )

    body = client.get(f"/admin/accounts/user/{user.pk}/change/").content.decode()

    assert 'id="chart-user-cost"' not in body


def test_the_cost_chart_sums_the_daily_rollup_in_one_query_and_never_reads_usage_daily(db):
    east = ClusterFactory(name="east")
    prepaid, postpaid = UserFactory(), UserFactory()
    BillingProfile.objects.create(user=prepaid, mode=BillingProfile.Mode.PREPAID)
    add_usage(prepaid, east, [1, 2], "10")  # $1.00 a day, on credits
    add_usage(postpaid, east, [1], "5")  # $0.50, on Stripe: the same cluster-day
    usage_upsert(
        records=[UsageRecord(user_id=postpaid.pk, date=timezone.now().date(), api_calls=10**5)],
        actor="t",
    )  # $1.00 with no cluster, today
    request = _request(AdminFactory())

    with CaptureQueriesContext(connection) as captured:
        charts = dashboard_charts(request)

    usage = [q["sql"] for q in captured.captured_queries if "usage" in q["sql"]]
    assert len(usage) == 1
    assert '"usage_cluster_daily"' in usage[0] and "usage_daily" not in usage[0]
    assert not [q for q in captured.captured_queries if "usage_daily" in q["sql"]]
    rows = table_rows(str(next(c for c in charts if c.dom_id == "chart-cost-per-cluster").html))
    today = timezone.now().date()
    assert rows["Date"] == ["east", "no cluster", "Total"]
    assert rows[(today - dt.timedelta(days=1)).isoformat()] == ["$1.50", "$0.00", "$1.50"]
    assert rows[today.isoformat()] == ["$0.00", "$1.00", "$1.00"]
    assert rows["Total"] == ["$2.50", "$1.00", "$3.50"]


def test_the_dashboard_charts_take_three_queries(db, django_assert_num_queries):
    ClusterFactory()
    add_usage(UserFactory(), ClusterFactory(), [1, 5], "1")
    request = _request(AdminFactory())

    # The cost per cluster and day; the clusters and their daily fill readings.
    with django_assert_num_queries(3):
        dashboard_charts(request)
