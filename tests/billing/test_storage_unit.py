"""Storage is billed in the unit Kubernetes sizes volumes in (GiB by default), stated on the
rate card: a 100Gi volume held all month is 100 GiB-months, not 107.4 GB-months."""

import datetime as dt
from decimal import Decimal

import pytest

from billing.collection import usage_collect
from billing.models import UsageDaily
from billing.pricing import quantize
from clusters import services
from clusters.account_sync import hopsworks_accounts_sync
from tests.factories import UserFactory
from tests.fakes.kubernetes import kubeconfig_for

pytestmark = pytest.mark.django_db
DAY = dt.date(2026, 11, 20)  # November: 30 days
GIB = Decimal(2) ** 30


@pytest.fixture
def volume_of_100gi(fake_hopsworks, fake_kubernetes, cluster_on, test_ca):
    hopsworks, _ = fake_hopsworks
    k8s, _ = fake_kubernetes
    cluster = cluster_on(hopsworks, name="east", kubeconfig=kubeconfig_for(k8s, test_ca))
    ada = UserFactory(email="ada@example.com")
    services.assignment_create(user=ada, cluster=cluster, actor=None)
    hopsworks_accounts_sync()
    hopsworks.add_project("ada_data", "ada@example.com", namespace="ada-data")
    # A PersistentVolumeClaim of 100Gi, held for all 24 hours of the day.
    k8s.set_allocations(DAY, {"ada-data": {"pvByteHours": 24 * 100 * GIB}})
    return cluster, ada


def test_a_100gi_volume_held_all_month_bills_100_gib_months(volume_of_100gi):
    cluster, ada = volume_of_100gi

    usage_collect(clusters=[cluster], days=[DAY])

    row = UsageDaily.objects.get(user=ada, date=DAY)
    assert row.storage_gb_months == quantize(Decimal(100) / 30)
    # 30 such days are 100 GiB-months: $15.00 at the default $0.15, not $16.11.
    assert (row.total_cost * 30).quantize(Decimal("0.01")) == Decimal("15.00")


def test_with_storage_billed_in_gb_the_same_volume_is_107_gb_months(volume_of_100gi, settings):
    settings.STORAGE_UNIT = "GB"
    cluster, ada = volume_of_100gi

    usage_collect(clusters=[cluster], days=[DAY])

    row = UsageDaily.objects.get(user=ada, date=DAY)
    assert row.storage_gb_months == quantize(Decimal("107.3741824") / 30)


def test_the_rate_card_states_the_storage_unit(operator_client, settings):
    page = operator_client.get("/admin/billing/price/").content.decode()
    assert "GiB-month (1 GiB = 2^30 bytes)" in page
    assert "core-hour" in page

    settings.STORAGE_UNIT = "GB"
    page = operator_client.get("/admin/billing/price/").content.decode()
    assert "GB-month (1 GB = 10^9 bytes)" in page


def test_the_usage_list_and_the_users_page_label_storage_in_the_unit(operator_client, client):
    from billing.usage import UsageRecord, usage_upsert

    ada = UserFactory()
    yesterday = dt.date.today() - dt.timedelta(days=1)
    usage_upsert(
        records=[UsageRecord(user_id=ada.pk, date=yesterday, storage_gb_months=Decimal(1))],
        actor="t",
    )
    listing = operator_client.get("/admin/billing/usagedaily/").content.decode()
    client.force_login(ada, backend="django.contrib.auth.backends.ModelBackend")
    own_page = client.get("/").content.decode()

    for page in (listing, own_page):
        assert "Storage GiB-months" in page
        assert "GB-months" not in page.replace("GiB-months", "")
