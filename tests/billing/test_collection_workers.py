"""Collection through the job queue with real worker processes on PostgreSQL: two workers
share the queue, each cluster-day is collected once, and a worker killed mid-job loses
nothing. The data is committed (transactional tests), as a worker sees it."""

import datetime as dt
import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest
from django.db import connection
from django.db.models import Sum

from billing.models import UsageCollectionRun, UsageDaily
from billing.tasks import (
    CannotCollect,
    collect_cluster_day,
    collect_missing_usage,
    collection_defer,
    days_to_collect,
)
from clusters import services
from clusters.account_sync import hopsworks_accounts_sync
from clusters.models import HopsworksCluster
from plumbing.jobs import StillFailing, stalled_jobs_retry
from tests.factories import UserFactory
from tests.fakes.kubernetes import kubeconfig_for
from tests.workers import finish, no_worker_outlives_its_test, start_worker  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("default_rate_card")]
D = Decimal
ROOT = Path(__file__).resolve().parents[2]
DAYS = [dt.date(2026, 11, 10) + dt.timedelta(days=n) for n in range(3)]


@pytest.fixture
def two_clusters(fake_hopsworks, fake_kubernetes, cluster_on, test_ca):
    """east: ada's project; west: grace's. OpenCost knows three days on each."""
    world = {}
    for name, fake, k8s, email, namespace in (
        ("east", fake_hopsworks[0], fake_kubernetes[0], "ada@example.com", "ada-ml"),
        ("west", fake_hopsworks[1], fake_kubernetes[1], "grace@example.com", "grace-ml"),
    ):
        cluster = cluster_on(fake, name=name, kubeconfig=kubeconfig_for(k8s, test_ca))
        HopsworksCluster.objects.filter(pk=cluster.pk).update(
            created_at=dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
        )
        cluster.refresh_from_db()
        user = UserFactory(email=email)
        services.assignment_create(user=user, cluster=cluster, actor=None)
        fake.add_project(namespace.replace("-", "_"), email, namespace=namespace)
        for n, day in enumerate(DAYS):
            k8s.set_allocations(day, {namespace: {"cpuCoreHours": D(n + 1)}})
        world[name] = {"cluster": cluster, "user": user, "k8s": k8s}
    hopsworks_accounts_sync()
    return world


def queue_every_cluster_day(world) -> None:
    for entry in world.values():
        for day in DAYS:
            collection_defer(cluster=entry["cluster"], day=day)


def assert_exact_totals(world) -> None:
    for entry in world.values():
        rows = UsageDaily.objects.filter(user=entry["user"], date__in=DAYS)
        assert rows.count() == len(DAYS)
        assert rows.aggregate(cpu=Sum("cpu_hours"))["cpu"] == D(1 + 2 + 3)


def job_statuses() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT status FROM procrastinate_jobs WHERE task_name = 'billing.collect_cluster_day'"
        )
        return [status for (status,) in cursor.fetchall()]


def test_two_workers_collect_each_cluster_day_exactly_once(two_clusters):
    queue_every_cluster_day(two_clusters)
    queue_every_cluster_day(two_clusters)  # queued twice: the queueing lock keeps one

    finish(start_worker("one", queues="collection"), start_worker("two", queues="collection"))

    assert sorted(job_statuses()) == ["succeeded"] * 6
    runs = UsageCollectionRun.objects.all()
    assert runs.count() == 6
    assert {(run.status, run.attempts) for run in runs} == {("succeeded", 1)}
    assert_exact_totals(two_clusters)


def test_a_worker_killed_mid_collection_loses_nothing_and_counts_nothing_twice(two_clusters):
    east = two_clusters["east"]
    east["k8s"].delay = 60  # OpenCost hangs: the worker is caught in the middle of a job
    collection_defer(cluster=east["cluster"], day=DAYS[0])
    doomed = start_worker("doomed", queues="collection")
    deadline = time.monotonic() + 60
    running = UsageCollectionRun.objects.filter(cluster=east["cluster"], status="running")
    while not running.exists():  # the run has begun and waits for OpenCost
        assert time.monotonic() < deadline, "the worker never started the job"
        time.sleep(0.2)

    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=30)
    east["k8s"].delay = 0
    east["k8s"].release()
    assert job_statuses() == ["doing"]  # left behind by the dead worker

    # The watch over dead workers (a periodic job every minute) puts it back in the queue.
    assert stalled_jobs_retry(seconds_since_heartbeat=0) == 1
    queue_every_cluster_day(two_clusters)
    finish(start_worker("heir", queues="collection"), start_worker("other", queues="collection"))

    assert sorted(job_statuses()) == ["succeeded"] * 6
    assert_exact_totals(two_clusters)
    assert UsageCollectionRun.objects.get(cluster=east["cluster"], date=DAYS[0]).attempts == 2


def test_a_cluster_down_for_three_days_is_caught_up_exactly_on_those_days(two_clusters):
    west = two_clusters["west"]["cluster"]
    today = DAYS[-1] + dt.timedelta(days=4)  # three owed days, then four collected ones
    down = DAYS
    for n in range(1, 5):
        UsageCollectionRun.objects.create(
            cluster=west, date=DAYS[-1] + dt.timedelta(days=n), status="succeeded"
        )
    for n in range(9):  # the days before the outage were collected
        UsageCollectionRun.objects.create(
            cluster=west, date=dt.date(2026, 11, 1) + dt.timedelta(days=n), status="succeeded"
        )
    UsageCollectionRun.objects.create(cluster=west, date=down[1], status="failed", error="down")

    assert days_to_collect(west, today=today) == down

    timestamp = int(dt.datetime.combine(today, dt.time(1, 5), tzinfo=dt.UTC).timestamp())
    collect_missing_usage(timestamp=timestamp)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT args->>'day' FROM procrastinate_jobs WHERE args->>'cluster_id' = %s",
            [str(west.pk)],
        )
        queued = sorted(day for (day,) in cursor.fetchall())
    assert queued == [day.isoformat() for day in down]


def queued_days(cluster) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT args->>'day' FROM procrastinate_jobs WHERE args->>'cluster_id' = %s",
            [str(cluster.pk)],
        )
        return sorted(day for (day,) in cursor.fetchall())


def test_the_catch_up_owes_an_inactive_clusters_days_and_one_without_kubeconfig_fails_each(
    two_clusters,
):
    east, west = two_clusters["east"]["cluster"], two_clusters["west"]["cluster"]
    services.cluster_set_status(cluster=west, status="inactive", actor=None)  # users stay
    HopsworksCluster.objects.filter(pk=east.pk).update(kubeconfig=None)
    today = DAYS[-1] + dt.timedelta(days=1)
    for cluster in (east, west):
        for n in range(9):  # the days before DAYS were collected
            UsageCollectionRun.objects.create(
                cluster=cluster,
                date=dt.date(2026, 11, 1) + dt.timedelta(days=n),
                status="succeeded",
            )
    timestamp = int(dt.datetime.combine(today, dt.time(1, 5), tzinfo=dt.UTC).timestamp())

    collect_missing_usage(timestamp=timestamp)

    assert queued_days(east) == queued_days(west) == [day.isoformat() for day in DAYS]
    assert collect_cluster_day(cluster_id=str(west.pk), day=DAYS[0].isoformat()).startswith(
        "west 2026-11-10: 1 rows"
    )
    # Nothing to wait for: the job fails once (not retried), the run says why.
    with pytest.raises(CannotCollect, match="no kubeconfig") as failed:
        collect_cluster_day(cluster_id=str(east.pk), day=DAYS[0].isoformat())
    assert not isinstance(failed.value, StillFailing)
    run = UsageCollectionRun.objects.get(cluster=east, date=DAYS[0])
    assert run.status == "failed" and "has no kubeconfig" in run.error
    # An hour later the day is still owed, and the catch-up runs again without trouble.
    assert days_to_collect(east, today=today) == DAYS
    collect_missing_usage(timestamp=timestamp + 3600)
