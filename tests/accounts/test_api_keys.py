"""API keys: created in the admin or by command, shown once, stored hashed; the docs."""

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from accounts.models import ApiKey

pytestmark = pytest.mark.django_db


def test_create_api_key_prints_the_key_once_and_keeps_only_a_hash(client, capsys):
    call_command("create_api_key", "--name", "nightly import", "--scopes", "usage:write,users:read")
    key = capsys.readouterr().out.strip().splitlines()[-1]

    api_key = ApiKey.objects.get()
    assert api_key.scopes == ["usage:write", "users:read"]
    assert key.startswith(api_key.prefix + ".")
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM accounts_api_key")
        assert key.split(".")[1] not in str(cursor.fetchall())
    response = client.get("/api/v1/users", HTTP_AUTHORIZATION=f"Api-Key {key}")
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--name", "x", "--scopes", "everything"], "Unknown scopes: everything"),
        (["--name", " ", "--scopes", "users:read"], "name"),
        (["--name", "x", "--scopes", "users:read", "--expires-in-days", "0"], "positive"),
    ],
)
def test_create_api_key_refuses_bad_input(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_api_key", *args)
    assert not ApiKey.objects.exists()


def test_the_admin_shows_a_new_key_once(operator_client):
    response = operator_client.post(
        "/admin/accounts/apikey/add/",
        {
            "name": "billing export",
            "scopes": ["usage:read"],
            "expiry_date_0": "",
            "expiry_date_1": "",
        },
        follow=True,
    )
    messages = [str(m) for m in response.context["messages"]]
    api_key = ApiKey.objects.get()
    shown = [m for m in messages if api_key.prefix in m]
    assert shown and "you will not be able to see it again" in shown[0]
    assert api_key.created_by == response.wsgi_request.user.email
    page = operator_client.get(f"/admin/accounts/apikey/{api_key.pk}/change/").content.decode()
    assert shown[0].split("is: ")[1].split(".")[1][:10] not in page


def test_the_api_docs_and_schema_are_served_without_the_internet(client):
    schema = client.get("/api/schema/")
    docs = client.get("/api/docs/").content.decode()
    assert schema.status_code == 200 and b"/api/v1/usage" in schema.content
    assert "swagger-ui" in docs and "cdn" not in docs.lower()


def _add_key(client, scopes, **fields):
    return client.post(
        "/admin/accounts/apikey/add/",
        {"name": "script", "scopes": scopes, "expiry_date_0": "", "expiry_date_1": "", **fields},
    )


def test_an_operator_gives_a_key_only_scopes_whose_permissions_they_hold(client):
    from tests.factories import StaffFactory

    operator = StaffFactory(permissions=["accounts.add_apikey", "accounts.view_user"])
    client.force_login(operator, backend="django.contrib.auth.backends.ModelBackend")

    refused = _add_key(client, ["users:read", "usage:write"])
    allowed = _add_key(client, ["users:read"])

    assert refused.status_code == 200
    errors = " ".join(refused.context["adminform"].form.errors["scopes"])
    assert "usage:write" in errors and "billing.add_usagedaily" in errors
    assert allowed.status_code == 302
    assert list(ApiKey.objects.values_list("scopes", flat=True)) == [["users:read"]]


def test_an_operator_cannot_widen_or_extend_a_key_beyond_their_permissions(client):
    import datetime as dt

    from django.utils import timezone

    from accounts.api_keys import api_key_create
    from tests.factories import StaffFactory

    soon = (timezone.now() + dt.timedelta(days=1)).replace(microsecond=0)
    key, _ = api_key_create(name="import", scopes=["usage:write"], actor="t", expires_at=soon)
    operator = StaffFactory(permissions=["accounts.change_apikey", "accounts.view_user"])
    client.force_login(operator, backend="django.contrib.auth.backends.ModelBackend")
    url = f"/admin/accounts/apikey/{key.pk}/change/"

    def save(scopes, expiry=soon, **fields):
        local = timezone.localtime(expiry) if expiry else None
        return client.post(
            url,
            {
                "name": "import",
                "scopes": scopes,
                "expiry_date_0": local.strftime("%Y-%m-%d") if local else "",
                "expiry_date_1": local.strftime("%H:%M:%S") if local else "",
                **fields,
            },
        )

    widened = save(["usage:write", "users:read"])
    usage_read = save(["usage:write", "users:read", "usage:read"])
    extended = save(["usage:write", "users:read"], soon + dt.timedelta(days=365))
    forever = save(["usage:write", "users:read"], None)
    revoked = save(["usage:write", "users:read"], soon - dt.timedelta(hours=1), revoked="on")

    assert widened.status_code == 302  # users:read is theirs to give
    assert "usage:read" in " ".join(usage_read.context["adminform"].form.errors["scopes"])
    for refused in (extended, forever):
        assert "expiry_date" in refused.context["adminform"].form.errors
    assert revoked.status_code == 302  # taking power away is always allowed
    key.refresh_from_db()
    assert sorted(key.scopes) == ["usage:write", "users:read"]
    assert key.revoked
    assert key.expiry_date == soon - dt.timedelta(hours=1)


def test_editing_a_revoked_key_is_never_refused_for_its_scopes(client):
    from accounts.api_keys import api_key_create
    from tests.factories import StaffFactory

    key, _ = api_key_create(name="old", scopes=["usage:write"], actor="t")
    key.revoked = True
    key.save()
    operator = StaffFactory(permissions=["accounts.change_apikey"])
    client.force_login(operator, backend="django.contrib.auth.backends.ModelBackend")

    response = client.post(
        f"/admin/accounts/apikey/{key.pk}/change/", {"scopes": ["usage:write", "usage:read"]}
    )

    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked
