"""A new cluster takes no users until its connection test passes; its API key and URL are
checked when it is saved (a URL already used by another cluster is refused)."""

from __future__ import annotations

import pytest
from django.contrib import messages as levels

from clusters import services
from clusters.models import CapacityWait, HopsworksCluster
from clusters.models import UserHopsworksAssignment as Assignment
from clusters.services import ClusterValidationError
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db

LIST = "/admin/clusters/hopsworkscluster/"
USERS = "/admin/accounts/user/"


def form_data(**overrides):
    data = {
        "name": "east",
        "api_url": "https://east.example.com",
        "status": "active",
        "max_users": "10",
        "ca_bundle": "",
        "api_key_input": "the-admin-key",
        "kubeconfig_input": "",
    }
    data.update(overrides)
    return data


def new_cluster(**changes):
    fields = {"name": "east", "api_url": "https://east.example.com", "api_key": "the-admin-key"}
    fields.update(changes)
    return services.cluster_save(cluster=HopsworksCluster(), changes=fields, actor="op")


def test_a_cluster_added_in_the_admin_starts_in_maintenance_and_takes_no_users(operator_client):
    response = operator_client.post(f"{LIST}add/", form_data(), follow=True)

    cluster = HopsworksCluster.objects.get(name="east")
    assert cluster.status == HopsworksCluster.Status.MAINTENANCE
    assert cluster.connection_ok_at is None
    assert any("Test the connection" in str(m) for m in response.context["messages"])
    user = UserFactory()
    placement = services.assignment_place(user=user)
    assert placement.outcome == services.Placement.Outcome.WAITING
    assert not Assignment.objects.exists()
    assert CapacityWait.objects.filter(user=user).exists()


def test_a_new_cluster_cannot_be_made_active_before_its_connection_test_passes(operator_client):
    cluster = new_cluster()

    response = operator_client.post(
        LIST,
        {"action": "make_active", "_selected_action": [cluster.pk], "confirmed": "yes"},
        follow=True,
    )

    cluster.refresh_from_db()
    assert cluster.status == HopsworksCluster.Status.MAINTENANCE
    shown = [(m.level, str(m)) for m in response.context["messages"]]
    assert any("east: not done:" in t and "Test the connection" in t for _, t in shown)
    assert shown[-1][0] == levels.WARNING
    with pytest.raises(ClusterValidationError):
        services.cluster_save(cluster=cluster, changes={"status": "active"}, actor="op")


def test_a_passing_connection_test_makes_a_new_cluster_active(
    operator_client, fake_hopsworks, test_ca
):
    east, _ = fake_hopsworks
    cluster = new_cluster(
        api_url=east.api_url, api_key=east.api_key, ca_bundle=test_ca.ca_path.read_text()
    )
    user = UserFactory()
    services.assignment_place(user=user)  # waits: nothing takes users yet

    response = operator_client.post(
        LIST, {"action": "test_connection", "_selected_action": [cluster.pk]}, follow=True
    )

    cluster.refresh_from_db()
    assert cluster.status == HopsworksCluster.Status.ACTIVE
    assert cluster.connection_ok_at is not None
    assert any("now active" in str(m) for m in response.context["messages"])


def test_a_connection_test_leaves_a_cluster_an_operator_put_in_maintenance_alone(
    operator_client, fake_hopsworks, cluster_on
):
    east, _ = fake_hopsworks
    cluster = cluster_on(east, name="east", status=HopsworksCluster.Status.MAINTENANCE)
    services.cluster_connection_passed(cluster=cluster, actor="op")  # tested before
    cluster.refresh_from_db()
    assert cluster.status == HopsworksCluster.Status.MAINTENANCE

    operator_client.post(
        LIST, {"action": "test_connection", "_selected_action": [cluster.pk]}, follow=True
    )

    cluster.refresh_from_db()
    assert cluster.status == HopsworksCluster.Status.MAINTENANCE


def test_a_failed_connection_test_leaves_a_new_cluster_in_maintenance(operator_client):
    cluster = new_cluster(api_url="https://127.0.0.1:9")

    response = operator_client.post(
        LIST, {"action": "test_connection", "_selected_action": [cluster.pk]}, follow=True
    )

    cluster.refresh_from_db()
    assert cluster.status == HopsworksCluster.Status.MAINTENANCE
    assert list(response.context["messages"])[-1].level == levels.WARNING


def test_a_two_character_api_key_is_refused_with_the_rule(operator_client):
    response = operator_client.post(f"{LIST}add/", form_data(api_key_input="ab"))

    assert response.status_code == 200
    errors = " ".join(response.context["adminform"].form.errors["api_key_input"])
    assert "at least 8 characters" in errors
    assert not HopsworksCluster.objects.exists()
    with pytest.raises(ClusterValidationError) as caught:
        new_cluster(api_key="ab")
    assert caught.value.field == "api_key"
    assert not HopsworksCluster.objects.exists()


@pytest.mark.parametrize(
    "same_url",
    [
        "https://east.example.com",
        "https://east.example.com/",
        "HTTPS://East.Example.COM",
        "https://east.example.com:443",
        "https://east.example.com/hopsworks-api/api",
    ],
)
def test_an_api_url_another_cluster_uses_is_refused(operator_client, same_url):
    ClusterFactory(name="first", api_url="https://east.example.com")

    response = operator_client.post(f"{LIST}add/", form_data(name="second", api_url=same_url))

    assert response.status_code == 200
    errors = " ".join(response.context["adminform"].form.errors["api_url"])
    assert "already used by cluster first" in errors
    with pytest.raises(ClusterValidationError) as caught:
        new_cluster(name="second", api_url=same_url)
    assert caught.value.field == "api_url"
    assert HopsworksCluster.objects.count() == 1


def test_changing_a_url_to_one_another_cluster_uses_is_refused():
    ClusterFactory(name="first", api_url="https://east.example.com")
    second = ClusterFactory(name="second", api_url="https://west.example.com")

    with pytest.raises(ClusterValidationError):
        services.cluster_save(
            cluster=second,
            changes={"api_url": "https://EAST.example.com/", "api_key": "a-new-admin-key"},
            actor="op",
        )
    second.refresh_from_db()
    assert second.api_url == "https://west.example.com"


def test_a_url_on_another_port_or_path_is_another_cluster():
    new_cluster(name="first", api_url="https://east.example.com")
    new_cluster(name="second", api_url="https://east.example.com:8443")
    new_cluster(name="third", api_url="https://east.example.com/other")
    assert HopsworksCluster.objects.count() == 3


def test_the_change_form_refuses_active_for_a_cluster_never_tested(operator_client):
    cluster = new_cluster()

    response = operator_client.post(
        f"{LIST}{cluster.pk}/change/", form_data(status="active", api_key_input="")
    )

    assert response.status_code == 200
    assert "Test the connection first" in " ".join(
        response.context["adminform"].form.errors["status"]
    )
    cluster.refresh_from_db()
    assert cluster.status == HopsworksCluster.Status.MAINTENANCE
