"""The clusters console: utilization list, write-only secrets, validation, actions."""

import pytest
import yaml
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clusters import services
from clusters.models import HopsworksCluster
from clusters.models import UserHopsworksAssignment as Assignment
from tests.factories import ClusterFactory, UserFactory
from tests.fakes.raw_servers import RecordingListener

pytestmark = pytest.mark.django_db

LIST = "/admin/clusters/hopsworkscluster/"
USERS = "/admin/accounts/user/"
KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster: {server: "https://10.0.0.1:6443"}
users:
- name: reader
  user: {token: kube-secret-token}
contexts:
- name: prod
  context: {cluster: prod, user: reader}
current-context: prod
"""


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


def test_the_clusters_list_is_the_seeds_utilization(operator_client):
    cluster = ClusterFactory(name="east", max_users=4)
    for _ in range(3):
        services.assignment_create(user=UserFactory(), cluster=cluster, actor=None)

    response = operator_client.get(LIST)

    body = response.content.decode()
    assert response.status_code == 200
    assert "75%" in body
    assert f"?hopsworks_assignment__hopsworks_cluster__id__exact={cluster.pk}" in body
    assert "api-key" not in body


def test_the_clusters_list_makes_as_many_queries_for_many_clusters_as_for_few(operator_client):
    ClusterFactory.create_batch(2)

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert operator_client.get(LIST).status_code == 200
        return len(captured)

    few = queries()
    ClusterFactory.create_batch(20)
    assert queries() == few


def test_creating_a_cluster_encrypts_its_key_and_never_shows_it_back(operator_client):
    response = operator_client.post(f"{LIST}add/", form_data(kubeconfig_input=KUBECONFIG))
    assert response.status_code == 302, response.content.decode()[:3000]
    cluster = HopsworksCluster.objects.get(name="east")
    assert cluster.api_key.reveal() == "the-admin-key"

    page = operator_client.get(f"{LIST}{cluster.pk}/change/").content.decode()
    assert "the-admin-key" not in page
    assert "kube-secret-token" not in page
    assert "Currently set." in page


def test_saving_with_empty_secret_inputs_keeps_the_stored_secrets(operator_client):
    cluster = ClusterFactory(
        name="east", api_url="https://east.example.com", api_key="keep-me", kubeconfig=KUBECONFIG
    )
    response = operator_client.post(
        f"{LIST}{cluster.pk}/change/", form_data(api_key_input="", max_users="20")
    )
    assert response.status_code == 302
    cluster = HopsworksCluster.objects.get(pk=cluster.pk)
    assert cluster.max_users == 20
    assert cluster.api_key.reveal() == "keep-me"
    assert cluster.kubeconfig.reveal() == KUBECONFIG


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"api_url": "http://east.example.com"}, "api_url", "https"),
        ({"api_url": "not a url"}, "api_url", ""),
        ({"kubeconfig_input": "{{{ not yaml"}, "kubeconfig_input", "YAML"),
        ({"kubeconfig_input": "apiVersion: v1\nkind: Config\n"}, "kubeconfig_input", "cluster"),
        # Values PyYAML fails to construct (not YAMLError): an impossible date, typed tags.
        ({"kubeconfig_input": "2026-02-30"}, "kubeconfig_input", "impossible date"),
        ({"kubeconfig_input": "a: 0000-01-01"}, "kubeconfig_input", "YAML"),
        ({"kubeconfig_input": "token: !!int secret-abc"}, "kubeconfig_input", "YAML"),
        ({"kubeconfig_input": "a: !!bool abc"}, "kubeconfig_input", "YAML"),
        ({"kubeconfig_input": "a: !!timestamp abc"}, "kubeconfig_input", "YAML"),
        ({"kubeconfig_input": "a: !!float abc"}, "kubeconfig_input", "YAML"),
        ({"ca_bundle": "not a certificate"}, "ca_bundle", "PEM"),
        ({"max_users": "-1"}, "max_users", ""),
        ({"api_key_input": ""}, "api_key_input", "required"),
    ],
)
def test_bad_cluster_input_is_a_form_error_on_its_field(operator_client, overrides, field, message):
    response = operator_client.post(f"{LIST}add/", form_data(**overrides))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert field in errors
    assert message.lower() in " ".join(errors[field]).lower()
    assert "secret-abc" not in " ".join(errors[field])  # a value is never quoted back
    assert not HopsworksCluster.objects.exists()


def test_max_users_below_the_assigned_users_is_refused_on_the_form(operator_client):
    cluster = ClusterFactory(name="east", max_users=5)
    for _ in range(2):
        services.assignment_create(user=UserFactory(), cluster=cluster, actor=None)
    response = operator_client.post(
        f"{LIST}{cluster.pk}/change/", form_data(max_users="1", api_key_input="")
    )
    assert response.status_code == 200
    assert "2 users are assigned" in " ".join(
        response.context["adminform"].form.errors["max_users"]
    )


def test_http_is_allowed_for_a_local_cluster(operator_client):
    response = operator_client.post(f"{LIST}add/", form_data(api_url="http://localhost:8181"))
    assert response.status_code == 302


def test_maintenance_and_back_with_confirmation(operator_client):
    cluster = ClusterFactory()
    ask = operator_client.post(
        LIST, {"action": "put_in_maintenance", "_selected_action": [cluster.pk]}
    )
    assert "Yes, make them maintenance" in ask.content.decode()
    cluster.refresh_from_db()
    assert cluster.status == "active"

    operator_client.post(
        LIST, {"action": "put_in_maintenance", "_selected_action": [cluster.pk], "confirmed": "yes"}
    )
    cluster.refresh_from_db()
    assert cluster.status == "maintenance"


def test_test_connection_reports_what_hopsworks_has(operator_client, fake_hopsworks, cluster_on):
    east, _ = fake_hopsworks
    east.add_user(email="someone@example.com")
    east.add_project("demo_project", "someone@example.com")
    cluster = cluster_on(east, name="east")
    down = ClusterFactory(name="down")

    response = operator_client.post(
        LIST, {"action": "test_connection", "_selected_action": [cluster.pk, down.pk]}, follow=True
    )

    messages = [str(m) for m in response.context["messages"]]
    assert "east: connected; Hopsworks has 1 users and 1 projects." in messages
    assert any(m.startswith("down:") and "could not reach" in m for m in messages)
    assert {r.headers["Authorization"] for r in east.requests} == {f"ApiKey {east.api_key}"}


def test_operators_assign_move_and_unassign_users_from_the_users_list(operator_client):
    east, west = ClusterFactory(name="east"), ClusterFactory(name="west")
    user = UserFactory()

    operator_client.post(
        USERS,
        {
            "action": "assign_to_cluster",
            "_selected_action": [user.pk],
            "confirmed": "yes",
            "cluster": east.pk,
        },
    )
    assert Assignment.objects.get(user=user).hopsworks_cluster == east
    page = operator_client.get(USERS, {"placement": "assigned"}).content.decode()
    assert user.email in page and "east" in page

    operator_client.post(
        USERS,
        {
            "action": "move_to_cluster",
            "_selected_action": [user.pk],
            "confirmed": "yes",
            "cluster": west.pk,
        },
    )
    assert Assignment.objects.get(user=user).hopsworks_cluster == west
    detail = operator_client.get(f"{USERS}{user.pk}/change/").content.decode()
    assert "On west" in detail

    operator_client.post(
        USERS, {"action": "unassign", "_selected_action": [user.pk], "confirmed": "yes"}
    )
    assert not Assignment.objects.filter(user=user).exists()


def test_a_full_cluster_refusal_is_shown_not_raised(operator_client):
    full = ClusterFactory(name="full", max_users=0)
    user = UserFactory()
    response = operator_client.post(
        USERS,
        {
            "action": "assign_to_cluster",
            "_selected_action": [user.pk],
            "confirmed": "yes",
            "cluster": full.pk,
        },
        follow=True,
    )
    assert response.status_code == 200
    assert any("full is full" in str(m) for m in response.context["messages"])


def test_waiting_users_are_visible_to_operators(operator_client):
    ClusterFactory(max_users=0)
    user = UserFactory()
    services.assignment_place(user=user)

    listing = operator_client.get(USERS, {"placement": "waiting"}).content.decode()
    detail = operator_client.get(f"{USERS}{user.pk}/change/").content.decode()

    assert user.email in listing and "waiting for capacity" in listing
    assert "Waiting for capacity since" in detail


def test_the_users_list_with_clusters_makes_as_many_queries_for_50_users_as_for_5(operator_client):
    cluster = ClusterFactory(max_users=100)

    def queries():
        with CaptureQueriesContext(connection) as captured:
            assert operator_client.get(USERS).status_code == 200
        return len(captured)

    for user in UserFactory.create_batch(5):
        services.assignment_create(user=user, cluster=cluster, actor=None)
    few = queries()
    for user in UserFactory.create_batch(45):
        services.assignment_create(user=user, cluster=cluster, actor=None)
    assert queries() == few


def test_auto_assign_reports_a_suspended_user_as_not_placed(operator_client):
    ClusterFactory(name="east")
    suspended, active = UserFactory(status="suspended"), UserFactory()

    response = operator_client.post(
        USERS,
        {
            "action": "auto_assign",
            "_selected_action": [suspended.pk, active.pk],
            "confirmed": "yes",
        },
        follow=True,
    )

    messages = [str(m) for m in response.context["messages"]]
    assert any(
        m.startswith(f"{suspended.email}: not done: {suspended.email} is suspended")
        for m in messages
    )
    assert any(
        m.startswith(f"{active.email}: assigned on east; Hopsworks account") for m in messages
    )
    assert any(m.startswith("1 user queued, 1 user not done.") for m in messages)
    assert list(Assignment.objects.values_list("user_id", flat=True)) == [active.pk]


# Where the key goes, and secrets never shown back


def test_a_url_change_without_the_key_is_refused_so_test_connection_cannot_leak_the_key(
    operator_client, fake_hopsworks, cluster_on, test_ca
):
    east, _ = fake_hopsworks
    cluster = cluster_on(east, name="east")

    with RecordingListener(tls=test_ca) as stranger:
        change = operator_client.post(
            f"{LIST}{cluster.pk}/change/",
            form_data(
                api_url=stranger.url,
                api_key_input="",
                ca_bundle=test_ca.ca_path.read_text(),
            ),
        )
        operator_client.post(
            LIST, {"action": "test_connection", "_selected_action": [cluster.pk]}, follow=True
        )

    assert east.api_key.encode() not in stranger.received
    assert (stranger.connections, stranger.received) == (0, b"")
    assert change.status_code == 200
    errors = change.context["adminform"].form.errors
    assert "enter the API key again" in " ".join(errors["api_key_input"])
    assert HopsworksCluster.objects.get(pk=cluster.pk).api_url == east.api_url


def test_test_connection_never_shows_what_the_server_answered(
    operator_client, fake_hopsworks, cluster_on
):
    east, _ = fake_hopsworks
    cluster = cluster_on(east, name="east")
    east.answer_next(
        403, {"usrMsg": "internal-secret-from-the-body", "errorCode": 7}, path="/admin/users"
    )

    response = operator_client.post(
        LIST, {"action": "test_connection", "_selected_action": [cluster.pk]}, follow=True
    )

    messages = " ".join(str(m) for m in response.context["messages"])
    assert "HTTP 403 Forbidden" in messages
    assert "internal-secret-from-the-body" not in messages
    assert "internal-secret-from-the-body" not in response.content.decode()


def test_an_invalid_form_never_shows_the_pasted_kubeconfig_or_key_again(operator_client):
    response = operator_client.post(
        f"{LIST}add/",
        form_data(
            api_url="not a url",
            api_key_input="the-admin-key-typed-in",
            kubeconfig_input=KUBECONFIG,
        ),
    )

    page = response.content.decode()
    assert response.status_code == 200
    assert "kube-secret-token" not in page
    assert "the-admin-key-typed-in" not in page
    errors = response.context["adminform"].form.errors
    assert "Enter it again" in " ".join(errors["kubeconfig_input"])
    assert "Enter it again" in " ".join(errors["api_key_input"])


def test_a_kubeconfig_refused_for_its_server_is_not_shown_again(operator_client):
    config = KUBECONFIG.replace("https://10.0.0.1:6443", "https://10.0.0.1:6443/internal/x?y=")
    response = operator_client.post(f"{LIST}add/", form_data(kubeconfig_input=config))

    assert response.status_code == 200
    assert "kube-secret-token" not in response.content.decode()
    errors = response.context["adminform"].form.errors["kubeconfig_input"]
    assert "without a path, query or fragment" in " ".join(errors)


# No form input is a server error

texts = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ["", " ", "\x00", "https://east.example.com", "http://localhost:8181", "https://[::1]:x"]
)
yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | texts,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(["clusters", "users", "contexts", "name", "cluster", "server", "user"])
            | texts,
            children,
            max_size=4,
        )
    ),
    max_leaves=15,
)
kubeconfigs = (
    texts
    | yaml_values.map(lambda v: yaml.safe_dump(v, allow_unicode=True))
    | st.integers(1, 3000).map(lambda n: "a: " + "[" * n + "]" * n)
    | st.just(KUBECONFIG)
    | st.just(KUBECONFIG.replace("https://10.0.0.1:6443", "https://10.0.0.1:6443/x?y=\x00"))
)
cluster_forms = st.fixed_dictionaries(
    {
        "name": texts,
        "api_url": texts,
        "status": st.sampled_from(["active", "maintenance", "inactive", "", "\x00"]) | texts,
        "max_users": st.sampled_from(["10", "-1", "0", "1e9", "99999999999999999999"]) | texts,
        "ca_bundle": texts,
        "api_key_input": texts,
        "kubeconfig_input": kubeconfigs,
    },
    optional={"clear_kubeconfig": st.sampled_from(["on", "", "\x00"])},
)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=cluster_forms, change=st.booleans())
def test_no_cluster_form_input_is_a_server_error(operator_client, data, change):
    cluster = HopsworksCluster.objects.filter(name="fuzzed").first() or ClusterFactory(
        name="fuzzed", kubeconfig=KUBECONFIG
    )
    url = f"{LIST}{cluster.pk}/change/" if change else f"{LIST}add/"

    response = operator_client.post(url, data)

    if any("\x00" in value for value in data.values()):  # refused before the form reads it
        assert response.status_code == 400
        assert b"NUL character" in response.content
    else:
        assert response.status_code in (200, 302)
    assert "kube-secret-token" not in response.content.decode()
