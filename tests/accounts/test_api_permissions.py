"""Who may call what: each scope against each endpoint, bad keys, and users who must never
read another user's data."""

import datetime as dt

import pytest
from django.utils import timezone

from billing.models import UsageDaily
from clusters import services
from clusters.models import UserHopsworksAssignment
from tests.conftest import ALL_SCOPES
from tests.factories import ClusterFactory, UserFactory
from tests.personas import PERSONA_COLUMNS

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


# Operators in the browser: their Django permissions decide, endpoint by endpoint.
Y, _ = True, False
#                                                  nobody view change_user support finance super
SESSION_MATRIX = {
    ("get", "/api/v1/users"):                       (_, Y, _, Y, Y, Y),
    ("get", "/api/v1/users/{user}"):                (_, Y, _, Y, Y, Y),
    ("post", "/api/v1/users/{user}/assignment"):    (_, _, _, Y, _, Y),
    ("delete", "/api/v1/users/{user}/assignment"):  (_, _, _, Y, _, Y),
    ("get", "/api/v1/clusters"):                    (_, Y, _, Y, Y, Y),
    ("get", "/api/v1/usage"):                       (_, Y, _, _, Y, Y),
    ("post", "/api/v1/usage"):                      (_, _, _, _, _, Y),
}  # fmt: skip
SESSION_CELLS = [
    pytest.param(who, method, template, allowed, id=f"{who}-{method}-{template}")
    for (method, template), row in SESSION_MATRIX.items()
    for who, allowed in zip(PERSONA_COLUMNS, row, strict=True)
]


def test_every_scope_maps_to_django_permissions_that_exist():
    from django.contrib.auth.models import Permission

    from accounts.api import SCOPE_PERMISSIONS
    from accounts.models import ApiKey

    assert set(SCOPE_PERMISSIONS) == {scope for scope, _ in ApiKey.SCOPES} == set(ALL_SCOPES)
    for permissions in SCOPE_PERMISSIONS.values():
        for name in permissions:
            app_label, codename = name.split(".")
            assert Permission.objects.filter(
                content_type__app_label=app_label, codename=codename
            ).exists(), name


def test_the_session_matrix_covers_every_operator_endpoint():
    assert set(SESSION_MATRIX) == {(method, template) for method, template, _ in OPERATOR_ENDPOINTS}


def _state(world):
    """What the writing endpoints change: usage rows and where the user is."""
    assignment = UserHopsworksAssignment.objects.filter(user=world["user"]).first()
    return UsageDaily.objects.count(), assignment and assignment.hopsworks_cluster.name


@pytest.mark.parametrize(("who", "method", "template", "allowed"), SESSION_CELLS)
def test_an_operator_session_reaches_an_endpoint_only_with_its_permissions(
    persona_client, world, who, method, template, allowed
):
    ClusterFactory(name="west")
    client = persona_client(who)
    path = template.format(user=world["user"].pk)
    body = body_for(path, world) if path == "/api/v1/usage" else {"cluster": "west"}
    before = _state(world)

    response = call(client, method, path, body=body)

    if allowed:
        assert response.status_code < 400, response.content
        assert (_state(world) != before) == (method != "get")
    else:
        assert response.status_code == 403, response.content
        assert "permission" in response.json()["error"]["message"]
        assert world["user"].email not in response.content.decode()
        assert _state(world) == before


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


def test_auto_placing_a_suspended_user_is_a_409_that_says_so(client, make_key):
    ClusterFactory(name="east")
    user = UserFactory(status="suspended")
    response = client.post(
        f"/api/v1/users/{user.pk}/assignment",
        {},
        content_type="application/json",
        HTTP_AUTHORIZATION=make_key("assignments:write"),
    )
    assert response.status_code == 409
    assert f"{user.email} is suspended" in response.json()["error"]["message"]
    assert not UserHopsworksAssignment.objects.filter(user=user).exists()
