"""Two collections of one cluster-day at once, in real threads on PostgreSQL: the one that
read OpenCost earlier never writes over figures read later (issue 12, item 5)."""

import datetime as dt
import threading
import time
from decimal import Decimal

import pytest
from django.db import connection

from billing.collection import usage_collect_day
from billing.models import UsageCollectionRun, UsageDaily
from clusters import services
from clusters.account_sync import hopsworks_accounts_sync
from plumbing import outbound
from tests.concurrency import lock_waits
from tests.factories import UserFactory
from tests.fakes.kubernetes import kubeconfig_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("default_rate_card")]
D = Decimal
DAY = dt.date(2026, 11, 20)


@pytest.fixture
def east(fake_hopsworks, fake_kubernetes, cluster_on, test_ca):
    hopsworks, k8s = fake_hopsworks[0], fake_kubernetes[0]
    cluster = cluster_on(hopsworks, name="east", kubeconfig=kubeconfig_for(k8s, test_ca))
    ada = UserFactory(email="ada@example.com")
    services.assignment_create(user=ada, cluster=cluster, actor=None)
    hopsworks_accounts_sync()
    hopsworks.add_project("ada_ml", "ada@example.com", namespace="ada-ml")
    return {"cluster": cluster, "ada": ada, "hopsworks": hopsworks, "k8s": k8s}


def until(condition, *, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_run_that_fetched_earlier_never_overwrites_newer_figures(east):
    east["k8s"].set_allocations(DAY, {"ada-ml": {"cpuCoreHours": D("1")}})
    # The first run reads OpenCost, then waits on Hopsworks: it would commit last.
    east["hopsworks"].slow_next(seconds=30, method="GET", path="/admin/projects")
    runs, errors = {}, []

    def collect(name):
        try:
            with outbound.background_work():
                runs[name] = usage_collect_day(cluster=east["cluster"], day=DAY, actor=name)
        except Exception as error:  # surfaced below
            errors.append(error)
        finally:
            connection.close()

    first = threading.Thread(target=collect, args=("first",))
    first.start()
    # OpenCost and Hopsworks are asked at once: wait until OpenCost has read its figures.
    until(lambda: east["hopsworks"].requests_to("GET", "/admin/projects") and east["k8s"].answered)
    east["k8s"].set_allocations(DAY, {"ada-ml": {"cpuCoreHours": D("2")}})  # newer figures
    second = threading.Thread(target=collect, args=("second",))
    second.start()
    until(lambda: not second.is_alive() or lock_waits(locktype="advisory"))
    east["hopsworks"].release()
    for thread in (first, second):
        thread.join(timeout=60)

    assert errors == []
    assert {name: run.status for name, run in runs.items()} == {
        "first": "succeeded",
        "second": "succeeded",
    }
    assert UsageDaily.objects.get(user=east["ada"], date=DAY).cpu_hours == D("2")
    run = UsageCollectionRun.objects.get()
    assert run.fetched_at == runs["second"].fetched_at > runs["first"].fetched_at


def test_hopsworks_is_asked_for_the_projects_while_opencost_is_still_answering(east):
    # The two outside systems are independent: a cluster-day waits for the slower of the
    # two, not for both one after the other.
    east["k8s"].set_allocations(DAY, {"ada-ml": {"cpuCoreHours": D("1.5")}})
    east["k8s"].delay = 30  # OpenCost answers when released
    runs, errors = [], []

    def collect():
        try:
            with outbound.background_work():
                runs.append(usage_collect_day(cluster=east["cluster"], day=DAY, actor="jobs"))
        except Exception as error:  # surfaced below
            errors.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=collect)
    thread.start()
    try:
        until(lambda: east["hopsworks"].requests_to("GET", "/admin/projects"))
        assert not east["k8s"].answered
    finally:
        east["k8s"].release()
        thread.join(timeout=60)

    assert errors == []
    assert [run.status for run in runs] == ["succeeded"]
    assert UsageDaily.objects.get(user=east["ada"], date=DAY).cpu_hours == D("1.5")
