"""Daily collection against a local Kubernetes API (kubeconfig pointing at it) serving
OpenCost allocations, and a local Hopsworks serving projects with their creators."""

import datetime as dt
import gc
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
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


def test_a_rerun_reads_the_days_owners_once_and_does_not_rewrite_them_unchanged(world):
    """A big cluster's owner mapping is tens of thousands of entries: a run reads it where
    it uses it (the locked run) and writes it only when it changed."""
    call_command("collect_usage", "--date", DAY.isoformat())
    mapping = UsageCollectionRun.objects.get().attribution

    with CaptureQueriesContext(connection) as queries:
        call_command("collect_usage", "--date", DAY.isoformat())

    on_the_run = [q["sql"] for q in queries if '"billing_usage_collection_run"' in q["sql"]]
    reads = [sql for sql in on_the_run if sql.startswith("SELECT") and '"attribution"' in sql]
    writes = [sql for sql in on_the_run if sql.startswith("UPDATE") and '"attribution"' in sql]
    assert (len(reads), writes) == (1, [])
    run = UsageCollectionRun.objects.get()
    assert (run.status, run.attempts, run.attribution) == ("succeeded", 2, mapping)


def test_a_cluster_day_is_collected_with_the_cyclic_garbage_collector_paused(world, monkeypatch):
    """A million short-lived objects, none in a cycle: see plumbing.gc_pause."""
    from billing import collection

    seen = []
    upsert = collection.usage_upsert

    def upsert_seeing_the_collector(**kwargs):
        seen.append(gc.isenabled())
        return upsert(**kwargs)

    monkeypatch.setattr(collection, "usage_upsert", upsert_seeing_the_collector)
    assert gc.isenabled()

    call_command("collect_usage", "--date", DAY.isoformat())

    assert seen == [False]
    assert gc.isenabled()
    assert usage_of(world["ada"])[0] == D("12")


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


@pytest.mark.parametrize("token", ["SENTINEL-TOKEN-456\n", "SENTINEL-TOK\rEN-456"])
def test_a_stored_token_that_cannot_go_in_a_header_fails_the_run_without_quoting_it(
    world, test_ca, token, caplog
):
    # Saved before the form refused such tokens (or in an adopted database): http.client
    # would refuse the header in an error that quotes it, token and all. The kubeconfig is
    # checked again at each use, so the run fails on that check, quoting nothing.
    import yaml

    from clusters.models import HopsworksCluster

    config = yaml.safe_load(kubeconfig_for(world["k8s"], test_ca))
    config["users"][0]["user"]["token"] = token
    cluster = HopsworksCluster.objects.get(pk=world["cluster"].pk)
    cluster.kubeconfig = yaml.safe_dump(config)
    cluster.save(update_fields=["kubeconfig"])

    with pytest.raises(CommandError):
        call_command("collect_usage", "--date", DAY.isoformat(), "--cluster", "east")

    run = UsageCollectionRun.objects.get()
    assert run.status == "failed" and "one unbroken line" in run.error
    for text in (run.error, caplog.text):
        assert "SENTINEL" not in text and "EN-456" not in text
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


# A re-collection never destroys what is stored (issue 12, items 1 to 4)


def ledger_amounts():
    return list(CreditLedgerEntry.objects.order_by("id").values_list("amount", flat=True))


def at(hour: int) -> dt.datetime:
    return dt.datetime.combine(DAY, dt.time(), tzinfo=dt.UTC) + dt.timedelta(hours=hour)


@pytest.mark.parametrize("empty", [[], [{}]])
def test_an_empty_answer_for_a_collected_day_fails_the_run_and_zeroes_nothing(world, empty):
    BillingProfile.objects.create(user=world["ada"], mode=BillingProfile.Mode.PREPAID)
    call_command("collect_usage", "--date", DAY.isoformat())
    world["k8s"].set_data(DAY, empty)  # OpenCost's retention ran out

    for _ in range(2):  # a refused rerun does not lower what counts as stored
        with pytest.raises(CommandError, match="1 of 1 cluster-day"):
            call_command("collect_usage", "--date", DAY.isoformat())

        run = UsageCollectionRun.objects.get()
        assert run.status == "failed"
        assert run.error == (
            "OpenCost answered for 0 of 1440 minutes of 2026-11-20 (less than the 1440 "
            "already collected): nothing was written. Rerun when OpenCost has the day, or "
            "force the replacement with --force-replace."
        )
        assert run.coverage_minutes == 1440
        assert usage_of(world["ada"]) == (D("12"), D("1"), D("1"), D("1.85"))
        assert usage_of(world["grace"])[3] == D("0.200001")
        assert ledger_amounts() == [D("-1.85")]


def test_a_partial_answer_does_not_replace_a_whole_collected_day(world):
    call_command("collect_usage", "--date", DAY.isoformat())
    world["k8s"].set_allocations(
        DAY, {"ada-project": {"cpuCoreHours": D("1")}}, covering=(at(12), at(24))
    )

    with pytest.raises(CommandError):
        call_command("collect_usage", "--date", DAY.isoformat())

    run = UsageCollectionRun.objects.get()
    assert run.status == "failed"
    assert "answered for 720 of 1440 minutes" in run.error
    assert usage_of(world["ada"])[0] == D("12")


def test_a_partial_first_collection_is_written_noted_and_replaced_by_a_fuller_one(world):
    world["k8s"].set_allocations(
        DAY, {"ada-project": {"cpuCoreHours": D("5")}}, covering=(at(0), at(18))
    )
    call_command("collect_usage", "--date", DAY.isoformat())

    run = UsageCollectionRun.objects.get()
    assert (run.status, run.coverage_minutes) == ("succeeded", 1080)
    assert any("1080 of 1440 minutes" in note for note in run.notes)
    assert usage_of(world["ada"])[0] == D("5")

    world["k8s"].set_allocations(DAY, {"ada-project": {"cpuCoreHours": D("7")}})
    call_command("collect_usage", "--date", DAY.isoformat())

    run.refresh_from_db()
    assert (run.status, run.coverage_minutes) == ("succeeded", 1440)
    assert usage_of(world["ada"])[0] == D("7")


def test_an_operator_forces_a_smaller_answer_explicitly(world):
    BillingProfile.objects.create(user=world["ada"], mode=BillingProfile.Mode.PREPAID)
    call_command("collect_usage", "--date", DAY.isoformat())
    world["k8s"].set_data(DAY, [])

    call_command("collect_usage", "--date", DAY.isoformat(), "--force-replace")

    run = UsageCollectionRun.objects.get()
    assert (run.status, run.coverage_minutes) == ("succeeded", 0)
    assert any("forced" in note for note in run.notes)
    assert usage_of(world["ada"])[3] == D("0")
    assert ledger_amounts() == [D("-1.85"), D("1.85")]


def test_a_day_collected_before_coverage_was_recorded_counts_as_a_whole_day(world):
    call_command("collect_usage", "--date", DAY.isoformat())
    UsageCollectionRun.objects.update(coverage_minutes=None, fetched_at=None, attribution={})
    world["k8s"].set_data(DAY, [])

    with pytest.raises(CommandError):
        call_command("collect_usage", "--date", DAY.isoformat())

    assert "less than the 1440 already collected" in UsageCollectionRun.objects.get().error
    assert usage_of(world["ada"])[0] == D("12")


def test_a_project_deleted_after_its_day_was_collected_keeps_billing_its_owner(world):
    call_command("collect_usage", "--date", DAY.isoformat())
    before = usage_of(world["ada"]), usage_of(world["grace"])
    world["hopsworks"].remove_project("Ada_Project")
    world["hopsworks"].remove_project("grace_ml")

    call_command("collect_usage", "--date", DAY.isoformat())

    assert (usage_of(world["ada"]), usage_of(world["grace"])) == before
    run = UsageCollectionRun.objects.get()
    assert run.attribution["ada-project"] == {
        "project": "Ada_Project",
        "user_id": world["ada"].pk,
    }
    assert run.attribution["grace-ml"]["user_id"] == world["grace"].pk
    assert {n["namespace"] for n in run.unknown_namespaces} == {"orphan", "mystery"}


def test_a_namespace_changing_hands_keeps_the_owner_of_the_day_it_was_collected(world):
    call_command("collect_usage", "--date", DAY.isoformat())
    world["hopsworks"].remove_project("ada_two")
    world["hopsworks"].add_project("ada_two", "grace@example.com", namespace="ada-two")

    call_command("collect_usage", "--date", DAY.isoformat())

    assert usage_of(world["ada"])[0] == D("12")
    assert usage_of(world["grace"])[0] == D("2.00001")


def test_a_namespace_unknown_before_is_filled_by_a_mapping_known_now(world):
    call_command("collect_usage", "--date", DAY.isoformat())
    world["hopsworks"].add_project("mystery", "grace@example.com", namespace="mystery")

    call_command("collect_usage", "--date", DAY.isoformat())

    assert usage_of(world["grace"])[0] == D("6.00001")
    run = UsageCollectionRun.objects.get()
    assert run.attribution["mystery"] == {"project": "mystery", "user_id": world["grace"].pk}
    assert [n["namespace"] for n in run.unknown_namespaces] == ["orphan"]


def test_an_inactive_cluster_keeps_being_collected_for_its_assigned_users(world):
    services.cluster_set_status(cluster=world["cluster"], status="inactive", actor=None)

    call_command("collect_usage", "--date", DAY.isoformat())

    assert UsageCollectionRun.objects.get().status == "succeeded"
    assert usage_of(world["ada"])[0] == D("12")


def test_a_cluster_without_a_kubeconfig_gets_a_failed_run_saying_why(world, fake_hopsworks):
    west = ClusterFactory(name="west")  # no kubeconfig
    services.assignment_create(user=UserFactory(), cluster=west, actor=None)
    services.cluster_set_status(cluster=west, status="inactive", actor=None)

    with pytest.raises(CommandError, match="1 of 2 cluster-day"):
        call_command("collect_usage", "--date", DAY.isoformat())

    runs = {r.cluster.name: r for r in UsageCollectionRun.objects.select_related("cluster")}
    assert runs["east"].status == "succeeded"
    assert runs["west"].status == "failed"
    assert runs["west"].error.startswith("Cluster west has no kubeconfig to read usage with")


def test_a_cluster_nobody_is_assigned_to_that_had_usage_that_day_is_collected(world):
    call_command("collect_usage", "--date", DAY.isoformat())
    for user in (world["ada"], world["grace"]):
        services.assignment_unassign(user=user, actor=None)
    services.cluster_set_status(cluster=world["cluster"], status="inactive", actor=None)

    call_command("collect_usage", "--date", DAY.isoformat())

    run = UsageCollectionRun.objects.get()
    assert (run.status, run.attempts) == ("succeeded", 2)
    assert usage_of(world["ada"])[0] == D("12")


def second_cluster(fake_hopsworks, fake_kubernetes, cluster_on, test_ca):
    """west: lin's project on the second fakes, one CPU hour on DAY."""
    _, hopsworks = fake_hopsworks
    _, k8s = fake_kubernetes
    west = cluster_on(hopsworks, name="west", kubeconfig=kubeconfig_for(k8s, test_ca))
    lin = UserFactory(email="lin@example.com")
    services.assignment_create(user=lin, cluster=west, actor=None)
    hopsworks_accounts_sync()
    hopsworks.add_project("lin_lab", "lin@example.com", namespace="lin-lab")
    k8s.set_allocations(DAY, {"lin-lab": {"cpuCoreHours": D("1")}})
    return lin


def test_one_implausible_figure_leaves_out_its_namespace_and_the_rest_is_collected(
    world, fake_hopsworks, fake_kubernetes, cluster_on, test_ca
):
    lin = second_cluster(fake_hopsworks, fake_kubernetes, cluster_on, test_ca)
    world["k8s"].set_allocations(
        DAY,
        {
            "ada-project": {"cpuCoreHours": D("1000000000000")},
            "ada-two": {"cpuCoreHours": D("1.5")},
            "grace-ml": {"cpuCoreHours": D("2"), "gpuHours": "lots"},
            "mystery": {"cpuCoreHours": D("4")},
        },
    )

    call_command("collect_usage", "--date", DAY.isoformat())

    assert usage_of(world["ada"])[0] == D("1.5")
    assert not UsageDaily.objects.filter(user=world["grace"]).exists()
    assert usage_of(lin)[0] == D("1")
    run = UsageCollectionRun.objects.get(cluster=world["cluster"])
    assert run.status == "succeeded"
    notes = " ".join(run.notes)
    assert "ada-project" in notes and "1000000000000" in notes
    assert "grace-ml" in notes and "'lots'" in notes


def test_storage_just_over_what_a_day_can_hold_leaves_out_its_namespace(world):
    """The storage limit is checked on the GB-months the byte-hours make (November: 30
    days), also just past it."""
    from billing.usage import MAX_QUANTITY

    world["k8s"].set_allocations(
        DAY,
        {
            "ada-project": {"pvByteHours": (MAX_QUANTITY * 30 + 1) * GB_HELD_ALL_DAY},
            "ada-two": {"cpuCoreHours": D("1.5")},
        },
    )

    call_command("collect_usage", "--date", DAY.isoformat())

    assert usage_of(world["ada"])[:3] == (D("1.5"), D("0"), D("0"))
    run = UsageCollectionRun.objects.get()
    assert any(
        note.startswith("ada-project: pvByteHours") and "implausible" in note for note in run.notes
    ), run.notes


def test_an_error_writing_one_cluster_day_fails_its_run_and_the_next_cluster_is_collected(
    world, fake_hopsworks, fake_kubernetes, cluster_on, test_ca
):
    lin = second_cluster(fake_hopsworks, fake_kubernetes, cluster_on, test_ca)
    # Each namespace is plausible; their sum for Ada is not, and usage_upsert refuses it.
    world["k8s"].set_allocations(
        DAY,
        {
            "ada-project": {"cpuCoreHours": D("600000000")},
            "ada-two": {"cpuCoreHours": D("600000000")},
        },
    )

    with pytest.raises(CommandError, match="1 of 2 cluster-day"):
        call_command("collect_usage", "--date", DAY.isoformat())

    runs = {r.cluster.name: r for r in UsageCollectionRun.objects.select_related("cluster")}
    assert runs["east"].status == "failed" and runs["east"].finished_at is not None
    assert "cpu_hours is implausibly large" in runs["east"].error
    assert not UsageDaily.objects.filter(hopsworks_cluster=world["cluster"]).exists()
    assert runs["west"].status == "succeeded"
    assert usage_of(lin)[0] == D("1")


def test_figures_fetched_later_than_ours_are_not_overwritten(world):
    call_command("collect_usage", "--date", DAY.isoformat())
    # Stored by a collector that read OpenCost after us (its clock, or it ran unlocked).
    later = timezone.now() + dt.timedelta(hours=1)
    UsageCollectionRun.objects.update(fetched_at=later)
    world["k8s"].set_allocations(DAY, {"ada-project": {"cpuCoreHours": D("99")}})

    with pytest.raises(CommandError):
        call_command("collect_usage", "--date", DAY.isoformat())

    run = UsageCollectionRun.objects.get()
    assert run.status == "failed" and "read from OpenCost later" in run.error
    assert usage_of(world["ada"])[0] == D("12")


def test_a_rerun_needs_hopsworks_only_for_namespaces_the_day_has_no_owner_for(world):
    world["k8s"].set_allocations(DAY, {"ada-project": {"cpuCoreHours": D("3")}})
    call_command("collect_usage", "--date", DAY.isoformat())
    world["hopsworks"].fail_next(2, status=401, method="GET", path="/admin/projects")
    world["k8s"].set_allocations(DAY, {"ada-project": {"cpuCoreHours": D("4")}})

    call_command("collect_usage", "--date", DAY.isoformat())  # owners from the run's record

    assert usage_of(world["ada"])[0] == D("4")
    run = UsageCollectionRun.objects.get()
    assert any("Hopsworks could not be asked" in note for note in run.notes)

    world["k8s"].set_allocations(DAY, {"mystery": {"cpuCoreHours": D("1")}})
    with pytest.raises(CommandError):  # a namespace nobody owned yet: Hopsworks is needed
        call_command("collect_usage", "--date", DAY.isoformat())
    assert "401" in UsageCollectionRun.objects.get().error


def test_with_opencost_and_hopsworks_both_down_the_run_names_opencost(world):
    # They are asked at once; the run says what it said when OpenCost was asked first.
    world["k8s"].status = 503
    world["hopsworks"].fail_next(1, status=401, method="GET", path="/admin/projects")

    [run] = usage_collect(clusters=[world["cluster"]], days=[DAY], actor="operator")

    assert run.status == "failed"
    assert "OpenCost was not found" in run.error and "HTTP 503" in run.error
    assert "Hopsworks" not in run.error
    assert UsageDaily.objects.count() == 0


def test_hopsworks_down_fails_a_first_collection_with_its_error_and_writes_nothing(world):
    world["hopsworks"].fail_next(1, status=401, method="GET", path="/admin/projects")

    [run] = usage_collect(clusters=[world["cluster"]], days=[DAY], actor="operator")

    assert run.status == "failed"
    assert "list projects" in run.error and "401" in run.error
    assert UsageDaily.objects.count() == 0


def test_a_cluster_with_more_users_than_one_upsert_batch_is_collected_in_one_run(
    world, fake_hopsworks, cluster_on, test_ca
):
    """More namespaces than MAX_BATCH: written in batches inside the run's one transaction;
    the next cluster is collected too."""
    from accounts.models import User
    from billing.usage import MAX_BATCH
    from clusters.models import UserHopsworksAssignment

    _, other_hopsworks = fake_hopsworks
    big = cluster_on(other_hopsworks, name="big", kubeconfig=kubeconfig_for(world["k8s"], test_ca))
    count = MAX_BATCH + 1
    # Bulk data: assignments inserted directly (assignment_create would sync each account).
    users = User.objects.bulk_create(
        [User(id=f"auth0|many{i:05d}", email=f"many{i:05d}@example.com") for i in range(count)]
    )
    UserHopsworksAssignment.objects.bulk_create(
        [UserHopsworksAssignment(user=u, hopsworks_cluster=big) for u in users]
    )
    for user in users:
        other_hopsworks.add_project(f"p{user.pk[-5:]}", user.email, namespace=f"ns-{user.pk[-5:]}")
    # The same fake Kubernetes serves both clusters: east's namespaces are unknown on big.
    world["k8s"].set_allocations(
        DAY,
        {
            "ada-project": {"cpuCoreHours": D("10")},
            **{f"ns-{user.pk[-5:]}": {"cpuCoreHours": D("1")} for user in users},
        },
    )

    call_command("collect_usage", "--date", DAY.isoformat())  # big first (by name)

    runs = {r.cluster.name: r for r in UsageCollectionRun.objects.select_related("cluster")}
    assert {name: r.status for name, r in runs.items()} == {
        "big": "succeeded",
        "east": "succeeded",
    }, [r.error for r in runs.values()]
    assert runs["big"].rows_written == count
    assert UsageDaily.objects.filter(hopsworks_cluster=big, cpu_hours=D("1")).count() == count
    assert usage_of(world["ada"])[0] == D("10")
