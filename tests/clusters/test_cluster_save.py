"""cluster_save: where a cluster's API key may be sent. A new address (URL or CA) needs the
key entered again, and in production the address must be public https."""

from __future__ import annotations

import pytest

from clusters import services
from clusters.hopsworks import HopsworksError
from clusters.models import HopsworksCluster
from clusters.services import ClusterValidationError
from tests.factories import ClusterFactory
from tests.fakes.raw_servers import RecordingListener

pytestmark = pytest.mark.django_db


@pytest.fixture
def production_rules(settings):
    """The outbound rules as they are with DEBUG off: public https addresses only."""
    settings.OUTBOUND_ALLOW_LOCAL = False
    settings.OUTBOUND_ALLOWED_HOSTS = []
    return settings


def test_changing_only_the_api_url_is_refused_and_the_key_goes_nowhere(
    fake_hopsworks, cluster_on, test_ca
):
    east, _ = fake_hopsworks
    cluster = cluster_on(east, name="east")

    with RecordingListener(tls=test_ca) as stranger:
        with pytest.raises(ClusterValidationError) as caught:
            services.cluster_save(cluster=cluster, changes={"api_url": stranger.url}, actor="op")
        stored = HopsworksCluster.objects.get(pk=cluster.pk)
        with stored.hopsworks_client(quick=True) as client:
            client.check_connection()

    assert caught.value.field == "api_key"
    assert "enter the API key again" in str(caught.value)
    assert stored.api_url == east.api_url
    assert (stranger.connections, stranger.received) == (0, b"")
    assert {r.headers["Authorization"] for r in east.requests} == {f"ApiKey {east.api_key}"}


def test_changing_only_the_ca_bundle_is_refused_too(fake_hopsworks, cluster_on, test_ca):
    east, _ = fake_hopsworks
    cluster = cluster_on(east, name="east")

    with pytest.raises(ClusterValidationError) as caught:
        services.cluster_save(cluster=cluster, changes={"ca_bundle": None}, actor="op")

    assert caught.value.field == "api_key"
    assert HopsworksCluster.objects.get(pk=cluster.pk).ca_bundle == test_ca.ca_path.read_text()


def test_a_new_address_with_the_key_entered_again_is_saved(fake_hopsworks, cluster_on):
    east, west = fake_hopsworks
    cluster = cluster_on(east, name="east")

    services.cluster_save(
        cluster=cluster, changes={"api_url": west.api_url, "api_key": west.api_key}, actor="op"
    )

    stored = HopsworksCluster.objects.get(pk=cluster.pk)
    assert (stored.api_url, stored.api_key.reveal()) == (west.api_url, west.api_key)


def test_the_same_address_written_differently_needs_no_key(fake_hopsworks, cluster_on, test_ca):
    east, _ = fake_hopsworks
    cluster = cluster_on(east, name="east")

    services.cluster_save(
        cluster=cluster,
        changes={
            "api_url": f" {east.api_url}/ ",
            "ca_bundle": test_ca.ca_path.read_text().strip() + "\n\n",
            "max_users": 50,
        },
        actor="op",
    )

    assert HopsworksCluster.objects.get(pk=cluster.pk).max_users == 50


def test_other_changes_keep_the_key(fake_hopsworks, cluster_on):
    east, _ = fake_hopsworks
    cluster = cluster_on(east, name="east")

    services.cluster_save(cluster=cluster, changes={"name": "east-1", "max_users": 3}, actor="op")

    stored = HopsworksCluster.objects.get(pk=cluster.pk)
    assert (stored.name, stored.api_key.reveal()) == ("east-1", east.api_key)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://169.254.169.254", "metadata"),
        ("https://[fd00:ec2::254]", "metadata"),
        ("https://10.1.2.3:8181", "private"),
        ("https://192.168.0.10", "private"),
        ("https://100.100.100.200", "metadata"),
        ("https://127.0.0.1:8181", "this machine"),
        ("https://[::ffff:127.0.0.1]", "this machine"),
        ("https://localhost:8181", "this machine"),
        ("https://0.0.0.0", "not a public"),
        ("http://127.0.0.1:8181", "https"),
    ],
)
def test_in_production_only_public_https_addresses_are_saved(production_rules, url, expected):
    cluster = HopsworksCluster()

    with pytest.raises(ClusterValidationError) as caught:
        services.cluster_save(
            cluster=cluster,
            changes={"name": "east", "api_url": url, "api_key": "a-real-admin-key"},
            actor="op",
        )

    assert caught.value.field == "api_url"
    assert expected in str(caught.value)
    assert not HopsworksCluster.objects.exists()


def test_in_production_a_host_named_in_the_allowed_hosts_may_be_private(production_rules):
    production_rules.OUTBOUND_ALLOWED_HOSTS = ["localhost"]

    cluster = services.cluster_save(
        cluster=HopsworksCluster(),
        changes={"name": "east", "api_url": "https://localhost:8181", "api_key": "admin-key-1"},
        actor="op",
    )

    assert cluster.pk is not None


def test_the_address_is_checked_again_when_connecting(
    production_rules, fake_hopsworks, cluster_on, test_ca
):
    # Saved while the host was allowed; then the allowance (or the DNS answer) changed.
    with RecordingListener(tls=test_ca) as stranger:
        cluster = ClusterFactory(
            api_url=stranger.url,
            api_key="key-that-stays-home",
            ca_bundle=test_ca.ca_path.read_text(),
        )
        with pytest.raises(HopsworksError) as caught, cluster.hopsworks_client() as client:
            client.check_connection()

    assert "refused" in str(caught.value)
    assert "this machine" in str(caught.value)
    assert not caught.value.retriable
    assert (stranger.connections, stranger.received) == (0, b"")


def test_in_production_an_unchanged_url_is_not_looked_up_again(production_rules, monkeypatch):
    cluster = ClusterFactory(api_url="https://hopsworks.example.com", max_users=5)

    def no_dns(*args, **kwargs):
        raise AssertionError("resolved an address that did not change")

    monkeypatch.setattr("plumbing.outbound.socket.getaddrinfo", no_dns)
    services.cluster_save(
        cluster=cluster,
        changes={"api_url": "https://hopsworks.example.com/", "max_users": 6},
        actor="op",
    )

    assert HopsworksCluster.objects.get(pk=cluster.pk).max_users == 6
