"""Who may call what: each scope against each endpoint, bad keys, and users who must never
read another user's data."""

import datetime as dt

import pytest
from django.utils import timezone

from clusters import services
from tests.conftest import ALL_SCOPES
from tests.factories import ClusterFactory, UserFactory

pytestmark = pytest.mark.django_db

# (method, path template, the scope it needs)
OPERATOR_ENDPOINTS = [
    ("get", "/api/v1/users", "users:read"),
    ("get", "/api/v1/users/{user}", "users:read"),
    ("post", "/api/v1/users/{user}/assignment", "assignments:write"),
    ("delete", "/api/v1/users/{user}/assignment", "assignments:write"),
    ("get", "/api/v1/clusters", "clusters:read"),
    ("get", "/api/v1/usage", "usage:read"),
    ("post", "/api/v1/usage", "usage:write"),
]
ME_ENDPOINTS = ["/api/v1/me", "/api/v1/me/usage", "/api/v1/me/billing"]


@pytest.fixture
def world():
    cluster = ClusterFactory(name="east")
    user = UserFactory()
    services.assignment_create(user=user, cluster=cluster, actor=None)
    return {"cluster": cluster, "user": user}


def call(client, method, path, *, auth=None, body=None):
    kwargs = {"HTTP_AUTHORIZATION": auth} if auth else {}
    if method in ("post",):
        return client.post(
            path, body if body is not None else {}, content_type="application/json", **kwargs
        )
    return getattr(client, method)(path, **kwargs)


def body_for(path, world):
    if path == "/api/v1/usage":
        return {"records": [{"user": world["user"].pk, "date": "2026-11-01", "api_calls": 3}]}
    return {"cluster": "east"}


@pytest.mark.parametrize("scope", ALL_SCOPES)
@pytest.mark.parametrize(("method", "template", "needed"), OPERATOR_ENDPOINTS)
def test_each_scope_opens_exactly_its_endpoints(
    client, make_key, world, scope, method, template, needed
):
    path = template.format(user=world["user"].pk)
    response = call(client, method, path, auth=make_key(scope), body=body_for(path, world))
    if scope == needed:
        assert response.status_code < 400, response.content
    else:
        assert response.status_code == 403
        assert needed in response.json()["error"]["message"]


@pytest.mark.parametrize(("method", "template", "needed"), OPERATOR_ENDPOINTS)
def test_no_credentials_is_401_in_the_one_error_format(client, world, method, template, needed):
    response = call(client, method, template.format(user=world["user"].pk))
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["status"] == 401 and error["message"]
    assert response["WWW-Authenticate"] == "Api-Key"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"revoked": True}, "revoked"),
        ({"expires_at": timezone.now() - dt.timedelta(minutes=1)}, "expired"),
    ],
)
def test_revoked_and_expired_keys_get_401(client, make_key, world, fields, message):
    response = client.get("/api/v1/clusters", HTTP_AUTHORIZATION=make_key(**fields))
    assert response.status_code == 401
    assert message in response.json()["error"]["message"]


def test_an_unknown_or_tampered_key_gets_401(client, make_key):
    good = make_key()
    for bad in ["Api-Key nonsense", "Api-Key " + good.split(" ")[1][:-2] + "xx", "Api-Key "]:
        assert client.get("/api/v1/clusters", HTTP_AUTHORIZATION=bad).status_code == 401


def test_an_api_key_has_no_me(client, make_key):
    for path in ME_ENDPOINTS:
        assert client.get(path, HTTP_AUTHORIZATION=make_key()).status_code == 403


def test_a_user_sees_only_themselves_through_me(client, world):
    other = UserFactory(email="other@example.com")
    client.force_login(world["user"], backend="django.contrib.auth.backends.ModelBackend")
    me = client.get("/api/v1/me").json()
    assert me["id"] == world["user"].pk
    assert me["assignment"]["cluster_name"] == "east"
    for path in ME_ENDPOINTS:
        assert other.email not in client.get(path).content.decode()


@pytest.mark.parametrize(("method", "template", "needed"), OPERATOR_ENDPOINTS)
def test_a_user_never_reaches_other_users_through_operator_endpoints(
    client, world, method, template, needed
):
    victim = UserFactory()
    client.force_login(world["user"], backend="django.contrib.auth.backends.ModelBackend")
    for target in (victim.pk, world["user"].pk, "auth0|guessed", "google-oauth2|1"):
        response = call(
            client, method, template.format(user=target), body=body_for(template, world)
        )
        assert response.status_code == 403  # the same answer whether the id exists or not
        assert victim.email not in response.content.decode()


def test_an_operator_session_may_use_operator_endpoints(operator_client, world):
    assert operator_client.get("/api/v1/clusters").status_code == 200


def test_each_key_is_throttled_on_its_own(client, make_key, monkeypatch):
    from django.core.cache import cache

    from plumbing.api import PerKeyThrottle

    cache.clear()
    monkeypatch.setattr(PerKeyThrottle, "THROTTLE_RATES", {"per_key": "3/minute"})
    busy, quiet = make_key("clusters:read"), make_key("clusters:read")

    answers = [
        client.get("/api/v1/clusters", HTTP_AUTHORIZATION=busy).status_code for _ in range(4)
    ]

    assert answers == [200, 200, 200, 429]
    limited = client.get("/api/v1/clusters", HTTP_AUTHORIZATION=busy)
    assert limited.json()["error"]["code"] == "throttled"
    assert "Retry-After" in limited
    assert client.get("/api/v1/clusters", HTTP_AUTHORIZATION=quiet).status_code == 200


def test_posting_an_assignment_assigns_then_moves_and_delete_unassigns(client, make_key, world):
    west = ClusterFactory(name="west")
    newcomer = UserFactory()
    key = make_key("assignments:write")
    url = f"/api/v1/users/{newcomer.pk}/assignment"

    placed = client.post(
        url, {"cluster": "east"}, content_type="application/json", HTTP_AUTHORIZATION=key
    )
    moved = client.post(
        url, {"cluster": str(west.pk)}, content_type="application/json", HTTP_AUTHORIZATION=key
    )
    gone = client.delete(url, HTTP_AUTHORIZATION=key)
    again = client.delete(url, HTTP_AUTHORIZATION=key)

    assert placed.json()["cluster_name"] == "east"
    assert moved.json()["cluster_name"] == "west"
    assert gone.status_code == 204
    assert again.status_code == 404 and "not on any cluster" in again.json()["error"]["message"]


def test_a_full_cluster_is_a_409_with_the_reason(client, make_key):
    ClusterFactory(name="full", max_users=0)
    user = UserFactory()
    response = client.post(
        f"/api/v1/users/{user.pk}/assignment",
        {"cluster": "full"},
        content_type="application/json",
        HTTP_AUTHORIZATION=make_key("assignments:write"),
    )
    assert response.status_code == 409
    assert "full is full" in response.json()["error"]["message"]
