"""Concurrent collection runs, in real threads on PostgreSQL: each cap alert is inserted
and emailed exactly once, and a crossing made by two runs together is not missed."""

import datetime as dt
import threading
import time
from contextlib import contextmanager
from decimal import Decimal

import pytest
from django.core import mail
from django.db import connection, transaction
from django.utils import timezone

from billing.collection import usage_collect_day
from billing.limits import spending_limits_set
from billing.models import SpendingAlert, UsageCollectionRun, UsageDaily
from clusters import services
from clusters.account_sync import hopsworks_accounts_sync
from plumbing import outbound
from tests.concurrency import lock_waits, run_at_once
from tests.factories import UserFactory
from tests.fakes.kubernetes import kubeconfig_for
from tests.jobs import run_queued_jobs

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("default_rate_card")]
D = Decimal


def two_days_of_one_month():
    """Two collectable days (before today, UTC) in the same calendar month."""
    today = timezone.now().date()
    first = today.replace(day=1)
    if today.day < 3:  # too early in the month: the last two days of the month before
        first -= dt.timedelta(days=2)
    return [first, first + dt.timedelta(days=1)]


@pytest.fixture
def east(fake_hopsworks, fake_kubernetes, cluster_on, test_ca):
    hopsworks, k8s = fake_hopsworks[0], fake_kubernetes[0]
    cluster = cluster_on(hopsworks, name="east", kubeconfig=kubeconfig_for(k8s, test_ca))
    ada = UserFactory(email="ada@example.com")
    services.assignment_create(user=ada, cluster=cluster, actor=None)
    hopsworks_accounts_sync()
    hopsworks.add_project("ada_ml", "ada@example.com", namespace="ada-ml")
    return {"cluster": cluster, "ada": ada, "k8s": k8s}


def until(condition, *, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@contextmanager
def alerts_held_back():
    """Hold inserts into the alerts table (reads go on) until the block ends, so that two
    collections evaluate their alerts at the same moment, whatever the timing."""
    locked, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("LOCK TABLE billing_spending_alert IN EXCLUSIVE MODE")
                locked.set()
                release.wait(timeout=60)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(timeout=30)
    try:
        yield
    finally:
        release.set()
        holder.join(timeout=60)


def test_concurrent_collections_alert_each_cap_level_once(east):
    ada, days = east["ada"], two_days_of_one_month()
    spending_limits_set(
        user=ada,
        monthly_spending_cap=D("800"),
        low_balance_threshold=None,
        actor="ops",
        by_user=False,
    )
    for day in days:  # $700 a day: one day is 87.5 % of the cap, both together 175 %
        east["k8s"].set_allocations(day, {"ada-ml": {"cpuCoreHours": D("7000")}})

    def collect(day):
        with outbound.background_work():
            run = usage_collect_day(cluster=east["cluster"], day=day, actor="jobs")
        assert run.status == UsageCollectionRun.Status.SUCCEEDED, run.error

    threads = [threading.Thread(target=run_at_once, args=(collect, [day])) for day in days]
    with alerts_held_back():
        for thread in threads:
            thread.start()
        # Both have written their day and reached the alerts (one waits for the other, or
        # both wait for the table): each alone would say 80 %, together they say 100 %.
        until(lambda: lock_waits() >= 2)
    for thread in threads:
        thread.join(timeout=60)

    assert sum(r.total_cost for r in UsageDaily.objects.filter(user=ada)) == D("1400")
    alerts = SpendingAlert.objects.filter(user=ada)
    assert sorted(alerts.values_list("kind", flat=True)) == ["cap_100", "cap_80", "cap_90"]

    run_at_once(collect, days + days)  # reruns, each day twice at once: nothing new
    assert alerts.count() == 3

    ran = run_queued_jobs()
    # The first to commit saw its own day (80 %), the second both days (90 and 100 %): two
    # emails, each alert in exactly one of them.
    assert [status for task, status in ran if task == "billing.send_spending_alerts"] == [
        "succeeded",
        "succeeded",
    ]
    assert sorted(email.subject for email in mail.outbox) == [
        "You have reached your monthly spending cap of $800.00",
        "You have used 80% of your monthly spending cap",
    ]
    assert not alerts.filter(sent_at__isnull=True).exists()
    assert run_queued_jobs() == [] and len(mail.outbox) == 2
