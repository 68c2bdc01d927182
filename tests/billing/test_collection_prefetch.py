"""Cluster-days collected in turn (`collect_usage`, `usage_collect_each`): the next one's
answers are asked for while one is being written, on PostgreSQL, against the local fakes."""

import datetime as dt
import gc
import threading
from decimal import Decimal

import psycopg
import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from billing.collection import usage_collect_each
from billing.models import UsageCollectionRun, UsageDaily
from clusters import services
from clusters.account_sync import hopsworks_accounts_sync
from plumbing import outbound
from tests.billing.test_collection_concurrency import until
from tests.factories import UserFactory
from tests.fakes.kubernetes import kubeconfig_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("default_rate_card")]
D = Decimal
DAY = dt.date(2026, 11, 20)


@pytest.fixture
def two(fake_hopsworks, fake_kubernetes, cluster_on, test_ca):
    """east (ada, 1.5 CPU hours) and west (grace, 2.5), each on fakes of its own."""
    world = {}
    for n, (name, email, namespace, hours) in enumerate(
        (
            ("east", "ada@example.com", "ada-ml", "1.5"),
            ("west", "grace@example.com", "grace-ml", "2.5"),
        )
    ):
        hopsworks, k8s = fake_hopsworks[n], fake_kubernetes[n]
        cluster = cluster_on(hopsworks, name=name, kubeconfig=kubeconfig_for(k8s, test_ca))
        user = UserFactory(email=email)
        services.assignment_create(user=user, cluster=cluster, actor=None)
        hopsworks.add_project(namespace.replace("-", "_"), email, namespace=namespace)
        k8s.set_allocations(DAY, {namespace: {"cpuCoreHours": D(hours)}})
        world[name] = {"cluster": cluster, "user": user, "k8s": k8s, "hopsworks": hopsworks}
    hopsworks_accounts_sync()
    return world


def other_session() -> psycopg.Connection:
    """A connection of another client (not Django's), in a transaction of its own."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    return psycopg.connect(**params)


def command_in_a_thread(outcome: dict) -> threading.Thread:
    def collect():
        try:
            call_command("collect_usage", "--date", DAY.isoformat())
        except CommandError as error:
            outcome["error"] = str(error)
        except Exception as error:  # surfaced by the test
            outcome["crash"] = error
        finally:
            connection.close()

    thread = threading.Thread(target=collect)
    thread.start()
    return thread


def run_status(cluster) -> str | None:
    return (
        UsageCollectionRun.objects.filter(cluster=cluster, date=DAY)
        .values_list("status", flat=True)
        .first()
    )


def test_the_next_cluster_is_asked_for_its_usage_while_one_is_being_written(two):
    outcome = {}
    # Writing usage waits for this lock: east's write is held up once it has its answers.
    with other_session() as blocker:
        blocker.execute("LOCK TABLE usage_daily IN SHARE ROW EXCLUSIVE MODE")
        thread = command_in_a_thread(outcome)
        try:
            # Both of west's sources are asked at once, Hopsworks from a thread of its own:
            # either may be asked last.
            until(
                lambda: (
                    two["west"]["k8s"].answered
                    and two["west"]["hopsworks"].requests_to("GET", "/admin/projects")
                )
            )
            assert run_status(two["east"]["cluster"]) == "running"  # east not written yet
            assert run_status(two["west"]["cluster"]) == "running"
        finally:
            blocker.rollback()
            thread.join(timeout=60)

    assert outcome == {}
    assert UsageDaily.objects.get(user=two["east"]["user"], date=DAY).cpu_hours == D("1.5")
    assert UsageDaily.objects.get(user=two["west"]["user"], date=DAY).cpu_hours == D("2.5")
    assert [two[name]["k8s"].answered for name in ("east", "west")] == [1, 1]


def test_the_next_clusters_failure_to_answer_is_recorded_on_its_own_run(two):
    two["west"]["k8s"].status = 503  # OpenCost has no ready pods behind west's API server
    outcome = {}
    with other_session() as blocker:
        blocker.execute("LOCK TABLE usage_daily IN SHARE ROW EXCLUSIVE MODE")
        thread = command_in_a_thread(outcome)
        try:
            until(lambda: two["west"]["k8s"].requests)  # asked while east is held up
            assert run_status(two["east"]["cluster"]) == "running"
        finally:
            blocker.rollback()
            thread.join(timeout=60)

    assert "1 of 2 cluster-day" in outcome.get("error", "")
    east, west = (
        UsageCollectionRun.objects.get(cluster=two[name]["cluster"]) for name in ("east", "west")
    )
    assert east.status == "succeeded"
    assert west.status == "failed" and "HTTP 503" in west.error
    assert west.finished_at is not None
    assert not UsageDaily.objects.filter(hopsworks_cluster=two["west"]["cluster"]).exists()
    assert UsageDaily.objects.get(user=two["east"]["user"], date=DAY).cpu_hours == D("1.5")


def test_a_next_cluster_day_held_by_another_collector_is_not_waited_for_before_writing(two):
    # Another collector (a job) holds west's day: east is written without waiting for it,
    # and west is collected once that collector lets go.
    west = two["west"]["cluster"]
    outcome = {}
    with other_session() as other:
        other.execute("SELECT pg_advisory_lock(hashtext(%s))", [f"collect:{west.pk}:{DAY}"])
        thread = command_in_a_thread(outcome)
        try:
            until(lambda: run_status(two["east"]["cluster"]) == "succeeded")
            assert not two["west"]["k8s"].requests
        finally:
            other.execute("SELECT pg_advisory_unlock(hashtext(%s))", [f"collect:{west.pk}:{DAY}"])
            other.commit()
            thread.join(timeout=60)

    assert outcome == {}
    assert run_status(west) == "succeeded"
    assert UsageDaily.objects.get(user=two["west"]["user"], date=DAY).cpu_hours == D("2.5")


def test_a_cluster_day_begun_ahead_is_ended_when_the_caller_stops_early(two):
    with outbound.background_work():
        collecting = usage_collect_each(
            [(two["east"]["cluster"], DAY), (two["west"]["cluster"], DAY)], actor="operator"
        )
        first = next(collecting)
        collecting.close()

    assert (first.cluster, first.run.status) == (two["east"]["cluster"], "succeeded")
    # west had been begun (locked, its answers asked for): it is written, not left running.
    assert run_status(two["west"]["cluster"]) == "succeeded"
    assert UsageDaily.objects.get(user=two["west"]["user"], date=DAY).cpu_hours == D("2.5")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
        assert cursor.fetchone()[0] == 0
    assert gc.isenabled()


def test_a_cluster_day_asked_for_twice_is_collected_once(two):
    east = two["east"]["cluster"]
    with outbound.background_work():
        collected = list(usage_collect_each([(east, DAY), (east, DAY)], actor="operator"))

    assert [(c.cluster, c.run.status) for c in collected] == [(east, "succeeded")]
    assert two["east"]["k8s"].answered == 1
    assert UsageCollectionRun.objects.get(cluster=east).attempts == 1
