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
from billing.models import StripeEvent, UsageCollectionRun, UsageDaily, UserCredits
from billing.selectors import month_start, unbilled_usage
from clusters.models import CapacityWait, HopsworksAccount, HopsworksCluster
from plumbing.formatting import money, quantity


@dataclass
class Tile:
    title: str
    value: str
    url: str
    alert: bool = False
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (label, value, url)


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


def _usage(month) -> list[Tile]:
    month_param = {"date__gte": month.isoformat()}
    revenue = UsageDaily.objects.filter(date__gte=month).aggregate(total=Sum("total_cost"))
    per_cluster = (
        UsageDaily.objects.filter(date__gte=month)
        .values("hopsworks_cluster_id", "hopsworks_cluster__name")
        .annotate(total=Sum("total_cost"), cpu=Sum("cpu_hours"), gpu=Sum("gpu_hours"))
        .order_by("hopsworks_cluster__name")
    )
    return [
        Tile(
            "Usage this month",
            money(revenue["total"] or Decimal(0)),
            _list("billing_usagedaily", **month_param),
        ),
        Tile(
            "Usage per cluster this month",
            f"{len(per_cluster)} clusters",
            _list("billing_usagedaily", **month_param),
            rows=[
                (
                    row["hopsworks_cluster__name"] or "no cluster",
                    f"{money(row['total'])} · {quantity(row['cpu'], 2)} CPU h · "
                    f"{quantity(row['gpu'], 2)} GPU h",
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


def dashboard_tiles(request) -> list[Tile]:
    """The tiles for this operator: a tile only for those who may open the list it links
    to (its figures are not even computed for others)."""
    month = month_start()
    tiles = []
    for model, build in TILES:
        if _may_open(request, model):
            tiles += build(month)
    return tiles
