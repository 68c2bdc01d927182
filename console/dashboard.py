"""The operator dashboard on the admin index: one aggregate query per tile, each tile a
link to the admin list that explains it."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import urlencode

from django.contrib import admin
from django.db.models import Count, F, Min, Q, Sum
from django.urls import reverse
from django.utils import timezone
from procrastinate.contrib.django.models import ProcrastinateEvent, ProcrastinateJob

from accounts.models import User
from billing.models import (
    StripeEvent,
    UsageClusterDaily,
    UsageCollectionRun,
    UsageDaily,
    UserCredits,
)
from billing.selectors import daily_cost_by_cluster, month_start, unbilled_usage
from clusters.models import CapacityWait, HopsworksAccount, HopsworksCluster
from clusters.selectors import cluster_fill_readings
from plumbing.charts import Series, as_count, chart_html
from plumbing.formatting import money, quantity


@dataclass
class Tile:
    title: str
    value: str
    url: str
    alert: bool = False
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (label, value, url)
    previous: str = ""  # the same figure for last month, beside this month's


def _list(model_path: str, **params) -> str:
    url = reverse(f"admin:{model_path}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def _active_users(month) -> list[Tile]:
    # Customers only: operators and local break-glass logins are not users of the platform.
    active = User.objects.filter(User.customers_q(), status=User.Status.ACTIVE).count()
    return [
        Tile(
            "Active users",
            f"{active}",
            _list("accounts_user", status__exact="active", kind="customers"),
        )
    ]


def _previous_month(month: dt.date) -> dt.date:
    return (month - dt.timedelta(days=1)).replace(day=1)


def _usage(month) -> list[Tile]:
    month_param = {"date__gte": month.isoformat()}
    # Last month beside this month (on the 1st, this month has barely begun): the same
    # queries, each sum split by month. Read from the daily rollup per cluster: a few rows
    # per cluster and day, whatever the number of users (the monthly rollup has a row per
    # user and month: 200,000 for two months of 100,000 users).
    previous = _previous_month(month)
    this, last = Q(date__gte=month), Q(date__lt=month)
    revenue = UsageClusterDaily.objects.filter(date__gte=previous).aggregate(
        total=Sum("total_cost", filter=this), last=Sum("total_cost", filter=last)
    )
    per_cluster = (
        UsageClusterDaily.objects.filter(date__gte=previous)
        .values("hopsworks_cluster_id", "hopsworks_cluster__name")
        .annotate(
            total=Sum("total_cost", filter=this, default=Decimal(0)),
            last=Sum("total_cost", filter=last, default=Decimal(0)),
            cpu=Sum("cpu_hours", filter=this, default=Decimal(0)),
            gpu=Sum("gpu_hours", filter=this, default=Decimal(0)),
        )
        .order_by("hopsworks_cluster__name")
    )
    return [
        Tile(
            "Usage this month",
            money(revenue["total"] or Decimal(0)),
            _list("billing_usagedaily", **month_param),
            previous=f"{previous:%B}: {money(revenue['last'] or Decimal(0))}",
        ),
        Tile(
            "Usage per cluster this month",
            f"{len(per_cluster)} clusters",
            _list("billing_usagedaily", **month_param),
            rows=[
                (
                    row["hopsworks_cluster__name"] or "no cluster",
                    f"{money(row['total'])} · {previous:%B} {money(row['last'])} · "
                    f"{quantity(row['cpu'], 2)} CPU h · {quantity(row['gpu'], 2)} GPU h",
                    _list(
                        "billing_usagedaily",
                        hopsworks_cluster__id__exact=row["hopsworks_cluster_id"] or "",
                        **month_param,
                    ),
                )
                for row in per_cluster
            ],
        ),
    ]


NEARLY_FULL = 0.9  # of max users: the tile names such clusters before they are full


def _cluster_fill(month) -> list[Tile]:
    clusters = list(
        HopsworksCluster.objects.order_by("name").values(
            "pk", "name", "status", "current_users", "max_users"
        )
    )
    full = [c["name"] for c in clusters if c["current_users"] >= c["max_users"]]
    nearly = [
        c["name"]
        for c in clusters
        if c["name"] not in full and c["current_users"] >= NEARLY_FULL * c["max_users"]
    ]
    value = (
        f"{sum(c['current_users'] for c in clusters)} / "
        f"{sum(c['max_users'] for c in clusters)} places"
    )
    if full:
        value += f"; full: {', '.join(full)}"
    if nearly:
        value += f"; nearly full: {', '.join(nearly)}"
    return [
        Tile(
            "Cluster fill",
            value,
            _list("clusters_hopsworkscluster"),
            alert=bool(full or nearly),
            rows=[
                (
                    f"{c['name']} ({c['status']})",
                    f"{c['current_users']} / {c['max_users']}",
                    reverse("admin:clusters_hopsworkscluster_change", args=[c["pk"]]),
                )
                for c in clusters
            ],
        )
    ]


def _placement(month) -> list[Tile]:
    waits = CapacityWait.objects.aggregate(
        capacity=Count("pk", filter=Q(reason=CapacityWait.Reason.NO_CAPACITY)),
        billing=Count("pk", filter=Q(reason=CapacityWait.Reason.BILLING)),
    )
    # Users, as the list it links to shows them (a move leaves two accounts pending).
    pending = HopsworksAccount.objects.pending().values("user_id").distinct().count()
    return [
        Tile(
            "Waiting for capacity",
            f"{waits['capacity']}",
            _list("accounts_user", placement="waiting"),
            alert=waits["capacity"] > 0,
        ),
        Tile(
            "Waiting for billing setup",
            f"{waits['billing']}",
            _list("accounts_user", placement="billing"),
        ),
        Tile(
            "Hopsworks accounts pending",
            f"{pending} user{'' if pending == 1 else 's'}",
            _list("accounts_user", placement="pending"),
            alert=pending > 0,
        ),
    ]


def _failed_runs(month) -> list[Tile]:
    failed = UsageCollectionRun.objects.filter(status=UsageCollectionRun.Status.FAILED).count()
    return [
        Tile(
            "Failed collection runs",
            f"{failed}",
            _list("billing_usagecollectionrun", status__exact="failed"),
            alert=failed > 0,
        )
    ]


def _failed_events(month) -> list[Tile]:
    failed = StripeEvent.objects.filter(status=StripeEvent.Status.FAILED).count()
    return [
        Tile(
            "Failed Stripe events",
            f"{failed}",
            _list("billing_stripeevent", status__exact="failed"),
            alert=failed > 0,
        )
    ]


def _negative_balances(month) -> list[Tile]:
    negative = UserCredits.objects.filter(total_used__gt=F("total_purchased")).count()
    return [
        Tile(
            "Balances below zero",
            f"{negative}",
            _list("billing_usercredits", balance="negative"),
            alert=negative > 0,
        )
    ]


def _unbilled(month) -> list[Tile]:
    held = unbilled_usage()
    total = sum(held.values(), Decimal(0))
    return [
        Tile(
            "Unbilled usage",
            f"{money(total)} ({len(held)} users)",
            _list("accounts_user", unbilled="yes"),
            alert=bool(held),
        )
    ]


def _jobs(month) -> list[Tile]:
    now = timezone.now()
    counts = ProcrastinateJob.objects.aggregate(
        failed=Count("pk", filter=Q(status="failed")), queued=Count("pk", filter=Q(status="todo"))
    )
    # The oldest job that could run now (not one scheduled for a later retry).
    oldest = (
        ProcrastinateEvent.objects.filter(type="deferred", job__status="todo")
        .filter(Q(job__scheduled_at__isnull=True) | Q(job__scheduled_at__lte=now))
        .aggregate(at=Min("at"))["at"]
    )
    age = now - oldest if oldest else None
    waiting = f"oldest waiting {_duration(age)}" if age else "none waiting"
    return [
        Tile(
            "Failed jobs",
            f"{counts['failed']}",
            _list("procrastinate_procrastinatejob", status__exact="failed"),
            alert=counts["failed"] > 0,
        ),
        Tile(
            "Jobs queued",
            f"{counts['queued']} ({waiting})",
            _list("procrastinate_procrastinatejob", status__exact="todo"),
            # Workers take a job within seconds; one waiting for minutes means none runs.
            alert=bool(age and age > JOB_WAIT_ALERT),
        ),
    ]


JOB_WAIT_ALERT = dt.timedelta(minutes=10)


def _duration(age: dt.timedelta) -> str:
    seconds = int(age.total_seconds())
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


# Each group of tiles, in the order shown, after the model whose admin list they link to.
TILES = (
    (User, _active_users),
    (UsageDaily, _usage),
    (HopsworksCluster, _cluster_fill),
    (User, _placement),
    (UsageCollectionRun, _failed_runs),
    (StripeEvent, _failed_events),
    (UserCredits, _negative_balances),
    (User, _unbilled),
    (ProcrastinateJob, _jobs),
)


def _may_open(request, model) -> bool:
    """What the admin itself asks before showing the model's list."""
    model_admin = admin.site.get_model_admin(model)
    return model_admin.has_view_or_change_permission(request)


def dashboard_tiles(request, *, today: dt.date | None = None) -> list[Tile]:
    """The tiles for this operator: a tile only for those who may open the list it links
    to (its figures are not even computed for others). `today` (UTC) sets the month."""
    month = month_start(today)
    tiles = []
    for model, build in TILES:
        if _may_open(request, model):
            tiles += build(month)
    return tiles


# Charts, after the tiles: one aggregate query each, for those who may open the list
# behind them, over the last CHART_DAYS days (UTC) up to today.

CHART_DAYS = 90


@dataclass
class Chart:
    dom_id: str
    title: str
    url: str
    html: str
    note: str = ""


def _chart_days(today: dt.date) -> list[dt.date]:
    return [today - dt.timedelta(days=n) for n in reversed(range(CHART_DAYS))]


def _cost_chart(days: list[dt.date]) -> Chart:
    index = {day: n for n, day in enumerate(days)}
    series: dict[object, Series] = {}
    for row in daily_cost_by_cluster(since=days[0], until=days[-1]):
        key = row["hopsworks_cluster_id"]
        if key not in series:
            name = row["hopsworks_cluster__name"] or "no cluster"
            series[key] = Series(name, [Decimal(0)] * len(days))
        series[key].values[index[row["date"]]] = row["total_cost"]
    ordered = sorted(series.values(), key=lambda s: s.name)
    return Chart(
        "chart-cost-per-cluster",
        f"Daily cost per cluster, last {CHART_DAYS} days",
        _list("billing_usagedaily", date__gte=days[0].isoformat()),
        chart_html(
            dom_id="chart-cost-per-cluster",
            title=f"Daily cost per cluster, last {CHART_DAYS} days",
            days=days,
            series=ordered,
        ),
        note="Days not collected yet (usually today) show as $0.00.",
    )


def _fill_chart(days: list[dt.date]) -> Chart:
    clusters = list(HopsworksCluster.objects.order_by("name").values("pk", "name", "current_users"))
    index = {day: n for n, day in enumerate(days)}
    readings = {c["pk"]: [None] * len(days) for c in clusters}
    for row in cluster_fill_readings(since=days[0], until=days[-1]):
        if row["cluster_id"] in readings:
            readings[row["cluster_id"]][index[row["date"]]] = row["users"]
    series = []
    for cluster in clusters:
        values = readings[cluster["pk"]]
        if days[-1] == timezone.now().date():
            values[-1] = cluster["current_users"]  # today: as it is now
        series.append(Series(cluster["name"], values))
    return Chart(
        "chart-cluster-fill",
        f"Users per cluster, last {CHART_DAYS} days",
        _list("clusters_hopsworkscluster"),
        chart_html(
            dom_id="chart-cluster-fill",
            title=f"Users assigned per cluster, last {CHART_DAYS} days",
            days=days,
            series=series,
            what="Users assigned",
            fmt=as_count,
            total_row=False,
            empty="No clusters yet.",
        ),
        note="Each day's last hourly reading (today: now). Readings began when this chart "
        "was installed; a day without one shows a dash.",
    )


CHARTS = ((UsageDaily, _cost_chart), (HopsworksCluster, _fill_chart))


def dashboard_charts(request, *, today: dt.date | None = None) -> list[Chart]:
    """The charts this operator may see (as tiles: only over lists they may open)."""
    days = _chart_days(today or timezone.now().date())
    return [build(days) for model, build in CHARTS if _may_open(request, model)]
