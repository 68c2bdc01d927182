"""Daily collection against a local Kubernetes API (kubeconfig pointing at it) serving
OpenCost allocations, and a local Hopsworks serving projects with their creators."""

import datetime as dt
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.collection import usage_collect
from billing.models import BillingProfile, CreditLedgerEntry, UsageCollectionRun, UsageDaily
from clusters import services
from clusters.account_sync import hopsworks_accounts_sync
from tests.factories import ClusterFactory, UserFactory
from tests.fakes.kubernetes import kubeconfig_for

pytestmark = pytest.mark.django_db
D = Decimal
DAY = dt.date(2026, 11, 20)  # November: 30 days
GB_HELD_ALL_DAY = D(24) * D(2) ** 30  # byte-hours of 1 GiB (the billing unit) held for 24 hours


@pytest.fixture
def world(fake_hopsworks, fake_kubernetes, cluster_on, test_ca):
    """A cluster with two of our users, each owning projects; OpenCost knows the day."""
    hopsworks, _ = fake_hopsworks
    k8s, _ = fake_kubernetes
    cluster = cluster_on(hopsworks, name="east", kubeconfig=kubeconfig_for(k8s, test_ca))
    ada = UserFactory(email="ada@example.com", name="Ada Lovelace")
    grace = UserFactory(email="grace@example.com", name="Grace Hopper")
    for user in (ada, grace):
        services.assignment_create(user=user, cluster=cluster, actor=None)
    hopsworks_accounts_sync()  # real accounts on the fake cluster, with usernames
    hopsworks.add_project("Ada_Project", "ada@example.com")  # namespace derived: ada-project
    hopsworks.add_project("ada_two", "ada@example.com", namespace="ada-two")
    hopsworks.add_project("grace_ml", "grace@example.com", namespace="grace-ml")
    hopsworks.add_project("orphan", "stranger@example.com", namespace="orphan")
    k8s.set_allocations(
        DAY,
        {
            "ada-project": {
                "cpuCoreHours": D("10.5"),
                "gpuHours": D("1"),
                "pvByteHours": D(30) * GB_HELD_ALL_DAY,
            },
            "ada-two": {"cpuCoreHours": D("1.5")},
            "grace-ml": {"cpuCoreHours": D("2.00001"), "gpuHours": None, "pvByteHours": D("-12.5")},
            "kube-system": {"cpuCoreHours": D("100")},
            "__idle__": {"cpuCoreHours": D("50")},
            "orphan": {"cpuCoreHours": D("3")},
            "mystery": {"cpuCoreHours": D("4")},
        },
    )
    return {"cluster": cluster, "ada": ada, "grace": grace, "k8s": k8s, "hopsworks": hopsworks}


def usage_of(user):
    row = UsageDaily.objects.get(user=user, date=DAY)
    return row.cpu_hours, row.gpu_hours, row.storage_gb_months, row.total_cost


def test_collection_sums_each_users_namespaces_exactly(world):
    call_command("collect_usage", "--date", DAY.isoformat())

    assert usage_of(world["ada"]) == (D("12"), D("1"), D("1"), D("1.85"))
    assert usage_of(world["grace"]) == (D("2.00001"), D("0"), D("0"), D("0.200001"))
    assert UsageDaily.objects.count() == 2
    run = UsageCollectionRun.objects.get()
    assert run.status == "succeeded" and run.rows_written == 2
    unknown = {n["namespace"]: n["reason"] for n in run.unknown_namespaces}
    assert set(unknown) == {"orphan", "mystery"}
    assert "stranger@example.com" in unknown["orphan"]
    assert any("grace-ml: gpuHours was null" in note for note in run.notes)
    assert any("grace-ml: pvByteHours was -12.5" in note for note in run.notes)
    # What we asked OpenCost for: the UTC day, per namespace, accumulated.
    [request] = [r for r in world["k8s"].requests if r.path.endswith("/allocation/compute")]
    assert request.args["window"] == "2026-11-20T00:00:00Z,2026-11-21T00:00:00Z"
    assert (request.args["aggregate"], request.args["accumulate"]) == ("namespace", "true")


def test_a_rerun_gives_the_same_result_as_one_clean_run(world):
    BillingProfile.objects.create(user=world["ada"], mode=BillingProfile.Mode.PREPAID)
    for _ in range(3):
        call_command("collect_usage", "--date", DAY.isoformat())

    assert UsageDaily.objects.count() == 2
    assert usage_of(world["ada"])[3] == D("1.85")
    assert list(CreditLedgerEntry.objects.values_list("amount", flat=True)) == [D("-1.85")]
    assert UsageCollectionRun.objects.get().attempts == 3


def test_a_corrected_day_debits_only_the_difference_and_a_vanished_user_goes_to_zero(world):
    BillingProfile.objects.create(user=world["ada"], mode=BillingProfile.Mode.PREPAID)
    call_command("collect_usage", "--date", DAY.isoformat())
    world["k8s"].set_allocations(DAY, {"ada-project": {"cpuCoreHours": D("20")}})

    call_command("collect_usage", "--date", DAY.isoformat())

    assert usage_of(world["ada"]) == (D("20"), D("0"), D("0"), D("2"))
    assert usage_of(world["grace"])[3] == D("0")
    amounts = list(CreditLedgerEntry.objects.order_by("id").values_list("amount", flat=True))
    assert amounts == [D("-1.85"), D("-0.15")]


def test_a_backfill_collects_each_missed_day_once(world):
    next_day = DAY + dt.timedelta(days=1)
    world["k8s"].set_allocations(next_day, {"ada-project": {"cpuCoreHours": D("1")}})
    call_command("collect_usage", "--from", DAY.isoformat(), "--to", next_day.isoformat())
    call_command("collect_usage", "--from", DAY.isoformat(), "--to", next_day.isoformat())

    assert UsageDaily.objects.filter(user=world["ada"]).count() == 2
    assert UsageCollectionRun.objects.filter(status="succeeded").count() == 2


def test_one_cluster_down_does_not_stop_the_others(world, fake_hopsworks, cluster_on, test_ca):
    _, other_hopsworks = fake_hopsworks
    cluster_on(
        other_hopsworks,
        name="west",
        kubeconfig=kubeconfig_for(world["k8s"], test_ca, server="https://127.0.0.1:9"),
    )

    with pytest.raises(CommandError, match="1 of 2 cluster-day"):
        call_command("collect_usage", "--date", DAY.isoformat())

    runs = {r.cluster.name: r for r in UsageCollectionRun.objects.select_related("cluster")}
    assert runs["east"].status == "succeeded"
    assert runs["west"].status == "failed" and "127.0.0.1:9" in runs["west"].error
    assert usage_of(world["ada"])[3] == D("1.85")


def test_a_rejected_kubeconfig_token_is_a_failed_run_with_the_reason(world, test_ca):
    from clusters.models import HopsworksCluster

    HopsworksCluster.objects.filter(pk=world["cluster"].pk).update(kubeconfig=None)
    cluster = HopsworksCluster.objects.get(pk=world["cluster"].pk)
    cluster.kubeconfig = kubeconfig_for(world["k8s"], test_ca, token="wrong-token")
    cluster.save(update_fields=["kubeconfig"])

    with pytest.raises(CommandError):
        call_command("collect_usage", "--date", DAY.isoformat(), "--cluster", "east")

    run = UsageCollectionRun.objects.get()
    assert run.status == "failed" and "credentials" in run.error
    assert "wrong-token" not in run.error
    assert not UsageDaily.objects.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--date", "2999-01-01"], "not over yet"),
        (["--from", "2026-11-10", "--to", "2026-11-01"], "is after"),
        (["--date", "2026-13-01"], "YYYY-MM-DD"),
        (["--cluster", "nowhere", "--date", "2026-11-01"], "No cluster named 'nowhere'"),
        (["--date", "2026-11-01", "--from", "2026-11-01"], "either --date or --from"),
    ],
)
def test_bad_arguments_are_clear_errors_and_write_nothing(args, message):
    ClusterFactory(name="east")
    with pytest.raises(CommandError, match=message):
        call_command("collect_usage", *args)
    assert not UsageCollectionRun.objects.exists()


def test_the_default_day_is_yesterday_utc(world, capsys):
    yesterday = timezone.now().date() - dt.timedelta(days=1)
    call_command("collect_usage")
    assert UsageCollectionRun.objects.get().date == yesterday


def test_cron_gets_the_longer_deadline_a_web_request_the_short_one(world, settings):
    settings.OUTBOUND_DEADLINE_SECONDS = 0.3
    settings.OUTBOUND_BACKGROUND_DEADLINE_SECONDS = 5
    world["k8s"].delay = 0.8  # slower than a web request may wait, fine for cron

    runs = usage_collect(clusters=[world["cluster"]], days=[DAY], actor="operator")
    assert [run.status for run in runs] == ["failed"]
    assert "did not answer within 0.3 seconds" in runs[0].error

    call_command("collect_usage", "--date", DAY.isoformat())
    assert UsageCollectionRun.objects.get().status == "succeeded"


def test_in_a_web_request_days_not_started_in_time_are_left_to_cron(world, settings):
    settings.OUTBOUND_DEADLINE_SECONDS = 0.5
    world["k8s"].delay = 0.6

    runs = usage_collect(
        clusters=[world["cluster"]], days=[DAY, DAY + dt.timedelta(days=1)], actor="operator"
    )

    assert [run.date for run in runs] == [DAY]
    assert UsageCollectionRun.objects.count() == 1
